//! The GPU context: adapter choice, a device with the adapter's real limits, the queue, the
//! pipeline cache and the read-back helper. One `Context` is `Send + Sync`; share it by reference
//! or `Arc` between threads.
//!
//! Adapter choice: every adapter of the allowed backends is listed and the best ranked one is taken
//! (discrete > integrated > virtual > CPU; Vulkan, Metal and DX12 before GL). Two environment
//! variables override it:
//! - `WGATTN_BACKEND`: a comma list of `vulkan`, `metal`, `dx12`, `gl` (default: all);
//! - `WGATTN_ADAPTER`: a case-insensitive substring of the adapter's name (e.g. `llvmpipe`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

static NEXT_CONTEXT_ID: AtomicU64 = AtomicU64::new(1);

/// How to choose an adapter; [`ContextOptions::from_env`] reads the `WGATTN_*` overrides.
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
}

impl Default for ContextOptions {
    fn default() -> Self {
        Self { backends: wgpu::Backends::all(), adapter_name: None, limits: None, subgroup_min_size: None }
    }
}

impl ContextOptions {
    /// Defaults overridden by `WGATTN_BACKEND` and `WGATTN_ADAPTER`.
    pub fn from_env() -> Self {
        let mut o = Self::default();
        if let Ok(b) = std::env::var("WGATTN_BACKEND") {
            if !b.trim().is_empty() {
                o.backends = wgpu::Backends::from_comma_list(&b);
            }
        }
        if let Ok(a) = std::env::var("WGATTN_ADAPTER") {
            if !a.trim().is_empty() {
                o.adapter_name = Some(a);
            }
        }
        o
    }
}

/// Asks Mesa's software rasteriser (llvmpipe, and lavapipe, its Vulkan driver) for 512-bit
/// vectors on a CPU with AVX-512: sets `LP_NATIVE_VECTOR_WIDTH=512` unless the variable is
/// already set, and returns whether it did. llvmpipe defaults to 256 bits; at 512 its subgroups
/// have 16 lanes and the register kernels get AVX-512's 32 vector registers, which on the Zen 4
/// machine of docs/LAVAPIPE.md made the fused forward 1.5× faster (D 64, N 4096). The adapter's
/// name then ends in "512 bits", so the tuning cache keeps the two apart. No effect on other
/// adapters, or once the driver is loaded (it reads the variable once): call it first thing in
/// `main`. `wgattn` does.
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
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    lost: Arc<Mutex<Option<String>>>,
    uncaptured: Arc<Mutex<Option<String>>>,
    timer: Mutex<Option<Arc<GpuTimer>>>,
    allocated: AtomicU64,
    pub(crate) tuner: crate::tune::Tuner,
    last_kernel: Mutex<Option<crate::kernels::flash::TileConfig>>,
}

/// Timestamp queries around a call's compute pass (for benchmarks; see
/// [`Context::enable_gpu_timing`]).
pub(crate) struct GpuTimer {
    query_set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    period_ns: f64,
    last: Mutex<Option<std::time::Duration>>,
}

