//! `wgattn tune`: time every kernel family for a few head dims and every mask class on this
//! adapter, keep the fastest per key and write them to the library's tuning cache
//! (`wgpu_attention::tune`), so later calls start with the right kernel.

use wgpu_attention::tune::{self, cache_file, MaskClass, TuneKey};
use wgpu_attention::{Context, MAX_HEAD_DIM};

use crate::{CliError, TuneArgs};

/// Tune and print one row per key.
pub fn tune(args: &TuneArgs) -> Result<(), CliError> {
    let ctx = Context::new()?;
    let info = &ctx.adapter().info;
    println!("adapter: {} ({:?}, {})", info.name, info.backend, info.driver_info);
    let families: Vec<&str> = tune::candidates(&ctx).iter().map(|f| f.name()).collect();
    println!("{:<6} {:<7} {:>42}  chosen", "D", "mask", format!("median ms: {}", families.join(" / ")));
    for &d in &args.head_dim {
        if d == 0 || d > MAX_HEAD_DIM {
            return Err(CliError::Usage(format!(
                "--head-dim {d}: supported head dims are 1..={MAX_HEAD_DIM}"
            )));
        }
        for class in [MaskClass::Dense, MaskClass::Causal, MaskClass::Table] {
            let key = TuneKey::new(&ctx, d, class);
            let (best, times) = tune::tune(&ctx, &key)?;
            tune::remember(&ctx, &key, best);
            let cells: Vec<String> =
                times.iter().map(|(_, t)| t.map_or("-".to_string(), |t| format!("{t:.1}"))).collect();
            println!(
                "{:<6} {:<7} {:>42}  {}",
                key.head_dim,
                format!("{class:?}").to_lowercase(),
                cells.join(" / "),
                best.name()
            );
        }
    }
    match cache_file(&ctx) {
        Some(path) => println!("cache: {}", path.display()),
        None => {
            println!("cache: none (no WGATTN_CACHE_DIR, XDG_CACHE_HOME or HOME): choices kept in memory only")
        }
    }
    Ok(())
}
