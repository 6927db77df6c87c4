//! Where the host time of recorded calls goes: B1 H8 N128 D64, 64 calls recorded into one
//! `Recorder`, then submitted, then waited for; three rounds after a warm-up, each phase timed
//! on its own. Run: `cargo run --release --example record_breakdown`.

use std::time::Instant;

use wgpu_attention::testing::Case;
use wgpu_attention::{forward, Attention, Context, ContextOptions, Recorder, Tensor};

fn main() -> Result<(), wgpu_attention::Error> {
    let ctx = Context::with_options(&ContextOptions::from_env()?)?;
    let (q, k, v) = Case::new(128, 128, 64).heads(1, 8, 8).inputs(3);
    let [q, k, v] = [&q, &k, &v].map(|t| Tensor::upload(&ctx, t).expect("upload"));
    let attn = Attention::new();
    // warm-up: tunes (if on) and compiles the pipeline
    forward(&ctx, &q, &k, &v, &attn)?;
    ctx.wait_idle()?;
    for round in 0..3 {
        let mut rec = Recorder::new(&ctx);
        let t = Instant::now();
        let outputs = (0..64).map(|_| rec.forward(&q, &k, &v, &attn)).collect::<Result<Vec<_>, _>>()?;
        let record = t.elapsed();
        let t = Instant::now();
        let submission = rec.submit()?;
        let submit = t.elapsed();
        let t = Instant::now();
        submission.wait()?;
        let wait = t.elapsed();
        println!(
            "round {round}: record 64 calls {record:.2?} ({:.1} µs each), submit {submit:.2?}, GPU wait {wait:.1?}",
            record.as_secs_f64() * 1e6 / 64.0
        );
        drop(outputs);
    }
    Ok(())
}
