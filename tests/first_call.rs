//! `FirstCall::Quick`: on a CPU adapter a call whose kernel was never compiled runs the
//! faster-compiling stand-in (`TileConfig::quick`) while the full kernel compiles on a second
//! device; once that is done calls switch to it, and a later context on the same cache folder
//! starts with it. Every output is checked against the f64 oracle (NaN-poisoned), the stand-ins
//! on odd shapes, grouped heads and a mask with partial blocks. Each test has its own cache
//! folder, so no mark of an earlier run makes the path under test a no-op.

mod common;

use std::path::PathBuf;

use common::{context_from, F32_REL_TOL};
use wgpu_attention::kernels::flash::default_family;
use wgpu_attention::testing::{fresh_seed, run_case, Case};
use wgpu_attention::{Attention, BackgroundCompiles, Causal, Context, FirstCall, Mask, TileConfig};

/// A cache folder of its own, removed at the end.
struct CacheDir(PathBuf);

impl CacheDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wgattn-first-call-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for CacheDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn quick_context(dir: &CacheDir) -> Context {
    context_from(|o| o.first_call(FirstCall::Quick).cache_dir(Some(dir.0.clone())))
}

/// Whether this adapter compiles in the background (lavapipe); elsewhere Quick is Wait.
fn compiles_in_background(ctx: &Context) -> bool {
    let info = &ctx.adapter().info;
    info.device_type == wgpu::DeviceType::Cpu && info.backend == wgpu::Backend::Vulkan
}

/// The kernel a warm context runs for `case` (`table`: its mask's block size).
fn full_tiles(ctx: &Context, case: &Case, table: Option<usize>) -> TileConfig {
    TileConfig::for_family(ctx, default_family(ctx), case.head_dim, table).unwrap()
}

/// Run `case` on `ctx` with a fresh seed, assert it matches the oracle, return the tiles it ran.
fn run_checked(ctx: &Context, case: &Case) -> TileConfig {
    let seed = fresh_seed();
    let e = run_case(ctx, case, seed).unwrap_or_else(|err| panic!("{case}: {err}"));
    eprintln!("{case} seed={seed}: rel={:.2e} max_abs={:.2e} lse={:.2e}", e.rel, e.max_abs, e.lse_max_abs);
    assert!(
        e.pass(F32_REL_TOL),
        "{case} (reproduce with WGATTN_SEED={seed}): rel {:.3e}, max abs {:.3e}, lse max abs {:.3e}",
        e.rel,
        e.max_abs,
        e.lse_max_abs
    );
    e.info.and_then(|i| i.tiles).expect("a fused-forward call reports its tiles")
}

#[test]
fn a_first_call_runs_the_stand_in_then_the_full_kernel() {
    let dir = CacheDir::new("switch");
    let ctx = quick_context(&dir);
    // head dim 40 on the size-64 kernel, grouped heads, Nq ≠ Nk, neither a multiple of a tile
    let case = Case::new(77, 100, 40).heads(2, 4, 2);
    let full = full_tiles(&ctx, &case, None);
    let background = compiles_in_background(&ctx);
    let quick = full.quick().filter(|_| background).unwrap_or(full);

    assert_eq!(run_checked(&ctx, &case), quick, "the first call's kernel");
    if background {
        assert_ne!(quick, full);
        assert!(quick.tpr < full.tpr || quick.bk < full.bk, "{quick:?} is no smaller than {full:?}");
        // a second call while the compile may still run: the stand-in, or the full kernel if done
        let second = run_checked(&ctx, &case);
        assert!(second == quick || second == full, "{second:?}");
    }
    ctx.wait_background();
    let want = if background {
        BackgroundCompiles { pending: 0, ready: 1, failed: 0 }
    } else {
        BackgroundCompiles::default()
    };
    assert_eq!(ctx.background_compiles(), want);
    assert_eq!(run_checked(&ctx, &case), full, "after the background compile");
    drop(ctx);

    // a new context on the same cache folder: compiled here before, so the full kernel at once
    let again = quick_context(&dir);
    assert_eq!(run_checked(&again, &case), full, "a kernel compiled on this machine before");
    assert_eq!(again.background_compiles(), BackgroundCompiles::default());
}

#[test]
fn the_stand_ins_are_right_with_masks_and_wide_head_dims() {
    // a causal window (a block table with partial blocks: the bitmaps variant), head dim 111 on
    // the size-128 kernel; head dim 256 (key blocks of 8 at 512 bits), keys in one partial tile
    let window = Attention::new().causal(Causal::BottomRight).mask(Mask::window(50, 0));
    let cases =
        [(Case::new(130, 201, 111).heads(1, 3, 1).attn(window), Some(64)), (Case::new(33, 70, 256), None)];
    for (case, table) in cases {
        let dir = CacheDir::new(&format!("d{}", case.head_dim));
        let ctx = quick_context(&dir);
        let full = full_tiles(&ctx, &case, table);
        let quick = full.quick().filter(|_| compiles_in_background(&ctx)).unwrap_or(full);
        assert_eq!(run_checked(&ctx, &case), quick, "{case}: the first call's kernel");
    }
}

#[test]
fn wait_and_named_kernels_never_run_a_stand_in() {
    let dir = CacheDir::new("wait");
    let case = Case::new(40, 40, 64);
    let ctx = context_from(|o| o.first_call(FirstCall::Wait).cache_dir(Some(dir.0.clone())));
    assert_eq!(run_checked(&ctx, &case), full_tiles(&ctx, &case, None));
    assert_eq!(ctx.background_compiles(), BackgroundCompiles::default());
    // a call that names its family runs exactly that family's kernel, even on a Quick context
    let dir = CacheDir::new("named");
    let ctx = quick_context(&dir);
    let family = default_family(&ctx);
    let named = Case::new(40, 40, 64).attn(Attention::new().kernel(family));
    assert_eq!(run_checked(&ctx, &named), full_tiles(&ctx, &named, None));
    assert_eq!(ctx.background_compiles(), BackgroundCompiles::default());
}

#[test]
fn first_call_names_parse() {
    assert_eq!(FirstCall::from_name(" Quick ").unwrap(), FirstCall::Quick);
    assert_eq!(FirstCall::from_name("wait").unwrap(), FirstCall::Wait);
    assert!(FirstCall::from_name("later").unwrap_err().to_string().contains("quick or wait"));
    assert_eq!(FirstCall::default(), FirstCall::Quick);
}
