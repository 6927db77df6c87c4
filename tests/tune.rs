//! The autotuner: it times every candidate family, keeps a working one, caches the choice on disk
//! in the context's cache folder, and later calls (and later contexts) reuse it without re-timing.
//! By default (`Tuning::Cached`) a call never measures: it takes the cache's choice or the
//! adapter's rule.

mod common;

use wgpu_attention::kernels::flash::default_family;
use wgpu_attention::kernels::flash::Family;
use wgpu_attention::testing::{run_case, Case};
use wgpu_attention::tune::{self, cache_file, MaskClass, TuneKey};
use wgpu_attention::{Attention, Causal, Tuning};

#[test]
fn tunes_caches_and_reuses() {
    let dir = std::env::temp_dir().join(format!("wgattn-tune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tuned = |o: wgpu_attention::ContextOptions| {
        let mut o = o.tune(Tuning::OnFirstUse).cache_dir(Some(dir.clone()));
        o.kernel = None;
        o
    };
    let ctx = common::context_from(tuned);

    // every candidate is timed; the winner is one that ran
    let key = TuneKey::new(&ctx, 64, MaskClass::Causal);
    let (best, times) = tune::tune(&ctx, &key).unwrap();
    assert_eq!(times.len(), tune::candidates(&ctx).len());
    assert!(times.iter().any(|(f, t)| *f == best && t.is_some()), "{best:?} not among {times:?}");

    // a call tunes its key on first use, writes the cache and gives the oracle's answer
    let case = Case::new(70, 90, 64).attn(Attention::new().causal(Causal::BottomRight));
    let e = run_case(&ctx, &case, 5).unwrap();
    assert!(e.pass(1e-5), "{e:?}");
    let chosen = e.info.unwrap().tiles.unwrap().family;
    let text = std::fs::read_to_string(cache_file(&ctx).unwrap()).unwrap();
    assert!(text.contains(chosen.name()) && text.contains("|d64|f32|causal"), "{text}");

    // a new context reads the choice from disk: even a planted entry is obeyed
    let other = Family::Tiled;
    tune::remember(&ctx, &TuneKey::new(&ctx, 32, MaskClass::Dense), other);
    assert!(std::fs::read_to_string(cache_file(&ctx).unwrap()).unwrap().ends_with("|d32|f32|dense\ttiled\n"));
    let ctx2 = common::context_from(tuned);
    let e = run_case(&ctx2, &Case::new(40, 50, 32), 6).unwrap();
    assert!(e.pass(1e-5), "{e:?}");
    assert_eq!(e.info.unwrap().tiles.unwrap().family, other);

    // the context's kernel option forces a family
    let forced = Family::Register { subgroups: false, wide: false };
    let ctx3 = common::context_from(|o| tuned(o).kernel(forced));
    let e = run_case(&ctx3, &Case::new(40, 50, 48), 7).unwrap();
    assert!(e.pass(1e-5), "{e:?}");
    assert_eq!(e.info.unwrap().tiles.unwrap().family, forced);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn default_never_tunes_inside_a_call() {
    let dir = std::env::temp_dir().join(format!("wgattn-cached-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cached = |o: wgpu_attention::ContextOptions| {
        let mut o = o.tune(Tuning::default()).cache_dir(Some(dir.clone()));
        o.kernel = None;
        o
    };
    assert_eq!(Tuning::default(), Tuning::Cached);
    let ctx = common::context_from(cached);

    // a key the cache lacks: the adapter's rule, nothing measured, nothing written
    let case = Case::new(70, 90, 64).attn(Attention::new().causal(Causal::BottomRight));
    let e = run_case(&ctx, &case, 8).unwrap();
    assert!(e.pass(1e-5), "{e:?}");
    assert_eq!(e.info.unwrap().tiles.unwrap().family, default_family(&ctx));
    assert!(!cache_file(&ctx).unwrap().exists(), "a call without Tuning::OnFirstUse wrote the tuning cache");

    // a key the cache has: its choice, read by a new context
    let planted = Family::Register { subgroups: false, wide: false };
    tune::remember(&ctx, &TuneKey::new(&ctx, 40, MaskClass::Dense), planted);
    let ctx2 = common::context_from(cached);
    let e = run_case(&ctx2, &Case::new(40, 50, 40), 9).unwrap();
    assert!(e.pass(1e-5), "{e:?}");
    assert_eq!(e.info.unwrap().tiles.unwrap().family, planted);

    // Off ignores the cache
    let ctx3 = common::context_from(|o| cached(o).tune(Tuning::Off));
    let e = run_case(&ctx3, &Case::new(40, 50, 40), 10).unwrap();
    assert_eq!(e.info.unwrap().tiles.unwrap().family, default_family(&ctx3));
    let _ = std::fs::remove_dir_all(&dir);
}
