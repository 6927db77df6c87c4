//! The GPU context: adapter choice, a device with the adapter's real limits, the queue, the
//! pipeline cache (typed keys), allocation accounting, submission with its error scopes and the
//! read-back. It holds no per-call state: what a call ran comes back with its output, so one
//! `Context` (`Send + Sync`) is shared by reference or `Arc` between threads.
//!
//! Configuration is [`ContextOptions`]; [`ContextOptions::from_env`] is the one place that reads
//! the `WGATTN_*` environment variables.
//!
//! Adapter choice: every adapter of the allowed backends is listed and the best ranked one is taken
//! (discrete > integrated > virtual > CPU; Vulkan, Metal and DX12 before GL). Two environment
//! variables override it:
//! - `WGATTN_BACKEND`: a comma list of `vulkan`, `metal`, `dx12`, `gl` (default: all);
//! - `WGATTN_ADAPTER`: a case-insensitive substring of the adapter's name (e.g. `llvmpipe`).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::kernels::flash::Family;
use crate::shader::Params;

static NEXT_CONTEXT_ID: AtomicU64 = AtomicU64::new(1);

/// How to open a context and how its calls choose kernels. [`ContextOptions::from_env`] reads
/// the `WGATTN_*` overrides; [`Context::new`] uses it.
///
/// ```
/// use wgpu_attention::{ContextOptions, Family};
/// use wgpu_attention::Tuning;
/// let options = ContextOptions::default().kernel(Family::Tiled).tune(Tuning::Off).gpu_timing(true);
/// assert_eq!(options.kernel, Some(Family::Tiled));
/// ```
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct ContextOptions {
    /// Backends to consider.
    pub backends: wgpu::Backends,
    /// Case-insensitive substring the adapter's name must contain.
    pub adapter_name: Option<String>,
    /// Ask the device for these limits instead of the adapter's own (each value is capped at the
    /// adapter's). Lower limits make the splitting paths testable on any machine.
    pub limits: Option<wgpu::Limits>,
    /// Treat the adapter's smallest subgroup as this size (at most the real one): kernels then
    /// broadcast across fewer lanes, as they would on such an adapter. For tests.
    pub subgroup_min_size: Option<u32>,
    /// Run this fused-forward family for every call (unless the call's own launch hint names
    /// one); `None` lets the tuner or the adapter's default choose.
    pub kernel: Option<Family>,
    /// How a call's kernel family is chosen when neither the call nor [`ContextOptions::kernel`]
    /// names one. The default, [`Tuning::Cached`], never measures inside a call.
    pub tune: Tuning,
    /// Folder of the tuning cache file (`tune.tsv`); `None` keeps choices in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Time each call's GPU work with timestamp queries (where the adapter has
    /// `TIMESTAMP_QUERY`); the time comes back in the call's [`crate::CallInfo`].
    pub gpu_timing: bool,
    /// What a call does when the kernel it needs has not been compiled yet (on CPU adapters,
    /// where that takes seconds). The default, [`FirstCall::Quick`], runs a kernel that compiles
    /// faster while the full one compiles in the background.
    pub first_call: FirstCall,
}

/// What a call does on a CPU adapter (lavapipe) when the fused-forward kernel it needs was
/// never compiled on this machine ([`ContextOptions::first_call`], `WGATTN_FIRST_CALL`).
///
/// A new head-dim size costs 7 to 21 s of LLVM compile on lavapipe (docs/COMPILE.md), most of
/// it growing with the query rows each invocation keeps in registers. GPUs, calls that name
/// their kernel family ([`crate::Attention::kernel`], [`ContextOptions::kernel`]) and
/// [`Context::warm_up`] always wait for the kernel they need.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FirstCall {
    /// Run the register kernel with half the query rows per invocation, which compiles in about
    /// half the time and runs 15–25% slower, while a background thread compiles the full kernel
    /// on a second device; calls switch to the full kernel once it is compiled (building it then
    /// takes about a second, from Mesa's disk cache). A kernel compiled on this machine before
    /// is used at once. Dropping the context waits for a compile in progress.
    /// `WGATTN_FIRST_CALL=quick` (or unset).
    #[default]
    Quick,
    /// Compile the kernel the call needs and wait for it: every call runs the kernel a warm
    /// context would (benchmarks, `wgattn check`, the test suite). `WGATTN_FIRST_CALL=wait`.
    Wait,
}

