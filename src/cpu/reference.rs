//! The f64 oracle: plain loops over every (batch, head, query, key), no tiling, no online softmax.
//! It implements every option of [`Attention`] and is the ground truth of the tests and of
//! `wgattn check`. It is slow on purpose: obviously right beats fast here.

use crate::attention::{Attention, HostTensor, Layout};
use crate::error::Result;

/// Output of the oracle.
#[derive(Clone, Debug)]
pub struct Reference {
    /// O in Q's layout and shape.
    pub o: Vec<f64>,
    /// Natural-log sum of exp of the scores, `[B, Hq, Nq]`; −∞ for a row with no visible key.
    pub lse: Vec<f64>,
}

/// The visibility predicate (key padding, causal, masks) shared with the block-mask builder.
pub use crate::mask::visible;

/// Compute attention in f64 on the host.
pub fn attention(q: &HostTensor, k: &HostTensor, v: &HostTensor, attn: &Attention) -> Result<Reference> {
    let p = attn.validate(q.shape, k.shape, v.shape)?;
    let scale = attn.scale_for(p.head_dim) as f64;
    let softcap = attn.softcap.map(f64::from);
    let mut o = vec![0.0f64; q.shape.len()];
    let mut lse = vec![f64::NEG_INFINITY; p.batch * p.q_heads * p.q_len];
    let d = p.head_dim;
    let dims = p.dims();
    let mut scores = vec![0.0f64; p.kv_len];
    let mut acc = vec![0.0f64; d];
    for b in 0..p.batch {
        let kv_len_b = attn.kv_lens.as_ref().map_or(p.kv_len, |l| l[b] as usize);
        for hk in 0..p.kv_heads {
            // this K/V head as contiguous f64 rows
            let rows = |t: &HostTensor| -> Vec<f64> {
                (0..p.kv_len)
                    .flat_map(|j| (0..d).map(move |x| (j, x)))
                    .map(|(j, x)| t.at(b, hk, j, x) as f64)
                    .collect()
            };
            let (kh, vh) = (rows(k), rows(v));
            for h in hk * p.group()..(hk + 1) * p.group() {
                let slope = attn.alibi_slopes.as_ref().map(|s| s[h] as f64);
                for i in 0..p.q_len {
                    let qi: Vec<f64> = (0..d).map(|x| q.at(b, h, i, x) as f64).collect();
                    let mut max = f64::NEG_INFINITY;
                    for (j, s_out) in scores.iter_mut().enumerate() {
                        if !visible(attn, dims, b, h, i, j) {
                            *s_out = f64::NEG_INFINITY;
                            continue;
                        }
                        let dot: f64 = qi.iter().zip(&kh[j * d..(j + 1) * d]).map(|(a, b)| a * b).sum();
                        let mut s = scale * dot;
                        if let Some(cap) = softcap {
                            s = cap * (s / cap).tanh();
                        }
                        if let Some(slope) = slope {
                            s -= slope * (i as f64 + kv_len_b as f64 - p.q_len as f64 - j as f64).abs();
                        }
                        *s_out = s;
                        max = max.max(s);
                    }
                    if max == f64::NEG_INFINITY {
                        continue; // no visible key: O stays 0, LSE stays −∞
                    }
                    acc.iter_mut().for_each(|a| *a = 0.0);
                    let mut sum = 0.0;
                    for (j, &s) in scores.iter().enumerate() {
                        if s == f64::NEG_INFINITY {
                            continue;
                        }
                        let w = (s - max).exp();
                        sum += w;
                        for (a, &vv) in acc.iter_mut().zip(&vh[j * d..(j + 1) * d]) {
                            *a += w * vv;
                        }
                    }
                    lse[(b * p.q_heads + h) * p.q_len + i] = max + sum.ln();
                    for (x, a) in acc.iter().enumerate() {
                        o[q.layout.offset(q.shape, b, h, i, x)] = a / sum;
                    }
                }
            }
        }
    }
    Ok(Reference { o, lse })
}

/// Relative error ‖a−b‖/‖b‖ and max abs error of `got` against `want`, ignoring nothing: a NaN in
/// `got` makes both errors NaN (so a comparison `< tol` fails).
pub fn compare(got: &[f32], want: &[f64]) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "compare: lengths differ");
    let (mut num, mut den, mut max_abs) = (0.0f64, 0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        let diff = g as f64 - w;
        num += diff * diff;
        den += w * w;
        max_abs = if diff.is_nan() { f64::NAN } else { max_abs.max(diff.abs()) };
    }
    let rel = if den > 0.0 { num.sqrt() / den.sqrt() } else { num.sqrt() };
    (rel, max_abs)
}

/// Max abs difference of two LSE vectors where −∞ must match −∞ exactly (infinite error otherwise).
pub fn compare_lse(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "compare_lse: lengths differ");
    got.iter().zip(want).fold(0.0f64, |acc, (&g, &w)| {
        let e = if w == f64::NEG_INFINITY {
            if g == f32::NEG_INFINITY {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            (g as f64 - w).abs()
        };
        if e.is_nan() {
            f64::NAN
        } else {
            acc.max(e)
        }
    })
}

/// Layout helper for callers that want a result in another order.
pub fn relayout(data: &[f64], shape: crate::attention::Shape, from: Layout, to: Layout) -> Vec<f64> {
    let mut out = vec![0.0; data.len()];
    for b in 0..shape.batch {
        for h in 0..shape.heads {
            for s in 0..shape.seq {
                for d in 0..shape.head_dim {
                    out[to.offset(shape, b, h, s, d)] = data[from.offset(shape, b, h, s, d)];
                }
            }
        }
    }
    out
}
