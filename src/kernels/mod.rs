//! One module per kernel family; each owns its WGSL file (in `shaders/`), its uniform struct, its
//! specialisation key and its `encode`, which records into a caller's encoder or pass. This file
//! holds what they share: pipelines from the context's cache, binding windows over tensors, and
//! the dispatch loop under the per-dimension workgroup limit.

pub mod decode;
pub mod flash;
pub mod gemm;
pub(crate) mod merge;
pub mod naive;
pub(crate) mod repack;
pub(crate) mod rope;
pub mod topk;
#[cfg(test)]
mod uniform_layout;

use crate::attention::{Attention, Causal};
use crate::context::Context;
use crate::context::PipelineKey;
use crate::dtype::DType;
use crate::error::{Error, Result};
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
    let key = PipelineKey { shader: name, entry, params: params.clone() };
    ctx.pipeline(key, || Ok(build_pipeline(ctx, name, source, entry, params)?.0))
}

/// Build the pipeline of `source` specialised by `params` on `ctx`'s device (no cache of built
/// pipelines: [`entry_pipeline`] has that), with the entries of its bind group's layout.
pub(crate) fn build_pipeline(
    ctx: &Context,
    name: &'static str,
    source: &'static str,
    entry: &'static str,
    params: &Params,
) -> Result<(wgpu::ComputePipeline, Vec<wgpu::BindGroupLayoutEntry>)> {
    let device = &ctx.device;
    // the WGSL and an explicit layout reflected from it, from one naga validation
    #[cfg(not(target_arch = "wasm32"))]
    let started = std::time::Instant::now();
    let specialised = shader::specialise_with(name, source, params, entry, |text| ctx.parse_wgsl(name, text))?;
    #[cfg(not(target_arch = "wasm32"))]
    let parsed = started.elapsed();
    let entries = specialised.entries;
    let bind_group_layout =
        device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(name), entries: &entries });
    let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(name),
        bind_group_layouts: &[Some(&bind_group_layout)],
        immediate_size: 0,
    });
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(name),
        // native: the module already parsed (no second WGSL parse); the web takes WGSL
        #[cfg(not(target_arch = "wasm32"))]
        source: wgpu::ShaderSource::Naga(std::borrow::Cow::Owned(specialised.module)),
        #[cfg(target_arch = "wasm32")]
        source: wgpu::ShaderSource::Wgsl(specialised.text.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(name),
        layout: Some(&layout),
        module: &module,
        entry_point: Some(entry),
        compilation_options: Default::default(),
        cache: ctx.driver_pipeline_cache(),
    });
    // where a pipeline's time goes (docs/COMPILE.md); software drivers compile further at
    // the first dispatch
    #[cfg(not(target_arch = "wasm32"))]
    log::debug!(
        "pipeline {name} {params:?}: WGSL {:.0} ms, module and pipeline {:.0} ms",
        parsed.as_secs_f64() * 1e3,
        (started.elapsed() - parsed).as_secs_f64() * 1e3
    );
    Ok((pipeline, entries))
}

/// A storage-buffer binding window covering elements `[start, end)` of a tensor (relative to
/// its first element), starting at an offset aligned down to the adapter's alignment. `base` is
/// what the shader subtracts from the tensor's own element indices: the window's first element
/// less the tensor's offset, modulo 2³² (WGSL's u32 arithmetic wraps, so a window that starts
/// before the tensor's first element still indexes right).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    offset: u64,
    size: u64,
    pub base: u32,
}

impl Window {
    pub fn new(ctx: &Context, t: &Tensor, (start, end): (u64, u64)) -> Self {
        let elem = t.dtype.size();
        let (start, end) = (start + t.offset as u64, end + t.offset as u64);
        let align = ctx.limits().min_storage_buffer_offset_alignment as u64;
        let offset = t.dtype.bytes(start) / align * align;
        // whole words (a 16-bit view may end half way through one)
        let size = (t.dtype.bytes(end).next_multiple_of(4).min(t.buffer.size()) - offset).max(elem.max(4));
        Self { offset, size, base: ((offset / elem) as u32).wrapping_sub(t.offset as u32) }
    }

    pub fn binding<'a>(&self, buffer: &'a wgpu::Buffer) -> wgpu::BindingResource<'a> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer,
            offset: self.offset,
            size: std::num::NonZeroU64::new(self.size),
        })
    }
}

