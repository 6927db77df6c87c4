//! `wgattn check`: the GPU kernel against the f64 oracle on the user's adapter.
//!
//! Every case runs through [`wgpu_attention::testing::run_case`] (outputs poisoned with NaN before
//! the kernel, so an unwritten element fails) and must pass [`Errors::pass`] at `1e-5`. The suite
//! covers odd sizes for every supported kind of head dim, both causal alignments, GQA/MQA, key
//! padding with an empty batch (O = 0, LSE = −∞), ALiBi, soft-capping, the BSHD layout, forced
//! key splits, and long key ranges that trip lavapipe's 65,535-loop-iteration limit when a kernel
//! does not split them. A few cases with random sizes and options, drawn from the seed, follow the
//! fixed ones; then f16 and bf16 storage cases, by FlashAttention's 16-bit rule
//! ([`HalfErrors::pass`]). `--quick` runs a representative subset.
//!
//! The pipelines the cases need are compiled first (one tiny call per head dim, mask class and
//! kernel family: [`Context::warm_up_all`]), so the two times print apart; the context waits for
//! its kernels (`FirstCall::Wait`), so the check runs the full kernels a warm context runs, never
//! a first call's stand-in. On a 2-core Xeon of CI's kind (lavapipe at 512 bits, `wgattn check
//! --seed 1`, 2026-12-06): with cold caches 241 s compiling 24 pipelines and 56 s running the 79
//! cases (5 more pipelines compiled there: soft-capping, ALiBi and unaligned variants), 4.9 min in
//! all (5.3 min in an earlier run); with every cache warm 12 s and 7 s (docs/PERFORMANCE.md,
//! "Issue 14, evening of 2026-12-06").

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wgpu_attention::kernels::flash::{TileConfig, FAMILIES};
use wgpu_attention::testing::{alibi_slopes, fresh_seed, run_case, run_case_16, Case, Errors, HalfErrors};
use wgpu_attention::{
    Attention, Causal, Context, ContextOptions, DType, FirstCall, Layout, Mask, MaskClass, WarmUp,
};

use crate::{one_line, CheckArgs, CliError};

/// Tolerance of [`Errors::pass`] (relative; the absolute ones derive from it).
const TOLERANCE: f64 = 1e-5;

