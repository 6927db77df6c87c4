//! Recording apart from submitting. A [`Recorder`] records many operations (attention calls of
//! any shapes and masks, the caller's own commands in between) into one command encoder and
//! submits them once; nothing blocks until the caller waits for the [`Submission`] or reads a
//! tensor back. [`crate::forward`] is one recorded call, submitted.
//!
//! Each call is validated once, when it is recorded; error scopes surround the submission. What
//! a call ran (its kernel family and tiles, its dispatches) comes back with it as a
//! [`CallInfo`]; its GPU time, when the context times calls, once the submission has finished.
//!
//! ```
//! use wgpu_attention::{Attention, Context, HostTensor, Layout, Recorder, Shape, Tensor};
//! # fn main() -> Result<(), wgpu_attention::Error> {
//! let ctx = Context::new()?;
//! let shape = Shape::new(1, 2, 50, 32);
//! let host = HostTensor::new((0..shape.len()).map(|i| (i % 7) as f32 / 7.0).collect(), shape, Layout::Bhsd)?;
//! let x = Tensor::upload(&ctx, &host)?;
//! let mut rec = Recorder::new(&ctx);
//! let plain = rec.forward(&x, &x, &x, &Attention::new())?;
//! let causal = rec.forward(&x, &x, &x, &Attention::new().causal(wgpu_attention::Causal::TopLeft))?;
//! let calls = rec.submit()?.wait()?; // one submission for both
//! assert_eq!(calls.len(), 2);
//! assert_eq!(plain.o.to_host(&ctx)?.data.len(), shape.len());
//! # let _ = causal; Ok(()) }
//! ```

use std::future::Future;
use std::time::Duration;

use crate::attention::{Attention, Layout, Path, Problem, Shape};
use crate::context::{map_read, Context};
use crate::error::Result;
use crate::kernels::flash::{self, Io, TileConfig};
use crate::kernels::{decode, gemm, merge};
use crate::tensor::Tensor;

/// What one recorded call ran.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CallInfo {
    /// The kernel: a fused-forward family's [`crate::Family::name`], `decode`, `merge_states`
    /// or `naive`.
    pub kernel: &'static str,
    /// The fused forward's specialisation (family, tiles, padded head dim); `None` for others.
    pub tiles: Option<TileConfig>,
    /// Parts the key range was split into (merged by log-sum-exp when > 1).
    pub n_splits: u32,
    /// Compute dispatches recorded.
    pub dispatches: usize,
    /// GPU time between the start and the end of the call's compute pass, when the context
    /// times calls ([`crate::ContextOptions::gpu_timing`]) and the submission has finished.
    pub gpu_time: Option<Duration>,
}

impl CallInfo {
    pub(crate) fn new(
        kernel: &'static str,
        tiles: Option<TileConfig>,
        n_splits: u32,
        dispatches: usize,
    ) -> Self {
        Self { kernel, tiles, n_splits, dispatches, gpu_time: None }
    }
}

/// O and LSE of one forward call, with what ran.
#[non_exhaustive]
#[derive(Debug)]
pub struct Output {
    /// `[B, Hq, Nq, D]` in Q's layout.
    pub o: Tensor,
    /// `[B, Hq, Nq]` (a tensor of shape `[B, Hq, Nq, 1]`), natural log; −∞ for rows that saw no key.
    pub lse: Tensor,
    /// The kernel, its tiles and (once known) its GPU time.
    pub info: CallInfo,
}

/// Allocate O (Q's shape, layout and dtype) and LSE (f32 `[B, Hq, Nq, 1]`) for a call with
/// query `q`.
pub(crate) fn outputs(ctx: &Context, q: &Tensor) -> Result<(Tensor, Tensor)> {
    let s = q.shape;
    Ok((
        Tensor::zeros_as(ctx, s, q.layout, q.dtype)?,
        Tensor::zeros(ctx, Shape::new(s.batch, s.heads, s.seq, 1), Layout::Bhsd)?,
    ))
}

/// Attention forward on device tensors: O (in Q's layout) and LSE, freshly allocated. One
/// recorded call, submitted without waiting (reading an output back waits for it); with GPU
/// timing on (native targets) it waits, so that the output carries its GPU time.
pub fn forward(ctx: &Context, q: &Tensor, k: &Tensor, v: &Tensor, attn: &Attention) -> Result<Output> {
    let (mut out, info) = submit_one(ctx, |rec| rec.forward(q, k, v, attn))?;
    out.info = info;
    Ok(out)
}

/// Attention forward into existing O and LSE tensors (O: Q's shape, any layout; LSE: shape
/// `[B, Hq, Nq, 1]`). Reusing outputs avoids an allocation per call. Submits like [`forward`].
pub fn forward_into(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    attn: &Attention,
    o: &Tensor,
    lse: &Tensor,
) -> Result<CallInfo> {
    Ok(submit_one(ctx, |rec| rec.forward_into(q, k, v, attn, o, lse))?.1)
}