impl FirstCall {
    /// Parse `quick` or `wait` (case-insensitive).
    pub fn from_name(name: &str) -> Result<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "quick" => Ok(FirstCall::Quick),
            "wait" => Ok(FirstCall::Wait),
            other => {
                Err(Error::InvalidOption(format!("WGATTN_FIRST_CALL `{other}`: expected quick or wait")))
            }
        }
    }
}

/// How calls that name no kernel family get one ([`ContextOptions::tune`], `WGATTN_TUNE`).
///
/// Tuning times every candidate family on a representative problem, which compiles 3 to 5
/// pipelines per (head dim, mask class): seconds to minutes on a software adapter. So a call
/// never tunes unless its context was opened with [`Tuning::OnFirstUse`]; the tuning cache is
/// filled on purpose by `wgattn tune` or [`crate::tune::tune`] (with the `unstable` feature).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Tuning {
    /// The tuning cache's choice where it has the call's key, else the adapter's rule
    /// ([`crate::kernels::flash::default_family`]: register on CPU adapters, tiled on GPUs). Never
    /// measures. `WGATTN_TUNE=cached` (or unset).
    #[default]
    Cached,
    /// Like `Cached`, but a key the cache lacks is measured in the call that first needs it
    /// (which waits for it) and written to the cache. `WGATTN_TUNE=on`.
    OnFirstUse,
    /// The adapter's rule only; the cache is not read (reproducible runs). `WGATTN_TUNE=off`.
    Off,
}

impl Tuning {
    /// Parse `cached`, `on` or `off` (case-insensitive).
    pub fn from_name(name: &str) -> Result<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "cached" => Ok(Tuning::Cached),
            "on" => Ok(Tuning::OnFirstUse),
            "off" => Ok(Tuning::Off),
            other => Err(Error::InvalidOption(format!("WGATTN_TUNE `{other}`: expected cached, on or off"))),
        }
    }
}

impl Default for ContextOptions {
    fn default() -> Self {
        Self {
            backends: wgpu::Backends::all(),
            adapter_name: None,
            limits: None,
            subgroup_min_size: None,
            kernel: None,
            tune: Tuning::Cached,
            cache_dir: None,
            gpu_timing: false,
            first_call: FirstCall::Quick,
        }
    }
}

impl ContextOptions {
    /// Defaults overridden by the environment: `WGATTN_BACKEND` (a comma list of `vulkan`,
    /// `metal`, `dx12`, `gl`), `WGATTN_ADAPTER` (a substring of the adapter's name),
    /// `WGATTN_KERNEL` (a [`Family::name`]), `WGATTN_TUNE` (`cached`, the default; `on`; `off`:
    /// see [`Tuning`]), `WGATTN_FIRST_CALL` (`quick`, the default, or `wait`: see [`FirstCall`]),
    /// and the tuning cache folder
    /// `WGATTN_CACHE_DIR`, else `$XDG_CACHE_HOME/wgpu-attention`, else
    /// `~/.cache/wgpu-attention`. An unknown `WGATTN_KERNEL` or `WGATTN_TUNE` is an error.
    pub fn from_env() -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let mut o = Self::default();
        if let Some(b) = var("WGATTN_BACKEND") {
            o.backends = wgpu::Backends::from_comma_list(&b);
        }
        o.adapter_name = var("WGATTN_ADAPTER");
        o.kernel = var("WGATTN_KERNEL").map(|k| Family::from_name(&k)).transpose()?;
        o.tune = var("WGATTN_TUNE").map(|t| Tuning::from_name(&t)).transpose()?.unwrap_or_default();
        o.first_call =
            var("WGATTN_FIRST_CALL").map(|t| FirstCall::from_name(&t)).transpose()?.unwrap_or_default();
        o.cache_dir = var("WGATTN_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| var("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("wgpu-attention")))
            .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache").join("wgpu-attention")));
        Ok(o)
    }

    /// Set [`ContextOptions::backends`].
    pub fn backends(mut self, backends: wgpu::Backends) -> Self {
        self.backends = backends;
        self
    }
    /// Set [`ContextOptions::adapter_name`].
    pub fn adapter_name(mut self, name: impl Into<String>) -> Self {
        self.adapter_name = Some(name.into());
        self
    }
    /// Set [`ContextOptions::limits`].
    pub fn limits(mut self, limits: wgpu::Limits) -> Self {
        self.limits = Some(limits);
        self
    }
    /// Set [`ContextOptions::subgroup_min_size`].
    pub fn subgroup_min_size(mut self, lanes: u32) -> Self {
        self.subgroup_min_size = Some(lanes);
        self
    }
    /// Set [`ContextOptions::kernel`].
    pub fn kernel(mut self, family: Family) -> Self {
        self.kernel = Some(family);
        self
    }
    /// Set [`ContextOptions::tune`].
    pub fn tune(mut self, tune: Tuning) -> Self {
        self.tune = tune;
        self
    }
    /// Set [`ContextOptions::cache_dir`].
    pub fn cache_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.cache_dir = dir;
        self
    }
    /// Set [`ContextOptions::gpu_timing`].
    pub fn gpu_timing(mut self, on: bool) -> Self {
        self.gpu_timing = on;
        self
    }
    /// Set [`ContextOptions::first_call`].
    pub fn first_call(mut self, first_call: FirstCall) -> Self {
        self.first_call = first_call;
        self
    }
}

