//! End-to-end tests of the `wgattn` binary: `run` on .npy files against the f64 oracle (GPU and
//! CPU paths), bad input, `info` and `check --quick`.
//!
//! The GPU tests need an adapter (lavapipe is enough) and fail, rather than skip, without one.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use npyz::WriterBuilder;
use rand::{Rng, SeedableRng};
use wgpu_attention::cpu::reference;
use wgpu_attention::testing::alibi_slopes;
use wgpu_attention::{Attention, Causal, Context, HostTensor, Layout, Mask, Shape};

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

/// Run the binary. Autotuning is off (each new head dim would otherwise time every kernel family,
/// compiling each: minutes on lavapipe); tests/tune.rs covers the tuner.
fn wgattn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgattn"))
        .env("WGATTN_TUNE", "off")
        .args(args)
        .output()
        .expect("spawn wgattn")
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

/// Sizes of a `run` test problem.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    b: usize,
    hq: usize,
    hkv: usize,
    nq: usize,
    nk: usize,
    d: usize,
}

/// The sizes of the option tests.
const SMALL: Sizes = Sizes { b: 2, hq: 4, hkv: 2, nq: 37, nk: 53, d: 24 };

/// Write random Q, K, V, run `wgattn run` with `extra` options, and compare O and LSE with the
/// oracle for `attn` (which must describe the same options; its ALiBi slopes, if any, are written
/// to a file and passed with `--alibi-slopes`).
fn run_matches_oracle(name: &str, layout: Layout, extra: &[&str], attn: &Attention) {
    run_case(name, SMALL, layout, attn, |_| extra.iter().map(|a| a.to_string()).collect());
}

/// [`run_matches_oracle`] for problem sizes `s`, where `setup` writes any further input files into
/// the test's directory and returns the extra options.
fn run_case(
    name: &str,
    s: Sizes,
    layout: Layout,
    attn: &Attention,
    setup: impl FnOnce(&TempDir) -> Vec<String>,
) {
    let dir = TempDir::new(name);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed ^ name.len() as u64);
    let Sizes { b, hq, hkv, nq, nk, d } = s;
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
    let extra = setup(&dir);
    args.extend(extra.iter().map(String::as_str));
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
    // wgattn asks llvmpipe for 512-bit vectors on AVX-512 CPUs (prefer_wide_cpu_vectors), which
    // this process did not: the same adapter is then named "…, 512 bits)" instead of "…, 256 bits)"
    let name = &ctx.adapter().info.name;
    let wide = name.replace("256 bits", "512 bits");
    assert!(stdout.contains(name.as_str()) || stdout.contains(&wide), "adapter name missing:\n{stdout}");
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
    // the 16-bit suite ran, and its line says what it skipped (nothing: no feature is needed)
    assert!(stdout.lines().any(|l| l.starts_with("16-bit: f16 and bf16 run on every adapter")), "{stdout}");
    assert!(stdout.lines().any(|l| l.contains("f16->f16") && l.contains("PASS")), "{stdout}");
    // compile time apart from run time
    let compile = stdout.lines().find(|l| l.starts_with("compile: ")).expect("compile line");
    assert!(compile.contains(" s (") && compile.contains("pipelines"), "{compile}");
    assert!(stdout.lines().any(|l| l.starts_with("run: ") && l.contains("cases in")), "{stdout}");
}

#[test]
fn warm_up_compiles_and_reports() {
    let out = wgattn(&["warm-up", "--head-dim", "32,20", "--mask", "dense,causal"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "wgattn warm-up failed:\n{stdout}\n{}", text(&out.stderr));
    // 32 and 20 are one kernel (of size 32); dense and causal each a step
    let line = stdout.lines().find(|l| l.starts_with("warm-up: ")).expect("summary line");
    assert!(line.starts_with("warm-up: 2 steps, ") && line.ends_with(" s"), "{line}");
    let bad = wgattn(&["warm-up", "--head-dim", "0"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("head dim 0"), "{}", text(&bad.stderr));
    let bad = wgattn(&["warm-up", "--mask", "nope"]);
    assert_eq!(bad.status.code(), Some(2));
}

// ---- masks (issue 3) ----

/// Sizes of the mask tests: Nq != Nk (so bottom-right alignment matters) and GQA.
const MASKED: Sizes = Sizes { b: 2, hq: 2, hkv: 1, nq: 70, nk: 150, d: 32 };
/// Sizes where Nq = Nk, as `--doc-ids` needs.
const SQUARE: Sizes = Sizes { b: 2, hq: 2, hkv: 2, nq: 100, nk: 100, d: 32 };

fn arg(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// `n` random values of `0..=max` (so about a fraction `1/(max+1)` are zero).
fn random_u8(n: usize, max: u8, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..=max)).collect()
}

fn random_bools(n: usize, density: f64, seed: u64) -> Vec<bool> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_bool(density)).collect()
}

