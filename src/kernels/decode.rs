//! Launch of the decode kernels: attention of short queries (Nq ≤ [`MAX_DECODE_QUERIES`])
//! against a long K/V cache, FlashDecoding style.
//!
//! The keys of each sequence are cut into `n_parts` ranges of `L` keys; each range is reduced
//! for a chunk of the G·Nq query rows that share a K/V head (GQA packed: each K/V row is read
//! once per chunk) to a partial (O, LSE), and `merge.wgsl` combines the parts exactly by
//! log-sum-exp. Two kernels do the reducing ([`DecodeKernel`]): `shaders/decode.wgsl`, one
//! invocation per range and up to [`ROWS_PER_INVOCATION`] rows, the head dim whole in its
//! registers (CPU adapters, where invocations are SIMD lanes); and `shaders/decode_split_d.wgsl`,
//! one subgroup-sized workgroup per range and up to [`SPLIT_D_ROWS`] rows, the head dim split
//! across its lanes (GPUs: coalesced K/V rows, few registers per lane). Keys are read through a page table
//! (key j of sequence b is token j mod P of page `table[b][j / P]`), so a contiguous cache, one
//! page per sequence, and a paged pool run the same kernel.
//!
//! A plan fits the adapter's limits: the partial buffers of a group of batches fit one storage
//! binding (else fewer batches per group, then longer parts); K/V are bound as windows per
//! (batches, K/V heads), or per key range where one head's keys alone are too large; a page pool
//! comes in slabs that each fit a binding, visited one after the other with the parts' states
//! carried from one to the next.

use bytemuck::{Pod, Zeroable};

use super::flash::compiled_head_dim;
use super::flash::plan::{element_range, key_range};
use super::merge::{self, MergeBuffers, MergeParams};
use super::{causal_code, check_tensors, dispatch_all, pipeline, repack, strides4, Window};
use crate::attention::{Attention, Problem, Shape};
use crate::context::Context;
use crate::dtype::{word_bytes, DType};
use crate::error::{Error, Result};
use crate::mask::Mask;
use crate::record::CallInfo;
use crate::shader::Params;
use crate::tensor::{check_buffer_size, Tensor};

const SOURCE: &str = include_str!("../../shaders/decode.wgsl");
const SPLIT_D_SOURCE: &str = include_str!("../../shaders/decode_split_d.wgsl");

/// The longest query the decode kernel takes; longer ones run the fused forward.
pub const MAX_DECODE_QUERIES: usize = 16;
/// Query rows one invocation owns (fewer when a K/V head has fewer).
pub const ROWS_PER_INVOCATION: usize = 4;
/// The most query rows one workgroup of the split-D kernel owns (fewer when a K/V head has
/// fewer, or where their columns would not fit a GPU's registers: 8 vec4s of each per lane).
pub const SPLIT_D_ROWS: usize = 16;
/// The most lanes of a split-D workgroup (its head dim is cut into this many column groups).
const SPLIT_D_MAX_LANES: u32 = 32;
/// Keys of one block of the kernels' key loop: 4, the components of the vec4 of scores both
/// kernels hold per row (decode_common.wgsl `softmax_step`); page sizes are multiples of it.
pub const KEY_BLOCK: usize = 4;
/// Invocations per workgroup (along parts).
const WORKGROUP: u32 = 64;
/// The most keys one part may hold: its invocation's key loop runs `L / KEY_BLOCK` times, under
/// lavapipe's 65,535 iterations per invocation.
pub const MAX_KEYS_PER_PART: usize = 16_384 * KEY_BLOCK;
/// The most parts of one call (merge.wgsl loops over them twice per element).
const MAX_PARTS: usize = 16_384;
/// Keys per part below which the automatic choice does not go: partial states are written and
/// merged, so a part should read many times the rows it stores.
const MIN_KEYS_PER_PART: usize = 64;
const NONE: u32 = u32::MAX;

/// Which kernel reduces the key ranges of a decode call ([`crate::Attention::decode_kernel`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeKernel {
    /// `decode.wgsl`: one invocation per key range, the head dim of up to 4 query rows whole in
    /// its private registers. The choice on CPU adapters (lavapipe runs invocations as the lanes
    /// of SIMD registers, and a lane streaming its own range is what its per-lane loads do best),
    /// and wherever the adapter has no subgroups.
    KeyRanges,
    /// `decode_split_d.wgsl`: one workgroup of as many lanes as the adapter's smallest subgroup
    /// (at most 32) per key range, the head dim split across the lanes, the dot products summed
    /// by `subgroupAdd`; K/V rows are read by neighbouring lanes together (coalesced) and a lane
    /// holds only its columns of up to 8 rows. The choice on GPUs; needs `SUBGROUP`.
    SplitD,
}

