//! # wgpu-attention
//!
//! Fused attention kernels in WGSL, run through `wgpu` on any Vulkan, Metal, DX12 or GL adapter,
//! with an f64 CPU oracle ([`cpu::reference`]) that every kernel is checked against.
//!
//! `O = softmax(scale·Q·Kᵀ + mask/bias)·V` is computed FlashAttention-style: one kernel streams
//! K/V tiles with an online softmax and never materialises the Nq×Nk matrix.
//!
//! ```
//! use wgpu_attention::{Attention, Causal, Context, HostTensor, Layout, Shape};
//!
//! # fn main() -> Result<(), wgpu_attention::Error> {
//! let ctx = Context::new()?; // best adapter; WGATTN_BACKEND / WGATTN_ADAPTER override
//! let (b, h, n, d) = (1, 4, 100, 64);
//! let data = |seed: usize| (0..b * h * n * d).map(|i| ((i * 7 + seed) % 13) as f32 / 13.0).collect();
//! let q = HostTensor::new(data(1), Shape::new(b, h, n, d), Layout::Bhsd)?;
//! let k = HostTensor::new(data(2), Shape::new(b, h, n, d), Layout::Bhsd)?;
//! let v = HostTensor::new(data(3), Shape::new(b, h, n, d), Layout::Bhsd)?;
//! let out = wgpu_attention::attention(&ctx, &q, &k, &v, &Attention::new().causal(Causal::BottomRight))?;
//! assert_eq!(out.o.data.len(), b * h * n * d);
//! # Ok(()) }
//! ```

//!
//! The stable surface is what this page lists at the top level and the modules `attention`,
//! `context`, `cpu`, `dtype`, `error`, `layer`, `mask`, `paged`, `record`, `tensor` and `warm_up`. The `unstable` feature (on
//! with the default `cli` feature) also makes public, outside semver, the kernel modules
//! (`kernels`: launches, tiles, plans), the WGSL template step (`shader`), the tuner (`tune`) and
//! the test helpers (`testing`) that the CLI and the test suite are built on.
#![cfg_attr(not(feature = "unstable"), allow(dead_code, unused_imports))]

pub mod attention;
mod background;
pub mod context;
pub mod cpu;
pub mod dtype;
pub mod error;
pub mod layer;
pub mod mask;
pub mod paged;
#[cfg(all(feature = "parse-cache", not(target_arch = "wasm32")))]
mod parse_cache;
pub mod record;
pub mod tensor;
pub mod warm_up;

/// Internals, public with the `unstable` feature (outside semver).
macro_rules! unstable_mod {
    ($($(#[$m:meta])* $name:ident;)*) => {$(
        $(#[$m])*
        #[cfg(feature = "unstable")]
        pub mod $name;
        $(#[$m])*
        #[cfg(not(feature = "unstable"))]
        pub(crate) mod $name;
    )*};
}
unstable_mod! {
    kernels;
    shader;
    testing;
    tune;
}

/// The README's examples run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub use attention::{Attention, Causal, HostOutput, HostTensor, Layout, Path, Problem, Shape, MAX_HEAD_DIM};
pub use background::BackgroundCompiles;
pub use context::{prefer_wide_cpu_vectors, AdapterSummary, Context, ContextOptions, FirstCall, Tuning};
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use kernels::decode::{DecodeKernel, MAX_DECODE_QUERIES, MAX_KEYS_PER_PART};
pub use kernels::flash::{Family, TileConfig, MAX_KEYS_PER_SPLIT};
pub use mask::{BlockMask, Mask};
pub use record::{forward, forward_into, linear, merge_states, CallInfo, Output, Recorder, Submission};
pub use tensor::Tensor;
pub use tune::MaskClass;
pub use warm_up::{WarmUp, WarmUpReport};

/// One-call convenience: upload Q, K, V, run the fused forward on the GPU, read O and LSE back
/// (native targets: it waits for the GPU).
#[cfg(not(target_arch = "wasm32"))]
pub fn attention(
    ctx: &Context,
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    attn: &Attention,
) -> Result<HostOutput> {
    attention_as(ctx, q, k, v, attn, DType::F32)
}

/// [`attention()`] with Q, K, V and O stored on the device as `dtype` (values rounded to nearest
/// on upload; scores, softmax and accumulation in f32; O widened exactly on the way back).
///
/// ```
/// use wgpu_attention::{Attention, Context, DType, HostTensor, Layout, Shape};
/// # fn main() -> Result<(), wgpu_attention::Error> {
/// let ctx = Context::new()?;
/// let shape = Shape::new(1, 2, 50, 64);
/// let x = HostTensor::new((0..shape.len()).map(|i| (i % 7) as f32 / 7.0).collect(), shape, Layout::Bhsd)?;
/// let out = wgpu_attention::attention_as(&ctx, &x, &x, &x, &Attention::new(), DType::BF16)?;
/// assert_eq!(out.o.data.len(), shape.len());
/// # Ok(()) }
/// ```
#[cfg(not(target_arch = "wasm32"))]
pub fn attention_as(
    ctx: &Context,
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    attn: &Attention,
    dtype: DType,
) -> Result<HostOutput> {
    attn.validate(q.shape, k.shape, v.shape)?;
    let up = |t: &HostTensor| Tensor::upload_as(ctx, t, dtype);
    let (qd, kd, vd) = (up(q)?, up(k)?, up(v)?);
    let out = forward(ctx, &qd, &kd, &vd, attn)?;
    Ok(HostOutput { o: out.o.to_host(ctx)?, lse: out.lse.to_host(ctx)?.data, info: Some(out.info) })
}