/// Document ids of `SQUARE`: documents of 30, 1 and 69 tokens in batch 0, of 60 and 40 in batch 1.
fn doc_ids() -> Vec<i32> {
    let lens: [&[i32]; 2] = [&[30, 1, 69], &[60, 40]];
    lens.iter()
        .flat_map(|l| l.iter().enumerate().flat_map(|(d, &n)| std::iter::repeat_n(d as i32 + 7, n as usize)))
        .collect()
}

#[test]
fn run_window_matches_oracle() {
    let attn = Attention::new().mask(Mask::window(20, 5));
    run_case("window", MASKED, Layout::Bhsd, &attn, |_| strings(&["--window", "20,5"]));
    // with causal (cuts the right side), key padding, and another lowering block size
    let attn = Attention::new()
        .causal(Causal::BottomRight)
        .kv_lens(vec![150, 90])
        .mask(Mask::window(16, 3))
        .block_size(32);
    let extra = ["--causal", "--kv-lens", "150,90", "--window", "16,3", "--block-size", "32"];
    run_case("window-causal", MASKED, Layout::Bshd, &attn, |_| strings(&extra));
}

#[test]
fn run_doc_ids_matches_oracle() {
    let ids = doc_ids();
    let attn = Attention::new().mask(Mask::documents(ids.clone()));
    run_case("docs-i32", SQUARE, Layout::Bhsd, &attn, |dir| {
        write_npy(&dir.path("ids.npy"), &[2, 100], &ids);
        vec!["--doc-ids".into(), arg(&dir.path("ids.npy"))]
    });
    // int64 ids, with causal
    let attn = Attention::new().causal(Causal::BottomRight).mask(Mask::documents(ids.clone()));
    let ids64: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    run_case("docs-i64", SQUARE, Layout::Bshd, &attn, |dir| {
        write_npy(&dir.path("ids.npy"), &[2, 100], &ids64);
        vec!["--causal".into(), "--doc-ids".into(), arg(&dir.path("ids.npy"))]
    });
}

#[test]
fn run_prefix_matches_oracle() {
    let attn = Attention::new().kv_lens(vec![150, 60]).mask(Mask::Prefix(40));
    run_case("prefix", MASKED, Layout::Bhsd, &attn, |_| strings(&["--prefix", "40", "--kv-lens", "150,60"]));
}

#[test]
fn run_dense_mask_matches_oracle() {
    let Sizes { b, hq, nq, nk, .. } = MASKED;
    // uint8 [1, H, Nq, Nk]: nonzero (1..=3) is visible
    let bytes = random_u8(hq * nq * nk, 3, 1);
    let data = Arc::new(bytes.iter().map(|&x| x != 0).collect());
    let attn = Attention::new().mask(Mask::Dense { data, batch: 1, heads: hq });
    run_case("dense-u8", MASKED, Layout::Bhsd, &attn, |dir| {
        write_npy(&dir.path("m.npy"), &[1, hq, nq, nk], &bytes);
        vec!["--mask".into(), arg(&dir.path("m.npy"))]
    });
    // bool [B, 1, Nq, Nk], sparse enough that some rows see no key, with causal
    let bools = random_bools(b * nq * nk, 0.02, 2);
    let mask = Mask::Dense { data: Arc::new(bools.clone()), batch: b, heads: 1 };
    let attn = Attention::new().causal(Causal::BottomRight).mask(mask);
    run_case("dense-bool", MASKED, Layout::Bshd, &attn, |dir| {
        write_npy(&dir.path("m.npy"), &[b, 1, nq, nk], &bools);
        vec!["--causal".into(), "--mask".into(), arg(&dir.path("m.npy"))]
    });
}

