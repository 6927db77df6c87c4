//! Launch of `shaders/repack.wgsl`: packed, zero-padded copies of tensor views, so that the fused
//! forward runs on vec4s whatever the caller's head dim, strides and offsets.
//!
//! The fused kernels read and write Q, K, V and O as vec4s when the head dim, every stride and
//! every offset are multiples of 4 elements (`Variant::vec4`); otherwise they fall back to scalar
//! accesses, which on CPU adapters (a per-lane loop each) make the unrolled register kernels take
//! about three times as long to compile (head dim 111: 47 s against 18 s for 128, docs/COMPILE.md),
//! and are a kernel variant of their own. A call that is not aligned is therefore run on packed
//! copies: Q, K and V copied to contiguous `[B, H, N, DP]` tensors (DP = D rounded up to 4,
//! the padding zero, so q·k is unchanged), the forward computed into a packed O, whose D
//! columns are copied into the caller's O. The extra traffic is O(N·D), against the forward's
//! O(N²·D). Calls whose views do not fit one storage binding keep the scalar kernels.

use bytemuck::{Pod, Zeroable};

use super::{dispatch_all, entry_pipeline, Window};
use crate::attention::{Layout, Shape};
use crate::context::Context;
use crate::dtype::DType;
use crate::error::Result;
use crate::shader::Params;
use crate::tensor::Tensor;

const SOURCE: &str = include_str!("../../shaders/repack.wgsl");

/// Mirrors `Params` in repack.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct RepackParams {
    pub batch: u32,
    pub heads: u32,
    pub seq: u32,
    pub head_dim: u32,
    pub packed_dim: u32,
    pub grid_x: u32,
    pub wg_offset: u32,
    pub view_base: u32,
    pub stride: [u32; 4],
}

/// Whether a view is accessed as vec4s by the fused kernels: head dim, strides and offset all
/// multiples of 4 elements.
pub(crate) fn vec4_ready(t: &Tensor) -> bool {
    t.shape.head_dim.is_multiple_of(4) && t.offset.is_multiple_of(4) && t.strides.iter().all(|s| s.is_multiple_of(4))
}

/// Whether `views` can be packed: each view, and its packed copy, fits one storage binding.
pub(crate) fn fits(ctx: &Context, views: &[&Tensor]) -> bool {
    let max = ctx.limits().max_storage_buffer_binding_size;
    // a view's binding window starts up to one offset alignment before its first element
    let slack = ctx.limits().min_storage_buffer_offset_alignment as u64;
    views.iter().all(|t| {
        let (first, end) = t.extent();
        let packed = packed_shape(t.shape).len() as u64;
        t.dtype.bytes((end - first) as u64) + slack <= max && t.dtype.bytes(packed) <= max
    })
}

/// The shape of a packed copy: the head dim rounded up to 4.
pub(crate) fn packed_shape(shape: Shape) -> Shape {
    Shape { head_dim: shape.head_dim.div_ceil(4) * 4, ..shape }
}

/// A zeroed packed tensor for a view `t` (its dtype, contiguous BHSD, head dim rounded up to 4).
pub(crate) fn packed_zeros(ctx: &Context, t: &Tensor) -> Result<Tensor> {
    Tensor::zeros_as(ctx, packed_shape(t.shape), Layout::Bhsd, t.dtype)
}

/// Record, into `pass`, the copy of `view` into the packed tensor `packed` (pack) or of
/// `packed`'s first D columns into `view` (unpack). Returns the dispatches recorded.
pub(crate) fn encode(
    ctx: &Context,
    pass: &mut wgpu::ComputePass<'_>,
    view: &Tensor,
    packed: &Tensor,
    unpack: bool,
) -> Result<usize> {
    let entry = if unpack { "unpack" } else { "pack" };
    // view and copy are of one dtype; 16-bit elements are copied as bits
    let half = view.dtype != DType::F32;
    if packed.dtype != view.dtype {
        return Err(crate::Error::UnsupportedDType(format!(
            "a {} view repacked into a {} copy",
            view.dtype, packed.dtype
        )));
    }
    let pipeline = entry_pipeline(ctx, "repack.wgsl", SOURCE, entry, &Params::from([("HALF", half as u32)]))?;
    let shape = view.shape;
    let (first, end) = view.extent();
    let window = Window::new(ctx, view, (0, (end - first) as u64));
    let [sb, sh, ss] = view.strides;
    let params = RepackParams {
        batch: shape.batch as u32,
        heads: shape.heads as u32,
        seq: shape.seq as u32,
        head_dim: shape.head_dim as u32,
        packed_dim: packed.shape.head_dim as u32,
        view_base: window.base,
        stride: [sb as u32, sh as u32, ss as u32, 0],
        ..Default::default()
    };
    // invocations: view elements (unpack), packed elements or, 16-bit, packed words (pack)
    let elements = match (unpack, half) {
        (true, _) => shape.len(),
        (false, false) => packed.shape.len(),
        (false, true) => packed.shape.len() / 2,
    } as u64;
    let uniform =
        |grid_x, wg_offset| bytemuck::bytes_of(&RepackParams { grid_x, wg_offset, ..params }).to_vec();
    let view_binding = window.binding(&view.buffer);
    let packed_binding = packed.buffer.as_entire_binding();
    let resources = if unpack {
        [(1, packed_binding), (2, view_binding)]
    } else {
        [(1, view_binding), (2, packed_binding)]
    };
    Ok(dispatch_all(ctx, pass, &pipeline, entry, elements.div_ceil(64), uniform, &resources))
}
