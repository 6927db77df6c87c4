//! The projection GEMM (`linear`, shaders/gemm.wgsl) against the f64 oracle
//! (`cpu::reference::linear`) on fresh random inputs: odd M, N and K (1, 7, 59, 111, 1023), X
//! and Y as strided views (a column slice of a bigger matrix, heads interleaved, a misaligned
//! start that forces the scalar path), f16 and bf16 in and out, bias on and off, every tile
//! shape the crate picks on some adapter (4-lane subgroups, no subgroups, the GPU tile), the GL
//! adapter, and calls cut into several dispatches by a lowered binding limit. Y is poisoned with
//! NaN before each run, and the elements of Y's buffer outside the view must stay NaN.

mod common;

use common::{context_from, context_with, ctx, F32_REL_TOL};
use wgpu_attention::cpu::reference;
use wgpu_attention::kernels::gemm::{record_into, GemmTile};
use wgpu_attention::testing::fresh_seed;
use wgpu_attention::{Context, DType, Error, HostTensor, Layout, Recorder, Shape, Tensor};

/// Uniform values in [-1, 1) from `seed`.
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// One projection: X `[b, h, s, k]` → Y `[b, h, s, n]`.
#[derive(Clone, Copy, Debug)]
struct Case {
    x: Shape,
    n: usize,
    layout: Layout,
    bias: bool,
    dtype: DType,
    out: DType,
    /// X stored as columns `pad..pad + k` of rows `k + 2·pad` long (a strided, maybe misaligned view)
    x_pad: usize,
    /// Y stored as columns `pad..pad + n` of rows `n + 2·pad` long
    y_pad: usize,
}

impl Case {
    fn new(b: usize, h: usize, s: usize, k: usize, n: usize) -> Self {
        Self {
            x: Shape::new(b, h, s, k),
            n,
            layout: Layout::Bhsd,
            bias: true,
            dtype: DType::F32,
            out: DType::F32,
            x_pad: 0,
            y_pad: 0,
        }
    }
}

/// A device view of `data` (values for `shape` in `layout`) stored with `pad` extra elements either
/// side of every last-axis row; its buffer's other elements are NaN.
fn padded(ctx: &Context, host: &HostTensor, dtype: DType, pad: usize) -> Tensor {
    let s = host.shape;
    let wide = Shape::new(s.batch, s.heads, s.seq, s.head_dim + 2 * pad);
    let mut data = vec![f32::NAN; wide.len()];
    for b in 0..s.batch {
        for h in 0..s.heads {
            for i in 0..s.seq {
                for d in 0..s.head_dim {
                    data[host.layout.offset(wide, b, h, i, d + pad)] = host.at(b, h, i, d);
                }
            }
        }
    }
    let t = Tensor::upload_as(ctx, &HostTensor::new(data, wide, host.layout).unwrap(), dtype).unwrap();
    t.narrow(3, pad, s.head_dim).unwrap()
}

