//! `wgattn`: the command-line face of `wgpu-attention`.
//!
//! - `wgattn info` describes the adapter the library picks (and the limits its kernels care about);
//! - `wgattn check` runs a randomised suite of the GPU kernel against the f64 oracle on that
//!   adapter;
//! - `wgattn run` computes attention on NumPy `.npy` files, on the GPU or with the CPU oracle;
//! - `wgattn tune` fills the kernel-family tuning cache for this adapter;
//! - `wgattn warm-up` compiles ahead of time the kernels of given head dims and mask classes;
//! - `wgattn bench` times the backends (fused and naive GPU kernels, fast CPU path, oracle) over
//!   shapes and masks and writes a table, JSON, CSV and an SVG plot.
//!
//! This file holds the argument definitions, the dispatch and the exit codes:
//! 0 success, 1 `check` found a failing case, 2 any error (bad arguments, bad input files, no
//! adapter, a library error). Errors are printed to stderr as one `error: ...` line.

mod bench;
mod bench_gemm;
mod check;
mod info;
mod masks;
mod merge;
mod mha;
mod npy;
mod plot;
mod run;
mod tune;
mod warm_up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand;
use clap::{Args, Parser, Subcommand, ValueEnum};
use wgpu_attention::{Causal, Layout};

/// Exit code of a `check` with failing cases.
const EXIT_FAILED: u8 = 1;
/// Exit code of every error (clap's usage errors use it too).
const EXIT_ERROR: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "wgattn",
    version,
    about = "Fused attention kernels on wgpu: adapter info, self-check, and attention on .npy files",
    after_help = "Adapter choice: WGATTN_BACKEND (vulkan,metal,dx12,gl) and WGATTN_ADAPTER (a \
                  substring of the adapter name) override the default. On a CPU with AVX-512, \
                  wgattn runs Mesa's llvmpipe/lavapipe with 512-bit vectors \
                  (LP_NATIVE_VECTOR_WIDTH=512 unless set; 256 keeps Mesa's default). \
                  RUST_LOG=info shows the library's log."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the adapter, its enabled features and the limits the kernels depend on.
    Info,
    /// Run a randomised suite of the GPU kernel against the f64 CPU oracle on this adapter.
    Check(CheckArgs),
    /// Compute attention on .npy files (float32, C order, 4-D), with optional masks.
    #[command(
        after_help = "Masks: --causal, --kv-lens, --window, --doc-ids, --prefix, --mask, --block-mask \
                            and --pattern may be combined; a key is visible only where every one of \
                            them allows it."
    )]
    Run(Box<RunArgs>),
    /// Merge two attention states computed over disjoint key sets (O and LSE files of `wgattn
    /// run`) into the state over their union, by log-sum-exp.
    Merge(MergeArgs),
    /// PyTorch's nn.MultiheadAttention (batch first) with weights from a safetensors file.
    Mha(MhaArgs),
    /// A Llama attention block (causal self-attention with RoPE, GQA) with weights from a
    /// safetensors file under Hugging Face's names.
    LlamaAttn(LlamaAttnArgs),
    /// Time the backends over shapes and masks: table on stdout, optional JSON, CSV and SVG plot.
    #[command(after_help = bench::AFTER_HELP)]
    Bench(Box<BenchArgs>),
    /// Time every kernel family on this adapter for common head dims and mask classes, keep the
    /// fastest per key, and write the tuning cache the library reads.
    Tune(TuneArgs),
    /// Compile ahead of time the kernels that calls with these head dims and mask classes will
    /// need (a slow start instead of a slow first call).
    WarmUp(WarmUpArgs),
}