/// Run the suite; `Ok(true)` when every case passed.
pub fn check(args: &CheckArgs) -> Result<bool, CliError> {
    let seed = args.seed.unwrap_or_else(fresh_seed);
    println!("seed: {seed} (reproduce with `wgattn check --seed {seed}`)");
    // the kernels a warm context runs: what is checked is what calls will run
    let ctx = Context::with_options(&ContextOptions::from_env()?.first_call(FirstCall::Wait))?;
    let info = &ctx.adapter().info;
    println!("adapter: {} ({:?}, {:?})", info.name, info.backend, info.device_type);

    let mut cases = if args.quick { quick() } else { full() };
    cases.extend(families(&ctx, args.quick));
    cases.extend(random(seed, if args.quick { 2 } else { 12 }));
    let names: Vec<String> = cases.iter().map(ToString::to_string).collect();
    let width = names.iter().map(String::len).max().unwrap_or(0).max(4);
    println!("{:<width$}  {:>9}  {:>9}  {:>9}  {:>7}  result", "case", "rel", "max abs", "lse abs", "time");
    println!("{}", "-".repeat(width + 50));

    // compile first, apart: what the cases need, by tiny calls (seconds to minutes on a software
    // adapter with a cold shader cache; docs/COMPILE.md)
    let compile = warm_up(&ctx, &cases)?;
    println!(
        "compile: {:.1} s ({} pipelines for {} head-dim, mask-class and kernel combinations)",
        compile.elapsed.as_secs_f64(),
        compile.pipelines,
        compile.steps
    );
    let compiled = ctx.cached_pipelines();

    let (mut passed, mut failed) = (0usize, 0usize);
    let started = Instant::now();
    for (case, name) in cases.iter().zip(&names) {
        let t = Instant::now();
        let result = run_case(&ctx, case, seed);
        let secs = t.elapsed().as_secs_f64();
        let (cols, ok, note) = match result {
            Ok(e) => (columns(&e), e.pass(TOLERANCE), String::new()),
            Err(err) => (["-"; 3].map(String::from), false, format!("  {}", one_line(&err.to_string()))),
        };
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
        let [rel, max_abs, lse] = cols;
        println!(
            "{name:<width$}  {rel:>9}  {max_abs:>9}  {lse:>9}  {secs:>6.2}s  {}{note}",
            if ok { "PASS" } else { "FAIL" }
        );
    }
    println!(
        "run: {} cases in {:.1} s ({} more pipelines compiled while running: soft-capping, ALiBi and \
         unaligned variants), tolerance rel {TOLERANCE:e}",
        cases.len(),
        started.elapsed().as_secs_f64(),
        ctx.cached_pipelines() - compiled
    );

    // 16-bit storage: by FlashAttention's rule (HalfErrors::pass)
    let has_f16 = ctx.adapter().features.contains(wgpu::Features::SHADER_F16);
    println!(
        "16-bit: f16 and bf16 run on every adapter (two elements a 32-bit word, core WGSL; this adapter {} SHADER_F16, which they do not need); none skipped",
        if has_f16 { "has" } else { "lacks" }
    );
    let started = Instant::now();
    let halves = half_cases(args.quick);
    for (case, qkv, o) in &halves {
        let name = format!("{case} {qkv}->{o}");
        let t = Instant::now();
        let result = run_case_16(&ctx, case, seed, *qkv, *o);
        let secs = t.elapsed().as_secs_f64();
        let (cols, ok, note) = match result {
            Ok(e) => (columns(&e.kernel), e.pass(), format!("  (naive {:.2e})", e.naive.rel)),
            Err(err) => (["-"; 3].map(String::from), false, format!("  {}", one_line(&err.to_string()))),
        };
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
        let [rel, max_abs, lse] = cols;
        println!(
            "{name:<width$}  {rel:>9}  {max_abs:>9}  {lse:>9}  {secs:>6.2}s  {}{note}",
            if ok { "PASS" } else { "FAIL" }
        );
    }
    println!(
        "16-bit: {} cases in {:.1} s, tolerance: at most 2x the error of the same computation done naively in the storage precision (+{:e}), rel < 1e-2",
        halves.len(),
        started.elapsed().as_secs_f64(),
        HalfErrors::FLOOR
    );
    if failed > 0 {
        println!("reproduce with `wgattn check --seed {seed}`");
    }
    println!("check: {passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// The 16-bit cases: (case, dtype of Q, K and V, dtype of O). Odd sizes, GQA, key padding with an
/// empty batch, split keys, a mask, BSHD; `quick` the first two.
fn half_cases(quick: bool) -> Vec<(Case, DType, DType)> {
    let cases = vec![
        (
            Case::new(130, 257, 64).heads(2, 4, 2).attn(Attention::new().causal(Causal::BottomRight)),
            DType::F16,
            DType::F16,
        ),
        (
            Case::new(77, 150, 59).heads(2, 2, 1).attn(Attention::new().kv_lens(vec![0, 150])),
            DType::BF16,
            DType::BF16,
        ),
        (
            Case::new(33, 3000, 111).heads(1, 2, 2).attn(Attention::new().num_splits(3)),
            DType::F16,
            DType::F32,
        ),
        (
            Case::new(200, 200, 40)
                .heads(1, 2, 1)
                .layout(Layout::Bshd)
                .attn(Attention::new().mask(Mask::window(30, 0))),
            DType::BF16,
            DType::BF16,
        ),
    ];
    if quick {
        cases.into_iter().take(2).collect()
    } else {
        cases
    }
}

/// What the compile phase did.
struct Compiled {
    steps: usize,
    pipelines: usize,
    elapsed: std::time::Duration,
}

/// Compile what `cases` need: one warm-up per (head dim, mask class, forced kernel family) they
/// use (the soft-capping, ALiBi and unaligned variants compile when their case runs).
fn warm_up(ctx: &Context, cases: &[Case]) -> Result<Compiled, CliError> {
    let mut seen = Vec::new();
    for case in cases {
        let key = (case.head_dim, MaskClass::of(&case.attn), case.attn.launch.kernel);
        if !seen.contains(&key) {
            seen.push(key);
        }
    }
    let plans: Vec<WarmUp> = seen
        .iter()
        .map(|(d, class, kernel)| WarmUp::new(&[*d]).masks(&[*class]).kernels(kernel.as_slice()))
        .collect();
    let r = ctx.warm_up_all(&plans, |_, _| {})?;
    Ok(Compiled { steps: r.steps, pipelines: r.pipelines, elapsed: r.elapsed })
}

fn columns(e: &Errors) -> [String; 3] {
    [e.rel, e.max_abs, e.lse_max_abs].map(|x| format!("{x:.2e}"))
}

/// The fixed cases of the full suite.
fn full() -> Vec<Case> {
    let br = || Attention::new().causal(Causal::BottomRight);
    let tl = || Attention::new().causal(Causal::TopLeft);
    let mut cases = Vec::new();

    // Every head-dim class (padding, tiles per row) at odd sizes, no options.
    let sizes = [(113, 203), (128, 217), (108, 256), (256, 512), (512, 256)];
    for (i, d) in HEAD_DIMS.into_iter().enumerate() {
        let (nq, nk) = sizes[i % sizes.len()];
        cases.push(Case::new(nq, nk, d).heads(1, 2, 2));
    }

    // The extremes of the supported head dims.
    cases.extend([Case::new(113, 203, 1), Case::new(57, 77, 255).heads(1, 2, 1).attn(br())]);

    // Causal, both alignments; Nq > Nk bottom-right leaves the first Nq - Nk rows keyless.
    cases.extend([
        Case::new(113, 203, 64).attn(br()),
        Case::new(113, 203, 64).attn(tl()),
        Case::new(512, 256, 128).attn(br()),
        Case::new(512, 256, 128).attn(tl()),
        Case::new(256, 512, 40).attn(tl()),
        Case::new(256, 512, 96).attn(br()),
    ]);

    // GQA and MQA.
    cases.extend([
        Case::new(113, 203, 64).heads(2, 4, 2),
        Case::new(128, 217, 80).heads(2, 4, 2).attn(br()),
        Case::new(108, 256, 128).heads(2, 4, 1),
        Case::new(113, 203, 59).heads(1, 4, 1).attn(tl()),
    ]);

    // Key padding, with an empty batch: its rows must be O = 0, LSE = -inf.
    cases.extend([
        Case::new(113, 203, 64).heads(3, 2, 1).attn(Attention::new().kv_lens(vec![203, 0, 77])),
        Case::new(128, 217, 128).heads(3, 2, 2).attn(br().kv_lens(vec![100, 0, 217])),
        Case::new(113, 203, 40).heads(2, 2, 2).attn(tl().kv_lens(vec![0, 150]).num_splits(3)),
    ]);

    // ALiBi.
    cases.extend([
        Case::new(113, 203, 64).heads(1, 4, 4).attn(Attention::new().alibi_slopes(alibi_slopes(4))),
        Case::new(128, 217, 80).heads(2, 8, 2).attn(br().alibi_slopes(alibi_slopes(8))),
        Case::new(113, 203, 64)
            .heads(2, 4, 4)
            .attn(br().kv_lens(vec![150, 40]).alibi_slopes(alibi_slopes(4))),
    ]);

    // Soft-capping, with a scale large enough for the cap to bite.
    cases.extend([
        Case::new(128, 217, 64).attn(Attention::new().scale(2.0).softcap(20.0)),
        Case::new(113, 203, 128).heads(1, 4, 2).attn(tl().scale(2.0).softcap(20.0)),
    ]);

    // BSHD layout.
    cases.extend([
        Case::new(113, 203, 59).heads(2, 4, 2).layout(Layout::Bshd).attn(tl().num_splits(3)),
        Case::new(256, 512, 128).heads(2, 4, 4).layout(Layout::Bshd).attn(br()),
        Case::new(108, 256, 256)
            .heads(2, 4, 1)
            .layout(Layout::Bshd)
            .attn(Attention::new().kv_lens(vec![256, 0])),
    ]);

    // Forced key splits, including more splits than key tiles.
    cases.extend([
        Case::new(113, 203, 64).attn(Attention::new().num_splits(3)),
        Case::new(128, 217, 256).attn(br().num_splits(3)),
        Case::new(113, 64, 32).attn(Attention::new().num_splits(7)),
    ]);

    // Decoding-like: one query against a long cache (automatic splits), and a single key.
    cases.extend([Case::new(1, 4097, 128).heads(1, 8, 2).attn(br()), Case::new(97, 1, 64).heads(1, 2, 2)]);

    // Masks lowered to block tables, sparse patterns, and dynamic top-k chosen on the device.
    let docs = Mask::documents_from_offsets(&[vec![0, 50, 51, 200], vec![0, 200]]).expect("valid offsets");
    cases.extend([
        Case::new(150, 230, 64).heads(2, 4, 2).attn(br().mask(Mask::window(33, 33)).kv_lens(vec![230, 101])),
        Case::new(200, 200, 40).heads(2, 4, 2).attn(br().mask(docs)),
        Case::new(160, 200, 64).heads(1, 2, 1).attn(Attention::new().mask(Mask::Prefix(64))),
        Case::new(210, 210, 64).heads(1, 4, 2).attn(br().mask(Mask::bigbird(16, 2, 2, 32, 7)).block_size(32)),
        Case::new(257, 257, 59).heads(1, 2, 2).attn(Attention::new().mask(Mask::longformer(24, 3))),
        Case::new(257, 333, 64).heads(1, 4, 2).attn(br().topk(3, 32)),
    ]);

    cases.extend(long());
    cases
}

/// A few cases run by every kernel family this adapter has (tiled, register with and without
/// subgroups, and their wide forms), whatever family the tuner would pick or time: a new adapter
/// is checked on all of them.
/// Head dim 40 only (one compiled kernel per family, and one with bitmaps for the mask): the
/// register families unroll everything, and lavapipe needs 10 to 60 s to compile each (the
/// default family covers every head dim above).
fn families(ctx: &Context, quick: bool) -> Vec<Case> {
    let mut cases = Vec::new();
    // every family the adapter can run (the subgroup ones need SUBGROUP)
    let available = FAMILIES.into_iter().filter(|&f| TileConfig::for_family(ctx, f, 40, None).is_ok());
    for family in available {
        let with = |attn: Attention| attn.kernel(family);
        cases.push(
            Case::new(113, 203, 40).heads(2, 4, 2).attn(with(Attention::new().causal(Causal::BottomRight))),
        );
        if !quick {
            cases.extend([
                Case::new(128, 217, 40).layout(Layout::Bshd).attn(with(Attention::new().kv_lens(vec![150]))),
                Case::new(200, 200, 40)
                    .heads(1, 2, 1)
                    .attn(with(Attention::new().mask(Mask::longformer(20, 2)))),
                Case::new(64, 5000, 40).attn(with(Attention::new().num_splits(3))),
            ]);
        }
    }
    cases
}

/// Long key ranges: one invocation looping over all of them would exceed lavapipe's silent limit
/// of 65,535 loop iterations. Small Nq keeps the oracle cheap.
fn long() -> Vec<Case> {
    vec![
        Case::new(64, 20_000, 64).attn(Attention::new().num_splits(1)),
        Case::new(16, 70_000, 32),
        Case::new(16, 70_000, 32).attn(Attention::new().causal(Causal::BottomRight).num_splits(1)),
    ]
}

/// The fixed cases of `--quick`.
fn quick() -> Vec<Case> {
    vec![
        Case::new(113, 203, 64),
        Case::new(512, 256, 128).attn(Attention::new().causal(Causal::BottomRight)),
        Case::new(113, 203, 59)
            .heads(2, 4, 2)
            .layout(Layout::Bshd)
            .attn(Attention::new().causal(Causal::TopLeft).num_splits(3)),
        Case::new(108, 256, 256).heads(2, 4, 1),
        Case::new(113, 203, 40).heads(3, 2, 1).attn(Attention::new().kv_lens(vec![203, 0, 77])),
        Case::new(128, 217, 80)
            .heads(1, 4, 4)
            .attn(Attention::new().causal(Causal::BottomRight).alibi_slopes(alibi_slopes(4))),
        Case::new(128, 217, 64).attn(Attention::new().scale(2.0).softcap(20.0)),
        Case::new(16, 70_000, 32),
    ]
}

/// `n` cases with random sizes, layout and options drawn from `seed`, each small enough for the
/// oracle (at most about 8M multiply-adds).
/// The head dims of the fixed cases.
const HEAD_DIMS: [usize; 10] = [32, 40, 59, 64, 80, 96, 111, 128, 160, 256];

fn random(seed: u64, n: usize) -> Vec<Case> {
    const MAX_WORK: usize = 8 << 20;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|_| {
            // head dims the fixed cases already use: each new compiled size (a multiple of 32)
            // compiles a pipeline, which takes lavapipe 1 to 30 s
            let head_dim = HEAD_DIMS[rng.random_range(0..HEAD_DIMS.len())];
            let (batch, kv_heads, group) =
                (rng.random_range(1..=3), rng.random_range(1..=2), rng.random_range(1..=3));
            let q_heads = kv_heads * group;
            let kv_len = rng.random_range(1..=600);
            let per_query = batch * q_heads * kv_len * head_dim;
            let q_len = rng.random_range(1..=300).min((MAX_WORK / per_query).max(1));
            let mut attn = Attention::new();
            attn.causal = [None, Some(Causal::BottomRight), Some(Causal::TopLeft)][rng.random_range(0..3)];
            if rng.random_bool(0.4) {
                // Some batches empty, some full, the rest anywhere in between.
                let mut lens: Vec<u32> = (0..batch)
                    .map(|_| match rng.random_range(0..4) {
                        0 => 0,
                        1 => kv_len as u32,
                        _ => rng.random_range(0..=kv_len as u32),
                    })
                    .collect();
                // A case whose every row is masked would compare zeros with zeros.
                if lens.iter().all(|&l| l == 0) {
                    lens[batch - 1] = kv_len as u32;
                }
                attn = attn.kv_lens(lens);
            }
            if rng.random_bool(0.3) {
                attn = attn.alibi_slopes(alibi_slopes(q_heads));
            }
            if rng.random_bool(0.3) {
                attn = attn.scale(2.0).softcap(rng.random_range(5..=30) as f32);
            }
            if rng.random_bool(0.3) {
                attn = attn.num_splits(rng.random_range(1..=5));
            }
            let layout = if rng.random_bool(0.5) { Layout::Bhsd } else { Layout::Bshd };
            Case::new(q_len, kv_len, head_dim).heads(batch, q_heads, kv_heads).layout(layout).attn(attn)
        })
        .collect()
}
