//! The problem description: shapes, layouts and options of one attention call, and their
//! validation. Every bad input becomes an [`Error`] here, before any GPU work is recorded, so the
//! GPU path and the CPU oracle see exactly the same (valid) problem.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::mask::{BlockMask, Dims, Mask, TopK, BLOCK_SIZES};
pub use crate::tensor::HostTensor;

/// The largest head dimension the kernels support.
pub const MAX_HEAD_DIM: usize = 256;

/// Logical shape of a Q, K, V or O tensor: `[batch, heads, seq, head_dim]`, whatever the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Batch size B.
    pub batch: usize,
    /// Number of heads (Hq for Q and O, Hkv for K and V).
    pub heads: usize,
    /// Sequence length (Nq or Nk).
    pub seq: usize,
    /// Head dimension D.
    pub head_dim: usize,
}

impl Shape {
    /// `Shape { batch, heads, seq, head_dim }`.
    pub const fn new(batch: usize, heads: usize, seq: usize, head_dim: usize) -> Self {
        Self { batch, heads, seq, head_dim }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.batch * self.heads * self.seq * self.head_dim
    }

    /// True when any dimension is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[B={}, H={}, S={}, D={}]", self.batch, self.heads, self.seq, self.head_dim)
    }
}

/// Memory order of a tensor's elements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `[batch, heads, seq, head_dim]`, PyTorch's `scaled_dot_product_attention` order.
    #[default]
    Bhsd,
    /// `[batch, seq, heads, head_dim]`, FlashAttention's order.
    Bshd,
}

impl Layout {
    /// Element strides of (batch, head, seq) for `shape`; the head-dim stride is always 1.
    pub fn strides(self, shape: Shape) -> [usize; 3] {
        let Shape { heads: h, seq: s, head_dim: d, .. } = shape;
        match self {
            Layout::Bhsd => [h * s * d, s * d, d],
            Layout::Bshd => [s * h * d, d, h * d],
        }
    }

    /// The axis order of strides (batch, head, seq): BSHD when the head stride is below the
    /// sequence stride, else BHSD.
    pub fn of(strides: [usize; 3]) -> Self {
        if strides[1] < strides[2] {
            Layout::Bshd
        } else {
            Layout::Bhsd
        }
    }

    /// Offset of element (b, h, s, d).
    pub fn offset(self, shape: Shape, b: usize, h: usize, s: usize, d: usize) -> usize {
        let [sb, sh, ss] = self.strides(shape);
        b * sb + h * sh + s * ss + d
    }
}

impl std::str::FromStr for Layout {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "bhsd" => Ok(Layout::Bhsd),
            "bshd" => Ok(Layout::Bshd),
            other => Err(Error::InvalidOption(format!("layout `{other}`: expected bhsd or bshd"))),
        }
    }
}

/// How the causal mask is aligned when the query and key lengths differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Causal {
    /// Query `i` sees keys `j <= i + kv_len - q_len` (FlashAttention >= 2.1; right for KV caches).
    BottomRight,
    /// Query `i` sees keys `j <= i` (PyTorch's `is_causal=True`).
    TopLeft,
}

/// The two kernels a call can run: the fused forward tiled for long queries, or the decode
/// kernel for short queries against long caches ([`Launch::path`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Path {
    /// The fused forward (FlashAttention-2 style tiles of queries and keys).
    Prefill,
    /// The decode kernel (FlashDecoding: many key ranges reduced in parallel and merged); takes
    /// up to 16 queries and no mask but a window.
    Decode,
}

