//! 16-bit storage (f16, bf16) against the f64 oracle, by FlashAttention's rule for its own 16-bit
//! tests: the kernel's error is at most twice (plus a small floor) that of the same computation
//! done naively in the storage precision, and under 1e-2 relative (`HalfErrors::pass`). Inputs
//! are rounded to the dtype first, so the oracle sees exactly what the device holds; O and LSE
//! are poisoned with NaN before every run.
//!
//! Pipelines are few on purpose (each (dtype, head-dim size, alignment) is a kernel of its own,
//! seconds to compile on lavapipe): D 40, 59 and 64 share the 64 kernel (D 59 through packed,
//! zero-padded copies: kernels::repack); `scalar_kernels_in_16_bit` runs the scalar kernels,
//! whose O elements share words between rows.

mod common;

use common::{context_from, context_with, ctx};
use wgpu_attention::kernels::flash::Family;
use wgpu_attention::kernels::naive;
use wgpu_attention::testing::{fresh_seed, run_case_16_with, run_inputs_16, Case, ForwardInto, HalfErrors};
use wgpu_attention::{
    forward_into, Attention, Causal, Context, DType, Error, HostTensor, Layout, Mask, Shape, Tensor,
};

/// Run `case` with Q, K, V of `qkv` and O of `o` on two fresh seeds; assert the 2× rule.
fn check_16(ctx: &Context, case: &Case, qkv: DType, o: DType) {
    check_16_with(ctx, case, qkv, o, forward_into);
}

/// [`check_16`] through another forward (the naive baseline's).
fn check_16_with(ctx: &Context, case: &Case, qkv: DType, o: DType, forward: ForwardInto) {
    let seed = fresh_seed();
    for s in [seed, seed.wrapping_add(1)] {
        let e = run_case_16_with(ctx, case, s, (qkv, o), forward)
            .unwrap_or_else(|err| panic!("{case} {qkv}->{o}: {err}"));
        report(case, qkv, o, s, &e);
    }
}

fn report(case: &Case, qkv: DType, o: DType, seed: u64, e: &HalfErrors) {
    let (k, n) = (&e.kernel, &e.naive);
    eprintln!(
        "{case} {qkv}->{o} seed={seed}: rel={:.2e} (naive {:.2e}) max_abs={:.2e} (naive {:.2e}) lse={:.2e}",
        k.rel, n.rel, k.max_abs, n.max_abs, k.lse_max_abs
    );
    assert!(
        e.pass(),
        "{case} {qkv}->{o} (reproduce with WGATTN_SEED={seed}): rel {:.3e} vs naive {:.3e}, max abs {:.3e} vs naive {:.3e}, lse {:.3e}",
        k.rel,
        n.rel,
        k.max_abs,
        n.max_abs,
        k.lse_max_abs
    );
}

/// The options matrix of tests/families.rs at head dims 40 (vec4 kernel of size 64) and 59
/// (packed copies of 16-bit views, rows sharing words).
fn matrix(ctx: &Context, qkv: DType, o: DType, family: Option<Family>) {
    let with = |attn: Attention| match family {
        Some(f) => attn.kernel(f),
        None => attn,
    };
    let cases = [
        Case::new(113, 203, 40).heads(2, 4, 2).attn(with(Attention::new())),
        Case::new(128, 217, 59)
            .heads(1, 4, 1)
            .layout(Layout::Bshd)
            .attn(with(Attention::new().causal(Causal::BottomRight))),
        Case::new(300, 100, 40).heads(1, 2, 2).attn(with(Attention::new().causal(Causal::BottomRight))),
        Case::new(77, 150, 59).heads(3, 2, 1).attn(with(Attention::new().kv_lens(vec![0, 33, 150]))),
        Case::new(200, 200, 40)
            .heads(1, 2, 1)
            .attn(with(Attention::new().mask(Mask::longformer(20, 2)).block_size(32))),
        Case::new(160, 160, 59)
            .heads(1, 2, 1)
            .attn(with(Attention::new().topk(2, 32).causal(Causal::BottomRight))),
        Case::new(64, 5000, 40).layout(Layout::Bshd).attn(with(Attention::new().num_splits(3))),
        Case::new(33, 700, 59)
            .heads(2, 2, 1)
            .attn(with(Attention::new().num_splits(2).kv_lens(vec![0, 650]))),
    ];
    for case in &cases {
        check_16(ctx, case, qkv, o);
    }
}

