//! The fused forward (`shaders/flash_forward.wgsl`, `shaders/flash_register.wgsl`): tile choice,
//! dispatch splitting under the adapter's limits, and the launch.
//!
//! Splitting: tensors are bound as windows per chunk of (batches, K/V heads, query tiles); when
//! one K/V head alone is over the storage-binding limit (long keys, or BSHD where a head's keys
//! stride across all heads of its batch) and the call has no block table, the key range is cut
//! into splits that each bind only their own keys, run as separate dispatches and merged by LSE.
//!
//! Device memory per call: O (`4·B·Hq·Nq·D` bytes), LSE (`4·B·Hq·Nq`), a small aux buffer
//! (`4·(B + Hq)`) and a uniform per dispatch; with a split key range also partial states of
//! `4·rows·n_splits·(D + 1)` bytes for the largest chunk of rows. Nothing is O(Nq·Nk).

use bytemuck::{Pod, Zeroable};

use super::merge::{self, MergeBuffers, MergeParams};
use super::topk;
use super::{causal_code, dispatch_all, pipeline, strides4, window_bytes, Window};
use crate::attention::{Attention, Layout, Problem, Shape};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::mask::BlockMask;
use crate::shader::Params;
use crate::tensor::{check_buffer_size, Tensor};

const SOURCE: &str = include_str!("../../shaders/flash_forward.wgsl");
const REGISTER_SOURCE: &str = include_str!("../../shaders/flash_register.wgsl");

/// Keys one invocation may loop over. Lavapipe stops an invocation after 65,535 loop iterations in
/// total (the kernel's only run-time loop is the key-tile loop), and an f32 running sum over very
/// long rows loses digits (rel. error 5e-6 at 70k keys in one split, 1e-6 split), so longer key
/// ranges are split across workgroups and merged by log-sum-exp.
pub const MAX_KEYS_PER_SPLIT: u32 = 16_384;

/// Workgroups below which the key range is split further to keep the adapter busy.
const MIN_WORKGROUPS: u64 = 64;

/// The kernel families of the fused forward; both take every option and mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// `flash_forward.wgsl`: FlashAttention-2 tiles in workgroup memory (discrete GPUs).
    Tiled,
    /// `flash_register.wgsl`: rows and accumulators in registers, K/V rows shared by subgroup
    /// broadcast (`subgroups`) or loaded by every invocation (adapters without subgroups).
    Register {
        /// Share K/V rows with `subgroupBroadcast`.
        subgroups: bool,
        /// Twice the query rows per invocation: each K/V load serves twice the rows (fewer loads
        /// per FLOP, the cost that bounds lavapipe), at about three times the shader compile time.
        wide: bool,
    },
}

/// Every family, in the order `WGATTN_KERNEL` names and the tuner lists them.
pub const FAMILIES: [Family; 5] = [
    Family::Tiled,
    Family::Register { subgroups: true, wide: false },
    Family::Register { subgroups: true, wide: true },
    Family::Register { subgroups: false, wide: false },
    Family::Register { subgroups: false, wide: true },
];

impl Family {
    /// The name `WGATTN_KERNEL` takes: `tiled`, `register`, `register-wide`,
    /// `register-nosubgroup`, `register-nosubgroup-wide`.
    pub fn name(&self) -> &'static str {
        match self {
            Family::Tiled => "tiled",
            Family::Register { subgroups: true, wide: false } => "register",
            Family::Register { subgroups: true, wide: true } => "register-wide",
            Family::Register { subgroups: false, wide: false } => "register-nosubgroup",
            Family::Register { subgroups: false, wide: true } => "register-nosubgroup-wide",
        }
    }

    /// Parse a `WGATTN_KERNEL` name.
    pub fn from_name(name: &str) -> Result<Self> {
        let name = name.trim();
        FAMILIES.into_iter().find(|f| f.name() == name).ok_or_else(|| {
            let names: Vec<_> = FAMILIES.iter().map(|f| f.name()).collect();
            Error::InvalidOption(format!("kernel `{name}`: expected one of {}", names.join(", ")))
        })
    }
}

/// One specialisation of a kernel family: its tiles and the head dim it is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TileConfig {
    /// The family.
    pub family: Family,
    /// Query rows per workgroup.
    pub bq: u32,
    /// Keys per tile (per key block for the register family).
    pub bk: u32,
    /// Tiled: invocations per query row. Register: query rows per invocation.
    pub tpr: u32,
    /// Register: keys whose scores an invocation computes together (divides `bk`; tiled: 1).
    pub kp: u32,
    /// Head dim padded (to a multiple of `4·tpr` for tiled, of 4 for register).
    pub d_pad: u32,
}

/// What a call compiles into its kernel besides the tiles: how K and V are read and which score
/// terms exist. Each combination is its own pipeline, so a term the call does not use costs
/// nothing in the inner loop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Variant {
    /// K and V are read as vec4s: the head dim is a multiple of 4 (so are all strides) and binding
    /// windows start 16-byte aligned.
    pub vec4: bool,
    /// Logit soft-capping.
    pub softcap: bool,
    /// ALiBi biases.
    pub alibi: bool,
    /// A block table with partial blocks, whose bitmaps the kernel tests per element.
    pub bitmaps: bool,
}