/// Asks Mesa's software rasteriser (llvmpipe, and lavapipe, its Vulkan driver) for 512-bit
/// vectors on a CPU with AVX-512: sets `LP_NATIVE_VECTOR_WIDTH=512` unless the variable is
/// already set, and returns whether it did. llvmpipe defaults to 256 bits; at 512 its subgroups
/// have 16 lanes and the register kernels get AVX-512's 32 vector registers, which on the Zen 4
/// machine of docs/LAVAPIPE.md made the fused forward 1.5× faster (D 64, N 4096). The adapter's
/// name then ends in "512 bits", so the tuning cache keeps the two apart. Mesa's disk shader
/// cache does not: its key has no vector width, and it serves a kernel compiled at one width to a
/// process at the other (correct results, the other width's speed: the decode kernel compiled at
/// 512 bits ran 88 ms in a 256-bit process where its own compile ran 44.5, docs/LAVAPIPE.md). So
/// where it sets the width this also points `MESA_SHADER_CACHE_DIR`, unless set, at a folder of
/// the 512-bit binaries' own (`$XDG_CACHE_HOME/mesa-512-bit`, else `~/.cache/mesa-512-bit`; Mesa
/// adds `mesa_shader_cache` below it). Whoever sets `LP_NATIVE_VECTOR_WIDTH` themselves should
/// give each width its own `MESA_SHADER_CACHE_DIR` too. No effect on other adapters, or once the
/// driver is loaded (it reads the variables once): call it first thing in `main`. `wgattn` does.
///
/// ```
/// // first in main: SAFETY: no other thread exists yet
/// let asked = unsafe { wgpu_attention::prefer_wide_cpu_vectors() };
/// // set now, by this call or by the user before it
/// assert!(!asked || std::env::var("LP_NATIVE_VECTOR_WIDTH").is_ok_and(|v| v == "512"));
/// ```
///
/// # Safety
/// Writes the process environment: no other thread may read or write it at the same time
/// (see [`std::env::set_var`]).
pub unsafe fn prefer_wide_cpu_vectors() -> bool {
    const VAR: &str = "LP_NATIVE_VECTOR_WIDTH";
    if std::env::var_os(VAR).is_some() || !cpu_has_avx512() {
        return false;
    }
    std::env::set_var(VAR, "512");
    const CACHE: &str = "MESA_SHADER_CACHE_DIR";
    if std::env::var_os(CACHE).is_none() {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")));
        if let Some(base) = base {
            std::env::set_var(CACHE, base.join("mesa-512-bit"));
        }
    }
    true
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_avx512() -> bool {
    false
}

/// What the library knows about the adapter it runs on.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// wgpu's adapter information (name, backend, driver, ...).
    pub info: wgpu::AdapterInfo,
    /// Features enabled on the device (the useful subset the adapter has).
    pub features: wgpu::Features,
    /// The device's limits (the adapter's real ones, not WebGPU's defaults).
    pub limits: wgpu::Limits,
}

