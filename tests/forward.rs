//! The fused forward against the f64 oracle: a parametrised matrix of head dims × (Nq, Nk) pairs ×
//! options, in the spirit of FlashAttention's `test_flash_attn.py`. Every run poisons its outputs
//! with NaN first, so an element the kernel forgets to write fails the comparison.

mod common;

use common::check;
use wgpu_attention::testing::{alibi_slopes, Case};
use wgpu_attention::{Attention, Causal, Layout};

const SEQ_PAIRS: [(usize, usize); 7] =
    [(113, 203), (128, 217), (108, 256), (256, 512), (512, 256), (1023, 1024), (1024, 1023)];

/// Every (Nq, Nk) pair at one head dim; the options rotate with the pair so each head dim sees
/// no mask, both causal alignments, both layouts and GQA.
fn head_dim_matrix(head_dim: usize) {
    for (idx, &(nq, nk)) in SEQ_PAIRS.iter().enumerate() {
        let causal = [None, Some(Causal::BottomRight), Some(Causal::TopLeft)][idx % 3];
        let layout = if idx % 2 == 0 { Layout::Bhsd } else { Layout::Bshd };
        let (b, hq, hkv) = if nq * nk > 300_000 { (1, 2, 1) } else { (2, 4, 2) };
        let mut attn = Attention::new();
        attn.causal = causal;
        check(&Case::new(nq, nk, head_dim).heads(b, hq, hkv).layout(layout).attn(attn));
    }
}

macro_rules! head_dim_tests {
    ($($name:ident: $d:expr,)*) => {$(
        #[test]
        fn $name() {
            head_dim_matrix($d);
        }
    )*};
}

head_dim_tests! {
    head_dim_32: 32,
    head_dim_40: 40,
    head_dim_59: 59,
    head_dim_64: 64,
    head_dim_80: 80,
    head_dim_96: 96,
    head_dim_111: 111,
    head_dim_128: 128,
    head_dim_160: 160,
    head_dim_192: 192,
    head_dim_224: 224,
    head_dim_256: 256,
}

#[test]
fn tiny_and_odd_head_dims() {
    for d in [1, 3, 8, 17] {
        check(&Case::new(37, 45, d).heads(1, 2, 2));
    }
}

#[test]
fn causal_alignments_with_unequal_lengths() {
    // Nq > Nk bottom-right leaves the first Nq − Nk rows with no visible key: O = 0, LSE = −∞.
    for (nq, nk) in [(300, 100), (100, 300), (1, 257), (257, 1), (64, 64)] {
        for causal in [Causal::BottomRight, Causal::TopLeft] {
            check(&Case::new(nq, nk, 64).heads(1, 2, 2).attn(Attention::new().causal(causal)));
        }
    }
}

#[test]
fn grouped_and_multi_query_heads() {
    for (hq, hkv) in [(8, 8), (8, 4), (8, 1), (6, 3), (4, 1)] {
        check(&Case::new(77, 150, 64).heads(2, hq, hkv));
        check(&Case::new(77, 150, 40).heads(1, hq, hkv).attn(Attention::new().causal(Causal::BottomRight)));
    }
}

#[test]
fn key_padding_per_batch() {
    // lengths 0 (every row fully masked), short, odd, full
    let lens = vec![0, 1, 100, 203];
    for causal in [None, Some(Causal::BottomRight), Some(Causal::TopLeft)] {
        let mut attn = Attention::new().kv_lens(lens.clone());
        attn.causal = causal;
        check(&Case::new(113, 203, 59).heads(4, 2, 1).attn(attn));
    }
}

#[test]
fn alibi_slopes_per_head() {
    let attn = Attention::new().alibi_slopes(alibi_slopes(4));
    check(&Case::new(113, 203, 64).heads(1, 4, 2).attn(attn.clone()));
    check(&Case::new(128, 96, 80).heads(2, 4, 4).attn(attn.clone().causal(Causal::BottomRight)));
    check(&Case::new(128, 96, 80).heads(2, 4, 1).attn(attn.kv_lens(vec![50, 96])));
}

