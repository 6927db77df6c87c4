//! Time to first result, as behaviour: head dims compile in sizes of 32 (a second head dim of a
//! compiled size builds no pipeline), padded head dims are exact even where the elements after
//! a row are not finite, and `Context::warm_up` compiles ahead what later calls use.

mod common;

use wgpu_attention::kernels::flash::compiled_head_dim;
use wgpu_attention::testing::{run_case, Case};
use wgpu_attention::{cpu, forward, Attention, Causal, HostTensor, Layout, MaskClass, Shape, Tensor, WarmUp};

#[test]
fn head_dims_share_compiled_sizes() {
    assert_eq!(
        [1, 32, 33, 40, 64, 65, 111, 128, 255, 256].map(compiled_head_dim),
        [32, 32, 64, 64, 64, 96, 128, 128, 256, 256]
    );
    let ctx = common::context_from(|o| o);
    // 40, 48 and 64 are multiples of 4 up to 64: one kernel, whichever comes first
    common::check_on(&ctx, &Case::new(70, 90, 40).attn(Attention::new().causal(Causal::BottomRight)));
    let before = ctx.cached_pipelines();
    for d in [48, 64] {
        let e = run_case(&ctx, &Case::new(70, 90, d).attn(Attention::new().causal(Causal::BottomRight)), 3)
            .unwrap();
        assert!(e.pass(common::F32_REL_TOL), "{e:?}");
        assert_eq!(ctx.cached_pipelines(), before, "head dim {d} compiled a pipeline after 40");
        assert_eq!(e.info.unwrap().tiles.unwrap().d_pad, 64);
    }
}

#[test]
fn unaligned_views_run_the_vec4_kernel_of_their_size() {
    // head dims that are not multiples of 4, and views at odd offsets, are packed into aligned
    // copies (kernels::repack): once the pack and unpack pipelines exist, head dim 111 reuses
    // the kernel that 100 compiled, and an odd-offset view of head dim 64 the one 64 compiled
    let ctx = common::context_from(|o| o);
    common::check_on(&ctx, &Case::new(50, 70, 100).heads(1, 2, 1).attn(Attention::new().num_splits(2)));
    common::check_on(&ctx, &Case::new(50, 70, 97).heads(1, 2, 1).layout(Layout::Bshd));
    let before = ctx.cached_pipelines();
    for case in [
        Case::new(61, 83, 111).heads(2, 4, 2).attn(Attention::new().causal(Causal::TopLeft)),
        Case::new(61, 83, 111).heads(1, 2, 2).layout(Layout::Bshd).attn(Attention::new().num_splits(2)),
    ] {
        let e = run_case(&ctx, &case, 21).unwrap();
        assert!(e.pass(common::F32_REL_TOL), "{case}: {e:?}");
        assert_eq!(e.info.unwrap().tiles.unwrap().d_pad, 128);
    }
    assert_eq!(ctx.cached_pipelines(), before, "head dim 111 compiled a kernel of its own");

    // an odd-offset view of Q, K, V and O (one element in)
    let (b, h, n, d) = (1, 2, 45, 64);
    let shape = Shape::new(b, h, n, d);
    let data =
        |seed: usize| (0..shape.len() + 1).map(|i| ((i * 13 + seed) % 89) as f32 / 89.0 - 0.5).collect();
    let flat = Shape::new(1, 1, 1, shape.len() + 1);
    let view = |seed| {
        let t = Tensor::upload(&ctx, &HostTensor::new(data(seed), flat, Layout::Bhsd).unwrap()).unwrap();
        t.view(shape, Layout::Bhsd.strides(shape), 1).unwrap()
    };
    let (q, k, v, o) = (view(1), view(2), view(3), view(4));
    let lse = Tensor::zeros(&ctx, Shape::new(b, h, n, 1), Layout::Bhsd).unwrap();
    let attn = Attention::new().causal(Causal::BottomRight);
    wgpu_attention::forward_into(&ctx, &q, &k, &v, &attn, &o, &lse).unwrap();
    let host = |t: &Tensor| t.to_host(&ctx).unwrap();
    let want = cpu::reference::attention(&host(&q), &host(&k), &host(&v), &attn).unwrap();
    let (rel, _) = cpu::reference::compare(&host(&o).data, &want.o);
    assert!(rel < common::F32_REL_TOL, "rel {rel:e}");
}

