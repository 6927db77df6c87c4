//! Launch of `shaders/rope.wgsl`: rotary position embeddings (Hugging Face Llama's rotate-half
//! convention) applied in place to an f32 `[B, H, S, D]` tensor of any strides.

use bytemuck::{Pod, Zeroable};

use super::{dispatch_all, pipeline, strides4, Window};
use crate::context::Context;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shader::Params;
use crate::tensor::Tensor;

const SOURCE: &str = include_str!("../../shaders/rope.wgsl");

/// Mirrors `Params` in rope.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
struct RopeParams {
    pairs: u32,
    half: u32,
    heads: u32,
    seq: u32,
    grid_x: u32,
    wg_offset: u32,
    base: u32,
    _pad: u32,
    stride: [u32; 4],
}

/// The (cos, sin) pairs of positions `pos0..pos0 + seq` for head dim `d` and base `theta`, in f64
/// and rounded once: `[seq, d/2]` pairs, angle `p·θ^(−2i/d)`.
pub(crate) fn table(pos0: usize, seq: usize, d: usize, theta: f64) -> Vec<f32> {
    let half = d / 2;
    let mut out = Vec::with_capacity(seq * half * 2);
    for s in 0..seq {
        for i in 0..half {
            let angle = (pos0 + s) as f64 * theta.powf(-2.0 * i as f64 / d as f64);
            out.extend([angle.cos() as f32, angle.sin() as f32]);
        }
    }
    out
}

/// Check `t` for [`encode`]: f32, an even head dim, one storage binding.
pub(crate) fn check(ctx: &Context, t: &Tensor) -> Result<()> {
    t.check_context(ctx)?;
    if t.dtype != DType::F32 {
        return Err(Error::UnsupportedDType(format!("rotary embeddings take f32 tensors (not yet {})", t.dtype)));
    }
    if !t.shape.head_dim.is_multiple_of(2) {
        return Err(Error::ShapeMismatch(format!("rotary embeddings need an even head dim, not {}", t.shape.head_dim)));
    }
    Ok(())
}

/// Record the rotation of `t` (checked) for positions `pos0..pos0 + S` with base `theta`.
pub(crate) fn encode(ctx: &Context, pass: &mut wgpu::ComputePass<'_>, t: &Tensor, pos0: usize, theta: f64) -> Result<usize> {
    let s = t.shape;
    if s.is_empty() {
        return Ok(0);
    }
    let (first, end) = t.extent();
    let window = Window::new(ctx, t, (0, (end - first) as u64));
    let max = ctx.limits().max_storage_buffer_binding_size;
    let bytes = t.dtype.bytes((end - first) as u64) + 256;
    if bytes > max {
        return Err(Error::LimitExceeded {
            what: format!("rotary embeddings of {s}"),
            limit: "max_storage_buffer_binding_size",
            needed: bytes,
            available: max,
        });
    }
    let half = s.head_dim / 2;
    let table = table(pos0, s.seq, s.head_dim, theta);
    let table = ctx.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("rope table"),
        contents: bytemuck::cast_slice(&table),
        usage: wgpu::BufferUsages::STORAGE,
    });
    let params = RopeParams {
        pairs: (s.batch * s.heads * s.seq * half) as u32,
        half: half as u32,
        heads: s.heads as u32,
        seq: s.seq as u32,
        base: window.base,
        stride: strides4(t),
        ..Default::default()
    };
    let pipeline = pipeline(ctx, "rope.wgsl", SOURCE, &Params::default())?;
    let uniform = |grid_x, wg_offset| bytemuck::bytes_of(&RopeParams { grid_x, wg_offset, ..params }).to_vec();
    let resources = [(1, window.binding(&t.buffer)), (2, table.as_entire_binding())];
    Ok(dispatch_all(ctx, pass, &pipeline, "rope", (params.pairs as u64).div_ceil(64), uniform, &resources))
}

/// Record the rotation of `t` into `rec` as one call (kernel "rope").
pub(crate) fn record(rec: &mut crate::record::Recorder<'_>, t: &Tensor, pos0: usize, theta: f64) -> Result<crate::record::CallInfo> {
    check(rec.context(), t)?;
    rec.record(|ctx, encoder, timing| {
        let mut pass =
            encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("rope"), timestamp_writes: timing });
        let dispatches = encode(ctx, &mut pass, t, pos0, theta)?;
        Ok(crate::record::CallInfo::new("rope", None, 1, dispatches))
    })
}
