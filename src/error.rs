//! The one error type of the crate. Every variant says what went wrong and, where there is one,
//! what to do about it. Invalid problems are rejected here before any GPU work is recorded.

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `wgpu-attention`. New variants may come in minor releases.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No adapter matched; the message says how to get one.
    #[error(
        "no GPU adapter found ({detail}). On a headless Linux machine install a software Vulkan \
         driver: `apt-get install mesa-vulkan-drivers`; on other machines install your GPU's \
         Vulkan/Metal/DX12 driver. WGATTN_BACKEND / WGATTN_ADAPTER select among adapters"
    )]
    NoAdapter {
        /// What was searched for and what was found.
        detail: String,
    },
    /// The adapter exists but refused to create a device.
    #[error("the adapter refused to create a device: {0}")]
    RequestDevice(#[source] wgpu::RequestDeviceError),
    /// Shapes of Q, K, V (or the output) do not agree.
    #[error("shape mismatch: {0}")]
    ShapeMismatch(String),
    /// Head dimension outside what the kernels support.
    #[error("head dim {head_dim} is not supported: supported head dims are 1..={max}")]
    HeadDimUnsupported {
        /// The head dim asked for.
        head_dim: usize,
        /// The largest supported head dim.
        max: usize,
    },
    /// An option has an invalid value (scale not finite, softcap ≤ 0, slopes of the wrong length ...).
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The problem needs more than one of the adapter's limits allows, even after splitting.
    #[error("{what} needs {needed} but the adapter's limit `{limit}` is {available}")]
    LimitExceeded {
        /// What did not fit.
        what: String,
        /// The name of the wgpu limit.
        limit: &'static str,
        /// How much was needed.
        needed: u64,
        /// What the adapter offers.
        available: u64,
    },
    /// The adapter lacks a feature this call needs.
    #[error("the adapter lacks the feature {feature}: {hint}")]
    UnsupportedFeature {
        /// The missing feature.
        feature: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
    /// A tensor's element type is not one the call takes (Q, K and V of different dtypes, an LSE
    /// that is not f32, a kernel without 16-bit support).
    #[error("unsupported dtype: {0}")]
    UnsupportedDType(String),
    /// A paged KV cache has too few free pages for an append or a reservation (nothing was
    /// allocated). Free sequences, or make the pool larger: its size is the caller's choice.
    #[error("the paged KV cache's pool is full: {needed} pages needed, {free} free of {pages}")]
    PoolFull {
        /// Pages the request needs.
        needed: usize,
        /// Free pages.
        free: usize,
        /// Pages in the pool.
        pages: usize,
    },
    /// A layer's weights do not fit: a tensor missing from the file, of the wrong shape for the
    /// layer's sizes, or of a dtype the crate does not read.
    #[error("weights: tensor `{tensor}`: {problem}")]
    Weights {
        /// The tensor's name (with its prefix).
        tensor: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A tensor was created on another context.
    #[error("tensor belongs to another context")]
    ForeignTensor,
    /// wgpu reported a validation, out-of-memory or internal error (kept as the source).
    #[error("GPU error: {0}")]
    Gpu(#[source] wgpu::Error),
    /// Waiting for the GPU failed (a timeout or a lost device while polling).
    #[error("waiting for the GPU failed: {0}")]
    Poll(#[source] wgpu::PollError),
    /// The device was lost (driver reset, GPU removed).
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    /// Reading a buffer back failed.
    #[error("reading back from the GPU failed: {what}")]
    ReadBack {
        /// What failed.
        what: &'static str,
        /// wgpu's error, where it gave one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A shader failed to parse or validate (a bug in the crate: please report it).
    #[error("shader {name} is invalid: {message}")]
    Shader {
        /// The shader's file name.
        name: String,
        /// naga's message.
        message: String,
    },
}
