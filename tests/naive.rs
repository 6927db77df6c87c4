//! The naive three-pass GPU baseline (`kernels::naive`) against the f64 oracle, with NaN-poisoned
//! outputs, over odd sizes and every option it supports; its refusals ("does not fit", masks, the
//! key-length bound) are typed errors.

mod common;

use common::context_with;
use wgpu_attention::cpu::reference;
use wgpu_attention::kernels::naive;
use wgpu_attention::testing::{alibi_slopes, fresh_seed, run_case_with, Case};
use wgpu_attention::{Attention, Causal, Context, Error, HostTensor, Layout, Mask, Shape, Tensor};

/// The naive path on two fresh seeds against the oracle (tolerances: [`common::check_on`]).
fn check_on(ctx: &Context, case: &Case) {
    common::check_on_with(ctx, case, naive::forward_into)
}

fn check(case: &Case) {
    check_on(common::ctx(), case)
}

#[test]
fn every_head_dim_specialisation_validates() {
    for d in 1..=256 {
        naive::specialised_source(d).unwrap_or_else(|e| panic!("head dim {d}: {e}"));
    }
}

#[test]
fn odd_head_dims_and_lengths() {
    // (tiles of O: 4 vec4 columns up to D = 16, 8 up to 32, 16 beyond)
    for d in [1, 20, 40, 59, 64, 111, 256] {
        for (nq, nk) in [(113, 203), (256, 128), (1, 300)] {
            check(&Case::new(nq, nk, d));
        }
    }
}

#[test]
fn causal_both_alignments() {
    // Nq > Nk bottom-right: the first Nq − Nk rows see no key (O = 0, LSE = −∞)
    for (nq, nk) in [(113, 203), (256, 128), (1, 300), (200, 200)] {
        for c in [Causal::BottomRight, Causal::TopLeft] {
            check(&Case::new(nq, nk, 40).heads(2, 2, 2).attn(Attention::new().causal(c)));
        }
    }
}

#[test]
fn gqa_and_mqa() {
    check(&Case::new(113, 203, 64).heads(2, 4, 2));
    check(&Case::new(113, 203, 59).heads(1, 4, 1).attn(Attention::new().causal(Causal::BottomRight)));
    check(&Case::new(1, 300, 40).heads(2, 8, 1));
}

#[test]
fn key_padding_including_empty_batches() {
    let attn = Attention::new().kv_lens(vec![203, 0, 77]);
    check(&Case::new(113, 203, 40).heads(3, 2, 2).attn(attn.clone()));
    check(&Case::new(113, 203, 40).heads(3, 4, 2).attn(attn.clone().causal(Causal::BottomRight)));
    check(&Case::new(113, 203, 40).heads(3, 4, 1).attn(attn.causal(Causal::TopLeft)));
}

#[test]
fn alibi_and_softcap() {
    let slopes = alibi_slopes(4);
    check(&Case::new(113, 203, 64).heads(2, 4, 2).attn(Attention::new().alibi_slopes(slopes.clone())));
    check(&Case::new(256, 128, 40).heads(2, 4, 4).attn(
        Attention::new().alibi_slopes(slopes.clone()).causal(Causal::BottomRight).kv_lens(vec![128, 50]),
    ));
    check(&Case::new(113, 203, 111).attn(Attention::new().scale(2.0).softcap(5.0)));
    check(
        &Case::new(113, 203, 59)
            .heads(1, 4, 2)
            .attn(Attention::new().scale(2.0).softcap(5.0).alibi_slopes(slopes).causal(Causal::TopLeft)),
    );
}

#[test]
fn bshd_layout() {
    check(&Case::new(113, 203, 59).heads(2, 4, 2).layout(Layout::Bshd));
    check(
        &Case::new(256, 128, 64)
            .heads(2, 4, 1)
            .layout(Layout::Bshd)
            .attn(Attention::new().causal(Causal::BottomRight).kv_lens(vec![128, 3])),
    );
}

#[test]
fn long_keys_stay_under_the_loop_limit() {
    // 20,000 keys: the softmax loops 3·79 times per invocation and pv takes 5 dispatches of at
    // most 4096 keys; one invocation looping over every key × head dim would be cut off by lavapipe
    check(&Case::new(16, 20000, 64));
    check(&Case::new(16, 20000, 40).heads(1, 2, 1).attn(Attention::new().causal(Causal::BottomRight)));
}