/// Mirrors `Params` in decode.wgsl and decode_split_d.wgsl (decode_common.wgsl).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct DecodeParams {
    pub q_len: u32,
    pub head_dim: u32,
    pub group: u32,
    pub rows_per_group: u32,
    pub batch0: u32,
    pub batches: u32,
    pub kv_head0: u32,
    pub kv_heads: u32,
    pub row_chunks: u32,
    pub part_groups: u32,
    pub keys_per_part: u32,
    pub part0: u32,
    pub parts: u32,
    pub n_parts: u32,
    pub part_batch0: u32,
    pub part_kv_heads: u32,
    pub grid_x: u32,
    pub wg_offset: u32,
    pub page_size: u32,
    pub table_stride: u32,
    pub table_offset: u32,
    pub _pad: [u32; 2],
    pub resume: u32,
    pub key_lo: u32,
    pub key_hi: u32,
    pub causal: u32,
    pub window_left: u32,
    pub window_right: u32,
    pub alibi_offset: u32,
    pub scale: f32,
    pub softcap: f32,
    pub q_base: u32,
    pub k_base: u32,
    pub v_base: u32,
    pub list_offset: u32,
    pub q_stride: [u32; 4],
    pub k_stride: [u32; 4],
    pub v_stride: [u32; 4],
}

/// The specialisation of one decode pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DecodeVariant {
    /// 0: `decode.wgsl`; else `decode_split_d.wgsl` with this many lanes per workgroup.
    pub lanes: u32,
    /// Query rows per invocation (1, 2 or 4), or per workgroup of the split-D kernel (1 to 8).
    pub rows: u32,
    /// Compiled head dim (a multiple of 32).
    pub d_pad: u32,
    /// Q, K, V accessed as vec4s.
    pub vec4: bool,
    /// Soft-capped logits.
    pub softcap: bool,
    /// ALiBi biases.
    pub alibi: bool,
    /// Storage type of Q, K and V.
    pub qkv: DType,
}

impl DecodeVariant {
    /// The template parameters of decode.wgsl.
    pub fn params(&self) -> Params {
        if self.lanes > 0 {
            let dv = self.d_pad / 4;
            return Params::from([
                ("RB", self.rows),
                ("DV", dv),
                ("T", self.lanes),
                ("NV", dv.div_ceil(self.lanes)),
                ("KB", KEY_BLOCK as u32),
                ("VEC4", self.vec4 as u32),
                ("SOFTCAP", self.softcap as u32),
                ("ALIBI", self.alibi as u32),
                ("QKV_TYPE", self.qkv.shader_code()),
            ]);
        }
        Params::from([
            ("RB", self.rows),
            ("DV", self.d_pad / 4),
            ("WG", WORKGROUP),
            ("KB", KEY_BLOCK as u32),
            ("VEC4", self.vec4 as u32),
            ("SOFTCAP", self.softcap as u32),
            ("ALIBI", self.alibi as u32),
            ("QKV_TYPE", self.qkv.shader_code()),
        ])
    }

    /// The WGSL of this variant, specialised (for validation).
    pub fn specialised_source(&self) -> Result<String> {
        let (name, source) = self.shader();
        crate::shader::specialise(name, source, &self.params())
    }

    /// The file this variant specialises.
    fn shader(&self) -> (&'static str, &'static str) {
        if self.lanes > 0 {
            ("decode_split_d.wgsl", SPLIT_D_SOURCE)
        } else {
            ("decode.wgsl", SOURCE)
        }
    }
}

