//! `wgattn bench`: the backends timed over shapes and masks, so a user can pick one.
//!
//! The sweep is the cross product of the axes (`--backend`, `--mode`, `--seq`/`--kv-seq`,
//! `--head-dim`, `--heads`/`--kv-heads`, `--batch`, `--density`), one row per point. For each row:
//!
//! - inputs are uniform random, in 2–3 sets (rotated between repetitions so that caches do not
//!   flatter), made once per shape and, for GPU backends, uploaded once per set outside the timed
//!   region; masks are built once, outside it too (the fused kernel gets the window and block
//!   masks as prebuilt block tables, `Attention::block_mask`; the CPU backends get the window as
//!   the element mask a user would write);
//! - one untimed warm-up call compiles the pipelines (lavapipe compiles at the first dispatch, which
//!   takes seconds); the device memory a call allocates is counted around the first timed call;
//! - up to `--reps` timed calls follow (fewer when a call is long), each the whole call: `forward`
//!   on device tensors with its output allocation, submit and wait. GPU rows record the wall time
//!   (which then includes reading the two timestamps back) and, where the adapter has timestamp
//!   queries, the GPU time of the call's compute pass;
//!   `median_ms` is the median GPU time where there is one (`timer` = gpu), else the median wall
//!   time (`timer` = wall);
//! - a case a backend cannot run becomes a row that says why and the sweep goes on: `does not
//!   fit` (a limit of the adapter), `unsupported` (an option the backend lacks), `skipped (too
//!   slow)` (the f64 oracle above 2e9 FLOPs, or any backend whose speed at a smaller size of the
//!   same mode predicts a call over `--max-call-seconds`).
//!
//! Nothing here is asserted about speed: the numbers are measured and reported.

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use wgpu_attention::cpu::{flash as cpu_flash, reference};
use wgpu_attention::kernels::decode::MAX_DECODE_QUERIES;
use wgpu_attention::kernels::naive;
use wgpu_attention::mask::{Dims, TOPK_MAX};
use wgpu_attention::paged::{PagedKvCache, PagedKvConfig, SeqId};
use wgpu_attention::testing::Case;
use wgpu_attention::Path as KernelPath;
use wgpu_attention::{
    Attention, BlockMask, CallInfo, Causal, Context, ContextOptions, DType, Error, FirstCall, HostTensor,
    Mask, Output, Problem, Recorder, Tensor, Tuning, MAX_HEAD_DIM,
};

use crate::{one_line, plot, BenchArgs, CliError};

/// `wgattn bench --help`'s closing paragraph.
pub const AFTER_HELP: &str = "\
Columns: density is the fraction of (query block, key block) pairs of 64 visited (1 = dense). \
median_ms is the median GPU time of the call (timestamp queries, timer=gpu) where the adapter has \
them, else the median wall time (timer=wall); wall_ms always includes submit and wait. GFLOP/s = \
4·B·Hq·Nq·Nk·D·density / median; GB/s = (Q, K, V read once + O, LSE written once) / median. \
dev_MiB = input tensors + what one call allocates (0 for CPU backends). fused/naive = gpu-naive \
time / gpu-fused time, gpu/cpu = cpu-fast / gpu-fused, vs_dense = the same backend's dense time / \
this row's. Speedups compare GPU times when both rows have them, else wall times. A backend \
that cannot run a case gets a row saying why: does not fit, unsupported, or skipped (too slow: the \
f64 oracle above 2e9 FLOPs, or a call predicted to exceed --max-call-seconds from the same \
backend's speed at a smaller size).

Examples:
  wgattn bench --quick
  wgattn bench --mode dense,causal,window,block-sparse,topk,decode --seq 1024,2048,4096 \\
      --json out.json --csv out.csv --plot out.svg
  python3 scripts/torch_sdpa.py --seq 1024,2048,4096 --json torch.json
  wgattn bench --seq 1024,2048,4096 --merge-json torch.json --plot out.svg";

/// Block edge of the block-sparse and top-k masks, and of the density measure.
const BLOCK: usize = 64;
/// The f64 oracle is skipped above this many dense FLOPs (4·B·Hq·Nq·Nk·D).
const REFERENCE_MAX_FLOPS: f64 = 2e9;
/// Input sets made for a shape whose Q, K and V take at most this many bytes (else 2).
const THREE_SETS_BYTES: usize = 128 << 20;

/// A backend of the sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
pub enum Backend {
    /// The fused WGSL kernel (`wgpu_attention::forward`).
    GpuFused,
    /// The decode kernel (`Path::Decode`: FlashDecoding key ranges merged by LSE; Nq ≤ 16)
    GpuDecode,
    /// The same problem through a paged KV cache (`paged::PagedKvCache`, pages of --page-size in
    /// shuffled order)
    GpuPaged,
    /// The naive three-pass GPU baseline (materialises the Nq×Nk scores).
    GpuNaive,
    /// The multithreaded f32 CPU path.
    CpuFast,
    /// The f64 CPU oracle (skipped above 2e9 FLOPs).
    CpuReference,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::GpuFused => "gpu-fused",
            Backend::GpuDecode => "gpu-decode",
            Backend::GpuPaged => "gpu-paged",
            Backend::GpuNaive => "gpu-naive",
            Backend::CpuFast => "cpu-fast",
            Backend::CpuReference => "cpu-reference",
        }
    }
}

/// A mask of the sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
pub enum Mode {
    /// No mask.
    Dense,
    /// Bottom-right causal.
    Causal,
    /// Causal sliding window of --window keys.
    Window,
    /// Random 64-blocks at --density, the diagonal kept.
    BlockSparse,
    /// Dynamic top-k of ceil(density·blocks) 64-blocks per query block.
    Topk,
    /// --q-len queries (default 1) against Nk keys (bottom-right causal).
    Decode,
    /// The projection GEMM Y = X·Wᵀ + b: --seq rows × --out-features × --in-features (alone:
    /// not crossed with the attention modes).
    Gemm,
    /// The nn.MultiheadAttention layer (projections + attention) over --seq positions at
    /// --embed-dim with --heads, GEMM and attention time shares (alone).
    Layer,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Dense => "dense",
            Mode::Causal => "causal",
            Mode::Window => "window",
            Mode::BlockSparse => "block-sparse",
            Mode::Topk => "topk",
            Mode::Decode => "decode",
            Mode::Gemm => "gemm",
            Mode::Layer => "layer",
        }
    }
    fn uses_density(self) -> bool {
        matches!(self, Mode::BlockSparse | Mode::Topk)
    }
}

/// Sizes of one problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Dimset {
    batch: usize,
    q_heads: usize,
    kv_heads: usize,
    q_len: usize,
    kv_len: usize,
    head_dim: usize,
}

