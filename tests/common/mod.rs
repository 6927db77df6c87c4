//! Shared test helpers: one context per test binary (so pipelines compile once), and `check`, which
//! runs a case on the GPU with NaN-poisoned outputs against the f64 oracle on fresh random inputs.
#![allow(dead_code)]

use std::sync::OnceLock;

use wgpu_attention::testing::{fresh_seed, run_case_with, Case, ForwardInto};
use wgpu_attention::{forward_into, Context, ContextOptions, FirstCall, Tuning};

/// f32 tolerance on ‖out−ref‖/‖ref‖ (max abs error must be under 100× this, LSE under 10×).
pub const F32_REL_TOL: f64 = 1e-5;

/// The options of every test context: the environment's adapter choice, no autotuning (tuning
/// compiles every family for every head dim: minutes on lavapipe; `tests/families.rs` runs every
/// family explicitly and `tests/tune.rs` the tuner).
pub fn options() -> ContextOptions {
    ContextOptions::from_env().expect("WGATTN_* variables").tune(Tuning::Off).first_call(FirstCall::Wait)
}

/// A new context with [`options`] changed by `f`. A machine without an adapter FAILS here, with
/// instructions.
pub fn context_from(f: impl FnOnce(ContextOptions) -> ContextOptions) -> Context {
    match Context::with_options(&f(options())) {
        Ok(c) => c,
        Err(e) => panic!(
            "GPU tests need an adapter and found none: {e}\n\
             (on Debian/Ubuntu: `apt-get install -y mesa-vulkan-drivers` gives lavapipe)"
        ),
    }
}

/// The shared context (one per test binary, so pipelines compile once).
pub fn ctx() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| context_from(|o| o))
}

/// Run `case` on `ctx` with two fresh seeds and assert both match the oracle.
pub fn check_on(ctx: &Context, case: &Case) {
    check_on_with(ctx, case, forward_into)
}

/// [`check_on`] through another forward (e.g. the naive baseline's `forward_into`).
pub fn check_on_with(ctx: &Context, case: &Case, forward: ForwardInto) {
    let seed = fresh_seed();
    for s in [seed, seed.wrapping_add(1)] {
        let e = run_case_with(ctx, case, s, forward).unwrap_or_else(|err| panic!("{case}: {err}"));
        eprintln!("{case} seed={s}: rel={:.2e} max_abs={:.2e} lse={:.2e}", e.rel, e.max_abs, e.lse_max_abs);
        assert!(
            e.pass(F32_REL_TOL),
            "{case} (reproduce with WGATTN_SEED={s}): rel {:.3e}, max abs {:.3e}, lse max abs {:.3e}",
            e.rel,
            e.max_abs,
            e.lse_max_abs
        );
    }
}

/// `check_on` with the shared context.
pub fn check(case: &Case) {
    check_on(ctx(), case)
}

/// A context on the same adapter with limits lowered by `f` (to exercise dispatch splitting).
pub fn context_with(f: impl FnOnce(&mut wgpu::Limits)) -> Context {
    let mut limits = ctx().limits().clone();
    f(&mut limits);
    context_from(|o| o.limits(limits))
}