/// Run `case` on `ctx` with `tile` (the adapter's when `None`) and assert it matches the oracle.
fn check_tile(ctx: &Context, case: Case, tile: Option<GemmTile>) {
    let seed = fresh_seed();
    let Case { x: xs, n, layout, dtype, out, .. } = case;
    let host = |shape: Shape, layout: Layout, salt: u64| {
        HostTensor::new(random(shape.len(), seed ^ salt), shape, layout).unwrap().rounded(dtype)
    };
    let x = host(xs, layout, 1);
    let w = host(Shape::new(1, 1, n, xs.head_dim), Layout::Bhsd, 2);
    let b = host(Shape::new(1, 1, 1, n), Layout::Bhsd, 3);
    let want = reference::linear(&x, &w, case.bias.then_some(&b)).unwrap();
    let want: Vec<f64> = want.iter().map(|&v| out.round(v as f32) as f64).collect();

    let xd = padded(ctx, &x, dtype, case.x_pad);
    let wd = Tensor::upload_as(ctx, &w, dtype).unwrap();
    let bd = Tensor::upload_as(ctx, &b, dtype).unwrap();
    let ys = Shape::new(xs.batch, xs.heads, xs.seq, n);
    let y_nan = HostTensor::new(vec![f32::NAN; ys.len()], ys, layout).unwrap();
    let yd = padded(ctx, &y_nan, out, case.y_pad);
    let mut rec = Recorder::new(ctx);
    let info = record_into(&mut rec, &xd, &wd, case.bias.then_some(&bd), &yd, tile)
        .unwrap_or_else(|e| panic!("{case:?} {tile:?}: {e}"));
    rec.submit().unwrap().wait().unwrap();
    let got = yd.to_host(ctx).unwrap();
    let (rel, max_abs) = reference::compare(&got.data, &want);
    eprintln!(
        "{case:?} {tile:?} seed={seed}: rel={rel:.2e} max_abs={max_abs:.2e} dispatches={}",
        info.dispatches
    );
    // f32 accumulation over K terms; 16-bit Y is compared with the oracle rounded to it (one
    // rounding either way of a tie)
    let tol = if out == DType::F32 { F32_REL_TOL } else { 2e-3 };
    assert!(
        rel < tol && max_abs < tol * 100.0,
        "{case:?} {tile:?} (WGATTN_SEED={seed}): rel {rel:.3e}, max abs {max_abs:.3e}"
    );
    if case.y_pad > 0 {
        // the padding columns either side of Y's view are untouched
        let whole = Tensor::from_buffer(
            ctx,
            yd.buffer().clone(),
            out,
            Shape::new(xs.batch, xs.heads, xs.seq, n + 2 * case.y_pad),
            yd.strides(),
            0,
        )
        .unwrap()
        .to_host(ctx)
        .unwrap();
        let s = whole.shape;
        for (bi, hi, si) in
            (0..s.batch).flat_map(|b| (0..s.heads).flat_map(move |h| (0..s.seq).map(move |i| (b, h, i))))
        {
            for d in (0..case.y_pad).chain(n + case.y_pad..s.head_dim) {
                assert!(
                    whole.at(bi, hi, si, d).is_nan(),
                    "{case:?}: element ({bi},{hi},{si},{d}) outside Y was written"
                );
            }
        }
    }
}

fn check(case: Case) {
    check_tile(ctx(), case, None)
}

#[test]
fn odd_sizes_match_the_oracle() {
    for (b, h, s, k, n) in
        [(1, 1, 1, 1, 1), (1, 1, 7, 59, 111), (2, 3, 5, 40, 17), (1, 1, 1023, 64, 33), (1, 1, 9, 1023, 7)]
    {
        check(Case::new(b, h, s, k, n));
    }
    check(Case { bias: false, ..Case::new(1, 2, 19, 111, 70) });
}

#[test]
fn strided_views_in_and_out() {
    // heads interleaved (BSHD), X and Y column slices of wider rows: aligned (vec4 loads) and
    // misaligned by one element (the scalar path)
    check(Case { layout: Layout::Bshd, ..Case::new(2, 3, 11, 64, 40) });
    check(Case { x_pad: 4, y_pad: 4, ..Case::new(1, 1, 13, 64, 48) });
    check(Case { x_pad: 1, y_pad: 3, bias: false, ..Case::new(2, 1, 10, 59, 21) });
}

#[test]
fn sixteen_bit_storage() {
    for (dtype, out) in [
        (DType::F16, DType::F16),
        (DType::BF16, DType::BF16),
        (DType::BF16, DType::F32),
        (DType::F16, DType::F32),
    ] {
        check(Case { dtype, out, ..Case::new(1, 2, 9, 64, 37) });
    }
    // odd columns in a padded 16-bit Y: neighbouring halves of one word belong to other views
    check(Case { dtype: DType::F16, out: DType::F16, x_pad: 1, y_pad: 1, ..Case::new(1, 1, 7, 59, 13) });
}

#[test]
fn every_tile_shape() {
    let ctx = ctx();
    let subgroups = ctx.adapter().features.contains(wgpu::Features::SUBGROUP);
    let lanes = ctx.adapter().info.subgroup_min_size;
    let mut tiles = vec![
        GemmTile { xr: 4, sl: 1, c: 4, ku: 4, wg: 8, subgroups: false },
        GemmTile { xr: 4, sl: 1, c: 2, ku: 2, wg: 64, subgroups: false },
        GemmTile { xr: 3, sl: 1, c: 1, ku: 1, wg: 5, subgroups: false },
    ];
    if subgroups {
        tiles.push(GemmTile { xr: 2, sl: 4, c: 3, ku: 2, wg: 8, subgroups: true });
        tiles.push(GemmTile { xr: 1, sl: lanes.min(32), c: 2, ku: 2, wg: 64, subgroups: true });
    }
    for tile in tiles {
        check_tile(ctx, Case::new(1, 1, 37, 59, 75), Some(tile));
        check_tile(ctx, Case::new(2, 1, 6, 128, 70), Some(tile));
    }
}

