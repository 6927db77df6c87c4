//! End-to-end tests of the `wgattn` binary: `run` on .npy files against the f64 oracle (GPU and
//! CPU paths), bad input, `info` and `check --quick`.
//!
//! The GPU tests need an adapter (lavapipe is enough) and fail, rather than skip, without one.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use npyz::WriterBuilder;
use rand::{Rng, SeedableRng};
use wgpu_attention::cpu::reference;
use wgpu_attention::testing::alibi_slopes;
use wgpu_attention::{Attention, Causal, Context, HostTensor, Layout, Shape};

/// A fresh, empty directory for one test; removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wgattn-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn wgattn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgattn")).args(args).output().expect("spawn wgattn")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write_npy<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[usize], data: &[T]) {
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut w = npyz::WriteOptions::<T>::new()
        .default_dtype()
        .shape(&shape)
        .writer(BufWriter::new(File::create(path).expect("create npy")))
        .begin_nd()
        .expect("npy header");
    w.extend(data.iter().copied()).expect("npy data");
    w.finish().expect("npy finish");
}

/// Shape and data of a float32 .npy file.
fn read_npy(path: &Path) -> (Vec<u64>, Vec<f32>) {
    let npy = npyz::NpyFile::new(File::open(path).expect("open npy")).expect("npy header");
    assert_eq!(npy.order(), npyz::Order::C);
    let shape = npy.shape().to_vec();
    (shape, npy.into_vec::<f32>().expect("float32 data"))
}

/// A random tensor of logical `shape` in `layout`, and the dimensions of its file.
fn random(rng: &mut rand::rngs::StdRng, shape: Shape, layout: Layout) -> (HostTensor, Vec<usize>) {
    let data = (0..shape.len()).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let dims = match layout {
        Layout::Bhsd => vec![shape.batch, shape.heads, shape.seq, shape.head_dim],
        Layout::Bshd => vec![shape.batch, shape.seq, shape.heads, shape.head_dim],
    };
    (HostTensor::new(data, shape, layout).unwrap(), dims)
}

/// Write random Q, K, V, run `wgattn run` with `extra` options, and compare O and LSE with the
/// oracle for `attn` (which must describe the same options; its ALiBi slopes, if any, are written
/// to a file and passed with `--alibi-slopes`).
fn run_matches_oracle(name: &str, layout: Layout, extra: &[&str], attn: &Attention) {
    let dir = TempDir::new(name);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed ^ name.len() as u64);
    let (b, hq, hkv, nq, nk, d) = (2, 4, 2, 37, 53, 24);
    let (q, q_dims) = random(&mut rng, Shape::new(b, hq, nq, d), layout);
    let (k, k_dims) = random(&mut rng, Shape::new(b, hkv, nk, d), layout);
    let (v, _) = random(&mut rng, Shape::new(b, hkv, nk, d), layout);
    for (file, t, dims) in [("q.npy", &q, &q_dims), ("k.npy", &k, &k_dims), ("v.npy", &v, &k_dims)] {
        write_npy(&dir.path(file), dims, &t.data);
    }

    let (qp, kp, vp, op, lp) =
        (dir.path("q.npy"), dir.path("k.npy"), dir.path("v.npy"), dir.path("o.npy"), dir.path("lse.npy"));
    let layout_name = match layout {
        Layout::Bhsd => "bhsd",
        Layout::Bshd => "bshd",
    };
    let mut args: Vec<&str> = vec!["run", "--layout", layout_name];
    for (flag, p) in [("--q", &qp), ("--k", &kp), ("--v", &vp), ("--out", &op), ("--lse", &lp)] {
        args.extend([flag, p.to_str().unwrap()]);
    }
    args.extend(extra);
    let slopes = dir.path("slopes.npy");
    if let Some(s) = &attn.alibi_slopes {
        write_npy(&slopes, &[s.len()], s);
        args.extend(["--alibi-slopes", slopes.to_str().unwrap()]);
    }
    let out = wgattn(&args);
    assert!(out.status.success(), "wgattn {args:?} failed ({}): {}", out.status, text(&out.stderr));

    let want = reference::attention(&q, &k, &v, attn).unwrap();
    let (o_shape, o) = read_npy(&op);
    assert_eq!(o_shape, q_dims.iter().map(|&x| x as u64).collect::<Vec<_>>());
    let (rel, max_abs) = reference::compare(&o, &want.o);
    assert!(rel < 1e-5 && max_abs < 1e-3, "{name}: O rel {rel:e}, max abs {max_abs:e}");
    let (lse_shape, lse) = read_npy(&lp);
    assert_eq!(lse_shape, vec![b as u64, hq as u64, nq as u64]);
    let lse_err = reference::compare_lse(&lse, &want.lse);
    assert!(lse_err < 1e-4, "{name}: LSE max abs {lse_err:e}");
}