/// One attention problem's options: `softmax(scale·Q·Kᵀ + mask/bias)·V`.
///
/// Scores are formed in FlashAttention's order: `s = scale·q·k`; if a soft cap is set,
/// `s = cap·tanh(s/cap)`; with ALiBi, `s -= slope[h]·|i + kv_len − q_len − j|`; masked positions
/// are −∞. A query row that sees no key gets output 0 and LSE −∞.
///
/// ```
/// use wgpu_attention::{Attention, Causal};
/// let attn = Attention::new().causal(Causal::BottomRight).softcap(30.0);
/// assert_eq!(attn.causal, Some(Causal::BottomRight));
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attention {
    /// Softmax scale; `None` means `1/sqrt(head_dim)`.
    pub scale: Option<f32>,
    /// Causal mask and its alignment; `None` for no causal mask.
    pub causal: Option<Causal>,
    /// Per-batch key lengths (key padding): keys at or beyond `kv_lens[b]` are invisible, and the
    /// causal and ALiBi alignment use `kv_lens[b]` as the key length. `None`: all keys visible.
    pub kv_lens: Option<Vec<u32>>,
    /// ALiBi slopes, one per query head.
    pub alibi_slopes: Option<Vec<f32>>,
    /// Logit soft-capping value (> 0).
    pub softcap: Option<f32>,
    /// A further element mask (window, documents, prefix, dense, patterns, ...), AND-ed with the
    /// causal mask and key padding. The GPU lowers it to a [`BlockMask`] of
    /// [`Attention::block_size`] per call; build one with [`BlockMask::build`] and set
    /// [`Attention::block_mask`] to pay that once.
    pub mask: Option<Mask>,
    /// A prebuilt block mask (FlexAttention's `BlockMask`): the kernel visits only its listed key
    /// blocks, testing elements only in partial ones. Visibility is AND-ed with causal, key
    /// padding and `mask`.
    pub block_mask: Option<Arc<BlockMask>>,
    /// Dynamic top-k block sparsity, chosen from Q and K on every call (cannot be combined with
    /// `mask` or `block_mask`).
    pub topk: Option<TopK>,
    /// How to run it: hints that change the speed, never the result (the CPU oracle ignores
    /// them).
    pub launch: Launch,
}

/// Launch hints of a call: how the GPU runs it, never what it computes.
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Launch {
    /// Split the key range into this many parts, computed by separate workgroups and merged by
    /// log-sum-exp (FlashAttention's `num_splits`). `None` chooses automatically. More splits
    /// are used where one would exceed [`crate::kernels::flash::MAX_KEYS_PER_SPLIT`] keys. For the
    /// decode kernel ([`Path::Decode`]) it is the number of key ranges each reduced by one
    /// invocation (more where one range would exceed
    /// [`crate::MAX_KEYS_PER_PART`] keys or fewer where the partial states would
    /// not fit one storage binding).
    pub num_splits: Option<u32>,
    /// Block edge used when lowering [`Attention::mask`] to a block table (32, 64 or 128;
    /// default 64).
    pub block_size: Option<usize>,
    /// Run this fused-forward family (else the context's [`kernel`](crate::ContextOptions::kernel),
    /// else the tuned or default choice).
    pub kernel: Option<crate::kernels::flash::Family>,
    /// Run the decode kernel or the fused forward (prefill); `None` chooses: the decode kernel
    /// for calls it takes (at most 16 queries, no mask but a window) when no fused-forward
    /// family is asked for.
    pub path: Option<Path>,
    /// Run this decode kernel ([`crate::DecodeKernel`]) on [`Path::Decode`] calls; `None`
    /// chooses: the split-D kernel on GPUs with subgroups, the key-range kernel elsewhere.
    pub decode_kernel: Option<crate::DecodeKernel>,
    /// Run the kernel a warm context runs even if it has to be compiled now (warm-ups), never
    /// the faster-compiling one of [`crate::FirstCall::Quick`].
    pub(crate) full_kernel: bool,
}

impl Attention {
    /// Plain attention with the default scale and no mask.
    pub fn new() -> Self {
        Self::default()
    }
    /// Set the softmax scale.
    pub fn scale(mut self, scale: f32) -> Self {
        self.scale = Some(scale);
        self
    }
    /// Set a causal mask with the given alignment.
    pub fn causal(mut self, causal: Causal) -> Self {
        self.causal = Some(causal);
        self
    }
    /// Set per-batch key lengths.
    pub fn kv_lens(mut self, kv_lens: Vec<u32>) -> Self {
        self.kv_lens = Some(kv_lens);
        self
    }
    /// Set ALiBi slopes (one per query head).
    pub fn alibi_slopes(mut self, slopes: Vec<f32>) -> Self {
        self.alibi_slopes = Some(slopes);
        self
    }
    /// Set logit soft-capping.
    pub fn softcap(mut self, cap: f32) -> Self {
        self.softcap = Some(cap);
        self
    }

