//! Compiling in the background, so that a new kernel size does not make a call wait for it.
//!
//! On lavapipe (Mesa's software Vulkan driver) a fused-forward pipeline is compiled by LLVM at
//! its first dispatch, on the queue's thread: 7 to 21 s for a new head-dim size on a cold machine,
//! during which nothing else runs on that device. The time grows with the query rows each
//! invocation holds in registers, so a call of a size not compiled yet runs the register kernel
//! with half the rows (compiled in about half the time, 15–25% slower: docs/COMPILE.md) while a
//! worker thread compiles the full kernel on a second device of the same adapter, with its own
//! queue thread, by one dispatch of a single workgroup on small dummy buffers. Mesa keeps
//! what LLVM made in its disk cache, keyed by the shader and not by the device, so once the
//! worker is done the context builds the full pipeline from that cache in about a second, and
//! later calls run it.
//!
//! What was compiled on this machine is remembered across processes by an empty file per
//! pipeline in `<cache folder>/compiled/` (named by a hash of the adapter, driver, wgpu release,
//! kernel revision and pipeline key), written once the worker's dispatch finished or when a
//! context builds a pipeline for a call of its own: a later process that finds one goes straight
//! to the full kernel. Emptying Mesa's cache
//! (`MESA_SHADER_CACHE_DIR`, `~/.cache/mesa_shader_cache`) without this folder costs one slow
//! first call per size, nothing worse.
//!
//! One worker per context compiles one pipeline at a time; dropping the context waits for the
//! pipeline being compiled (never for LLVM to be cut off at process exit) and skips the queued
//! rest. Native targets only: the web has no threads to compile on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::context::{Context, ContextOptions, FirstCall, PipelineKey};
use crate::error::Result;

/// Where one background compile stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Job {
    /// Waiting for the worker, or being compiled.
    Pending,
    /// Compiled: Mesa's cache holds it.
    Ready,
    /// The worker could not open a device or build the pipeline (logged): calls keep the
    /// kernel they run.
    Failed,
}

/// How many background compiles a context has queued, finished and failed
/// ([`Context::background_compiles`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackgroundCompiles {
    /// Queued or being compiled.
    pub pending: usize,
    /// Compiled (the context's calls switch to them).
    pub ready: usize,
    /// Given up on (the reason is logged).
    pub failed: usize,
}

/// A pipeline to compile: its key, the WGSL template it is specialised from and the bytes of a
/// uniform buffer for its dispatch.
struct Request {
    key: PipelineKey,
    source: &'static str,
    uniform: Vec<u8>,
}

/// The jobs of one context, shared with its worker.
#[derive(Default)]
struct Jobs {
    state: Mutex<HashMap<PipelineKey, Job>>,
    changed: Condvar,
    /// The context is being dropped: requests not started are given up.
    closing: AtomicBool,
}

/// A context's background compiler: its jobs, the worker's queue and the worker itself (started
/// with the first request).
pub(crate) struct Background {
    jobs: Arc<Jobs>,
    #[cfg(not(target_arch = "wasm32"))]
    worker: Mutex<Option<(std::sync::mpsc::Sender<Request>, std::thread::JoinHandle<()>)>>,
    /// Where the worker's device is opened from: the context's options, waiting for its own
    /// compiles.
    options: ContextOptions,
    marks: Option<Marks>,
}

impl Background {
    pub(crate) fn new(options: &ContextOptions, marks: Option<Marks>) -> Self {
        Self {
            jobs: Arc::default(),
            #[cfg(not(target_arch = "wasm32"))]
            worker: Mutex::new(None),
            options: options.clone().first_call(FirstCall::Wait),
            marks,
        }
    }

    /// Whether the pipeline `key` was compiled on this machine before (a mark) or by this
    /// context's worker.
    pub(crate) fn compiled(&self, key: &PipelineKey) -> bool {
        self.jobs.state.lock().unwrap().get(key) == Some(&Job::Ready)
            || self.marks.as_ref().is_some_and(|m| m.has(key))
    }

    /// Remember that `key`'s pipeline has been compiled on this machine.
    pub(crate) fn mark(&self, key: &PipelineKey) {
        if let Some(m) = &self.marks {
            m.set(key);
        }
    }

