//! `wgattn warm-up`: compile ahead of time the kernels that calls with the given head dims and
//! mask classes will need ([`wgpu_attention::Context::warm_up`]), with a progress bar, and say
//! how long it took. On lavapipe the compiled code lands in Mesa's shader cache, so later
//! processes on this machine start fast too (docs/COMPILE.md).

use wgpu_attention::{Context, MaskClass, WarmUp};

use crate::{CliError, MaskClassArg, WarmUpArgs};

/// Compile, then print one line: steps, pipelines, seconds.
pub fn warm_up(args: &WarmUpArgs) -> Result<(), CliError> {
    let ctx = Context::new()?;
    let info = &ctx.adapter().info;
    println!("adapter: {} ({:?}, {})", info.name, info.backend, info.driver_info);
    let masks: Vec<MaskClass> = args
        .mask
        .iter()
        .map(|m| match m {
            MaskClassArg::Dense => MaskClass::Dense,
            MaskClassArg::Causal => MaskClass::Causal,
            MaskClassArg::Table => MaskClass::Table,
        })
        .collect();
    let dtypes: Vec<wgpu_attention::DType> = args.dtype.iter().map(|&d| d.into()).collect();
    let plan =
        WarmUp::new(&args.head_dim).dtypes(&dtypes).masks(&masks).softcap(args.softcap).alibi(args.alibi);
    let bar = crate::bench::progress_bar(0);
    let report = ctx.warm_up(&plan, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    println!(
        "warm-up: {} steps, {} pipelines compiled in {:.1} s",
        report.steps,
        report.pipelines,
        report.elapsed.as_secs_f64()
    );
    Ok(())
}
