//! `cpu::flash` against the f64 oracle (`cpu::reference`) on random inputs: odd sizes, both causal
//! alignments (with fully masked rows), GQA/MQA, key padding (including empty batches), ALiBi, soft
//! cap, element masks and patterns, block masks, top-k selection, both layouts, both instruction
//! sets, and any thread count. Runs on any machine (no GPU).

use std::sync::Arc;

use wgpu_attention::cpu::flash::{self, Config, Isa};
use wgpu_attention::cpu::reference;
use wgpu_attention::mask::{Dims, TopK};
use wgpu_attention::testing::{alibi_slopes, Case};
use wgpu_attention::{Attention, BlockMask, Causal, Error, Layout, Mask};

/// f32 tolerance on ‖o − ref‖/‖ref‖.
const REL_TOL: f64 = 1e-5;
/// Tolerance on max |lse − ref| (−∞ must match −∞ exactly) for LSEs up to 10 in magnitude; above
/// that it grows with the largest |LSE| (1e-6 relative), since an f32 logit of size M already
/// carries a rounding error of order M·1e-7 from its dot product.
const LSE_TOL: f64 = 1e-5;

/// Run `case` with `config` on the inputs of `seed`, compare with the oracle, return the output.
fn check_with(case: &Case, seed: u64, config: &Config) -> wgpu_attention::HostOutput {
    let (q, k, v) = case.inputs(seed);
    let want = reference::attention(&q, &k, &v, &case.attn).unwrap();
    let got = flash::attention_with(&q, &k, &v, &case.attn, config).unwrap_or_else(|e| panic!("{case}: {e}"));
    assert_eq!((got.o.shape, got.o.layout), (q.shape, q.layout), "{case}: O must have Q's shape and layout");
    let (rel, max_abs) = reference::compare(&got.o.data, &want.o);
    let lse = reference::compare_lse(&got.lse, &want.lse);
    let largest = want.lse.iter().filter(|l| l.is_finite()).fold(0.0f64, |m, l| m.max(l.abs()));
    let lse_tol = LSE_TOL * (largest / 10.0).max(1.0);
    eprintln!("{case} {config:?} seed={seed}: rel={rel:.2e} max_abs={max_abs:.2e} lse={lse:.2e}");
    assert!(
        wgpu_attention::testing::output_close(rel, max_abs, REL_TOL),
        "{case} seed={seed}: rel {rel:e}, max abs {max_abs:e}"
    );
    assert!(lse < lse_tol, "{case} seed={seed}: LSE error {lse:e} (tolerance {lse_tol:e})");
    got
}

/// Check `case` with the default configuration and, where it differs, the portable kernels.
fn check(case: &Case, seed: u64) {
    check_with(case, seed, &Config::default());
    if Isa::detect() != Isa::Portable {
        check_with(case, seed, &Config { isa: Some(Isa::Portable), threads: Some(2) });
    }
}

#[test]
fn odd_sizes_and_head_dims() {
    let sizes = [
        (1, 1, 1),
        (3, 5, 1),
        (7, 13, 40),
        (100, 37, 59),
        (25, 131, 64),
        (49, 300, 64),
        (130, 257, 111),
        (48, 200, 128),
        (33, 70, 256),
    ];
    for (seed, &(nq, nk, d)) in sizes.iter().enumerate() {
        for layout in [Layout::Bhsd, Layout::Bshd] {
            check(&Case::new(nq, nk, d).heads(2, 2, 2).layout(layout), seed as u64);
        }
    }
}

#[test]
fn causal_both_alignments() {
    // Nq < Nk, Nq = Nk, and Nq > Nk (bottom-right: the first Nq − Nk rows see no key).
    for (nq, nk) in [(77, 200), (150, 150), (300, 130), (5, 1), (24, 24), (25, 23)] {
        for causal in [Causal::BottomRight, Causal::TopLeft] {
            for (d, layout) in [(64, Layout::Bhsd), (40, Layout::Bshd)] {
                let case =
                    Case::new(nq, nk, d).heads(1, 2, 2).layout(layout).attn(Attention::new().causal(causal));
                check(&case, nq as u64 * nk as u64);
            }
        }
    }
}