impl Variant {
    /// The variant of a call with head dim `head_dim`, options `attn` and block table `table`.
    pub fn for_call(ctx: &Context, head_dim: usize, attn: &Attention, table: Option<&BlockMask>) -> Self {
        Self {
            vec4: head_dim.is_multiple_of(4)
                && ctx.limits().min_storage_buffer_offset_alignment.is_multiple_of(16),
            softcap: attn.softcap.is_some(),
            alibi: attn.alibi_slopes.is_some(),
            bitmaps: table.is_some_and(|t| !t.bits.is_empty()),
        }
    }

    fn params(&self) -> [(&'static str, u32); 4] {
        [
            ("VEC4", self.vec4 as u32),
            ("SOFTCAP", self.softcap as u32),
            ("ALIBI", self.alibi as u32),
            ("BITS", self.bitmaps as u32),
        ]
    }
}

impl TileConfig {
    /// Tiled family: the largest tiles that fit the adapter's workgroup memory and invocations.
    pub fn choose(head_dim: usize, limits: &wgpu::Limits) -> Result<Self> {
        let tpr = if head_dim <= 64 { 4 } else { 8 };
        let d_pad = (head_dim as u32).div_ceil(4 * tpr) * 4 * tpr;
        let candidates = [(32, 32), (16, 32), (16, 16), (8, 16), (8, 8), (4, 8), (2, 8)];
        let mut smallest = 0;
        for (bq, bk) in candidates {
            let c = Self { family: Family::Tiled, bq, bk, tpr, kp: 1, d_pad };
            smallest = c.workgroup_bytes();
            if c.workgroup_bytes() <= limits.max_compute_workgroup_storage_size
                && bq * tpr <= limits.max_compute_invocations_per_workgroup
                && bq * tpr <= limits.max_compute_workgroup_size_x
            {
                return Ok(c);
            }
        }
        Err(Error::LimitExceeded {
            what: format!("the smallest attention tile for head dim {head_dim}"),
            limit: "max_compute_workgroup_storage_size",
            needed: smallest as u64,
            available: limits.max_compute_workgroup_storage_size as u64,
        })
    }

    /// Register family, shaped by the lanes of the adapter's subgroups. With subgroups of at
    /// least 16 lanes (llvmpipe with 512-bit vectors: AVX-512's 32 vector registers), workgroups
    /// of 16 invocations walk key blocks of 16 with 8 / 4 / 2 query rows per invocation (head
    /// dim up to 64 / 128 / beyond), scoring 16 / 8 / 8 keys together (`wide`: 16 / 8 / 4 rows,
    /// 4 / 8 / 4 keys); otherwise workgroups of 8, key blocks of `min(8, subgroup_min_size)`
    /// (8 without subgroups), 8 / 4 / 1 rows (twice that when `wide`) and one key at a time.
    /// Rows are halved until the workgroup's query rows divide the block size of the call's
    /// block table (`table`), if it has one. Figures behind each choice: docs/LAVAPIPE.md.
    pub fn register(
        head_dim: usize,
        subgroup_min_size: Option<u32>,
        table: Option<usize>,
        wide: bool,
    ) -> Self {
        let lanes: u32 = if subgroup_min_size.is_some_and(|s| s >= 16) { 16 } else { 8 };
        // (rows, keys scored together), measured on llvmpipe (docs/LAVAPIPE.md)
        let (mut rows, kp): (u32, u32) = match (lanes, head_dim, wide) {
            (16, 0..=64, false) => (8, 16),
            (16, 0..=64, true) => (16, 4),
            (16, 65..=128, false) => (4, 8),
            (16, 65..=128, true) => (8, 8),
            (16, _, false) => (2, 8),
            (16, _, true) => (4, 4),
            (_, 0..=64, _) => (8 << wide as u32, 1),
            (_, 65..=128, _) => (4 << wide as u32, 1),
            _ => (1 << wide as u32, 1),
        };
        while rows > 1 && table.is_some_and(|size| size % (lanes * rows) as usize != 0) {
            rows /= 2;
        }
        let (subgroups, kb) = match subgroup_min_size {
            Some(s) => (true, s.clamp(1, lanes)),
            None => (false, lanes),
        };
        Self {
            family: Family::Register { subgroups, wide },
            bq: lanes * rows,
            bk: kb,
            tpr: rows,
            kp: kp.min(kb),
            d_pad: (head_dim as u32).div_ceil(4) * 4,
        }
    }

    /// The register specialisation with half the query rows per invocation (None: tiled, or one
    /// row already).
    pub fn fewer_rows(&self) -> Option<Self> {
        match self.family {
            Family::Register { .. } if self.tpr > 1 => {
                Some(Self { bq: self.bq / 2, tpr: self.tpr / 2, ..*self })
            }
            _ => None,
        }
    }

