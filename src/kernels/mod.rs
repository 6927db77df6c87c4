//! One module per kernel family; each owns its WGSL file (in `shaders/`), its uniform struct, its
//! specialisation key and its dispatch.

pub mod flash;
pub(crate) mod merge;
pub mod naive;
pub mod topk;
#[cfg(test)]
mod uniform_layout;

use crate::attention::{Attention, Causal};
use crate::context::Context;
use crate::error::Result;
use crate::shader::{self, Params};
use crate::tensor::Tensor;

/// Build (or fetch from the context's cache) the pipeline of `source` specialised by `params`.
pub(crate) fn pipeline(
    ctx: &Context,
    name: &'static str,
    source: &'static str,
    params: &Params,
) -> Result<std::sync::Arc<wgpu::ComputePipeline>> {
    entry_pipeline(ctx, name, source, "main", params)
}

/// Like [`pipeline`] for the entry point `entry`.
pub(crate) fn entry_pipeline(
    ctx: &Context,
    name: &'static str,
    source: &'static str,
    entry: &'static str,
    params: &Params,
) -> Result<std::sync::Arc<wgpu::ComputePipeline>> {
    let key = format!("{name}:{entry}{params:?}");
    ctx.pipeline(&key, |device| {
        let text = shader::specialise(name, source, params)?;
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(text.into()),
        });
        Ok(device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(name),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        }))
    })
}

/// A storage-buffer binding window covering elements `[start, end)` (4-byte elements) of a
/// buffer, starting at an offset aligned down to the adapter's alignment. `base` is the element
/// index the window starts at, which the shader subtracts from its indices.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    offset: u64,
    size: u64,
    pub base: u32,
}

impl Window {
    pub fn new(ctx: &Context, buffer: &wgpu::Buffer, (start, end): (u64, u64)) -> Self {
        let align = ctx.limits().min_storage_buffer_offset_alignment as u64;
        let offset = (start * 4) / align * align;
        let size = ((end * 4).min(buffer.size()) - offset).max(4);
        Self { offset, size, base: (offset / 4) as u32 }
    }

    pub fn binding<'a>(&self, buffer: &'a wgpu::Buffer) -> wgpu::BindingResource<'a> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer,
            offset: self.offset,
            size: std::num::NonZeroU64::new(self.size),
        })
    }
}

/// Bytes a window over `[start, end)` elements occupies in the worst alignment case.
pub(crate) fn window_bytes(ctx: &Context, start: u64, end: u64) -> u64 {
    (end - start) * 4 + ctx.limits().min_storage_buffer_offset_alignment as u64
}

/// Element strides (batch, head, seq, 0) of a tensor as the kernels' uniforms take them.
pub(crate) fn strides4(t: &Tensor) -> [u32; 4] {
    let [b, h, s] = t.layout.strides(t.shape);
    [b as u32, h as u32, s as u32, 0]
}

/// The kernels' causal code: 0 none, 1 top-left, 2 bottom-right.
pub(crate) fn causal_code(attn: &Attention) -> u32 {
    match attn.causal {
        None => 0,
        Some(Causal::TopLeft) => 1,
        Some(Causal::BottomRight) => 2,
    }
}

/// Record the dispatches covering `total` workgroups of `pipeline`. Each gets its own uniform at
/// binding 0, made by `uniform(grid_x, first_workgroup)` (a 2D grid whose linear workgroup ids the
/// shader offsets by `first_workgroup`), and `resources` at their bindings.
pub(crate) fn dispatch_all(
    ctx: &Context,
    pass: &mut wgpu::ComputePass<'_>,
    pipeline: &wgpu::ComputePipeline,
    label: &str,
    total: u64,
    uniform: impl Fn(u32, u32) -> Vec<u8>,
    resources: &[(u32, wgpu::BindingResource<'_>)],
) {
    let layout = pipeline.get_bind_group_layout(0);
    for (offset, gx, gy) in dispatches(ctx, total) {
        let uniform = ctx.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: &uniform(gx, offset),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() }];
        entries.extend(
            resources
                .iter()
                .map(|(binding, r)| wgpu::BindGroupEntry { binding: *binding, resource: r.clone() }),
        );
        let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &layout,
            entries: &entries,
        });
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(gx, gy, 1);
    }
}

/// Dispatches covering `total` workgroups under the per-dimension limit: `(first workgroup,
/// x, y)` for each, with x·y workgroups (the shader skips linear ids past `total`).
pub(crate) fn dispatches(ctx: &Context, total: u64) -> Vec<(u32, u32, u32)> {
    let max = ctx.limits().max_compute_workgroups_per_dimension as u64;
    let per = max * max;
    (0..total.max(1))
        .step_by(per as usize)
        .map(|first| {
            let n = (total - first).clamp(1, per);
            let x = n.min(max);
            (first as u32, x as u32, n.div_ceil(x) as u32)
        })
        .collect()
}
