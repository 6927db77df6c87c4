//! The paged KV cache (`paged`): appends recorded on the device into pages in shuffled physical
//! order, attention of batches of sequences of mixed lengths (0 and 1 included) through their
//! page tables, against the f64 oracle on the same tokens held contiguously; pools in several
//! slabs; the typed errors (full pool, unknown sequence, wrong shapes). Outputs are poisoned
//! with NaN before each run.

mod common;

use common::{context_with, ctx, F32_REL_TOL};
use wgpu_attention::cpu::reference;
use wgpu_attention::paged::{PagedKvCache, PagedKvConfig, SeqId};
use wgpu_attention::testing::{alibi_slopes, fresh_seed};
use wgpu_attention::{
    Attention, Causal, Context, DType, Error, HostTensor, Layout, Mask, Recorder, Shape, Tensor,
};

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// A problem run through a cache: sequences' final lengths, the append steps (tokens per step
/// for every sequence), and the query.
struct Run {
    hq: usize,
    hkv: usize,
    d: usize,
    page_size: usize,
    lens: Vec<usize>,
    nq: usize,
    dtype: DType,
    attn: Attention,
}

/// Fill a cache with each sequence's tokens (appended in steps of varying size, the sequences
/// that are already full sitting out), run attention through it and compare with the oracle.
fn check_run(ctx: &Context, r: &Run, seed: u64) -> (f64, usize) {
    let b = r.lens.len();
    let max_len = *r.lens.iter().max().unwrap();
    let pages: usize = r.lens.iter().map(|l| l.div_ceil(r.page_size)).sum::<usize>() + 3;
    let config =
        PagedKvConfig { pages, page_size: r.page_size, kv_heads: r.hkv, head_dim: r.d, dtype: r.dtype };
    let mut cache = PagedKvCache::new(ctx, config).unwrap();
    cache.shuffle_free_pages(seed);
    let ids: Vec<SeqId> = (0..b).map(|_| cache.add_sequence()).collect();
    // the whole K/V of each sequence, [1, Hkv, len, D], rounded to the cache's dtype
    let kv: Vec<(HostTensor, HostTensor)> = r
        .lens
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            let s = Shape::new(1, r.hkv, l.max(1), r.d);
            let t = |salt| {
                HostTensor::new(values(s.len(), seed ^ (i as u64 * 31 + salt)), s, Layout::Bhsd)
                    .unwrap()
                    .rounded(r.dtype)
            };
            (t(1), t(2))
        })
        .collect();
    // append: a first chunk, then steps of 1, 3, 1, 17, ... until every sequence is full
    let steps = [r.page_size + 5, 1, 3, 1, 17, 1, 2 * r.page_size - 1];
    let mut done = vec![0usize; b];
    let mut step = 0;
    let mut rec = Recorder::new(ctx);
    while done.iter().zip(&r.lens).any(|(d, l)| d < l) {
        let t = steps[step % steps.len()].max(if step > 6 { 1000 } else { 1 });
        step += 1;
        // the sequences with tokens left, each taking min(t, what is left): grouped by that count
        let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (i, (&len, &d)) in r.lens.iter().zip(&done).enumerate() {
            let n = t.min(len - d);
            if n > 0 {
                groups.entry(n).or_default().push(i);
            }
        }
        for (n, members) in groups {
            let s = Shape::new(members.len(), r.hkv, n, r.d);
            let slice = |which: usize| {
                let mut data = Vec::with_capacity(s.len());
                for &i in &members {
                    let src = if which == 0 { &kv[i].0 } else { &kv[i].1 };
                    for h in 0..r.hkv {
                        for j in done[i]..done[i] + n {
                            for dd in 0..r.d {
                                data.push(src.at(0, h, j, dd));
                            }
                        }
                    }
                }
                Tensor::upload_as(ctx, &HostTensor::new(data, s, Layout::Bhsd).unwrap(), r.dtype).unwrap()
            };
            let (k, v) = (slice(0), slice(1));
            let seqs: Vec<SeqId> = members.iter().map(|&i| ids[i]).collect();
            cache.append(&mut rec, &seqs, &k, &v).unwrap();
            for &i in &members {
                done[i] += n;
            }
        }
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(cache.len(*id).unwrap(), r.lens[i]);
    }
    // Q, and the oracle on the same tokens held contiguously ([B, Hkv, max_len, D] + key lengths)
    let qs = Shape::new(b, r.hq, r.nq, r.d);
    let q = HostTensor::new(values(qs.len(), seed ^ 77), qs, Layout::Bhsd).unwrap().rounded(r.dtype);
    let ks = Shape::new(b, r.hkv, max_len.max(1), r.d);
    let flat = |which: usize| {
        let mut data = vec![0.0; ks.len()];
        for (i, (k, v)) in kv.iter().enumerate() {
            let src = if which == 0 { k } else { v };
            for h in 0..r.hkv {
                for j in 0..r.lens[i] {
                    for dd in 0..r.d {
                        data[Layout::Bhsd.offset(ks, i, h, j, dd)] = src.at(0, h, j, dd);
                    }
                }
            }
        }
        HostTensor::new(data, ks, Layout::Bhsd).unwrap()
    };
    let lens: Vec<u32> = r.lens.iter().map(|&l| l as u32).collect();
    let want = reference::attention(&q, &flat(0), &flat(1), &r.attn.clone().kv_lens(lens)).unwrap();
    let qd = Tensor::upload_as(ctx, &q, r.dtype).unwrap();
    let o = Tensor::zeros_as(ctx, qs, Layout::Bhsd, r.dtype).unwrap();
    let lse = Tensor::zeros(ctx, Shape::new(b, r.hq, r.nq, 1), Layout::Bhsd).unwrap();
    o.fill(ctx, f32::NAN).unwrap();
    lse.fill(ctx, f32::NAN).unwrap();
    let info = cache.attention_into(&mut rec, &qd, &ids, &r.attn, (&o, &lse)).unwrap();
    assert!(info.kernel.starts_with("decode"), "{info:?}");
    rec.submit().unwrap();
    let (o, lse) = (o.to_host(ctx).unwrap(), lse.to_host(ctx).unwrap());
    let (rel, max_abs) = reference::compare(&o.data, &want.o);
    let lse_err = reference::compare_lse(&lse.data, &want.lse);
    let tol = if r.dtype == DType::F32 { F32_REL_TOL } else { 1e-2 };
    eprintln!(
        "paged P{} lens {:?} Hq{} Hkv{} Nq{} D{} {} seed={seed}: rel={rel:.2e} max_abs={max_abs:.2e} lse={lse_err:.2e} ({} slabs)",
        r.page_size, r.lens, r.hq, r.hkv, r.nq, r.d, r.dtype, cache.slabs()
    );
    assert!(
        rel < tol && max_abs < tol * 100.0 && lse_err < tol * 10.0,
        "seed={seed}: rel {rel:e} lse {lse_err:e}"
    );
    (rel, cache.slabs())
}