#[test]
fn run_block_mask_matches_oracle() {
    let Sizes { b, hq, nq, nk, .. } = MASKED;
    // bool [B, H, ceil(Nq/32), ceil(Nk/32)]
    let (qb, kb) = (nq.div_ceil(32), nk.div_ceil(32));
    let bools = random_bools(b * hq * qb * kb, 0.4, 3);
    let mask = Mask::Blocks { data: Arc::new(bools.clone()), batch: b, heads: hq, size: 32 };
    let attn = Attention::new().mask(mask).block_size(32);
    run_case("blocks-32", MASKED, Layout::Bhsd, &attn, |dir| {
        write_npy(&dir.path("bm.npy"), &[b, hq, qb, kb], &bools);
        vec!["--block-mask".into(), arg(&dir.path("bm.npy")), "--block-size".into(), "32".into()]
    });
    // uint8 [1, 1, ceil(Nq/64), ceil(Nk/64)] and a window
    let (qb, kb) = (nq.div_ceil(64), nk.div_ceil(64));
    let bytes = random_u8(qb * kb, 1, 4);
    let data = Arc::new(bytes.iter().map(|&x| x != 0).collect());
    let mask = Mask::Blocks { data, batch: 1, heads: 1, size: 64 };
    let attn = Attention::new().mask(Mask::window(50, 50)).mask(mask).block_size(64);
    run_case("blocks-64", MASKED, Layout::Bhsd, &attn, |dir| {
        write_npy(&dir.path("bm.npy"), &[1, 1, qb, kb], &bytes);
        let bm = arg(&dir.path("bm.npy"));
        strings(&["--window", "50,50", "--block-mask", &bm, "--block-size", "64"])
    });
}

#[test]
fn run_patterns_match_oracle() {
    let cases: [(&str, &[&str], Mask); 4] = [
        ("longformer", &["--pattern", "longformer:window=10,global=3"], Mask::longformer(10, 3)),
        ("strided", &["--pattern", "strided:stride=9"], Mask::Strided { stride: 9 }),
        ("fixed", &["--pattern", "fixed:stride=16,c=4", "--causal"], Mask::Fixed { stride: 16, c: 4 }),
        ("dilated", &["--pattern", "dilated:window=6,dilation=3"], Mask::Dilated { window: 6, dilation: 3 }),
    ];
    for (name, extra, mask) in cases {
        let mut attn = Attention::new().mask(mask);
        if extra.contains(&"--causal") {
            attn = attn.causal(Causal::BottomRight);
        }
        run_case(&format!("pattern-{name}"), MASKED, Layout::Bhsd, &attn, |_| strings(extra));
    }
}

#[test]
fn run_bigbird_matches_oracle() {
    // random blocks of the default 64, then of --block-size 32
    let attn = Attention::new().mask(Mask::bigbird(8, 2, 1, 64, 11));
    let extra = ["--pattern", "bigbird:window=8,global=2,random=1,seed=11"];
    run_case("bigbird-64", MASKED, Layout::Bhsd, &attn, |_| strings(&extra));
    let attn = Attention::new().mask(Mask::bigbird(8, 2, 2, 32, 12)).block_size(32);
    let extra = ["--pattern", "bigbird:window=8,global=2,random=2,seed=12", "--block-size", "32"];
    run_case("bigbird-32", MASKED, Layout::Bhsd, &attn, |_| strings(&extra));
}

