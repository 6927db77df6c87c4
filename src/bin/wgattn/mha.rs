//! `wgattn mha`: PyTorch's `nn.MultiheadAttention` (batch first) on the GPU, weights from a
//! safetensors file under PyTorch's names (`safetensors.torch.save_file(m.state_dict(), W)`).
//!
//! X is float32 `[B, N, E]`; `--kv` (cross-attention) float32 `[B, Nk, kdim]`, used as both key
//! and value (kdim = vdim); `--key-padding-mask` boolean `[B, Nk]` (true = padding); the output
//! float32 `[B, N, E]`.

use wgpu_attention::layer::{MhaOptions, MultiHeadAttention};
use wgpu_attention::{Context, HostTensor, Layout, Shape, Tensor};

use crate::npy;
use crate::{CliError, MhaArgs};

pub fn mha(args: &MhaArgs) -> Result<(), CliError> {
    if args.need_weights.is_some() || args.average {
        return Err(CliError::Usage(
            "--need-weights / --average: attention probabilities are not built yet (issue 17)".into(),
        ));
    }
    let ctx = Context::new()?;
    let mha = MultiHeadAttention::load(&ctx, &args.weights, &args.prefix, args.num_heads)?;
    let upload = |path: &std::path::Path| -> Result<Tensor, CliError> {
        let a = npy::read_f32(path, 3)?;
        let s = Shape::new(a.shape[0], 1, a.shape[1], a.shape[2]);
        Ok(Tensor::upload(&ctx, &HostTensor::new(a.data, s, Layout::Bhsd)?)?)
    };
    let x = upload(&args.x)?;
    let kv = match &args.kv {
        Some(p) => upload(p)?,
        None => x.clone(),
    };
    let key_padding_mask = match &args.key_padding_mask {
        Some(p) => Some(npy::read_bool(p, 2)?.data),
        None => None,
    };
    let options = MhaOptions { key_padding_mask, attn_mask: None, is_causal: args.causal, mask: None };
    let y = mha.forward(&ctx, &x, &kv, &kv, &options)?.to_host(&ctx)?;
    let s = y.shape;
    npy::write_f32(&args.out, &[s.batch, s.seq, s.head_dim], &y.data)?;
    Ok(())
}

/// `wgattn llama-attn`: a Llama attention block (Hugging Face names under --prefix), causal
/// self-attention over X float32 `[B, N, E]` at positions `--positions START`.., output float32
/// `[B, N, E]`.
pub fn llama_attn(args: &crate::LlamaAttnArgs) -> Result<(), CliError> {
    let ctx = Context::new()?;
    let block = wgpu_attention::layer::LlamaAttention::load(
        &ctx,
        &args.weights,
        &args.prefix,
        args.num_heads,
        args.num_kv_heads,
        args.rope_theta,
    )?;
    let a = npy::read_f32(&args.x, 3)?;
    let s = Shape::new(a.shape[0], 1, a.shape[1], a.shape[2]);
    let x = Tensor::upload(&ctx, &HostTensor::new(a.data, s, Layout::Bhsd)?)?;
    let y = block.forward(&ctx, &x, args.positions)?.to_host(&ctx)?;
    let s = y.shape;
    npy::write_f32(&args.out, &[s.batch, s.seq, s.head_dim], &y.data)?;
    Ok(())
}
