//! Launch of `shaders/gemm.wgsl`: the projections of an attention layer, `Y = X·Wᵀ + b`
//! (PyTorch's `F.linear`), X a `[B, H, S, K]` tensor of any strides read as B·H·S rows, W
//! `[N, K]` (a `[1, 1, N, K]` tensor), the bias `[1, 1, 1, N]`, Y `[B, H, S, N]`.
//!
//! A call is cut into dispatches whose windows fit one storage binding each: column ranges where W
//! does not fit whole, then halves of the batch, head and sequence axes where X or Y does not.

use bytemuck::{Pod, Zeroable};

use super::{dispatch_all, pipeline, strides4, Window};
use crate::attention::Shape;
use crate::context::Context;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shader::Params;
use crate::tensor::Tensor;

const SOURCE: &str = include_str!("../../shaders/gemm.wgsl");

/// lavapipe's per-invocation loop limit (Mesa 22.3 stops a loop after 65,535 iterations): the
/// chunk loop and the tail loop of one invocation together stay at or under it.
const MAX_LOOP_TRIPS: u64 = 65_535;

/// Mirrors `Params` in gemm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
struct GemmParams {
    rows: u32,
    n: u32,
    k: u32,
    grid_x: u32,
    wg_offset: u32,
    col_tiles: u32,
    row0: u32,
    heads: u32,
    seq: u32,
    w_stride: u32,
    x_base: u32,
    w_base: u32,
    y_base: u32,
    b_base: u32,
    _pad0: u32,
    _pad1: u32,
    x_stride: [u32; 4],
    y_stride: [u32; 4],
}

/// The register tile of one GEMM specialisation (see gemm.wgsl): a workgroup of `wg`
/// invocations owns `xr·sl` rows × `wg·c` columns of Y and streams K in chunks of `4·ku`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmTile {
    /// X rows each broadcasting lane loads.
    pub xr: u32,
    /// Broadcasting lanes (1 without subgroups): a power of two, at most the adapter's smallest
    /// subgroup and at most `wg`.
    pub sl: u32,
    /// Columns per invocation.
    pub c: u32,
    /// vec4 chunks of K per loop iteration.
    pub ku: u32,
    /// Invocations per workgroup.
    pub wg: u32,
    /// Share X rows by subgroup broadcast (else each invocation loads every row itself).
    pub subgroups: bool,
}

impl GemmTile {
    /// Rows of Y per workgroup.
    pub fn rows(&self) -> u32 {
        self.xr * self.sl
    }

    /// Columns of Y per workgroup.
    pub fn cols(&self) -> u32 {
        self.wg * self.c
    }

    /// The tile this crate picks for `ctx`'s adapter. CPU adapters (lavapipe): one subgroup a
    /// workgroup, its lanes broadcasting a row each (8 or 16 rows) × 2 columns a lane, K in
    /// chunks of 4 (measured at 512 bits, M 4096 N 1024 K 1024, `wgattn bench --mode gemm
    /// --gemm-tile ...`: 441 ms against 557 for 4 columns and chunks of 16, whose 64
    /// accumulators and 16 W vec4s spill; docs/PERFORMANCE.md). GPUs: 64 invocations, up to 32 broadcasting lanes, 2 columns a lane. Without
    /// subgroups: 4 rows loaded by every invocation.
    pub fn for_adapter(ctx: &Context) -> Self {
        let a = ctx.adapter();
        let subgroups = a.features.contains(wgpu::Features::SUBGROUP);
        // a power of two at most the smallest subgroup
        let lanes = prev_power_of_two(a.info.subgroup_min_size.max(1));
        let cpu = a.info.device_type == wgpu::DeviceType::Cpu;
        match (cpu, subgroups) {
            (true, true) => Self { xr: 1, sl: lanes.min(16), c: 2, ku: 1, wg: lanes.min(16), subgroups },
            (false, true) => Self { xr: 1, sl: lanes.min(32), c: 2, ku: 2, wg: 64, subgroups },
            (true, false) => Self { xr: 4, sl: 1, c: 4, ku: 4, wg: 8, subgroups },
            (false, false) => Self { xr: 4, sl: 1, c: 2, ku: 2, wg: 64, subgroups },
        }
    }