/// Options of `wgattn merge`.
/// `wgattn llama-attn`.
#[derive(clap::Args, Debug)]
pub struct LlamaAttnArgs {
    /// The block's weights (safetensors: q_proj, k_proj, v_proj, o_proj .weight and optional
    /// .bias after --prefix).
    #[arg(long, value_name = "W.safetensors")]
    pub weights: PathBuf,
    /// The prefix of the names, e.g. `model.layers.0.self_attn.`.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Input, float32 [B, N, E].
    #[arg(long, value_name = "X.npy")]
    pub x: PathBuf,
    /// Query heads.
    #[arg(long, value_name = "H")]
    pub num_heads: usize,
    /// K/V heads (dividing --num-heads).
    #[arg(long, value_name = "G")]
    pub num_kv_heads: usize,
    /// The rotary base θ.
    #[arg(long, value_name = "T", default_value_t = 10000.0)]
    pub rope_theta: f64,
    /// The position of X's first row.
    #[arg(long, value_name = "START", default_value_t = 0)]
    pub positions: usize,
    /// Output, float32 [B, N, E].
    #[arg(long, value_name = "Y.npy")]
    pub out: PathBuf,
}

/// `wgattn mha`.
#[derive(clap::Args, Debug)]
pub struct MhaArgs {
    /// The module's weights (safetensors, PyTorch's names: in_proj_weight, in_proj_bias,
    /// out_proj.weight, out_proj.bias, or q/k/v_proj_weight).
    #[arg(long, value_name = "W.safetensors")]
    pub weights: PathBuf,
    /// A prefix of the tensor names in the file.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Input, float32 [B, N, E] (batch first): query, and key and value without --kv.
    #[arg(long, value_name = "X.npy")]
    pub x: PathBuf,
    /// Key and value of cross-attention, float32 [B, Nk, kdim].
    #[arg(long, value_name = "KV.npy")]
    pub kv: Option<PathBuf>,
    /// Heads (E / heads is the head dim).
    #[arg(long, value_name = "H")]
    pub num_heads: usize,
    /// Output, float32 [B, N, E].
    #[arg(long, value_name = "Y.npy")]
    pub out: PathBuf,
    /// Causal (query i sees keys 0..=i).
    #[arg(long)]
    pub causal: bool,
    /// Boolean [B, Nk], true = a padding key (ignored).
    #[arg(long, value_name = "M.npy")]
    pub key_padding_mask: Option<PathBuf>,
    /// Write the attention probabilities (not built yet: refused).
    #[arg(long, value_name = "P.npy")]
    pub need_weights: Option<PathBuf>,
    /// With --need-weights: averaged over heads (not built yet: refused).
    #[arg(long)]
    pub average: bool,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// O of the first state, float32 or float16: [B, H, N, D] (bhsd) or [B, N, H, D] (bshd).
    #[arg(long, value_name = "O1.npy")]
    pub o1: PathBuf,
    /// LSE of the first state, float32 [B, H, N] (natural log; -inf: the row saw no key).
    #[arg(long, value_name = "L1.npy")]
    pub lse1: PathBuf,
    /// O of the second state, the shape of --o1.
    #[arg(long, value_name = "O2.npy")]
    pub o2: PathBuf,
    /// LSE of the second state.
    #[arg(long, value_name = "L2.npy")]
    pub lse2: PathBuf,
    /// The merged O, in the inputs' shape and layout (float16 when both are float16).
    #[arg(long, value_name = "O.npy")]
    pub out: PathBuf,
    /// The merged LSE, float32 [B, H, N].
    #[arg(long, value_name = "L.npy")]
    pub lse_out: PathBuf,
    /// Axis order of the O files.
    #[arg(long, value_enum, default_value_t = LayoutArg::Bhsd)]
    pub layout: LayoutArg,
    /// Where to merge: the GPU, or the f64 CPU oracle.
    #[arg(long, value_enum, default_value_t = DeviceArg::Gpu)]
    pub device: DeviceArg,
}

/// Options of `wgattn warm-up`.
#[derive(Args, Debug)]
pub struct WarmUpArgs {
    /// Head dims (kernels compile in sizes of 32: 64 also serves 33..=64).
    #[arg(long, value_delimiter = ',', value_name = "D,...", default_value = "64,128")]
    pub head_dim: Vec<usize>,
    /// Mask classes.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        value_name = "M,...",
        default_value = "dense,causal,table"
    )]
    pub mask: Vec<MaskClassArg>,
    /// Element types of Q, K, V and O (each is a kernel of its own).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "T,...", default_value = "f32")]
    pub dtype: Vec<DTypeArg>,
    /// Also the soft-capping variants.
    #[arg(long)]
    pub softcap: bool,
    /// Also the ALiBi variants.
    #[arg(long)]
    pub alibi: bool,
}

