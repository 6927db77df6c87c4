//! The key-range decode kernel (`shaders/decode.wgsl`, `kernels::decode`, forced by
//! `DecodeKernel::KeyRanges`; the split-D one has tests/decode_split_d.rs) against the f64 oracle: short
//! queries (Nq 1 to 16) against caches whose lengths are not multiples of a part or a block,
//! GQA ratios 1/2/4/8 and MQA, every option it takes (causal either way, windows, key lengths,
//! ALiBi, soft-capping), split counts forced from 1 to 64, f16 and bf16, and a cache too large
//! for one storage binding. Outputs are poisoned with NaN before each run.

mod common;

use common::{check, check_on, context_with};
use wgpu_attention::testing::{alibi_slopes, Case};
use wgpu_attention::{Attention, Causal, DecodeKernel, Layout, Mask, Path};

fn decode() -> Attention {
    Attention::new().path(Path::Decode).decode_kernel(DecodeKernel::KeyRanges)
}

/// Every case here must have run the decode kernel.
fn check_decode(case: &Case) {
    let e =
        wgpu_attention::testing::run_case(common::ctx(), case, 7).unwrap_or_else(|e| panic!("{case}: {e}"));
    assert_eq!(e.info.map(|i| i.kernel), Some("decode"), "{case}");
    check(case);
}

#[test]
fn lengths_and_query_counts() {
    for (nq, nk, d) in [(1, 1, 64), (1, 2, 64), (1, 17, 40), (3, 1000, 64), (16, 1000, 59), (1, 32_769, 128)]
    {
        check_decode(&Case::new(nq, nk, d).heads(2, 8, 2).attn(decode()));
    }
}

#[test]
fn gqa_ratios_and_mqa() {
    for (hq, hkv) in [(4, 4), (4, 2), (8, 2), (16, 2), (8, 1)] {
        check_decode(&Case::new(2, 300, 64).heads(1, hq, hkv).attn(decode().causal(Causal::BottomRight)));
    }
}

#[test]
fn options() {
    let base = || Case::new(4, 777, 64).heads(2, 4, 2);
    let lens = vec![777, 130];
    for attn in [
        decode().causal(Causal::BottomRight),
        decode().causal(Causal::TopLeft),
        decode().kv_lens(lens.clone()).causal(Causal::BottomRight),
        decode().kv_lens(vec![0, 1]),
        decode().mask(Mask::Window { left: Some(100), right: Some(0) }),
        decode().mask(Mask::Window { left: Some(31), right: Some(5) }).kv_lens(lens.clone()),
        decode().alibi_slopes(alibi_slopes(4)).causal(Causal::BottomRight),
        decode().softcap(5.0),
        decode().softcap(20.0).alibi_slopes(alibi_slopes(4)).kv_lens(lens),
        decode().scale(0.3),
    ] {
        check_decode(&base().attn(attn));
    }
}

#[test]
fn forced_split_counts() {
    for s in [1, 2, 3, 7, 64] {
        check_decode(&Case::new(1, 1001, 64).heads(1, 4, 1).attn(decode().num_splits(s)));
    }
}

#[test]
fn layouts_and_strides() {
    check_decode(&Case::new(2, 500, 64).heads(2, 4, 2).layout(Layout::Bshd).attn(decode()));
    check_decode(&Case::new(1, 500, 111).heads(1, 2, 1).attn(decode().causal(Causal::BottomRight)));
}

#[test]
fn short_queries_choose_decode() {
    let e = wgpu_attention::testing::run_case(common::ctx(), &Case::new(1, 100, 64), 1).unwrap();
    assert!(e.info.unwrap().kernel.starts_with("decode"), "{:?}", e.info);
    let e = wgpu_attention::testing::run_case(common::ctx(), &Case::new(17, 100, 64), 1).unwrap();
    assert!(!e.info.unwrap().kernel.starts_with("decode"), "{:?}", e.info);
    let forced = Case::new(1, 100, 64).attn(Attention::new().path(Path::Prefill));
    assert_ne!(
        wgpu_attention::testing::run_case(common::ctx(), &forced, 1).unwrap().info.unwrap().kernel,
        "decode"
    );
}

#[test]
fn cache_over_one_binding() {
    // bindings of 64 KiB: K/V windows per batch, per head and per key range, partial states in
    // groups of batches
    let small = context_with(|l| l.max_storage_buffer_binding_size = 64 << 10);
    for layout in [Layout::Bhsd, Layout::Bshd] {
        check_on(
            &small,
            &Case::new(2, 600, 64).heads(3, 4, 2).layout(layout).attn(decode().causal(Causal::BottomRight)),
        );
    }
}

#[test]
fn sixteen_bit_caches() {
    use wgpu_attention::DType;
    for (dtype, case) in [
        (DType::F16, Case::new(1, 2049, 128).heads(1, 8, 2).attn(decode())),
        (DType::BF16, Case::new(5, 333, 40).heads(2, 4, 1).attn(decode().causal(Causal::BottomRight))),
    ] {
        let e = wgpu_attention::testing::run_case_16(common::ctx(), &case, 3, dtype, dtype).unwrap();
        eprintln!(
            "{case} {dtype}: rel={:.2e} (naive in storage precision {:.2e})",
            e.kernel.rel, e.naive.rel
        );
        assert_eq!(e.kernel.info.map(|i| i.kernel), Some("decode"), "{case}");
        assert!(e.pass(), "{case} {dtype}: {e:?}");
    }
}

#[test]
fn refused_where_it_cannot_run() {
    let ctx = common::ctx();
    let case = Case::new(17, 100, 64).attn(decode());
    let err = wgpu_attention::testing::run_case(ctx, &case, 1).unwrap_err();
    assert!(matches!(err, wgpu_attention::Error::InvalidOption(_)), "{err}");
    let case = Case::new(1, 100, 64).attn(decode().mask(Mask::Prefix(10)));
    let err = wgpu_attention::testing::run_case(ctx, &case, 1).unwrap_err();
    assert!(err.to_string().contains("window"), "{err}");
}