/// Lanes of a split-D workgroup on `ctx`'s adapter (its smallest subgroup, at most 32), or 0 for
/// the key-range kernel, for a call of `rows` query rows per K/V head (G·Nq): what `choice` asks,
/// else the split-D kernel wherever the adapter has subgroups, except on CPU adapters with
/// subgroups of fewer than 16 lanes (lavapipe at 256 bits) when one invocation of the key-range
/// kernel holds all the rows. Measured on lavapipe (2-core Xeon, B1 Hq32 Hkv8 D128, 32k keys,
/// `wgattn bench --backend gpu-decode --decode-kernel key-ranges|split-d --mode decode --seq 1
/// --kv-seq 32768 --q-len 1,4 --head-dim 128 --heads 32 --kv-heads 8`, docs/PERFORMANCE.md):
/// at 256 bits Nq 1 46.8 ms key ranges, 50.1 split-D; Nq 4 188 / 107; at 512 bits Nq 1 96.9 /
/// 88.4, Nq 4 367 / 150.
pub(crate) fn kernel_lanes(ctx: &Context, choice: Option<DecodeKernel>, rows: usize) -> Result<u32> {
    let a = ctx.adapter();
    let subgroups = a.features.contains(wgpu::Features::SUBGROUP);
    let lanes = a.info.subgroup_min_size.clamp(1, SPLIT_D_MAX_LANES);
    let cpu = a.info.device_type == wgpu::DeviceType::Cpu;
    match choice {
        Some(DecodeKernel::KeyRanges) => Ok(0),
        Some(DecodeKernel::SplitD) if !subgroups => Err(Error::UnsupportedFeature {
            feature: "SUBGROUP",
            hint: "the split-D decode kernel needs subgroups; DecodeKernel::KeyRanges runs without them",
        }),
        Some(DecodeKernel::SplitD) => Ok(lanes),
        None if !subgroups || (cpu && lanes < 16 && rows <= ROWS_PER_INVOCATION) => Ok(0),
        None => Ok(lanes),
    }
}

/// The most rows of one split-D workgroup with `lanes` lanes at head dim `head_dim`: on CPU
/// adapters [`SPLIT_D_ROWS`] (a lane's columns of 16 rows stay within the core's L1: 16 KiB per
/// 8 or 16 lanes at D 128; 16 rows ran Nq 4 in 107 ms against 117 for 8 at 256 bits, 150 against
/// 203 at 512); on GPUs as many as keep a lane's query and O columns within 8 vec4s each (64
/// registers), at least 1.
pub(crate) fn split_d_rows(ctx: &Context, lanes: u32, head_dim: usize) -> usize {
    if ctx.adapter().info.device_type == wgpu::DeviceType::Cpu {
        return SPLIT_D_ROWS;
    }
    let per_lane = (compiled_head_dim(head_dim) / 4).div_ceil(lanes as usize);
    (8 / per_lane.max(1)).clamp(1, SPLIT_D_ROWS)
}

impl DecodeVariant {
}

/// Why a call cannot run the decode kernel, or `None` where it can: at most
/// [`MAX_DECODE_QUERIES`] queries, no mask but a window (`Mask::Window`), no block mask and no
/// top-k selection (causal, key lengths, ALiBi and soft-capping are all taken).
pub fn unsupported(p: &Problem, attn: &Attention) -> Option<String> {
    if p.q_len > MAX_DECODE_QUERIES {
        return Some(format!("{} queries (the decode kernel takes up to {MAX_DECODE_QUERIES})", p.q_len));
    }
    unsupported_options(attn)
}

/// The options part of [`unsupported`] (a paged cache runs any query length through the kernel).
pub(crate) fn unsupported_options(attn: &Attention) -> Option<String> {
    if attn.block_mask.is_some() || attn.topk.is_some() {
        return Some("a block mask or top-k selection (the decode kernel takes a window mask only)".into());
    }
    match &attn.mask {
        None | Some(Mask::Window { .. }) => None,
        Some(_) => Some("a mask other than a window (the decode kernel takes a window mask only)".into()),
    }
}

/// Where the keys and values of a call are: pages of `[pages, Hkv, P, D]` tensors read through
/// a page table. A contiguous cache is one page per sequence.
pub(crate) struct KvPages<'a> {
    /// Slabs of the pool, in page order: (first page, K, V), each K and V a tensor of shape
    /// `[pages in slab, Hkv, P, D]`. One slab may be larger than a storage binding only when it
    /// is the only one (it is then bound by windows).
    pub slabs: Vec<(u32, &'a Tensor, &'a Tensor)>,
    /// Tokens per page.
    pub page_size: usize,
    /// `table_stride` page numbers per sequence.
    pub table: Vec<u32>,
    pub table_stride: usize,
    /// Keys of each sequence.
    pub lens: Vec<u32>,
    /// A contiguous cache: one slab whose pages are the sequences (bound in windows as it needs).
    pub contiguous: bool,
}