/// Every kind of mask at once, on the GPU and on the CPU.
#[test]
fn run_combined_masks_match_oracle() {
    let Sizes { b, hq, nq, nk, .. } = SQUARE;
    let ids = doc_ids();
    let bytes = random_u8(b * hq * nq * nk, 4, 5);
    let dense = Mask::Dense { data: Arc::new(bytes.iter().map(|&x| x != 0).collect()), batch: b, heads: hq };
    let blocks = random_bools(nq.div_ceil(32) * nk.div_ceil(32), 0.7, 6);
    let attn = Attention::new()
        .causal(Causal::TopLeft)
        .kv_lens(vec![100, 77])
        .mask(Mask::window(40, 40))
        .mask(Mask::documents(ids.clone()))
        .mask(Mask::Prefix(50))
        .mask(dense)
        .mask(Mask::Blocks { data: Arc::new(blocks.clone()), batch: 1, heads: 1, size: 32 })
        .mask(Mask::Strided { stride: 3 })
        .block_size(32);
    for device in ["gpu", "cpu"] {
        run_case(&format!("combined-{device}"), SQUARE, Layout::Bhsd, &attn, |dir| {
            let (idp, mp, bmp) = (dir.path("ids.npy"), dir.path("m.npy"), dir.path("bm.npy"));
            write_npy(&idp, &[b, nq], &ids);
            write_npy(&mp, &[b, hq, nq, nk], &bytes);
            write_npy(&bmp, &[1, 1, nq.div_ceil(32), nk.div_ceil(32)], &blocks);
            let (idp, mp, bmp) = (arg(&idp), arg(&mp), arg(&bmp));
            strings(&[
                "--causal=top-left",
                "--kv-lens",
                "100,77",
                "--window",
                "40,40",
                "--doc-ids",
                &idp,
                "--prefix",
                "50",
                "--mask",
                &mp,
                "--block-mask",
                &bmp,
                "--block-size",
                "32",
                "--pattern",
                "strided:stride=3",
                "--device",
                device,
            ])
        });
    }
}

