//! `merge_states` (GPU, `shaders/merge_states.wgsl`) against the f64 oracle
//! (`cpu::reference::merge_states`), and the two uses it exists for: a cache split across two
//! independent contexts, each computed alone and merged, equals one pass; the cascade form (a
//! shared prefix computed once for a batch, merged with each sequence's own suffix) equals the
//! flat cache. Outputs are poisoned with NaN before each run.

mod common;

use common::{context_from, ctx, F32_REL_TOL};
use wgpu_attention::cpu::reference;
use wgpu_attention::testing::{fresh_seed, Case};
use wgpu_attention::{Attention, Causal, Context, DType, HostTensor, Layout, Recorder, Shape, Tensor};

/// Random states: O of `shape` in `layout`, LSEs with some rows −∞ on one side or both.
fn states(shape: Shape, layout: Layout, seed: u64) -> [(HostTensor, Vec<f32>); 2] {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let rows = shape.batch * shape.heads * shape.seq;
    let mut make = |side: usize| {
        let o = HostTensor::new((0..shape.len()).map(|_| next()).collect(), shape, layout).unwrap();
        let lse = (0..rows)
            .map(|r| match (r % 5, side) {
                (0, 0) | (1, 1) | (2, _) => f32::NEG_INFINITY,
                _ => next() * 20.0,
            })
            .collect();
        (o, lse)
    };
    [make(0), make(1)]
}

fn upload_state(ctx: &Context, (o, lse): &(HostTensor, Vec<f32>), dtype: DType) -> (Tensor, Tensor) {
    let s = o.shape;
    let l = HostTensor::new(lse.clone(), Shape::new(s.batch, s.heads, s.seq, 1), Layout::Bhsd).unwrap();
    (Tensor::upload_as(ctx, o, dtype).unwrap(), Tensor::upload(ctx, &l).unwrap())
}

#[test]
fn matches_the_oracle() {
    let ctx = ctx();
    for (shape, layout, dtype) in [
        (Shape::new(2, 3, 7, 40), Layout::Bhsd, DType::F32),
        (Shape::new(1, 4, 33, 59), Layout::Bshd, DType::F32),
        (Shape::new(2, 2, 5, 64), Layout::Bhsd, DType::F16),
        (Shape::new(1, 3, 9, 7), Layout::Bshd, DType::BF16),
    ] {
        let seed = fresh_seed();
        let [a, b] = states(shape, layout, seed).map(|(o, l)| (o.rounded(dtype), l));
        let want = reference::merge_states(&a.0, &a.1, &b.0, &b.1).unwrap();
        let (da, db) = (upload_state(ctx, &a, dtype), upload_state(ctx, &b, dtype));
        let mut rec = Recorder::new(ctx);
        let o = Tensor::zeros_as(ctx, shape, Layout::Bshd, dtype).unwrap();
        let lse =
            Tensor::zeros(ctx, Shape::new(shape.batch, shape.heads, shape.seq, 1), Layout::Bhsd).unwrap();
        o.fill(ctx, f32::NAN).unwrap();
        lse.fill(ctx, f32::NAN).unwrap();
        let info = rec.merge_states_into((&da.0, &da.1), (&db.0, &db.1), (&o, &lse)).unwrap();
        assert_eq!(info.kernel, "merge_states");
        rec.submit().unwrap().wait().unwrap();
        let got = o.to_host(ctx).unwrap();
        // the oracle's O is in a's layout
        let got: Vec<f32> = (0..shape.len())
            .map(|e| {
                let d = e % shape.head_dim;
                let r = e / shape.head_dim;
                let (i, h, bb) =
                    (r % shape.seq, (r / shape.seq) % shape.heads, r / (shape.seq * shape.heads));
                (bb, h, i, d)
            })
            .map(|(bb, h, i, d)| got.at(bb, h, i, d))
            .collect::<Vec<_>>();
        let want_bhsd: Vec<f64> = (0..shape.len())
            .map(|e| {
                let d = e % shape.head_dim;
                let r = e / shape.head_dim;
                let (i, h, bb) =
                    (r % shape.seq, (r / shape.seq) % shape.heads, r / (shape.seq * shape.heads));
                want.o[layout.offset(shape, bb, h, i, d)]
            })
            .collect();
        let (rel, max_abs) = reference::compare(&got, &want_bhsd);
        let lse_err = reference::compare_lse(&lse.to_host(ctx).unwrap().data, &want.lse);
        let tol = if dtype == DType::F32 { F32_REL_TOL } else { 1e-2 };
        eprintln!(
            "{shape} {layout:?} {dtype} seed={seed}: rel={rel:.2e} max_abs={max_abs:.2e} lse={lse_err:.2e}"
        );
        assert!(rel < tol && max_abs < tol * 100.0 && lse_err < 1e-5, "{shape} {dtype} seed={seed}");
        // rows that saw no key on either side (every 5th from row 2): O = 0, LSE = −∞
        let lse_host = lse.to_host(ctx).unwrap().data;
        assert!(lse_host.iter().skip(2).step_by(5).all(|&x| x == f32::NEG_INFINITY));
        assert!((0..shape.len()).filter(|e| (e / shape.head_dim) % 5 == 2).all(|e| got[e] == 0.0));
    }
}