    /// The specialisation of `family` for `head_dim` on this context's adapter (`table`: the block
    /// size of the call's block table, if any).
    pub fn for_family(ctx: &Context, family: Family, head_dim: usize, table: Option<usize>) -> Result<Self> {
        match family {
            Family::Tiled => Self::choose(head_dim, ctx.limits()),
            Family::Register { subgroups: true, wide } => {
                let a = ctx.adapter();
                if !a.features.contains(wgpu::Features::SUBGROUP) {
                    return Err(Error::UnsupportedFeature {
                        feature: "SUBGROUP",
                        hint: "use the tiled or register-nosubgroup kernel",
                    });
                }
                Ok(Self::register(head_dim, Some(a.info.subgroup_min_size.max(1)), table, wide))
            }
            Family::Register { subgroups: false, wide } => Ok(Self::register(head_dim, None, table, wide)),
        }
    }

    /// Workgroup memory of the specialisation (tiled: Q and K/V tiles plus S and P; register: 0).
    pub fn workgroup_bytes(&self) -> u32 {
        match self.family {
            Family::Tiled => {
                let dv = self.d_pad / 4;
                (self.bq * dv + self.bk * dv) * 16 + 2 * self.bq * self.bk * 4
            }
            Family::Register { .. } => 0,
        }
    }

    /// The WGSL of this specialisation in `variant` (validated by naga).
    pub fn specialised_source(&self, variant: Variant) -> Result<String> {
        let (name, source) = self.source();
        crate::shader::specialise(name, source, &self.params(variant))
    }

    fn source(&self) -> (&'static str, &'static str) {
        match self.family {
            Family::Tiled => ("flash_forward.wgsl", SOURCE),
            Family::Register { .. } => ("flash_register.wgsl", REGISTER_SOURCE),
        }
    }

    fn params(&self, variant: Variant) -> Params {
        let dv = self.d_pad / 4;
        let mut params = match self.family {
            Family::Tiled => {
                let wg = self.bq * self.tpr;
                Params::from([
                    ("BQ", self.bq),
                    ("BK", self.bk),
                    ("TPR", self.tpr),
                    ("DV", dv),
                    ("KPT", self.bk / self.tpr),
                    ("OPT", dv / self.tpr),
                    ("QLOADS", (self.bq * dv).div_ceil(wg)),
                    ("KVLOADS", (self.bk * dv).div_ceil(wg)),
                ])
            }
            Family::Register { subgroups, .. } => {
                // rows whose O accumulators P·V updates together: 4 vec4s of 8 lanes (16 of the
                // 32 vector registers of a CPU adapter) stay in registers over a key block
                let rh = [4, 2, 1].into_iter().find(|&q| self.tpr.is_multiple_of(q)).unwrap_or(1);
                Params::from([
                    ("R", self.tpr),
                    ("KB", self.bk),
                    ("KP", self.kp),
                    ("KG", self.bk / self.kp),
                    ("DV", dv),
                    ("WG", self.bq / self.tpr),
                    ("SUBGROUPS", subgroups as u32),
                    ("RH", rh),
                    ("RHS", self.tpr / rh),
                    ("VPK", dv.div_ceil(self.bk)),
                ])
            }
        };
        params.extend(variant.params());
        params
    }
}

/// The kernel family for this call: `WGATTN_KERNEL` when set, else the adapter's default:
/// register on CPU adapters (lavapipe, SwiftShader: workgroup memory is slow there, see
/// LAVAPIPE.md), with subgroups when the adapter has them; tiled on GPUs.
pub fn default_family(ctx: &Context) -> Result<Family> {
    if let Ok(name) = std::env::var("WGATTN_KERNEL") {
        if !name.trim().is_empty() {
            return Family::from_name(&name);
        }
    }
    let a = ctx.adapter();
    let subgroups = a.features.contains(wgpu::Features::SUBGROUP);
    Ok(match a.info.device_type {
        wgpu::DeviceType::Cpu => Family::Register { subgroups, wide: false },
        _ => Family::Tiled,
    })
}

/// Mirrors `Params` in attention_common.wgsl: 36 scalars (144 bytes, the last three padding, so
/// that the vec4 strides that follow sit at WGSL's 16-byte alignment), then five strides.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct ForwardParams {
    pub(crate) q_len: u32,
    pub(crate) kv_len: u32,
    pub(crate) head_dim: u32,
    pub(crate) group: u32,
    pub(crate) rows_per_head: u32,
    pub(crate) batch0: u32,
    pub(crate) batches: u32,
    pub(crate) kv_head0: u32,
    pub(crate) kv_heads: u32,
    pub(crate) q_tile0: u32,
    pub(crate) q_tiles: u32,
    pub(crate) n_splits: u32,
    pub(crate) tiles_per_split: u32,
    pub(crate) grid_x: u32,
    pub(crate) causal: u32,
    pub(crate) alibi_offset: u32,
    pub(crate) scale: f32,
    pub(crate) softcap: f32,
    pub(crate) q_base: u32,
    pub(crate) k_base: u32,
    pub(crate) v_base: u32,
    pub(crate) o_base: u32,
    pub(crate) lse_base: u32,
    pub(crate) wg_offset: u32,
    pub(crate) use_table: u32,
    pub(crate) block_size: u32,
    pub(crate) table_batch: u32,
    pub(crate) table_heads: u32,
    pub(crate) q_blocks: u32,
    pub(crate) lists_offset: u32,
    pub(crate) entries_offset: u32,
    pub(crate) bits_offset: u32,
    pub(crate) split0: u32,
    pub(crate) pad: [u32; 3],
    pub(crate) q_stride: [u32; 4],
    pub(crate) k_stride: [u32; 4],
    pub(crate) v_stride: [u32; 4],
    pub(crate) o_stride: [u32; 4],
    pub(crate) lse_stride: [u32; 4],
}

