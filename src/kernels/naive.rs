//! The naive GPU baseline (`shaders/naive.wgsl`): the textbook three passes — S = scale·Q·Kᵀ
//! written to memory, a row softmax in place, O = P·V — as separate kernels. It exists to show what
//! fusion buys; use [`crate::forward`] for real work.
//!
//! Options: scale, causal (both alignments, per-batch key length), key padding (`kv_lens`), ALiBi,
//! soft-capping, GQA/MQA, both layouts, head dims 1..=256, Nq ≠ Nk. Masks (`mask`, `block_mask`,
//! `topk`) are refused, and `num_splits` is ignored.
//!
//! Device memory per call: S `[B, Hq, Nq, Nk]` f32 (`4·B·Hq·Nq·Nk` bytes, one buffer, bound whole),
//! O, LSE, an aux buffer of `4·(B + Hq)` bytes and a uniform per dispatch. Q, K, V and O are bound
//! whole too (no chunking): where S or a tensor exceeds `max_buffer_size` or
//! `max_storage_buffer_binding_size` the call fails with [`Error::LimitExceeded`] ("does not fit").
//!
//! Loop bounds per invocation (lavapipe silently stops an invocation after 65,535 loop
//! iterations): scores ≤ ceil(ceil(D/4)/8) ≤ 8; softmax ≤ 3·ceil(Nk/64), so Nk is capped at
//! [`MAX_KEYS`]; pv ≤ [`PV_KEYS`]/32 = 128, longer rows being split over accumulating dispatches.
//! The inner loops over a tile are unrolled by the template step ([`crate::shader`]), specialised
//! on the head dim.

use bytemuck::{Pod, Zeroable};

use super::{aux_words, causal_code, check_tensors, dispatch_all, entry_pipeline, strides4, whole_binding};
use crate::attention::{Attention, Problem};
use crate::context::Context;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::record::{outputs, submit_one, CallInfo, Output};
use crate::shader::Params;
use crate::tensor::Tensor;

const SOURCE: &str = include_str!("../../shaders/naive.wgsl");

/// Longest key range the naive path accepts: the softmax pass loops 3·ceil(Nk/64) times per
/// invocation (49,152 at this bound, under lavapipe's 65,535).
pub const MAX_KEYS: usize = 1 << 20;

/// Keys one `pv` dispatch covers (4096/32 = 128 loop iterations per invocation); longer rows take
/// several dispatches that accumulate into O.
pub const PV_KEYS: usize = 4096;

/// Invocations of every workgroup (`WG` in the shader).
const WORKGROUP: u32 = 64;
/// Queries of a scores tile (`SQ`); its keys are one per invocation.
const SCORE_ROWS: usize = 16;
/// Keys per pv chunk (`KC`).
const PV_CHUNK: u32 = 32;
/// Query rows per pv invocation (`RPI`).
const PV_ROWS_PER_INVOCATION: u32 = 4;
/// Workgroup memory of the scores pass (16×8 and 64×8 vec4 tiles) and of the pv pass
/// (PR×32 f32 and 32×OC vec4 tiles, PR·OC = 256): 10 KiB each.
const WORKGROUP_BYTES: u32 = 10 << 10;

/// Tiles and `@param`s of the specialisation for head dim `d`.
#[derive(Clone, Copy, Debug)]
struct Tiles {
    /// Head-dim vec4s per scores chunk (`DC`).
    dc: u32,
    /// vec4 columns of O per pv workgroup (`OC`): 4, 8 or 16.
    oc: u32,
    /// Query rows per pv workgroup (`PR`).
    pr: u32,
}

impl Tiles {
    fn new(head_dim: usize) -> Self {
        let dv = (head_dim as u32).div_ceil(4);
        let oc = dv.next_power_of_two().clamp(4, 16);
        Self { dc: dv.min(8), oc, pr: WORKGROUP * PV_ROWS_PER_INVOCATION / oc }
    }

    /// The @params of Q, K, V of `qkv` and O of `o`.
    fn params_for(&self, qkv: DType, o: DType) -> Params {
        let mut p = self.params();
        p.insert("QKV_TYPE", qkv.shader_code());
        p.insert("O_TYPE", o.shader_code());
        p
    }

