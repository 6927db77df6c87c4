//! A Llama attention block generating: load its weights from a safetensors file (Hugging Face
//! names), prefill a prompt of 512 positions into the KV cache, then run 64 decode steps of one
//! token each, and print the time per step. Each call (projections, rotary embeddings,
//! attention, output projection) is one submission; the example waits for each step's output
//! (a model would read its token back).
//!
//!     cargo run --release --example llama_decode [-- --weights W.safetensors --prefix P
//!         --num-heads 16 --num-kv-heads 4 --rope-theta 500000 --prompt 512 --steps 64]
//!
//! Without --weights it writes a random block (E 1024, 16 heads, 4 K/V heads, D 64) as
//! safetensors bytes and loads those, as it would a file. The tokens' inputs are random.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use wgpu_attention::layer::LlamaAttention;
use wgpu_attention::{Context, HostTensor, Layout, Shape, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str, default: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| default.into())
    };
    let heads: usize = opt("--num-heads", "16").parse()?;
    let kv_heads: usize = opt("--num-kv-heads", "4").parse()?;
    let theta: f64 = opt("--rope-theta", "500000").parse()?;
    let prompt: usize = opt("--prompt", "512").parse()?;
    let steps: usize = opt("--steps", "64").parse()?;
    let mut prefix = opt("--prefix", "");
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);

    let bytes = match args.iter().position(|a| a == "--weights") {
        Some(i) => std::fs::read(args.get(i + 1).ok_or("--weights needs a path")?)?,
        None => {
            let (e, d) = (1024usize, 64usize);
            let mut tensors = Vec::new();
            for (name, rows, cols) in [
                ("q_proj", heads * d, e),
                ("k_proj", kv_heads * d, e),
                ("v_proj", kv_heads * d, e),
                ("o_proj", e, heads * d),
            ] {
                let w: Vec<u8> = (0..rows * cols)
                    .flat_map(|_| (rng.random_range(-1.0f32..1.0) / (cols as f32).sqrt()).to_le_bytes())
                    .collect();
                tensors.push((format!("model.layers.0.self_attn.{name}.weight"), vec![rows, cols], w));
            }
            let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
                .iter()
                .map(|(n, s, w)| {
                    (
                        n.clone(),
                        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), w).unwrap(),
                    )
                })
                .collect();
            prefix = "model.layers.0.self_attn.".into();
            safetensors::serialize(views, &None)?
        }
    };
    let ctx = Context::new()?;
    println!("{}", ctx.adapter().info.name);
    let block = LlamaAttention::from_safetensors(&ctx, &bytes, &prefix, heads, kv_heads, theta)?;
    let e = block.hidden;
    let mut input = |n: usize| -> Result<Tensor, wgpu_attention::Error> {
        let data = (0..n * e).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::upload(&ctx, &HostTensor::new(data, Shape::new(1, 1, n, e), Layout::Bhsd)?)
    };
    let mut cache = block.new_cache(&ctx, 1, prompt + steps)?;
    let x = input(prompt)?;
    let t0 = Instant::now();
    let y = block.forward_cached(&ctx, &x, &mut cache)?;
    y.to_host(&ctx)?;
    println!("prefill of {prompt} positions (compiles included): {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    let tokens: Vec<Tensor> = (0..steps).map(|_| input(1)).collect::<Result<_, _>>()?;
    let mut times = Vec::new();
    for (i, x) in tokens.iter().enumerate() {
        let t = Instant::now();
        let y = block.forward_cached(&ctx, x, &mut cache)?;
        y.to_host(&ctx)?; // a model reads its token back
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if i == 0 {
            println!("first decode step (compiles included): {:.1} ms", times[0]);
        }
    }
    let rest = &mut times[1..];
    rest.sort_by(f64::total_cmp);
    println!(
        "{steps} decode steps at positions {prompt}..{}: median {:.2} ms per step, min {:.2}, max {:.2} (after the first)",
        prompt + steps,
        rest[rest.len() / 2],
        rest[0],
        rest[rest.len() - 1]
    );
    Ok(())
}
