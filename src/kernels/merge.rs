//! Launch of `shaders/merge.wgsl`: combine split-key partial states by log-sum-exp.

use bytemuck::{Pod, Zeroable};

use super::{dispatch_all, pipeline, Window};
use crate::context::Context;
use crate::dtype::DType;
use crate::error::Result;
use crate::shader::Params;

const SOURCE: &str = include_str!("../../shaders/merge.wgsl");

/// Mirrors `Params` in merge.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct MergeParams {
    pub rows: u32,
    pub row0: u32,
    pub rows_per_group: u32,
    pub head_dim: u32,
    pub n_splits: u32,
    pub grid_x: u32,
    pub group: u32,
    pub kv_heads: u32,
    pub q_len: u32,
    pub rows_per_head: u32,
    pub batch0: u32,
    pub kv_head0: u32,
    pub wg_offset: u32,
    pub _pad: [u32; 3],
    pub o_stride: [u32; 4],
    pub o_base: u32,
    pub lse_base: u32,
    pub lse_stride_b: u32,
    pub lse_stride_h: u32,
}

/// The buffers one merge reads and writes.
pub(crate) struct MergeBuffers<'a> {
    pub part_o: &'a wgpu::Buffer,
    pub part_lse: &'a wgpu::Buffer,
    pub o: (&'a wgpu::Buffer, Window),
    pub lse: (&'a wgpu::Buffer, Window),
}

/// Record the merge dispatches into `pass` (returns how many), O stored as `o_dtype`. The grid
/// fields, `o_base` and `lse_base` are filled here.
pub(crate) fn encode(
    ctx: &Context,
    pass: &mut wgpu::ComputePass<'_>,
    mut params: MergeParams,
    buffers: &MergeBuffers<'_>,
    o_dtype: DType,
) -> Result<usize> {
    let pipeline = pipeline(ctx, "merge.wgsl", SOURCE, &Params::from([("O_TYPE", o_dtype.shader_code())]))?;
    let elements = params.rows as u64 * params.head_dim as u64;
    params.o_base = buffers.o.1.base;
    params.lse_base = buffers.lse.1.base;
    let uniform =
        |grid_x, wg_offset| bytemuck::bytes_of(&MergeParams { grid_x, wg_offset, ..params }).to_vec();
    let resources = [
        (1, buffers.part_o.as_entire_binding()),
        (2, buffers.part_lse.as_entire_binding()),
        (3, buffers.o.1.binding(buffers.o.0)),
        (4, buffers.lse.1.binding(buffers.lse.0)),
    ];
    Ok(dispatch_all(ctx, pass, &pipeline, "merge", elements.div_ceil(64), uniform, &resources))
}

const STATES_SOURCE: &str = include_str!("../../shaders/merge_states.wgsl");

/// Mirrors `Params` in merge_states.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct MergeStatesParams {
    pub rows: u32,
    pub head_dim: u32,
    pub heads: u32,
    pub seq: u32,
    pub batch0: u32,
    pub grid_x: u32,
    pub wg_offset: u32,
    pub o1_base: u32,
    pub o2_base: u32,
    pub o_base: u32,
    pub lse1_base: u32,
    pub lse2_base: u32,
    pub lse_base: u32,
    pub _pad: [u32; 3],
    pub o1_stride: [u32; 4],
    pub o2_stride: [u32; 4],
    pub o_stride: [u32; 4],
}

/// One attention state: O `[B, H, N, D]` (any layout and dtype) and its LSE (f32, contiguous
/// `[B, H, N, 1]`).
pub(crate) type State<'a> = (&'a crate::tensor::Tensor, &'a crate::tensor::Tensor);