    fn params(&self) -> Params {
        Params::from([
            ("DC", self.dc),
            ("QLOADS", (SCORE_ROWS as u32 * self.dc).div_ceil(WORKGROUP)),
            ("OC", self.oc),
            ("PR", self.pr),
            ("PLOADS", self.pr * PV_CHUNK / WORKGROUP),
            ("VLOADS", PV_CHUNK * self.oc / WORKGROUP),
        ])
    }
}

/// The WGSL specialised for head dim `head_dim` (validated by naga).
pub fn specialised_source(head_dim: usize) -> Result<String> {
    crate::shader::specialise("naive.wgsl", SOURCE, &Tiles::new(head_dim).params_for(DType::F32, DType::F32))
}

/// Mirrors `Params` in naive.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct NaiveParams {
    pub(crate) rows: u32,
    pub(crate) q_len: u32,
    pub(crate) kv_len: u32,
    pub(crate) head_dim: u32,
    pub(crate) q_heads: u32,
    pub(crate) group: u32,
    pub(crate) causal: u32,
    pub(crate) use_alibi: u32,
    pub(crate) alibi_offset: u32,
    pub(crate) use_softcap: u32,
    pub(crate) scale: f32,
    pub(crate) softcap: f32,
    pub(crate) grid_x: u32,
    pub(crate) wg_offset: u32,
    pub(crate) total: u32,
    pub(crate) key0: u32,
    pub(crate) key_count: u32,
    pub(crate) accumulate: u32,
    pub(crate) q_tiles: u32,
    pub(crate) k_tiles: u32,
    pub(crate) d_tiles: u32,
    pub(crate) _pad: [u32; 3],
    pub(crate) q_stride: [u32; 4],
    pub(crate) k_stride: [u32; 4],
    pub(crate) v_stride: [u32; 4],
    pub(crate) o_stride: [u32; 4],
}

/// Bytes of the score matrix S of problem `p`.
pub fn score_bytes(p: &Problem) -> u64 {
    DType::F32.bytes((p.batch * p.q_heads * p.q_len) as u64 * p.kv_len as u64)
}

/// Fails with [`Error::LimitExceeded`] when the naive path cannot run `p` on `ctx`: S over the
/// buffer or binding limits, Nk over [`MAX_KEYS`], or workgroups smaller than its 64 invocations or 10 KiB.
pub fn check_fits(ctx: &Context, p: &Problem) -> Result<()> {
    let limits = ctx.limits();
    let needed = score_bytes(p);
    let what = || "the naive baseline's N×N score matrix (does not fit)".to_string();
    if needed > limits.max_buffer_size {
        return Err(Error::LimitExceeded {
            what: what(),
            limit: "max_buffer_size",
            needed,
            available: limits.max_buffer_size,
        });
    }
    if needed > limits.max_storage_buffer_binding_size {
        return Err(Error::LimitExceeded {
            what: what(),
            limit: "max_storage_buffer_binding_size",
            needed,
            available: limits.max_storage_buffer_binding_size,
        });
    }
    // the shader indexes S with u32 element indices
    if needed / 4 > u32::MAX as u64 {
        return Err(Error::LimitExceeded {
            what: what(),
            limit: "u32 element indices of the naive shader",
            needed: needed / 4,
            available: u32::MAX as u64,
        });
    }
    if p.kv_len > MAX_KEYS {
        return Err(Error::LimitExceeded {
            what: "the naive baseline's key length (its softmax loops 3·ceil(Nk/64) times per \
                   invocation; lavapipe stops an invocation after 65,535 loop iterations)"
                .into(),
            limit: "wgpu_attention::kernels::naive::MAX_KEYS",
            needed: p.kv_len as u64,
            available: MAX_KEYS as u64,
        });
    }
    if limits.max_compute_workgroup_storage_size < WORKGROUP_BYTES {
        return Err(Error::LimitExceeded {
            what: "the naive baseline's workgroup tiles".into(),
            limit: "max_compute_workgroup_storage_size",
            needed: WORKGROUP_BYTES as u64,
            available: limits.max_compute_workgroup_storage_size as u64,
        });
    }
    for (value, limit) in [
        (limits.max_compute_invocations_per_workgroup, "max_compute_invocations_per_workgroup"),
        (limits.max_compute_workgroup_size_x, "max_compute_workgroup_size_x"),
    ] {
        if value < WORKGROUP {
            return Err(Error::LimitExceeded {
                what: "the naive baseline's workgroup of 64 invocations".into(),
                limit,
                needed: WORKGROUP as u64,
                available: value as u64,
            });
        }
    }
    Ok(())
}

