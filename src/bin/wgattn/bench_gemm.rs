//! `wgattn bench --mode gemm`: the projection GEMM (`wgpu_attention::linear`, shaders/gemm.wgsl)
//! timed over `--seq` rows × `--out-features` × `--in-features`, each tile of `--gemm-tile` (the
//! adapter's own by default), and with `--torch` PyTorch's CPU `F.linear` on the same shapes in
//! the same run (scripts/torch_linear.py), side by side.
//!
//! Per row: X, W and the bias uploaded once, one untimed warm-up call (it compiles the
//! pipeline), then `--reps` timed calls, each the whole call (record, submit, wait) into a
//! preallocated Y; `median_ms` is the median GPU time of the call's pass where the adapter has
//! timestamp queries, else the median wall time. GFLOP/s = 2·M·N·K / median; GB/s = (X, W, bias
//! read once + Y written once) / median.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use wgpu_attention::kernels::gemm::{record_into, GemmTile};
use wgpu_attention::{Context, ContextOptions, DType, HostTensor, Layout, Recorder, Shape, Tensor};

use crate::{one_line, BenchArgs, CliError};

/// One measured row.
struct Row {
    m: usize,
    n: usize,
    k: usize,
    dtype: DType,
    tile: String,
    median_ms: f64,
    timer: &'static str,
    torch_ms: Option<f64>,
}

/// Parse `xr,sl,c,ku,wg[,subgroups 0/1]` (subgroups default: sl > 1).
fn parse_tile(text: &str) -> Result<GemmTile, CliError> {
    let v: Vec<u32> =
        text.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>().map_err(|_| {
            CliError::Usage(format!("--gemm-tile `{text}`: expected xr,sl,c,ku,wg[,subgroups]"))
        })?;
    if v.len() != 5 && v.len() != 6 {
        return Err(CliError::Usage(format!("--gemm-tile `{text}`: expected xr,sl,c,ku,wg[,subgroups]")));
    }
    Ok(GemmTile {
        xr: v[0],
        sl: v[1],
        c: v[2],
        ku: v[3],
        wg: v[4],
        subgroups: v.get(5).map_or(v[1] > 1, |&s| s != 0),
    })
}

fn tile_name(t: &GemmTile) -> String {
    format!("{}x{}r {}c ku{} wg{}{}", t.xr, t.sl, t.c, t.ku, t.wg, if t.subgroups { " sg" } else { "" })
}