    /// Whether `ctx`'s adapter can run this tile (a clear error where it cannot).
    fn check(&self, ctx: &Context) -> Result<()> {
        let a = ctx.adapter();
        let bad = |why: String| Err(Error::InvalidOption(format!("GEMM tile {self:?}: {why}")));
        if [self.xr, self.sl, self.c, self.ku, self.wg].contains(&0) {
            return bad("every field must be at least 1".into());
        }
        if !self.sl.is_power_of_two() || self.sl > self.wg {
            return bad("sl must be a power of two at most wg".into());
        }
        if self.subgroups {
            if !a.features.contains(wgpu::Features::SUBGROUP) {
                return Err(Error::UnsupportedFeature {
                    feature: "SUBGROUP",
                    hint: "use a GEMM tile with subgroups: false on this adapter",
                });
            }
            if self.sl > a.info.subgroup_min_size.max(1) {
                return bad(format!("sl exceeds the adapter's smallest subgroup ({})", a.info.subgroup_min_size));
            }
        } else if self.sl != 1 {
            return bad("sl must be 1 without subgroups".into());
        }
        if self.wg > ctx.limits().max_compute_invocations_per_workgroup {
            return bad("wg exceeds max_compute_invocations_per_workgroup".into());
        }
        Ok(())
    }
}

fn prev_power_of_two(n: u32) -> u32 {
    1 << (31 - n.leading_zeros())
}

/// Check a projection's tensors: X `[B, H, S, K]`, W `[1, 1, N, K]`, bias `[1, 1, 1, N]` of X's
/// dtype, Y `[B, H, S, N]` of any dtype; all on `ctx`.
pub(crate) fn check(ctx: &Context, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &Tensor) -> Result<()> {
    check_inputs(ctx, x, w, bias)?;
    y.check_context(ctx)?;
    let y_shape = Shape::new(x.shape.batch, x.shape.heads, x.shape.seq, w.shape.seq);
    if y.shape != y_shape {
        return Err(Error::ShapeMismatch(format!("linear: Y is {} but X·Wᵀ is {y_shape}", y.shape)));
    }
    Ok(())
}

