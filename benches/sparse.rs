//! Density sweep of the block-sparse path at N = 8192, D = 64 (issue 3's benchmark): time must
//! fall with the fraction of key blocks visited. Block masks are random at the given block
//! density with the diagonal block always kept; `causal` is the bottom-right causal mask.
//! Run: `cargo bench --bench sparse`. FLOP/s use the standard count scaled by the density.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use wgpu_attention::mask::Dims;
use wgpu_attention::testing::Case;
use wgpu_attention::{
    forward, Attention, BlockMask, Causal, Context, ContextOptions, FirstCall, Mask, Tensor,
};

const N: usize = 8192;
const D: usize = 64;
const BLOCK: usize = 64;

fn block_mask(density: f64, seed: u64) -> Mask {
    let nb = N / BLOCK;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data = (0..nb * nb).map(|e| e / nb == e % nb || rng.random_bool(density)).collect::<Vec<_>>();
    Mask::Blocks { data: Arc::new(data), batch: 1, heads: 1, size: BLOCK }
}

fn bench_density(c: &mut Criterion) {
    // the kernels a warm context runs from the first sample on
    let options = ContextOptions::from_env().expect("WGATTN_* variables").first_call(FirstCall::Wait);
    let ctx = Context::with_options(&options).expect("an adapter (apt-get install mesa-vulkan-drivers)");
    let case = Case::new(N, N, D);
    let (q, k, v) = case.inputs(1);
    let (q, k, v) = (
        Tensor::upload(&ctx, &q).unwrap(),
        Tensor::upload(&ctx, &k).unwrap(),
        Tensor::upload(&ctx, &v).unwrap(),
    );
    let dims = Dims { batch: 1, heads: 1, q_len: N, kv_len: N };
    let mut group = c.benchmark_group("sparse_n8192_d64");
    group.sample_size(10);
    let dense_flops = 4.0 * (N * N * D) as f64;
    let mut runs: Vec<(String, Attention, f64)> = vec![("dense".into(), Attention::new(), 1.0)];
    let causal = Attention::new().causal(Causal::BottomRight);
    let causal_bm = BlockMask::build(&causal, dims, BLOCK).unwrap();
    runs.push(("causal".into(), causal.clone(), causal_bm.density()));
    for density in [0.5, 0.25, 0.1, 0.05] {
        let attn = Attention::new().mask(block_mask(density, 7)).block_size(BLOCK);
        let bm = Arc::new(BlockMask::build(&attn, dims, BLOCK).unwrap());
        let d = bm.density();
        runs.push((format!("blocks_{density}"), Attention::new().block_mask(bm), d));
    }
    for (name, attn, density) in runs {
        group.throughput(Throughput::Elements((dense_flops * density) as u64));
        group.bench_with_input(BenchmarkId::new(name, format!("{density:.3}")), &attn, |b, attn| {
            b.iter(|| {
                forward(&ctx, &q, &k, &v, attn).unwrap();
                ctx.wait_idle().unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_density);
criterion_main!(benches);
