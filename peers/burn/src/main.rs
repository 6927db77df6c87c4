//! burn 0.22's `attention` on its wgpu backend, timed on `wgattn bench`'s shapes, so that
//! docs/PERFORMANCE.md can put it beside wgpu-attention on the same adapter.
//!
//!     cargo run --release -- --seq 1024,2048,4096,16384 --heads 8 --head-dim 64 --json burn.json
//!     wgattn bench --seq 1024,2048 --merge-json burn.json
//!
//! For each length: Q, K, V uniform in [-1, 1) (B = 1, BHSD, f32, dense, scale 1/√D), one untimed
//! warm-up call, then `--reps` timed calls, each until the output is back on the host (burn is
//! lazy: reading the result is what waits for it). The median is reported as GFLOP/s with the
//! bench's count 4·B·H·N²·D. Every length is checked: 64 output rows (spread over heads and
//! positions) against an f64 computation, relative error ‖o − ref‖/‖ref‖; a failed call or an
//! error above 1e-3 is reported in the row's `note` instead of a speed.
//!
//! Its own workspace: never part of the library's build (it takes ~15 min to build on 2 cores).

use std::time::Instant;

use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, DeviceKind, Tensor, TensorData};

struct Args {
    seq: Vec<usize>,
    heads: usize,
    head_dim: usize,
    reps: usize,
    json: Option<String>,
}

fn parse_args() -> Args {
    let mut a = Args { seq: vec![1024, 2048], heads: 8, head_dim: 64, reps: 3, json: None };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let list = |s: &str| s.split(',').map(|x| x.trim().parse().expect("a number")).collect::<Vec<usize>>();
    let mut i = 0;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--seq" => a.seq = list(&value),
            "--heads" => a.heads = value.parse().expect("--heads N"),
            "--head-dim" => a.head_dim = value.parse().expect("--head-dim D"),
            "--reps" => a.reps = value.parse().expect("--reps N"),
            "--json" => a.json = Some(value),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

/// A small deterministic generator (xorshift), uniform in [-1, 1).
fn random(n: usize, mut state: u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Relative error of 64 output rows (spread over the `h` heads and the `n` queries) against f64.
fn check(q: &[f32], k: &[f32], v: &[f32], o: &[f32], h: usize, n: usize, d: usize) -> f64 {
    let scale = 1.0 / (d as f64).sqrt();
    let (mut err, mut norm) = (0.0f64, 0.0f64);
    for t in 0..64 {
        let (head, i) = (t % h, (t * 7919) % n);
        let base = head * n * d;
        let qi = &q[base + i * d..base + (i + 1) * d];
        let s: Vec<f64> = (0..n)
            .map(|j| {
                let kj = &k[base + j * d..base + (j + 1) * d];
                qi.iter().zip(kj).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale
            })
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let p: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let l: f64 = p.iter().sum();
        for c in 0..d {
            let want: f64 =
                p.iter().enumerate().map(|(j, pj)| pj * v[base + j * d + c] as f64).sum::<f64>() / l;
            let got = o[base + i * d + c] as f64;
            err += (got - want).powi(2);
            norm += want * want;
        }
    }
    (err / norm).sqrt()
}

fn main() {
    let args = parse_args();
    let device = Device::wgpu(DeviceKind::Cpu);
    let (h, d) = (args.heads, args.head_dim);
    let mut rows = Vec::new();
    for &n in &args.seq {
        let len = h * n * d;
        let sets: Vec<[Vec<f32>; 3]> =
            (0..2u64).map(|s| [random(len, 11 + s), random(len, 23 + s), random(len, 37 + s)]).collect();
        let run = |set: &[Vec<f32>; 3]| -> Result<Vec<f32>, String> {
            let t = |x: &Vec<f32>| Tensor::<4>::from_data(TensorData::new(x.clone(), [1, h, n, d]), &device);
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let o = attention(
                    t(&set[0]),
                    t(&set[1]),
                    t(&set[2]),
                    None,
                    None,
                    AttentionModuleOptions::default(),
                );
                o.try_into_data()
                    .map_err(|e| format!("{e:?}"))?
                    .try_to_vec::<f32>()
                    .map_err(|e| format!("{e:?}"))
            }));
            match out {
                Ok(result) => result,
                Err(p) => Err(p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into())),
            }
        };
        let flops = 4.0 * (h * n * n * d) as f64;
        let mut note = String::new();
        let mut median_ms = f64::NAN;
        match run(&sets[0]) {
            Err(e) => note = format!("failed: {}", e.lines().next().unwrap_or("")),
            Ok(o) => {
                let rel = check(&sets[0][0], &sets[0][1], &sets[0][2], &o, h, n, d);
                if !(rel < 1e-3) {
                    note = format!("wrong output: rel error {rel:.2e}");
                } else {
                    let mut times = Vec::new();
                    for r in 0..args.reps {
                        let start = Instant::now();
                        if let Err(e) = run(&sets[(r + 1) % 2]) {
                            note = format!("failed: {}", e.lines().next().unwrap_or(""));
                            break;
                        }
                        times.push(start.elapsed().as_secs_f64() * 1e3);
                    }
                    if note.is_empty() {
                        times.sort_by(f64::total_cmp);
                        median_ms = times[times.len() / 2];
                        note = format!("rel error {rel:.1e}");
                    }
                }
            }
        }
        let gflops = if median_ms.is_finite() { flops / (median_ms * 1e6) } else { f64::NAN };
        println!("burn-wgpu N={n} H={h} D={d}: {median_ms:.1} ms, {gflops:.2} GFLOP/s ({note})");
        rows.push(serde_json::json!({
            "backend": "burn-wgpu", "mode": "dense", "dtype": "f32", "batch": 1, "q_heads": h,
            "kv_heads": h, "q_len": n, "kv_len": n, "head_dim": d, "density": 1.0,
            "median_ms": if median_ms.is_finite() { serde_json::json!(median_ms) } else { serde_json::Value::Null },
            "gflops": if gflops.is_finite() { serde_json::json!(gflops) } else { serde_json::Value::Null },
            "gbps": serde_json::Value::Null, "peak_device_bytes": serde_json::Value::Null,
            "kernel": "burn 0.22.1 attention", "note": note,
        }));
    }
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&rows).unwrap()).expect("write --json");
    }
}
