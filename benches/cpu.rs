//! Criterion benches of the CPU FlashAttention path (`cpu::flash`) on all cores, B1 H8 D64 f32,
//! reported as FLOP/s with the standard count (4·B·Hq·Nq·Nk·D, halved for causal).
//! Run: `cargo bench --bench cpu`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use wgpu_attention::cpu::flash::{self, Config, Isa};
use wgpu_attention::testing::Case;
use wgpu_attention::{Attention, Causal};

fn bench_cpu(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_flash_b1_h8_d64");
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    let mut run = |name: &str, n: usize, causal: bool, config: Config| {
        let attn = if causal { Attention::new().causal(Causal::BottomRight) } else { Attention::new() };
        let case = Case::new(n, n, 64).heads(1, 8, 8).attn(attn.clone());
        let (q, k, v) = case.inputs(7);
        let flops = 4.0 * 8.0 * (n * n * 64) as f64 * if causal { 0.5 } else { 1.0 };
        group.throughput(Throughput::Elements(flops as u64));
        group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
            b.iter(|| flash::attention_with(&q, &k, &v, &attn, &config).unwrap())
        });
    };
    for n in [1024usize, 4096] {
        run("dense", n, false, Config::default());
        run("causal", n, true, Config::default());
    }
    // The portable (compiler-vectorised) kernels, for comparison with the detected ISA.
    run("dense_portable", 1024, false, Config { isa: Some(Isa::Portable), ..Config::default() });
    group.finish();
}

criterion_group!(benches, bench_cpu);
criterion_main!(benches);
