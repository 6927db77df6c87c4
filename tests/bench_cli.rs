//! End-to-end tests of `wgattn bench`: a tiny sweep over every backend writes the table, JSON, CSV
//! and SVG; a case a backend cannot run is a row with a note, not a crash; merged rows join the
//! outputs; bad arguments are usage errors (exit 2). Nothing about speed is asserted.
//!
//! The sweep's GPU rows need an adapter (lavapipe is enough) and fail, rather than skip, without one.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

/// The keys every JSON row has.
const KEYS: [&str; 16] = [
    "backend",
    "mode",
    "dtype",
    "batch",
    "q_heads",
    "kv_heads",
    "q_len",
    "kv_len",
    "head_dim",
    "density",
    "median_ms",
    "gflops",
    "gbps",
    "peak_device_bytes",
    "note",
    "wall_ms",
];

/// A fresh, empty directory for one test; removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wgattn-bench-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
    fn path(&self, file: &str) -> String {
        self.0.join(file).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `wgattn` without autotuning the fused kernel's family (which compiles and times every
/// candidate on the first call: slow on a software adapter, and not what these tests are about).
fn wgattn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgattn"))
        .args(args)
        .env("WGATTN_TUNE", "off")
        .output()
        .expect("spawn wgattn")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "wgattn bench failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn read_json(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("JSON written");
    match serde_json::from_str(&text).expect("valid JSON") {
        Value::Array(rows) => rows,
        other => panic!("expected an array of rows, got {other}"),
    }
}

fn positive(row: &Value, key: &str) -> f64 {
    let x = row[key].as_f64().unwrap_or_else(|| panic!("`{key}` is not a number in {row}"));
    assert!(x > 0.0 && x.is_finite(), "`{key}` = {x} is not positive in {row}");
    x
}

#[test]
fn tiny_sweep_writes_table_json_csv_and_plot() {
    let dir = TempDir::new("sweep");
    let (json, csv, svg) = (dir.path("rows.json"), dir.path("rows.csv"), dir.path("plot.svg"));
    let backends = ["gpu-fused", "gpu-naive", "cpu-fast", "cpu-reference"];
    let modes = ["dense", "causal", "block-sparse", "decode"];
    let (b, m) = (backends.join(","), modes.join(","));
    let out = wgattn(&[
        "bench",
        "--backend",
        &b,
        "--mode",
        &m,
        "--seq",
        "64",
        "--head-dim",
        "32",
        "--heads",
        "2",
        "--reps",
        "2",
        "--json",
        &json,
        "--csv",
        &csv,
        "--plot",
        &svg,
    ]);
    assert_success(&out);
    let stdout = text(&out.stdout);

    let rows = read_json(&json);
    assert_eq!(rows.len(), backends.len() * modes.len(), "one row per backend and mode");
    for backend in backends {
        assert!(stdout.contains(backend), "the table lists {backend}:\n{stdout}");
        for mode in modes {
            let matching: Vec<&Value> =
                rows.iter().filter(|r| r["backend"] == backend && r["mode"] == mode).collect();
            assert_eq!(matching.len(), 1, "{backend} {mode}: one row");
            let row = matching[0];
            for key in KEYS {
                assert!(row.get(key).is_some(), "{backend} {mode}: key `{key}` missing in {row}");
            }
            assert_eq!(row["dtype"], "f32");
            assert_eq!(
                (row["batch"].as_u64(), row["q_heads"].as_u64(), row["kv_heads"].as_u64()),
                (Some(1), Some(2), Some(2))
            );
            let q_len = if mode == "decode" { 1 } else { 64 };
            assert_eq!((row["q_len"].as_u64(), row["kv_len"].as_u64()), (Some(q_len), Some(64)), "{row}");
            assert_eq!(row["head_dim"].as_u64(), Some(32));
            let density = positive(row, "density");
            assert!(density <= 1.0, "{row}");

            if (backend, mode) == ("gpu-naive", "block-sparse") {
                // the naive baseline has no block masks: a row that says so, without numbers
                assert_eq!(row["note"], "unsupported", "{row}");
                for key in ["median_ms", "wall_ms", "gflops", "gbps", "peak_device_bytes"] {
                    assert!(row[key].is_null(), "{backend} {mode}: `{key}` should be null in {row}");
                }
                continue;
            }
            assert_eq!(row["note"], "", "{backend} {mode} should have run: {row}");
            for key in ["median_ms", "wall_ms", "gflops", "gbps"] {
                positive(row, key);
            }
            let peak = row["peak_device_bytes"].as_u64().expect("peak_device_bytes is an integer");
            if backend.starts_with("gpu") {
                // at least Q, K, V (2·64·32 floats each) and O
                assert!(peak >= 4 * 4 * 2 * 64 * 32 / if mode == "decode" { 64 } else { 1 }, "{row}");
            } else {
                assert_eq!(peak, 0, "{row}");
            }
        }
    }

    let csv = std::fs::read_to_string(&csv).expect("CSV written");
    let lines: Vec<&str> = csv.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1 + rows.len(), "header plus one line per row:\n{csv}");
    assert!(lines[0].starts_with("backend,mode,dtype,batch,"), "{}", lines[0]);
    assert!(lines[1..].iter().all(|l| backends.iter().any(|b| l.starts_with(b))), "{csv}");

    let svg = std::fs::read_to_string(&svg).expect("SVG written");
    assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"), "an SVG document");
    assert!(svg.contains("GFLOP/s") && svg.contains("gpu-fused dense"), "axis title and legend");
}