#[test]
fn run_gpu_causal_matches_oracle() {
    let attn = Attention::new().causal(Causal::BottomRight);
    run_matches_oracle("gpu-causal", Layout::Bhsd, &["--causal"], &attn);
}

#[test]
fn run_gpu_all_options_bshd_matches_oracle() {
    let attn = Attention::new()
        .causal(Causal::TopLeft)
        .kv_lens(vec![53, 0])
        .alibi_slopes(alibi_slopes(4))
        .scale(0.5)
        .softcap(5.0);
    let extra =
        ["--causal=top-left", "--kv-lens", "53,0", "--scale", "0.5", "--softcap", "5", "--num-splits", "3"];
    run_matches_oracle("gpu-options", Layout::Bshd, &extra, &attn);
}

#[test]
fn run_cpu_matches_oracle() {
    let attn = Attention::new().causal(Causal::BottomRight);
    run_matches_oracle("cpu-causal", Layout::Bhsd, &["--causal", "--device", "cpu"], &attn);
    let attn = Attention::new().causal(Causal::TopLeft).kv_lens(vec![10, 53]).alibi_slopes(alibi_slopes(4));
    run_matches_oracle(
        "cpu-options",
        Layout::Bshd,
        &["--causal", "top-left", "--kv-lens", "10,53", "--device", "cpu"],
        &attn,
    );
}

/// Expect exit code 2 and a one-line `error: ...` containing `needle` on stderr.
fn assert_error(out: &Output, needle: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let line = stderr.lines().find(|l| l.starts_with("error: ") && l.contains(needle));
    assert!(line.is_some(), "no `error: ...{needle}...` line in stderr:\n{stderr}");
}

#[test]
fn bad_input_exits_2() {
    let dir = TempDir::new("bad-input");
    let p = |f: &str| dir.path(f).to_str().unwrap().to_string();
    write_npy(&dir.path("q.npy"), &[1, 2, 8, 16], &[0.5f32; 256]);
    write_npy(&dir.path("k.npy"), &[1, 2, 8, 16], &[0.5f32; 256]);
    write_npy(&dir.path("k_d8.npy"), &[1, 2, 16, 8], &[0.5f32; 256]);
    write_npy(&dir.path("k_3d.npy"), &[2, 8, 16], &[0.5f32; 256]);
    write_npy(&dir.path("k_f64.npy"), &[1, 2, 8, 16], &[0.5f64; 256]);
    let (q, k, out) = (p("q.npy"), p("k.npy"), p("o.npy"));
    let run = |k_file: &str, v_file: &str, extra: &[&str]| {
        let mut args = vec!["run", "--q", &q, "--k", k_file, "--v", v_file, "--out", &out];
        args.extend(extra);
        wgattn(&args)
    };

    // Head dims of Q and K differ.
    assert_error(&run(&p("k_d8.npy"), &p("k_d8.npy"), &[]), "head dim");
    // K and V differ.
    assert_error(&run(&k, &p("k_d8.npy"), &[]), "shape mismatch");
    // Not 4-D.
    assert_error(&run(&p("k_3d.npy"), &k, &[]), "4-D array is required");
    // Not float32.
    assert_error(&run(&p("k_f64.npy"), &k, &[]), "float64");
    // Missing file.
    assert_error(&run(&p("missing.npy"), &k, &[]), "missing.npy");
    // Options the library rejects.
    assert_error(&run(&k, &k, &["--kv-lens", "1,2,3"]), "kv_lens");
    assert_error(&run(&k, &k, &["--softcap", "-1"]), "softcap");
    // Options clap rejects.
    assert_error(&run(&k, &k, &["--causal=sideways"]), "sideways");
    assert!(!dir.path("o.npy").exists(), "no output may be written on error");
}

#[test]
fn info_prints_adapter() {
    let ctx = Context::new().expect("no adapter: these tests need one (lavapipe is enough)");
    let out = wgattn(&["info"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "wgattn info failed: {}", text(&out.stderr));
    assert!(stdout.contains(&ctx.adapter().info.name), "adapter name missing:\n{stdout}");
    assert!(stdout.contains("max_storage_buffer_binding_size"), "{stdout}");
}

#[test]
fn check_quick_passes() {
    let out = wgattn(&["check", "--quick"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "wgattn check --quick failed:\n{stdout}\n{}", text(&out.stderr));
    assert!(stdout.starts_with("seed: "), "{stdout}");
    let summary = stdout.lines().find(|l| l.starts_with("check: ")).expect("summary line");
    let counts: Vec<&str> = summary.split_whitespace().collect();
    assert!(
        matches!(counts[..], ["check:", n, "passed,", "0", "failed"] if n.parse::<usize>().is_ok_and(|n| n > 0)),
        "bad summary line `{summary}`"
    );
}
