//! Device-resident tensors: a storage buffer plus logical shape and layout. Calls take and return
//! `Tensor`s, so a caller can chain attention calls without host round trips; `upload` and
//! `to_host` are the only copies.

use crate::attention::{HostTensor, Layout, Shape};
use crate::context::Context;
use crate::error::{Error, Result};

/// An f32 tensor `[B, H, S, D]` in a storage buffer.
#[derive(Debug)]
pub struct Tensor {
    pub(crate) buffer: wgpu::Buffer,
    pub(crate) shape: Shape,
    pub(crate) layout: Layout,
    pub(crate) context_id: u64,
}

impl Tensor {
    /// Copy a host tensor to the device.
    pub fn upload(ctx: &Context, host: &HostTensor) -> Result<Self> {
        let bytes = (host.data.len() * 4) as u64;
        check_buffer_size(ctx, "tensor", bytes)?;
        let data: &[u8] = if host.data.is_empty() { &[0u8; 4] } else { bytemuck::cast_slice(&host.data) };
        let buffer = ctx.scoped(|| {
            ctx.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("tensor"),
                contents: data,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            })
        })?;
        Ok(Self { buffer, shape: host.shape, layout: host.layout, context_id: ctx.id })
    }

    /// An uninitialised (zeroed) tensor on the device.
    pub fn zeros(ctx: &Context, shape: Shape, layout: Layout) -> Result<Self> {
        let bytes = (shape.len().max(1) * 4) as u64;
        check_buffer_size(ctx, "tensor", bytes)?;
        let buffer = ctx.scoped(|| {
            ctx.create_buffer(&wgpu::BufferDescriptor {
                label: Some("tensor"),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        Ok(Self { buffer, shape, layout, context_id: ctx.id })
    }

    /// Overwrite the whole tensor with `value` (tests poison outputs with NaN this way).
    pub fn fill(&self, ctx: &Context, value: f32) -> Result<()> {
        self.check_context(ctx)?;
        let data = vec![value; self.shape.len().max(1)];
        ctx.scoped(|| ctx.queue.write_buffer(&self.buffer, 0, bytemuck::cast_slice(&data)))?;
        Ok(())
    }

    /// Read the tensor back to the host.
    pub fn to_host(&self, ctx: &Context) -> Result<HostTensor> {
        self.check_context(ctx)?;
        let bytes = ctx.read_bytes(&self.buffer, 0, (self.shape.len().max(1) * 4) as u64)?;
        let mut data: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
        data.truncate(self.shape.len());
        HostTensor::new(data, self.shape, self.layout)
    }

    /// Logical shape `[B, H, S, D]`.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Memory order.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The underlying storage buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Bytes of device memory the tensor holds.
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