fn run(
    page_size: usize,
    lens: &[usize],
    (hq, hkv): (usize, usize),
    nq: usize,
    d: usize,
    attn: Attention,
) -> Run {
    Run { hq, hkv, d, page_size, lens: lens.to_vec(), nq, dtype: DType::F32, attn }
}

#[test]
fn mixed_lengths_through_shuffled_pages() {
    let seed = fresh_seed();
    for r in [
        run(16, &[1, 2, 17, 1000, 0, 33], (8, 2), 1, 64, Attention::new()),
        run(64, &[129, 64, 1, 500], (4, 4), 3, 40, Attention::new().causal(Causal::BottomRight)),
        run(256, &[300, 257, 12], (8, 1), 16, 59, Attention::new().causal(Causal::BottomRight)),
        run(
            32,
            &[100, 70],
            (16, 2),
            2,
            128,
            Attention::new().mask(Mask::Window { left: Some(40), right: Some(0) }),
        ),
        run(16, &[90, 45], (4, 2), 4, 64, Attention::new().alibi_slopes(alibi_slopes(4)).softcap(10.0)),
    ] {
        check_run(ctx(), &r, seed);
    }
}

#[test]
fn long_sequences_and_prefill_over_pages() {
    let seed = fresh_seed();
    check_run(ctx(), &run(128, &[32_769, 5], (2, 1), 1, 64, Attention::new()), seed);
    check_run(
        ctx(),
        &run(256, &[100_003], (2, 1), 2, 32, Attention::new().causal(Causal::BottomRight)),
        seed,
    );
    // more queries than a decode step: prefill of the newest 40 tokens over the cache
    check_run(
        ctx(),
        &run(64, &[300, 41], (4, 2), 40, 64, Attention::new().causal(Causal::BottomRight)),
        seed,
    );
}

