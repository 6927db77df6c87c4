//! Device tensors: a view into a storage buffer that knows its element type, its logical shape
//! `[B, H, S, D]`, its strides and its offset. Several tensors may view one buffer (a slice of a
//! bigger buffer, a KV cache, a page pool); calls take and return `Tensor`s, so a caller chains
//! attention calls without host round trips. `upload`, `fill` and `to_host` are the only copies.
//!
//! [`HostTensor`], its host-side counterpart, holds data in BHSD or BSHD order.
//!
//! Strides are in elements for the batch, head and sequence axes; the head dim is always
//! contiguous (stride 1), as every kernel reads whole head-dim rows.

use std::future::Future;
use std::sync::Arc;

use crate::attention::{Layout, Shape};
use crate::context::Context;
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};

/// A view `[B, H, S, D]` of elements of `dtype` in a storage buffer.
///
/// ```
/// use wgpu_attention::{Context, HostTensor, Layout, Shape, Tensor};
/// # fn main() -> Result<(), wgpu_attention::Error> {
/// let ctx = Context::new()?;
/// let shape = Shape::new(1, 2, 8, 4);
/// let host = HostTensor::new((0..64).map(|i| i as f32).collect(), shape, Layout::Bhsd)?;
/// let t = Tensor::upload(&ctx, &host)?;
/// // rows 2..5 of every head: a view of the same buffer, no copy
/// let rows = t.narrow(2, 2, 3)?;
/// assert_eq!(rows.shape(), Shape::new(1, 2, 3, 4));
/// assert_eq!(rows.to_host(&ctx)?.at(0, 1, 0, 0), host.at(0, 1, 2, 0));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Tensor {
    pub(crate) buffer: Arc<wgpu::Buffer>,
    pub(crate) dtype: DType,
    pub(crate) shape: Shape,
    pub(crate) strides: [usize; 3],
    /// Elements from the start of the buffer to element (0, 0, 0, 0).
    pub(crate) offset: usize,
    /// The axis order outputs are allocated in and `to_host` returns.
    pub(crate) layout: Layout,
    pub(crate) context_id: u64,
}

const USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

impl Tensor {
    /// Copy a host tensor to the device as f32 (a new buffer, in the host tensor's layout).
    pub fn upload(ctx: &Context, host: &HostTensor) -> Result<Self> {
        Self::upload_as(ctx, host, DType::F32)
    }

    /// Copy a host tensor to the device stored as `dtype`, each value rounded to the nearest
    /// `dtype` value (ties to even; f16 values past ±65504 become ±∞).
    ///
    /// ```
    /// use wgpu_attention::{Context, DType, HostTensor, Layout, Shape, Tensor};
    /// # fn main() -> Result<(), wgpu_attention::Error> {
    /// let ctx = Context::new()?;
    /// let host = HostTensor::new(vec![1.0, 2.5, 1.0 + 1.0 / 4096.0, -3.0], Shape::new(1, 1, 1, 4), Layout::Bhsd)?;
    /// let t = Tensor::upload_as(&ctx, &host, DType::BF16)?;
    /// assert_eq!(t.dtype(), DType::BF16);
    /// assert_eq!(t.to_host(&ctx)?.data, vec![1.0, 2.5, 1.0, -3.0]); // widened exactly
    /// # Ok(()) }
    /// ```
    pub fn upload_as(ctx: &Context, host: &HostTensor, dtype: DType) -> Result<Self> {
        Self::upload_bytes(ctx, dtype.encode(&host.data), dtype, host.shape, host.layout)
    }

    /// Copy elements of a host type (`f32`, `half::f16` or `half::bf16`) to the device as they
    /// are, in `layout` order with logical `shape`.
    ///
    /// ```
    /// use half::f16;
    /// use wgpu_attention::{Context, DType, Layout, Shape, Tensor};
    /// # fn main() -> Result<(), wgpu_attention::Error> {
    /// let ctx = Context::new()?;
    /// let data: Vec<f16> = (0..24).map(|i| f16::from_f32(i as f32 / 8.0)).collect();
    /// let t = Tensor::from_slice(&ctx, &data, Shape::new(1, 2, 3, 4), Layout::Bhsd)?;
    /// assert_eq!(t.dtype(), DType::F16);
    /// assert_eq!(t.to_host(&ctx)?.at(0, 1, 2, 3), 23.0 / 8.0);
    /// # Ok(()) }
    /// ```
    pub fn from_slice<T: Element>(ctx: &Context, data: &[T], shape: Shape, layout: Layout) -> Result<Self> {
        if data.len() != shape.len() {
            return Err(Error::ShapeMismatch(format!(
                "{} elements given for shape {shape} ({} expected)",
                data.len(),
                shape.len()
            )));
        }
        Self::upload_bytes(ctx, bytemuck::cast_slice(data).to_vec(), T::DTYPE, shape, layout)
    }