const _: () = assert!(std::mem::size_of::<ForwardParams>() == 36 * 4 + 5 * 16);

/// O and LSE of one forward call.
#[derive(Debug)]
pub struct Output {
    /// `[B, Hq, Nq, D]` in Q's layout.
    pub o: Tensor,
    /// `[B, Hq, Nq]` (a tensor of shape `[B, Hq, Nq, 1]`), natural log; −∞ for rows that saw no key.
    pub lse: Tensor,
}

/// How one call is cut into dispatches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Tiles of the kernel.
    pub tiles: TileConfig,
    /// Parts the key range is split into (merged by LSE when > 1).
    pub n_splits: u32,
    /// Key tiles per split.
    pub tiles_per_split: u32,
    /// Pieces of the problem whose tensors each fit one storage binding.
    pub chunks: Vec<Chunk>,
}

/// A piece of one call: batches `b0..b0+nb`, K/V heads `kh0..kh0+nkh`, and query tiles
/// `t0..t0+nt` of each head group's packed rows (a sub-range only when `nb = nkh = 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// First batch.
    pub b0: usize,
    /// Batches.
    pub nb: usize,
    /// First K/V head.
    pub kh0: usize,
    /// K/V heads.
    pub nkh: usize,
    /// First query tile.
    pub t0: usize,
    /// Query tiles.
    pub nt: usize,
    /// First key split this chunk runs (0 unless K/V are cut by key range).
    pub s0: u32,
    /// Key splits it runs (all of them unless K/V are cut by key range: then one, whose keys alone
    /// are bound).
    pub ns: u32,
}

/// Element range `[start, end)` of batches `b0..b0+nb`, heads `h0..h0+nh`, all rows.
fn element_range(shape: Shape, layout: Layout, b0: usize, nb: usize, h0: usize, nh: usize) -> (u64, u64) {
    let [sb, sh, ss] = layout.strides(shape);
    let start = b0 * sb + h0 * sh;
    let last = (b0 + nb - 1) * sb + (h0 + nh - 1) * sh + (shape.seq - 1) * ss + shape.head_dim;
    (start as u64, last as u64)
}

/// Element range `[start, end)` of keys `k0..k1` of batch `b`, head `h`.
fn key_range(shape: Shape, layout: Layout, b: usize, h: usize, k0: usize, k1: usize) -> (u64, u64) {
    let [sb, sh, ss] = layout.strides(shape);
    let start = b * sb + h * sh + k0 * ss;
    (start as u64, (start + (k1 - 1 - k0) * ss + shape.head_dim) as u64)
}

/// Query-side geometry: each K/V head's group of G query heads is a run of G·R "packed" rows,
/// R = `rph` rows per head (Nq when short queries are packed across heads, else Nq rounded up to
/// the query tile so that no tile straddles two heads), cut into tiles of `bq` rows.
struct Rows {
    shape: Shape,
    group: usize,
    bq: usize,
    rph: usize,
}

impl Rows {
    /// `pack`: let short query runs share tiles across heads (not with a block table, whose
    /// lists are per head and query block).
    fn new(shape: Shape, group: usize, bq: usize, pack: bool) -> Self {
        let rph = if pack && shape.seq < bq { shape.seq } else { shape.seq.next_multiple_of(bq) };
        Self { shape, group, bq, rph }
    }
    fn packed(&self) -> usize {
        self.group * self.rph
    }
    fn tiles(&self) -> usize {
        self.packed().div_ceil(self.bq)
    }
    /// Packed rows `[p0, p1)` of a chunk (within each head group).
    fn rows(&self, c: &Chunk) -> (usize, usize) {
        (c.t0 * self.bq, ((c.t0 + c.nt) * self.bq).min(self.packed()))
    }
    /// (head within the group, query) of packed row `p`, the query clipped to the last real one.
    fn split(&self, p: usize) -> (usize, usize) {
        (p / self.rph, (p % self.rph).min(self.shape.seq - 1))
    }
    /// Element range of Q or O (strides of `layout`) that chunk `c` touches.
    fn range(&self, layout: Layout, c: &Chunk) -> (u64, u64) {
        let [sb, sh, ss] = layout.strides(self.shape);
        let (p0, p1) = self.rows(c);
        let ((hf, i0), (hl, i1)) = (self.split(p0), self.split(p1 - 1));
        let n = self.shape.seq;
        let first = (hf..=hl).map(|h| h * sh + if h == hf { i0 } else { 0 } * ss).min().unwrap();
        let last = (hf..=hl).map(|h| h * sh + if h == hl { i1 } else { n - 1 } * ss).max().unwrap();
        let g = self.group;
        let start = c.b0 * sb + c.kh0 * g * sh + first;
        let end = (c.b0 + c.nb - 1) * sb + (c.kh0 + c.nkh - 1) * g * sh + last + self.shape.head_dim;
        (start as u64, end as u64)
    }
    /// Element range of LSE `[B, Hq, Nq]` that chunk `c` touches.
    fn lse_range(&self, c: &Chunk) -> (u64, u64) {
        let (hq, n, g) = (self.shape.heads, self.shape.seq, self.group);
        let (p0, p1) = self.rows(c);
        let ((hf, i0), (hl, i1)) = (self.split(p0), self.split(p1 - 1));
        let start = (c.b0 * hq + c.kh0 * g + hf) * n + i0;
        let end = ((c.b0 + c.nb - 1) * hq + (c.kh0 + c.nkh - 1) * g + hl) * n + i1 + 1;
        (start as u64, end as u64)
    }
    /// Packed rows (padding included) summed over the chunk's heads and batches.
    fn count(&self, c: &Chunk) -> u64 {
        let (p0, p1) = self.rows(c);
        (c.nb * c.nkh * (p1 - p0)) as u64
    }
}