#[test]
fn fully_masked_rows_are_zero_with_lse_minus_infinity() {
    let case = Case::new(60, 20, 64).heads(1, 1, 1).attn(Attention::new().causal(Causal::BottomRight));
    let out = check_with(&case, 3, &Config::default());
    for i in 0..60 {
        let row = &out.o.data[i * 64..(i + 1) * 64];
        if i < 40 {
            assert!(row.iter().all(|&x| x == 0.0), "row {i} must be 0");
            assert_eq!(out.lse[i], f32::NEG_INFINITY, "row {i}");
        } else {
            assert!(row.iter().all(|x| x.is_finite()) && out.lse[i].is_finite(), "row {i}");
        }
    }
}

#[test]
fn gqa_and_mqa() {
    for (hq, hkv) in [(8, 2), (8, 1)] {
        for (attn, layout) in
            [(Attention::new(), Layout::Bhsd), (Attention::new().causal(Causal::BottomRight), Layout::Bshd)]
        {
            check(
                &Case::new(70, 150, 64).heads(2, hq, hkv).layout(layout).attn(attn),
                hq as u64 + hkv as u64,
            );
        }
    }
}

#[test]
fn key_padding_including_empty() {
    let lens = vec![0, 50, 131, 1];
    for attn in [
        Attention::new(),
        Attention::new().causal(Causal::BottomRight),
        Attention::new().causal(Causal::TopLeft),
        Attention::new().causal(Causal::BottomRight).alibi_slopes(alibi_slopes(2)),
    ] {
        for layout in [Layout::Bhsd, Layout::Bshd] {
            let case =
                Case::new(90, 131, 64).heads(4, 2, 1).layout(layout).attn(attn.clone().kv_lens(lens.clone()));
            let out = check_with(&case, 11, &Config::default());
            // batch 0 has no key at all
            assert!(out.lse[..2 * 90].iter().all(|&l| l == f32::NEG_INFINITY));
            check_with(&case, 12, &Config { isa: Some(Isa::Portable), threads: Some(3) });
        }
    }
}

#[test]
fn alibi_softcap_and_scale() {
    let slopes = alibi_slopes(4);
    let cases = [
        Attention::new().alibi_slopes(slopes.clone()),
        Attention::new().alibi_slopes(slopes.clone()).causal(Causal::TopLeft),
        Attention::new().softcap(30.0),
        // a small cap exercises tanh's large-argument branch
        Attention::new().softcap(0.7).scale(2.0),
        Attention::new().softcap(5.0).alibi_slopes(slopes.clone()).causal(Causal::BottomRight),
        Attention::new().scale(0.3),
        // large logits: the online softmax must stay stable
        Attention::new().scale(20.0).causal(Causal::BottomRight),
    ];
    for (seed, attn) in cases.into_iter().enumerate() {
        for layout in [Layout::Bhsd, Layout::Bshd] {
            check(&Case::new(61, 190, 59).heads(1, 4, 2).layout(layout).attn(attn.clone()), seed as u64);
        }
    }
}

#[test]
fn everything_at_once() {
    let attn = Attention::new()
        .causal(Causal::BottomRight)
        .kv_lens(vec![300, 0, 177])
        .alibi_slopes(alibi_slopes(6))
        .softcap(20.0)
        .scale(0.2);
    check(&Case::new(150, 300, 111).heads(3, 6, 3).layout(Layout::Bshd).attn(attn), 99);
}

#[test]
fn result_does_not_depend_on_thread_count() {
    let case = Case::new(200, 333, 64).heads(2, 4, 2).attn(Attention::new().causal(Causal::BottomRight));
    let (q, k, v) = case.inputs(5);
    let one = flash::attention_with(&q, &k, &v, &case.attn, &Config { threads: Some(1), isa: None }).unwrap();
    for threads in [2, 3, 7] {
        let many =
            flash::attention_with(&q, &k, &v, &case.attn, &Config { threads: Some(threads), isa: None })
                .unwrap();
        assert_eq!(one.o.data, many.o.data, "{threads} threads");
        assert_eq!(one.lse, many.lse, "{threads} threads");
    }
}