/// Subgroups of 4 lanes (the smallest WebGPU allows): the adapter's tile then broadcasts from 4.
#[test]
fn four_lane_subgroups() {
    let ctx = context_from(|o| o.subgroup_min_size(4));
    if ctx.adapter().features.contains(wgpu::Features::SUBGROUP) {
        assert_eq!(GemmTile::for_adapter(&ctx).sl, 4);
    }
    check_tile(&ctx, Case::new(1, 1, 29, 64, 45), None);
    check_tile(&ctx, Case { bias: false, ..Case::new(1, 1, 6, 23, 9) }, None);
}

/// llvmpipe's OpenGL adapter: no subgroups, no SHADER_F16.
#[test]
fn on_the_gl_backend() {
    let gl = context_from(|o| o.backends(wgpu::Backends::GL));
    assert_eq!(gl.adapter().info.backend, wgpu::Backend::Gl);
    assert!(!GemmTile::for_adapter(&gl).subgroups);
    check_tile(&gl, Case::new(1, 1, 21, 64, 33), None);
    check_tile(&gl, Case { dtype: DType::BF16, out: DType::BF16, ..Case::new(1, 1, 5, 59, 7) }, None);
}

/// A binding limit so low that W is cut into column ranges and X and Y into row ranges.
#[test]
fn split_into_dispatches_under_a_low_binding_limit() {
    let small = context_with(|l| l.max_storage_buffer_binding_size = 16 << 10);
    let tile = GemmTile::for_adapter(&small);
    // W 200 × 64 f32 = 50 KiB: four column ranges; X 2·3·40 rows of 64 = 60 KiB: row ranges
    let case = Case::new(2, 3, 40, 64, 200);
    check_tile(&small, case, None);
    let mut rec = Recorder::new(&small);
    let x = Tensor::zeros(&small, case.x, Layout::Bhsd).unwrap();
    let w = Tensor::zeros(&small, Shape::new(1, 1, 200, 64), Layout::Bhsd).unwrap();
    let y = rec.linear(&x, &w, None).unwrap();
    assert!(rec.calls()[0].dispatches >= 4 * 4, "{:?} with {tile:?}", rec.calls()[0]);
    assert_eq!(y.shape(), Shape::new(2, 3, 40, 200));
}

#[test]
fn bad_inputs_are_typed_errors() {
    let ctx = ctx();
    let t = |shape: Shape, dtype: DType| Tensor::zeros_as(ctx, shape, Layout::Bhsd, dtype).unwrap();
    let x = t(Shape::new(1, 2, 5, 16), DType::F32);
    let w = t(Shape::new(1, 1, 8, 16), DType::F32);
    let mut rec = Recorder::new(ctx);
    let err = |r: Result<Tensor, Error>| r.expect_err("must be refused");
    assert!(
        matches!(err(rec.linear(&x, &t(Shape::new(1, 1, 8, 15), DType::F32), None)), Error::ShapeMismatch(m) if m.contains("in_features"))
    );
    assert!(matches!(
        err(rec.linear(&x, &t(Shape::new(2, 1, 8, 16), DType::F32), None)),
        Error::ShapeMismatch(_)
    ));
    assert!(
        matches!(err(rec.linear(&x, &w, Some(&t(Shape::new(1, 1, 1, 7), DType::F32)))), Error::ShapeMismatch(m) if m.contains("bias"))
    );
    assert!(matches!(
        err(rec.linear(&x, &t(Shape::new(1, 1, 8, 16), DType::F16), None)),
        Error::UnsupportedDType(_)
    ));
    let y_wrong = t(Shape::new(1, 2, 5, 9), DType::F32);
    assert!(matches!(rec.linear_into(&x, &w, None, &y_wrong), Err(Error::ShapeMismatch(_))));
    let bad_tile = GemmTile { xr: 1, sl: 3, c: 1, ku: 1, wg: 8, subgroups: false };
    let y = t(Shape::new(1, 2, 5, 8), DType::F32);
    assert!(matches!(record_into(&mut rec, &x, &w, None, &y, Some(bad_tile)), Err(Error::InvalidOption(_))));
    // nothing was recorded by the refused calls
    assert!(rec.calls().is_empty());
}