#[test]
fn merged_rows_join_the_outputs() {
    let dir = TempDir::new("merge");
    let (extra, json) = (dir.path("torch.json"), dir.path("rows.json"));
    let row = serde_json::json!([{
        "backend": "torch-cpu", "mode": "dense", "dtype": "f32", "batch": 1, "q_heads": 1,
        "kv_heads": 1, "q_len": 64, "kv_len": 64, "head_dim": 16, "density": 1.0,
        "median_ms": 0.5, "wall_ms": 0.5, "gflops": 0.5, "gbps": 0.1, "peak_device_bytes": 0,
        "note": ""
    }]);
    std::fs::write(&extra, row.to_string()).expect("write merge file");
    let out = wgattn(&[
        "bench",
        "--backend",
        "cpu-fast",
        "--mode",
        "dense",
        "--seq",
        "64",
        "--head-dim",
        "16",
        "--heads",
        "1",
        "--reps",
        "1",
        "--merge-json",
        &extra,
        "--json",
        &json,
    ]);
    assert_success(&out);
    assert!(text(&out.stdout).contains("torch-cpu"), "merged row in the table");
    let rows = read_json(&json);
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().any(|r| r["backend"] == "torch-cpu" && r["median_ms"] == 0.5));
    assert!(rows.iter().any(|r| r["backend"] == "cpu-fast" && r["median_ms"].as_f64().is_some()));
}

