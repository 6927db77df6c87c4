//! A decode loop: a batch of 8 sequences of different prompt lengths generating 256 tokens each
//! through a paged KV cache. Each step appends the step's new K/V token of every sequence to its
//! pages and runs attention of the step's query against the whole cache, recorded into one
//! submission per step; nothing waits for the GPU between steps (the caller's model would read a
//! token back where it needs one: here only the last step's output is read). Q, K and V of a step
//! are random (a few sets on the device, rotated).
//!
//!     cargo run --release --example decode_loop [-- --steps 256 --page-size 16 --dtype f16]
//!
//! Prints tokens per second and the host time per step: recording (the append and attention
//! calls) and submitting. On lavapipe the device is the CPU and a submission runs there while
//! `submit` waits for the previous one, so its submit time is the device's time, not overhead.

use std::time::Instant;

use wgpu_attention::paged::{PagedKvCache, PagedKvConfig};
use wgpu_attention::{Attention, Causal, Context, DType, HostTensor, Layout, Recorder, Shape, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str, default: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| default.into())
    };
    let steps: usize = opt("--steps", "256").parse()?;
    let page_size: usize = opt("--page-size", "16").parse()?;
    let dtype = DType::parse(&opt("--dtype", "f32")).ok_or("--dtype: f32, f16 or bf16")?;
    let (hq, hkv, d) = (32, 8, 128);
    let prompts = [1000, 37, 512, 2048, 1, 300, 1500, 64];
    let batch = prompts.len();

    let ctx = Context::new()?;
    println!("adapter: {}", ctx.adapter().info.name);
    let pages = prompts.iter().map(|p| (p + steps).div_ceil(page_size)).sum::<usize>() + batch;
    let config = PagedKvConfig { pages, page_size, kv_heads: hkv, head_dim: d, dtype };
    let mut cache = PagedKvCache::new(&ctx, config)?;
    cache.shuffle_free_pages(7);
    let ids: Vec<_> = prompts.iter().map(|_| cache.add_sequence()).collect();

    let random = |shape: Shape, seed: u64| -> Result<Tensor, wgpu_attention::Error> {
        let mut x = seed | 1;
        let data = (0..shape.len())
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect();
        Tensor::upload_as(&ctx, &HostTensor::new(data, shape, Layout::Bhsd)?, dtype)
    };
    // the prompts: each sequence's own length, appended one sequence at a time
    let mut rec = Recorder::new(&ctx);
    for (i, (&id, &n)) in ids.iter().zip(&prompts).enumerate() {
        let (k, v) = (
            random(Shape::new(1, hkv, n, d), 2 * i as u64 + 1)?,
            random(Shape::new(1, hkv, n, d), 2 * i as u64 + 2)?,
        );
        cache.append(&mut rec, &[id], &k, &v)?;
    }
    rec.submit()?.wait()?;

    // a few sets of one step's Q and new K/V for the whole batch
    let sets: Vec<(Tensor, Tensor, Tensor)> = (0..4)
        .map(|s| {
            Ok((
                random(Shape::new(batch, hq, 1, d), 100 + s)?,
                random(Shape::new(batch, hkv, 1, d), 200 + s)?,
                random(Shape::new(batch, hkv, 1, d), 300 + s)?,
            ))
        })
        .collect::<Result<_, wgpu_attention::Error>>()?;
    let attn = Attention::new().causal(Causal::BottomRight);
    // warm-up step (compiles the kernels)
    {
        let mut rec = Recorder::new(&ctx);
        let (q, _, _) = &sets[0];
        cache.attention(&mut rec, q, &ids, &attn)?;
        rec.submit()?.wait()?;
    }

    let started = Instant::now();
    let (mut recording, mut submitting) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    let mut last = None;
    for step in 0..steps {
        let t = Instant::now();
        let (q, k, v) = &sets[step % sets.len()];
        let mut rec = Recorder::new(&ctx);
        cache.append(&mut rec, &ids, k, v)?;
        let out = cache.attention(&mut rec, q, &ids, &attn)?;
        let recorded = t.elapsed();
        rec.submit()?;
        recording += recorded;
        submitting += t.elapsed() - recorded;
        last = Some(out);
    }
    // the one sync the caller asks for: the last step's output
    let o = last.expect("at least one step").o.to_host(&ctx)?;
    let wall = started.elapsed();
    assert!(o.data.iter().all(|x| x.is_finite()));
    let tokens = steps * batch;
    println!(
        "{batch} sequences (prompts {prompts:?}) × {steps} steps, Hq {hq} Hkv {hkv} D {d} {dtype}, pages of {page_size}: \
         {tokens} tokens in {:.2} s = {:.1} tokens/s; host time per step: recording {:.3} ms, submit {:.3} ms",
        wall.as_secs_f64(),
        tokens as f64 / wall.as_secs_f64(),
        recording.as_secs_f64() * 1e3 / steps as f64,
        submitting.as_secs_f64() * 1e3 / steps as f64
    );
    for (id, p) in ids.iter().zip(&prompts) {
        assert_eq!(cache.len(*id)?, p + steps);
    }
    Ok(())
}