#[test]
fn bad_masks_exit_2() {
    let dir = TempDir::new("bad-masks");
    let p = |f: &str| arg(&dir.path(f));
    // B=2, H=2, Nq=8, Nk=12
    write_npy(&dir.path("q.npy"), &[2, 2, 8, 16], &[0.5f32; 512]);
    write_npy(&dir.path("k.npy"), &[2, 2, 12, 16], &[0.5f32; 768]);
    write_npy(&dir.path("q12.npy"), &[2, 2, 12, 16], &[0.5f32; 768]);
    write_npy(&dir.path("m_ok.npy"), &[2, 1, 8, 12], &[true; 192]);
    write_npy(&dir.path("m_nk.npy"), &[1, 2, 8, 11], &[1u8; 176]);
    write_npy(&dir.path("m_b3.npy"), &[3, 1, 8, 12], &[true; 288]);
    write_npy(&dir.path("m_3d.npy"), &[2, 8, 12], &[true; 192]);
    write_npy(&dir.path("m_f32.npy"), &[1, 1, 8, 12], &[1.0f32; 96]);
    write_npy(&dir.path("bm_32.npy"), &[1, 2, 1, 1], &[true; 2]);
    write_npy(&dir.path("bm_bad.npy"), &[1, 2, 1, 2], &[true; 4]);
    write_npy(&dir.path("ids.npy"), &[2, 12], &[0i32; 24]);
    write_npy(&dir.path("ids_1d.npy"), &[24], &[0i32; 24]);
    write_npy(&dir.path("ids_n.npy"), &[2, 11], &[0i32; 22]);
    write_npy(&dir.path("ids_big.npy"), &[2, 12], &[1i64 << 33; 24]);
    write_npy(&dir.path("ids_f32.npy"), &[2, 12], &[0f32; 24]);
    let (q, q12, k, out) = (p("q.npy"), p("q12.npy"), p("k.npy"), p("o.npy"));
    let run = |q_file: &str, extra: &[&str]| {
        let mut args = vec!["run", "--q", q_file, "--k", &k, "--v", &k, "--out", &out, "--device", "cpu"];
        args.extend(extra);
        wgattn(&args)
    };

    // Dense masks: wrong Nk, batch neither 1 nor B, not 4-D, not bool/uint8.
    assert_error(&run(&q, &["--mask", &p("m_nk.npy")]), "m_nk.npy has shape [1, 2, 8, 11]");
    assert_error(&run(&q, &["--mask", &p("m_b3.npy")]), "m_b3.npy has shape [3, 1, 8, 12]");
    assert_error(&run(&q, &["--mask", &p("m_3d.npy")]), "m_3d.npy has shape [2, 8, 12] (3-D)");
    assert_error(&run(&q, &["--mask", &p("m_f32.npy")]), "bool or uint8 is required");
    // A dense mask for Nq=8 with Q of Nq=12.
    assert_error(&run(&q12, &["--mask", &p("m_ok.npy")]), "m_ok.npy has shape");
    // Block masks: shape for another block size, no --block-size, an unsupported one.
    assert_error(&run(&q, &["--block-mask", &p("bm_bad.npy"), "--block-size", "32"]), "bm_bad.npy has shape");
    assert_error(&run(&q, &["--block-mask", &p("bm_32.npy")]), "--block-size");
    assert_error(&run(&q, &["--block-mask", &p("bm_32.npy"), "--block-size", "48"]), "48");
    // Document ids: Nq != Nk, wrong shape, rank, range, dtype.
    assert_error(&run(&q, &["--doc-ids", &p("ids.npy")]), "Nq = Nk");
    assert!(text(&run(&q, &["--doc-ids", &p("ids.npy")]).stderr).contains("ids.npy"));
    assert_error(&run(&q12, &["--doc-ids", &p("ids_n.npy")]), "ids_n.npy has shape [2, 11]");
    assert_error(&run(&q12, &["--doc-ids", &p("ids_1d.npy")]), "ids_1d.npy has shape [24] (1-D)");
    assert_error(&run(&q12, &["--doc-ids", &p("ids_big.npy")]), "8589934592, outside the int32 range");
    assert_error(&run(&q12, &["--doc-ids", &p("ids_f32.npy")]), "int32 or int64 is required");
    // Patterns: unknown name, unknown key, missing key, not an integer, values the library rejects.
    assert_error(&run(&q, &["--pattern", "reformer:window=3"]), "unknown pattern `reformer`");
    assert_error(&run(&q, &["--pattern", "strided:step=3"]), "no key `step`");
    assert_error(&run(&q, &["--pattern", "fixed:stride=4"]), "needs c");
    assert_error(
        &run(&q, &["--pattern", "longformer:window=2.5,global=1"]),
        "`2.5` is not a non-negative integer",
    );
    assert_error(&run(&q, &["--pattern", "strided:stride=0"]), "stride must be at least 1");
    assert_error(&run(&q, &["--pattern", "fixed:stride=4,c=5"]), "exceeds the stride");
    // Windows: not L,R.
    assert_error(&run(&q, &["--window", "3"]), "L,R");
    assert_error(&run(&q, &["--window", "3,-1"]), "--window");
    assert!(!dir.path("o.npy").exists(), "no output may be written on error");
    // The good files do work (so the errors above are the ones tested).
    assert!(run(&q, &["--mask", &p("m_ok.npy"), "--block-mask", &p("bm_32.npy"), "--block-size", "32"])
        .status
        .success());
    assert!(run(&q12, &["--doc-ids", &p("ids.npy")]).status.success());
}

#[test]
fn run_topk_matches_oracle() {
    let mut attn = Attention::new().causal(Causal::BottomRight);
    attn.topk = Some(wgpu_attention::mask::TopK { k: 2, block_size: 32, sink: true });
    run_case("topk", MASKED, Layout::Bhsd, &attn, |_| {
        strings(&["--causal", "--topk", "2", "--topk-block", "32", "--topk-sink"])
    });
    let out = wgattn(&[
        "run",
        "--q",
        "q.npy",
        "--k",
        "k.npy",
        "--v",
        "v.npy",
        "--out",
        "o.npy",
        "--topk-block",
        "32",
    ]);
    assert_eq!(out.status.code(), Some(2), "--topk-block without --topk must be refused");
}