    fn upload_bytes(
        ctx: &Context,
        mut bytes: Vec<u8>,
        dtype: DType,
        shape: Shape,
        layout: Layout,
    ) -> Result<Self> {
        // whole words (16-bit tensors of an odd length end half way through one), never empty
        bytes.resize(bytes.len().max(1).next_multiple_of(4), 0);
        check_buffer_size(ctx, "tensor", bytes.len() as u64)?;
        let buffer = ctx.scoped(|| {
            ctx.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("tensor"),
                contents: &bytes,
                usage: USAGE,
            })
        })?;
        Ok(Self::whole(ctx, buffer, dtype, shape, layout))
    }

    /// A zeroed f32 tensor on the device (a new buffer in `layout`).
    pub fn zeros(ctx: &Context, shape: Shape, layout: Layout) -> Result<Self> {
        Self::zeros_as(ctx, shape, layout, DType::F32)
    }

    /// A zeroed tensor of `dtype` on the device (a new buffer in `layout`).
    pub fn zeros_as(ctx: &Context, shape: Shape, layout: Layout, dtype: DType) -> Result<Self> {
        let bytes = dtype.bytes(shape.len().max(1) as u64).next_multiple_of(4);
        check_buffer_size(ctx, "tensor", bytes)?;
        let buffer = ctx.scoped(|| {
            ctx.create_buffer(&wgpu::BufferDescriptor {
                label: Some("tensor"),
                size: bytes,
                usage: USAGE,
                mapped_at_creation: false,
            })
        })?;
        Ok(Self::whole(ctx, buffer, dtype, shape, layout))
    }

    fn whole(ctx: &Context, buffer: wgpu::Buffer, dtype: DType, shape: Shape, layout: Layout) -> Self {
        let strides = layout.strides(shape);
        Self { buffer: Arc::new(buffer), dtype, shape, strides, offset: 0, layout, context_id: ctx.id }
    }

    /// A tensor over a caller's buffer (made on `ctx`'s device, with `STORAGE` usage; `COPY_SRC`
    /// to read it back, `COPY_DST` to fill it): element (b, h, s, d) at byte
    /// `byte_offset + size·(b·strides[0] + h·strides[1] + s·strides[2] + d)`.
    pub fn from_buffer(
        ctx: &Context,
        buffer: Arc<wgpu::Buffer>,
        dtype: DType,
        shape: Shape,
        strides: [usize; 3],
        byte_offset: u64,
    ) -> Result<Self> {
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::InvalidOption("a tensor's buffer needs STORAGE usage".into()));
        }
        if !byte_offset.is_multiple_of(dtype.size()) {
            return Err(Error::InvalidOption(format!(
                "byte offset {byte_offset} is not a multiple of the {dtype} element size"
            )));
        }
        let t = Self {
            buffer,
            dtype,
            shape,
            strides,
            offset: (byte_offset / dtype.size()) as usize,
            layout: Layout::of(strides),
            context_id: ctx.id,
        };
        t.check_bounds()?;
        Ok(t)
    }

    /// A view of this tensor's buffer with another shape, strides and offset (in elements from
    /// this view's first element); fails when it reaches outside the buffer.
    pub fn view(&self, shape: Shape, strides: [usize; 3], offset: usize) -> Result<Self> {
        let layout = if strides == self.strides { self.layout } else { Layout::of(strides) };
        let t = Self { shape, strides, offset: self.offset + offset, layout, ..self.clone() };
        t.check_bounds()?;
        Ok(t)
    }

    /// Elements `start..start + len` of axis `axis` (0 batch, 1 heads, 2 sequence, 3 head dim), as
    /// a view of the same buffer (e.g. the first `len` positions of a KV cache).
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Self> {
        let mut dims = [self.shape.batch, self.shape.heads, self.shape.seq, self.shape.head_dim];
        if axis > 3 || start + len > dims[axis] {
            return Err(Error::ShapeMismatch(format!(
                "narrow({axis}, {start}, {len}) of a tensor of shape {}",
                self.shape
            )));
        }
        dims[axis] = len;
        let stride = if axis == 3 { 1 } else { self.strides[axis] };
        let shape = Shape::new(dims[0], dims[1], dims[2], dims[3]);
        self.view(shape, self.strides, start * stride)
    }

    fn check_bounds(&self) -> Result<()> {
        let end = self.dtype.bytes(self.extent().1 as u64);
        if end > self.buffer.size() {
            return Err(Error::ShapeMismatch(format!(
                "a tensor {} with strides {:?} at element {} reaches byte {end} of a {}-byte buffer",
                self.shape,
                self.strides,
                self.offset,
                self.buffer.size()
            )));
        }
        Ok(())
    }

    /// Elements `[first, end)` of the buffer the view touches (first = end for an empty tensor).
    pub(crate) fn extent(&self) -> (usize, usize) {
        if self.shape.is_empty() {
            return (self.offset, self.offset);
        }
        let Shape { batch, heads, seq, head_dim } = self.shape;
        let [sb, sh, ss] = self.strides;
        let last = (batch - 1) * sb + (heads - 1) * sh + (seq - 1) * ss + head_dim;
        (self.offset, self.offset + last)
    }

    /// True when the view's elements are exactly `[offset, offset + len)` of the buffer in BHSD
    /// or BSHD order.
    pub fn is_contiguous(&self) -> bool {
        let (a, b) = self.extent();
        b - a == self.shape.len()
            && [Layout::Bhsd, Layout::Bshd].iter().any(|l| l.strides(self.shape) == self.strides)
    }

    /// Overwrite every element of the view with `value` (rounded to the view's dtype; tests
    /// poison outputs with NaN this way); elements of the buffer between a strided view's rows
    /// are left alone. A 16-bit view's runs of elements must start on a 4-byte boundary (a run
    /// may end half way through the buffer's last word, whose other half is padding).
    pub fn fill(&self, ctx: &Context, value: f32) -> Result<()> {
        self.check_context(ctx)?;
        let runs: Vec<(usize, usize)> = if self.is_contiguous() {
            vec![(self.offset, self.shape.len())]
        } else {
            let mut runs = Vec::new();
            self.for_each_row(Layout::Bhsd, |first| runs.push((first, self.shape.head_dim)));
            runs
        };
        let size = self.buffer.size();
        for &(first, n) in &runs {
            let (at, end) = (self.dtype.bytes(first as u64), self.dtype.bytes((first + n) as u64));
            if !at.is_multiple_of(4) || !(end.is_multiple_of(4) || end.next_multiple_of(4) == size) {
                return Err(Error::InvalidOption(format!(
                    "fill of a {} view whose elements {first}..{} do not start and end on 4-byte boundaries",
                    self.dtype,
                    first + n
                )));
            }
        }
        ctx.scoped(|| {
            for (first, n) in runs {
                let mut bytes = self.dtype.encode(&vec![value; n]);
                bytes.resize(bytes.len().next_multiple_of(4), 0);
                ctx.queue.write_buffer(&self.buffer, self.dtype.bytes(first as u64), &bytes);
            }
        })
    }

    /// `f(first element)` of every head-dim row, rows in `order`.
    fn for_each_row(&self, order: Layout, mut f: impl FnMut(usize)) {
        let [sb, sh, ss] = self.strides;
        let Shape { batch, heads, seq, .. } = self.shape;
        // (outer, inner) of the two middle axes: heads then positions, or positions then heads
        let (n1, s1, n2, s2) = match order {
            Layout::Bhsd => (heads, sh, seq, ss),
            Layout::Bshd => (seq, ss, heads, sh),
        };
        for b in 0..batch {
            for i in 0..n1 {
                for j in 0..n2 {
                    f(self.offset + b * sb + i * s1 + j * s2);
                }
            }
        }
    }

    /// Record and submit the copy of the view's extent to a staging buffer: the copy's
    /// submission and a future of the host tensor, in [`Tensor::layout`] order.
    fn read(
        &self,
        ctx: &Context,
    ) -> Result<(wgpu::SubmissionIndex, impl Future<Output = Result<HostTensor>> + 'static)> {
        self.check_context(ctx)?;
        let (first, end) = self.extent();
        // the copy starts and ends on 4-byte boundaries (a 16-bit view may start or end half
        // way through a word; the buffers this crate makes hold whole words)
        let at = self.dtype.bytes(first as u64) / 4 * 4;
        let to = self.dtype.bytes(end.max(first + 1) as u64).next_multiple_of(4);
        if to > self.buffer.size() {
            return Err(Error::InvalidOption(format!(
                "the view ends half way through the last word of a {}-byte buffer: it cannot be copied",
                self.buffer.size()
            )));
        }
        let (index, bytes) = ctx.read_async(&self.buffer, at, to - at)?;
        let view = self.clone();
        // element e of the buffer is element e - skip of the bytes read
        let skip = (at / view.dtype.size()) as usize;
        Ok((index, async move {
            let bytes = bytes.await?;
            let mut data = Vec::with_capacity(view.shape.len());
            let d = view.shape.head_dim;
            let dtype = view.dtype;
            view.for_each_row(view.layout, |row| {
                data.extend((row - skip..row - skip + d).map(|e| dtype.decode_at(&bytes, e)))
            });
            HostTensor::new(data, view.shape, view.layout)
        }))
    }

    /// Read the view back to the host, in [`Tensor::layout`] order. The copy is recorded and
    /// submitted now; the future resolves once the GPU has finished it (on native targets the
    /// device must be polled: [`Tensor::to_host`] does both).
    pub fn to_host_async(&self, ctx: &Context) -> impl Future<Output = Result<HostTensor>> + 'static {
        let read = self.read(ctx);
        async move { read?.1.await }
    }

    /// Read the view back to the host, waiting for the GPU to finish the copy (native targets;
    /// on the web use [`Tensor::to_host_async`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_host(&self, ctx: &Context) -> Result<HostTensor> {
        let (index, read) = self.read(ctx)?;
        ctx.wait_for(Some(index))?;
        pollster::block_on(read)
    }

    /// Logical shape `[B, H, S, D]`.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Element strides of the batch, head and sequence axes (the head dim's is 1).
    pub fn strides(&self) -> [usize; 3] {
        self.strides
    }

    /// Elements from the start of the buffer to the view's first element.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The view's axis order: the layout it was made in, or for a view with other strides
    /// [`Layout::Bshd`] when heads are interleaved within a sequence position (head stride below
    /// the sequence stride), else [`Layout::Bhsd`]. Outputs of a call are allocated in Q's order,
    /// and [`Tensor::to_host`] returns it.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The underlying storage buffer (shared by every view of it).
    pub fn buffer(&self) -> &Arc<wgpu::Buffer> {
        &self.buffer
    }

    /// Bytes of device memory the tensor's buffer holds.
    pub fn device_bytes(&self) -> u64 {
        self.buffer.size()
    }

    pub(crate) fn check_context(&self, ctx: &Context) -> Result<()> {
        if self.context_id == ctx.id {
            Ok(())
        } else {
            Err(Error::ForeignTensor)
        }
    }
}

