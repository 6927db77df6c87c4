//! The split-D decode kernel (`shaders/decode_split_d.wgsl`, `DecodeKernel::SplitD`: one
//! subgroup-sized workgroup per key range, the head dim across its lanes) against the f64 oracle,
//! over the matrix of `tests/decode.rs`: cache lengths not multiples of a part or a block, Nq 1
//! to 16, GQA ratios and MQA, every option, forced split counts, BSHD, odd head dims, 16-bit
//! storage, a cache over one binding and a shuffled paged cache; with workgroups of the adapter's
//! subgroup (8 lanes on lavapipe at 256 bits, 16 at 512) and of 4 lanes (as on SwiftShader).
//! Outputs are poisoned with NaN before each run.

mod common;

use std::sync::OnceLock;

use common::{check_on, context_from, context_with};
use wgpu_attention::paged::{PagedKvCache, PagedKvConfig};
use wgpu_attention::testing::{alibi_slopes, Case};
use wgpu_attention::{Attention, Causal, Context, DecodeKernel, Layout, Mask, Path};

fn split_d() -> Attention {
    Attention::new().path(Path::Decode).decode_kernel(DecodeKernel::SplitD)
}

/// A context whose split-D workgroups have 4 lanes (the smallest subgroup treated as 4).
fn four_lanes() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| context_from(|o| o.subgroup_min_size(4)))
}

/// `case` on `ctx` ran the split-D kernel and matches the oracle (two fresh seeds).
fn check_split_d_on(ctx: &Context, case: &Case) {
    let e = wgpu_attention::testing::run_case(ctx, case, 7).unwrap_or_else(|e| panic!("{case}: {e}"));
    assert_eq!(e.info.map(|i| i.kernel), Some("decode-split-d"), "{case}");
    check_on(ctx, case);
}

fn check_split_d(case: &Case) {
    check_split_d_on(common::ctx(), case);
}

#[test]
fn lengths_and_query_counts() {
    for (nq, nk, d) in [(1, 1, 64), (1, 2, 64), (1, 17, 40), (3, 1000, 64), (16, 1000, 59), (1, 32_769, 128)]
    {
        check_split_d(&Case::new(nq, nk, d).heads(2, 8, 2).attn(split_d()));
    }
}

#[test]
fn four_lane_workgroups() {
    for (nq, nk, d) in [(1, 17, 40), (4, 1000, 128), (2, 333, 111)] {
        check_split_d_on(four_lanes(), &Case::new(nq, nk, d).heads(1, 8, 2).attn(split_d()));
    }
}

#[test]
fn gqa_ratios_and_mqa() {
    for (hq, hkv) in [(4, 4), (4, 2), (8, 2), (16, 2), (8, 1)] {
        check_split_d(&Case::new(2, 300, 64).heads(1, hq, hkv).attn(split_d().causal(Causal::BottomRight)));
    }
}

#[test]
fn options() {
    let base = || Case::new(4, 777, 64).heads(2, 4, 2);
    let lens = vec![777, 130];
    for attn in [
        split_d().causal(Causal::BottomRight),
        split_d().causal(Causal::TopLeft),
        split_d().kv_lens(lens.clone()).causal(Causal::BottomRight),
        split_d().kv_lens(vec![0, 1]),
        split_d().mask(Mask::Window { left: Some(100), right: Some(0) }),
        split_d().mask(Mask::Window { left: Some(31), right: Some(5) }).kv_lens(lens.clone()),
        split_d().alibi_slopes(alibi_slopes(4)).causal(Causal::BottomRight),
        split_d().softcap(5.0),
        split_d().softcap(20.0).alibi_slopes(alibi_slopes(4)).kv_lens(lens),
        split_d().scale(0.3),
    ] {
        check_split_d(&base().attn(attn));
    }
}

#[test]
fn forced_split_counts() {
    for s in [1, 2, 3, 7, 64] {
        check_split_d(&Case::new(1, 1001, 64).heads(1, 4, 1).attn(split_d().num_splits(s)));
    }
}

#[test]
fn layouts_strides_and_head_dims() {
    check_split_d(&Case::new(2, 500, 64).heads(2, 4, 2).layout(Layout::Bshd).attn(split_d()));
    check_split_d(&Case::new(1, 500, 111).heads(1, 2, 1).attn(split_d().causal(Causal::BottomRight)));
    check_split_d(&Case::new(1, 300, 256).heads(1, 4, 2).attn(split_d()));
}

#[test]
fn cache_over_one_binding() {
    let small = context_with(|l| l.max_storage_buffer_binding_size = 64 << 10);
    check_split_d_on(
        &small,
        &Case::new(2, 600, 64)
            .heads(3, 4, 2)
            .layout(Layout::Bshd)
            .attn(split_d().causal(Causal::BottomRight)),
    );
}