#[test]
fn shapes_and_dtypes_must_agree() {
    let ctx = ctx();
    let s = Shape::new(1, 2, 3, 8);
    let [a, b] = states(s, Layout::Bhsd, 1);
    let (da, db) = (upload_state(ctx, &a, DType::F32), upload_state(ctx, &b, DType::F16));
    let err = wgpu_attention::merge_states(ctx, (&da.0, &da.1), (&db.0, &db.1)).unwrap_err();
    assert!(matches!(err, wgpu_attention::Error::UnsupportedDType(_)), "{err}");
    let other = Tensor::zeros(ctx, Shape::new(1, 2, 4, 8), Layout::Bhsd).unwrap();
    let err = wgpu_attention::merge_states(ctx, (&da.0, &da.1), (&other, &da.1)).unwrap_err();
    assert!(matches!(err, wgpu_attention::Error::ShapeMismatch(_)), "{err}");
    let err = wgpu_attention::merge_states(ctx, (&da.0, &da.0), (&da.0, &da.1)).unwrap_err();
    assert!(matches!(err, wgpu_attention::Error::ShapeMismatch(_)), "{err}");
}

/// ‖a − b‖ / ‖b‖.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn a_cache_split_across_two_contexts_equals_one_pass() {
    let seed = fresh_seed();
    for (nq, attn) in
        [(1, Attention::new()), (3, Attention::new().causal(Causal::BottomRight)), (40, Attention::new())]
    {
        let case = Case::new(nq, 1000, 64).heads(2, 8, 2).attn(attn.clone());
        let (q, k, v) = case.inputs(seed);
        let whole = wgpu_attention::attention(ctx(), &q, &k, &v, &attn).unwrap();
        // the first 617 keys on one context, the rest on another (as two machines would), each
        // with no mask across the cut: a bottom-right causal query sees all of the first part
        let cut = 617;
        let part = |t: &HostTensor, k0: usize, n: usize| {
            let s = t.shape;
            let data = (0..s.batch * s.heads * n * s.head_dim)
                .map(|e| {
                    let d = e % s.head_dim;
                    let r = e / s.head_dim;
                    let (j, h, b) = (r % n, (r / n) % s.heads, r / (n * s.heads));
                    t.at(b, h, k0 + j, d)
                })
                .collect();
            HostTensor::new(data, Shape::new(s.batch, s.heads, n, s.head_dim), Layout::Bhsd).unwrap()
        };
        let other = context_from(|o| o);
        let first =
            wgpu_attention::attention(&other, &q, &part(&k, 0, cut), &part(&v, 0, cut), &Attention::new())
                .unwrap();
        let rest_attn = attn.clone();
        let second = wgpu_attention::attention(
            ctx(),
            &q,
            &part(&k, cut, 1000 - cut),
            &part(&v, cut, 1000 - cut),
            &rest_attn,
        )
        .unwrap();
        // states computed apart, merged on one context
        let s = q.shape;
        let lse = |l: &[f32]| {
            HostTensor::new(l.to_vec(), Shape::new(s.batch, s.heads, s.seq, 1), Layout::Bhsd).unwrap()
        };
        let up = |t: &HostTensor| Tensor::upload(ctx(), t).unwrap();
        let (o1, l1, o2, l2) = (up(&first.o), up(&lse(&first.lse)), up(&second.o), up(&lse(&second.lse)));
        let merged = wgpu_attention::merge_states(ctx(), (&o1, &l1), (&o2, &l2)).unwrap();
        let (o, l) = (merged.o.to_host(ctx()).unwrap(), merged.lse.to_host(ctx()).unwrap());
        let (r, rl) = (rel(&o.data, &whole.o.data), rel(&l.data, &whole.lse));
        eprintln!("Nq {nq} seed={seed}: merged vs one pass rel {r:.2e}, LSE rel {rl:.2e}");
        assert!(r < 1e-5 && rl < 1e-5, "Nq {nq} seed={seed}: rel {r:.3e}, LSE rel {rl:.3e}");
    }
}