#[test]
fn bad_arguments_are_usage_errors() {
    let dir = TempDir::new("bad");
    let bad_json = dir.path("bad.json");
    std::fs::write(&bad_json, "{\"not\": \"an array\"}").expect("write");
    let cases: [&[&str]; 7] = [
        &["--dtype", "f64"],
        &["--dtype", "f32,int8"],
        &["--density", "1.5"],
        &["--head-dim", "300"],
        &["--seq", "0"],
        &["--backend", "gpu-magic"],
        &["--merge-json", &bad_json],
    ];
    for extra in cases {
        let mut args = vec!["bench", "--backend", "cpu-fast", "--seq", "16", "--heads", "1"];
        args.extend_from_slice(extra);
        let out = wgattn(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: exit 2 expected\nstderr:\n{stderr}");
        assert!(stderr.lines().any(|l| l.starts_with("error:")), "{extra:?}: an `error:` line:\n{stderr}");
        assert!(out.stdout.is_empty(), "{extra:?}: nothing on stdout");
    }
    let out = wgattn(&["bench", "--dtype", "f64"]);
    assert!(text(&out.stderr).contains("bf16") && text(&out.stderr).contains("f32"), "names the dtypes");
}

#[test]
fn dtype_axis_adds_rows_and_counts_the_smaller_traffic() {
    let dir = TempDir::new("dtype");
    let json = dir.path("rows.json");
    let out = wgattn(&[
        "bench",
        "--backend",
        "gpu-fused,gpu-naive",
        "--mode",
        "dense",
        "--seq",
        "64",
        "--head-dim",
        "32",
        "--heads",
        "2",
        "--reps",
        "1",
        "--dtype",
        "f32,f16,bf16",
        "--json",
        &json,
    ]);
    assert_success(&out);
    let rows = read_json(&json);
    assert_eq!(rows.len(), 6, "one row per backend and dtype");
    // bytes moved per call: gbps · median_ms · 1e6
    let bytes = |dtype: &str| {
        let r = rows
            .iter()
            .find(|r| r["backend"] == "gpu-fused" && r["dtype"] == dtype)
            .expect("a row per dtype");
        r["gbps"].as_f64().expect("gbps") * r["median_ms"].as_f64().expect("median_ms") * 1e6
    };
    // Q, K, V, O of 2·64·32 elements each plus an f32 LSE of 2·64
    let (elems, lse) = (4.0 * 2.0 * 64.0 * 32.0, 4.0 * 2.0 * 64.0);
    for (dtype, size) in [("f32", 4.0), ("f16", 2.0), ("bf16", 2.0)] {
        let want = elems * size + lse;
        assert!((bytes(dtype) - want).abs() < 1e-6 * want, "{dtype}: {} bytes, want {want}", bytes(dtype));
    }
    // the naive baseline takes every dtype too
    for dtype in ["f16", "bf16"] {
        let r = rows.iter().find(|r| r["backend"] == "gpu-naive" && r["dtype"] == dtype).unwrap();
        assert!(r["median_ms"].as_f64().is_some(), "{r}");
    }
}

/// `--mode gemm`: one row per shape and tile, with a GFLOP/s figure; it runs alone.
#[test]
fn gemm_mode_times_the_projection() {
    let out = wgattn(&[
        "bench",
        "--mode",
        "gemm",
        "--seq",
        "33",
        "--out-features",
        "20",
        "--in-features",
        "40",
        "--reps",
        "1",
        "--gemm-tile",
        "4,1,2,1,8,0",
    ]);
    assert_success(&out);
    let stdout = text(&out.stdout);
    let row = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("33 "))
        .unwrap_or_else(|| panic!("no row:\n{stdout}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[..4], ["33", "20", "40", "f32"], "{row}");
    assert!(row.contains("4x1r 2c ku1 wg8"), "{row}");
    let gflops: f64 = cols[cols.len() - 4].parse().unwrap_or_else(|_| panic!("{row}"));
    assert!(gflops > 0.0, "{row}");
    let mixed = wgattn(&["bench", "--mode", "gemm,dense"]);
    assert_eq!(mixed.status.code(), Some(2), "{}", text(&mixed.stderr));
}

/// `--mode layer`: one row per length with the GEMM and attention shares summing to 100%.
#[test]
fn layer_mode_splits_gemm_and_attention_time() {
    let out = wgattn(&[
        "bench",
        "--mode",
        "layer",
        "--seq",
        "16,40",
        "--embed-dim",
        "32",
        "--heads",
        "4",
        "--reps",
        "1",
    ]);
    assert_success(&out);
    let stdout = text(&out.stdout);
    for n in ["16", "40"] {
        let row = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(n))
            .unwrap_or_else(|| panic!("no row {n}:\n{stdout}"));
        let cols: Vec<f64> = row.split_whitespace().take(6).map(|c| c.parse().unwrap()).collect();
        assert!(cols[2] > 0.0 && cols[4] > 0.0, "{row}");
        assert!((cols[3] + cols[5] - 100.0).abs() < 0.2, "{row}");
    }
}