#[test]
fn sixteen_bit_caches() {
    use wgpu_attention::DType;
    for (dtype, case) in [
        (DType::F16, Case::new(1, 2049, 128).heads(1, 8, 2).attn(split_d())),
        (DType::BF16, Case::new(5, 333, 40).heads(2, 4, 1).attn(split_d().causal(Causal::BottomRight))),
    ] {
        let e = wgpu_attention::testing::run_case_16(common::ctx(), &case, 3, dtype, dtype).unwrap();
        eprintln!(
            "{case} {dtype}: rel={:.2e} (naive in storage precision {:.2e})",
            e.kernel.rel, e.naive.rel
        );
        assert_eq!(e.kernel.info.map(|i| i.kernel), Some("decode-split-d"), "{case}");
        assert!(e.pass(), "{case} {dtype}: {e:?}");
    }
}

/// A shuffled paged cache of mixed lengths (0, 1, 17, 1000) decoded by the split-D kernel equals
/// the key-range kernel on the same pages (both are checked against the oracle in
/// tests/paged.rs and above; here they must agree to f32 rounding).
#[test]
fn paged_cache_agrees_with_the_key_range_kernel() {
    use wgpu_attention::{Recorder, Tensor};
    let ctx = common::ctx();
    let (hq, hkv, d, page_size) = (8, 2, 64, 16);
    let lens = [0usize, 1, 17, 1000];
    let pages = lens.iter().map(|n| n.div_ceil(page_size)).sum::<usize>() + 4;
    let config =
        PagedKvConfig { pages, page_size, kv_heads: hkv, head_dim: d, dtype: wgpu_attention::DType::F32 };
    let mut cache = PagedKvCache::new(ctx, config).unwrap();
    cache.shuffle_free_pages(11);
    let ids: Vec<_> = lens.iter().map(|_| cache.add_sequence()).collect();
    // random K/V of each sequence and a Q of two queries per sequence, from the tests' generator
    let mut rec = Recorder::new(ctx);
    for (i, (&id, &n)) in ids.iter().zip(&lens).enumerate() {
        if n > 0 {
            let (_, k, v) = Case::new(1, n, d).heads(1, hkv, hkv).inputs(40 + i as u64);
            let (k, v) = (Tensor::upload(ctx, &k).unwrap(), Tensor::upload(ctx, &v).unwrap());
            cache.append(&mut rec, &[id], &k, &v).unwrap();
        }
    }
    rec.submit().unwrap().wait().unwrap();
    let (q, _, _) = Case::new(2, 1, d).heads(lens.len(), hq, hkv).inputs(39);
    let q = Tensor::upload(ctx, &q).unwrap();
    let run = |kernel| {
        let mut rec = Recorder::new(ctx);
        let attn = Attention::new().causal(Causal::BottomRight).decode_kernel(kernel);
        let out = cache.attention(&mut rec, &q, &ids, &attn).unwrap();
        rec.submit().unwrap().wait().unwrap();
        (out.info.kernel, out.o.to_host(ctx).unwrap().data, out.lse.to_host(ctx).unwrap().data)
    };
    let (k1, o1, l1) = run(DecodeKernel::KeyRanges);
    let (k2, o2, l2) = run(DecodeKernel::SplitD);
    assert_eq!((k1, k2), ("decode", "decode-split-d"));
    let diff = o1.iter().zip(&o2).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(o2.iter().all(|x| x.is_finite()), "split-D output has non-finite values");
    assert!(diff < 1e-5, "O differs by {diff}");
    for (a, b) in l1.iter().zip(&l2) {
        assert!(a == b || (a - b).abs() < 1e-5, "LSE {a} vs {b}");
    }
    // the sequence with no key: O = 0, LSE = −∞
    let row = hq * 2 * d;
    assert!(o2[..row].iter().all(|&x| x == 0.0));
    assert!(l2[..hq * 2].iter().all(|&x| x == f32::NEG_INFINITY));
}

/// Without a decode kernel asked for, the library takes split-D wherever the adapter has
/// subgroups, except on CPU adapters with subgroups under 16 lanes (lavapipe at 256 bits) when
/// one invocation of the key-range kernel holds all of a K/V head's rows (G·Nq ≤ 4).
#[test]
fn automatic_choice() {
    let ctx = common::ctx();
    let a = ctx.adapter();
    assert!(a.features.contains(wgpu::Features::SUBGROUP), "the test adapter (lavapipe) has subgroups");
    let narrow_cpu = a.info.device_type == wgpu::DeviceType::Cpu && a.info.subgroup_min_size < 16;
    for (nq, hq, hkv) in [(1, 4, 1), (1, 8, 1), (4, 4, 1), (1, 2, 2)] {
        let case =
            Case::new(nq, 300, 64).heads(1, hq, hkv).attn(Attention::new().causal(Causal::BottomRight));
        let e = wgpu_attention::testing::run_case(ctx, &case, 5).unwrap();
        let want = if narrow_cpu && nq * hq / hkv <= 4 { "decode" } else { "decode-split-d" };
        assert_eq!(e.info.map(|i| i.kernel), Some(want), "{case}");
        check_on(ctx, &case);
    }
}