impl GpuTimer {
    pub(crate) fn writes(&self) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.query_set,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: Some(1),
        }
    }

    /// Resolve the two timestamps into the resolve buffer (record after the pass).
    pub(crate) fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.resolve_query_set(&self.query_set, 0..2, &self.resolve, 0);
    }

    /// Read the resolved timestamps (after the submission finished) and remember the duration.
    pub(crate) fn read(&self, ctx: &Context) -> Result<()> {
        let bytes = ctx.read_bytes(&self.resolve, 0, 16)?;
        let t: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
        let ns = t[1].saturating_sub(t[0]) as f64 * self.period_ns;
        *self.last.lock().unwrap() = Some(std::time::Duration::from_nanos(ns as u64));
        Ok(())
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
    /// Open the best adapter, honouring `WGATTN_BACKEND` / `WGATTN_ADAPTER`.
    pub fn new() -> Result<Self> {
        Self::with_options(&ContextOptions::from_env())
    }

    /// Open an adapter chosen by `options`.
    pub fn with_options(options: &ContextOptions) -> Result<Self> {
        pollster::block_on(Self::new_async(options))
    }

    async fn new_async(options: &ContextOptions) -> Result<Self> {
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
        let wanted_features =
            wgpu::Features::SUBGROUP | wgpu::Features::SHADER_F16 | wgpu::Features::TIMESTAMP_QUERY;
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
            .map_err(|e| Error::RequestDevice(e.to_string()))?;
        let lost = Arc::new(Mutex::new(None));
        let lost_cb = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            *lost_cb.lock().unwrap() = Some(format!("{reason:?}: {message}"));
        });
        let uncaptured = Arc::new(Mutex::new(None));
        let uncaptured_cb = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            log::error!("uncaptured wgpu error: {e}");
            *uncaptured_cb.lock().unwrap() = Some(e.to_string());
        }));
        Ok(Self {
            id: NEXT_CONTEXT_ID.fetch_add(1, Ordering::Relaxed),
            device,
            queue,
            summary: AdapterSummary { info, features, limits },
            pipelines: Mutex::new(HashMap::new()),
            lost,
            uncaptured,
            timer: Mutex::new(None),
            allocated: AtomicU64::new(0),
            tuner: Default::default(),
            last_kernel: Mutex::new(None),
        })
    }

    /// The adapter, its enabled features and limits.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.summary
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

    /// Time each later call's GPU work with timestamp queries (read with
    /// [`Context::last_gpu_time`]). Returns false, and changes nothing, when the adapter lacks
    /// `TIMESTAMP_QUERY`. Timing adds a read-back per call; meant for single-threaded benchmarks.
    pub fn enable_gpu_timing(&self) -> bool {
        if !self.summary.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            return false;
        }
        let mut timer = self.timer.lock().unwrap();
        if timer.is_none() {
            let query_set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("call timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamp resolve"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let period_ns = self.queue.get_timestamp_period() as f64;
            *timer = Some(Arc::new(GpuTimer { query_set, resolve, period_ns, last: Mutex::new(None) }));
        }
        true
    }

    /// GPU time of the last timed call (between the start and end of its compute pass).
    pub fn last_gpu_time(&self) -> Option<std::time::Duration> {
        self.timer.lock().unwrap().as_ref().and_then(|t| *t.last.lock().unwrap())
    }

    pub(crate) fn timer(&self) -> Option<Arc<GpuTimer>> {
        self.timer.lock().unwrap().clone()
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

    /// The fused-forward specialisation (family and tiles) the last call on this context ran.
    pub fn last_kernel(&self) -> Option<crate::kernels::flash::TileConfig> {
        *self.last_kernel.lock().unwrap()
    }

    pub(crate) fn set_last_kernel(&self, k: crate::kernels::flash::TileConfig) {
        *self.last_kernel.lock().unwrap() = Some(k);
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
            return Err(Error::Gpu(e));
        }
        Ok(())
    }

    /// The pipeline for `key`, built by `build` the first time it is asked for.
    pub(crate) fn pipeline(
        &self,
        key: &str,
        build: impl FnOnce(&wgpu::Device) -> Result<wgpu::ComputePipeline>,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        if let Some(p) = self.pipelines.lock().unwrap().get(key) {
            return Ok(p.clone());
        }
        // Built outside the lock: another thread may build the same one; the first insert wins.
        let pipeline = Arc::new(self.scoped(|| build(&self.device))??);
        let mut cache = self.pipelines.lock().unwrap();
        Ok(cache.entry(key.to_string()).or_insert(pipeline).clone())
    }

    /// Run `f` inside validation and out-of-memory error scopes; a captured error becomes
    /// [`Error::Gpu`].
    pub(crate) fn scoped<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        self.check_alive()?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let v = pollster::block_on(validation.pop());
        let m = pollster::block_on(oom.pop());
        if let Some(e) = v.or(m) {
            return Err(Error::Gpu(e.to_string()));
        }
        Ok(out)
    }

    /// Submit `encoder` and wait until the GPU has finished it.
    pub(crate) fn submit_and_wait(&self, encoder: wgpu::CommandEncoder) -> Result<()> {
        let index = self.scoped(|| self.queue.submit([encoder.finish()]))?;
        self.device
            .poll(wgpu::PollType::Wait { submission_index: Some(index), timeout: None })
            .map_err(|e| Error::Gpu(e.to_string()))?;
        self.check_alive()
    }

    /// Copy `size` bytes of `buffer` (which needs `COPY_SRC`) from `offset` back to the host.
    pub(crate) fn read_bytes(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        let staging = self.scoped(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("read-back staging"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
        self.submit_and_wait(encoder)?;
        let slice = staging.slice(..);
        let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = sender.send(r);
        });
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::ReadBack(e.to_string()))?;
        match pollster::block_on(receiver.receive()) {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(Error::ReadBack(e.to_string())),
            None => return Err(Error::ReadBack("the map callback was dropped".into())),
        }
        let bytes = slice.get_mapped_range().map_err(|e| Error::ReadBack(e.to_string()))?.to_vec();
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
