//! Problems larger than the adapter's limits are split into several dispatches transparently.
//! Lower limits are requested from the real adapter so these paths run on any machine.

mod common;

use common::{check_on, context_with};
use wgpu_attention::kernels::flash::Family;
use wgpu_attention::testing::Case;
use wgpu_attention::{Attention, Causal, Layout};

#[test]
fn storage_binding_limit_splits_batches_and_heads() {
    // 256 KiB bindings: each K/V head is 96 KiB, each Q head 48 KiB; the call must be cut into
    // chunks of (batch, kv heads), with windows at aligned offsets.
    let ctx = context_with(|l| l.max_storage_buffer_binding_size = 256 << 10);
    // GQA 8:1 at Nq 600: one head group of Q is 8·600·60·4 = 1.1 MiB, so query rows are cut too
    check_on(&ctx, &Case::new(600, 300, 60).heads(2, 8, 1).attn(Attention::new().num_splits(2)));
    check_on(
        &ctx,
        &Case::new(600, 300, 60)
            .heads(1, 8, 1)
            .layout(Layout::Bshd)
            .attn(Attention::new().causal(Causal::TopLeft)),
    );
    for layout in [Layout::Bhsd, Layout::Bshd] {
        // (in BSHD one K/V head's keys are strided across all K/V heads of its batch)
        let hkv = if layout == Layout::Bhsd { 4 } else { 2 };
        check_on(&ctx, &Case::new(200, 400, 60).heads(3, 8, hkv).layout(layout));
        let attn = Attention::new().causal(Causal::BottomRight).num_splits(3).kv_lens(vec![400, 17, 390]);
        check_on(&ctx, &Case::new(200, 400, 60).heads(3, 8, 2).layout(layout).attn(attn));
    }
}

#[test]
fn storage_binding_limit_cuts_keys_into_ranges() {
    // 64 KiB bindings: one K/V head of 700 keys × D 40 is 109 KiB (BHSD), one batch of K in BSHD
    // with 3 K/V heads 328 KiB: each key split binds only its own keys, in its own dispatch, and
    // the splits are merged by LSE. Both families, GQA, Nq ≠ Nk, causal, ragged key lengths. The
    // partial states of a wide register tile (128 query rows) are over the limit at 6 splits:
    // planning then halves its rows per invocation.
    let ctx = context_with(|l| l.max_storage_buffer_binding_size = 64 << 10);
    let register = |wide| Family::Register { subgroups: true, wide };
    for family in [register(false), register(true), Family::Tiled] {
        let with = |attn: Attention| attn.kernel(family);
        check_on(&ctx, &Case::new(37, 700, 40).heads(2, 2, 1).attn(with(Attention::new())));
        check_on(
            &ctx,
            &Case::new(300, 700, 40)
                .heads(2, 6, 3)
                .layout(Layout::Bshd)
                .attn(with(Attention::new().causal(Causal::BottomRight).kv_lens(vec![700, 333]))),
        );
        check_on(
            &ctx,
            &Case::new(1, 1500, 59)
                .heads(1, 4, 1)
                .attn(with(Attention::new().causal(Causal::BottomRight).num_splits(2))),
        );
    }
}

#[test]
fn workgroup_count_limit_uses_a_2d_grid() {
    let ctx = context_with(|l| l.max_compute_workgroups_per_dimension = 7);
    check_on(&ctx, &Case::new(300, 100, 32).heads(2, 3, 3));
}

#[test]
fn webgpu_default_workgroup_memory() {
    // 16 KiB of workgroup memory and 256 invocations: the WebGPU defaults many adapters have
    let ctx = context_with(|l| {
        l.max_compute_workgroup_storage_size = 16 << 10;
        l.max_compute_invocations_per_workgroup = 256;
        l.max_compute_workgroup_size_x = 256;
    });
    for d in [64, 128, 256] {
        check_on(&ctx, &Case::new(100, 130, d).attn(Attention::new().causal(Causal::TopLeft)));
    }
}
