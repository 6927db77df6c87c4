//! The f64 oracle: plain loops over every (batch, head, query, key), no tiling, no online softmax.
//! It implements every option of [`Attention`] and is the ground truth of the tests and of
//! `wgattn check`. It is slow on purpose: obviously right beats fast here.

use crate::attention::{Attention, Causal, HostTensor};
use crate::dtype::DType;
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

/// Compute attention in f64 on the host. 16-bit inputs are taken exactly: upload them with
/// [`HostTensor::from_elements`] or compute on [`HostTensor::rounded`] copies.
pub fn attention(q: &HostTensor, k: &HostTensor, v: &HostTensor, attn: &Attention) -> Result<Reference> {
    attention_with(q, k, v, attn, None)
}

/// The same computation done naively in a storage precision, the yardstick of FlashAttention's
/// 16-bit tests: scores rounded to f32, the softmax's probabilities P rounded to `storage`
/// before P·V (which accumulates exactly), and O rounded to `o` (LSE as [`attention`]'s). A 16-bit
/// kernel's error against [`attention`] should be at most about twice this one's.
pub fn attention_in_storage(
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    attn: &Attention,
    storage: DType,
    o: DType,
) -> Result<Reference> {
    let mut r = attention_with(q, k, v, attn, Some(storage))?;
    r.o.iter_mut().for_each(|x| *x = o.round(*x as f32) as f64);
    Ok(r)
}

/// [`attention`], with the scores rounded to f32 and P to `storage` when it is given.
fn attention_with(
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    attn: &Attention,
    storage: Option<DType>,
) -> Result<Reference> {
    let p = attn.validate(q.shape, k.shape, v.shape)?;
    let scale = attn.scale_for(p.head_dim) as f64;
    let softcap = attn.softcap.map(f64::from);
    let mut o = vec![0.0f64; q.shape.len()];
    let mut lse = vec![f64::NEG_INFINITY; p.batch * p.q_heads * p.q_len];
    let d = p.head_dim;
    let dims = p.dims();
    // dynamic sparsity: the selected key blocks of each (batch, head, query block)
    let topk = match &attn.topk {
        Some(t) => Some((t.block_size, topk_blocks(q, k, attn)?)),
        None => None,
    };
    let selected = |b: usize, h: usize, i: usize, j: usize| -> bool {
        topk.as_ref().is_none_or(|(s, lists)| {
            let qbs = p.q_len.div_ceil(*s);
            lists[(b * p.q_heads + h) * qbs + i / s].0.contains(&((j / s) as u32))
        })
    };
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
                        if !visible(attn, dims, b, h, i, j) || !selected(b, h, i, j) {
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
                        if storage.is_some() {
                            s = s as f32 as f64;
                        }
                        *s_out = s;
                        max = max.max(s);
                    }
                    if max == f64::NEG_INFINITY {
                        continue; // no visible key: O stays 0, LSE stays −∞
                    }
                    let sum: f64 =
                        scores.iter().filter(|&&s| s > f64::NEG_INFINITY).map(|s| (s - max).exp()).sum();
                    acc.iter_mut().for_each(|a| *a = 0.0);
                    for (j, &s) in scores.iter().enumerate() {
                        if s == f64::NEG_INFINITY {
                            continue;
                        }
                        let mut w = (s - max).exp() / sum;
                        if let Some(t) = storage {
                            w = t.round(w as f32) as f64;
                        }
                        for (a, &vv) in acc.iter_mut().zip(&vh[j * d..(j + 1) * d]) {
                            *a += w * vv;
                        }
                    }
                    lse[(b * p.q_heads + h) * p.q_len + i] = max + sum.ln();
                    for (x, a) in acc.iter().enumerate() {
                        o[q.layout.offset(q.shape, b, h, i, x)] = *a;
                    }
                }
            }
        }
    }
    Ok(Reference { o, lse })
}

/// Combine two attention states computed over disjoint key sets (O₁, LSE₁) and (O₂, LSE₂) in
/// f64: `LSE = log(e^LSE₁ + e^LSE₂)`, `O = e^(LSE₁−LSE)·O₁ + e^(LSE₂−LSE)·O₂`. A side with
/// LSE = −∞ contributes nothing (its O is not read); both −∞ give O = 0, LSE = −∞. O₁ and O₂
/// must have one shape (any layouts); O comes in O₁'s layout, LSE `[B, H, N]`.
pub fn merge_states(o1: &HostTensor, lse1: &[f32], o2: &HostTensor, lse2: &[f32]) -> Result<Reference> {
    use crate::error::Error;
    let s = o1.shape;
    let rows = s.batch * s.heads * s.seq;
    if o2.shape != s || lse1.len() != rows || lse2.len() != rows {
        return Err(Error::ShapeMismatch(format!(
            "merge_states: O₁ is {s}, O₂ {} with {} and {} LSE values: both O of one shape, one LSE per row ({rows})",
            o2.shape,
            lse1.len(),
            lse2.len()
        )));
    }
    let mut o = vec![0.0; s.len()];
    let mut lse = vec![f64::NEG_INFINITY; rows];
    for b in 0..s.batch {
        for h in 0..s.heads {
            for i in 0..s.seq {
                let r = (b * s.heads + h) * s.seq + i;
                let (l1, l2) = (lse1[r] as f64, lse2[r] as f64);
                let m = l1.max(l2);
                if m == f64::NEG_INFINITY {
                    continue;
                }
                let w = |l: f64| if l == f64::NEG_INFINITY { 0.0 } else { (l - m).exp() };
                let (w1, w2) = (w(l1), w(l2));
                lse[r] = m + (w1 + w2).ln();
                for d in 0..s.head_dim {
                    let at = |t: &HostTensor| t.at(b, h, i, d) as f64;
                    let x1 = if w1 > 0.0 { w1 * at(o1) } else { 0.0 };
                    let x2 = if w2 > 0.0 { w2 * at(o2) } else { 0.0 };
                    o[o1.layout.offset(s, b, h, i, d)] = (x1 + x2) / (w1 + w2);
                }
            }
        }
    }
    Ok(Reference { o, lse })
}

