//! Criterion benches of the fused forward (the autotuned family, or `WGATTN_KERNEL`) and of the
//! naive three-pass baseline on the default adapter, reported as FLOP/s with the standard count
//! (4·B·Hq·Nq·Nk·D, halved for causal). Run: `cargo bench --bench forward`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wgpu_attention::kernels::naive;
use wgpu_attention::testing::Case;
use wgpu_attention::{forward, Attention, Causal, Context, ContextOptions, FirstCall, Tensor};

fn bench_forward(c: &mut Criterion) {
    // the kernels a warm context runs from the first sample on
    let options = ContextOptions::from_env().expect("WGATTN_* variables").first_call(FirstCall::Wait);
    let ctx = Context::with_options(&options).expect("an adapter (apt-get install mesa-vulkan-drivers)");
    let mut group = c.benchmark_group("fused_forward_b1_h8_d64");
    group.sample_size(10);
    for n in [512usize, 1024, 2048] {
        for causal in [false, true] {
            let mut attn = Attention::new();
            if causal {
                attn = attn.causal(Causal::BottomRight);
            }
            let case = Case::new(n, n, 64).heads(1, 8, 8).attn(attn.clone());
            let (q, k, v) = case.inputs(7);
            let (q, k, v) = (
                Tensor::upload(&ctx, &q).unwrap(),
                Tensor::upload(&ctx, &k).unwrap(),
                Tensor::upload(&ctx, &v).unwrap(),
            );
            let flops = 4.0 * 8.0 * (n * n * 64) as f64 * if causal { 0.5 } else { 1.0 };
            group.throughput(Throughput::Elements(flops as u64));
            let name = if causal { "causal" } else { "dense" };
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    forward(&ctx, &q, &k, &v, &attn).unwrap();
                    ctx.wait_idle().unwrap()
                })
            });
            // the naive baseline materialises S: only where it is affordable
            if n <= 1024 {
                group.bench_with_input(BenchmarkId::new(format!("naive_{name}"), n), &n, |b, _| {
                    b.iter(|| {
                        naive::forward(&ctx, &q, &k, &v, &attn).unwrap();
                        ctx.wait_idle().unwrap()
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench_forward);
criterion_main!(benches);