impl Dimset {
    fn dense_flops(&self) -> f64 {
        4.0 * (self.batch * self.q_heads) as f64 * (self.q_len * self.kv_len * self.head_dim) as f64
    }
    /// Q, K, V read once, O written once, in `dtype`; LSE written once, in f32.
    fn min_bytes(&self, dtype: DType) -> f64 {
        let q = (self.batch * self.q_heads * self.q_len * self.head_dim) as f64;
        let kv = (self.batch * self.kv_heads * self.kv_len * self.head_dim) as f64;
        let lse = (self.batch * self.q_heads * self.q_len) as f64;
        dtype.bytes(1) as f64 * (2.0 * q + 2.0 * kv) + DType::F32.bytes(1) as f64 * lse
    }
    fn problem(&self) -> Problem {
        Problem {
            batch: self.batch,
            q_heads: self.q_heads,
            kv_heads: self.kv_heads,
            q_len: self.q_len,
            kv_len: self.kv_len,
            head_dim: self.head_dim,
        }
    }
    fn dims(&self) -> Dims {
        Dims { batch: self.batch, heads: self.q_heads, q_len: self.q_len, kv_len: self.kv_len }
    }
    fn case(&self) -> Case {
        Case::new(self.q_len, self.kv_len, self.head_dim).heads(self.batch, self.q_heads, self.kv_heads)
    }
}

/// One point of the sweep.
#[derive(Clone, Copy, Debug)]
struct Spec {
    dims: Dimset,
    mode: Mode,
    density: Option<f64>,
    backend: Backend,
    /// Device storage of Q, K, V and O (the CPU backends compute in f32 whatever it is).
    dtype: DType,
}

impl Spec {
    fn label(&self) -> String {
        let d = &self.dims;
        let dens = self.density.map(|x| format!("@{x}")).unwrap_or_default();
        format!(
            "{} {}{dens} {} B{} H{}/{} {}x{} D{}",
            self.backend.name(),
            self.mode.name(),
            self.dtype,
            d.batch,
            d.q_heads,
            d.kv_heads,
            d.q_len,
            d.kv_len,
            d.head_dim
        )
    }
}

/// The resolved sweep.
struct Sweep {
    specs: Vec<Spec>,
    reps: usize,
    /// Time per row the repetitions aim at (one call longer than this runs once).
    budget: Duration,
    seed: u64,
    window: usize,
    /// Tokens per page of gpu-paged.
    page_size: usize,
    /// Decode kernel of gpu-decode and gpu-paged (`None`: the library's choice).
    decode_kernel: Option<wgpu_attention::DecodeKernel>,
    /// Calls predicted to take longer are skipped.
    max_call: f64,
}

/// One row of the table / JSON / CSV (also read back from `--merge-json` files).
///
/// The JSON schema is this struct's: an array of objects with these keys (scripts/torch_sdpa.py
/// and peers/burn write it too). Non-finite numbers are written as null. Reading, only the
/// identity keys (backend, mode, batch, heads, lengths, head dim) are required; the others may be
/// missing or null (dtype then is f32, density 1, text empty, numbers absent), and unknown keys are
/// ignored. The fields are in the CSV's column order ([`KEYS`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Backend name.
    pub backend: String,
    /// Mode name.
    pub mode: String,
    /// Element type.
    #[serde(default = "f32_name", deserialize_with = "or_else_f32")]
    pub dtype: String,
    /// B.
    pub batch: usize,
    /// Hq.
    pub q_heads: usize,
    /// Hkv.
    pub kv_heads: usize,
    /// Nq.
    pub q_len: usize,
    /// Nk.
    pub kv_len: usize,
    /// D.
    pub head_dim: usize,
    /// `--density` of block-sparse and topk rows.
    #[serde(default)]
    pub requested_density: Option<f64>,
    /// Fraction of key blocks visited.
    #[serde(default = "one", deserialize_with = "or_else_one")]
    pub density: f64,
    /// Median time (GPU time where `timer` is gpu).
    #[serde(default)]
    pub median_ms: Option<f64>,
    /// Median wall time.
    #[serde(default)]
    pub wall_ms: Option<f64>,
    /// Density-scaled GFLOP/s at `median_ms`.
    #[serde(default)]
    pub gflops: Option<f64>,
    /// Minimum-traffic GB/s at `median_ms`.
    #[serde(default)]
    pub gbps: Option<f64>,
    /// Inputs plus what one call allocated (0 on the CPU).
    #[serde(default)]
    pub peak_device_bytes: Option<u64>,
    /// "gpu" or "wall": what `median_ms` measures.
    #[serde(default)]
    pub timer: Option<String>,
    /// Timed repetitions.
    #[serde(default, deserialize_with = "or_default")]
    pub reps: usize,
    /// The kernel or path that ran.
    #[serde(default, deserialize_with = "or_default")]
    pub kernel: String,
    /// Adapter or CPU.
    #[serde(default, deserialize_with = "or_default")]
    pub device: String,
    /// gpu-naive time / gpu-fused time (on gpu-fused rows).
    #[serde(default)]
    pub speedup_fused_vs_naive: Option<f64>,
    /// cpu-fast time / gpu-fused time (on gpu-fused rows).
    #[serde(default)]
    pub speedup_gpu_vs_cpu: Option<f64>,
    /// Dense time / this time, same backend and shape (on masked rows).
    #[serde(default)]
    pub speedup_vs_dense: Option<f64>,
    /// Empty, or why there are no numbers.
    #[serde(default, deserialize_with = "or_default")]
    pub note: String,
    /// The full error behind `note`.
    #[serde(default, deserialize_with = "or_default")]
    pub detail: String,
}

fn f32_name() -> String {
    "f32".into()
}

fn one() -> f64 {
    1.0
}

/// A key that may be null: null reads as the type's default.
fn or_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn or_else_f32<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_else(f32_name))
}

fn or_else_one<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(1.0))
}

/// The row keys, in the CSV's column order (the order of [`Row`]'s fields).
const KEYS: [&str; 25] = [
    "backend",
    "mode",
    "dtype",
    "batch",
    "q_heads",
    "kv_heads",
    "q_len",
    "kv_len",
    "head_dim",
    "requested_density",
    "density",
    "median_ms",
    "wall_ms",
    "gflops",
    "gbps",
    "peak_device_bytes",
    "timer",
    "reps",
    "kernel",
    "device",
    "speedup_fused_vs_naive",
    "speedup_gpu_vs_cpu",
    "speedup_vs_dense",
    "note",
    "detail",
];

