//! Launch of `shaders/topk.wgsl`: dynamic top-k block selection written straight into the block
//! table of the fused kernel (no host round trip). See [`crate::mask::TopK`] for the rule.

use bytemuck::{Pod, Zeroable};

use super::{causal_code, dispatch_all, dispatches, entry_pipeline, strides4, whole_binding};
use crate::attention::{Attention, Problem};
use crate::context::Context;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::mask::{TopK, TOPK_MAX};
use crate::shader::Params;
use crate::tensor::Tensor;

const SOURCE: &str = include_str!("../../shaders/topk.wgsl");

/// Mirrors `Params` in topk.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct TopKParams {
    pub(crate) batch: u32,
    pub(crate) q_heads: u32,
    pub(crate) kv_heads: u32,
    pub(crate) group: u32,
    pub(crate) q_len: u32,
    pub(crate) kv_len: u32,
    pub(crate) head_dim: u32,
    pub(crate) block: u32,
    pub(crate) q_blocks: u32,
    pub(crate) k_blocks: u32,
    pub(crate) k: u32,
    pub(crate) sink: u32,
    pub(crate) causal: u32,
    pub(crate) scale: f32,
    pub(crate) grid_x: u32,
    pub(crate) lists_offset: u32,
    pub(crate) entries_offset: u32,
    pub(crate) pooled_k_offset: u32,
    pub(crate) _pad: [u32; 2],
    pub(crate) q_stride: [u32; 4],
    pub(crate) k_stride: [u32; 4],
}

/// Query blocks, and aux words the table needs: (first, count) per list and `k + 2` entries of two
/// words per list.
pub(crate) fn table_words(p: &Problem, t: &TopK) -> (usize, usize) {
    let lists = p.batch * p.q_heads * p.q_len.div_ceil(t.block_size);
    (lists * 2, lists * (t.k + 2) * 2)
}