impl<'a> KvPages<'a> {
    /// A contiguous cache `[B, Hkv, Nk, D]` (any strides): sequence b is page b, of Nk tokens.
    pub fn contiguous(k: &'a Tensor, v: &'a Tensor, attn: &Attention) -> Self {
        let s = k.shape;
        Self {
            slabs: vec![(0, k, v)],
            page_size: s.seq,
            table: (0..s.batch as u32).collect(),
            table_stride: 1,
            lens: attn.kv_lens.clone().unwrap_or_else(|| vec![s.seq as u32; s.batch]),
            contiguous: true,
        }
    }
}

/// How one decode call is cut up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodePlan {
    /// Rows per invocation (per workgroup for the split-D kernel).
    pub rows: usize,
    /// Keys per part (a multiple of [`KEY_BLOCK`]).
    pub keys_per_part: usize,
    /// Parts per sequence.
    pub n_parts: usize,
    /// Batches whose partial states one partial buffer holds.
    pub batches_per_group: usize,
}

/// How many invocations fill an adapter, where that is known: on a CPU adapter (lavapipe) each
/// thread runs whole workgroups, and every part more costs a partial state written and merged
/// (a per-lane load loop per element there), so eight workgroups per core (measured on a 2-core
/// Xeon, the kernel compiled at 256 bits, B1 Hq32 Hkv8 D128, 32k / 128k keys: 1, 2, 4, 8, 16 and
/// 32 workgroups per core gave 49 / 311, 64 / 317, 55 / 308, 47 / 164, 52 / 182 and 63 / 198 ms
/// with `wgattn bench --backend gpu-decode --mode decode --seq 1 --kv-seq 32768,131072 --q-len 1
/// --head-dim 128 --heads 32 --kv-heads 8 --reps 5` and a temporary override of this count, since
/// removed; docs/PERFORMANCE.md);
/// on GPUs `None` (parts as short as `MIN_KEYS_PER_PART`, 64 keys).
pub(crate) fn fill_invocations(ctx: &Context) -> Option<usize> {
    // asked once per process: decode calls come thousands of times per answer
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cpu = ctx.adapter().info.device_type == wgpu::DeviceType::Cpu;
    let threads = *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(4, |n| n.get()));
    cpu.then_some(8 * threads * WORKGROUP as usize)
}

/// Plan a decode call of `p` whose longest sequence has `max_len` keys, with `splits` parts
/// forced (else chosen: enough to make `fill` units (invocations of the key-range kernel,
/// workgroups of the split-D one) of one part and one chunk of at most `max_rows` rows each in
/// all where given, else parts of `MIN_KEYS_PER_PART` (64) keys), partial buffers within
/// `max_binding` bytes.
pub fn plan(
    p: &Problem,
    max_len: usize,
    splits: Option<u32>,
    fill: Option<usize>,
    max_binding: u64,
    max_rows: usize,
) -> Result<DecodePlan> {
    let r = p.group() * p.q_len;
    let rows = r.next_power_of_two().min(max_rows);
    let n = max_len.max(1);
    let at_least = n.div_ceil(MAX_KEYS_PER_PART);
    let shortest = n.div_ceil(MIN_KEYS_PER_PART.max(16 * r));
    let mut parts = match (splits, fill) {
        (Some(s), _) => (s as usize).max(at_least),
        (None, Some(fill)) => {
            let per_part = p.batch * p.kv_heads * r.div_ceil(rows);
            fill.div_ceil(per_part).min(shortest).max(at_least)
        }
        (None, None) => shortest.max(at_least),
    };
    // the partial states of one batch must fit one binding
    let per_part = word_bytes((p.kv_heads * r * (p.head_dim + 1)) as u64);
    let fit = (max_binding / per_part.max(1)) as usize;
    if fit == 0 {
        return Err(Error::LimitExceeded {
            what: format!("the partial states of one batch's {} query rows", p.q_heads * p.q_len),
            limit: "max_storage_buffer_binding_size",
            needed: per_part,
            available: max_binding,
        });
    }
    parts = parts.min(fit).clamp(1, MAX_PARTS);
    let keys_per_part = n.div_ceil(parts).next_multiple_of(KEY_BLOCK);
    if keys_per_part > MAX_KEYS_PER_PART {
        return Err(Error::LimitExceeded {
            what: format!("{n} keys in at most {parts} parts"),
            limit: "max_storage_buffer_binding_size",
            needed: per_part * n.div_ceil(MAX_KEYS_PER_PART) as u64,
            available: max_binding,
        });
    }
    let n_parts = n.div_ceil(keys_per_part);
    let batches_per_group = (fit / n_parts).clamp(1, p.batch);
    Ok(DecodePlan { rows, keys_per_part, n_parts, batches_per_group })
}