/// `run --dtype`: float16 inputs are read, tensors stored as f16 / bf16 on the device; O is a
/// float16 file with `--dtype f16`, float32 otherwise; both within 1e-2 of the oracle on the
/// inputs rounded to the dtype (what `--device cpu --dtype` computes).
#[test]
fn run_stores_tensors_in_16_bit() {
    let dir = TempDir::new("dtype");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x16);
    let s = Shape::new(1, 2, 45, 40);
    let (q, dims) = random(&mut rng, s, Layout::Bhsd);
    let (k, _) = random(&mut rng, s, Layout::Bhsd);
    let (v, _) = random(&mut rng, s, Layout::Bhsd);
    // Q as float16, K and V as float32: both are read
    let q16: Vec<half::f16> = q.data.iter().map(|&x| half::f16::from_f32(x)).collect();
    write_npy(&dir.path("q.npy"), &dims, &q16);
    write_npy(&dir.path("k.npy"), &dims, &k.data);
    write_npy(&dir.path("v.npy"), &dims, &v.data);
    for (dtype, o_descr) in [("f16", "<f2"), ("bf16", "<f4")] {
        let dt = wgpu_attention::DType::parse(dtype).unwrap();
        let want =
            reference::attention(&q.rounded(dt), &k.rounded(dt), &v.rounded(dt), &Attention::new()).unwrap();
        for device in ["gpu", "cpu"] {
            let out = dir.path(&format!("o-{dtype}-{device}.npy"));
            let o = out.to_str().unwrap();
            let r = wgattn(&[
                "run",
                "--q",
                dir.path("q.npy").to_str().unwrap(),
                "--k",
                dir.path("k.npy").to_str().unwrap(),
                "--v",
                dir.path("v.npy").to_str().unwrap(),
                "--out",
                o,
                "--dtype",
                dtype,
                "--device",
                device,
            ]);
            assert!(r.status.success(), "{dtype} {device}: {}", text(&r.stderr));
            let npy = npyz::NpyFile::new(File::open(&out).unwrap()).unwrap();
            assert_eq!(npy.dtype().descr(), format!("'{o_descr}'"), "{dtype} {device}: O's dtype");
            let data: Vec<f32> = if o_descr == "<f2" {
                npy.into_vec::<half::f16>().unwrap().into_iter().map(f32::from).collect()
            } else {
                npy.into_vec::<f32>().unwrap()
            };
            let (rel, _) = reference::compare(&data, &want.o);
            assert!(rel < 1e-2, "{dtype} {device}: rel {rel}");
        }
    }
}