impl Row {
    fn new(spec: &Spec) -> Self {
        let d = &spec.dims;
        Row {
            backend: spec.backend.name().into(),
            mode: spec.mode.name().into(),
            dtype: spec.dtype.name().into(),
            batch: d.batch,
            q_heads: d.q_heads,
            kv_heads: d.kv_heads,
            q_len: d.q_len,
            kv_len: d.kv_len,
            head_dim: d.head_dim,
            requested_density: spec.density,
            density: 1.0,
            ..Default::default()
        }
    }

    /// True when the row has numbers.
    pub fn ok(&self) -> bool {
        self.median_ms.is_some()
    }

    /// The x of the plot: the query length, or the key length for decoding.
    pub fn x(&self) -> usize {
        if self.mode == "decode" {
            self.kv_len
        } else {
            self.q_len
        }
    }

    /// Everything that identifies the problem except the backend.
    fn problem_key(&self) -> String {
        format!(
            "{}|{}|{:?}|{}|{}|{}|{}|{}|{}",
            self.mode,
            self.dtype,
            self.requested_density.map(f64::to_bits),
            self.batch,
            self.q_heads,
            self.kv_heads,
            self.q_len,
            self.kv_len,
            self.head_dim
        )
    }
}

/// Run the sweep and write its outputs.
pub fn bench(args: &BenchArgs) -> Result<(), CliError> {
    if let Some(modes) = &args.mode {
        for (mode, run) in [
            (Mode::Gemm, crate::bench_gemm::bench as fn(&BenchArgs) -> Result<(), CliError>),
            (Mode::Layer, crate::bench_gemm::bench_layer),
        ] {
            if modes.contains(&mode) {
                if modes.len() > 1 {
                    return Err(CliError::Usage(format!(
                        "--mode {} runs alone (not with other modes)",
                        mode.name()
                    )));
                }
                return run(args);
            }
        }
    }
    let sweep = resolve(args)?;
    let env_set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    // A full sweep compares the best each backend can do: the fused kernel's first call per (head
    // dim, mask class) the tuning cache lacks autotunes its family (Tuning::OnFirstUse), compiling
    // and timing every candidate: up to a minute on a software adapter with cold caches. A quick
    // sweep, or one with WGATTN_TUNE set, takes the library's default (the cache's choice, else
    // the adapter's rule; WGATTN_TUNE=on to tune).
    let tune = !args.quick && !env_set("WGATTN_TUNE") && !env_set("WGATTN_KERNEL");
    let untuned = args.quick && !env_set("WGATTN_TUNE") && !env_set("WGATTN_KERNEL");
    let mut merged = Vec::new();
    for path in args.merge_json.iter().flatten() {
        merged.extend(read_rows(path)?);
    }
    let started = Instant::now();
    let mut runner = Runner::new(&sweep, tune);
    let bar = progress_bar(sweep.specs.len());
    let mut rows = Vec::with_capacity(sweep.specs.len() + merged.len());
    for spec in &sweep.specs {
        bar.set_message(spec.label());
        rows.push(runner.run(spec));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    let ours = rows.len();
    rows.extend(merged);
    speedups(&mut rows);

    println!("{}", runner.header(&sweep));
    if untuned {
        println!(
            "fused kernel family not autotuned here (the tuning cache's choice, else the adapter's default; WGATTN_TUNE=on to tune)"
        );
    }
    print!("{}", table(&rows));
    print!("{}", footnotes(&rows));
    println!(
        "{ours} rows in {:.1} s{}",
        elapsed.as_secs_f64(),
        if rows.len() > ours { format!(" (+{} merged)", rows.len() - ours) } else { String::new() }
    );

    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&rows).expect("rows serialise");
        write_file(path, &(text + "\n"))?;
    }
    if let Some(path) = &args.csv {
        write_file(path, &csv(&rows))?;
    }
    if let Some(path) = &args.plot {
        let title = match runner.gpu_name() {
            Some(gpu) => format!("wgattn bench · {gpu} · {}", cpu_name()),
            None => format!("wgattn bench · {}", cpu_name()),
        };
        write_file(path, &plot::svg(&rows, &title))?;
    }
    Ok(())
}

pub(crate) fn progress_bar(len: usize) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {wide_msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(250));
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

fn write_file(path: &Path, text: &str) -> Result<(), CliError> {
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| CliError::Usage(format!("cannot write {}: {e}", path.display())))
}

fn read_rows(path: &Path) -> Result<Vec<Row>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("{}: not JSON: {e}", path.display())))?;
    let items = value
        .as_array()
        .ok_or_else(|| CliError::Usage(format!("{}: expected a JSON array of rows", path.display())))?;
    // row by row, so that an error names the row
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            Row::deserialize(v).map_err(|e| {
                CliError::Usage(format!(
                    "{}: row {i}: {e} (expected the bench's JSON format)",
                    path.display()
                ))
            })
        })
        .collect()
}

