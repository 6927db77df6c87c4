//! Host overhead of small calls: B1 H8 N128 D64, 64 calls recorded into one submission versus 64
//! calls that each submit (`forward`) and wait for the GPU, as every call did before the recorder.
//! Three measurements per batch of 64: `record_submit` (host time to record and submit, no wait),
//! `record_submit_wait` (the same, then waiting for the GPU) and `blocking` (64 × forward + wait).
//! Run: `cargo bench --bench record`; per-call figures are the time / 64.

use criterion::{criterion_group, criterion_main, Criterion};

use wgpu_attention::testing::Case;
use wgpu_attention::{forward, Attention, Context, ContextOptions, FirstCall, Recorder, Tensor};

const CALLS: usize = 64;

fn bench_record(c: &mut Criterion) {
    let options = ContextOptions::from_env().expect("WGATTN_* variables").first_call(FirstCall::Wait);
    let ctx = Context::with_options(&options).expect("an adapter (apt-get install mesa-vulkan-drivers)");
    let case = Case::new(128, 128, 64).heads(1, 8, 8);
    let (q, k, v) = case.inputs(3);
    let [q, k, v] = [&q, &k, &v].map(|t| Tensor::upload(&ctx, t).unwrap());
    let attn = Attention::new();
    // warm-up: tunes (if on) and compiles the pipeline
    forward(&ctx, &q, &k, &v, &attn).unwrap();
    ctx.wait_idle().unwrap();

    let mut group = c.benchmark_group("host_overhead_b1_h8_n128_d64_x64");
    group.sample_size(20);
    group.bench_function("record_submit", |b| {
        // host time only: each batch is drained after its clock stops
        b.iter_custom(|iters| {
            let mut host = std::time::Duration::ZERO;
            for _ in 0..iters {
                let start = std::time::Instant::now();
                let mut rec = Recorder::new(&ctx);
                let outs: Vec<_> = (0..CALLS).map(|_| rec.forward(&q, &k, &v, &attn).unwrap()).collect();
                let submission = rec.submit().unwrap();
                host += start.elapsed();
                submission.wait().unwrap();
                drop(outs);
            }
            host
        })
    });
    group.bench_function("record_submit_wait", |b| {
        b.iter(|| {
            let mut rec = Recorder::new(&ctx);
            let outs: Vec<_> = (0..CALLS).map(|_| rec.forward(&q, &k, &v, &attn).unwrap()).collect();
            rec.submit().unwrap().wait().unwrap();
            outs
        })
    });
    group.bench_function("blocking", |b| {
        b.iter(|| {
            for _ in 0..CALLS {
                forward(&ctx, &q, &k, &v, &attn).unwrap();
                ctx.wait_idle().unwrap();
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench_record);
criterion_main!(benches);