/// The binding of a whole tensor for kernels that index it from its first element (the naive
/// baseline, the top-k selection): the buffer from the tensor's offset on, which must be a
/// multiple of the adapter's storage offset alignment.
pub(crate) fn whole_binding<'a>(ctx: &Context, t: &'a Tensor) -> Result<wgpu::BindingResource<'a>> {
    let at = t.dtype.bytes(t.offset as u64);
    let align = ctx.limits().min_storage_buffer_offset_alignment as u64;
    if !at.is_multiple_of(align) {
        return Err(Error::InvalidOption(format!(
            "this kernel binds whole tensors: a view's byte offset ({at}) must be a multiple of the \
             adapter's storage offset alignment ({align})"
        )));
    }
    // whole words (a 16-bit view may end half way through one)
    let size = t.dtype.bytes(t.extent().1 as u64 - t.offset as u64).next_multiple_of(4).clamp(4, t.buffer.size() - at);
    Ok(wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: &t.buffer,
        offset: at,
        size: std::num::NonZeroU64::new(size),
    }))
}

/// The checks every launch makes of a call's tensors: all on `ctx`; Q, K and V of one dtype
/// (16-bit ones only where `sixteen_bit`: `kernel` takes them), O of any dtype (f32 only
/// without 16-bit support) and Q's shape, LSE a contiguous f32 `[B, Hq, Nq, 1]`.
pub(crate) fn check_tensors(
    ctx: &Context,
    p: &crate::attention::Problem,
    [q, k, v]: [&Tensor; 3],
    o: &Tensor,
    lse: &Tensor,
    sixteen_bit: bool,
    kernel: &str,
) -> Result<()> {
    for t in [q, k, v, o, lse] {
        t.check_context(ctx)?;
    }
    if k.dtype != q.dtype || v.dtype != q.dtype {
        return Err(Error::UnsupportedDType(format!(
            "Q is {}, K {} and V {}: they must be of one dtype",
            q.dtype, k.dtype, v.dtype
        )));
    }
    if lse.dtype != DType::F32 {
        return Err(Error::UnsupportedDType(format!("LSE is {}: it is always f32", lse.dtype)));
    }
    if !sixteen_bit {
        if let Some(t) = [q, o].into_iter().find(|t| t.dtype != DType::F32) {
            return Err(Error::UnsupportedDType(format!(
                "{kernel} takes f32 tensors only (not yet {}): use the fused forward for 16-bit tensors",
                t.dtype
            )));
        }
    }
    if o.shape != p.q_shape() {
        return Err(Error::ShapeMismatch(format!("O is {} but Q is {}", o.shape, p.q_shape())));
    }
    let lse_shape = crate::attention::Shape::new(p.batch, p.q_heads, p.q_len, 1);
    if lse.shape != lse_shape {
        return Err(Error::ShapeMismatch(format!("LSE is {} but must be {lse_shape}", lse.shape)));
    }
    if lse.strides != crate::attention::Layout::Bhsd.strides(lse_shape) {
        return Err(Error::ShapeMismatch("LSE must be contiguous [B, Hq, Nq, 1]".into()));
    }
    Ok(())
}

/// The words every kernel's aux buffer starts with: the per-batch key lengths, then the ALiBi
/// slopes as f32 bits when the call has them; and the slopes' offset. Tables follow.
pub(crate) fn aux_words(attn: &Attention, p: &crate::attention::Problem) -> (Vec<u32>, u32) {
    let mut aux: Vec<u32> = match &attn.kv_lens {
        Some(l) => l.clone(),
        None => vec![p.kv_len as u32; p.batch],
    };
    let alibi_offset = aux.len() as u32;
    if let Some(s) = &attn.alibi_slopes {
        aux.extend(s.iter().map(|x| x.to_bits()));
    }
    (aux, alibi_offset)
}

/// Element strides (batch, head, seq, 0) of a tensor as the kernels' uniforms take them.
pub(crate) fn strides4(t: &Tensor) -> [u32; 4] {
    let [b, h, s] = t.strides;
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
/// shader offsets by `first_workgroup`), and `resources` at their bindings. Returns how many
/// dispatches it recorded.
pub(crate) fn dispatch_all(
    ctx: &Context,
    pass: &mut wgpu::ComputePass<'_>,
    pipeline: &wgpu::ComputePipeline,
    label: &str,
    total: u64,
    uniform: impl Fn(u32, u32) -> Vec<u8>,
    resources: &[(u32, wgpu::BindingResource<'_>)],
) -> usize {
    let layout = pipeline.get_bind_group_layout(0);
    let grids = dispatches(ctx, total);
    for &(offset, gx, gy) in &grids {
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
    grids.len()
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