/// Record pooling, scoring and selection into `pass`; the table lands in `aux` at the offsets.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode(
    ctx: &Context,
    pass: &mut wgpu::ComputePass<'_>,
    p: &Problem,
    attn: &Attention,
    t: &TopK,
    (q, k): (&Tensor, &Tensor),
    aux: &wgpu::Buffer,
    (lists_offset, entries_offset): (u32, u32),
) -> Result<usize> {
    let max_binding = ctx.limits().max_storage_buffer_binding_size;
    let (qbs, kbs) = (p.q_len.div_ceil(t.block_size), p.kv_len.div_ceil(t.block_size));
    let pooled_q = p.batch * p.q_heads * qbs * p.head_dim;
    let pooled_len = pooled_q + p.batch * p.kv_heads * kbs * p.head_dim;
    let scores_len = p.batch * p.q_heads * qbs * kbs;
    for (what, bytes) in [
        ("Q", q.dtype.bytes(q.extent().1 as u64 - q.offset as u64)),
        ("K", k.dtype.bytes(k.extent().1 as u64 - k.offset as u64)),
        ("pooled blocks", DType::F32.bytes(pooled_len as u64)),
        ("block scores", DType::F32.bytes(scores_len as u64)),
    ] {
        if bytes > max_binding {
            return Err(Error::LimitExceeded {
                what: format!("top-k selection's {what}"),
                limit: "max_storage_buffer_binding_size",
                needed: bytes,
                available: max_binding,
            });
        }
    }
    let scratch = |label, words: usize| {
        ctx.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: DType::F32.bytes(words.max(1) as u64),
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    };
    let pooled = scratch("top-k pooled blocks", pooled_len);
    let scores = scratch("top-k block scores", scores_len);

    let params = Params::from([("K_MAX", TOPK_MAX as u32), ("QKV_TYPE", q.dtype.shader_code())]);
    let tp = TopKParams {
        batch: p.batch as u32,
        q_heads: p.q_heads as u32,
        kv_heads: p.kv_heads as u32,
        group: p.group() as u32,
        q_len: p.q_len as u32,
        kv_len: p.kv_len as u32,
        head_dim: p.head_dim as u32,
        block: t.block_size as u32,
        q_blocks: qbs as u32,
        k_blocks: kbs as u32,
        k: t.k as u32,
        sink: t.sink as u32,
        causal: causal_code(attn),
        scale: attn.scale_for(p.head_dim),
        lists_offset,
        entries_offset,
        pooled_k_offset: pooled_q as u32,
        q_stride: strides4(q),
        k_stride: strides4(k),
        ..Default::default()
    };
    let steps: [(&'static str, usize, &[u32]); 4] = [
        ("pool_q", pooled_q, &[1, 3]),
        ("pool_k", pooled_len - pooled_q, &[2, 3, 5]),
        ("score", scores_len, &[3, 4]),
        ("select_blocks", p.batch * p.q_heads * qbs, &[4, 5]),
    ];
    let (q_binding, k_binding) = (whole_binding(ctx, q)?, whole_binding(ctx, k)?);
    let mut recorded = 0;
    for (entry, invocations, bindings) in steps {
        let pipeline = entry_pipeline(ctx, "topk.wgsl", SOURCE, entry, &params)?;
        let workgroups = (invocations as u64).div_ceil(64);
        if dispatches(ctx, workgroups).len() > 1 {
            // these entry points index a 2D grid without a dispatch offset
            let max = ctx.limits().max_compute_workgroups_per_dimension as u64;
            return Err(Error::LimitExceeded {
                what: format!("top-k {entry} over {invocations} invocations"),
                limit: "max_compute_workgroups_per_dimension (squared)",
                needed: workgroups,
                available: max * max,
            });
        }
        let uniform = |grid_x, _| bytemuck::bytes_of(&TopKParams { grid_x, ..tp }).to_vec();
        let resources: Vec<(u32, wgpu::BindingResource<'_>)> = bindings
            .iter()
            .map(|&b| {
                let resource = match b {
                    1 => q_binding.clone(),
                    2 => k_binding.clone(),
                    3 => pooled.as_entire_binding(),
                    4 => scores.as_entire_binding(),
                    _ => aux.as_entire_binding(),
                };
                (b, resource)
            })
            .collect();
        recorded += dispatch_all(ctx, pass, &pipeline, entry, workgroups, uniform, &resources);
    }
    Ok(recorded)
}

/// Run only the GPU's top-k selection and read the chosen key blocks back: one ascending list per
/// (batch, query head, query block), in that order. For tests and inspection; the forward pass
/// never reads the table back.
#[cfg(not(target_arch = "wasm32"))]
pub fn selected_blocks(ctx: &Context, q: &Tensor, k: &Tensor, attn: &Attention) -> Result<Vec<Vec<u32>>> {
    let p = attn.validate(q.shape, k.shape, k.shape)?;
    let t = attn.topk.ok_or_else(|| Error::InvalidOption("no top-k option set".into()))?;
    let (mut aux, _) = super::aux_words(attn, &p);
    let (lists_words, entries_words) = table_words(&p, &t);
    let offsets = (aux.len() as u32, (aux.len() + lists_words) as u32);
    aux.resize(aux.len() + lists_words + entries_words, 0);
    let aux_buffer = ctx.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("top-k table"),
        contents: bytemuck::cast_slice(&aux),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    });
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        encode(ctx, &mut pass, &p, attn, &t, (q, k), &aux_buffer, offsets)?;
    }
    ctx.submit(encoder)?;
    let (index, read) = ctx.read_async(&aux_buffer, 0, aux_buffer.size())?;
    ctx.wait_for(Some(index))?;
    let words: Vec<u32> = bytemuck::pod_collect_to_vec(&pollster::block_on(read)?);
    let lists = lists_words / 2;
    Ok((0..lists)
        .map(|l| {
            let (first, count) = (words[offsets.0 as usize + 2 * l], words[offsets.0 as usize + 2 * l + 1]);
            (0..count).map(|c| words[offsets.1 as usize + 2 * (first + c) as usize]).collect()
        })
        .collect())
}