/// The device-side state shared by every call.
pub struct Context {
    pub(crate) id: u64,
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    summary: AdapterSummary,
    options: ContextOptions,
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
    /// The driver's pipeline cache, persisted in the cache folder (where the adapter has one).
    pipeline_cache: Option<PipelineCache>,
    /// naga's parses of specialised kernels, persisted in the cache folder.
    #[cfg(all(feature = "parse-cache", not(target_arch = "wasm32")))]
    parse_cache: Option<crate::parse_cache::ParseCache>,
    lost: Arc<Mutex<Option<String>>>,
    uncaptured: Arc<Mutex<Option<Uncaptured>>>,
    allocated: AtomicU64,
    /// The tuner's choices of this context (`crate::tune` owns their meaning).
    pub(crate) tuned: Mutex<HashMap<crate::tune::TuneKey, Family>>,
    /// Kernels compiled on a second device while calls run a faster-compiling one
    /// ([`FirstCall::Quick`]); declared last, so dropping the context waits for it after
    /// everything above is gone.
    pub(crate) background: crate::background::Background,
}

/// An error reported outside an error scope, as the device's handler keeps it: the error itself
/// where wgpu's errors are `Send` (native), its message on the web.
#[cfg(not(target_arch = "wasm32"))]
type Uncaptured = wgpu::Error;
#[cfg(not(target_arch = "wasm32"))]
fn keep_uncaptured(e: wgpu::Error) -> Uncaptured {
    e
}
#[cfg(not(target_arch = "wasm32"))]
fn reported(e: Uncaptured) -> wgpu::Error {
    e
}
#[cfg(target_arch = "wasm32")]
type Uncaptured = String;
#[cfg(target_arch = "wasm32")]
fn keep_uncaptured(e: wgpu::Error) -> Uncaptured {
    e.to_string()
}
#[cfg(target_arch = "wasm32")]
fn reported(description: Uncaptured) -> wgpu::Error {
    wgpu::Error::Validation { source: Box::new(std::io::Error::other(description.clone())), description }
}

/// What identifies a compiled pipeline: the shader file, its entry point and the template
/// parameters it was specialised with.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PipelineKey {
    pub shader: &'static str,
    pub entry: &'static str,
    pub params: Params,
}

/// The driver's pipeline cache (wgpu's `PIPELINE_CACHE`: Vulkan drivers) and the file it is
/// kept in: `<cache folder>/pipelines-<wgpu's key>-<hash of the adapter's name and driver>-wgpu<release>.bin`.
/// Read when the context opens, written again after each new pipeline.
struct PipelineCache {
    cache: wgpu::PipelineCache,
    path: PathBuf,
    /// The context's id, in the temporary file's name (two contexts of one process may save).
    context: u64,
}

impl PipelineCache {
    fn open(
        device: &wgpu::Device,
        info: &wgpu::AdapterInfo,
        features: wgpu::Features,
        dir: Option<&std::path::Path>,
        context: u64,
    ) -> Option<Self> {
        if !features.contains(wgpu::Features::PIPELINE_CACHE) {
            return None;
        }
        let key = wgpu::util::pipeline_cache_key(info)?;
        // wgpu's key is the vendor and device ids, which llvmpipe at 256 and at 512 bits share
        // (`LP_NATIVE_VECTOR_WIDTH`), and the driver takes the other width's binaries from it:
        // measured, a 256-bit decode kernel served to a 512-bit device. The adapter's name (it
        // says the width) and driver strings keep them apart.
        let adapter =
            crate::shader::fnv1a(format!("{}|{}|{}", info.name, info.driver, info.driver_info).as_bytes());
        let path = dir?.join(format!("pipelines-{key}-{adapter:016x}-wgpu{}.bin", crate::tune::WGPU_VERSION));
        let data = std::fs::read(&path).ok();
        // SAFETY: the data is what `get_data` wrote for an adapter of the same key (the file name),
        // and `fallback` makes the driver start empty if it rejects it.
        let cache = unsafe {
            device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                label: Some("wgpu-attention pipelines"),
                data: data.as_deref(),
                fallback: true,
            })
        };
        Some(Self { cache, path, context })
    }

    /// Write the cache's data to its file (through a temporary file, so a reader never sees half).
    fn save(&self) {
        let Some(data) = self.cache.get_data() else { return };
        let tmp = self.path.with_extension(format!("tmp{}-{}", std::process::id(), self.context));
        let result = std::fs::create_dir_all(self.path.parent().unwrap_or(&self.path))
            .and_then(|()| std::fs::write(&tmp, &data))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = result {
            log::warn!("could not write the pipeline cache {}: {e}", self.path.display());
        }
    }
}