/// `wgattn warm-up --mask`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MaskClassArg {
    /// No mask, or key padding only (also the merge of split keys).
    Dense,
    /// Causal.
    Causal,
    /// Block tables: masks, sparse patterns, top-k.
    Table,
}

/// Options of `wgattn tune`.
#[derive(Args, Debug)]
pub struct TuneArgs {
    /// Head dims to tune (each is rounded up to a multiple of 32).
    #[arg(long, value_delimiter = ',', value_name = "D,...", default_value = "32,64,128,256")]
    pub head_dim: Vec<usize>,
}

/// Options of `wgattn check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Seed of the random inputs (default: WGATTN_SEED, else the clock). Printed first, so a
    /// failing run can be reproduced.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run a short subset of the suite.
    #[arg(long)]
    pub quick: bool,
}

/// Options of `wgattn run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Queries, float32 or float16: [B, Hq, Nq, D] (bhsd) or [B, Nq, Hq, D] (bshd).
    #[arg(long, value_name = "Q.npy")]
    pub q: PathBuf,
    /// Keys: [B, Hkv, Nk, D] (bhsd) or [B, Nk, Hkv, D] (bshd); Hkv must divide Hq.
    #[arg(long, value_name = "K.npy")]
    pub k: PathBuf,
    /// Values: same shape as K.
    #[arg(long, value_name = "V.npy")]
    pub v: PathBuf,
    /// Output O, same shape and layout as Q: float16 with `--dtype f16`, float32 otherwise.
    #[arg(long, value_name = "O.npy")]
    pub out: PathBuf,
    /// Device storage of Q, K, V and O (float32 or float16 inputs are converted on upload,
    /// rounding to nearest); scores, softmax and accumulation are f32 whatever it is.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32, ignore_case = true)]
    pub dtype: DTypeArg,
    /// Also write the log-sum-exp of each row, float32 [B, Hq, Nq] (-inf for a row with no key).
    #[arg(long, value_name = "LSE.npy")]
    pub lse: Option<PathBuf>,
    /// Memory order of the Q, K, V and O files.
    #[arg(long, value_enum, default_value_t = LayoutArg::Bhsd, ignore_case = true)]
    pub layout: LayoutArg,
    /// Softmax scale (default 1/sqrt(D)).
    #[arg(long, allow_negative_numbers = true)]
    pub scale: Option<f32>,
    /// Causal mask; `--causal` alone means bottom-right (FlashAttention), `--causal=top-left` is
    /// PyTorch's `is_causal=True`.
    #[arg(
        long,
        value_enum,
        num_args = 0..=1,
        default_missing_value = "bottom-right",
        value_name = "ALIGN"
    )]
    pub causal: Option<CausalArg>,
    /// Per-batch key lengths (key padding), comma separated, one per batch.
    #[arg(long, value_delimiter = ',', value_name = "L0,L1,...")]
    pub kv_lens: Option<Vec<u32>>,
    /// ALiBi slopes: a 1-D float32 .npy with one slope per query head.
    #[arg(long, value_name = "SLOPES.npy")]
    pub alibi_slopes: Option<PathBuf>,
    /// Logit soft-capping value (> 0).
    #[arg(long, allow_negative_numbers = true)]
    pub softcap: Option<f32>,
    /// GPU only: split the key range into N parts (default: automatic).
    #[arg(long, value_name = "N")]
    pub num_splits: Option<u32>,
    /// Decode kernel of a decode call (Nq ≤ 16, or any Nq through --page-size): key-ranges or
    /// split-d (see `wgattn bench --help`) [default: the library's choice for the adapter].
    #[arg(long, value_name = "KERNEL")]
    pub decode_kernel: Option<DecodeKernelArg>,
    /// Load K and V into a paged KV cache with pages of P tokens (a multiple of 16, 16 to 256) in
    /// a shuffled physical order and run attention through it (the decode kernel; masks: causal,
    /// --kv-lens, --window only).
    #[arg(long, value_name = "P")]
    pub page_size: Option<usize>,
    /// Seed of the shuffled page order of --page-size.
    #[arg(long, value_name = "S", default_value_t = 1, requires = "page_size")]
    pub page_seed: u64,
    /// Sliding window: query i sees the keys from L before to R after its position i + Nk - Nq
    /// (bottom-right aligned, like --causal).
    #[arg(long, value_name = "L,R", value_parser = masks::parse_window)]
    pub window: Option<masks::Window>,
    /// Packed documents: an int32/int64 [B, N] .npy of per-token document ids (needs Nq = Nk = N);
    /// a query sees only keys of its own document.
    #[arg(long, value_name = "IDS.npy")]
    pub doc_ids: Option<PathBuf>,
    /// Prefix-LM: keys j < P are visible to every query, later keys causally (bottom-right); use
    /// without --causal, which would hide the prefix's later keys.
    #[arg(long, value_name = "P")]
    pub prefix: Option<usize>,
    /// Dense element mask: a bool or uint8 [B|1, Hq|1, Nq, Nk] .npy (true / nonzero = visible; a
    /// dimension of 1 is broadcast).
    #[arg(long, value_name = "M.npy")]
    pub mask: Option<PathBuf>,
    /// Block mask: a bool or uint8 [B|1, Hq|1, ceil(Nq/S), ceil(Nk/S)] .npy with S = --block-size
    /// (required); a visible block shows all its elements.
    #[arg(long, value_name = "BM.npy", requires = "block_size")]
    pub block_mask: Option<PathBuf>,
    /// Block edge, 32, 64 or 128: of --block-mask, of bigbird's random blocks, and of the block
    /// table the GPU lowers every mask to (default 64).
    #[arg(long, value_name = "S", value_parser = masks::parse_block_size)]
    pub block_size: Option<usize>,
    /// Sparse pattern: longformer:window=W,global=G | bigbird:window=W,global=G,random=R,seed=S |
    /// strided:stride=S | fixed:stride=S,c=C | dilated:window=W,dilation=D.
    #[arg(long, value_name = "NAME:KEY=N,...", value_parser = masks::parse_pattern)]
    pub pattern: Option<masks::Pattern>,
    /// Dynamic top-k block sparsity: each query block attends to the K key blocks whose mean key
    /// scores best against its mean query (chosen on the GPU every call; not with other masks).
    #[arg(long, value_name = "K")]
    pub topk: Option<usize>,
    /// Block edge of --topk: 32, 64 or 128 (default 64).
    #[arg(long, value_name = "S", requires = "topk", value_parser = masks::parse_block_size)]
    pub topk_block: Option<usize>,
    /// With --topk: always keep key block 0 (an attention sink).
    #[arg(long, requires = "topk")]
    pub topk_sink: bool,
    /// Where to compute: the GPU kernel, or the f64 CPU oracle (slow; rounded to f32).
    #[arg(long, value_enum, default_value_t = DeviceArg::Gpu)]
    pub device: DeviceArg,
}