#[test]
fn f16_matrix() {
    matrix(ctx(), DType::F16, DType::F16, None);
}

#[test]
fn bf16_matrix() {
    matrix(ctx(), DType::BF16, DType::BF16, None);
}

#[test]
fn tiled_family_in_16_bit() {
    matrix(ctx(), DType::F16, DType::F16, Some(Family::Tiled));
    matrix(ctx(), DType::BF16, DType::F32, Some(Family::Tiled));
}

/// The other forms of the register family (without subgroups, wide) in 16-bit: the vec4 kernel
/// and the scalar one.
#[test]
fn register_forms_in_16_bit() {
    for family in
        [Family::Register { subgroups: false, wide: false }, Family::Register { subgroups: true, wide: true }]
    {
        let with = |attn: Attention| attn.kernel(family);
        check_16(
            ctx(),
            &Case::new(100, 130, 40).heads(2, 4, 2).attn(with(Attention::new().causal(Causal::TopLeft))),
            DType::BF16,
            DType::BF16,
        );
        check_16(
            ctx(),
            &Case::new(70, 90, 59).heads(1, 2, 1).attn(with(Attention::new().kv_lens(vec![0]))),
            DType::F16,
            DType::F16,
        );
    }
}

/// The scalar kernels (no packed copies: 64 KiB storage bindings are too small for them, so the
/// call is also cut into key ranges and chunks): 16-bit elements read one at a time, O elements
/// of rows that share a word stored by atomic and/or of their halves.
#[test]
fn scalar_kernels_in_16_bit() {
    let small = context_with(|l| l.max_storage_buffer_binding_size = 64 << 10);
    let cases = [
        Case::new(37, 700, 59)
            .heads(2, 2, 1)
            .attn(Attention::new().causal(Causal::BottomRight).kv_lens(vec![700, 0])),
        Case::new(300, 300, 59).heads(1, 4, 2).layout(Layout::Bshd),
    ];
    for case in &cases {
        check_16(&small, case, DType::F16, DType::F16);
        check_16(&small, case, DType::BF16, DType::F32);
    }
}

#[test]
fn outputs_in_f32() {
    for qkv in [DType::F16, DType::BF16] {
        check_16(
            ctx(),
            &Case::new(100, 157, 64).heads(2, 4, 2).attn(Attention::new().causal(Causal::TopLeft)),
            qkv,
            DType::F32,
        );
        check_16(ctx(), &Case::new(45, 90, 59).heads(1, 2, 2), qkv, DType::F32);
    }
}

#[test]
fn head_dims_111_and_256() {
    check_16(
        ctx(),
        &Case::new(130, 257, 111).heads(1, 4, 2).attn(Attention::new().causal(Causal::BottomRight)),
        DType::F16,
        DType::F16,
    );
    check_16(ctx(), &Case::new(129, 200, 256).heads(1, 2, 1).layout(Layout::Bshd), DType::BF16, DType::BF16);
}