#[test]
fn invalid_problems_are_typed_errors() {
    let case = Case::new(4, 4, 8).heads(2, 2, 2);
    let (q, k, v) = case.inputs(0);
    let err = flash::attention(&q, &k, &v, &Attention::new().kv_lens(vec![4])).unwrap_err();
    assert!(matches!(err, Error::InvalidOption(_)), "{err}");
    let err = flash::attention(&q, &k, &v, &Attention::new().softcap(0.0)).unwrap_err();
    assert!(matches!(err, Error::InvalidOption(_)), "{err}");
    let (_, k3, v3) = Case::new(4, 4, 8).heads(2, 3, 3).inputs(0);
    let err = flash::attention(&q, &k3, &v3, &Attention::new()).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch(_)), "{err}");
    let mut bad = q.clone();
    bad.data.pop();
    let err = flash::attention(&bad, &k, &v, &Attention::new()).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch(_)), "{err}");
}

#[test]
fn nan_in_a_query_row_stays_in_that_row() {
    let case = Case::new(50, 300, 64);
    let (mut q, k, v) = case.inputs(8);
    q.data[7 * 64 + 3] = f32::NAN; // row 7
    for isa in [Isa::detect(), Isa::Portable] {
        let out =
            flash::attention_with(&q, &k, &v, &case.attn, &Config { isa: Some(isa), threads: None }).unwrap();
        for i in 0..50 {
            let row = &out.o.data[i * 64..(i + 1) * 64];
            if i == 7 {
                assert!(row.iter().all(|x| x.is_nan()) && out.lse[i].is_nan(), "{isa:?}: row 7 must be NaN");
            } else {
                assert!(row.iter().all(|x| x.is_finite()) && out.lse[i].is_finite(), "{isa:?}: row {i}");
            }
        }
    }
}

#[test]
fn random_problems() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(2024);
    for seed in 0..40 {
        let (batch, kv_heads, group) =
            (rng.random_range(1..=3), rng.random_range(1..=2), rng.random_range(1..=3));
        let (nq, nk, d) = (rng.random_range(1..=80), rng.random_range(1..=300), rng.random_range(1..=130));
        let mut attn = Attention::new();
        if rng.random_bool(0.6) {
            attn = attn.causal(if rng.random_bool(0.5) { Causal::BottomRight } else { Causal::TopLeft });
        }
        if rng.random_bool(0.4) {
            attn = attn.kv_lens((0..batch).map(|_| rng.random_range(0..=nk as u32)).collect());
        }
        if rng.random_bool(0.3) {
            attn = attn.alibi_slopes(alibi_slopes(kv_heads * group));
        }
        if rng.random_bool(0.3) {
            attn = attn.softcap(rng.random_range(0.5..50.0));
        }
        if rng.random_bool(0.3) {
            attn = attn.scale(rng.random_range(0.05..2.0));
        }
        let layout = if rng.random_bool(0.5) { Layout::Bhsd } else { Layout::Bshd };
        let case = Case::new(nq, nk, d).heads(batch, kv_heads * group, kv_heads).layout(layout).attn(attn);
        check(&case, seed);
    }
}

/// `n` random booleans, true with probability `density`.
fn random_bools(n: usize, density: f64, seed: u64) -> Vec<bool> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_bool(density)).collect()
}