/// A dispatch's share of one slab: batches, K/V heads and keys whose K and V windows each fit a
/// binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KvChunk {
    b0: usize,
    nb: usize,
    kh0: usize,
    nkh: usize,
    key_lo: usize,
    key_hi: usize,
}

/// Cut batches `b0..b0+nb` of a contiguous cache (`shape`, `strides`, elements of `dtype`) into
/// chunks whose K/V windows fit `max_binding` bytes: all at once, else per batch, per run of K/V
/// heads, and per key range (a multiple of `keys_per_part`).
fn kv_chunks(
    shape: Shape,
    strides: [usize; 3],
    dtype: DType,
    (b0, nb): (usize, usize),
    keys_per_part: usize,
    max_binding: u64,
) -> Vec<KvChunk> {
    let bytes = |(s, e): (u64, u64)| dtype.bytes(e - s) + 256;
    let fits = |r| bytes(r) <= max_binding;
    let all = KvChunk { b0, nb, kh0: 0, nkh: shape.heads, key_lo: 0, key_hi: shape.seq };
    if fits(element_range(shape, strides, b0, nb, 0, shape.heads)) {
        return vec![all];
    }
    let mut out = Vec::new();
    for b in b0..b0 + nb {
        if fits(element_range(shape, strides, b, 1, 0, shape.heads)) {
            out.push(KvChunk { b0: b, nb: 1, ..all });
            continue;
        }
        let mut h = 0;
        while h < shape.heads {
            let mut nh = 1;
            while h + nh < shape.heads && fits(element_range(shape, strides, b, 1, h, nh + 1)) {
                nh += 1;
            }
            if fits(element_range(shape, strides, b, 1, h, nh)) {
                out.push(KvChunk { b0: b, nb: 1, kh0: h, nkh: nh, ..all });
            } else {
                // one head's keys in ranges of whole parts
                let mut k0 = 0;
                while k0 < shape.seq {
                    let mut k1 = (k0 + keys_per_part).min(shape.seq);
                    while k1 < shape.seq && fits(key_range(shape, strides, b, h, k0, (k1 + keys_per_part).min(shape.seq))) {
                        k1 = (k1 + keys_per_part).min(shape.seq);
                    }
                    out.push(KvChunk { b0: b, nb: 1, kh0: h, nkh: 1, key_lo: k0, key_hi: k1 });
                    k0 = k1;
                }
            }
            h += nh;
        }
    }
    out
}