/// [`check`] of the inputs alone.
pub(crate) fn check_inputs(ctx: &Context, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<()> {
    for t in [Some(x), Some(w), bias].into_iter().flatten() {
        t.check_context(ctx)?;
    }
    let (xs, ws) = (x.shape, w.shape);
    if ws.batch != 1 || ws.heads != 1 {
        return Err(Error::ShapeMismatch(format!("linear: W is {ws}: it must be [1, 1, out_features, in_features]")));
    }
    if ws.head_dim != xs.head_dim {
        return Err(Error::ShapeMismatch(format!(
            "linear: X is {xs} and W {ws}: W's in_features ({}) must equal X's last dim ({})",
            ws.head_dim, xs.head_dim
        )));
    }
    if xs.head_dim == 0 || ws.seq == 0 {
        return Err(Error::ShapeMismatch(format!("linear: X {xs}, W {ws}: in and out features must be at least 1")));
    }
    if let Some(b) = bias {
        if b.shape != Shape::new(1, 1, 1, ws.seq) {
            return Err(Error::ShapeMismatch(format!(
                "linear: the bias is {} but W has {} out_features: it must be [1, 1, 1, {}]",
                b.shape, ws.seq, ws.seq
            )));
        }
    }
    for (name, t) in [("W", Some(w)), ("the bias", bias)] {
        if let Some(t) = t {
            if t.dtype != x.dtype {
                return Err(Error::UnsupportedDType(format!(
                    "linear: X is {} and {name} {}: X, W and the bias must be of one dtype",
                    x.dtype, t.dtype
                )));
            }
        }
    }
    Ok(())
}

/// Record `y = x·wᵀ + bias` (checked tensors) into `pass` with `tile` (the adapter's own when
/// `None`); returns the dispatches.
pub(crate) fn encode(
    ctx: &Context,
    pass: &mut wgpu::ComputePass<'_>,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    tile: Option<GemmTile>,
) -> Result<usize> {
    let tile = tile.unwrap_or_else(|| GemmTile::for_adapter(ctx));
    tile.check(ctx)?;
    let k = x.shape.head_dim as u64;
    let trips = k / (4 * tile.ku as u64) + tile.ku as u64;
    if trips > MAX_LOOP_TRIPS {
        return Err(Error::LimitExceeded {
            what: format!("linear: in_features {k} (loop trips per invocation)"),
            limit: "lavapipe's 65,535 loop iterations per invocation",
            needed: trips,
            available: MAX_LOOP_TRIPS,
        });
    }
    if x.shape.is_empty() {
        return Ok(0);
    }
    let max = ctx.limits().max_storage_buffer_binding_size;
    // column ranges whose W window fits one binding (X and Y are cut further below)
    let w_row_bytes = w.dtype.bytes(w.strides[2].max(w.shape.head_dim) as u64);
    let cols_per = ((max.saturating_sub(256)) / w_row_bytes.max(1)) as usize;
    if cols_per == 0 {
        return Err(Error::LimitExceeded {
            what: format!("linear: one row of W {}", w.shape),
            limit: "max_storage_buffer_binding_size",
            needed: w_row_bytes + 256,
            available: max,
        });
    }
    // whole column tiles, so that 16-bit Y words are never shared by two dispatches' columns
    let cols_per = if cols_per >= w.shape.seq { w.shape.seq } else { cols_per.max(2) / 2 * 2 };
    let mut dispatches = 0;
    let n = w.shape.seq;
    for n0 in (0..n).step_by(cols_per) {
        let nc = cols_per.min(n - n0);
        let (wc, yc) = if nc == n { (w.clone(), y.clone()) } else { (w.narrow(2, n0, nc)?, y.narrow(3, n0, nc)?) };
        let bc = match bias {
            Some(b) if nc != n => Some(b.narrow(3, n0, nc)?),
            other => other.cloned(),
        };
        dispatches += encode_rows(ctx, pass, x, &wc, bc.as_ref(), &yc, tile)?;
    }
    Ok(dispatches)
}

/// Bytes of the window over the whole of `t`.
fn window_bytes(t: &Tensor) -> u64 {
    let (first, end) = t.extent();
    t.dtype.bytes((end - first) as u64) + 256
}

/// [`encode`] for W (and the bias) in one binding: X and Y halved along their outermost axis
/// longer than 1 until both fit.
fn encode_rows(
    ctx: &Context,
    pass: &mut wgpu::ComputePass<'_>,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    tile: GemmTile,
) -> Result<usize> {
    let max = ctx.limits().max_storage_buffer_binding_size;
    if window_bytes(x) > max || window_bytes(y) > max {
        let s = x.shape;
        let Some(axis) = [s.batch, s.heads, s.seq].iter().position(|&len| len > 1) else {
            return Err(Error::LimitExceeded {
                what: format!("linear: one row of X {} and of Y {}", x.shape, y.shape),
                limit: "max_storage_buffer_binding_size",
                needed: window_bytes(x).max(window_bytes(y)),
                available: max,
            });
        };
        let len = [s.batch, s.heads, s.seq][axis];
        let half = len / 2;
        return Ok(encode_rows(ctx, pass, &x.narrow(axis, 0, half)?, w, bias, &y.narrow(axis, 0, half)?, tile)?
            + encode_rows(
                ctx,
                pass,
                &x.narrow(axis, half, len - half)?,
                w,
                bias,
                &y.narrow(axis, half, len - half)?,
                tile,
            )?);
    }

    let window = |t: &Tensor| {
        let (first, end) = t.extent();
        Window::new(ctx, t, (0, (end - first) as u64))
    };
    let (xw, ww, yw) = (window(x), window(w), window(y));
    let bw = bias.map(window);
    let (k, n) = (x.shape.head_dim as u32, w.shape.seq as u32);
    let [bs, hs, ss] = x.strides;
    let vec4 = k % 4 == 0
        && [bs, hs, ss, w.strides[2]].iter().all(|s| s % 4 == 0)
        && [xw.base, ww.base].iter().all(|b| b % 4 == 0);
    let params = Params::from([
        ("XR", tile.xr),
        ("SL", tile.sl),
        ("C", tile.c),
        ("KU", tile.ku),
        ("WG", tile.wg),
        ("MB", tile.rows()),
        ("SUBGROUPS", tile.subgroups as u32),
        ("VEC4", vec4 as u32),
        ("BIAS", bias.is_some() as u32),
        ("IN_TYPE", x.dtype.shader_code()),
        ("OUT_TYPE", y.dtype.shader_code()),
    ]);
    let pipeline = pipeline(ctx, "gemm.wgsl", SOURCE, &params)?;
    let s = x.shape;
    let rows = (s.batch * s.heads * s.seq) as u64;
    let col_tiles = n.div_ceil(tile.cols());
    let uniform_params = GemmParams {
        rows: rows as u32,
        n,
        k,
        col_tiles,
        heads: s.heads as u32,
        seq: s.seq as u32,
        w_stride: w.strides[2] as u32,
        x_base: xw.base,
        w_base: ww.base,
        y_base: yw.base,
        b_base: bw.map_or(0, |b| b.base),
        x_stride: strides4(x),
        y_stride: strides4(y),
        ..Default::default()
    };
    let uniform =
        |grid_x, wg_offset| bytemuck::bytes_of(&GemmParams { grid_x, wg_offset, ..uniform_params }).to_vec();
    // binding 3 exists only in specialisations with a bias (layouts are reflected from the shader)
    let mut resources = vec![(1, xw.binding(&x.buffer)), (2, ww.binding(&w.buffer)), (4, yw.binding(&y.buffer))];
    if let (Some(b), Some(bw)) = (bias, bw) {
        resources.push((3, bw.binding(&b.buffer)));
    }
    let workgroups = col_tiles as u64 * rows.div_ceil(tile.rows() as u64);
    Ok(dispatch_all(ctx, pass, &pipeline, "linear", workgroups, uniform, &resources))
}

/// The Y tensor [`encode`] writes for X and W when the caller gives none: X's batch, heads and
/// sequence, W's out_features, in X's layout and `dtype`.
pub(crate) fn output(ctx: &Context, x: &Tensor, w: &Tensor, dtype: DType) -> Result<Tensor> {
    let s = x.shape;
    Tensor::zeros_as(ctx, Shape::new(s.batch, s.heads, s.seq, w.shape.seq), x.layout, dtype)
}

/// Record `y = x·wᵀ + bias` into `rec` as one call with `tile` (the adapter's own when `None`):
/// [`crate::Recorder::linear_into`] with a chosen tile, for benchmarks and tests of the tiles.
pub fn record_into(
    rec: &mut crate::record::Recorder<'_>,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    tile: Option<GemmTile>,
) -> Result<crate::record::CallInfo> {
    check(rec.context(), x, w, bias, y)?;
    rec.record(|ctx, encoder, timing| {
        let mut pass =
            encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("linear"), timestamp_writes: timing });
        let dispatches = encode(ctx, &mut pass, x, w, bias, y, tile)?;
        Ok(crate::record::CallInfo::new("gemm", None, 1, dispatches))
    })
}