/// Merge two attention states computed over disjoint key sets into the state over their union
/// (see [`Recorder::merge_states`]): fresh O (`a`'s shape and dtype, BHSD) and LSE. Submits
/// without waiting, like [`forward`].
///
/// ```
/// use wgpu_attention::{Attention, Context, HostTensor, Layout, Shape, Tensor};
/// # fn main() -> Result<(), wgpu_attention::Error> {
/// let ctx = Context::new()?;
/// let (q_shape, kv_shape) = (Shape::new(1, 2, 1, 32), Shape::new(1, 2, 100, 32));
/// let data = |n: usize| (0..n).map(|i| ((i * 37) % 11) as f32 / 11.0 - 0.5).collect::<Vec<_>>();
/// let q = Tensor::upload(&ctx, &HostTensor::new(data(q_shape.len()), q_shape, Layout::Bhsd)?)?;
/// let k = Tensor::upload(&ctx, &HostTensor::new(data(kv_shape.len()), kv_shape, Layout::Bhsd)?)?;
/// // keys 0..60 and 60..100 computed apart, then merged: the same as one pass over all keys
/// let (k1, k2) = (k.narrow(2, 0, 60)?, k.narrow(2, 60, 40)?);
/// let a = wgpu_attention::forward(&ctx, &q, &k1, &k1, &Attention::new().scale(0.2))?;
/// let b = wgpu_attention::forward(&ctx, &q, &k2, &k2, &Attention::new().scale(0.2))?;
/// let merged = wgpu_attention::merge_states(&ctx, (&a.o, &a.lse), (&b.o, &b.lse))?;
/// let whole = wgpu_attention::forward(&ctx, &q, &k, &k, &Attention::new().scale(0.2))?;
/// let (m, w) = (merged.o.to_host(&ctx)?.data, whole.o.to_host(&ctx)?.data);
/// assert!(m.iter().zip(&w).all(|(x, y)| (x - y).abs() < 1e-5));
/// # Ok(()) }
/// ```
pub fn merge_states(ctx: &Context, a: (&Tensor, &Tensor), b: (&Tensor, &Tensor)) -> Result<Output> {
    let (mut out, info) = submit_one(ctx, |rec| rec.merge_states(a, b))?;
    out.info = info;
    Ok(out)
}

/// A projection `Y = X·Wᵀ + bias` (PyTorch's `F.linear`) on device tensors, into a fresh Y (X's
/// layout and dtype); see [`Recorder::linear`]. Submits without waiting, like [`forward`].
///
/// ```
/// use wgpu_attention::{Context, HostTensor, Layout, Shape, Tensor};
/// # fn main() -> Result<(), wgpu_attention::Error> {
/// let ctx = Context::new()?;
/// // 3 rows of 5 input features, 2 output features
/// let x = Tensor::upload(&ctx, &HostTensor::new((0..15).map(|i| i as f32).collect(), Shape::new(1, 1, 3, 5), Layout::Bhsd)?)?;
/// let w = Tensor::upload(&ctx, &HostTensor::new(vec![1., 0., 0., 0., 0., 0., 0., 0., 0., 2.], Shape::new(1, 1, 2, 5), Layout::Bhsd)?)?;
/// let b = Tensor::upload(&ctx, &HostTensor::new(vec![0.5, -1.], Shape::new(1, 1, 1, 2), Layout::Bhsd)?)?;
/// let y = wgpu_attention::linear(&ctx, &x, &w, Some(&b))?.to_host(&ctx)?;
/// // y[r] = (x[r][0] + 0.5, 2·x[r][4] − 1)
/// assert_eq!(y.data, vec![0.5, 7., 5.5, 17., 10.5, 27.]);
/// # Ok(()) }
/// ```
pub fn linear(ctx: &Context, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    Ok(submit_one(ctx, |rec| rec.linear(x, w, bias))?.0)
}

/// One call recorded by `record` on a fresh recorder and submitted on its own, without waiting,
/// except with GPU timing on (native targets), where it waits so that the call's info carries
/// its GPU time. Returns what `record` returned and the call's info.
pub(crate) fn submit_one<T>(
    ctx: &Context,
    record: impl FnOnce(&mut Recorder<'_>) -> Result<T>,
) -> Result<(T, CallInfo)> {
    let mut rec = Recorder::new(ctx);
    let out = record(&mut rec)?;
    let submission = rec.submit()?;
    #[cfg(not(target_arch = "wasm32"))]
    if ctx.gpu_timing() {
        return Ok((out, submission.wait()?[0]));
    }
    Ok((out, submission.calls[0]))
}

/// Timestamps around one call's compute pass: written by the pass, resolved and copied to a
/// mappable buffer at the end of the call.
struct CallTimer {
    call: usize,
    query_set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
}

/// Records operations into one command encoder and submits them once. See the module docs.
pub struct Recorder<'c> {
    ctx: &'c Context,
    encoder: wgpu::CommandEncoder,
    calls: Vec<CallInfo>,
    timers: Vec<CallTimer>,
}

