//! Autotuning of the kernel family, keyed by problem class and adapter, cached on disk.
//!
//! The fastest fused-forward design differs by adapter (workgroup-memory tiles on a discrete GPU,
//! registers and subgroup broadcasts on lavapipe: docs/LAVAPIPE.md), so the family is
//! measured, not guessed from a vendor name. Tuning a [`TuneKey`] (adapter, driver,
//! wgpu version, kernels revision, compiled head dim, dtype, mask class), each candidate family runs a representative
//! problem (B1 H8 N1024, that head dim and mask class: one warm-up call, which also pays the
//! shader compilation, then the median of three, or one run alone when it is already over twice
//! the best so far) and the fastest is kept, in memory and in a small
//! text file (`$WGATTN_CACHE_DIR`, else `$XDG_CACHE_HOME/wgpu-attention`, else
//! `~/.cache/wgpu-attention`; file `tune.tsv`, a line `key<TAB>family`).
//!
//! The tuner sits above the kernels: it chooses a family ([`family_for`]) and hands it to the
//! launch, which plans with it; tuning runs whole forward calls of a named family, so the
//! kernels never call back into it. Controls are [`ContextOptions`](crate::ContextOptions)
//! fields: `kernel` forces a family (tests, reproducible benches); `tune` ([`Tuning`]) says
//! whether the cache is read (`Cached`, the default, and `OnFirstUse`) and whether a key it lacks
//! is measured inside the call that needs it (`OnFirstUse` only: by default no call ever waits
//! for tuning and a missing key takes [`default_family`], register on CPU adapters, tiled
//! elsewhere); `cache_dir` is where `tune.tsv` lives (`ContextOptions::from_env` reads
//! `WGATTN_KERNEL`, `WGATTN_TUNE`, `WGATTN_CACHE_DIR`). A call's own launch hint
//! [`Launch::kernel`](crate::attention::Launch::kernel) wins over all of them. `wgattn tune`
//! (or [`tune`] and [`remember`]) fills the cache on purpose.

use std::path::PathBuf;

use crate::attention::Attention;
use crate::context::{Context, Tuning};
use crate::error::Result;
use crate::kernels::flash::{default_family, Family};
// what measuring needs (native targets: it waits for the GPU)
#[cfg(not(target_arch = "wasm32"))]
use {
    crate::attention::{Causal, Layout, Shape},
    crate::kernels::flash::TileConfig,
    crate::record::forward,
    crate::mask::Mask,
    crate::tensor::Tensor,
    std::time::Instant,
};

/// The wgpu release the kernels are built against (part of the tuning key).
pub const WGPU_VERSION: &str = "30";

/// Revision of the kernels and the candidate list (part of the tuning key, so that a cache
/// written before a new candidate existed is measured again). 2: `register-wide`; 3: register
/// kernels shaped for 16-lane subgroups, keys scored KP at a time; 4: compiled head-dim sizes of
/// 32, vec4 Q and O.
pub const KERNELS_REVISION: u32 = 5;

/// Mask classes that may prefer different families.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MaskClass {
    /// No mask, or key padding only.
    Dense,
    /// Causal.
    Causal,
    /// A block table (masks, patterns, top-k).
    Table,
}

impl MaskClass {
    /// The class of a call's options.
    pub fn of(attn: &Attention) -> Self {
        if attn.mask.is_some() || attn.block_mask.is_some() || attn.topk.is_some() {
            MaskClass::Table
        } else if attn.causal.is_some() {
            MaskClass::Causal
        } else {
            MaskClass::Dense
        }
    }
    fn name(self) -> &'static str {
        match self {
            MaskClass::Dense => "dense",
            MaskClass::Causal => "causal",
            MaskClass::Table => "table",
        }
    }
}

/// What a tuning result is valid for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TuneKey {
    /// Adapter name, backend, driver and driver info.
    pub adapter: String,
    /// wgpu release.
    pub wgpu: &'static str,
    /// Head dim rounded up to a multiple of 32 (kernels specialise on the padded dim).
    pub head_dim: usize,
    /// Element type.
    pub dtype: &'static str,
    /// Mask class.
    pub mask: MaskClass,
}