/// Plan a call: tiles, key splits, and chunks whose tensors fit the binding limit. Where one
/// query tile's tensors are over the limit, the register family retries with fewer query rows
/// per invocation before giving up.
pub fn plan(
    ctx: &Context,
    p: &Problem,
    attn: &Attention,
    table: Option<(usize, usize)>,
    q_layout: Layout,
    kv_layout: Layout,
) -> Result<Plan> {
    let family = match attn.kernel {
        Some(f) => f,
        None => crate::tune::family_for(ctx, p.head_dim, attn)?,
    };
    let mut tiles = TileConfig::for_family(ctx, family, p.head_dim, table.map(|(_, size)| size))?;
    loop {
        match plan_tiles(ctx, p, attn, table, q_layout, kv_layout, tiles) {
            Err(e @ Error::LimitExceeded { .. }) => match tiles.fewer_rows() {
                Some(fewer) => tiles = fewer,
                None => return Err(e),
            },
            planned => return planned,
        }
    }
}

/// [`plan`] with these tiles.
fn plan_tiles(
    ctx: &Context,
    p: &Problem,
    attn: &Attention,
    table: Option<(usize, usize)>,
    q_layout: Layout,
    kv_layout: Layout,
    tiles: TileConfig,
) -> Result<Plan> {
    let limits = ctx.limits();
    let rows = Rows::new(p.q_shape(), p.group(), tiles.bq as usize, table.is_none());
    let q_tiles = rows.tiles();
    // key tiles of the longest row of tiles
    let n_tiles = match table {
        Some((max_list, size)) => (max_list * size / tiles.bk as usize) as u32,
        None => p.kv_len.div_ceil(tiles.bk as usize) as u32,
    };

    let mut n_splits = match attn.num_splits {
        Some(n) => n.max(1),
        None => {
            let wgs = (p.batch * p.kv_heads * q_tiles) as u64;
            if wgs < MIN_WORKGROUPS && n_tiles >= 8 {
                (MIN_WORKGROUPS.div_ceil(wgs) as u32).min(n_tiles / 4)
            } else {
                1
            }
        }
    };
    let max_binding = limits.max_storage_buffer_binding_size;
    // K/V of one (batch, kv head) too large for one binding: without a block table (whose splits
    // visit scattered key blocks) each split binds only the window of its own keys, so the
    // splits are made short enough for that window to fit, and run as separate dispatches
    let head_kv = element_range(p.kv_shape(), kv_layout, 0, 1, 0, 1);
    let by_key_range = table.is_none() && window_bytes(ctx, head_kv.0, head_kv.1) > max_binding;
    let mut max_tiles_per_split = MAX_KEYS_PER_SPLIT / tiles.bk;
    if by_key_range {
        let [_, _, ss] = kv_layout.strides(p.kv_shape());
        let elements = (max_binding.saturating_sub(window_bytes(ctx, 0, 0)) / 4) as usize;
        let keys = elements.saturating_sub(p.head_dim).checked_div(ss).map_or(0, |k| k + 1);
        let fit_tiles = (keys / tiles.bk as usize) as u32;
        if fit_tiles == 0 {
            let bk = tiles.bk as usize;
            return Err(Error::LimitExceeded {
                what: format!("one key tile ({bk} keys, head dim {}) of K or V", p.head_dim),
                limit: "max_storage_buffer_binding_size",
                needed: window_bytes(ctx, 0, ((bk - 1) * ss + p.head_dim) as u64),
                available: max_binding,
            });
        }
        max_tiles_per_split = max_tiles_per_split.min(fit_tiles);
    }
    // more splits than the partial states of one query tile can hold in a binding only for the
    // splits that correctness needs (short enough loops, key ranges that fit)
    let partial_cap = (max_binding / (tiles.bq as u64 * p.head_dim as u64 * 4)).max(1) as u32;
    n_splits = n_splits.min(partial_cap).max(n_tiles.div_ceil(max_tiles_per_split)).clamp(1, n_tiles.max(1));
    let tiles_per_split = n_tiles.div_ceil(n_splits).max(1);
    let n_splits = n_tiles.div_ceil(tiles_per_split).max(1);
    let split_keys = (tiles_per_split * tiles.bk) as usize;

    let fits = |c: &Chunk| -> bool {
        let q = rows.range(q_layout, c);
        let kv = if by_key_range {
            key_range(p.kv_shape(), kv_layout, 0, 0, 0, split_keys.min(p.kv_len))
        } else {
            element_range(p.kv_shape(), kv_layout, c.b0, c.nb, c.kh0, c.nkh)
        };
        let lse = rows.lse_range(c);
        let partial = if n_splits > 1 { rows.count(c) * n_splits as u64 * p.head_dim as u64 * 4 } else { 0 };
        window_bytes(ctx, q.0, q.1) <= max_binding
            && window_bytes(ctx, kv.0, kv.1) <= max_binding
            && window_bytes(ctx, lse.0, lse.1) <= max_binding
            && partial <= max_binding
    };
    let whole = |b0, nb, kh0, nkh| Chunk { b0, nb, kh0, nkh, t0: 0, nt: q_tiles, s0: 0, ns: n_splits };
    let mut chunks = Vec::new();
    if !by_key_range && fits(&whole(0, p.batch, 0, p.kv_heads)) {
        chunks.push(whole(0, p.batch, 0, p.kv_heads));
    } else if !by_key_range && fits(&whole(0, 1, 0, p.kv_heads)) {
        let nb = (1..=p.batch).rev().find(|&nb| fits(&whole(0, nb, 0, p.kv_heads))).unwrap_or(1);
        chunks.extend((0..p.batch).step_by(nb).map(|b0| whole(b0, nb.min(p.batch - b0), 0, p.kv_heads)));
    } else if let Some(nkh) = (1..=p.kv_heads).rev().find(|&n| !by_key_range && fits(&whole(0, 1, 0, n))) {
        for b0 in 0..p.batch {
            chunks
                .extend((0..p.kv_heads).step_by(nkh).map(|kh0| whole(b0, 1, kh0, nkh.min(p.kv_heads - kh0))));
        }
    } else {
        // query-row ranges of one (batch, kv head): the longest run of tiles that fits, in turn;
        // by key range, each run once per split
        for b0 in 0..p.batch {
            for kh0 in 0..p.kv_heads {
                let mut t0 = 0;
                while t0 < q_tiles {
                    let chunk = |nt| Chunk { b0, nb: 1, kh0, nkh: 1, t0, nt, s0: 0, ns: n_splits };
                    let (mut lo, mut hi) = (0, q_tiles - t0); // largest nt in lo..=hi that fits
                    while lo < hi {
                        let mid = (lo + hi).div_ceil(2);
                        if fits(&chunk(mid)) {
                            lo = mid
                        } else {
                            hi = mid - 1
                        }
                    }
                    if lo == 0 {
                        let kv = element_range(p.kv_shape(), kv_layout, 0, 1, 0, 1);
                        return Err(Error::LimitExceeded {
                            what: format!(
                                "one query tile against one K/V head ({} keys, head dim {}{})",
                                p.kv_len,
                                p.head_dim,
                                if n_splits > 1 { format!(", {n_splits} key splits") } else { String::new() }
                            ),
                            limit: "max_storage_buffer_binding_size",
                            needed: window_bytes(ctx, kv.0, kv.1),
                            available: max_binding,
                        });
                    }
                    if by_key_range {
                        chunks.extend((0..n_splits).map(|s0| Chunk { s0, ns: 1, ..chunk(lo) }));
                    } else {
                        chunks.push(chunk(lo));
                    }
                    t0 += lo;
                }
            }
        }
    }
    Ok(Plan { tiles, n_splits, tiles_per_split, chunks })
}