/// Whether kernels for this adapter compile in the background ([`FirstCall::Quick`]): CPU
/// adapters on Vulkan (lavapipe, whose compiles take seconds and whose disk cache serves a second
/// device), on native targets.
fn background_compiles_on(info: &wgpu::AdapterInfo) -> bool {
    cfg!(not(target_arch = "wasm32"))
        && info.device_type == wgpu::DeviceType::Cpu
        && info.backend == wgpu::Backend::Vulkan
}

/// Poll `f` once without blocking: its output if it is already ready.
pub(crate) fn ready_now<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

fn rank(info: &wgpu::AdapterInfo) -> (u32, u32) {
    let ty = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 4,
        wgpu::DeviceType::IntegratedGpu => 3,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 1,
        wgpu::DeviceType::Other => 0,
    };
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 2,
        wgpu::Backend::Gl => 1,
        _ => 0,
    };
    (ty, backend)
}

impl Context {
    /// Open the best adapter with the options of the environment ([`ContextOptions::from_env`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new() -> Result<Self> {
        Self::with_options(&ContextOptions::from_env()?)
    }

    /// Open an adapter chosen by `options`, waiting for it (native targets; on the web use
    /// [`Context::new_async`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_options(options: &ContextOptions) -> Result<Self> {
        pollster::block_on(Self::new_async(options))
    }

    /// Open an adapter chosen by `options`.
    pub async fn new_async(options: &ContextOptions) -> Result<Self> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: options.backends,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapters = instance.enumerate_adapters(options.backends).await;
        let found: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?})", i.name, i.backend)
            })
            .collect();
        let wanted = options.adapter_name.as_ref().map(|n| n.to_lowercase());
        let adapter = adapters
            .into_iter()
            .filter(|a| {
                let info = a.get_info();
                wanted.as_ref().is_none_or(|w| info.name.to_lowercase().contains(w))
                    && a.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
            })
            .max_by_key(|a| rank(&a.get_info()))
            .ok_or_else(|| Error::NoAdapter {
                detail: format!(
                    "backends {:?}{}; adapters present: {}",
                    options.backends,
                    wanted.as_ref().map(|w| format!(", name containing `{w}`")).unwrap_or_default(),
                    if found.is_empty() { "none".to_string() } else { found.join(", ") }
                ),
            })?;
        let mut info = adapter.get_info();
        if let Some(s) = options.subgroup_min_size {
            info.subgroup_min_size = info.subgroup_min_size.min(s.max(1));
        }
        let wanted_features = wgpu::Features::SUBGROUP
            | wgpu::Features::SHADER_F16
            | wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::PIPELINE_CACHE;
        let features = adapter.features() & wanted_features;
        let limits = match &options.limits {
            Some(wanted) => wanted.clone().or_worse_values_from(&adapter.limits()),
            None => adapter.limits(),
        };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("wgpu-attention"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(Error::RequestDevice)?;
        let lost = Arc::new(Mutex::new(None));
        let lost_cb = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            *lost_cb.lock().unwrap() = Some(format!("{reason:?}: {message}"));
        });
        let uncaptured = Arc::new(Mutex::new(None));
        let uncaptured_cb = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            log::error!("uncaptured wgpu error: {e}");
            *uncaptured_cb.lock().unwrap() = Some(keep_uncaptured(e));
        }));
        let id = NEXT_CONTEXT_ID.fetch_add(1, Ordering::Relaxed);
        let pipeline_cache = PipelineCache::open(&device, &info, features, options.cache_dir.as_deref(), id);
        // compiled-here marks only where compiles are slow enough to run in the background
        let marks = options
            .cache_dir
            .as_deref()
            .filter(|_| background_compiles_on(&info))
            .map(|dir| crate::background::Marks::new(dir, &info));
        Ok(Self {
            id,
            background: crate::background::Background::new(options, marks),
            pipeline_cache,
            #[cfg(all(feature = "parse-cache", not(target_arch = "wasm32")))]
            parse_cache: crate::parse_cache::ParseCache::open(options.cache_dir.as_deref()),
            device,
            queue,
            summary: AdapterSummary { info, features, limits },
            pipelines: Mutex::new(HashMap::new()),
            lost,
            uncaptured,
            allocated: AtomicU64::new(0),
            options: options.clone(),
            tuned: Mutex::new(HashMap::new()),
        })
    }

    /// The adapter, its enabled features and limits.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.summary
    }

    /// The options the context was opened with.
    pub fn options(&self) -> &ContextOptions {
        &self.options
    }

    /// The device's limits.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.summary.limits
    }

    /// The wgpu device, for callers that build their own buffers around ours.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// Whether calls time their GPU work ([`ContextOptions::gpu_timing`] on an adapter with
    /// `TIMESTAMP_QUERY`).
    pub fn gpu_timing(&self) -> bool {
        self.options.gpu_timing && self.summary.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Total bytes of device buffers this context has created so far (tensors, outputs, scratch,
    /// uniforms; never decreases). The difference around a call is what the call allocated.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }

    /// Create a buffer, counting its bytes in [`Context::allocated_bytes`].
    pub(crate) fn create_buffer(&self, desc: &wgpu::BufferDescriptor<'_>) -> wgpu::Buffer {
        self.allocated.fetch_add(desc.size, Ordering::Relaxed);
        self.device.create_buffer(desc)
    }

    /// Create an initialised buffer, counting its bytes in [`Context::allocated_bytes`].
    pub(crate) fn create_buffer_init(&self, desc: &wgpu::util::BufferInitDescriptor<'_>) -> wgpu::Buffer {
        use wgpu::util::DeviceExt;
        self.allocated.fetch_add(desc.contents.len() as u64, Ordering::Relaxed);
        self.device.create_buffer_init(desc)
    }

    /// Number of compiled pipelines in the cache.
    pub fn cached_pipelines(&self) -> usize {
        self.pipelines.lock().unwrap().len()
    }

    /// Fails if the device was lost or an uncaptured error was reported.
    pub(crate) fn check_alive(&self) -> Result<()> {
        if let Some(reason) = self.lost.lock().unwrap().clone() {
            return Err(Error::DeviceLost(reason));
        }
        if let Some(e) = self.uncaptured.lock().unwrap().take() {
            return Err(Error::Gpu(reported(e)));
        }
        Ok(())
    }

    /// The validated naga module of the specialised WGSL `text` (of the shader `name`): from the
    /// parse cache where it holds this text (validated again), else parsed and then kept there.
    pub(crate) fn parse_wgsl(
        &self,
        name: &str,
        text: &str,
    ) -> Result<(naga::Module, naga::valid::ModuleInfo)> {
        #[cfg(all(feature = "parse-cache", not(target_arch = "wasm32")))]
        if let Some(cache) = &self.parse_cache {
            if let Some(module) = cache.load(text) {
                match crate::shader::validate_module(name, text, &module) {
                    Ok(info) => return Ok((module, info)),
                    Err(e) => log::warn!("a cached parse of {name} fails validation, parsing again: {e}"),
                }
            }
            let (module, info) = crate::shader::parse_valid(name, text)?;
            cache.store(text, &module);
            return Ok((module, info));
        }
        crate::shader::parse_valid(name, text)
    }

    /// The pipeline for `key`, built by `build` (given the device and the driver's pipeline
    /// cache, if any) the first time it is asked for.
    pub(crate) fn pipeline(
        &self,
        key: PipelineKey,
        build: impl FnOnce() -> Result<wgpu::ComputePipeline>,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        if let Some(p) = self.pipelines.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        // Built outside the lock: another thread may build the same one; the first insert wins.
        let pipeline = Arc::new(self.scoped(build)??);
        if let Some(c) = &self.pipeline_cache {
            c.save();
        }
        self.background.mark(&key);
        let mut cache = self.pipelines.lock().unwrap();
        Ok(cache.entry(key).or_insert(pipeline).clone())
    }

    /// The driver's pipeline cache, where the adapter has one.
    pub(crate) fn driver_pipeline_cache(&self) -> Option<&wgpu::PipelineCache> {
        self.pipeline_cache.as_ref().map(|c| &c.cache)
    }

    /// Whether this context's pipeline `key` is built already.
    pub(crate) fn has_pipeline(&self, key: &PipelineKey) -> bool {
        self.pipelines.lock().unwrap().contains_key(key)
    }

    /// Whether calls on this context run a faster-compiling kernel while the one they need
    /// compiles in the background ([`FirstCall::Quick`] on an adapter where compiles are slow).
    pub(crate) fn compiles_in_background(&self) -> bool {
        self.options.first_call == FirstCall::Quick && background_compiles_on(&self.summary.info)
    }

    /// The background compiles of this context ([`FirstCall::Quick`]): how many are pending,
    /// done and failed.
    pub fn background_compiles(&self) -> crate::background::BackgroundCompiles {
        self.background.counts()
    }

    /// Wait until no background compile is pending (native targets); later calls then run the
    /// kernels those compiles made. Nothing to wait for with [`FirstCall::Wait`] or on GPUs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait_background(&self) {
        self.background.wait();
    }

    /// Run `f` inside validation and out-of-memory error scopes (for work outside a
    /// submission: buffer and pipeline creation). A captured error becomes [`Error::Gpu`]; where
    /// scopes resolve asynchronously (the web) an error is logged when it arrives instead.
    pub(crate) fn scoped<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        self.check_alive()?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        // innermost first: scopes pop in the order they were pushed, reversed
        let (v, m) = (validation.pop(), oom.pop());
        for scope in [ready_now(v), ready_now(m)] {
            match scope {
                Some(Some(e)) => return Err(Error::Gpu(e)),
                Some(None) => {}
                None => log::debug!("an error scope resolves later; errors are reported then"),
            }
        }
        Ok(out)
    }

    /// Submit `encoder` (one error scope pair around finishing and submitting it).
    pub(crate) fn submit(&self, encoder: wgpu::CommandEncoder) -> Result<wgpu::SubmissionIndex> {
        self.scoped(|| self.queue.submit([encoder.finish()]))
    }

    /// Wait until the GPU has finished `submission` (everything submitted, for `None`). Native
    /// targets only: on the web the browser runs submissions and resolves futures by itself.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn wait_for(&self, submission: Option<wgpu::SubmissionIndex>) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait { submission_index: submission, timeout: None })
            .map_err(Error::Poll)?;
        self.check_alive()
    }

    /// Wait until the GPU has finished everything submitted on this context (native targets):
    /// what a benchmark needs after a call, since calls return once their work is submitted.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait_idle(&self) -> Result<()> {
        self.wait_for(None)
    }

    /// Copy `size` bytes of `buffer` (which needs `COPY_SRC`) from `offset` to a staging buffer
    /// now: the copy's submission, and a future that resolves to the bytes once the copy finished
    /// and the staging buffer is mapped (on native targets after a device poll, e.g. waiting for
    /// that submission). Offset and size are multiples of 4.
    pub(crate) fn read_async(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        size: u64,
    ) -> Result<(wgpu::SubmissionIndex, impl Future<Output = Result<Vec<u8>>> + 'static)> {
        let staging = self.scoped(|| {
            self.create_buffer(&wgpu::BufferDescriptor {
                label: Some("read-back staging"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
        let index = self.submit(encoder)?;
        Ok((index, map_read(staging)))
    }
}

/// Map `staging` for reading; the future resolves to its bytes (the buffer is unmapped and
/// dropped after).
pub(crate) fn map_read(staging: wgpu::Buffer) -> impl Future<Output = Result<Vec<u8>>> + 'static {
    let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
    staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
        let _ = sender.send(r);
    });
    async move {
        match receiver.receive().await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                return Err(Error::ReadBack { what: "mapping the staging buffer", source: Some(Box::new(e)) })
            }
            None => return Err(Error::ReadBack { what: "the map callback was dropped", source: None }),
        }
        let bytes = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::ReadBack { what: "the mapped range", source: Some(Box::new(e)) })?
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("adapter", &self.summary.info.name)
            .field("backend", &self.summary.info.backend)
            .finish()
    }
}