/// `wgattn run` with one query says it ran the decode kernel; `wgattn merge` of two runs over the
/// two halves of the keys equals one run over all of them (GPU and CPU), in both layouts.
#[test]
fn run_decodes_and_merge_joins_two_key_ranges() {
    for layout in [Layout::Bhsd, Layout::Bshd] {
        let dir = TempDir::new(&format!("merge-{layout:?}"));
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x3e5 + layout as u64);
        let (b, hq, hkv, nq, d) = (2, 4, 2, 1, 32);
        let (nk1, nk2) = (70, 45);
        let (q, q_dims) = random(&mut rng, Shape::new(b, hq, nq, d), layout);
        let (k1, k1_dims) = random(&mut rng, Shape::new(b, hkv, nk1, d), layout);
        let (v1, _) = random(&mut rng, Shape::new(b, hkv, nk1, d), layout);
        let (k2, k2_dims) = random(&mut rng, Shape::new(b, hkv, nk2, d), layout);
        let (v2, _) = random(&mut rng, Shape::new(b, hkv, nk2, d), layout);
        let l = match layout {
            Layout::Bhsd => "bhsd",
            Layout::Bshd => "bshd",
        };
        write_npy(&dir.path("q.npy"), &q_dims, &q.data);
        for (file, t, dims) in
            [("k1", &k1, &k1_dims), ("v1", &v1, &k1_dims), ("k2", &k2, &k2_dims), ("v2", &v2, &k2_dims)]
        {
            write_npy(&dir.path(&format!("{file}.npy")), dims, &t.data);
        }
        let p = |f: &str| dir.path(f).to_str().unwrap().to_string();
        for part in ["1", "2"] {
            let args = strings(&[
                "run",
                "--layout",
                l,
                "--q",
                &p("q.npy"),
                "--k",
                &p(&format!("k{part}.npy")),
                "--v",
                &p(&format!("v{part}.npy")),
                "--out",
                &p(&format!("o{part}.npy")),
                "--lse",
                &p(&format!("l{part}.npy")),
            ]);
            let out = wgattn(&args.iter().map(String::as_str).collect::<Vec<_>>());
            assert!(out.status.success(), "{}", text(&out.stderr));
            assert!(text(&out.stderr).contains("ran decode"), "{}", text(&out.stderr));
        }
        // the oracle over all keys: K and V concatenated along the keys
        let cat = |a: &HostTensor, b2: &HostTensor| {
            let s = Shape::new(b, hkv, nk1 + nk2, d);
            let mut data = vec![0.0; s.len()];
            for bb in 0..b {
                for h in 0..hkv {
                    for j in 0..nk1 + nk2 {
                        for dd in 0..d {
                            let x = if j < nk1 { a.at(bb, h, j, dd) } else { b2.at(bb, h, j - nk1, dd) };
                            data[layout.offset(s, bb, h, j, dd)] = x;
                        }
                    }
                }
            }
            HostTensor::new(data, s, layout).unwrap()
        };
        let want = reference::attention(&q, &cat(&k1, &k2), &cat(&v1, &v2), &Attention::new()).unwrap();
        for device in ["gpu", "cpu"] {
            let args = strings(&[
                "merge",
                "--layout",
                l,
                "--o1",
                &p("o1.npy"),
                "--lse1",
                &p("l1.npy"),
                "--o2",
                &p("o2.npy"),
                "--lse2",
                &p("l2.npy"),
                "--out",
                &p("o.npy"),
                "--lse-out",
                &p("l.npy"),
                "--device",
                device,
            ]);
            let out = wgattn(&args.iter().map(String::as_str).collect::<Vec<_>>());
            assert!(out.status.success(), "{}", text(&out.stderr));
            let (o_shape, o) = read_npy(&dir.path("o.npy"));
            assert_eq!(o_shape, q_dims.iter().map(|&x| x as u64).collect::<Vec<_>>());
            let (rel, max_abs) = reference::compare(&o, &want.o);
            let (_, lse) = read_npy(&dir.path("l.npy"));
            let lse_err = reference::compare_lse(&lse, &want.lse);
            assert!(
                rel < 1e-5 && max_abs < 1e-4 && lse_err < 1e-4,
                "{layout:?} {device}: rel {rel:e}, lse {lse_err:e}"
            );
        }
        // mismatched states are a usage error (exit 2)
        let args = strings(&[
            "merge",
            "--o1",
            &p("o1.npy"),
            "--lse1",
            &p("l1.npy"),
            "--o2",
            &p("q.npy"),
            "--lse2",
            &p("k1.npy"),
            "--out",
            &p("o.npy"),
            "--lse-out",
            &p("l.npy"),
        ]);
        let out = wgattn(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    }
}

/// `wgattn run --page-size P --page-seed S` runs through a paged cache in shuffled page order and
/// gives the oracle's answer (key lengths: each sequence holds its own number of tokens).
#[test]
fn run_through_a_paged_cache_matches_oracle() {
    let causal = Attention::new().causal(wgpu_attention::Causal::BottomRight);
    run_matches_oracle(
        "paged",
        Layout::Bshd,
        &["--page-size", "16", "--page-seed", "3", "--causal"],
        &causal,
    );
    let lens = causal.clone().kv_lens(vec![53, 20]);
    run_matches_oracle(
        "paged-lens",
        Layout::Bhsd,
        &["--page-size", "32", "--causal", "--kv-lens", "53,20"],
        &lens,
    );
}