impl TuneKey {
    /// The key of an f32 call on `ctx` (see [`TuneKey::with_dtype`]).
    pub fn new(ctx: &Context, head_dim: usize, mask: MaskClass) -> Self {
        let i = &ctx.adapter().info;
        Self {
            adapter: format!("{} ({:?}, {}, {})", i.name, i.backend, i.driver, i.driver_info),
            wgpu: WGPU_VERSION,
            head_dim: head_dim.div_ceil(32) * 32,
            dtype: crate::DType::F32.name(),
            mask,
        }
    }
    /// The key for tensors of `dtype` (each dtype is its own kernel, tuned on its own).
    pub fn with_dtype(self, dtype: crate::DType) -> Self {
        Self { dtype: dtype.name(), ..self }
    }

    fn line_key(&self) -> String {
        let (a, w, d, t, m) = (&self.adapter, self.wgpu, self.head_dim, self.dtype, self.mask.name());
        format!("{a}|wgpu{w}|k{KERNELS_REVISION}|d{d}|{t}|{m}").replace(['\t', '\n'], " ")
    }
}

/// The families worth timing on this adapter.
pub fn candidates(ctx: &Context) -> Vec<Family> {
    let subgroups = ctx.adapter().features.contains(wgpu::Features::SUBGROUP);
    let cpu = ctx.adapter().info.device_type == wgpu::DeviceType::Cpu;
    let mut c = vec![Family::Tiled];
    // on a CPU adapter every load is a per-lane loop, so loading K/V rows in every invocation
    // (register-nosubgroup) only adds loads to the subgroup kernel: not worth its compile time
    // there (lavapipe, D64, `wgattn tune`: 92.6 vs 35.0 ms); on GPUs a broadcast load may beat a
    // shuffle
    if !(cpu && subgroups) {
        c.push(Family::Register { subgroups: false, wide: false });
    }
    if subgroups {
        c.push(Family::Register { subgroups: true, wide: false });
    }
    // the wide register kernel pays for its fewer loads with ~3× the compile time: only where
    // the register family is the natural choice (CPU adapters), where loads bound the speed
    if cpu {
        c.push(Family::Register { subgroups, wide: true });
    }
    // the adapter's default first: the others stop after one run when clearly slower than it
    if let Some(i) = c.iter().position(|f| *f == default_family(ctx)) {
        let d = c.remove(i);
        c.insert(0, d);
    }
    c
}

/// The cache file of `ctx` (see the module docs), if it has a cache folder.
pub fn cache_file(ctx: &Context) -> Option<PathBuf> {
    Some(ctx.options().cache_dir.as_ref()?.join("tune.tsv"))
}

fn read_cache(ctx: &Context, key: &TuneKey) -> Option<Family> {
    let text = std::fs::read_to_string(cache_file(ctx)?).ok()?;
    let k = key.line_key();
    text.lines().rev().find_map(|l| {
        let (lk, fam) = l.split_once('\t')?;
        if lk == k {
            Family::from_name(fam).ok()
        } else {
            None
        }
    })
}

/// Write `family` as the choice for `key` to `ctx`'s disk cache (later entries win).
pub fn remember(ctx: &Context, key: &TuneKey, family: Family) {
    let Some(path) = cache_file(ctx) else { return };
    let line = format!("{}\t{}\n", key.line_key(), family.name());
    let result = std::fs::create_dir_all(path.parent().unwrap_or(&path)).and_then(|()| {
        use std::io::Write;
        std::fs::OpenOptions::new().create(true).append(true).open(&path)?.write_all(line.as_bytes())
    });
    if let Err(e) = result {
        log::warn!("could not write the tuning cache {}: {e}", path.display());
    }
}