/// `Y = X·Wᵀ + bias` (PyTorch's `F.linear`) in f64: X `[B, H, S, K]`, W `[1, 1, N, K]`, the bias
/// `[1, 1, 1, N]`; Y `[B, H, S, N]` in X's layout.
pub fn linear(x: &HostTensor, w: &HostTensor, bias: Option<&HostTensor>) -> Result<Vec<f64>> {
    use crate::attention::Shape;
    use crate::error::Error;
    let (xs, ws) = (x.shape, w.shape);
    let n = ws.seq;
    if ws.batch != 1
        || ws.heads != 1
        || ws.head_dim != xs.head_dim
        || bias.is_some_and(|b| b.shape != Shape::new(1, 1, 1, n))
    {
        return Err(Error::ShapeMismatch(format!(
            "linear: X {xs}, W {ws}, bias {:?}: W must be [1, 1, N, K] for X's K, the bias [1, 1, 1, N]",
            bias.map(|b| b.shape)
        )));
    }
    let ys = Shape::new(xs.batch, xs.heads, xs.seq, n);
    let mut y = vec![0.0; ys.len()];
    for b in 0..xs.batch {
        for h in 0..xs.heads {
            for s in 0..xs.seq {
                for j in 0..n {
                    let dot: f64 =
                        (0..xs.head_dim).map(|i| x.at(b, h, s, i) as f64 * w.at(0, 0, j, i) as f64).sum();
                    y[x.layout.offset(ys, b, h, s, j)] = dot + bias.map_or(0.0, |t| t.at(0, 0, 0, j) as f64);
                }
            }
        }
    }
    Ok(y)
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

/// The top-k block selection of [`crate::mask::TopK`] in f64: per (batch, query head, query
/// block), the chosen key blocks in ascending order, and every eligible block's score (for
/// judging near-ties). Lists are in (batch, head, query block) order.
pub fn topk_blocks(q: &HostTensor, k: &HostTensor, attn: &Attention) -> Result<Vec<(Vec<u32>, Vec<f64>)>> {
    let p = attn.validate(q.shape, k.shape, k.shape)?;
    let t = attn.topk.ok_or_else(|| crate::Error::InvalidOption("no top-k option set".into()))?;
    let (s, d) = (t.block_size, p.head_dim);
    let scale = attn.scale_for(d) as f64;
    let (qbs, kbs) = (p.q_len.div_ceil(s), p.kv_len.div_ceil(s));
    let mean = |x: &HostTensor, b: usize, h: usize, rows: std::ops::Range<usize>| -> Vec<f64> {
        let n = rows.len().max(1) as f64;
        (0..d).map(|c| rows.clone().map(|r| x.at(b, h, r, c) as f64).sum::<f64>() / n).collect()
    };
    let mut out = Vec::with_capacity(p.batch * p.q_heads * qbs);
    for b in 0..p.batch {
        let len = attn.kv_lens.as_ref().map_or(p.kv_len, |l| l[b] as usize);
        for h in 0..p.q_heads {
            let hk = h / p.group();
            let pooled_k: Vec<Vec<f64>> =
                (0..kbs).map(|kb| mean(k, b, hk, kb * s..((kb + 1) * s).min(len).max(kb * s))).collect();
            for qb in 0..qbs {
                let i_last = ((qb + 1) * s).min(p.q_len) - 1;
                let pos = match attn.causal {
                    Some(Causal::TopLeft) => i_last as i64,
                    _ => i_last as i64 + len as i64 - p.q_len as i64,
                };
                let mut limit = len.div_ceil(s);
                if attn.causal.is_some() {
                    limit = if pos < 0 { 0 } else { limit.min(pos as usize / s + 1) };
                }
                let pq = mean(q, b, h, qb * s..(i_last + 1));
                let scores: Vec<f64> = (0..limit)
                    .map(|kb| scale * pq.iter().zip(&pooled_k[kb]).map(|(x, y)| x * y).sum::<f64>())
                    .collect();
                let mut chosen = Vec::new();
                if limit > 0 {
                    let local = (pos.clamp(0, len as i64 - 1) as usize / s).min(limit - 1);
                    chosen.push(local);
                    if t.sink && local != 0 {
                        chosen.push(0);
                    }
                    let wanted = t.k.saturating_sub(chosen.len());
                    let mut rest: Vec<usize> = (0..limit).filter(|kb| !chosen.contains(kb)).collect();
                    // score descending, then block index ascending
                    rest.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
                    chosen.extend(rest.into_iter().take(wanted));
                }
                chosen.sort_unstable();
                out.push((chosen.into_iter().map(|x| x as u32).collect(), scores));
            }
        }
    }
    Ok(out)
}