/// `wgattn mha`: the PyTorch fixture's module and inputs through the CLI (self- and cross-
/// attention, key padding, causal), its output against PyTorch's; --need-weights is refused.
#[test]
fn mha_matches_pytorch() {
    let dir = TempDir::new("mha");
    for (name, extra) in
        [("self_bias", vec![]), ("self_no_bias_causal", vec!["--causal"]), ("cross_kdim_padding", vec![])]
    {
        let weights = format!("{}/tests/fixtures/mha_{name}.safetensors", env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(&weights).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let floats = |n: &str| {
            let t = file.tensor(n).unwrap();
            let data: Vec<f32> = if t.dtype() == safetensors::Dtype::U8 {
                t.data().iter().map(|&b| b as f32).collect()
            } else {
                t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
            };
            (t.shape().to_vec(), data)
        };
        let (x_path, y_path) = (dir.path(&format!("{name}_x.npy")), dir.path(&format!("{name}_y.npy")));
        let (shape, x) = floats("query");
        write_npy(&x_path, &shape, &x);
        let mut args = vec![
            "mha".to_string(),
            "--weights".into(),
            weights.clone(),
            "--x".into(),
            x_path.display().to_string(),
            "--num-heads".into(),
            "4".into(),
            "--out".into(),
            y_path.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        if name.starts_with("cross") {
            // the CLI takes one --kv as key and value
            let (kshape, k) = floats("key");
            let kv = dir.path("kv.npy");
            write_npy(&kv, &kshape, &k);
            let (pshape, p) = floats("key_padding_mask");
            let pad = dir.path("pad.npy");
            write_npy(&pad, &pshape, &p.iter().map(|&v| v != 0.0).collect::<Vec<bool>>());
            args.extend([
                "--kv".into(),
                kv.display().to_string(),
                "--key-padding-mask".into(),
                pad.display().to_string(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = wgattn(&args);
        if name.starts_with("cross") {
            // kdim 24 ≠ vdim 40 in this fixture: one --kv cannot be both; a typed error (exit 2)
            assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
            assert!(text(&out.stderr).contains("value"), "{}", text(&out.stderr));
            continue;
        }
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let (dims, got) = read_npy(&y_path);
        assert_eq!(dims, shape.iter().map(|&d| d as u64).collect::<Vec<_>>());
        let want: Vec<f64> = floats("out").1.iter().map(|&v| v as f64).collect();
        let (rel, max_abs) = reference::compare(&got, &want);
        assert!(rel < 1e-4 && max_abs < 1e-4, "{name}: rel {rel:.3e} max abs {max_abs:.3e}");
    }
    let out = wgattn(&[
        "mha",
        "--weights",
        "w",
        "--x",
        "x",
        "--num-heads",
        "4",
        "--out",
        "y",
        "--need-weights",
        "p.npy",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// `wgattn llama-attn`: the Llama fixture (first position 7) through the CLI.
#[test]
fn llama_attn_matches_the_reference() {
    let dir = TempDir::new("llama");
    let weights = format!("{}/tests/fixtures/llama_gqa4_1_start7.safetensors", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&weights).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let floats = |n: &str| {
        let t = file.tensor(n).unwrap();
        let data: Vec<f32> =
            t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        (t.shape().to_vec(), data)
    };
    let (shape, x) = floats("x");
    let (x_path, y_path) = (dir.path("x.npy"), dir.path("y.npy"));
    write_npy(&x_path, &shape, &x);
    let (x_arg, y_arg) = (x_path.display().to_string(), y_path.display().to_string());
    let out = wgattn(&[
        "llama-attn",
        "--weights",
        &weights,
        "--prefix",
        "model.layers.0.self_attn.",
        "--x",
        &x_arg,
        "--num-heads",
        "4",
        "--num-kv-heads",
        "1",
        "--rope-theta",
        "10000",
        "--positions",
        "7",
        "--out",
        &y_arg,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (dims, got) = read_npy(&y_path);
    assert_eq!(dims, shape.iter().map(|&d| d as u64).collect::<Vec<_>>());
    let want: Vec<f64> = floats("out").1.iter().map(|&v| v as f64).collect();
    let (rel, max_abs) = reference::compare(&got, &want);
    assert!(rel < 1e-4 && max_abs < 1e-4, "rel {rel:.3e} max abs {max_abs:.3e}");
    // a wrong prefix: exit 2 naming the tensor
    let out = wgattn(&[
        "llama-attn",
        "--weights",
        &weights,
        "--x",
        &x_arg,
        "--num-heads",
        "4",
        "--num-kv-heads",
        "1",
        "--out",
        &y_arg,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("q_proj.weight"), "{}", text(&out.stderr));
}