#[test]
fn sixteen_bit_pages() {
    let seed = fresh_seed();
    for dtype in [DType::F16, DType::BF16] {
        let r = Run { dtype, ..run(16, &[77, 3, 200], (8, 2), 1, 63, Attention::new()) };
        check_run(ctx(), &r, seed);
    }
}

#[test]
fn a_pool_in_several_slabs() {
    // bindings of 64 KiB: pages of 16 tokens × 2 heads × 64 × 4 bytes = 8 KiB, 8 to a slab
    let small = context_with(|l| l.max_storage_buffer_binding_size = 64 << 10);
    let (_, slabs) =
        check_run(&small, &run(16, &[300, 1, 170], (4, 2), 2, 64, Attention::new()), fresh_seed());
    assert!(slabs > 2, "{slabs} slabs");
}

#[test]
fn typed_errors() {
    let ctx = ctx();
    let config = PagedKvConfig { pages: 4, page_size: 16, kv_heads: 2, head_dim: 32, dtype: DType::F32 };
    for bad in [
        PagedKvConfig { page_size: 24, ..config },
        PagedKvConfig { page_size: 512, ..config },
        PagedKvConfig { pages: 0, ..config },
        PagedKvConfig { head_dim: 300, ..config },
    ] {
        assert!(PagedKvCache::new(ctx, bad).is_err(), "{bad:?}");
    }
    let mut cache = PagedKvCache::new(ctx, config).unwrap();
    let a = cache.add_sequence();
    let kv = |t: usize| Tensor::zeros(ctx, Shape::new(1, 2, t, 32), Layout::Bhsd).unwrap();
    let mut rec = Recorder::new(ctx);
    cache.append(&mut rec, &[a], &kv(40), &kv(40)).unwrap(); // 3 pages
                                                             // 30 more tokens need 2 more pages: 1 is free
    let err = cache.append(&mut rec, &[a], &kv(30), &kv(30)).unwrap_err();
    assert!(matches!(err, Error::PoolFull { needed: 2, free: 1, pages: 4 }), "{err}");
    assert_eq!(cache.len(a).unwrap(), 40, "a failed append changes nothing");
    // wrong shapes and dtypes
    let err = cache
        .append(&mut rec, &[a], &Tensor::zeros(ctx, Shape::new(1, 3, 1, 32), Layout::Bhsd).unwrap(), &kv(1))
        .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch(_)), "{err}");
    let half = Tensor::zeros_as(ctx, Shape::new(1, 2, 1, 32), Layout::Bhsd, DType::F16).unwrap();
    assert!(matches!(cache.append(&mut rec, &[a], &half, &half).unwrap_err(), Error::UnsupportedDType(_)));
    // a removed sequence, a sequence given twice, kv_lens on a paged call
    let b = cache.add_sequence();
    cache.remove_sequence(a).unwrap();
    assert_eq!(cache.free_pages(), 4);
    let q = Tensor::zeros(ctx, Shape::new(1, 2, 1, 32), Layout::Bhsd).unwrap();
    assert!(matches!(
        cache.attention(&mut rec, &q, &[a], &Attention::new()).unwrap_err(),
        Error::InvalidOption(_)
    ));
    let q2 = Tensor::zeros(ctx, Shape::new(2, 2, 1, 32), Layout::Bhsd).unwrap();
    assert!(matches!(
        cache.attention(&mut rec, &q2, &[b, b], &Attention::new()).unwrap_err(),
        Error::InvalidOption(_)
    ));
    let err = cache.attention(&mut rec, &q, &[b], &Attention::new().kv_lens(vec![1])).unwrap_err();
    assert!(matches!(err, Error::InvalidOption(_)), "{err}");
    // Q whose batch is not the number of sequences
    assert!(matches!(
        cache.attention(&mut rec, &q2, &[b], &Attention::new()).unwrap_err(),
        Error::ShapeMismatch(_)
    ));
    // an empty sequence: O = 0, LSE −∞
    let out = cache.attention(&mut rec, &q, &[b], &Attention::new()).unwrap();
    rec.submit().unwrap();
    assert!(out.o.to_host(ctx).unwrap().data.iter().all(|&x| x == 0.0));
    assert!(out.lse.to_host(ctx).unwrap().data.iter().all(|&x| x == f32::NEG_INFINITY));
}