    /// Launch hint: split the key range into `n` parts on the GPU (see [`Launch::num_splits`]).
    pub fn num_splits(mut self, n: u32) -> Self {
        self.launch.num_splits = Some(n);
        self
    }

    /// Launch hint: run the decode kernel or the fused forward (see [`Launch::path`]).
    pub fn path(mut self, path: Path) -> Self {
        self.launch.path = Some(path);
        self
    }

    /// Launch hint: run decode kernel `kernel` on decode calls (see [`Launch::decode_kernel`]).
    pub fn decode_kernel(mut self, kernel: crate::DecodeKernel) -> Self {
        self.launch.decode_kernel = Some(kernel);
        self
    }

    /// Launch hint: run kernel family `family` (see [`Launch::kernel`]).
    pub fn kernel(mut self, family: crate::kernels::flash::Family) -> Self {
        self.launch.kernel = Some(family);
        self
    }

    /// AND an element mask into this call.
    pub fn mask(mut self, mask: Mask) -> Self {
        self.mask = Some(match self.mask.take() {
            Some(m) => m.and(mask),
            None => mask,
        });
        self
    }
    /// Launch hint: the block edge used to lower `mask` (see [`Launch::block_size`]).
    pub fn block_size(mut self, size: usize) -> Self {
        self.launch.block_size = Some(size);
        self
    }
    /// Attend to the `k` best key blocks of `block_size` per query block, chosen from the data.
    pub fn topk(mut self, k: usize, block_size: usize) -> Self {
        self.topk = Some(TopK { k, block_size, sink: false });
        self
    }
    /// Use a prebuilt block mask.
    pub fn block_mask(mut self, mask: Arc<BlockMask>) -> Self {
        self.block_mask = Some(mask);
        self
    }

    /// Check Q, K, V shapes against each other and the options; returns the problem's sizes.
    pub fn validate(&self, q: Shape, k: Shape, v: Shape) -> Result<Problem> {
        if k != v {
            return Err(Error::ShapeMismatch(format!("K is {k} but V is {v}: they must be equal")));
        }
        if q.batch != k.batch {
            return Err(Error::ShapeMismatch(format!(
                "Q has batch {} but K/V have batch {}",
                q.batch, k.batch
            )));
        }
        if q.head_dim != k.head_dim {
            return Err(Error::ShapeMismatch(format!(
                "Q has head dim {} but K/V have head dim {}",
                q.head_dim, k.head_dim
            )));
        }
        if q.head_dim == 0 || q.head_dim > MAX_HEAD_DIM {
            return Err(Error::HeadDimUnsupported { head_dim: q.head_dim, max: MAX_HEAD_DIM });
        }
        if k.heads == 0 || !q.heads.is_multiple_of(k.heads) {
            return Err(Error::ShapeMismatch(format!(
                "Q has {} heads and K/V have {}: the K/V head count must divide the Q head count",
                q.heads, k.heads
            )));
        }
        if q.batch == 0 || q.heads == 0 || q.seq == 0 {
            return Err(Error::ShapeMismatch(format!("Q {q} has an empty dimension")));
        }
        if k.seq == 0 {
            return Err(Error::ShapeMismatch(format!("K/V {k} has no keys")));
        }
        if self.launch.num_splits == Some(0) {
            return Err(Error::InvalidOption("num_splits must be at least 1".into()));
        }
        if let Some(scale) = self.scale {
            if !scale.is_finite() {
                return Err(Error::InvalidOption(format!("scale {scale} is not finite")));
            }
        }
        if let Some(cap) = self.softcap {
            if !(cap.is_finite() && cap > 0.0) {
                return Err(Error::InvalidOption(format!("softcap {cap} must be finite and > 0")));
            }
        }
        if let Some(lens) = &self.kv_lens {
            if lens.len() != q.batch {
                return Err(Error::InvalidOption(format!(
                    "kv_lens has {} entries but the batch is {}",
                    lens.len(),
                    q.batch
                )));
            }
            if let Some((b, &l)) = lens.iter().enumerate().find(|(_, &l)| l as usize > k.seq) {
                return Err(Error::InvalidOption(format!(
                    "kv_lens[{b}] = {l} exceeds the key length {}",
                    k.seq
                )));
            }
        }
        if let Some(slopes) = &self.alibi_slopes {
            if slopes.len() != q.heads {
                return Err(Error::InvalidOption(format!(
                    "{} ALiBi slopes given for {} query heads",
                    slopes.len(),
                    q.heads
                )));
            }
            if let Some(s) = slopes.iter().find(|s| !s.is_finite()) {
                return Err(Error::InvalidOption(format!("ALiBi slope {s} is not finite")));
            }
        }
        let dims = Dims { batch: q.batch, heads: q.heads, q_len: q.seq, kv_len: k.seq };
        if let Some(m) = &self.mask {
            m.validate(dims)?;
        }
        if let Some(size) = self.launch.block_size {
            if !BLOCK_SIZES.contains(&size) {
                return Err(Error::InvalidOption(format!(
                    "block size {size} is not supported: use one of {BLOCK_SIZES:?}"
                )));
            }
        }
        if let Some(bm) = &self.block_mask {
            bm.check(dims)?;
        }
        if let Some(t) = &self.topk {
            t.validate()?;
            if self.mask.is_some() || self.block_mask.is_some() {
                return Err(Error::InvalidOption(
                    "top-k block selection cannot be combined with a mask or a block mask".into(),
                ));
            }
        }
        Ok(Problem {
            batch: q.batch,
            q_heads: q.heads,
            kv_heads: k.heads,
            q_len: q.seq,
            kv_len: k.seq,
            head_dim: q.head_dim,
        })
    }