/// Scores of ±30 after scaling and V up to 60,000 in f16: finite, and within the 2× rule
/// (ONNX Runtime WebGPU users report NaNs exactly here: onnxruntime issues 26367, 24994).
#[test]
fn large_logits_and_values_in_f16() {
    let case = Case::new(70, 300, 64).heads(1, 2, 2).attn(Attention::new().causal(Causal::BottomRight));
    let (q, k, v) = case.inputs(fresh_seed());
    // |q·k|·scale up to ~30: q and k scaled by the same factor f, chosen from the inputs' own
    // largest score (scale 1/8 at D 64); V up to 60,000
    let d = 64;
    let max_score = |q: &HostTensor, k: &HostTensor| {
        (0..q.shape.seq)
            .flat_map(|i| (0..k.shape.seq).map(move |j| (i, j)))
            .map(|(i, j)| (0..d).map(|x| q.at(0, 0, i, x) * k.at(0, 0, j, x)).sum::<f32>().abs() / 8.0)
            .fold(0.0f32, f32::max)
    };
    let f = (30.0 / max_score(&q, &k)).sqrt();
    let big = |t: &HostTensor, f: f32| HostTensor {
        data: t.data.iter().map(|x| DType::F16.round(x * f)).collect(),
        ..t.clone()
    };
    let (q, k, v) = (big(&q, f), big(&k, f), big(&v, 60_000.0));
    // the largest score of the inputs: about ±30 (asserted, so the test keeps testing this)
    let max_score = max_score(&q, &k);
    assert!(max_score > 20.0, "the inputs' largest scaled score is {max_score}, want ~30");
    for o in [DType::F16, DType::F32] {
        let e = run_inputs_16(ctx(), &case, (&q, &k, &v), (DType::F16, o), forward_into).unwrap();
        report(&case, DType::F16, o, 0, &e);
        assert!(e.kernel.rel.is_finite() && e.kernel.max_abs.is_finite());
    }
}

/// bf16 and f16 on llvmpipe's OpenGL adapter (no SHADER_F16, no subgroups): both run there, as
/// neither needs the feature (src/dtype.rs).
#[test]
fn sixteen_bit_on_the_gl_backend() {
    let gl = context_from(|o| o.backends(wgpu::Backends::GL));
    assert_eq!(gl.adapter().info.backend, wgpu::Backend::Gl);
    assert!(!gl.adapter().features.contains(wgpu::Features::SHADER_F16), "llvmpipe GL has no SHADER_F16");
    // small head dims (the kernel of size 32): llvmpipe GL compiles a large unrolled kernel for
    // many minutes and gigabytes (coroutine splitting in LLVM), Vulkan's lavapipe in seconds
    let vec4 = Case::new(77, 130, 24).heads(2, 4, 2).attn(Attention::new().causal(Causal::BottomRight));
    check_16(&gl, &vec4, DType::BF16, DType::BF16);
    let scalar = Case::new(50, 61, 27).heads(1, 2, 1).attn(Attention::new().kv_lens(vec![0]));
    check_16(&gl, &scalar, DType::F16, DType::F16);
}

#[test]
fn dtype_errors_are_typed() {
    let c = ctx();
    let shape = Shape::new(1, 2, 16, 32);
    let data = HostTensor::new(vec![0.5; shape.len()], shape, Layout::Bhsd).unwrap();
    let f16 = Tensor::upload_as(c, &data, DType::F16).unwrap();
    let bf16 = Tensor::upload_as(c, &data, DType::BF16).unwrap();
    let attn = Attention::new();
    // K of another dtype than Q
    let e = wgpu_attention::forward(c, &f16, &bf16, &f16, &attn).unwrap_err();
    assert!(matches!(e, Error::UnsupportedDType(_)), "{e}");
    // LSE that is not f32
    let o = Tensor::zeros_as(c, shape, Layout::Bhsd, DType::F16).unwrap();
    let lse = Tensor::zeros_as(c, Shape::new(1, 2, 16, 1), Layout::Bhsd, DType::F16).unwrap();
    let e = wgpu_attention::forward_into(c, &f16, &f16, &f16, &attn, &o, &lse).unwrap_err();
    assert!(matches!(e, Error::UnsupportedDType(_)), "{e}");
    // the naive baseline checks the same
    let e = naive::forward_into(c, &f16, &bf16, &f16, &attn, &o, &lse).unwrap_err();
    assert!(matches!(e, Error::UnsupportedDType(_)), "{e}");
}

/// The naive three-pass baseline in 16-bit: odd head dim (words shared between rows), GQA, key
/// padding with an empty batch, and a key range over several P·V dispatches (O accumulated in
/// its dtype).
#[test]
fn naive_baseline_in_16_bit() {
    let cases = [
        Case::new(77, 150, 59)
            .heads(2, 4, 2)
            .attn(Attention::new().causal(Causal::BottomRight).kv_lens(vec![0, 120])),
        Case::new(20, 9000, 64).layout(Layout::Bshd),
    ];
    for case in &cases {
        check_16_with(ctx(), case, DType::F16, DType::F16, naive::forward_into);
        check_16_with(ctx(), case, DType::BF16, DType::F32, naive::forward_into);
    }
}