/// The axes, defaults and checks: every bad value is a usage error (exit 2) before any work.
fn resolve(args: &BenchArgs) -> Result<Sweep, CliError> {
    let usage = |m: String| Err(CliError::Usage(m));
    let mut dtypes = Vec::new();
    for t in args.dtype.iter().flatten() {
        let dtype = match t.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => DType::F32,
            "f16" | "float16" | "half" => DType::F16,
            "bf16" | "bfloat16" => DType::BF16,
            _ => return usage(format!("--dtype `{t}` is not one of f32, f16, bf16")),
        };
        if !dtypes.contains(&dtype) {
            dtypes.push(dtype);
        }
    }
    if dtypes.is_empty() {
        dtypes.push(DType::F32);
    }
    let quick = args.quick;
    let backends =
        args.backend.clone().unwrap_or_else(|| vec![Backend::GpuFused, Backend::GpuNaive, Backend::CpuFast]);
    let modes = args.mode.clone().unwrap_or_else(|| vec![Mode::Dense, Mode::Causal]);
    let seqs = args.seq.clone().unwrap_or_else(|| if quick { vec![256, 512] } else { vec![512, 1024, 2048] });
    let head_dims = args.head_dim.clone().unwrap_or_else(|| vec![64]);
    let heads = args.heads.clone().unwrap_or_else(|| vec![if quick { 4 } else { 8 }]);
    let batches = args.batch.clone().unwrap_or_else(|| vec![1]);
    let densities = args.density.clone().unwrap_or_else(|| vec![0.1]);
    let reps = args.reps.unwrap_or(if quick { 3 } else { 5 });

    let positive = [
        ("--seq", &seqs),
        ("--head-dim", &head_dims),
        ("--heads", &heads),
        ("--batch", &batches),
        ("--kv-seq", args.kv_seq.as_ref().unwrap_or(&seqs)),
        ("--kv-heads", args.kv_heads.as_ref().unwrap_or(&heads)),
    ];
    for (flag, list) in positive {
        if list.contains(&0) {
            return usage(format!("{flag} values must be at least 1"));
        }
    }
    if let Some(&d) = head_dims.iter().find(|&&d| d > MAX_HEAD_DIM) {
        return usage(format!("--head-dim {d} is not supported: head dims are 1..={MAX_HEAD_DIM}"));
    }
    if let Some(&x) = densities.iter().find(|&&x| !(x > 0.0 && x <= 1.0)) {
        return usage(format!("--density {x} must be in (0, 1]"));
    }
    if reps == 0 {
        return usage("--reps must be at least 1".into());
    }
    if args.max_call_seconds.is_nan() || args.max_call_seconds <= 0.0 {
        return usage(format!("--max-call-seconds {} must be positive", args.max_call_seconds));
    }
    for (flag, empty) in [("--backend", backends.is_empty()), ("--mode", modes.is_empty())] {
        if empty {
            return usage(format!("{flag} needs at least one value"));
        }
    }

    let seq_pairs: Vec<(usize, usize)> = match &args.kv_seq {
        None => seqs.iter().map(|&n| (n, n)).collect(),
        Some(kv) => seqs.iter().flat_map(|&n| kv.iter().map(move |&m| (n, m))).collect(),
    };
    let mut specs = Vec::new();
    let mut seen = HashSet::new();
    let decode_q_lens = args.q_len.clone().unwrap_or_else(|| vec![1]);
    if let Some(&n) = decode_q_lens.iter().find(|&&n| n == 0) {
        return Err(CliError::Usage(format!("--q-len {n}: query lengths must be at least 1")));
    }
    let mut skipped_heads = Vec::new();
    for &batch in &batches {
        for &q_heads in &heads {
            for &kv_heads in args.kv_heads.as_ref().unwrap_or(&vec![q_heads]) {
                if !q_heads.is_multiple_of(kv_heads) {
                    skipped_heads.push(format!("{q_heads}/{kv_heads}"));
                    continue;
                }
                for &head_dim in &head_dims {
                    for &(q_len, kv_len) in &seq_pairs {
                        for &mode in &modes {
                            let q_lens =
                                if mode == Mode::Decode { decode_q_lens.clone() } else { vec![q_len] };
                            for q_len in q_lens {
                                let dims = Dimset { batch, q_heads, kv_heads, q_len, kv_len, head_dim };
                                let dens: Vec<Option<f64>> = if mode.uses_density() {
                                    densities.iter().map(|&x| Some(x)).collect()
                                } else {
                                    vec![None]
                                };
                                for density in dens {
                                    for &dtype in &dtypes {
                                        for &backend in &backends {
                                            let key = (dims, mode, density.map(f64::to_bits), dtype, backend);
                                            if seen.insert(key) {
                                                specs.push(Spec { dims, mode, density, backend, dtype });
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    if !skipped_heads.is_empty() {
        eprintln!(
            "note: skipped head combinations whose K/V heads do not divide the query heads (Hq/Hkv): {}",
            skipped_heads.join(", ")
        );
    }
    if specs.is_empty() {
        return usage(
            "no valid combination of --heads and --kv-heads: K/V heads must divide query heads".into(),
        );
    }
    let budget = Duration::from_secs_f64(if quick { 1.5 } else { 10.0 });
    Ok(Sweep {
        specs,
        reps,
        budget,
        seed: args.seed,
        window: args.window,
        page_size: args.page_size,
        decode_kernel: args.decode_kernel.map(Into::into),
        max_call: args.max_call_seconds,
    })
}

/// Attention options and visited density of one (shape, mode, density).
struct Prepared {
    /// What a user writes: given to the CPU backends and the naive baseline.
    native: Attention,
    /// The same with masks lowered to a block table once (what the fused kernel gets).
    lowered: Attention,
    density: f64,
    /// A remark about the case (e.g. top-k's k clipped).
    remark: String,
    /// Top-k's k.
    topk: Option<usize>,
}

/// Q, K and V.
type Qkv<T> = (T, T, T);

/// A mode and the bits of its density.
type PreparedKey = (Mode, Option<u64>);

/// Inputs (and the masks prepared for them) of one shape.
struct ShapeData {
    dims: Dimset,
    host: Vec<Qkv<HostTensor>>,
    device: HashMap<(Backend, DType), Vec<Qkv<Tensor>>>,
    prepared: Vec<(PreparedKey, Rc<Prepared>)>,
}

/// A GPU backend's context (one per backend, so one backend's timestamps never read as another's).
struct Gpu {
    ctx: Result<Context, String>,
    timed: bool,
}

/// State carried across rows: contexts, and inputs of the last two shapes (a shape and its decode).
struct Runner {
    reps: usize,
    budget: Duration,
    seed: u64,
    window: usize,
    page_size: usize,
    decode_kernel: Option<wgpu_attention::DecodeKernel>,
    max_call: f64,
    /// Contexts autotune the fused family (else they take the adapter's default).
    tune: bool,
    gpus: HashMap<Backend, Gpu>,
    shapes: Vec<ShapeData>,
    /// The last measured speed (visited FLOPs per wall second) of each backend and mode.
    speed: HashMap<(Backend, Mode), f64>,
}

/// One timed call.
#[derive(Clone, Copy, Debug)]
struct Sample {
    wall_ms: f64,
    gpu_ms: Option<f64>,
}

impl Runner {
    fn new(sweep: &Sweep, tune: bool) -> Self {
        Runner {
            tune,
            reps: sweep.reps,
            budget: sweep.budget,
            seed: sweep.seed,
            window: sweep.window,
            page_size: sweep.page_size,
            decode_kernel: sweep.decode_kernel,
            max_call: sweep.max_call,
            gpus: HashMap::new(),
            shapes: Vec::new(),
            speed: HashMap::new(),
        }
    }

    fn gpu_name(&self) -> Option<String> {
        let ctx = self.gpus.values().find_map(|g| g.ctx.as_ref().ok())?;
        let info = &ctx.adapter().info;
        Some(format!("{} ({:?})", info.name, info.backend))
    }

    fn header(&self, sweep: &Sweep) -> String {
        let mut lines = Vec::new();
        if let Some(name) = self.gpu_name() {
            let timed = self.gpus.values().any(|g| g.timed);
            lines.push(format!(
                "adapter: {name}; GPU timestamps: {}",
                if timed { "yes (median_ms = GPU time where timer=gpu)" } else { "no (median_ms = wall)" }
            ));
        }
        for g in self.gpus.values() {
            if let Err(e) = &g.ctx {
                lines.push(format!("no GPU: {e}"));
                break;
            }
        }
        lines.push(format!("cpu: {}", cpu_name()));
        lines.push(format!(
            "up to {} timed reps per row after a warm-up (fewer where a call exceeds {:.1} s), medians; \
             inputs rotate among 2-3 random sets",
            sweep.reps,
            sweep.budget.as_secs_f64()
        ));
        lines.join("\n")
    }

    /// Measure one point; never fails (a failure is the row's note).
    fn run(&mut self, spec: &Spec) -> Row {
        let mut row = Row::new(spec);
        let d = spec.dims;
        let prepared = match self.prepare(spec) {
            Ok(p) => p,
            Err(e) => {
                fail(&mut row, &e);
                return row;
            }
        };
        row.density = prepared.density;
        if let Some(k) = prepared.topk {
            row.kernel = format!("k={k}");
        }
        let result = match spec.backend {
            Backend::CpuReference if d.dense_flops() > REFERENCE_MAX_FLOPS => {
                row.note = "skipped (too slow)".into();
                row.detail = format!(
                    "the f64 oracle runs only up to {REFERENCE_MAX_FLOPS:e} FLOPs (4·B·Hq·Nq·Nk·D); \
                     this case has {:.3e}",
                    d.dense_flops()
                );
                row.device = cpu_name();
                return row;
            }
            // "does not fit" says more than a predicted time
            Backend::GpuNaive if self.naive_misfit(spec, &mut row) => return row,
            _ if self.too_slow(spec, row.density, &mut row) => return row,
            Backend::CpuFast | Backend::CpuReference => self.measure_cpu(spec, &prepared),
            Backend::GpuPaged
                if spec.mode != Mode::Decode && spec.mode != Mode::Dense && spec.mode != Mode::Causal =>
            {
                row.note = "unsupported".into();
                row.detail = "the paged cache runs dense, causal and decode rows".into();
                return row;
            }
            Backend::GpuDecode if spec.dims.q_len > MAX_DECODE_QUERIES => {
                row.note = "skipped".into();
                row.detail = format!("the decode kernel takes up to {MAX_DECODE_QUERIES} queries");
                return row;
            }
            Backend::GpuFused | Backend::GpuDecode | Backend::GpuPaged | Backend::GpuNaive => {
                self.measure_gpu(spec, &prepared)
            }
        };
        match result {
            Ok((samples, peak, kernel, device)) => {
                let wall = median(samples.iter().map(|s| s.wall_ms).collect());
                let gpu: Option<Vec<f64>> = samples.iter().map(|s| s.gpu_ms).collect();
                let (t, timer) = match gpu {
                    Some(g) if !g.is_empty() => (median(g), "gpu"),
                    _ => (wall, "wall"),
                };
                row.median_ms = Some(t);
                row.wall_ms = Some(wall);
                row.timer = Some(timer.into());
                row.reps = samples.len();
                row.gflops = Some(d.dense_flops() * row.density / (t * 1e6));
                row.gbps = Some(d.min_bytes(spec.dtype) / (t * 1e6));
                row.peak_device_bytes = Some(peak);
                row.kernel = if row.kernel.is_empty() { kernel } else { format!("{kernel} {}", row.kernel) };
                row.device = device;
                row.note = prepared.remark.clone();
                if wall > 0.0 {
                    self.speed
                        .insert((spec.backend, spec.mode), d.dense_flops() * row.density / (wall * 1e-3));
                }
            }
            Err(Failure::Lib(e)) => fail(&mut row, &e),
            Err(Failure::NoAdapter(msg)) => {
                row.note = "no adapter".into();
                row.detail = msg;
            }
        }
        row
    }

    /// True (with the row's note set) when the naive baseline's context exists and the problem
    /// exceeds its limits.
    fn naive_misfit(&self, spec: &Spec, row: &mut Row) -> bool {
        let Some(Gpu { ctx: Ok(ctx), .. }) = self.gpus.get(&Backend::GpuNaive) else { return false };
        match naive::check_fits(ctx, &spec.dims.problem()) {
            Ok(()) => false,
            Err(e) => {
                fail(row, &e);
                true
            }
        }
    }

    /// True (with the row's note set) when the backend's speed at a smaller size of this mode
    /// predicts a call longer than `--max-call-seconds`.
    fn too_slow(&self, spec: &Spec, density: f64, row: &mut Row) -> bool {
        let Some(&speed) = self.speed.get(&(spec.backend, spec.mode)) else { return false };
        let predicted = spec.dims.dense_flops() * density / speed;
        if predicted <= self.max_call {
            return false;
        }
        row.note = "skipped (too slow)".into();
        row.detail = format!(
            "a call would take about {predicted:.0} s at the {:.3} GFLOP/s measured at a smaller size \
             (limit: --max-call-seconds {})",
            speed / 1e9,
            self.max_call
        );
        true
    }

    /// The inputs of `dims`, made on first use (the cache keeps the last two shapes).
    fn shape(&mut self, dims: Dimset) -> &mut ShapeData {
        if let Some(i) = self.shapes.iter().position(|s| s.dims == dims) {
            return &mut self.shapes[i];
        }
        if self.shapes.len() >= 2 {
            self.shapes.remove(0);
        }
        let case = dims.case();
        let elements =
            (case.q_heads * case.q_len + 2 * case.kv_heads * case.kv_len) * dims.head_dim * dims.batch;
        let bytes = DType::F32.bytes(elements as u64) as usize;
        let sets = if bytes <= THREE_SETS_BYTES { 3 } else { 2 };
        let host =
            (0..sets as u64).map(|s| case.inputs(self.seed.wrapping_mul(1000).wrapping_add(s))).collect();
        self.shapes.push(ShapeData { dims, host, device: HashMap::new(), prepared: Vec::new() });
        self.shapes.last_mut().expect("just pushed")
    }

    fn prepare(&mut self, spec: &Spec) -> Result<Rc<Prepared>, Error> {
        let key = (spec.mode, spec.density.map(f64::to_bits));
        let (seed, window) = (self.seed, self.window);
        let data = self.shape(spec.dims);
        if let Some((_, p)) = data.prepared.iter().find(|(k, _)| *k == key) {
            return Ok(p.clone());
        }
        let p = Rc::new(prepare(spec, data, seed, window)?);
        data.prepared.push((key, p.clone()));
        Ok(p)
    }

    fn measure_cpu(&mut self, spec: &Spec, prepared: &Prepared) -> Result<Measured, Failure> {
        let (reps, budget) = (self.reps, self.budget);
        let data = self.shape(spec.dims);
        let attn = &prepared.native;
        let once = |set: usize| -> Result<Sample, Error> {
            let (q, k, v) = &data.host[set % data.host.len()];
            let t = Instant::now();
            match spec.backend {
                Backend::CpuFast => drop(cpu_flash::attention(q, k, v, attn)?),
                _ => drop(reference::attention(q, k, v, attn)?),
            }
            Ok(Sample { wall_ms: ms(t.elapsed()), gpu_ms: None })
        };
        let samples = repeat(reps, budget, once)?;
        let kernel = match spec.backend {
            Backend::CpuFast => format!(
                "cpu-flash {}",
                match cpu_flash::Isa::detect() {
                    cpu_flash::Isa::Avx2Fma => "avx2-fma",
                    cpu_flash::Isa::Portable => "portable",
                }
            ),
            _ => "cpu-reference f64".to_string(),
        };
        Ok((samples, 0, kernel, cpu_name()))
    }

    fn measure_gpu(&mut self, spec: &Spec, prepared: &Prepared) -> Result<Measured, Failure> {
        let backend = spec.backend;
        let tune = self.tune;
        let gpu = self.gpus.entry(backend).or_insert_with(|| {
            let options = ContextOptions::from_env().map(|o| o.first_call(FirstCall::Wait)).map(|o| {
                if tune {
                    o.tune(Tuning::OnFirstUse)
                } else {
                    o
                }
            });
            let ctx = options
                .and_then(|o| Context::with_options(&o.gpu_timing(true)))
                .map_err(|e| one_line(&e.to_string()));
            let timed = ctx.as_ref().is_ok_and(Context::gpu_timing);
            Gpu { ctx, timed }
        });
        let ctx = gpu.ctx.as_ref().map_err(|e| Failure::NoAdapter(e.clone()))?;
        let (reps, budget) = (self.reps, self.budget);
        let data = self.shapes.iter_mut().find(|s| s.dims == spec.dims).expect("prepared before");
        let dt = spec.dtype;
        if !data.device.contains_key(&(backend, dt)) {
            let mut sets = Vec::new();
            for (q, k, v) in &data.host {
                sets.push((
                    Tensor::upload_as(ctx, q, dt)?,
                    Tensor::upload_as(ctx, k, dt)?,
                    Tensor::upload_as(ctx, v, dt)?,
                ));
            }
            data.device.insert((backend, dt), sets);
        }
        let sets = &data.device[&(backend, dt)];
        let mut attn = match backend {
            // the fused forward forced, whatever the query length
            Backend::GpuFused => prepared.lowered.clone().path(KernelPath::Prefill),
            Backend::GpuDecode => prepared.native.clone().path(KernelPath::Decode),
            _ => prepared.native.clone(),
        };
        if let (Some(k), Backend::GpuDecode | Backend::GpuPaged) = (self.decode_kernel, backend) {
            attn = attn.decode_kernel(k);
        }
        let attn = &attn;
        // gpu-paged: each set's K and V appended to a cache of its own (outside the timing)
        let page_size = self.page_size;
        let caches = if backend == Backend::GpuPaged {
            let mut caches = Vec::new();
            for (i, (_, k, v)) in sets.iter().enumerate() {
                let ks = k.shape();
                let config = PagedKvConfig {
                    pages: ks.batch * ks.seq.div_ceil(page_size),
                    page_size,
                    kv_heads: ks.heads,
                    head_dim: ks.head_dim,
                    dtype: dt,
                };
                let mut cache = PagedKvCache::new(ctx, config)?;
                cache.shuffle_free_pages(i as u64 + 1);
                let ids: Vec<SeqId> = (0..ks.batch).map(|_| cache.add_sequence()).collect();
                let mut rec = Recorder::new(ctx);
                cache.append(&mut rec, &ids, k, v)?;
                rec.submit()?.wait()?;
                caches.push((cache, ids));
            }
            caches
        } else {
            Vec::new()
        };
        let call = |set: usize| -> Result<Output, Error> {
            let (q, k, v) = &sets[set % sets.len()];
            let out = match backend {
                Backend::GpuPaged => {
                    let (cache, ids) = &caches[set % caches.len()];
                    let mut rec = Recorder::new(ctx);
                    let out = cache.attention(&mut rec, q, ids, attn)?;
                    rec.submit()?;
                    Ok(out)
                }
                Backend::GpuFused | Backend::GpuDecode => wgpu_attention::forward(ctx, q, k, v, attn),
                _ => naive::forward(ctx, q, k, v, attn),
            }?;
            ctx.wait_idle()?; // a call returns once submitted: time it to the end
            Ok(out)
        };
        // warm-up: compiles the pipelines (and whatever else a first call does once)
        drop(call(0)?);
        // what a steady-state call allocates, measured around the first timed one
        let allocated = std::cell::Cell::new(None);
        let info = std::cell::Cell::new(None);
        // where the backend never writes timestamps, none appear on its own context
        let once = |set: usize| -> Result<Sample, Error> {
            let before = ctx.allocated_bytes();
            let t = Instant::now();
            let out = call(set)?;
            let wall_ms = ms(t.elapsed());
            if allocated.get().is_none() {
                allocated.set(Some(ctx.allocated_bytes().saturating_sub(before)));
            }
            info.set(Some(out.info));
            Ok(Sample { wall_ms, gpu_ms: out.info.gpu_time.map(ms) })
        };
        let samples = repeat(reps, budget, once)?;
        let allocated = allocated.get().unwrap_or(0);
        let (q, k, v) = &sets[0];
        let peak = q.device_bytes() + k.device_bytes() + v.device_bytes() + allocated;
        let kernel = match backend {
            Backend::GpuFused => fused_name(info.get(), attn),
            Backend::GpuDecode => {
                info.get().map_or("decode".into(), |i| format!("{} parts{}", i.kernel, i.n_splits))
            }
            Backend::GpuPaged => info
                .get()
                .map_or("paged".into(), |i| format!("paged P{page_size} {} parts{}", i.kernel, i.n_splits)),
            _ => "naive-3pass".to_string(),
        };
        let info = &ctx.adapter().info;
        Ok((samples, peak, kernel, format!("{} ({:?})", info.name, info.backend)))
    }
}

/// Samples, peak device bytes, kernel name, device name.
type Measured = (Vec<Sample>, u64, String, String);

/// Why a row has no numbers.
enum Failure {
    Lib(Error),
    NoAdapter(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Lib(e)
    }
}

fn fail(row: &mut Row, e: &Error) {
    row.note = match e {
        Error::LimitExceeded { limit, .. } => format!("does not fit ({limit})"),
        Error::InvalidOption(_)
        | Error::UnsupportedFeature { .. }
        | Error::HeadDimUnsupported { .. }
        | Error::UnsupportedDType(_) => "unsupported".into(),
        _ => "error".into(),
    };
    row.detail = one_line(&e.to_string());
}

/// The first timed call, then more up to `reps` while they fit the time budget; rotates the input
/// sets (set 0 served the warm-up).
fn repeat(
    reps: usize,
    budget: Duration,
    mut once: impl FnMut(usize) -> Result<Sample, Error>,
) -> Result<Vec<Sample>, Error> {
    let first = once(1)?;
    let n = if first.wall_ms > 0.0 {
        ((budget.as_secs_f64() * 1e3 / first.wall_ms).floor() as usize).clamp(1, reps)
    } else {
        reps
    };
    let mut samples = vec![first];
    for r in 1..n {
        samples.push(once(r + 1)?);
    }
    Ok(samples)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The masks of a mode, built once per shape; the visited density from a block table of 64.
fn prepare(spec: &Spec, data: &ShapeData, seed: u64, window: usize) -> Result<Prepared, Error> {
    let d = spec.dims;
    let dims = d.dims();
    let density_of =
        |attn: &Attention| -> Result<f64, Error> { Ok(BlockMask::build(attn, dims, BLOCK)?.density()) };
    let causal = Attention::new().causal(Causal::BottomRight);
    let same = |attn: Attention, density: f64| Prepared {
        native: attn.clone(),
        lowered: attn,
        density,
        remark: String::new(),
        topk: None,
    };
    Ok(match spec.mode {
        Mode::Dense => same(Attention::new(), 1.0),
        Mode::Gemm | Mode::Layer => unreachable!("--mode gemm and layer run in bench_gemm"),
        Mode::Causal | Mode::Decode => {
            let density = density_of(&causal)?;
            same(causal, density)
        }
        Mode::Window => {
            let native = causal.clone().mask(Mask::window(window, 0));
            let table = Arc::new(BlockMask::build(&native, dims, BLOCK)?);
            let density = table.density();
            Prepared { native, lowered: causal.block_mask(table), density, remark: String::new(), topk: None }
        }
        Mode::BlockSparse => {
            let target = spec.density.unwrap_or(0.1);
            let (qb, kb) = (d.q_len.div_ceil(BLOCK), d.kv_len.div_ceil(BLOCK));
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ target.to_bits());
            // the diagonal block (bottom-right aligned) is always kept, so no row is empty
            let diag = |i: usize| {
                ((i * BLOCK + BLOCK - 1).min(d.q_len - 1) + d.kv_len).saturating_sub(d.q_len) / BLOCK
            };
            let data: Vec<bool> =
                (0..qb * kb).map(|e| e % kb == diag(e / kb).min(kb - 1) || rng.random_bool(target)).collect();
            let mask = Mask::Blocks { data: Arc::new(data), batch: 1, heads: 1, size: BLOCK };
            let table = Arc::new(BlockMask::build(&Attention::new().mask(mask), dims, BLOCK)?);
            let density = table.density();
            same(Attention::new().block_mask(table), density)
        }
        Mode::Topk => {
            let target = spec.density.unwrap_or(0.1);
            let kb = d.kv_len.div_ceil(BLOCK);
            let wanted = ((target * kb as f64).ceil() as usize).max(1);
            let k = wanted.min(TOPK_MAX);
            let attn = Attention::new().topk(k, BLOCK);
            // the same selection the kernels make, on the first input set
            let (q, kt, _) = &data.host[0];
            let lists = reference::topk_blocks(q, kt, &attn)?;
            let visited: usize = lists.iter().map(|(l, _)| l.len()).sum();
            let density = visited as f64 / (lists.len() * kb).max(1) as f64;
            let remark =
                if wanted > k { format!("k clipped to {TOPK_MAX} (wanted {wanted})") } else { String::new() };
            Prepared { native: attn.clone(), lowered: attn, density, remark, topk: Some(k) }
        }
    })
}

/// "fused-tiled 32x32" (the kernel family and its query × key tile), with the key splits and the
/// kind of block table, from what the last timed call ran.
fn fused_name(info: Option<CallInfo>, attn: &Attention) -> String {
    match info.and_then(|i| i.tiles.map(|t| (t, i.n_splits))) {
        Some((t, n_splits)) => {
            let mut name = format!("fused-{} {}x{}", t.family.name(), t.bq, t.bk);
            if n_splits > 1 {
                name += &format!(" split{n_splits}");
            }
            if attn.topk.is_some() {
                name += " +topk";
            } else if attn.block_mask.is_some() {
                name += " +table";
            }
            name
        }
        None => "fused".into(),
    }
}

/// "model name, N threads" of this machine.
fn cpu_name() -> String {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!("{model}, {threads} threads")
}

/// Fill the speedup columns from partner rows of the same sweep.
fn speedups(rows: &mut [Row]) {
    let index: HashMap<(String, String), usize> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.ok())
        .map(|(i, r)| ((r.backend.clone(), r.problem_key()), i))
        .collect();
    // a / b of the times, GPU against GPU when both have it, else wall against wall
    let ratio = |slow: &Row, fast: &Row| -> Option<f64> {
        let both_gpu = slow.timer.as_deref() == Some("gpu") && fast.timer.as_deref() == Some("gpu");
        let (a, b) =
            if both_gpu { (slow.median_ms?, fast.median_ms?) } else { (slow.wall_ms?, fast.wall_ms?) };
        (b > 0.0).then(|| a / b)
    };
    let find = |backend: &str, key: &str| index.get(&(backend.to_string(), key.to_string())).copied();
    for i in 0..rows.len() {
        if !rows[i].ok() {
            continue;
        }
        let key = rows[i].problem_key();
        if rows[i].backend == "gpu-fused" {
            rows[i].speedup_fused_vs_naive = find("gpu-naive", &key).and_then(|j| ratio(&rows[j], &rows[i]));
            rows[i].speedup_gpu_vs_cpu = find("cpu-fast", &key).and_then(|j| ratio(&rows[j], &rows[i]));
        }
        if rows[i].mode != "dense" && rows[i].mode != "decode" {
            let mut dense = rows[i].clone();
            dense.mode = "dense".into();
            dense.requested_density = None;
            if let Some(j) = find(&rows[i].backend, &dense.problem_key()) {
                rows[i].speedup_vs_dense = ratio(&rows[j], &rows[i]);
            }
        }
    }
}

/// Significant digits that suit a time or a rate.
fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// The aligned table.
fn table(rows: &[Row]) -> String {
    let opt = |x: Option<f64>| x.map_or("-".to_string(), num);
    let speed = |x: Option<f64>| x.map_or(String::new(), |x| format!("{x:.2}x"));
    let header = [
        "backend",
        "mode",
        "dtype",
        "B",
        "Hq",
        "Hkv",
        "Nq",
        "Nk",
        "D",
        "density",
        "median_ms",
        "timer",
        "wall_ms",
        "GFLOP/s",
        "GB/s",
        "dev_MiB",
        "kernel",
        "fused/naive",
        "gpu/cpu",
        "vs_dense",
        "note",
    ];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let mode = match r.requested_density {
            Some(x) => format!("{}@{x}", r.mode),
            None => r.mode.clone(),
        };
        cells.push(vec![
            r.backend.clone(),
            mode,
            r.dtype.clone(),
            r.batch.to_string(),
            r.q_heads.to_string(),
            r.kv_heads.to_string(),
            r.q_len.to_string(),
            r.kv_len.to_string(),
            r.head_dim.to_string(),
            format!("{:.3}", r.density),
            opt(r.median_ms),
            r.timer.clone().unwrap_or_else(|| "-".into()),
            opt(r.wall_ms),
            opt(r.gflops),
            opt(r.gbps),
            r.peak_device_bytes.map_or("-".into(), |b| format!("{:.1}", b as f64 / (1 << 20) as f64)),
            r.kernel.clone(),
            speed(r.speedup_fused_vs_naive),
            speed(r.speedup_gpu_vs_cpu),
            speed(r.speedup_vs_dense),
            r.note.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| cells.iter().map(|row| row[c].chars().count()).max().unwrap_or(0))
        .collect();
    // text columns left-aligned, numbers right-aligned
    let left = |c: usize| matches!(c, 0 | 1 | 2 | 11 | 16 | 20);
    let mut out = String::new();
    for (i, row) in cells.iter().enumerate() {
        let line: Vec<String> =
            row.iter()
                .enumerate()
                .map(|(c, s)| {
                    if left(c) {
                        format!("{s:<w$}", w = widths[c])
                    } else {
                        format!("{s:>w$}", w = widths[c])
                    }
                })
                .collect();
        out += line.join("  ").trim_end();
        out.push('\n');
        if i == 0 {
            out += &"-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1));
            out.push('\n');
        }
    }
    out
}

/// Why rows have no numbers, once per backend and reason (the table shows only the short note).
fn footnotes(rows: &[Row]) -> String {
    let mut seen = HashSet::new();
    let mut out = String::new();
    for r in rows.iter().filter(|r| !r.ok() && !r.detail.is_empty()) {
        // the prediction's numbers differ per row: one line per backend for those
        let reason = if r.note.starts_with("skipped") { r.note.clone() } else { r.detail.clone() };
        if seen.insert((r.backend.clone(), reason)) {
            out += &format!("{} ({} {}): {}: {}\n", r.backend, r.mode, r.x(), r.note, r.detail);
        }
    }
    out
}

/// The rows as CSV (RFC 4180 quoting), columns in [`KEYS`] order.
fn csv(rows: &[Row]) -> String {
    let field = |v: Option<&Value>| -> String {
        let s = match v {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s
        }
    };
    let mut out = KEYS.join(",") + "\n";
    for r in rows {
        let obj = match serde_json::to_value(r).expect("rows serialise") {
            Value::Object(m) => m,
            _ => unreachable!("rows serialise to objects"),
        };
        out += &KEYS.iter().map(|k| field(obj.get(*k))).collect::<Vec<_>>().join(",");
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keys_are_the_csv_columns() {
        let row = Row { median_ms: Some(1.5), timer: Some("gpu".into()), ..Default::default() };
        let Value::Object(obj) = serde_json::to_value(&row).expect("serialise") else { panic!("an object") };
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        let mut columns = KEYS.to_vec();
        keys.sort_unstable();
        columns.sort_unstable();
        assert_eq!(keys, columns);
    }

    #[test]
    fn rows_round_trip_and_non_finite_numbers_are_null() {
        let row = Row {
            backend: "gpu-fused".into(),
            mode: "topk".into(),
            dtype: "f32".into(),
            batch: 1,
            q_heads: 8,
            kv_heads: 2,
            q_len: 1024,
            kv_len: 2048,
            head_dim: 64,
            requested_density: Some(0.1),
            density: 0.125,
            median_ms: Some(2.5),
            gflops: Some(f64::INFINITY),
            peak_device_bytes: Some(1 << 20),
            reps: 5,
            kernel: "fused-tiled 32x32 +topk".into(),
            note: "a \"quoted\" note".into(),
            ..Default::default()
        };
        let text = serde_json::to_string_pretty(&[&row]).expect("serialise");
        let value: Value = serde_json::from_str(&text).expect("valid JSON");
        assert!(value[0]["gflops"].is_null() && value[0]["wall_ms"].is_null(), "{text}");
        let back: Vec<Row> = serde_json::from_str(&text).expect("read back");
        assert_eq!(back, [Row { gflops: None, ..row }]);
    }

    #[test]
    fn peer_rows_may_leave_out_or_null_the_non_identity_keys() {
        // what peers/burn writes: no wall_ms, timer, reps, device or detail; null numbers
        let burn = r#"{"backend": "burn-wgpu", "mode": "dense", "dtype": "f32", "batch": 1,
            "q_heads": 8, "kv_heads": 8, "q_len": 1024, "kv_len": 1024, "head_dim": 64,
            "density": 1.0, "median_ms": null, "gflops": 3, "gbps": null,
            "peak_device_bytes": null, "kernel": "burn 0.22.1 attention", "note": "failed: x",
            "extra": [1, 2]}"#;
        let row: Row = serde_json::from_str(burn).expect("a burn row");
        assert_eq!((row.median_ms, row.gflops, row.reps), (None, Some(3.0), 0));
        assert_eq!((row.note.as_str(), row.timer.as_deref(), row.device.as_str()), ("failed: x", None, ""));
        // the identity keys alone; null text and density
        let bare = r#"{"backend": "x", "mode": "causal", "batch": 2, "q_heads": 1, "kv_heads": 1,
            "q_len": 16, "kv_len": 32, "head_dim": 8, "dtype": null, "density": null, "note": null}"#;
        let row: Row = serde_json::from_str(bare).expect("a bare row");
        assert_eq!((row.dtype.as_str(), row.density, row.note.as_str()), ("f32", 1.0, ""));
        // an identity key missing is an error that names it
        let err = serde_json::from_str::<Row>(r#"{"backend": "x", "mode": "dense"}"#).unwrap_err();
        assert!(err.to_string().contains("batch"), "{err}");
    }
}