    /// Whether a background compile of `key` failed before (calls then compile it themselves).
    pub(crate) fn failed(&self, key: &PipelineKey) -> bool {
        self.jobs.state.lock().unwrap().get(key) == Some(&Job::Failed)
    }

    /// Queue `key` (of the template `source`) for the worker, unless it is queued already;
    /// `uniform` is the uniform buffer of its dispatch: a real call's, since lavapipe inlines
    /// uniform values that decide control flow and compiles a separate, smaller shader where
    /// they make most of it dead (all zeros would: every workgroup exits at once), which is not
    /// the shader real calls run. Returns false where nothing can compile in the background
    /// (the web, or the worker could not start).
    pub(crate) fn request(&self, key: &PipelineKey, source: &'static str, uniform: Vec<u8>) -> bool {
        #[cfg(target_arch = "wasm32")]
        {
            let _ = (key, source, uniform);
            false
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            {
                let mut state = self.jobs.state.lock().unwrap();
                match state.get(key) {
                    Some(Job::Pending) => return true,
                    Some(Job::Failed) => return false,
                    Some(Job::Ready) | None => {}
                }
                state.insert(key.clone(), Job::Pending);
            }
            let mut worker = self.worker.lock().unwrap();
            if worker.is_none() {
                let (sender, receiver) = std::sync::mpsc::channel();
                let (jobs, options, marks) = (self.jobs.clone(), self.options.clone(), self.marks.clone());
                let spawned = std::thread::Builder::new()
                    .name("wgpu-attention compile".into())
                    .spawn(move || work(&receiver, &jobs, &options, marks.as_ref()));
                match spawned {
                    Ok(handle) => *worker = Some((sender, handle)),
                    Err(e) => {
                        log::warn!("no background compile thread ({e}): compiling in the call");
                        self.jobs.state.lock().unwrap().insert(key.clone(), Job::Failed);
                        return false;
                    }
                }
            }
            let (sender, _) = worker.as_ref().expect("started above");
            if sender.send(Request { key: key.clone(), source, uniform }).is_err() {
                self.jobs.state.lock().unwrap().insert(key.clone(), Job::Failed);
                return false;
            }
            true
        }
    }

    /// Counts of the jobs by state.
    pub(crate) fn counts(&self) -> BackgroundCompiles {
        let state = self.jobs.state.lock().unwrap();
        let mut c = BackgroundCompiles::default();
        for job in state.values() {
            match job {
                Job::Pending => c.pending += 1,
                Job::Ready => c.ready += 1,
                Job::Failed => c.failed += 1,
            }
        }
        c
    }