#[test]
fn logit_softcap() {
    // scale 2 makes the scores large enough for the cap to matter
    let attn = Attention::new().scale(2.0).softcap(5.0);
    check(&Case::new(113, 203, 64).heads(1, 2, 2).attn(attn.clone()));
    check(&Case::new(113, 203, 111).heads(1, 4, 2).attn(attn.causal(Causal::TopLeft)));
    let all = Attention::new()
        .softcap(30.0)
        .alibi_slopes(alibi_slopes(2))
        .causal(Causal::BottomRight)
        .kv_lens(vec![150, 203]);
    check(&Case::new(99, 203, 96).heads(2, 2, 1).layout(Layout::Bshd).attn(all));
}

#[test]
fn explicit_scale() {
    check(&Case::new(50, 70, 32).attn(Attention::new().scale(0.05)));
    check(&Case::new(50, 70, 32).attn(Attention::new().scale(-0.3)));
}

#[test]
fn split_key_ranges_merge_by_lse() {
    for splits in [1, 2, 3, 7, 64] {
        let attn = Attention::new().num_splits(splits).causal(Causal::BottomRight);
        check(&Case::new(70, 333, 64).heads(2, 4, 2).layout(Layout::Bshd).attn(attn));
    }
    // padding leaves whole splits empty
    let attn = Attention::new().num_splits(5).kv_lens(vec![0, 30, 333]);
    check(&Case::new(40, 333, 48).heads(3, 2, 2).attn(attn));
}

#[test]
fn decode_shapes() {
    // one query against a long cache: the automatic plan splits the keys for occupancy
    for d in [64, 128] {
        check(&Case::new(1, 4099, d).heads(2, 8, 2).attn(Attention::new().causal(Causal::BottomRight)));
        check(&Case::new(4, 2000, d).heads(1, 8, 1).attn(Attention::new().kv_lens(vec![1500])));
    }
}

/// Lavapipe stops an invocation's loops after 65,535 iterations in total, silently. These lengths
/// make one invocation loop over hundreds to thousands of key tiles; a kernel with per-key or
/// per-element loops would produce wrong output here.
#[test]
fn long_key_ranges() {
    check(&Case::new(32, 16_411, 64).attn(Attention::new().num_splits(1)));
    check(&Case::new(16, 70_001, 32).attn(Attention::new().num_splits(1).causal(Causal::TopLeft)));
    check(&Case::new(8, 40_000, 128).heads(1, 2, 1));
}

#[test]
fn long_queries_and_keys() {
    check(&Case::new(4100, 4097, 64).attn(Attention::new().causal(Causal::BottomRight)));
}

#[test]
fn one_context_serves_several_threads() {
    let ctx = common::ctx();
    std::thread::scope(|s| {
        for t in 0..3 {
            s.spawn(move || {
                let causal = [None, Some(Causal::BottomRight), Some(Causal::TopLeft)][t];
                let mut attn = Attention::new();
                attn.causal = causal;
                common::check_on(ctx, &Case::new(90 + t, 130, 64).heads(1, 2, 1).attn(attn));
            });
        }
    });
}

#[test]
fn gpu_timing_by_timestamp_queries() {
    let ctx = common::context_from(|o| o.gpu_timing(true));
    let has = ctx.adapter().features.contains(wgpu::Features::TIMESTAMP_QUERY);
    assert_eq!(ctx.gpu_timing(), has);
    let (q, k, v) = Case::new(200, 300, 64).inputs(1);
    let wall = std::time::Instant::now();
    let out = wgpu_attention::attention(&ctx, &q, &k, &v, &Attention::new()).unwrap();
    let wall = wall.elapsed();
    match out.info.and_then(|i| i.gpu_time) {
        Some(t) => assert!(has && t > std::time::Duration::ZERO && t <= wall, "gpu {t:?} wall {wall:?}"),
        None => assert!(!has, "timestamps enabled but no time recorded"),
    }
}
