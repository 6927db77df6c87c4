//! Every mask kind and pattern against the oracle over odd sizes, with GQA and key padding, and
//! the invalid-mask errors. The GPU lowers each mask to a block table; these runs compare its
//! output with the oracle, which evaluates the element predicate directly.

mod common;

use std::sync::Arc;

use common::{check, ctx};
use rand::{Rng, SeedableRng};
use wgpu_attention::mask::Dims;
use wgpu_attention::testing::Case;
use wgpu_attention::{Attention, BlockMask, Causal, Error, Layout, Mask};

fn random_bools(n: usize, density: f64, seed: u64) -> Vec<bool> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_bool(density)).collect()
}

#[test]
fn sliding_windows() {
    for (l, r) in [(0, 0), (16, 0), (40, 7), (100, 100)] {
        check(&Case::new(150, 230, 64).heads(2, 4, 2).attn(Attention::new().mask(Mask::window(l, r))));
    }
    // composed with causal (right side cut), bottom-right aligned with Nq != Nk and padding
    let attn =
        Attention::new().mask(Mask::window(33, 33)).causal(Causal::BottomRight).kv_lens(vec![230, 101]);
    check(&Case::new(150, 230, 40).heads(2, 4, 1).attn(attn));
    let left_only = Mask::Window { left: Some(50), right: None };
    check(&Case::new(97, 97, 59).layout(Layout::Bshd).attn(Attention::new().mask(left_only)));
}

#[test]
fn packed_documents() {
    // three documents of 50, 1 and 149 tokens in batch 0, one of 200 in batch 1
    let mask = Mask::documents_from_offsets(&[vec![0, 50, 51, 200], vec![0, 200]]).unwrap();
    for causal in [None, Some(Causal::BottomRight)] {
        let mut attn = Attention::new().mask(mask.clone());
        attn.causal = causal;
        check(&Case::new(200, 200, 64).heads(2, 4, 2).attn(attn));
    }
    // ids that differ between queries and keys (Nq != Nk)
    let q_ids: Vec<i32> = (0..90).map(|i| i / 30).collect();
    let k_ids: Vec<i32> = (0..130).map(|j| j / 45).collect();
    let mask = Mask::Documents { q_ids: Arc::new(q_ids), k_ids: Arc::new(k_ids) };
    check(&Case::new(90, 130, 48).attn(Attention::new().mask(mask)));
}

#[test]
fn prefix_lm() {
    for p in [0, 1, 64, 99, 300] {
        check(&Case::new(160, 200, 64).heads(1, 2, 1).attn(Attention::new().mask(Mask::Prefix(p))));
    }
}

#[test]
fn dense_element_masks() {
    let (b, h, nq, nk) = (2, 4, 75, 140);
    for (mb, mh) in [(1, 1), (b, 1), (1, h), (b, h)] {
        let data = Arc::new(random_bools(mb * mh * nq * nk, 0.3, (mb * 10 + mh) as u64));
        let mask = Mask::Dense { data, batch: mb, heads: mh };
        check(&Case::new(nq, nk, 40).heads(b, h, 2).attn(Attention::new().mask(mask).kv_lens(vec![140, 77])));
    }
}

#[test]
fn block_level_masks_and_sizes() {
    for size in [32, 64, 128] {
        let (nq, nk) = (200usize, 300usize);
        let data = Arc::new(random_bools(nq.div_ceil(size) * nk.div_ceil(size), 0.4, size as u64));
        let mask = Mask::Blocks { data, batch: 1, heads: 1, size };
        check(&Case::new(nq, nk, 64).heads(1, 2, 1).attn(Attention::new().mask(mask).block_size(size)));
    }
    // per-head blocks with GQA
    let data = Arc::new(random_bools(4 * 4 * 5, 0.5, 9));
    let mask = Mask::Blocks { data, batch: 1, heads: 4, size: 32 };
    check(&Case::new(128, 150, 32).heads(1, 4, 2).attn(Attention::new().mask(mask).block_size(32)));
}

#[test]
fn sparse_patterns() {
    let patterns = [
        Mask::longformer(24, 3),
        Mask::bigbird(16, 2, 2, 32, 7),
        Mask::Strided { stride: 17 },
        Mask::Fixed { stride: 32, c: 4 },
        Mask::Dilated { window: 8, dilation: 3 },
    ];
    for (idx, m) in patterns.into_iter().enumerate() {
        let causal = if idx % 2 == 0 { Some(Causal::BottomRight) } else { None };
        let mut attn = Attention::new().mask(m).block_size(32);
        attn.causal = causal;
        check(&Case::new(210, 210, 64).heads(2, 4, 2).attn(attn));
    }
}