pub fn bench(args: &BenchArgs) -> Result<(), CliError> {
    let ms = args.seq.clone().unwrap_or_else(|| vec![4096]);
    let ns = args.out_features.clone().unwrap_or_else(|| vec![1024]);
    let ks = args.in_features.clone().unwrap_or_else(|| vec![1024]);
    let reps = args.reps.unwrap_or(5).max(1);
    let mut dtypes = Vec::new();
    for t in args.dtype.iter().flatten() {
        dtypes.push(match t.as_str() {
            "f32" => DType::F32,
            "f16" => DType::F16,
            "bf16" => DType::BF16,
            _ => return Err(CliError::Usage(format!("--dtype `{t}` is not one of f32, f16, bf16"))),
        });
    }
    if dtypes.is_empty() {
        dtypes.push(DType::F32);
    }
    let ctx = Context::with_options(&ContextOptions::from_env()?.gpu_timing(true))?;
    let tiles: Vec<Option<GemmTile>> = if args.gemm_tile.is_empty() {
        vec![None]
    } else {
        args.gemm_tile.iter().map(|t| parse_tile(t).map(Some)).collect::<Result<_, _>>()?
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut rows = Vec::new();
    let started = Instant::now();
    for &dtype in &dtypes {
        for &m in &ms {
            for &n in &ns {
                for &k in &ks {
                    let mut random = |shape: Shape| {
                        let data = (0..shape.len()).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                        Tensor::upload_as(&ctx, &HostTensor::new(data, shape, Layout::Bhsd)?, dtype)
                    };
                    let x = random(Shape::new(1, 1, m, k))?;
                    let w = random(Shape::new(1, 1, n, k))?;
                    let b = random(Shape::new(1, 1, 1, n))?;
                    let y = Tensor::zeros_as(&ctx, Shape::new(1, 1, m, n), Layout::Bhsd, dtype)?;
                    for tile in &tiles {
                        let call = || -> Result<(f64, bool), CliError> {
                            let t0 = Instant::now();
                            let mut rec = Recorder::new(&ctx);
                            record_into(&mut rec, &x, &w, Some(&b), &y, *tile)?;
                            let info = rec.submit()?.wait()?;
                            let wall = t0.elapsed().as_secs_f64() * 1e3;
                            Ok(match info[0].gpu_time {
                                Some(g) => (g.as_secs_f64() * 1e3, true),
                                None => (wall, false),
                            })
                        };
                        call()?; // compiles the pipeline
                        let mut times = Vec::new();
                        let mut gpu = false;
                        for _ in 0..reps {
                            let (t, g) = call()?;
                            times.push(t);
                            gpu = g;
                        }
                        times.sort_by(f64::total_cmp);
                        let tile = tile.unwrap_or_else(|| GemmTile::for_adapter(&ctx));
                        rows.push(Row {
                            m,
                            n,
                            k,
                            dtype,
                            tile: tile_name(&tile),
                            median_ms: times[times.len() / 2],
                            timer: if gpu { "gpu" } else { "wall" },
                            torch_ms: None,
                        });
                    }
                }
            }
        }
    }
    let elapsed = started.elapsed();
    if args.torch {
        torch_rows(&mut rows, reps)?;
    }
    println!("wgattn bench --mode gemm · {}", one_line(&ctx.adapter().info.name));
    println!(
        "{:>6} {:>6} {:>6} {:>5} {:<22} {:>10} {:>5} {:>9} {:>7} {:>9} {:>8}",
        "M", "N", "K", "dtype", "tile", "median_ms", "timer", "GFLOP/s", "GB/s", "torch_ms", "vs_torch"
    );
    for r in &rows {
        let flops = 2.0 * (r.m * r.n * r.k) as f64;
        let bytes = r.dtype.bytes((r.m * r.k + r.n * r.k + r.n + r.m * r.n) as u64) as f64;
        let secs = r.median_ms * 1e-3;
        let (torch, ratio) = match r.torch_ms {
            Some(t) => (format!("{t:.2}"), format!("{:.2}x", t / r.median_ms)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:>6} {:>6} {:>6} {:>5} {:<22} {:>10.2} {:>5} {:>9.1} {:>7.1} {:>9} {:>8}",
            r.m,
            r.n,
            r.k,
            r.dtype.name(),
            r.tile,
            r.median_ms,
            r.timer,
            flops / secs * 1e-9,
            bytes / secs * 1e-9,
            torch,
            ratio
        );
    }
    println!(
        "{} rows in {:.1} s; vs_torch = torch_ms / median_ms (> 1: this crate is faster)",
        rows.len(),
        elapsed.as_secs_f64()
    );
    Ok(())
}

/// Time PyTorch's CPU `F.linear` on the rows' shapes (scripts/torch_linear.py, `python3` on the
/// PATH) and fill their `torch_ms`.
fn torch_rows(rows: &mut [Row], reps: usize) -> Result<(), CliError> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/torch_linear.py");
    let mut shapes: Vec<(usize, usize, usize, DType)> =
        rows.iter().map(|r| (r.m, r.n, r.k, r.dtype)).collect();
    shapes.dedup();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let list: Vec<String> =
            shapes.iter().filter(|s| s.3 == dtype).map(|(m, n, k, _)| format!("{m}x{n}x{k}")).collect();
        if list.is_empty() {
            continue;
        }
        let out = std::process::Command::new("python3")
            .arg(&script)
            .args(["--shapes", &list.join(","), "--dtype", dtype.name(), "--reps", &reps.to_string()])
            .output()
            .map_err(|e| {
                CliError::Usage(format!("--torch: could not run python3 {}: {e}", script.display()))
            })?;
        if !out.status.success() {
            return Err(CliError::Usage(format!(
                "--torch: {} failed: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| CliError::Usage(format!("--torch: unreadable line `{line}`: {e}")))?;
            let get = |key: &str| v[key].as_u64().unwrap_or(0) as usize;
            let t = v["median_ms"].as_f64();
            for r in rows
                .iter_mut()
                .filter(|r| r.dtype == dtype && (r.m, r.n, r.k) == (get("m"), get("n"), get("k")))
            {
                r.torch_ms = t;
            }
        }
    }
    Ok(())
}

/// `wgattn bench --mode layer`: `layer::MultiHeadAttention` (self-attention, biases, random
/// weights) over `--seq` positions at E `--embed-dim` with `--heads`, batch `--batch`: the
/// GPU time of each recorded call (timestamp queries), split into the GEMMs' share (the QKV
/// and output projections) and the attention's, and with `--torch` PyTorch's CPU
/// `nn.MultiheadAttention` on the same shapes in the same run (scripts/torch_mha.py).
pub fn bench_layer(args: &BenchArgs) -> Result<(), CliError> {
    use wgpu_attention::layer::{MhaOptions, MultiHeadAttention};
    let seqs = args.seq.clone().unwrap_or_else(|| vec![1024, 4096]);
    let e = args.embed_dim;
    let heads = args.heads.as_ref().and_then(|h| h.first().copied()).unwrap_or(16);
    let batch = args.batch.as_ref().and_then(|b| b.first().copied()).unwrap_or(1);
    let reps = args.reps.unwrap_or(3).max(1);
    let ctx = Context::with_options(&ContextOptions::from_env()?.gpu_timing(true))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut random =
        |n: usize, scale: f32| (0..n).map(|_| rng.random_range(-scale..scale)).collect::<Vec<f32>>();
    let s = 1.0 / (e as f32).sqrt();
    let mha = MultiHeadAttention::from_host(
        &ctx,
        heads,
        e,
        (random(3 * e * e, s), Some(random(3 * e, 0.1))),
        (random(e * e, s), Some(random(e, 0.1))),
    )?;
    let mut rows = Vec::new();
    for &n in &seqs {
        let x = Tensor::upload(
            &ctx,
            &HostTensor::new(random(batch * n * e, 1.0), Shape::new(batch, 1, n, e), Layout::Bhsd)?,
        )?;
        let call = || -> Result<(f64, f64, f64), CliError> {
            let t0 = Instant::now();
            let mut rec = Recorder::new(&ctx);
            mha.record(&mut rec, &x, &x, &x, &MhaOptions::default())?;
            let calls = rec.submit()?.wait()?;
            let wall = t0.elapsed().as_secs_f64() * 1e3;
            let ms = |gemm: bool| -> f64 {
                calls
                    .iter()
                    .filter(|c| (c.kernel == "gemm") == gemm)
                    .map(|c| c.gpu_time.map_or(0.0, |t| t.as_secs_f64() * 1e3))
                    .sum()
            };
            Ok((wall, ms(true), ms(false)))
        };
        call()?; // compiles
        let mut runs: Vec<(f64, f64, f64)> = (0..reps).map(|_| call()).collect::<Result<_, _>>()?;
        runs.sort_by(|a, b| (a.1 + a.2).total_cmp(&(b.1 + b.2)));
        let (wall, gemm, attn) = runs[runs.len() / 2];
        rows.push((n, wall, gemm, attn, None::<f64>));
    }
    if args.torch {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/torch_mha.py");
        let shapes: Vec<String> = seqs.iter().map(|n| format!("{batch}x{n}x{e}x{heads}")).collect();
        let out = std::process::Command::new("python3")
            .arg(&script)
            .args(["--shapes", &shapes.join(","), "--reps", &reps.to_string()])
            .output()
            .map_err(|e| {
                CliError::Usage(format!("--torch: could not run python3 {}: {e}", script.display()))
            })?;
        if !out.status.success() {
            return Err(CliError::Usage(format!("--torch: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        for (line, row) in String::from_utf8_lossy(&out.stdout).lines().zip(rows.iter_mut()) {
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| CliError::Usage(format!("--torch: `{line}`: {e}")))?;
            row.4 = v["median_ms"].as_f64();
        }
    }
    println!(
        "wgattn bench --mode layer · {} · B {batch} E {e} H {heads}",
        one_line(&ctx.adapter().info.name)
    );
    println!(
        "{:>6} {:>9} {:>9} {:>8} {:>9} {:>8} {:>9} {:>8}",
        "N", "wall_ms", "gemm_ms", "gemm_%", "attn_ms", "attn_%", "torch_ms", "vs_torch"
    );
    for (n, wall, gemm, attn, torch) in &rows {
        let total = gemm + attn;
        let (t, r) = match torch {
            Some(t) => (format!("{t:.1}"), format!("{:.2}x", t / wall)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{n:>6} {wall:>9.1} {gemm:>9.1} {:>8.1} {attn:>9.1} {:>8.1} {t:>9} {r:>8}",
            100.0 * gemm / total,
            100.0 * attn / total
        );
    }
    println!("gemm/attn: GPU time of the projections / of the attention call (timestamp queries); vs_torch = torch_ms / wall_ms");
    Ok(())
}