/// Options of `wgattn bench`. Every axis takes a comma-separated list; the sweep is their cross
/// product. Axes left out take the defaults (or `--quick`'s smaller ones).
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Backends [default: gpu-fused,gpu-naive,cpu-fast].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "B,...")]
    pub backend: Option<Vec<bench::Backend>>,
    /// Masks [default: dense,causal]. window: causal sliding window of --window keys; block-sparse:
    /// random 64-blocks at --density (diagonal kept); topk: the ceil(density·blocks) best 64-blocks
    /// per query block; decode: --q-len queries (default 1) against Nk keys (causal).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "M,...")]
    pub mode: Option<Vec<bench::Mode>>,
    /// Query (and, without --kv-seq, key) lengths [default: 512,1024,2048; --quick: 256,512].
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub seq: Option<Vec<usize>>,
    /// Key lengths, crossed with --seq [default: equal to --seq]; decode's cache length.
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub kv_seq: Option<Vec<usize>>,
    /// Tokens per page of the gpu-paged backend (a multiple of 16, 16 to 256).
    #[arg(long, default_value_t = 16)]
    pub page_size: usize,
    /// Decode kernel of gpu-decode and gpu-paged: key-ranges (one invocation per key range: CPU
    /// adapters) or split-d (the head dim across a subgroup's lanes: GPUs) [default: the
    /// library's choice for the adapter].
    #[arg(long, value_name = "KERNEL")]
    pub decode_kernel: Option<DecodeKernelArg>,
    /// Query lengths of the decode mode (speculative decoding: a few queries) [default: 1].
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub q_len: Option<Vec<usize>>,
    /// Head dims [default: 64].
    #[arg(long, value_delimiter = ',', value_name = "D,...")]
    pub head_dim: Option<Vec<usize>>,
    /// Query heads [default: 8; --quick: 4].
    #[arg(long, value_delimiter = ',', value_name = "H,...")]
    pub heads: Option<Vec<usize>>,
    /// K/V heads, each dividing the query heads (GQA/MQA) [default: equal to --heads].
    #[arg(long, value_delimiter = ',', value_name = "H,...")]
    pub kv_heads: Option<Vec<usize>>,
    /// Batch sizes [default: 1].
    #[arg(long, value_delimiter = ',', value_name = "B,...")]
    pub batch: Option<Vec<usize>>,
    /// Block densities of block-sparse and topk, in (0, 1] [default: 0.1].
    #[arg(long, value_delimiter = ',', value_name = "F,...")]
    pub density: Option<Vec<f64>>,
    /// Device storage of Q, K, V and O: f32, f16, bf16 [default: f32]. Scores and accumulation
    /// are f32 whatever it is; GB/s counts the smaller traffic of 16-bit storage. The CPU
    /// backends compute in f32 on the same inputs.
    #[arg(long, value_delimiter = ',', value_name = "T,...")]
    pub dtype: Option<Vec<String>>,
    /// Window of the window mode: keys before the query's position.
    #[arg(long, value_name = "W", default_value_t = 256)]
    pub window: usize,
    /// Timed repetitions per row (fewer when one call is long) [default: 5; --quick: 3].
    #[arg(long, value_name = "N")]
    pub reps: Option<usize>,
    /// Skip a row whose call would take longer than this, predicted from the same backend and
    /// mode's speed at a smaller size earlier in the sweep.
    #[arg(long, value_name = "S", default_value_t = 30.0)]
    pub max_call_seconds: f64,
    /// A small sweep that finishes in about a minute on a software adapter.
    #[arg(long)]
    pub quick: bool,
    /// Seed of the random inputs and block masks.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the rows as a JSON array.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write the rows as CSV.
    #[arg(long, value_name = "PATH")]
    pub csv: Option<PathBuf>,
    /// Draw GFLOP/s against sequence length, one line per backend and mode, as SVG.
    #[arg(long, value_name = "PATH.svg")]
    pub plot: Option<PathBuf>,
    /// Output features (N) of the gemm mode [default: 1024]; its rows M are --seq [default: 4096].
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub out_features: Option<Vec<usize>>,
    /// Input features (K) of the gemm mode [default: 1024].
    #[arg(long, value_delimiter = ',', value_name = "K,...")]
    pub in_features: Option<Vec<usize>>,
    /// A GEMM tile of the gemm mode, `xr,sl,c,ku,wg[,subgroups]` (repeat the flag for several)
    /// [default: the adapter's tile].
    #[arg(long, value_name = "XR,SL,C,KU,WG")]
    pub gemm_tile: Vec<String>,
    /// Embedding width E of the layer mode [default: 1024] (heads from --heads, default 16).
    #[arg(long, value_name = "E", default_value_t = 1024)]
    pub embed_dim: usize,
    /// gemm and layer modes: time PyTorch's CPU F.linear / nn.MultiheadAttention on the same
    /// shapes in the same run (scripts/torch_linear.py, scripts/torch_mha.py; python3 with torch).
    #[arg(long)]
    pub torch: bool,
    /// Add the rows of JSON files in the bench's format (e.g. from scripts/torch_sdpa.py) to the
    /// table, plot, JSON and CSV.
    #[arg(long, value_delimiter = ',', value_name = "PATH,...")]
    pub merge_json: Option<Vec<PathBuf>>,
}