#[test]
fn cascade_prefix_and_suffixes_equal_the_flat_cache() {
    // 4 sequences share a 700-token prompt; each has its own suffix of a different length
    let (b, hq, hkv, d, prefix) = (4, 8, 2, 64, 700);
    let suffix_lens = [1usize, 37, 200, 64];
    let seed = fresh_seed();
    let ctx = ctx();
    let max_suffix = *suffix_lens.iter().max().unwrap();
    let case = Case::new(1, prefix + max_suffix, d).heads(b, hq, hkv);
    let (q, k, v) = case.inputs(seed);
    // flat: each sequence's cache is the shared prefix (batch 0's) followed by its own suffix
    let flat_kv = |t: &HostTensor| {
        let s = t.shape;
        let mut data = vec![0.0; s.len()];
        for bb in 0..b {
            for h in 0..hkv {
                for j in 0..s.seq {
                    for dd in 0..d {
                        let src = if j < prefix { t.at(0, h, j, dd) } else { t.at(bb, h, j, dd) };
                        data[Layout::Bhsd.offset(s, bb, h, j, dd)] = src;
                    }
                }
            }
        }
        HostTensor::new(data, s, Layout::Bhsd).unwrap()
    };
    let (kf, vf) = (flat_kv(&k), flat_kv(&v));
    let lens: Vec<u32> = suffix_lens.iter().map(|&n| (prefix + n) as u32).collect();
    let flat = wgpu_attention::attention(ctx, &q, &kf, &vf, &Attention::new().kv_lens(lens)).unwrap();

    // cascade: the prefix once (batch 1 of K/V, all query heads of every sequence as rows of
    // one "batch" of B·Nq queries per head), the suffixes per sequence, merged
    let (kd, vd) = (Tensor::upload(ctx, &kf).unwrap(), Tensor::upload(ctx, &vf).unwrap());
    let prefix_k = kd.narrow(0, 0, 1).unwrap().narrow(2, 0, prefix).unwrap();
    let prefix_v = vd.narrow(0, 0, 1).unwrap().narrow(2, 0, prefix).unwrap();
    let qd = Tensor::upload(ctx, &q).unwrap();
    // the queries of all sequences as one batch of B queries per head: [1, Hq, B, D] by strides
    let [sb, sh, _] = qd.strides();
    let q_all = qd.view(Shape::new(1, hq, b, d), [0, sh, sb], 0).unwrap();
    let mut rec = Recorder::new(ctx);
    let shared =
        rec.forward(&q_all, &prefix_k, &prefix_v, &Attention::new().scale(1.0 / (d as f32).sqrt())).unwrap();
    let suffix_k = kd.narrow(2, prefix, max_suffix).unwrap();
    let suffix_v = vd.narrow(2, prefix, max_suffix).unwrap();
    let own = rec
        .forward(
            &qd,
            &suffix_k,
            &suffix_v,
            &Attention::new().kv_lens(suffix_lens.iter().map(|&n| n as u32).collect()),
        )
        .unwrap();
    rec.submit().unwrap();
    // the shared state, [1, Hq, B] rows, seen as [B, Hq, 1]
    let so = shared.o.to_host(ctx).unwrap();
    let sl = shared.lse.to_host(ctx).unwrap();
    let mut o_b = vec![0.0; q.shape.len()];
    let mut l_b = vec![0.0; b * hq];
    for bb in 0..b {
        for h in 0..hq {
            l_b[bb * hq + h] = sl.at(0, h, bb, 0);
            for dd in 0..d {
                o_b[(bb * hq + h) * d + dd] = so.at(0, h, bb, dd);
            }
        }
    }
    let shared_o = Tensor::upload(ctx, &HostTensor::new(o_b, q.shape, Layout::Bhsd).unwrap()).unwrap();
    let shared_l =
        Tensor::upload(ctx, &HostTensor::new(l_b, Shape::new(b, hq, 1, 1), Layout::Bhsd).unwrap()).unwrap();
    let merged = wgpu_attention::merge_states(ctx, (&shared_o, &shared_l), (&own.o, &own.lse)).unwrap();
    let o = merged.o.to_host(ctx).unwrap();
    let l = merged.lse.to_host(ctx).unwrap();
    let (r, rl) = (rel(&o.data, &flat.o.data), rel(&l.data, &flat.lse));
    eprintln!("cascade seed={seed}: rel {r:.2e}, LSE rel {rl:.2e}");
    assert!(r < 1e-5 && rl < 1e-5, "cascade seed={seed}: rel {r:.3e}, LSE rel {rl:.3e}");
}
