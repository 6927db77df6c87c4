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
