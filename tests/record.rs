//! Recording apart from submitting: many calls of different shapes and masks recorded into one
//! submission, each checked against the f64 oracle with NaN-poisoned outputs; the same from 8
//! threads sharing one context, equal to the single-threaded results; tensor views (offsets into
//! shared buffers, a KV cache's first positions) as inputs.

mod common;

use wgpu_attention::cpu::reference;
use wgpu_attention::testing::{alibi_slopes, errors, fresh_seed, Case};
use wgpu_attention::{Attention, Causal, Context, DType, HostTensor, Layout, Mask, Recorder, Shape, Tensor};

/// Sixteen calls that differ in shapes, layouts, options and masks (odd lengths, q_len ≠ kv_len,
/// head dims 40, 59, 111 among them).
fn cases() -> Vec<Case> {
    let br = || Attention::new().causal(Causal::BottomRight);
    let tl = || Attention::new().causal(Causal::TopLeft);
    vec![
        Case::new(37, 53, 64),
        Case::new(100, 100, 32).attn(br()),
        Case::new(65, 130, 40).heads(2, 4, 2).attn(tl()),
        Case::new(1, 300, 64).heads(1, 8, 1).attn(br()),
        Case::new(77, 91, 59).layout(Layout::Bshd),
        Case::new(128, 128, 128).heads(1, 2, 2).attn(br().mask(Mask::window(20, 0))),
        Case::new(50, 70, 16).heads(2, 2, 1).attn(Attention::new().kv_lens(vec![0, 33])),
        Case::new(90, 90, 64).heads(1, 4, 4).attn(Attention::new().alibi_slopes(alibi_slopes(4))),
        Case::new(33, 200, 111).attn(Attention::new().softcap(20.0)),
        Case::new(64, 64, 24).heads(1, 3, 1).attn(Attention::new().scale(0.3)),
        Case::new(150, 150, 64).attn(br().mask(Mask::window(30, 0)).block_size(32)),
        Case::new(40, 1000, 32).attn(Attention::new().num_splits(4)),
        Case::new(129, 129, 48).layout(Layout::Bshd).heads(1, 4, 2).attn(tl()),
        Case::new(256, 256, 64).attn(br().topk(2, 64)),
        Case::new(17, 23, 8).heads(3, 2, 2),
        Case::new(200, 60, 80).attn(br()),
    ]
}

/// Record every case into `rec` with poisoned outputs; returns the outputs to read back.
fn record_all(ctx: &Context, rec: &mut Recorder<'_>, cases: &[Case], seed: u64) -> Vec<(Tensor, Tensor)> {
    cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let (q, k, v) = case.inputs(seed + i as u64);
            let [q, k, v] = [q, k, v].map(|t| Tensor::upload(ctx, &t).unwrap());
            let o = Tensor::zeros(ctx, q.shape(), case.layout).unwrap();
            let lse = Tensor::zeros(ctx, Shape::new(case.batch, case.q_heads, case.q_len, 1), Layout::Bhsd)
                .unwrap();
            o.fill(ctx, f32::NAN).unwrap();
            lse.fill(ctx, f32::NAN).unwrap();
            rec.forward_into(&q, &k, &v, &case.attn, &o, &lse).unwrap_or_else(|e| panic!("{case}: {e}"));
            (o, lse)
        })
        .collect()
}

/// Record all cases, submit once, read every output back: (O, LSE) per case.
fn run_once(ctx: &Context, cases: &[Case], seed: u64) -> Vec<(Vec<f32>, Vec<f32>)> {
    let mut rec = Recorder::new(ctx);
    let outputs = record_all(ctx, &mut rec, cases, seed);
    assert_eq!(rec.calls().len(), cases.len());
    let submission = rec.submit().unwrap();
    let calls = submission.wait().unwrap();
    assert_eq!(calls.len(), cases.len());
    for (case, call) in cases.iter().zip(&calls) {
        // the fused forward (with its tiles), or the decode kernel for the short queries
        assert!(
            (call.tiles.is_some() || call.kernel.starts_with("decode")) && call.dispatches >= 1,
            "{case}: {call:?}"
        );
    }
    outputs.iter().map(|(o, lse)| (o.to_host(ctx).unwrap().data, lse.to_host(ctx).unwrap().data)).collect()
}

#[test]
fn sixteen_calls_in_one_submission_match_the_oracle() {
    let ctx = common::ctx();
    let cases = cases();
    assert_eq!(cases.len(), 16);
    let seed = fresh_seed();
    let got = run_once(ctx, &cases, seed);
    for (i, (case, (o, lse))) in cases.iter().zip(&got).enumerate() {
        let (q, k, v) = case.inputs(seed + i as u64);
        let want = reference::attention(&q, &k, &v, &case.attn).unwrap();
        let e = errors(o, lse, &want, None);
        eprintln!("{case}: rel={:.2e} max_abs={:.2e} lse={:.2e}", e.rel, e.max_abs, e.lse_max_abs);
        assert!(e.pass(common::F32_REL_TOL), "{case} (WGATTN_SEED={seed}): {e:?}");
    }
}