/// Record a decode call into `encoder` (its own compute pass, which writes `timing`'s timestamps
/// if given): Q `[B, Hq, Nq, D]` against `kv`, O (Q's shape, any layout and dtype) and LSE. `p`
/// is the validated problem (its `kv_len` the longest sequence's keys).
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    timing: Option<wgpu::ComputePassTimestampWrites<'_>>,
    p: &Problem,
    q: &Tensor,
    kv: &KvPages<'_>,
    attn: &Attention,
    (o, lse): (&Tensor, &Tensor),
) -> Result<CallInfo> {
    let why = if kv.contiguous { unsupported(p, attn) } else { unsupported_options(attn) };
    if let Some(why) = why {
        return Err(Error::InvalidOption(format!("the decode kernel cannot run this call: {why}")));
    }
    let (_, k0, v0) = kv.slabs[0];
    check_tensors(ctx, p, [q, k0, v0], o, lse, true, "the decode kernel")?;
    for &(_, k, v) in &kv.slabs {
        if k.strides != v.strides {
            return Err(Error::ShapeMismatch(format!(
                "K has strides {:?} but V {:?}: they must agree",
                k.strides, v.strides
            )));
        }
        for t in [k, v] {
            t.check_context(ctx)?;
            if t.dtype != q.dtype {
                return Err(Error::UnsupportedDType(format!("Q is {} but the cache is {}", q.dtype, t.dtype)));
            }
        }
    }
    let limits = ctx.limits();
    let max_binding = limits.max_storage_buffer_binding_size;
    let lanes = kernel_lanes(ctx, attn.launch.decode_kernel, p.group() * p.q_len)?;
    // units of work: invocations of the key-range kernel, workgroups of `lanes` of the split-D one
    let (fill, max_rows, parts_per_workgroup) = match lanes {
        0 => (fill_invocations(ctx), ROWS_PER_INVOCATION, WORKGROUP),
        t => (fill_invocations(ctx).map(|n| n / t as usize), split_d_rows(ctx, t, p.head_dim), 1),
    };
    let plan = plan(p, p.kv_len, attn.launch.num_splits, fill, max_binding, max_rows)?;
    let (g, r) = (p.group(), p.group() * p.q_len);
    let vec4 = limits.min_storage_buffer_offset_alignment.is_multiple_of(16)
        && std::iter::once(q).chain(kv.slabs.iter().flat_map(|&(_, k, v)| [k, v])).all(repack::vec4_ready);
    let variant = DecodeVariant {
        lanes,
        rows: plan.rows as u32,
        d_pad: compiled_head_dim(p.head_dim) as u32,
        vec4,
        softcap: attn.softcap.is_some(),
        alibi: attn.alibi_slopes.is_some(),
        qkv: q.dtype,
    };
    let (shader, source) = variant.shader();
    let pipeline = pipeline(ctx, shader, source, &variant.params())?;

    // meta: key lengths, ALiBi slopes, page table
    let mut meta = kv.lens.clone();
    let alibi_offset = meta.len() as u32;
    if let Some(s) = &attn.alibi_slopes {
        meta.extend(s.iter().map(|x| x.to_bits()));
    }
    let table_offset = meta.len() as u32;
    meta.extend_from_slice(&kv.table);
    // per slab: (list start, run length) per sequence, then the lists; and each slab's longest run
    let p_size = kv.page_size;
    let mut list_offsets = Vec::new();
    let mut longest_runs = Vec::new();
    for &(page0, k, _) in &kv.slabs {
        let page_hi = page0 + k.shape.batch as u32;
        let header = meta.len();
        list_offsets.push(header as u32);
        meta.resize(header + 2 * p.batch, 0);
        let mut longest = 0;
        for (b, &len) in kv.lens.iter().enumerate() {
            let len = len as usize;
            let start = meta.len();
            let mut run = 0;
            for lp in 0..len.div_ceil(p_size) {
                if (page0..page_hi).contains(&kv.table[b * kv.table_stride + lp]) {
                    meta.push(lp as u32);
                    run += p_size.min(len - lp * p_size);
                }
            }
            meta[header + 2 * b] = start as u32;
            meta[header + 2 * b + 1] = run as u32;
            longest = longest.max(run);
        }
        longest_runs.push(longest);
    }
    let meta_bytes = word_bytes(meta.len() as u64);
    if meta_bytes > max_binding {
        return Err(Error::LimitExceeded {
            what: "the page table".into(),
            limit: "max_storage_buffer_binding_size",
            needed: meta_bytes,
            available: max_binding,
        });
    }
    let meta = ctx.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("decode meta"),
        contents: bytemuck::cast_slice(&meta),
        usage: wgpu::BufferUsages::STORAGE,
    });

    // partial states of one group of batches
    let group_rows = (plan.batches_per_group * p.kv_heads * r) as u64;
    let o_bytes = DType::F32.bytes(group_rows * plan.n_parts as u64 * p.head_dim as u64);
    check_buffer_size(ctx, "partial-output buffer", o_bytes)?;
    let make = |label, size: u64| {
        ctx.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(4),
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    };
    let part_o = make("decode partial O", o_bytes);
    let part_lse = make("decode partial LSE", DType::F32.bytes(group_rows * plan.n_parts as u64));

    let (window_left, window_right) = match &attn.mask {
        Some(Mask::Window { left, right }) => {
            let w = |x: &Option<usize>| x.map_or(NONE, |x| x.min(NONE as usize - 1) as u32);
            (w(left), w(right))
        }
        _ => (NONE, NONE),
    };
    let base = DecodeParams {
        q_len: p.q_len as u32,
        head_dim: p.head_dim as u32,
        group: g as u32,
        rows_per_group: r as u32,
        row_chunks: r.div_ceil(plan.rows) as u32,
        keys_per_part: plan.keys_per_part as u32,
        n_parts: plan.n_parts as u32,
        part_kv_heads: p.kv_heads as u32,
        page_size: kv.page_size as u32,
        table_stride: kv.table_stride as u32,
        table_offset,
        causal: causal_code(attn),
        window_left,
        window_right,
        alibi_offset,
        scale: attn.scale_for(p.head_dim),
        softcap: attn.softcap.unwrap_or(1.0),
        q_stride: strides4(q),
        ..Default::default()
    };

    // a contiguous cache: one slab whose pages are the sequences
    let contiguous = kv.contiguous;
    if !contiguous {
        for &(_, k, _) in &kv.slabs {
            let bytes = k.device_bytes();
            if bytes > max_binding {
                return Err(Error::LimitExceeded {
                    what: format!("a page-pool slab of {bytes} bytes"),
                    limit: "max_storage_buffer_binding_size",
                    needed: bytes,
                    available: max_binding,
                });
            }
        }
    }
    let mut dispatches = 0;
    let mut pass =
        encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("attention decode"), timestamp_writes: timing });
    for gb0 in (0..p.batch).step_by(plan.batches_per_group) {
        let gnb = plan.batches_per_group.min(p.batch - gb0);
        let qw = Window::new(ctx, q, element_range(q.shape, q.strides, gb0, gnb, 0, p.q_heads));
        for (slab, &(page0, k, v)) in kv.slabs.iter().enumerate() {
            // a contiguous cache is bound in windows as it needs (by batches, K/V heads, key
            // ranges); a pool's slab is bound whole, and sees only its own pages
            let chunks = if contiguous {
                kv_chunks(k.shape, k.strides, k.dtype, (gb0, gnb), plan.keys_per_part, max_binding)
            } else {
                vec![KvChunk { b0: 0, nb: k.shape.batch, kh0: 0, nkh: p.kv_heads, key_lo: 0, key_hi: k.shape.seq }]
            };
            for c in chunks {
                let (b_lo, b_n) = if contiguous { (c.b0, c.nb) } else { (gb0, gnb) };
                let whole_keys = c.key_lo == 0 && c.key_hi == k.shape.seq;
                let range = if whole_keys {
                    element_range(k.shape, k.strides, c.b0, c.nb, c.kh0, c.nkh)
                } else {
                    key_range(k.shape, k.strides, c.b0, c.kh0, c.key_lo, c.key_hi)
                };
                let (kw, vw) = (Window::new(ctx, k, range), Window::new(ctx, v, range));
                let (key_lo, key_hi) = if whole_keys { (0, usize::MAX) } else { (c.key_lo, c.key_hi) };
                // a slab of a pool cuts its own runs into the parts (its share of the keys)
                let keys_per_part = if contiguous {
                    plan.keys_per_part
                } else {
                    longest_runs[slab].div_ceil(plan.n_parts).next_multiple_of(KEY_BLOCK).max(KEY_BLOCK)
                };
                let part0 = key_lo / keys_per_part;
                let part_end = if key_hi >= p.kv_len { plan.n_parts } else { key_hi.div_ceil(keys_per_part) };
                let parts = (part_end - part0) as u32;
                let part_groups = parts.div_ceil(parts_per_workgroup);
                let dp = DecodeParams {
                    batch0: b_lo as u32,
                    batches: b_n as u32,
                    kv_head0: c.kh0 as u32,
                    kv_heads: c.nkh as u32,
                    part_groups,
                    part0: part0 as u32,
                    parts,
                    part_batch0: gb0 as u32,
                    resume: (slab > 0) as u32,
                    keys_per_part: keys_per_part as u32,
                    list_offset: list_offsets[slab],
                    key_lo: key_lo as u32,
                    key_hi: key_hi.min(u32::MAX as usize) as u32,
                    q_base: qw.base,
                    // the slab's page 0 is page `page0` of the table
                    k_base: kw.base.wrapping_add(page0.wrapping_mul(k.strides[0] as u32)),
                    v_base: vw.base.wrapping_add(page0.wrapping_mul(v.strides[0] as u32)),
                    k_stride: strides4(k),
                    v_stride: strides4(v),
                    ..base
                };
                let total = (b_n * c.nkh) as u64 * base.row_chunks as u64 * part_groups as u64;
                let uniform = |grid_x, wg_offset| bytemuck::bytes_of(&DecodeParams { grid_x, wg_offset, ..dp }).to_vec();
                let resources = [
                    (1, qw.binding(&q.buffer)),
                    (2, kw.binding(&k.buffer)),
                    (3, vw.binding(&v.buffer)),
                    (4, meta.as_entire_binding()),
                    (5, part_o.as_entire_binding()),
                    (6, part_lse.as_entire_binding()),
                ];
                dispatches += dispatch_all(ctx, &mut pass, &pipeline, "decode", total, uniform, &resources);
            }
        }
        // merge the group's parts into O and LSE
        let ow = Window::new(ctx, o, element_range(o.shape, o.strides, gb0, gnb, 0, p.q_heads));
        let lse_range = ((gb0 * p.q_heads * p.q_len) as u64, ((gb0 + gnb) * p.q_heads * p.q_len) as u64);
        let lw = Window::new(ctx, lse, lse_range);
        let mp = MergeParams {
            rows: (gnb * p.kv_heads * r) as u32,
            row0: 0,
            rows_per_group: r as u32,
            head_dim: p.head_dim as u32,
            n_splits: plan.n_parts as u32,
            group: g as u32,
            kv_heads: p.kv_heads as u32,
            q_len: p.q_len as u32,
            rows_per_head: p.q_len as u32,
            batch0: gb0 as u32,
            kv_head0: 0,
            o_stride: strides4(o),
            lse_stride_b: (p.q_heads * p.q_len) as u32,
            lse_stride_h: p.q_len as u32,
            ..Default::default()
        };
        let bufs = MergeBuffers { part_o: &part_o, part_lse: &part_lse, o: (&o.buffer, ow), lse: (&lse.buffer, lw) };
        dispatches += merge::encode(ctx, &mut pass, mp, &bufs, o.dtype)?;
    }
    drop(pass);
    let kernel = if lanes > 0 { "decode-split-d" } else { "decode" };
    Ok(CallInfo::new(kernel, None, plan.n_parts as u32, dispatches))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(kv_len: usize, q_len: usize) -> Problem {
        Problem { batch: 1, q_heads: 32, kv_heads: 8, q_len, kv_len, head_dim: 128 }
    }

    /// Every key lies in exactly one part, and no part runs past the loop bound.
    fn assert_covers(plan: &DecodePlan, n: usize) {
        assert_eq!(plan.keys_per_part % KEY_BLOCK, 0);
        assert!(plan.keys_per_part <= MAX_KEYS_PER_PART);
        assert!(plan.n_parts * plan.keys_per_part >= n, "{plan:?} misses keys of {n}");
        assert!((plan.n_parts - 1) * plan.keys_per_part < n, "{plan:?} has an empty last part for {n}");
    }

    #[test]
    fn parts_fill_the_adapter() {
        let max = 128 << 20;
        for n in [1, 17, 1000, 32_768, 100_003, 131_072] {
            // GPUs (no fill): parts of at least MIN_KEYS_PER_PART keys, as many as that makes
            let gpu = plan(&problem(n, 1), n, None, None, max, ROWS_PER_INVOCATION).unwrap();
            assert_covers(&gpu, n);
            assert_eq!(gpu.n_parts, n.div_ceil(gpu.keys_per_part));
            assert!(gpu.keys_per_part >= MIN_KEYS_PER_PART.min(n.next_multiple_of(KEY_BLOCK)), "{gpu:?}");
            // a CPU adapter asking for 1024 invocations: 8 K/V heads × one row chunk × 128 parts
            let cpu = plan(&problem(n, 1), n, None, Some(1024), max, ROWS_PER_INVOCATION).unwrap();
            assert_covers(&cpu, n);
            assert!(cpu.n_parts <= 128 && cpu.n_parts <= gpu.n_parts, "{cpu:?} vs {gpu:?}");
            if n >= 128 * MIN_KEYS_PER_PART {
                assert_eq!(cpu.n_parts, 128);
            }
            // Nq 4: 16 rows in 4 chunks of 4, so a quarter of the parts
            let cpu4 = plan(&problem(n, 4), n, None, Some(1024), max, ROWS_PER_INVOCATION).unwrap();
            assert_covers(&cpu4, n);
            assert_eq!(cpu4.rows, ROWS_PER_INVOCATION);
            assert!(cpu4.n_parts <= 32);
        }
    }

    #[test]
    fn forced_splits_and_limits() {
        let max = 128 << 20;
        for splits in [1, 2, 3, 7, 64] {
            let p = plan(&problem(100_003, 1), 100_003, Some(splits), Some(1024), max, ROWS_PER_INVOCATION).unwrap();
            assert_covers(&p, 100_003);
            // forced: that many parts, except where fewer would exceed the loop bound
            assert_eq!(p.n_parts, (splits as usize).max(100_003usize.div_ceil(MAX_KEYS_PER_PART)));
        }
        // partial states larger than the binding: fewer parts, then an error
        let p = plan(&problem(1 << 20, 1), 1 << 20, None, None, 1 << 20, ROWS_PER_INVOCATION).unwrap();
        assert_covers(&p, 1 << 20);
        assert!(matches!(plan(&problem(1 << 24, 1), 1 << 24, None, None, 1 << 14, ROWS_PER_INVOCATION), Err(Error::LimitExceeded { .. })));
    }
}
