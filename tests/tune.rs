//! The autotuner: it times every candidate family, keeps a working one, caches the choice on disk
//! under `WGATTN_CACHE_DIR`, and later calls (and later contexts) reuse it without re-timing.
//! One test function: the environment is process-wide.

use wgpu_attention::kernels::flash::Family;
use wgpu_attention::testing::{run_case, Case};
use wgpu_attention::tune::{self, cache_file, MaskClass, TuneKey};
use wgpu_attention::{Attention, Causal, Context};

#[test]
fn tunes_caches_and_reuses() {
    let dir = std::env::temp_dir().join(format!("wgattn-tune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::env::set_var("WGATTN_CACHE_DIR", &dir);
    std::env::remove_var("WGATTN_TUNE");
    std::env::remove_var("WGATTN_KERNEL");
    let ctx = Context::new().expect("an adapter (apt-get install mesa-vulkan-drivers)");

    // every candidate is timed; the winner is one that ran
    let key = TuneKey::new(&ctx, 64, MaskClass::Causal);
    let (best, times) = tune::tune(&ctx, &key).unwrap();
    assert_eq!(times.len(), tune::candidates(&ctx).len());
    assert!(times.iter().any(|(f, t)| *f == best && t.is_some()), "{best:?} not among {times:?}");

    // a call tunes its key on first use, writes the cache and gives the oracle's answer
    let case = Case::new(70, 90, 64).attn(Attention::new().causal(Causal::BottomRight));
    let e = run_case(&ctx, &case, 5).unwrap();
    assert!(e.pass(1e-5), "{e:?}");
    let chosen = ctx.last_kernel().unwrap().family;
    let text = std::fs::read_to_string(cache_file().unwrap()).unwrap();
    assert!(text.contains(chosen.name()) && text.contains("|d64|f32|causal"), "{text}");

    // a new context reads the choice from disk: even a planted entry is obeyed
    let other = Family::Tiled;
    tune::remember(&TuneKey::new(&ctx, 32, MaskClass::Dense), other);
    assert!(std::fs::read_to_string(cache_file().unwrap()).unwrap().ends_with("|d32|f32|dense\ttiled\n"));
    let ctx2 = Context::new().unwrap();
    let e = run_case(&ctx2, &Case::new(40, 50, 32), 6).unwrap();
    assert!(e.pass(1e-5), "{e:?}");
    assert_eq!(ctx2.last_kernel().unwrap().family, other);

    // WGATTN_KERNEL forces a family
    std::env::set_var("WGATTN_KERNEL", "register-nosubgroup");
    let e = run_case(&ctx2, &Case::new(40, 50, 48), 7).unwrap();
    assert!(e.pass(1e-5), "{e:?}");
    assert_eq!(ctx2.last_kernel().unwrap().family, Family::Register { subgroups: false, wide: false });
    std::env::remove_var("WGATTN_KERNEL");
    let _ = std::fs::remove_dir_all(&dir);
}
