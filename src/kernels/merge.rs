//! Launch of `shaders/merge.wgsl`: combine split-key partial states by log-sum-exp.

use bytemuck::{Pod, Zeroable};

use super::{dispatches, pipeline, Window};
use crate::context::Context;
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

/// Record the merge dispatches into `pass`. The grid fields, `o_base` and `lse_base` are filled here.
pub(crate) fn encode(
    ctx: &Context,
    pass: &mut wgpu::ComputePass<'_>,
    mut params: MergeParams,
    buffers: &MergeBuffers<'_>,
) -> Result<()> {
    let pipeline = pipeline(ctx, "merge.wgsl", SOURCE, &Params::new())?;
    let elements = params.rows as u64 * params.head_dim as u64;
    params.o_base = buffers.o.1.base;
    params.lse_base = buffers.lse.1.base;
    for (offset, gx, gy) in dispatches(ctx, elements.div_ceil(64)) {
        params.grid_x = gx;
        params.wg_offset = offset;
        let uniform = ctx.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("merge params"),
            contents: bytemuck::bytes_of(&params),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("merge"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: buffers.part_o.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 2, resource: buffers.part_lse.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 3, resource: buffers.o.1.binding(buffers.o.0) },
                wgpu::BindGroupEntry { binding: 4, resource: buffers.lse.1.binding(buffers.lse.0) },
            ],
        });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(gx, gy, 1);
    }
    Ok(())
}