#[test]
fn eight_threads_share_one_context_and_agree_with_one_thread() {
    let ctx = common::ctx();
    let cases = cases();
    let seed = fresh_seed();
    let alone = run_once(ctx, &cases, seed);
    let together: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|_| s.spawn(|| run_once(ctx, &cases, seed))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (t, got) in together.iter().enumerate() {
        for (case, (a, b)) in cases.iter().zip(alone.iter().zip(got)) {
            // the same kernel on the same inputs: the same bits (no NaN, and −∞ == −∞)
            assert!(a == b, "thread {t}, {case}: outputs differ from the single-threaded run");
        }
    }
}

#[test]
fn a_call_outputs_feed_the_next_in_one_submission() {
    // O of the first call is Q of the second: no host round trip between them
    let ctx = common::ctx();
    let case = Case::new(70, 70, 32).heads(1, 2, 2);
    let (q, k, v) = case.inputs(fresh_seed());
    let [qd, kd, vd] = [&q, &k, &v].map(|t| Tensor::upload(ctx, t).unwrap());
    let attn = Attention::new().causal(Causal::TopLeft);
    let mut rec = Recorder::new(ctx);
    let first = rec.forward(&qd, &kd, &vd, &attn).unwrap();
    let second = rec.forward(&first.o, &kd, &vd, &attn).unwrap();
    rec.submit().unwrap();
    let o1 = reference::attention(&q, &k, &v, &attn).unwrap();
    let q2 = HostTensor::new(o1.o.iter().map(|&x| x as f32).collect(), q.shape, q.layout).unwrap();
    let want = reference::attention(&q2, &k, &v, &attn).unwrap();
    let (rel, _) = reference::compare(&second.o.to_host(ctx).unwrap().data, &want.o);
    assert!(rel < common::F32_REL_TOL, "rel {rel}");
}

/// Host data of `view` cut from `whole` (both BHSD): rows `s0..s0+n` of every head.
fn rows_of(whole: &HostTensor, s0: usize, n: usize) -> HostTensor {
    let s = whole.shape;
    let mut data = Vec::new();
    for b in 0..s.batch {
        for h in 0..s.heads {
            for i in s0..s0 + n {
                data.extend((0..s.head_dim).map(|d| whole.at(b, h, i, d)));
            }
        }
    }
    HostTensor::new(data, Shape::new(s.batch, s.heads, n, s.head_dim), Layout::Bhsd).unwrap()
}

#[test]
fn views_into_shared_buffers_are_inputs_and_outputs() {
    let ctx = common::ctx();
    let seed = fresh_seed();
    // a KV cache of capacity 300 positions holding 157: K and V are its first positions
    let cap = Case::new(1, 300, 64).heads(2, 4, 2);
    let (_, k_all, v_all) = cap.inputs(seed);
    let (k_cache, v_cache) = (Tensor::upload(ctx, &k_all).unwrap(), Tensor::upload(ctx, &v_all).unwrap());
    let (k, v) = (k_cache.narrow(2, 0, 157).unwrap(), v_cache.narrow(2, 0, 157).unwrap());
    assert!(!k.is_contiguous());
    // Q: 45 rows starting at row 3 of a bigger query buffer (an offset that is no multiple of the
    // binding alignment), in a buffer shared with other data
    let (q_all, _, _) = Case::new(60, 1, 64).heads(2, 4, 2).inputs(seed + 1);
    let q_buf = Tensor::upload(ctx, &q_all).unwrap();
    let q = q_buf.narrow(2, 3, 45).unwrap();
    // O: a view at element offset 5 of one larger buffer (LSE is contiguous)
    let o_buf = Tensor::zeros(ctx, Shape::new(2, 4, 60, 64), Layout::Bhsd).unwrap();
    o_buf.fill(ctx, f32::NAN).unwrap();
    let o_shape = Shape::new(2, 4, 45, 64);
    let o = o_buf.view(o_shape, Layout::Bhsd.strides(o_shape), 5).unwrap();
    let lse = Tensor::zeros(ctx, Shape::new(2, 4, 45, 1), Layout::Bhsd).unwrap();
    lse.fill(ctx, f32::NAN).unwrap();
    for attn in [Attention::new(), Attention::new().causal(Causal::BottomRight).num_splits(3)] {
        let info = wgpu_attention::forward_into(ctx, &q, &k, &v, &attn, &o, &lse).unwrap();
        let want = reference::attention(
            &rows_of(&q_all, 3, 45),
            &rows_of(&k_all, 0, 157),
            &rows_of(&v_all, 0, 157),
            &attn,
        )
        .unwrap();
        let (o_host, lse_host) = (o.to_host(ctx).unwrap(), lse.to_host(ctx).unwrap());
        let e = errors(&o_host.data, &lse_host.data, &want, Some(info));
        assert!(e.pass(common::F32_REL_TOL), "{attn:?}: {e:?}");
    }
    // the elements of O's buffer outside the view were not written
    let all = o_buf.to_host(ctx).unwrap().data;
    assert!(all[..5].iter().all(|x| x.is_nan()) && all[5 + o_shape.len()..].iter().all(|x| x.is_nan()));
    assert_eq!(o.dtype(), DType::F32);
}

#[test]
fn views_outside_their_buffer_are_refused() {
    let ctx = common::ctx();
    let t = Tensor::zeros(ctx, Shape::new(1, 2, 10, 8), Layout::Bhsd).unwrap();
    assert!(t.narrow(2, 5, 6).is_err());
    assert!(t.narrow(4, 0, 1).is_err());
    let s = Shape::new(1, 2, 10, 8);
    assert!(t.view(s, Layout::Bhsd.strides(s), 1).is_err());
}