/// Check that `a`, `b` and `out` are states of one shape and O dtype on `ctx`.
pub(crate) fn check_states(ctx: &Context, [a, b, out]: [State<'_>; 3]) -> Result<()> {
    use crate::attention::{Layout, Shape};
    use crate::error::Error;
    let s = a.0.shape;
    let lse_shape = Shape::new(s.batch, s.heads, s.seq, 1);
    for (o, lse) in [a, b, out] {
        o.check_context(ctx)?;
        lse.check_context(ctx)?;
        if o.shape != s {
            return Err(Error::ShapeMismatch(format!("merge_states: O is {} and {}: they must be equal", s, o.shape)));
        }
        if o.dtype != a.0.dtype {
            return Err(Error::UnsupportedDType(format!(
                "merge_states: O is {} and {}: the outputs must be of one dtype",
                a.0.dtype, o.dtype
            )));
        }
        if lse.dtype != DType::F32 {
            return Err(Error::UnsupportedDType(format!("merge_states: LSE is {}: it is always f32", lse.dtype)));
        }
        if lse.shape != lse_shape || lse.strides != Layout::Bhsd.strides(lse_shape) {
            return Err(Error::ShapeMismatch(format!(
                "merge_states: LSE is {} but must be a contiguous {lse_shape} for O {s}",
                lse.shape
            )));
        }
    }
    Ok(())
}

/// Record `out = merge(a, b)` into `pass` (checked states); returns the dispatches. Cut by batches
/// so that every tensor's window fits one storage binding.
pub(crate) fn encode_states(
    ctx: &Context,
    pass: &mut wgpu::ComputePass<'_>,
    [a, b, out]: [State<'_>; 3],
) -> Result<usize> {
    use super::flash::plan::element_range;
    use crate::error::Error;
    let s = out.0.shape;
    let dtype = out.0.dtype;
    let pipeline =
        pipeline(ctx, "merge_states.wgsl", STATES_SOURCE, &Params::from([("O_TYPE", dtype.shader_code())]))?;
    let max = ctx.limits().max_storage_buffer_binding_size;
    let windows = |b0: usize, nb: usize| {
        let row = (s.heads * s.seq) as u64;
        let lse_range = (b0 as u64 * row, (b0 + nb) as u64 * row);
        [a, b, out].map(|(o, lse)| {
            let range = element_range(o.shape, o.strides, b0, nb, 0, s.heads);
            (Window::new(ctx, o, range), Window::new(ctx, lse, lse_range), dtype.bytes(range.1 - range.0) + 256)
        })
    };
    let fits = |b0: usize, nb: usize| windows(b0, nb).iter().all(|w| w.2 <= max);
    let mut dispatches = 0;
    let mut b0 = 0;
    while b0 < s.batch {
        let mut nb = s.batch - b0;
        while nb > 1 && !fits(b0, nb) {
            nb = nb.div_ceil(2);
        }
        if !fits(b0, nb) {
            return Err(Error::LimitExceeded {
                what: format!("merge_states: one batch of O {s}"),
                limit: "max_storage_buffer_binding_size",
                needed: windows(b0, 1).iter().map(|w| w.2).max().unwrap_or(0),
                available: max,
            });
        }
        let [(w1, l1, _), (w2, l2, _), (w, l, _)] = windows(b0, nb);
        let params = MergeStatesParams {
            rows: (nb * s.heads * s.seq) as u32,
            head_dim: s.head_dim as u32,
            heads: s.heads as u32,
            seq: s.seq as u32,
            batch0: b0 as u32,
            o1_base: w1.base,
            o2_base: w2.base,
            o_base: w.base,
            lse1_base: l1.base,
            lse2_base: l2.base,
            lse_base: l.base,
            o1_stride: super::strides4(a.0),
            o2_stride: super::strides4(b.0),
            o_stride: super::strides4(out.0),
            ..Default::default()
        };
        let elements = params.rows as u64 * params.head_dim as u64;
        let uniform = |grid_x, wg_offset| {
            bytemuck::bytes_of(&MergeStatesParams { grid_x, wg_offset, ..params }).to_vec()
        };
        let resources = [
            (1, w1.binding(&a.0.buffer)),
            (2, w2.binding(&b.0.buffer)),
            (3, w.binding(&out.0.buffer)),
            (4, l1.binding(&a.1.buffer)),
            (5, l2.binding(&b.1.buffer)),
            (6, l.binding(&out.1.buffer)),
        ];
        dispatches += dispatch_all(ctx, pass, &pipeline, "merge states", elements.div_ceil(64), uniform, &resources);
        b0 += nb;
    }
    Ok(dispatches)
}
