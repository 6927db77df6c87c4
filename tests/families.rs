//! Every kernel family runs the same compact matrix against the oracle, whatever the adapter's
//! default (autotuned) choice is: tiled, register with subgroups (also with key blocks narrower
//! than the subgroup, as on adapters with subgroups of 4, and wide: twice the rows per
//! invocation), and register without subgroups.

mod common;

use std::sync::Arc;

use common::check_on;
use wgpu_attention::kernels::flash::Family;
use wgpu_attention::testing::{alibi_slopes, Case};
use wgpu_attention::{Attention, Causal, Context, Layout, Mask};

/// The options matrix at head dims `dims` (each distinct padded head dim compiles a pipeline, and
/// lavapipe takes seconds per pipeline: keep the list short).
fn matrix(ctx: &Context, family: Family, dims: [usize; 2]) {
    let with = |attn: Attention| attn.kernel(family);
    let [a, b] = dims;
    let cases = [
        Case::new(113, 203, a).heads(2, 4, 2).attn(with(Attention::new())),
        Case::new(128, 217, b)
            .heads(1, 4, 1)
            .layout(Layout::Bshd)
            .attn(with(Attention::new().causal(Causal::BottomRight))),
        Case::new(300, 100, a).heads(1, 2, 2).attn(with(Attention::new().causal(Causal::BottomRight))),
        Case::new(1, 1000, b).heads(1, 8, 2).attn(with(Attention::new().causal(Causal::TopLeft))),
        Case::new(77, 150, a).heads(3, 2, 1).attn(with(Attention::new().kv_lens(vec![0, 33, 150]))),
        Case::new(90, 90, b)
            .heads(1, 2, 2)
            .attn(with(Attention::new().alibi_slopes(alibi_slopes(2)).softcap(5.0).scale(2.0))),
        Case::new(200, 200, a)
            .heads(1, 2, 1)
            .attn(with(Attention::new().mask(Mask::longformer(20, 2)).block_size(32))),
        Case::new(160, 160, b)
            .heads(1, 2, 1)
            .attn(with(Attention::new().topk(2, 32).causal(Causal::BottomRight))),
        Case::new(64, 5000, a).attn(with(Attention::new().num_splits(3))),
    ];
    for case in &cases {
        check_on(ctx, case);
    }
}

#[test]
fn tiled_family() {
    // the tiled family at every head-dim class (the forward matrix runs the adapter's default)
    matrix(common::ctx(), Family::Tiled, [40, 64]);
    matrix(common::ctx(), Family::Tiled, [59, 111]);
    matrix(common::ctx(), Family::Tiled, [160, 256]);
}

#[test]
fn register_family_with_subgroups() {
    let ctx = common::ctx();
    assert!(
        ctx.adapter().features.contains(wgpu::Features::SUBGROUP),
        "the test adapter (lavapipe) has subgroups; this test needs them"
    );
    matrix(ctx, Family::Register { subgroups: true, wide: false }, [40, 111]);
}

#[test]
fn register_family_wide() {
    // twice the rows per invocation (16 at D ≤ 64, 8 at D ≤ 128; the 32-block case falls back to
    // 4): the lavapipe default after tuning. Its shaders compile ~3× slower: two head dims only.
    let wide = Family::Register { subgroups: true, wide: true };
    matrix(common::ctx(), wide, [40, 111]);
    // above D 128: two rows per invocation instead of one
    let with = |attn: Attention| attn.kernel(wide);
    check_on(
        common::ctx(),
        &Case::new(90, 130, 160).heads(1, 2, 1).attn(with(Attention::new().causal(Causal::BottomRight))),
    );
    check_on(common::ctx(), &Case::new(33, 150, 256).attn(with(Attention::new().kv_lens(vec![77]))));
}

#[test]
fn register_family_with_key_blocks_of_four() {
    // as on an adapter whose subgroups may be as small as 4 (SwiftShader, WARP)
    let ctx = Arc::new(common::context_from(|o| o.subgroup_min_size(4)));
    matrix(&ctx, Family::Register { subgroups: true, wide: false }, [40, 64]);
}

#[test]
fn register_family_without_subgroups() {
    matrix(common::ctx(), Family::Register { subgroups: false, wide: false }, [40, 64]);
}