/// `--layout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    /// [batch, heads, seq, head_dim] (PyTorch's scaled_dot_product_attention).
    Bhsd,
    /// [batch, seq, heads, head_dim] (FlashAttention).
    Bshd,
}

impl From<LayoutArg> for Layout {
    fn from(l: LayoutArg) -> Self {
        match l {
            LayoutArg::Bhsd => Layout::Bhsd,
            LayoutArg::Bshd => Layout::Bshd,
        }
    }
}

/// `--dtype`: how tensors are stored on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    /// IEEE binary32.
    F32,
    /// IEEE binary16 (scores, softmax and accumulation stay f32).
    F16,
    /// bfloat16 (scores, softmax and accumulation stay f32).
    Bf16,
}

impl From<DTypeArg> for wgpu_attention::DType {
    fn from(d: DTypeArg) -> Self {
        match d {
            DTypeArg::F32 => wgpu_attention::DType::F32,
            DTypeArg::F16 => wgpu_attention::DType::F16,
            DTypeArg::Bf16 => wgpu_attention::DType::BF16,
        }
    }
}

/// `--causal`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CausalArg {
    /// Query i sees keys j <= i + Nk - Nq.
    BottomRight,
    /// Query i sees keys j <= i.
    TopLeft,
}

impl From<CausalArg> for Causal {
    fn from(c: CausalArg) -> Self {
        match c {
            CausalArg::BottomRight => Causal::BottomRight,
            CausalArg::TopLeft => Causal::TopLeft,
        }
    }
}