    /// The scale actually used for head dim `d`.
    pub fn scale_for(&self, head_dim: usize) -> f32 {
        self.scale.unwrap_or(1.0 / (head_dim as f32).sqrt())
    }
}

/// Sizes of a validated problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Problem {
    /// B.
    pub batch: usize,
    /// Hq.
    pub q_heads: usize,
    /// Hkv (divides Hq).
    pub kv_heads: usize,
    /// Nq.
    pub q_len: usize,
    /// Nk.
    pub kv_len: usize,
    /// D.
    pub head_dim: usize,
}

impl Problem {
    /// The sizes a mask is evaluated against.
    pub fn dims(&self) -> Dims {
        Dims { batch: self.batch, heads: self.q_heads, q_len: self.q_len, kv_len: self.kv_len }
    }
    /// Query heads per K/V head (1 for MHA, Hq for MQA).
    pub fn group(&self) -> usize {
        self.q_heads / self.kv_heads
    }
    /// Shape of Q and O.
    pub fn q_shape(&self) -> Shape {
        Shape::new(self.batch, self.q_heads, self.q_len, self.head_dim)
    }
    /// Shape of K and V.
    pub fn kv_shape(&self) -> Shape {
        Shape::new(self.batch, self.kv_heads, self.kv_len, self.head_dim)
    }
    /// FLOPs of the dense forward: 4·B·Hq·Nq·Nk·D.
    pub fn dense_flops(&self) -> f64 {
        4.0 * (self.batch * self.q_heads * self.q_len * self.kv_len * self.head_dim) as f64
    }
}

/// O and LSE on the host: what [`crate::attention()`] and the CPU paths return.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct HostOutput {
    /// O in Q's shape and layout.
    pub o: HostTensor,
    /// LSE `[B, Hq, Nq]`, natural log; −∞ for a row that saw no key.
    pub lse: Vec<f32>,
    /// What ran on the GPU (`None` for the CPU paths).
    pub info: Option<crate::record::CallInfo>,
}

impl HostOutput {
    /// O and LSE computed on the CPU.
    pub(crate) fn cpu(o: HostTensor, lse: Vec<f32>) -> Self {
        Self { o, lse, info: None }
    }
}