/// The naive three-pass forward on device tensors: O (in Q's layout) and LSE `[B, Hq, Nq, 1]`
/// (natural log; −∞ for rows that saw no key), freshly allocated, as [`crate::forward`] returns.
pub fn forward(ctx: &Context, q: &Tensor, k: &Tensor, v: &Tensor, attn: &Attention) -> Result<Output> {
    let p = check(ctx, q, k, v, attn)?;
    let (o, lse) = outputs(ctx, q)?;
    let (_, info) = submit_one(ctx, |rec| {
        rec.record(|ctx, encoder, timing| encode_valid(ctx, encoder, timing, &p, (q, k, v), attn, (&o, &lse)))
    })?;
    Ok(Output { o, lse, info })
}

/// Validation shared by [`forward`] and [`forward_into`]: the problem, the refused options and
/// the limits.
fn check(ctx: &Context, q: &Tensor, k: &Tensor, v: &Tensor, attn: &Attention) -> Result<Problem> {
    let p = attn.validate(q.shape, k.shape, v.shape)?;
    if attn.mask.is_some() || attn.block_mask.is_some() || attn.topk.is_some() {
        return Err(Error::InvalidOption(
            "the naive baseline supports no masks beyond causal and key padding".into(),
        ));
    }
    check_fits(ctx, &p)?;
    let max_binding = ctx.limits().max_storage_buffer_binding_size;
    let lse_bytes = DType::F32.bytes((p.batch * p.q_heads * p.q_len) as u64);
    let o_bytes = DType::F32.bytes(p.q_shape().len() as u64);
    let bound = |t: &Tensor| t.dtype.bytes((t.extent().1 - t.offset) as u64);
    for (what, bytes) in
        [("Q", bound(q)), ("K", bound(k)), ("V", bound(v)), ("O", o_bytes), ("LSE", lse_bytes)]
    {
        if bytes > max_binding {
            return Err(Error::LimitExceeded {
                what: format!("{what}, bound whole by the naive baseline (does not fit)"),
                limit: "max_storage_buffer_binding_size",
                needed: bytes,
                available: max_binding,
            });
        }
    }
    Ok(p)
}

/// [`forward`] into existing O and LSE tensors (O: Q's shape, any layout; LSE: shape
/// `[B, Hq, Nq, 1]`, BHSD). Every element of both is written.
pub fn forward_into(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    attn: &Attention,
    o: &Tensor,
    lse: &Tensor,
) -> Result<CallInfo> {
    let p = check(ctx, q, k, v, attn)?;
    let (_, info) = submit_one(ctx, |rec| {
        rec.record(|ctx, encoder, timing| encode_valid(ctx, encoder, timing, &p, (q, k, v), attn, (o, lse)))
    })?;
    Ok(info)
}

/// Record the naive forward into `encoder` (one compute pass, writing `timing`'s timestamps if
/// given). Validates the call; blocks on nothing.
pub fn encode(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    timing: Option<wgpu::ComputePassTimestampWrites<'_>>,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    attn: &Attention,
    (o, lse): (&Tensor, &Tensor),
) -> Result<CallInfo> {
    let p = check(ctx, q, k, v, attn)?;
    encode_valid(ctx, encoder, timing, &p, (q, k, v), attn, (o, lse))
}