#[test]
fn element_masks_and_patterns() {
    let (b, h, nq, nk) = (2usize, 4usize, 150usize, 270usize);
    let docs = Mask::documents_from_offsets(&[vec![0, 50, 51, 150], vec![0, 150]]).unwrap();
    let q_ids: Vec<i32> = (0..b * nq).map(|i| (i % nq / 40) as i32).collect();
    let k_ids: Vec<i32> = (0..b * nk).map(|j| (j % nk / 70) as i32).collect();
    let masks = [
        Mask::window(0, 0),
        Mask::window(40, 7),
        Mask::Window { left: Some(130), right: None },
        Mask::Documents { q_ids: Arc::new(q_ids), k_ids: Arc::new(k_ids) },
        Mask::Prefix(99),
        Mask::Dense { data: Arc::new(random_bools(b * h * nq * nk, 0.3, 1)), batch: b, heads: h },
        Mask::Dense { data: Arc::new(random_bools(nq * nk, 0.05, 2)), batch: 1, heads: 1 },
        Mask::Blocks { data: Arc::new(random_bools(h * 5 * 9, 0.4, 3)), batch: 1, heads: h, size: 32 },
        Mask::longformer(24, 3),
        Mask::bigbird(16, 2, 2, 32, 7),
        Mask::Strided { stride: 17 },
        Mask::Fixed { stride: 32, c: 4 },
        Mask::Dilated { window: 8, dilation: 3 },
        Mask::window(20, 0).or(Mask::Global(2)).and(Mask::Prefix(200)),
    ];
    for (idx, mask) in masks.into_iter().enumerate() {
        let mut attn = Attention::new().mask(mask).block_size([32, 64, 128][idx % 3]);
        attn.causal = [None, Some(Causal::BottomRight), Some(Causal::TopLeft)][idx % 3];
        if idx % 4 == 1 {
            attn.kv_lens = Some(vec![270, 101]);
        }
        let layout = if idx % 2 == 0 { Layout::Bhsd } else { Layout::Bshd };
        check(&Case::new(nq, nk, 40).heads(b, h, 2).layout(layout).attn(attn), idx as u64);
    }
    // same-length documents built from offsets
    let case = Case::new(150, 150, 64).heads(2, 2, 1);
    check(&case.clone().attn(Attention::new().mask(docs).causal(Causal::BottomRight)), 20);
}

#[test]
fn fully_masked_by_a_mask() {
    let mask = Mask::Dense { data: Arc::new(vec![false; 40 * 60]), batch: 1, heads: 1 };
    let out = check_with(&Case::new(40, 60, 32).attn(Attention::new().mask(mask)), 3, &Config::default());
    assert!(out.o.data.iter().all(|&x| x == 0.0) && out.lse.iter().all(|&x| x == f32::NEG_INFINITY));
}

#[test]
fn prebuilt_block_masks() {
    let base = Attention::new().mask(Mask::longformer(40, 4)).causal(Causal::TopLeft);
    let dims = Dims { batch: 1, heads: 2, q_len: 300, kv_len: 300 };
    for size in [32, 64, 128] {
        let bm = Arc::new(BlockMask::build(&base, dims, size).unwrap());
        let mut attn = Attention::new().block_mask(bm);
        check(&Case::new(300, 300, 64).heads(1, 2, 1).attn(attn.clone()), size as u64);
        // AND-ed with a further mask and a causal mask of the other alignment
        attn = attn.mask(Mask::window(50, 3)).causal(Causal::BottomRight);
        check(&Case::new(300, 300, 64).heads(1, 2, 1).layout(Layout::Bshd).attn(attn), size as u64 + 1);
    }
}

#[test]
fn topk_block_selection() {
    for (k, size, sink, causal) in [
        (2, 32, false, None),
        (3, 32, true, Some(Causal::BottomRight)),
        (4, 64, false, Some(Causal::TopLeft)),
        (2, 128, true, None),
    ] {
        let mut attn = Attention::new();
        attn.topk = Some(TopK { k, block_size: size, sink });
        attn.causal = causal;
        check(&Case::new(300, 450, 64).heads(2, 4, 2).attn(attn.clone()), k as u64);
        attn.kv_lens = Some(vec![450, 200]);
        check(&Case::new(170, 450, 40).heads(2, 4, 1).layout(Layout::Bshd).attn(attn), k as u64 + 7);
    }
}
