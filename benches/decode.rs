//! Criterion benches of decoding: one query per head against a K/V cache, B1 Hq32 Hkv8 D128 f32
//! (the issue-16 shape at smaller caches), through the decode kernel and through the prefill
//! kernel forced onto the same problem (`Path::Prefill`), reported as bytes of K and V read per
//! second (decode is bound by reading them once). Run: `cargo bench --bench decode`. The wider
//! table (32k and 128k keys, paged caches, PyTorch beside) is `wgattn bench --mode decode`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wgpu_attention::testing::Case;
use wgpu_attention::{forward, Attention, Causal, Context, ContextOptions, FirstCall, Path, Tensor};

fn bench_decode(c: &mut Criterion) {
    // the kernels a warm context runs from the first sample on
    let options = ContextOptions::from_env().expect("WGATTN_* variables").first_call(FirstCall::Wait);
    let ctx = Context::with_options(&options).expect("an adapter (apt-get install mesa-vulkan-drivers)");
    let mut group = c.benchmark_group("decode_b1_hq32_hkv8_d128_nq1");
    group.sample_size(10);
    for nk in [2048usize, 8192] {
        let case = Case::new(1, nk, 128).heads(1, 32, 8);
        let (q, k, v) = case.inputs(11);
        let [q, k, v] = [&q, &k, &v].map(|t| Tensor::upload(&ctx, t).unwrap());
        // K and V of 8 heads, f32, read once
        group.throughput(Throughput::Bytes((2 * 8 * nk * 128 * 4) as u64));
        for (name, path) in [("decode", Path::Decode), ("prefill_forced", Path::Prefill)] {
            let attn = Attention::new().causal(Causal::BottomRight).path(path);
            forward(&ctx, &q, &k, &v, &attn).unwrap(); // compiles (and tunes, if on)
            group.bench_with_input(BenchmarkId::new(name, nk), &nk, |b, _| {
                b.iter(|| {
                    forward(&ctx, &q, &k, &v, &attn).unwrap();
                    ctx.wait_idle().unwrap()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