#[test]
fn workgroup_count_limit_uses_a_2d_grid() {
    let ctx = context_with(|l| l.max_compute_workgroups_per_dimension = 7);
    check_on(&ctx, &Case::new(113, 203, 40).heads(2, 2, 1));
}

#[test]
fn score_matrix_that_does_not_fit_is_a_typed_error() {
    let ctx = context_with(|l| l.max_storage_buffer_binding_size = 256 << 10);
    // S = 512·512·4 bytes = 1 MiB > 256 KiB, while Q, K, V (128 KiB each) would fit
    let case = Case::new(512, 512, 64);
    match run_case_with(&ctx, &case, 1, naive::forward_into) {
        Err(Error::LimitExceeded { what, limit, needed, available }) => {
            assert!(what.contains("does not fit"), "{what}");
            assert_eq!(limit, "max_storage_buffer_binding_size");
            assert_eq!((needed, available), (1 << 20, 256 << 10));
        }
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
    // the fused path runs the same problem in the same context
    common::check_on(&ctx, &case);
    // and a problem whose S fits still runs on the naive path there
    check_on(&ctx, &Case::new(113, 203, 64));
}

#[test]
fn masks_are_refused() {
    let ctx = common::ctx();
    let case = Case::new(64, 64, 16);
    let (q, k, v) = case.inputs(3);
    let (q, k, v) = (
        Tensor::upload(ctx, &q).unwrap(),
        Tensor::upload(ctx, &k).unwrap(),
        Tensor::upload(ctx, &v).unwrap(),
    );
    for attn in
        [Attention::new().mask(Mask::Window { left: Some(8), right: Some(0) }), Attention::new().topk(2, 32)]
    {
        match naive::forward(ctx, &q, &k, &v, &attn) {
            Err(Error::InvalidOption(m)) => {
                assert_eq!(m, "the naive baseline supports no masks beyond causal and key padding")
            }
            other => panic!("expected InvalidOption, got {other:?}"),
        }
    }
}

#[test]
fn too_many_keys_is_a_typed_error() {
    let ctx = common::ctx();
    let nk = naive::MAX_KEYS + 1;
    let host = |n: usize| HostTensor::new(vec![0.5; n], Shape::new(1, 1, n, 1), Layout::Bhsd).unwrap();
    let (q, k) = (Tensor::upload(ctx, &host(1)).unwrap(), Tensor::upload(ctx, &host(nk)).unwrap());
    match naive::forward(ctx, &q, &k, &k, &Attention::new()) {
        Err(Error::LimitExceeded { limit, needed, .. }) => {
            assert_eq!(limit, "wgpu_attention::kernels::naive::MAX_KEYS");
            assert_eq!(needed, nk as u64);
        }
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
}

#[test]
fn forward_allocates_outputs_like_the_fused_path() {
    let ctx = common::ctx();
    let case = Case::new(70, 90, 24)
        .heads(2, 4, 2)
        .layout(Layout::Bshd)
        .attn(Attention::new().causal(Causal::TopLeft));
    let (q, k, v) = case.inputs(fresh_seed());
    let want = reference::attention(&q, &k, &v, &case.attn).unwrap();
    let (qd, kd, vd) = (
        Tensor::upload(ctx, &q).unwrap(),
        Tensor::upload(ctx, &k).unwrap(),
        Tensor::upload(ctx, &v).unwrap(),
    );
    let out = naive::forward(ctx, &qd, &kd, &vd, &case.attn).unwrap();
    assert_eq!((out.o.shape(), out.o.layout()), (q.shape, Layout::Bshd));
    assert_eq!(out.lse.shape(), Shape::new(2, 4, 70, 1));
    let (rel, _) = reference::compare(&out.o.to_host(ctx).unwrap().data, &want.o);
    assert!(rel < common::F32_REL_TOL, "rel {rel}");
    assert!(reference::compare_lse(&out.lse.to_host(ctx).unwrap().data, &want.lse) < 1e-4);
}