#[test]
fn forward_allocates_o_in_the_inputs_dtype() {
    let c = ctx();
    let case = Case::new(20, 30, 32);
    let (q, k, v) = case.inputs(fresh_seed());
    for dt in [DType::F16, DType::BF16] {
        let up = |t: &HostTensor| Tensor::upload_as(c, t, dt).unwrap();
        let out = wgpu_attention::forward(c, &up(&q), &up(&k), &up(&v), &Attention::new()).unwrap();
        assert_eq!(out.o.dtype(), dt);
        assert_eq!(out.lse.dtype(), DType::F32);
        let want = wgpu_attention::cpu::reference::attention(
            &q.rounded(dt),
            &k.rounded(dt),
            &v.rounded(dt),
            &Attention::new(),
        )
        .unwrap();
        let (rel, _) = wgpu_attention::cpu::reference::compare(&out.o.to_host(c).unwrap().data, &want.o);
        assert!(rel < 1e-2, "{dt}: rel {rel}");
    }
}

/// Views of 16-bit buffers at odd element offsets (a head of a head dim 59 tensor starts half way
/// through a word) and of a KV cache's first positions: packed first.
#[test]
fn sixteen_bit_views_at_odd_offsets() {
    let c = ctx();
    let (n, d) = (45, 59);
    let case = Case::new(n, 2 * n, d).heads(1, 3, 3);
    let (q, k, v) = case.inputs(fresh_seed());
    for dt in [DType::F16, DType::BF16] {
        let up = |t: &HostTensor| Tensor::upload_as(c, t, dt).unwrap();
        // heads 1..3 (Q's view starts at element 45·59, odd), of K and V their first 61 positions
        let kv_view = |t: &HostTensor| up(t).narrow(1, 1, 2).unwrap().narrow(2, 0, 61).unwrap();
        let (qd, kd, vd) = (up(&q).narrow(1, 1, 2).unwrap(), kv_view(&k), kv_view(&v));
        assert!(qd.offset() % 2 == 1, "the view starts half way through a word");
        let out =
            wgpu_attention::forward(c, &qd, &kd, &vd, &Attention::new().causal(Causal::BottomRight)).unwrap();
        let host = |t: &Tensor| t.to_host(c).unwrap();
        let want = wgpu_attention::cpu::reference::attention(
            &host(&qd),
            &host(&kd),
            &host(&vd),
            &Attention::new().causal(Causal::BottomRight),
        )
        .unwrap();
        let (rel, _) = wgpu_attention::cpu::reference::compare(&out.o.to_host(c).unwrap().data, &want.o);
        eprintln!("{dt} views: rel {rel:.2e}");
        assert!(rel < 1e-2, "{dt}: rel {rel}");
    }
}

/// The fast CPU path takes 16-bit values as they are (widened exactly), like the oracle.
#[test]
fn cpu_paths_take_16_bit_values() {
    let case = Case::new(33, 70, 40).heads(1, 2, 1).attn(Attention::new().causal(Causal::BottomRight));
    let (q, k, v) = case.inputs(fresh_seed());
    let as_f16 =
        |t: &HostTensor| -> Vec<half::f16> { t.data.iter().map(|&x| half::f16::from_f32(x)).collect() };
    let from = |t: &HostTensor| HostTensor::from_elements(&as_f16(t), t.shape, t.layout).unwrap();
    let (q, k, v) = (from(&q), from(&k), from(&v));
    assert_eq!(q, q.rounded(DType::F16), "from_elements holds exactly the f16 values");
    let want = wgpu_attention::cpu::reference::attention(&q, &k, &v, &case.attn).unwrap();
    let fast = wgpu_attention::cpu::flash::attention(&q, &k, &v, &case.attn).unwrap();
    let (rel, _) = wgpu_attention::cpu::reference::compare(&fast.o.data, &want.o);
    assert!(rel < 1e-5, "rel {rel}");
}