#[test]
fn compositions() {
    let docs = Mask::documents_from_offsets(&[vec![0, 100, 257]]).unwrap();
    let and = docs.clone().and(Mask::window(20, 0));
    let or = Mask::window(5, 5).or(Mask::Global(2)).or(Mask::Prefix(10));
    check(&Case::new(257, 257, 64).heads(1, 2, 2).attn(Attention::new().mask(and)));
    check(&Case::new(257, 257, 64).heads(1, 2, 2).attn(Attention::new().mask(or)));
}

#[test]
fn prebuilt_block_mask_is_reused_and_matches() {
    let base = Attention::new().mask(Mask::longformer(40, 4)).causal(Causal::TopLeft);
    let dims = Dims { batch: 1, heads: 2, q_len: 300, kv_len: 300 };
    let bm = Arc::new(BlockMask::build(&base, dims, 64).unwrap());
    assert!(bm.density() < 0.6, "density {}", bm.density());
    // only the block mask (its bits carry the whole predicate)
    let mut attn = Attention::new().block_mask(bm.clone());
    check(&Case::new(300, 300, 64).heads(1, 2, 1).attn(attn.clone()));
    attn.causal = Some(Causal::TopLeft);
    check(&Case::new(300, 300, 64).heads(1, 2, 1).attn(attn));
}

#[test]
fn fully_masked_rows_give_zero_and_minus_infinity() {
    // documents whose query ids match no key id
    let mask = Mask::Documents { q_ids: Arc::new(vec![7; 40]), k_ids: Arc::new(vec![1; 60]) };
    check(&Case::new(40, 60, 32).attn(Attention::new().mask(mask)));
    let (q, k, v) = Case::new(40, 60, 32).inputs(3);
    let out = wgpu_attention::attention(
        ctx(),
        &q,
        &k,
        &v,
        &Attention::new().mask(Mask::Dense { data: Arc::new(vec![false; 2400]), batch: 1, heads: 1 }),
    )
    .unwrap();
    assert!(out.o.data.iter().all(|&x| x == 0.0));
    assert!(out.lse.iter().all(|&x| x == f32::NEG_INFINITY));
}

#[test]
fn invalid_masks_are_typed_errors() {
    let (q, k, v) = Case::new(50, 70, 32).heads(2, 2, 2).inputs(1);
    let bad = [
        Attention::new().mask(Mask::documents(vec![0; 10])),
        Attention::new().mask(Mask::Dense { data: Arc::new(vec![true; 50 * 70]), batch: 3, heads: 1 }),
        Attention::new().mask(Mask::Dense { data: Arc::new(vec![true; 5]), batch: 1, heads: 1 }),
        Attention::new().mask(Mask::Blocks { data: Arc::new(vec![true; 6]), batch: 1, heads: 1, size: 48 }),
        Attention::new().mask(Mask::Blocks { data: Arc::new(vec![true; 5]), batch: 1, heads: 1, size: 32 }),
        Attention::new().mask(Mask::Strided { stride: 0 }),
        Attention::new().mask(Mask::Fixed { stride: 4, c: 5 }),
        Attention::new().mask(Mask::Dilated { window: 3, dilation: 0 }),
        Attention::new().mask(Mask::window(3, 3)).block_size(16),
    ];
    for a in bad {
        let r = wgpu_attention::attention(ctx(), &q, &k, &v, &a);
        assert!(matches!(r, Err(Error::InvalidOption(_))), "{a:?}: {r:?}");
    }
    let r = Mask::documents_from_offsets(&[vec![1, 5]]);
    assert!(matches!(r, Err(Error::InvalidOption(_))));
    // a block mask built for other sizes
    let dims = Dims { batch: 2, heads: 2, q_len: 64, kv_len: 64 };
    let bm = Arc::new(BlockMask::build(&Attention::new(), dims, 32).unwrap());
    let r = wgpu_attention::attention(ctx(), &q, &k, &v, &Attention::new().block_mask(bm));
    assert!(matches!(r, Err(Error::InvalidOption(_))), "{r:?}");
}