impl<'c> Recorder<'c> {
    /// An empty recording on `ctx`.
    pub fn new(ctx: &'c Context) -> Self {
        let encoder =
            ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("recorder") });
        Self { ctx, encoder, calls: Vec::new(), timers: Vec::new() }
    }

    /// The context it records on.
    pub fn context(&self) -> &'c Context {
        self.ctx
    }

    /// The encoder, for the caller's own commands between recorded calls (they run in order).
    pub fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        &mut self.encoder
    }

    /// Calls recorded so far.
    pub fn calls(&self) -> &[CallInfo] {
        &self.calls
    }

    /// Record the fused forward into fresh O and LSE tensors (usable by later recorded calls).
    pub fn forward(&mut self, q: &Tensor, k: &Tensor, v: &Tensor, attn: &Attention) -> Result<Output> {
        // validated before anything is allocated
        let p = attn.validate(q.shape, k.shape, v.shape)?;
        let (o, lse) = outputs(self.ctx, q)?;
        let info = self.fused(&p, Io { q, k, v, o: &o, lse: &lse }, attn)?;
        Ok(Output { o, lse, info })
    }

    /// Record the fused forward into existing O (Q's shape, any layout) and LSE (`[B, Hq, Nq, 1]`)
    /// tensors.
    pub fn forward_into(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        attn: &Attention,
        o: &Tensor,
        lse: &Tensor,
    ) -> Result<CallInfo> {
        let p = attn.validate(q.shape, k.shape, v.shape)?;
        self.fused(&p, Io { q, k, v, o, lse }, attn)
    }

    /// Record the merge of two attention states (O, LSE) computed over disjoint key sets of the
    /// same queries into the state over their union, FlashInfer's `merge_state`:
    /// `LSE = log(e^LSE₁ + e^LSE₂)`, `O = e^(LSE₁−LSE)·O₁ + e^(LSE₂−LSE)·O₂`. A row where one
    /// side saw no key (LSE −∞) takes the other's state; both −∞ give O = 0, LSE −∞. O₁ and O₂:
    /// one shape `[B, H, N, D]` and dtype, any layouts; LSEs contiguous f32 `[B, H, N, 1]`. The
    /// building block of cascade attention (a shared prefix computed once for many sequences)
    /// and of one sequence split across contexts or machines. Returns fresh O (BHSD, the inputs'
    /// dtype) and LSE.
    pub fn merge_states(&mut self, a: (&Tensor, &Tensor), b: (&Tensor, &Tensor)) -> Result<Output> {
        let s = a.0.shape;
        let o = Tensor::zeros_as(self.ctx, s, Layout::Bhsd, a.0.dtype)?;
        let lse = Tensor::zeros(self.ctx, Shape::new(s.batch, s.heads, s.seq, 1), Layout::Bhsd)?;
        let info = self.merge_states_into(a, b, (&o, &lse))?;
        Ok(Output { o, lse, info })
    }

    /// [`Recorder::merge_states`] into existing O (the inputs' shape and dtype, any layout) and
    /// LSE tensors.
    pub fn merge_states_into(
        &mut self,
        a: (&Tensor, &Tensor),
        b: (&Tensor, &Tensor),
        out: (&Tensor, &Tensor),
    ) -> Result<CallInfo> {
        merge::check_states(self.ctx, [a, b, out])?;
        self.record(|ctx, encoder, timing| {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("merge states"),
                timestamp_writes: timing,
            });
            let dispatches = merge::encode_states(ctx, &mut pass, [a, b, out])?;
            Ok(CallInfo::new("merge_states", None, 1, dispatches))
        })
    }

    /// Record a projection `Y = X·Wᵀ + bias`, PyTorch's `F.linear`, into a fresh Y: X `[B, H, S, K]`
    /// (any strides), W `[1, 1, N, K]` (`[out_features, in_features]`, rows any stride apart), the
    /// bias `[1, 1, 1, N]`, all of one dtype; Y `[B, H, S, N]` in X's layout and dtype.
    /// Accumulates in f32. See [`crate::linear`].
    pub fn linear(&mut self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        gemm::check_inputs(self.ctx, x, w, bias)?;
        let y = gemm::output(self.ctx, x, w, x.dtype)?;
        self.linear_into(x, w, bias, &y)?;
        Ok(y)
    }

    /// [`Recorder::linear`] into an existing Y (`[B, H, S, N]`, any strides, any dtype: a view of
    /// a bigger tensor, such as the query columns of a fused QKV buffer, takes it in place).
    pub fn linear_into(
        &mut self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        y: &Tensor,
    ) -> Result<CallInfo> {
        gemm::record_into(self, x, w, bias, y, None)
    }

    /// Record the validated problem `p`: the decode kernel where [`Attention::path`] asks for it
    /// or chooses it, else the fused forward in the family the tuner chooses.
    fn fused(&mut self, p: &Problem, io: Io<'_>, attn: &Attention) -> Result<CallInfo> {
        let decode = match attn.launch.path {
            Some(path) => path == Path::Decode,
            None => {
                decode::unsupported(p, attn).is_none()
                    && attn.launch.kernel.is_none()
                    && self.ctx.options().kernel.is_none()
            }
        };
        if decode {
            let kv = decode::KvPages::contiguous(io.k, io.v, attn);
            return self.record(|ctx, encoder, timing| {
                decode::encode(ctx, encoder, timing, p, io.q, &kv, attn, (io.o, io.lse))
            });
        }
        let family = crate::tune::family_for(self.ctx, p.head_dim, io.q.dtype, attn)?;
        self.record(|ctx, encoder, timing| flash::encode_valid(ctx, encoder, timing, p, family, io, attn))
    }

    /// Record one call made by `encode`, which records into the encoder in one compute pass that
    /// takes the timestamp writes it is given (when the context times calls).
    pub(crate) fn record(
        &mut self,
        encode: impl FnOnce(
            &Context,
            &mut wgpu::CommandEncoder,
            Option<wgpu::ComputePassTimestampWrites<'_>>,
        ) -> Result<CallInfo>,
    ) -> Result<CallInfo> {
        let ctx = self.ctx;
        let timer = ctx.gpu_timing().then(|| CallTimer {
            call: self.calls.len(),
            query_set: ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("call timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            }),
            resolve: ctx.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamp resolve"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            readback: ctx.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamp read-back"),
                size: 16,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        });
        let writes = timer.as_ref().map(|t| wgpu::ComputePassTimestampWrites {
            query_set: &t.query_set,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: Some(1),
        });
        let info = encode(ctx, &mut self.encoder, writes)?;
        if let Some(t) = timer {
            self.encoder.resolve_query_set(&t.query_set, 0..2, &t.resolve, 0);
            self.encoder.copy_buffer_to_buffer(&t.resolve, 0, &t.readback, 0, 16);
            self.timers.push(t);
        }
        self.calls.push(info);
        Ok(info)
    }

    /// Submit everything recorded, in order, as one submission. Returns without waiting.
    pub fn submit(self) -> Result<Submission<'c>> {
        let index = self.ctx.submit(self.encoder)?;
        Ok(Submission {
            ctx: self.ctx,
            index,
            calls: self.calls,
            timers: self.timers.into_iter().map(|t| (t.call, t.readback)).collect(),
        })
    }
}