/// The family for a call: its launch hint [`Launch::kernel`](crate::attention::Launch::kernel),
/// else the context's [`kernel`](crate::ContextOptions::kernel), else as the context's
/// [`Tuning`] says: the adapter's rule ([`default_family`]) with `Off`; otherwise the choice the
/// tuning cache holds for the call's key, and for a key it lacks the adapter's rule (`Cached`)
/// or a measurement made now and written to the cache (`OnFirstUse`).
pub fn family_for(ctx: &Context, head_dim: usize, dtype: crate::DType, attn: &Attention) -> Result<Family> {
    if let Some(f) = attn.launch.kernel.or(ctx.options().kernel) {
        return Ok(f);
    }
    let tuning = ctx.options().tune;
    if tuning == Tuning::Off {
        return Ok(default_family(ctx));
    }
    let key = TuneKey::new(ctx, head_dim, MaskClass::of(attn)).with_dtype(dtype);
    if let Some(f) = ctx.tuned.lock().unwrap().get(&key) {
        return Ok(*f);
    }
    let family = match (read_cache(ctx, &key), tuning) {
        (Some(f), _) => f,
        (None, Tuning::OnFirstUse) => measure(ctx, &key)?,
        (None, _) => default_family(ctx),
    };
    // the cache file is read once per key and context
    ctx.tuned.lock().unwrap().insert(key, family);
    Ok(family)
}

/// Tune `key` now and remember the choice.
#[cfg(not(target_arch = "wasm32"))]
fn measure(ctx: &Context, key: &TuneKey) -> Result<Family> {
    let (f, _) = tune(ctx, key)?;
    remember(ctx, key, f);
    Ok(f)
}

/// No clock to time candidates with on the web (yet): the adapter's default.
#[cfg(target_arch = "wasm32")]
fn measure(ctx: &Context, _key: &TuneKey) -> Result<Family> {
    Ok(default_family(ctx))
}

/// Each candidate's median time in milliseconds (None where it could not run).
pub type Timings = Vec<(Family, Option<f64>)>;

/// Time every candidate family on the representative problem of `key` (native targets); returns the fastest and
/// every candidate's timing.
#[cfg(not(target_arch = "wasm32"))]
pub fn tune(ctx: &Context, key: &TuneKey) -> Result<(Family, Timings)> {
    let (n, heads, d) = (1024, 8, key.head_dim.min(crate::MAX_HEAD_DIM));
    let shape = Shape::new(1, heads, n, d);
    let data: Vec<f32> = (0..shape.len()).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let host = crate::HostTensor::new(data, shape, Layout::Bhsd)?;
    let t = Tensor::upload_as(ctx, &host, crate::DType::parse(key.dtype).unwrap_or_default())?;
    let base = match key.mask {
        MaskClass::Dense => Attention::new(),
        MaskClass::Causal => Attention::new().causal(Causal::BottomRight),
        MaskClass::Table => Attention::new().mask(Mask::window(128, 0)).causal(Causal::BottomRight),
    };
    let mut times = Vec::new();
    for family in candidates(ctx) {
        if TileConfig::for_family(ctx, family, d, (key.mask == MaskClass::Table).then_some(64)).is_err() {
            times.push((family, None));
            continue;
        }
        let attn = base.clone().kernel(family);
        let run = || -> Result<f64> {
            let start = Instant::now();
            forward(ctx, &t, &t, &t, &attn)?;
            ctx.wait_idle()?;
            Ok(start.elapsed().as_secs_f64() * 1e3)
        };
        let best = times.iter().filter_map(|(_, t)| *t).min_by(f64::total_cmp);
        let timed = run().and_then(|_| {
            let first = run()?;
            if best.is_some_and(|b| first > 2.0 * b) {
                return Ok(first); // clearly slower: no need for a median
            }
            let mut ms = [first, run()?, run()?];
            ms.sort_by(f64::total_cmp);
            Ok(ms[1])
        });
        match timed {
            Ok(ms) => times.push((family, Some(ms))),
            Err(e) => {
                log::warn!("tuning: {} failed: {e}", family.name());
                times.push((family, None));
            }
        }
    }
    let best = times
        .iter()
        .filter_map(|(f, t)| t.map(|t| (*f, t)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map_or_else(|| default_family(ctx), |(f, _)| f);
    log::info!("tuned {key:?}: {times:?} -> {}", best.name());
    Ok((best, times))
}