/// `--device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// The fused WGSL kernel on the adapter.
    Gpu,
    /// The f64 CPU oracle.
    Cpu,
}

/// Every error a subcommand can end with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Reading or writing a .npy file.
    #[error(transparent)]
    Npy(#[from] npy::NpyError),
    /// Options that do not fit the input files.
    #[error("{0}")]
    Usage(String),
    /// The library refused the problem or the GPU failed.
    #[error(transparent)]
    Attention(#[from] wgpu_attention::Error),
}

fn main() -> ExitCode {
    // before anything reads the environment or loads a driver (LP_NATIVE_VECTOR_WIDTH=256 opts out)
    // SAFETY: no other thread exists yet.
    unsafe { wgpu_attention::prefer_wide_cpu_vectors() };
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("wgattn=warn,wgpu_attention=warn"),
    )
    .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help, --version, and a bare `wgattn`, which shows the help: clap's own output.
        Err(e) if !e.use_stderr() || e.kind() == DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        Err(e) => {
            // clap's message without its usage and hint paragraphs, on one line.
            let rendered = e.render().to_string();
            let message = rendered.split("\n\n").next().unwrap_or_default();
            eprintln!("{} (see `wgattn --help`)", one_line(message));
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let result = match &cli.command {
        Command::Info => info::info().map(|()| ExitCode::SUCCESS),
        Command::Check(args) => {
            check::check(args)
                .map(|all_passed| if all_passed { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILED) })
        }
        Command::Run(args) => run::run(args).map(|()| ExitCode::SUCCESS),
        Command::Merge(args) => merge::merge(args).map(|()| ExitCode::SUCCESS),
        Command::Mha(args) => mha::mha(args).map(|()| ExitCode::SUCCESS),
        Command::LlamaAttn(args) => mha::llama_attn(args).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => bench::bench(args).map(|()| ExitCode::SUCCESS),
        Command::Tune(args) => tune::tune(args).map(|()| ExitCode::SUCCESS),
        Command::WarmUp(args) => warm_up::warm_up(args).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {}", one_line(&e.to_string()));
        ExitCode::from(EXIT_ERROR)
    })
}

/// `msg` on one line: wgpu's validation errors span several.
pub(crate) fn one_line(msg: &str) -> String {
    msg.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// `--decode-kernel`: [`wgpu_attention::DecodeKernel`] by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DecodeKernelArg {
    /// `DecodeKernel::KeyRanges`
    KeyRanges,
    /// `DecodeKernel::SplitD`
    SplitD,
}

impl From<DecodeKernelArg> for wgpu_attention::DecodeKernel {
    fn from(k: DecodeKernelArg) -> Self {
        match k {
            DecodeKernelArg::KeyRanges => wgpu_attention::DecodeKernel::KeyRanges,
            DecodeKernelArg::SplitD => wgpu_attention::DecodeKernel::SplitD,
        }
    }
}