/// Recorded work handed to the GPU.
pub struct Submission<'c> {
    ctx: &'c Context,
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))] // waited for on native targets only
    index: wgpu::SubmissionIndex,
    calls: Vec<CallInfo>,
    timers: Vec<(usize, wgpu::Buffer)>,
}

impl Submission<'_> {
    /// What each call ran (GPU times are filled in by [`Submission::finished`]).
    pub fn calls(&self) -> &[CallInfo] {
        &self.calls
    }

    /// Resolves once the GPU has finished the submission's timestamps (on native targets after a
    /// device poll: [`Submission::wait`] does both): each call's [`CallInfo`], with its GPU time
    /// where the context times calls.
    pub fn finished(self) -> impl Future<Output = Result<Vec<CallInfo>>> + 'static {
        let period_ns = self.ctx.queue.get_timestamp_period() as f64;
        let reads: Vec<_> = self.timers.into_iter().map(|(call, buffer)| (call, map_read(buffer))).collect();
        let mut calls = self.calls;
        async move {
            for (call, read) in reads {
                let t: Vec<u64> = bytemuck::pod_collect_to_vec(&read.await?);
                let ns = t[1].saturating_sub(t[0]) as f64 * period_ns;
                calls[call].gpu_time = Some(Duration::from_nanos(ns as u64));
            }
            Ok(calls)
        }
    }

    /// Wait until the GPU has finished the submission; each call's [`CallInfo`] with its GPU
    /// time where the context times calls. Native targets only (on the web await
    /// [`Submission::finished`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(self) -> Result<Vec<CallInfo>> {
        let (ctx, index) = (self.ctx, self.index.clone());
        let finished = self.finished();
        ctx.wait_for(Some(index))?;
        pollster::block_on(finished)
    }
}