/// Attention forward on device tensors: O (in Q's layout) and LSE, freshly allocated.
pub fn forward(ctx: &Context, q: &Tensor, k: &Tensor, v: &Tensor, attn: &Attention) -> Result<Output> {
    let p = attn.validate(q.shape, k.shape, v.shape)?;
    let out = Output {
        o: Tensor::zeros(ctx, p.q_shape(), q.layout)?,
        lse: Tensor::zeros(ctx, Shape::new(p.batch, p.q_heads, p.q_len, 1), Layout::Bhsd)?,
    };
    forward_into(ctx, q, k, v, attn, &out)?;
    Ok(out)
}

/// Attention forward into existing O and LSE tensors (O: Q's shape, any layout; LSE: shape
/// `[B, Hq, Nq, 1]`, BHSD). Reusing outputs avoids an allocation per call.
pub fn forward_into(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    attn: &Attention,
    out: &Output,
) -> Result<()> {
    for t in [q, k, v, &out.o, &out.lse] {
        t.check_context(ctx)?;
    }
    if k.layout != v.layout {
        return Err(Error::ShapeMismatch(format!(
            "K is in layout {:?} but V in {:?}: they must agree",
            k.layout, v.layout
        )));
    }
    let p = attn.validate(q.shape, k.shape, v.shape)?;
    if out.o.shape != p.q_shape() {
        return Err(Error::ShapeMismatch(format!("O is {} but Q is {}", out.o.shape, p.q_shape())));
    }
    let lse_shape = Shape::new(p.batch, p.q_heads, p.q_len, 1);
    if out.lse.shape != lse_shape {
        return Err(Error::ShapeMismatch(format!("LSE is {} but must be {lse_shape}", out.lse.shape)));
    }
    let (o, lse) = (&out.o, &out.lse);
    // a mask is lowered to a block table (a prebuilt one is used as it is)
    let built;
    let table: Option<&BlockMask> = match (&attn.block_mask, &attn.mask) {
        (Some(bm), None) => Some(bm),
        (None, None) => None,
        _ => {
            built = BlockMask::build(attn, p.dims(), attn.block_size.unwrap_or(64))?;
            Some(&built)
        }
    };
    // (longest list, block size) of the table the kernel walks, if any
    let table_shape = match (&attn.topk, table) {
        (Some(t), _) => Some((t.k + 2, t.block_size)),
        (None, Some(t)) => Some((t.max_list(), t.size)),
        (None, None) => None,
    };
    let plan = plan(ctx, &p, attn, table_shape, q.layout, k.layout)?;
    let g = p.group();
    let rows = Rows::new(p.q_shape(), g, plan.tiles.bq as usize, table_shape.is_none());

    // aux: per-batch key lengths, then ALiBi slopes as f32 bits
    let mut aux: Vec<u32> = match &attn.kv_lens {
        Some(l) => l.clone(),
        None => vec![p.kv_len as u32; p.batch],
    };
    let alibi_offset = aux.len() as u32;
    if let Some(s) = &attn.alibi_slopes {
        aux.extend(s.iter().map(|x| x.to_bits()));
    }
    let mut table_params = [0u32; 8];
    if let Some(t) = table {
        let lists_offset = aux.len() as u32;
        let mut start = 0u32;
        for list in &t.lists {
            aux.extend([start, list.len() as u32]);
            start += list.len() as u32;
        }
        let entries_offset = aux.len() as u32;
        for e in t.lists.iter().flatten() {
            aux.extend([e.key_block, e.bits.unwrap_or(u32::MAX)]);
        }
        let bits_offset = aux.len() as u32;
        aux.extend_from_slice(&t.bits);
        table_params = [
            1,
            t.size as u32,
            t.batch as u32,
            t.heads as u32,
            t.q_blocks as u32,
            lists_offset,
            entries_offset,
            bits_offset,
        ];
    }
    let mut topk_offsets = (0, 0);
    if let Some(t) = &attn.topk {
        // filled on the device by the top-k selection before the kernel runs
        let (lists_words, entries_words) = topk::table_words(&p, t);
        topk_offsets = (aux.len() as u32, (aux.len() + lists_words) as u32);
        aux.resize(aux.len() + lists_words + entries_words, 0);
        table_params = [
            1,
            t.block_size as u32,
            p.batch as u32,
            p.q_heads as u32,
            p.q_len.div_ceil(t.block_size) as u32,
            topk_offsets.0,
            topk_offsets.1,
            0,
        ];
    }
    let aux_bytes = (aux.len() * 4) as u64;
    if aux_bytes > ctx.limits().max_storage_buffer_binding_size {
        return Err(Error::LimitExceeded {
            what: "the block table and bitmaps of the mask".into(),
            limit: "max_storage_buffer_binding_size",
            needed: aux_bytes,
            available: ctx.limits().max_storage_buffer_binding_size,
        });
    }
    let aux = ctx.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("attention aux"),
        contents: bytemuck::cast_slice(&aux),
        usage: wgpu::BufferUsages::STORAGE,
    });

    // partial states for split key ranges, sized for the largest chunk
    let ns = plan.n_splits as u64;
    let partial = if ns > 1 {
        let max_rows = plan.chunks.iter().map(|c| rows.count(c)).max().unwrap_or(1);
        let o_bytes = max_rows * ns * p.head_dim as u64 * 4;
        check_buffer_size(ctx, "partial-output buffer", o_bytes)?;
        let make = |label, size| {
            ctx.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        Some((make("partial O", o_bytes), make("partial LSE", max_rows * ns * 4)))
    } else {
        None
    };

    ctx.set_last_kernel(plan.tiles);
    let (name, source) = plan.tiles.source();
    let variant = Variant::for_call(ctx, p.head_dim, attn, table);
    let pipeline = pipeline(ctx, name, source, &plan.tiles.params(variant))?;

    let timer = ctx.timer();
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    let result = ctx.scoped(|| -> Result<()> {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("attention forward"),
            timestamp_writes: timer.as_ref().map(|t| t.writes()),
        });
        if let Some(t) = &attn.topk {
            topk::encode(ctx, &mut pass, &p, attn, t, (q, k), &aux, topk_offsets)?;
        }
        for c in &plan.chunks {
            let (p0, _) = rows.rows(c);
            let kh = if c.ns < plan.n_splits {
                // cut by key range: only this split's keys (clamped to Nk) are bound
                let split_keys = (plan.tiles_per_split * plan.tiles.bk) as usize;
                let k0 = (c.s0 as usize * split_keys).min(p.kv_len - 1);
                let k1 = ((c.s0 + c.ns) as usize * split_keys).min(p.kv_len);
                key_range(p.kv_shape(), k.layout, c.b0, c.kh0, k0, k1)
            } else {
                element_range(p.kv_shape(), k.layout, c.b0, c.nb, c.kh0, c.nkh)
            };
            let qw = Window::new(ctx, &q.buffer, rows.range(q.layout, c));
            let kw = Window::new(ctx, &k.buffer, kh);
            let vw = Window::new(ctx, &v.buffer, kh);
            let ow = Window::new(ctx, &o.buffer, rows.range(o.layout, c));
            let lw = Window::new(ctx, &lse.buffer, rows.lse_range(c));
            let mut fp = ForwardParams {
                q_len: p.q_len as u32,
                kv_len: p.kv_len as u32,
                head_dim: p.head_dim as u32,
                group: g as u32,
                rows_per_head: rows.rph as u32,
                batch0: c.b0 as u32,
                batches: c.nb as u32,
                kv_head0: c.kh0 as u32,
                kv_heads: c.nkh as u32,
                q_tile0: c.t0 as u32,
                q_tiles: c.nt as u32,
                n_splits: c.ns,
                tiles_per_split: plan.tiles_per_split,
                split0: c.s0,
                causal: causal_code(attn),
                alibi_offset,
                scale: attn.scale_for(p.head_dim),
                softcap: attn.softcap.unwrap_or(1.0),
                q_base: qw.base,
                k_base: kw.base,
                v_base: vw.base,
                use_table: table_params[0],
                block_size: table_params[1],
                table_batch: table_params[2],
                table_heads: table_params[3],
                q_blocks: table_params[4],
                lists_offset: table_params[5],
                entries_offset: table_params[6],
                bits_offset: table_params[7],
                q_stride: strides4(q),
                k_stride: strides4(k),
                v_stride: strides4(v),
                ..Default::default()
            };
            let (o_res, lse_res);
            if let Some((po, pl)) = &partial {
                // partial states of packed row r = (b − b0, kv head − kh0, p − p0), in order:
                // O at (r·n_splits + split)·D + d, LSE at r·n_splits + split. Expressed by strides
                // over (batch, head, query, split): head h, query i is packed row (h − kh·G)·Nq + i.
                let (d, rph, nsu) = (p.head_dim as u32, rows.rph as u32, plan.n_splits);
                let (rows_per_kh, g) = ((rows.rows(c).1 - p0) as u32, g as u32);
                let row = [rows_per_kh * c.nkh as u32, rph, 1];
                let row0 = c.b0 as u32 * row[0] + (c.kh0 as u32 * g) * rph + p0 as u32;
                // (kv head stride within the chunk is rows_per_kh = G·R whenever nkh > 1)
                fp.o_stride = [row[0] * nsu * d, row[1] * nsu * d, nsu * d, d];
                fp.o_base = row0 * nsu * d;
                fp.lse_stride = [row[0] * nsu, row[1] * nsu, nsu, 1];
                fp.lse_base = row0 * nsu;
                o_res = po.as_entire_binding();
                lse_res = pl.as_entire_binding();
            } else {
                fp.o_stride = strides4(o);
                fp.o_base = ow.base;
                fp.lse_stride = [(p.q_heads * p.q_len) as u32, p.q_len as u32, 1, 0];
                fp.lse_base = lw.base;
                o_res = ow.binding(&o.buffer);
                lse_res = lw.binding(&lse.buffer);
            }
            let total = (c.nb * c.nkh * c.nt) as u64 * c.ns as u64;
            let uniform =
                |grid_x, wg_offset| bytemuck::bytes_of(&ForwardParams { grid_x, wg_offset, ..fp }).to_vec();
            let resources = [
                (1, qw.binding(&q.buffer)),
                (2, kw.binding(&k.buffer)),
                (3, vw.binding(&v.buffer)),
                (4, aux.as_entire_binding()),
                (5, o_res),
                (6, lse_res),
            ];
            dispatch_all(ctx, &mut pass, &pipeline, "flash forward", total, uniform, &resources);

            // merge once the chunk's rows have every split (the last key-range chunk of its rows)
            if let Some((po, pl)) = partial.as_ref().filter(|_| c.s0 + c.ns == plan.n_splits) {
                let mp = MergeParams {
                    rows: rows.count(c) as u32,
                    row0: p0 as u32,
                    rows_per_group: (rows.rows(c).1 - p0) as u32,
                    head_dim: p.head_dim as u32,
                    n_splits: plan.n_splits,
                    group: g as u32,
                    kv_heads: c.nkh as u32,
                    q_len: p.q_len as u32,
                    rows_per_head: rows.rph as u32,
                    batch0: c.b0 as u32,
                    kv_head0: c.kh0 as u32,
                    o_stride: strides4(o),
                    lse_stride_b: (p.q_heads * p.q_len) as u32,
                    lse_stride_h: p.q_len as u32,
                    ..Default::default()
                };
                let bufs =
                    MergeBuffers { part_o: po, part_lse: pl, o: (&o.buffer, ow), lse: (&lse.buffer, lw) };
                merge::encode(ctx, &mut pass, mp, &bufs)?;
            }
        }
        Ok(())
    });
    result??;
    if let Some(t) = &timer {
        t.resolve(&mut encoder);
    }
    ctx.submit_and_wait(encoder)?;
    match &timer {
        Some(t) => t.read(ctx),
        None => Ok(()),
    }
}