    /// Block until no job is pending.
    pub(crate) fn wait(&self) {
        let mut state = self.jobs.state.lock().unwrap();
        while state.values().any(|j| *j == Job::Pending) {
            state = self.jobs.changed.wait(state).unwrap();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        #[cfg(not(target_arch = "wasm32"))]
        if let Some((sender, handle)) = self.worker.get_mut().unwrap().take() {
            // the worker finishes the compile it is in, gives up the rest and exits
            self.jobs.closing.store(true, Ordering::Release);
            drop(sender);
            if handle.join().is_err() {
                log::warn!("the background compile thread panicked");
            }
        }
    }
}

/// The worker: open a device of the same adapter, compile each request by one empty dispatch.
/// The device is closed whenever the queue is empty (its memory back) and opened again for the
/// next request; once the context is closing, requests not started are given up.
#[cfg(not(target_arch = "wasm32"))]
fn work(
    receiver: &std::sync::mpsc::Receiver<Request>,
    jobs: &Jobs,
    options: &ContextOptions,
    marks: Option<&Marks>,
) {
    use std::sync::mpsc::TryRecvError;
    let mut device: Option<Context> = None;
    let mut next = receiver.recv().ok();
    while let Some(request) = next {
        let job = if jobs.closing.load(Ordering::Acquire) {
            Job::Failed
        } else {
            let started = std::time::Instant::now();
            let result = match &device {
                Some(ctx) => compile(ctx, &request),
                None => Context::with_options(options).and_then(|ctx| compile(device.insert(ctx), &request)),
            };
            match result {
                Ok(()) => {
                    log::info!(
                        "compiled {} {:?} in the background in {:.1} s",
                        request.key.shader,
                        request.key.params,
                        started.elapsed().as_secs_f64()
                    );
                    if let Some(m) = marks {
                        m.set(&request.key);
                    }
                    Job::Ready
                }
                Err(e) => {
                    log::warn!("background compile of {} failed: {e}", request.key.shader);
                    Job::Failed
                }
            }
        };
        jobs.state.lock().unwrap().insert(request.key, job);
        jobs.changed.notify_all();
        next = match receiver.try_recv() {
            Ok(request) => Some(request),
            Err(TryRecvError::Empty) => {
                device = None;
                receiver.recv().ok()
            }
            Err(TryRecvError::Disconnected) => None,
        };
    }
}

/// Build `request`'s pipeline on `ctx` and dispatch one workgroup of it with the request's
/// uniform buffer, every other binding a small zeroed buffer (what the workgroup reads and writes
/// there is clamped to the buffers by wgpu's bounds checks, and thrown away).
#[cfg(not(target_arch = "wasm32"))]
fn compile(ctx: &Context, request: &Request) -> Result<()> {
    let key = &request.key;
    let (pipeline, entries) = ctx.scoped(|| {
        crate::kernels::build_pipeline(ctx, key.shader, request.source, key.entry, &key.params)
    })??;
    let buffers: Vec<wgpu::Buffer> = entries
        .iter()
        .map(|e| {
            let (usage, min) = match e.ty {
                wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform, min_binding_size, ..
                } => (wgpu::BufferUsages::UNIFORM, min_binding_size),
                wgpu::BindingType::Buffer { min_binding_size, .. } => {
                    (wgpu::BufferUsages::STORAGE, min_binding_size)
                }
                _ => (wgpu::BufferUsages::STORAGE, None),
            };
            let size =
                min.map_or(256, |m| m.get().max(256)).max(request.uniform.len() as u64).next_multiple_of(16);
            let mut contents = vec![0u8; size as usize];
            if usage == wgpu::BufferUsages::UNIFORM {
                contents[..request.uniform.len()].copy_from_slice(&request.uniform);
            }
            ctx.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("background compile"),
                contents: &contents,
                usage,
            })
        })
        .collect();
    let bind_entries: Vec<wgpu::BindGroupEntry<'_>> = entries
        .iter()
        .zip(&buffers)
        .map(|(e, b)| wgpu::BindGroupEntry { binding: e.binding, resource: b.as_entire_binding() })
        .collect();
    let layout = pipeline.get_bind_group_layout(0);
    let bind_group = ctx.scoped(|| {
        ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("background compile"),
            layout: &layout,
            entries: &bind_entries,
        })
    })?;
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }
    let index = ctx.submit(encoder)?;
    ctx.wait_for(Some(index))
}

/// The marks of pipelines compiled on this machine: empty files in `<cache folder>/compiled/`.
#[derive(Clone, Debug)]
pub(crate) struct Marks {
    dir: PathBuf,
    /// Adapter, driver, wgpu release, kernel revision and Mesa's cache folder: what else makes a
    /// compile differ, or where it is kept (a mark made with one Mesa cache folder says nothing
    /// of another: prefer_wide_cpu_vectors gives 512-bit lavapipe its own).
    adapter: String,
}

impl Marks {
    pub(crate) fn new(cache_dir: &Path, info: &wgpu::AdapterInfo) -> Self {
        let adapter = format!(
            "{}|{}|{}|{:?}|wgpu{}|k{}|{:?}",
            info.name,
            info.driver,
            info.driver_info,
            info.backend,
            crate::tune::WGPU_VERSION,
            crate::tune::KERNELS_REVISION,
            std::env::var_os("MESA_SHADER_CACHE_DIR"),
        );
        Self { dir: cache_dir.join("compiled"), adapter }
    }

    fn path(&self, key: &PipelineKey) -> PathBuf {
        let text = format!("{}|{}|{}|{:?}", self.adapter, key.shader, key.entry, key.params);
        self.dir.join(format!("{:016x}", crate::shader::fnv1a(text.as_bytes())))
    }

    fn has(&self, key: &PipelineKey) -> bool {
        self.path(key).exists()
    }

    fn set(&self, key: &PipelineKey) {
        let path = self.path(key);
        if let Err(e) = std::fs::create_dir_all(&self.dir).and_then(|()| std::fs::write(&path, b"")) {
            log::debug!("could not mark {} compiled: {e}", path.display());
        }
    }
}