pub(crate) fn check_buffer_size(ctx: &Context, what: &str, bytes: u64) -> Result<()> {
    let max = ctx.limits().max_buffer_size;
    if bytes > max {
        return Err(Error::LimitExceeded {
            what: format!("a {what} of {bytes} bytes"),
            limit: "max_buffer_size",
            needed: bytes,
            available: max,
        });
    }
    Ok(())
}

/// Host-side tensor: data in `layout` order with logical `shape`.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Elements in `layout` order.
    pub data: Vec<f32>,
    /// Logical shape `[B, H, S, D]`.
    pub shape: Shape,
    /// Memory order of `data`.
    pub layout: Layout,
}

impl HostTensor {
    /// Wrap `data`; fails when its length is not `shape.len()`.
    pub fn new(data: Vec<f32>, shape: Shape, layout: Layout) -> Result<Self> {
        if data.len() != shape.len() {
            return Err(Error::ShapeMismatch(format!(
                "{} elements given for shape {shape} ({} expected)",
                data.len(),
                shape.len()
            )));
        }
        Ok(Self { data, shape, layout })
    }

    /// Host elements of `f32`, `half::f16` or `half::bf16`, widened exactly to f32 (the CPU
    /// oracle then computes on exactly the values a 16-bit device tensor holds).
    pub fn from_elements<T: Element>(data: &[T], shape: Shape, layout: Layout) -> Result<Self> {
        Self::new(data.iter().map(|&x| x.to_f32()).collect(), shape, layout)
    }

    /// A copy with every element rounded to the nearest `dtype` value (ties to even): the values
    /// [`Tensor::upload_as`] stores.
    pub fn rounded(&self, dtype: DType) -> Self {
        Self { data: self.data.iter().map(|&x| dtype.round(x)).collect(), ..self.clone() }
    }

    /// Element (b, h, s, d).
    pub fn at(&self, b: usize, h: usize, s: usize, d: usize) -> f32 {
        self.data[self.layout.offset(self.shape, b, h, s, d)]
    }
}
