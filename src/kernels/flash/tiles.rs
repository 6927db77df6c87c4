//! The fused forward's kernel families and their specialisations: which WGSL source, which tiles
//! for a head dim on an adapter, and the template parameters and variant flags a pipeline is
//! compiled with.

use crate::attention::Attention;
use crate::context::Context;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::mask::BlockMask;
use crate::shader::Params;

const SOURCE: &str = include_str!("../../../shaders/flash_forward.wgsl");

/// Head dims are compiled in steps of this many elements: a kernel specialised for head dim
/// `D` (a multiple of 32 up to [`crate::MAX_HEAD_DIM`]: 32, 64, 96, …, 256) serves every head dim
/// in `D − 31..=D`, the elements past the call's head dim masked at run time, as
/// FlashAttention compiles a fixed set of head dims. So an application with odd head dims
/// compiles at most 8 sizes per kernel variant, and a second head dim in a size already
/// compiled costs no compilation.
pub const HEAD_DIM_STEP: usize = 32;

/// The head dim a kernel for `head_dim` is compiled for: `head_dim` rounded up to a multiple of
/// [`HEAD_DIM_STEP`].
pub fn compiled_head_dim(head_dim: usize) -> usize {
    head_dim.max(1).div_ceil(HEAD_DIM_STEP) * HEAD_DIM_STEP
}
const REGISTER_SOURCE: &str = include_str!("../../../shaders/flash_register.wgsl");

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

/// Every family, in the order [`Family::name`] lists them.
pub const FAMILIES: [Family; 5] = [
    Family::Tiled,
    Family::Register { subgroups: true, wide: false },
    Family::Register { subgroups: true, wide: true },
    Family::Register { subgroups: false, wide: false },
    Family::Register { subgroups: false, wide: true },
];

impl Family {
    /// The family's name (`WGATTN_KERNEL`, `wgattn --kernel`): `tiled`, `register`, `register-wide`,
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

    /// Parse a [`Family::name`].
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
    /// The head dim compiled for ([`compiled_head_dim`]); a call's own head dim may be up to
    /// 31 less.
    pub d_pad: u32,
}

/// What a call compiles into its kernel besides the tiles: how K and V are read and which score
/// terms exist. Each combination is its own pipeline, so a term the call does not use costs
/// nothing in the inner loop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Variant {
    /// Q, K, V and O are accessed as vec4s: the head dim is a multiple of 4 (so are all strides
    /// and offsets) and binding windows start 16-byte aligned.
    pub vec4: bool,
    /// Logit soft-capping.
    pub softcap: bool,
    /// ALiBi biases.
    pub alibi: bool,
    /// A block table with partial blocks, whose bitmaps the kernel tests per element.
    pub bitmaps: bool,
    /// The element type of Q, K and V.
    pub qkv: DType,
    /// The element type of O.
    pub o: DType,
}

impl Variant {
    /// The variant of a call with head dim `head_dim`, options `attn` and block table `table`;
    /// `aligned`: Q's, K's, V's and O's offsets and strides are multiples of 4 elements.
    pub fn for_call(
        ctx: &Context,
        head_dim: usize,
        attn: &Attention,
        table: Option<&BlockMask>,
        aligned: bool,
        (qkv, o): (DType, DType),
    ) -> Self {
        Self {
            qkv,
            o,
            vec4: head_dim.is_multiple_of(4)
                && aligned
                && ctx.limits().min_storage_buffer_offset_alignment.is_multiple_of(16),
            softcap: attn.softcap.is_some(),
            alibi: attn.alibi_slopes.is_some(),
            bitmaps: table.is_some_and(|t| !t.bits.is_empty()),
        }
    }

    fn params(&self) -> [(&'static str, u32); 6] {
        [
            ("VEC4", self.vec4 as u32),
            ("SOFTCAP", self.softcap as u32),
            ("ALIBI", self.alibi as u32),
            ("BITS", self.bitmaps as u32),
            ("QKV_TYPE", self.qkv.shader_code()),
            ("O_TYPE", self.o.shader_code()),
        ]
    }
}

impl TileConfig {
    /// Tiled family: the largest tiles that fit the adapter's workgroup memory and invocations.
    pub fn choose(head_dim: usize, limits: &wgpu::Limits) -> Result<Self> {
        let head_dim = compiled_head_dim(head_dim);
        let tpr = if head_dim <= 64 { 4 } else { 8 };
        // a multiple of 32, so of 4·tpr
        let d_pad = compiled_head_dim(head_dim) as u32;
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
        let head_dim = compiled_head_dim(head_dim);
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
            d_pad: compiled_head_dim(head_dim) as u32,
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

    /// The register specialisation a first call runs while this one compiles in the background
    /// ([`crate::FirstCall::Quick`]): half the query rows and key blocks of at most 8, so that
    /// LLVM has a half to a quarter of the code to compile (it unrolls KB·DV·R
    /// multiply-adds per key block: docs/COMPILE.md). None: tiled, or nothing left to cut.
    pub fn quick(&self) -> Option<Self> {
        let mut quick = self.fewer_rows().unwrap_or(*self);
        // (4-key blocks compile no faster at head dim 256: the private arrays of DV vec4s dominate)
        if quick.bk > 8 {
            quick.bk = 8;
            quick.kp = quick.kp.min(8);
        }
        (quick != *self).then_some(quick)
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
                // Q and K/V tiles of d_pad elements a row, S and P of bq × bk
                let elements = (self.bq + self.bk) * self.d_pad + 2 * self.bq * self.bk;
                DType::F32.bytes(elements as u64) as u32
            }
            Family::Register { .. } => 0,
        }
    }

    /// The WGSL of this specialisation in `variant` (validated by naga).
    pub fn specialised_source(&self, variant: Variant) -> Result<String> {
        let (name, source) = self.source();
        crate::shader::specialise(name, source, &self.params(variant))
    }

    pub(crate) fn source(&self) -> (&'static str, &'static str) {
        match self.family {
            Family::Tiled => ("flash_forward.wgsl", SOURCE),
            Family::Register { .. } => ("flash_register.wgsl", REGISTER_SOURCE),
        }
    }

    pub(crate) fn params(&self, variant: Variant) -> Params {
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

/// The adapter's default family: register on CPU adapters (lavapipe, SwiftShader: workgroup
/// memory is slow there, see LAVAPIPE.md), with subgroups when the adapter has them; tiled on
/// GPUs.
pub fn default_family(ctx: &Context) -> Family {
    let a = ctx.adapter();
    let subgroups = a.features.contains(wgpu::Features::SUBGROUP);
    match a.info.device_type {
        wgpu::DeviceType::Cpu => Family::Register { subgroups, wide: false },
        _ => Family::Tiled,
    }
}