/// [`encode`] of a checked problem.
fn encode_valid(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    timing: Option<wgpu::ComputePassTimestampWrites<'_>>,
    p: &Problem,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    attn: &Attention,
    (o, lse): (&Tensor, &Tensor),
) -> Result<CallInfo> {
    let p = *p;
    check_tensors(ctx, &p, [q, k, v], o, lse, true, "the naive baseline")?;
    let (qb, kb, vb) = (whole_binding(ctx, q)?, whole_binding(ctx, k)?, whole_binding(ctx, v)?);
    let (ob, lb) = (whole_binding(ctx, o)?, whole_binding(ctx, lse)?);

    let (aux, alibi_offset) = aux_words(attn, &p);

    let rows = p.batch * p.q_heads * p.q_len;
    let tiles = Tiles::new(p.head_dim);
    let base = NaiveParams {
        rows: rows as u32,
        q_len: p.q_len as u32,
        kv_len: p.kv_len as u32,
        head_dim: p.head_dim as u32,
        q_heads: p.q_heads as u32,
        group: p.group() as u32,
        causal: causal_code(attn),
        use_alibi: attn.alibi_slopes.is_some() as u32,
        alibi_offset,
        use_softcap: attn.softcap.is_some() as u32,
        scale: attn.scale_for(p.head_dim),
        softcap: attn.softcap.unwrap_or(1.0),
        q_stride: strides4(q),
        k_stride: strides4(k),
        v_stride: strides4(v),
        o_stride: strides4(o),
        ..Default::default()
    };

    let spec = tiles.params_for(q.dtype, o.dtype);
    let scores = entry_pipeline(ctx, "naive.wgsl", SOURCE, "scores", &spec)?;
    // (the softmax depends on neither the head dim nor the dtypes: one specialisation serves all)
    let softmax =
        entry_pipeline(ctx, "naive.wgsl", SOURCE, "softmax", &Tiles::new(64).params_for(DType::F32, DType::F32))?;
    let pv = entry_pipeline(ctx, "naive.wgsl", SOURCE, "pv", &spec)?;

    let mut dispatches = 0;
    {
        let aux = ctx.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("naive aux"),
            contents: bytemuck::cast_slice(&aux),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let s = ctx.create_buffer(&wgpu::BufferDescriptor {
            label: Some("naive S"),
            size: score_bytes(&p),
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("naive forward"),
            timestamp_writes: timing,
        });
        // One pass's dispatches: `total` workgroups of `pipeline` over `buffers` (bindings 1..).
        let mut run = |pipeline: &wgpu::ComputePipeline,
                       mut params: NaiveParams,
                       total: u64,
                       resources: &[wgpu::BindingResource<'_>]| {
            params.total = total as u32;
            let uniform =
                |grid_x, wg_offset| bytemuck::bytes_of(&NaiveParams { grid_x, wg_offset, ..params }).to_vec();
            let resources: Vec<(u32, wgpu::BindingResource<'_>)> =
                resources.iter().enumerate().map(|(i, r)| (i as u32 + 1, r.clone())).collect();
            dispatches += dispatch_all(ctx, &mut pass, pipeline, "naive", total, uniform, &resources);
        };
        let bh = (p.batch * p.q_heads) as u64;
        // 1. S = scale·Q·Kᵀ (+ softcap, ALiBi, masks): tiles of 16 queries × 64 keys
        let (q_tiles, k_tiles) = (p.q_len.div_ceil(SCORE_ROWS), p.kv_len.div_ceil(WORKGROUP as usize));
        let params = NaiveParams { q_tiles: q_tiles as u32, k_tiles: k_tiles as u32, ..base };
        run(
            &scores,
            params,
            bh * (q_tiles * k_tiles) as u64,
            &[qb.clone(), kb.clone(), aux.as_entire_binding(), s.as_entire_binding()],
        );
        // 2. P = softmax(S) in place, LSE
        run(&softmax, base, rows as u64, &[s.as_entire_binding(), lb.clone()]);
        // 3. O = P·V: tiles of PR queries × OC vec4s, PV_KEYS keys per dispatch, accumulating
        // after the first
        let q_tiles = p.q_len.div_ceil(tiles.pr as usize);
        let d_tiles = p.head_dim.div_ceil(4).div_ceil(tiles.oc as usize);
        for (n, key0) in (0..p.kv_len).step_by(PV_KEYS).enumerate() {
            let params = NaiveParams {
                q_tiles: q_tiles as u32,
                d_tiles: d_tiles as u32,
                key0: key0 as u32,
                key_count: (p.kv_len - key0).min(PV_KEYS) as u32,
                accumulate: (n > 0) as u32,
                ..base
            };
            run(
                &pv,
                params,
                bh * (q_tiles * d_tiles) as u64,
                &[s.as_entire_binding(), vb.clone(), ob.clone()],
            );
        }
    }
    Ok(CallInfo::new("naive", None, 1, dispatches))
}