#[test]
fn padded_head_dims_ignore_what_follows_a_row() {
    // K and V rows of 40 elements at a stride of 64, the 24 elements after each row NaN: the
    // kernel compiled for 64 must not let them into q·k or O
    let ctx = common::ctx();
    let (b, h, n, d, stride) = (1, 2, 75, 40, 64);
    let full = Shape::new(b, h, n, stride);
    let pattern = |seed: usize| -> Vec<f32> {
        (0..full.len())
            .map(|i| if i % stride >= d { f32::NAN } else { ((i * 31 + seed) % 97) as f32 / 97.0 - 0.5 })
            .collect()
    };
    let shape = Shape::new(b, h, n, d);
    let strides = [h * n * stride, n * stride, stride];
    let upload = |seed| {
        let t = Tensor::upload(ctx, &HostTensor::new(pattern(seed), full, Layout::Bhsd).unwrap()).unwrap();
        t.view(shape, strides, 0).unwrap()
    };
    let (q, k, v) = (upload(1), upload(2), upload(3));
    let host = |t: &Tensor| t.to_host(ctx).unwrap();
    for attn in [Attention::new(), Attention::new().causal(Causal::TopLeft)] {
        let out = forward(ctx, &q, &k, &v, &attn).unwrap();
        let got = out.o.to_host(ctx).unwrap();
        let want = cpu::reference::attention(&host(&q), &host(&k), &host(&v), &attn).unwrap();
        let (rel, max_abs) = cpu::reference::compare(&got.data, &want.o);
        assert!(rel < common::F32_REL_TOL && max_abs.is_finite(), "rel {rel:e}, max abs {max_abs:e}");
        assert_eq!(out.info.tiles.unwrap().d_pad, 64);
    }
}

#[test]
fn warm_up_compiles_what_calls_use() {
    let ctx = common::context_from(|o| o);
    // 40 and 64 are one kernel (of size 64), 20 another (of size 32)
    let plan = WarmUp::new(&[40, 64, 20]).masks(&[MaskClass::Dense, MaskClass::Causal]);
    let mut seen = Vec::new();
    let report = ctx.warm_up(&plan, |done, total| seen.push((done, total))).unwrap();
    assert_eq!(report.steps, 4);
    assert_eq!(seen, [(1, 4), (2, 4), (3, 4), (4, 4)]);
    // a forward kernel per compiled head dim (causality is a uniform, not a variant) and the merge
    assert_eq!(report.pipelines, 3, "{report:?}");
    // nothing left to compile: again, and for calls of those head dims and masks
    assert_eq!(ctx.warm_up(&plan, |_, _| {}).unwrap().pipelines, 0);
    let before = ctx.cached_pipelines();
    for case in [
        Case::new(100, 130, 40).heads(2, 4, 2),
        Case::new(33, 200, 36).attn(Attention::new().causal(Causal::BottomRight)),
        Case::new(64, 64, 64).heads(1, 2, 1).attn(Attention::new().num_splits(3)),
        Case::new(40, 50, 32).attn(Attention::new().causal(Causal::TopLeft)),
    ] {
        let e = run_case(&ctx, &case, 11).unwrap();
        assert!(e.pass(common::F32_REL_TOL), "{case}: {e:?}");
    }
    assert_eq!(ctx.cached_pipelines(), before, "a call compiled a pipeline the warm-up should have");

    // bad plans are typed errors
    assert!(matches!(
        ctx.warm_up(&WarmUp::new(&[0]), |_, _| {}),
        Err(wgpu_attention::Error::HeadDimUnsupported { .. })
    ));
    assert!(matches!(
        ctx.warm_up(&WarmUp::new(&[wgpu_attention::MAX_HEAD_DIM + 1]), |_, _| {}),
        Err(wgpu_attention::Error::HeadDimUnsupported { .. })
    ));
}
