//! Attention layers: PyTorch's `nn.MultiheadAttention` on the device, with weights loaded from a
//! safetensors file under PyTorch's names.
//!
//! A call records the input projections (one GEMM for self-attention, whose Q, K and V are column
//! ranges of one `[B, N, 3E]` result), the attention (heads read in place from the projections by
//! strided views, no reshuffle), and the output projection, and submits once.
//!
//! Tensors are batch first, `[B, N, E]`, as `[B, 1, N, E]` device tensors; the batch-second
//! layout `[N, B, E]` is the strided view `Tensor::view(Shape::new(B, 1, N, E), [E, E, B·E], 0)`
//! of the same buffer.
//!
//! ```
//! use wgpu_attention::layer::{MhaOptions, MultiHeadAttention};
//! use wgpu_attention::{Context, HostTensor, Layout, Shape, Tensor};
//! # fn main() -> Result<(), wgpu_attention::Error> {
//! let ctx = Context::new()?;
//! let (e, heads) = (16, 2);
//! let ramp = |n: usize, s: f32| (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) * s).collect::<Vec<f32>>();
//! let in_proj = (ramp(3 * e * e, 0.01), Some(ramp(3 * e, 0.1))); // in_proj_weight, in_proj_bias
//! let out_proj = (ramp(e * e, 0.02), Some(ramp(e, 0.1))); // out_proj.weight, out_proj.bias
//! let mha = MultiHeadAttention::from_host(&ctx, heads, e, in_proj, out_proj)?;
//! let x = Tensor::upload(&ctx, &HostTensor::new(ramp(2 * 5 * e, 0.1), Shape::new(2, 1, 5, e), Layout::Bhsd)?)?;
//! let y = mha.forward(&ctx, &x, &x, &x, &MhaOptions::default())?;
//! assert_eq!(y.shape(), Shape::new(2, 1, 5, e));
//! # Ok(()) }
//! ```

use std::sync::Arc;

use crate::attention::{Attention, Causal, Layout, Shape};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::mask::Mask;
use crate::record::Recorder;
use crate::tensor::{HostTensor, Tensor};

/// `attn_mask` of [`MhaOptions`], PyTorch's meaning: `[Nq, Nk]`, or `[B·H, Nq, Nk]` per batch
/// and head, row-major.
#[derive(Clone, Debug)]
pub enum AttnMask {
    /// `true` = the query may **not** attend to the key.
    Bool(Vec<bool>),
    /// Added to the scores. Only 0 (attend) and −∞ (do not) are taken so far; other values are
    /// refused with an error.
    Float(Vec<f32>),
}

/// The options of one [`MultiHeadAttention::forward`], PyTorch's names and meanings.
#[derive(Clone, Debug, Default)]
pub struct MhaOptions {
    /// `[B, Nk]`, `true` = a padding key, ignored.
    pub key_padding_mask: Option<Vec<bool>>,
    /// See [`AttnMask`].
    pub attn_mask: Option<AttnMask>,
    /// Causal (top-left aligned: query i sees keys 0..=i), alone or with `attn_mask`.
    pub is_causal: bool,
    /// Any mask of the library besides (a window, documents, block patterns ...), AND-ed with
    /// the others: alone it runs as the kernels' own mask (sparse blocks skipped); with
    /// `key_padding_mask` or `attn_mask` all three become one dense mask.
    pub mask: Option<Mask>,
}

/// One projection's weight `[1, 1, out, in]` and optional bias `[1, 1, 1, out]`.
#[derive(Clone, Debug)]
struct Projection {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Projection {
    /// Rows `start..start + len` of this projection (a view: no copy).
    fn rows(&self, start: usize, len: usize) -> Result<Self> {
        Ok(Self {
            weight: self.weight.narrow(2, start, len)?,
            bias: self.bias.as_ref().map(|b| b.narrow(3, start, len)).transpose()?,
        })
    }
}

/// PyTorch's `nn.MultiheadAttention` (batch first) on the device. See the module docs.
#[derive(Clone, Debug)]
pub struct MultiHeadAttention {
    /// E: the width of queries and outputs.
    pub embed_dim: usize,
    /// H: E / H is the head dim.
    pub num_heads: usize,
    /// Width of the keys (E unless given).
    pub kdim: usize,
    /// Width of the values (E unless given).
    pub vdim: usize,
    /// Q, K and V rows of one `[3E, E]` weight (`in_proj_weight`) where kdim = vdim = E.
    packed: Option<Projection>,
    q: Projection,
    k: Projection,
    v: Projection,
    out: Projection,
}

/// A weight read from a file or given by the caller: its name, its shape, its values (f32).
struct Named<'a> {
    name: &'a str,
    shape: Vec<usize>,
    data: Vec<f32>,
}

fn weights_error(tensor: &str, problem: impl Into<String>) -> Error {
    Error::Weights { tensor: tensor.to_string(), problem: problem.into() }
}

impl MultiHeadAttention {
    #[cfg(feature = "safetensors")]
    /// Load from a safetensors file with PyTorch's names (`safetensors.torch.save_file(
    /// m.state_dict(), path)` of an `nn.MultiheadAttention`): `in_proj_weight` `[3E, E]` (or
    /// `q_proj_weight` `[E, E]`, `k_proj_weight` `[E, kdim]`, `v_proj_weight` `[E, vdim]`),
    /// optional `in_proj_bias` `[3E]`, `out_proj.weight` `[E, E]`, optional `out_proj.bias`
    /// `[E]`; f32, f16 or bf16 (widened to f32). Names may carry `prefix`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(ctx: &Context, path: &std::path::Path, prefix: &str, num_heads: usize) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| weights_error(&path.display().to_string(), format!("cannot read the file: {e}")))?;
        Self::from_safetensors(ctx, &bytes, prefix, num_heads)
    }

    #[cfg(feature = "safetensors")]
    /// [`MultiHeadAttention::load`] from the bytes of a safetensors file.
    pub fn from_safetensors(ctx: &Context, bytes: &[u8], prefix: &str, num_heads: usize) -> Result<Self> {
        let file = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| weights_error("(file)", format!("not a safetensors file: {e}")))?;
        let names: Vec<String> = file.names().into_iter().cloned().collect();
        let get = |name: &str| -> Result<Option<(Vec<usize>, Vec<f32>)>> {
            let full = format!("{prefix}{name}");
            if !names.contains(&full) {
                return Ok(None);
            }
            let view = file.tensor(&full).map_err(|e| weights_error(&full, e.to_string()))?;
            Ok(Some((view.shape().to_vec(), read_floats(&full, view.dtype(), view.data())?)))
        };
        let need = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
            get(name)?.ok_or_else(|| {
                weights_error(
                    &format!("{prefix}{name}"),
                    "missing from the file (an nn.MultiheadAttention state_dict has it)",
                )
            })
        };
        let (ow_shape, ow) = need("out_proj.weight")?;
        let out_bias = get("out_proj.bias")?;
        let in_bias = get("in_proj_bias")?;
        let e = *ow_shape.first().unwrap_or(&0);
        let mut list = vec![Named { name: "out_proj.weight", shape: ow_shape, data: ow }];
        if let Some((s, d)) = out_bias {
            list.push(Named { name: "out_proj.bias", shape: s, data: d });
        }
        if let Some((s, d)) = in_bias {
            list.push(Named { name: "in_proj_bias", shape: s, data: d });
        }
        let (kdim, vdim) = match get("in_proj_weight")? {
            Some((s, d)) => {
                list.push(Named { name: "in_proj_weight", shape: s, data: d });
                (e, e)
            }
            None => {
                let mut dims = [0; 2];
                for (i, name) in ["q_proj_weight", "k_proj_weight", "v_proj_weight"].into_iter().enumerate() {
                    let (s, d) = need(name).map_err(|_| {
                        weights_error(
                            &format!("{prefix}in_proj_weight"),
                            "missing from the file, and so are the separate q/k/v_proj_weight",
                        )
                    })?;
                    if i > 0 {
                        dims[i - 1] = s.get(1).copied().unwrap_or(0);
                    }
                    list.push(Named { name, shape: s, data: d });
                }
                (dims[0], dims[1])
            }
        };
        Self::build(ctx, num_heads, e, kdim, vdim, list, prefix)
    }

    /// From host weights in PyTorch's shapes: `in_proj_weight` `[3E, E]` (row-major), optional
    /// `in_proj_bias` `[3E]`, `out_proj.weight` `[E, E]`, optional `out_proj.bias` `[E]`
    /// (kdim = vdim = E = `embed_dim`).
    pub fn from_host(
        ctx: &Context,
        num_heads: usize,
        embed_dim: usize,
        in_proj: (Vec<f32>, Option<Vec<f32>>),
        out_proj: (Vec<f32>, Option<Vec<f32>>),
    ) -> Result<Self> {
        let ((in_proj_weight, in_proj_bias), (out_proj_weight, out_proj_bias)) = (in_proj, out_proj);
        let e = embed_dim;
        let mut list = vec![
            Named { name: "in_proj_weight", shape: vec![3 * e, e], data: in_proj_weight },
            Named { name: "out_proj.weight", shape: vec![e, e], data: out_proj_weight },
        ];
        if let Some(b) = in_proj_bias {
            list.push(Named { name: "in_proj_bias", shape: vec![b.len()], data: b });
        }
        if let Some(b) = out_proj_bias {
            list.push(Named { name: "out_proj.bias", shape: vec![b.len()], data: b });
        }
        Self::build(ctx, num_heads, e, e, e, list, "")
    }

    /// Check every weight's shape against E, kdim, vdim and H, and upload them.
    fn build(
        ctx: &Context,
        num_heads: usize,
        e: usize,
        kdim: usize,
        vdim: usize,
        list: Vec<Named<'_>>,
        prefix: &str,
    ) -> Result<Self> {
        if e == 0 || num_heads == 0 || !e.is_multiple_of(num_heads) {
            return Err(weights_error(
                &format!("{prefix}out_proj.weight"),
                format!("embed_dim {e} must be a positive multiple of num_heads {num_heads}"),
            ));
        }
        if kdim == 0 || vdim == 0 {
            return Err(weights_error(&format!("{prefix}k_proj_weight"), "kdim and vdim must be at least 1"));
        }
        let packed_in = list.iter().any(|n| n.name == "in_proj_weight");
        if packed_in && (kdim != e || vdim != e) {
            return Err(weights_error(
                &format!("{prefix}in_proj_weight"),
                format!("a packed [3E, E] weight needs kdim = vdim = E ({e}), not {kdim} / {vdim}"),
            ));
        }
        let proj = |name: &str, rows: usize, cols: usize| -> Result<Tensor> {
            let n = list.iter().find(|n| n.name == name).expect("listed");
            let want: Vec<usize> = if cols == 0 { vec![rows] } else { vec![rows, cols] };
            if n.shape != want {
                return Err(weights_error(
                    &format!("{prefix}{name}"),
                    format!("shape {:?}, but embed_dim {e}, kdim {kdim}, vdim {vdim} need {want:?}", n.shape),
                ));
            }
            let shape = if cols == 0 { Shape::new(1, 1, 1, rows) } else { Shape::new(1, 1, rows, cols) };
            Tensor::upload(ctx, &HostTensor::new(n.data.clone(), shape, Layout::Bhsd)?)
        };
        let has = |name: &str| list.iter().any(|n| n.name == name);
        let out = Projection {
            weight: proj("out_proj.weight", e, e)?,
            bias: if has("out_proj.bias") { Some(proj("out_proj.bias", e, 0)?) } else { None },
        };
        let in_bias = if has("in_proj_bias") { Some(proj("in_proj_bias", 3 * e, 0)?) } else { None };
        let (packed, q, k, v) = if packed_in {
            let packed = Projection { weight: proj("in_proj_weight", 3 * e, e)?, bias: in_bias };
            let (q, k, v) = (packed.rows(0, e)?, packed.rows(e, e)?, packed.rows(2 * e, e)?);
            (Some(packed), q, k, v)
        } else {
            let bias = |i: usize| in_bias.as_ref().map(|b| b.narrow(3, i * e, e)).transpose();
            (
                None,
                Projection { weight: proj("q_proj_weight", e, e)?, bias: bias(0)? },
                Projection { weight: proj("k_proj_weight", e, kdim)?, bias: bias(1)? },
                Projection { weight: proj("v_proj_weight", e, vdim)?, bias: bias(2)? },
            )
        };
        Ok(Self { embed_dim: e, num_heads, kdim, vdim, packed, q, k, v, out })
    }

    /// Attention output `[B, 1, Nq, E]` for `query` `[B, 1, Nq, E]`, `key` `[B, 1, Nk, kdim]` and
    /// `value` `[B, 1, Nk, vdim]` (the same tensor thrice for self-attention), recorded and
    /// submitted as one submission.
    pub fn forward(
        &self,
        ctx: &Context,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        options: &MhaOptions,
    ) -> Result<Tensor> {
        let mut rec = Recorder::new(ctx);
        let y = self.record(&mut rec, query, key, value, options)?;
        rec.submit()?;
        Ok(y)
    }

    /// [`MultiHeadAttention::forward`] recorded into `rec` (4 or 6 calls: projections,
    /// attention, output projection).
    pub fn record(
        &self,
        rec: &mut Recorder<'_>,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        options: &MhaOptions,
    ) -> Result<Tensor> {
        let ctx = rec.context();
        let (e, h) = (self.embed_dim, self.num_heads);
        let d = e / h;
        let (qs, ks, vs) = (query.shape(), key.shape(), value.shape());
        let input = |what: &str, s: Shape, width: usize| {
            if s.heads != 1 || s.head_dim != width {
                return Err(Error::ShapeMismatch(format!(
                    "MultiHeadAttention: {what} is {s}: it must be [B, 1, N, {width}] (batch first)"
                )));
            }
            Ok(())
        };
        input("the query", qs, e)?;
        input("the key", ks, self.kdim)?;
        input("the value", vs, self.vdim)?;
        if ks.batch != qs.batch || vs.batch != qs.batch || vs.seq != ks.seq {
            return Err(Error::ShapeMismatch(format!(
                "MultiHeadAttention: query {qs}, key {ks}, value {vs}: one batch, and keys and values of one length"
            )));
        }
        let (b, nq, nk) = (qs.batch, qs.seq, ks.seq);
        let attn = self.attention(options, b, nq, nk)?;

        // projections: heads are strided views of them (head h = columns h·D..(h+1)·D)
        let heads = |t: &Tensor, col0: usize, n: usize| {
            let row = t.strides()[2];
            t.view(Shape::new(b, h, n, d), [t.strides()[0], d, row], col0)
        };
        let same = |a: &Tensor, b: &Tensor| {
            Arc::ptr_eq(a.buffer(), b.buffer())
                && a.offset() == b.offset()
                && a.strides() == b.strides()
                && a.shape() == b.shape()
        };
        let (q, k, v) = match &self.packed {
            Some(p) if same(query, key) && same(key, value) => {
                let qkv = rec.linear(query, &p.weight, p.bias.as_ref())?;
                (heads(&qkv, 0, nq)?, heads(&qkv, e, nk)?, heads(&qkv, 2 * e, nk)?)
            }
            _ => {
                let q = rec.linear(query, &self.q.weight, self.q.bias.as_ref())?;
                let k = rec.linear(key, &self.k.weight, self.k.bias.as_ref())?;
                let v = rec.linear(value, &self.v.weight, self.v.bias.as_ref())?;
                (heads(&q, 0, nq)?, heads(&k, 0, nk)?, heads(&v, 0, nk)?)
            }
        };
        // O [B, H, Nq, D] in BSHD order is [B, Nq, E]: the output projection's input as is
        let o = Tensor::zeros(ctx, Shape::new(b, h, nq, d), Layout::Bshd)?;
        let lse = Tensor::zeros(ctx, Shape::new(b, h, nq, 1), Layout::Bhsd)?;
        rec.forward_into(&q, &k, &v, &attn, &o, &lse)?;
        let merged = o.view(Shape::new(b, 1, nq, e), [nq * e, nq * e, e], 0)?;
        rec.linear(&merged, &self.out.weight, self.out.bias.as_ref())
    }

    /// The attention options of a call: PyTorch's masks as the library's dense mask (visible =
    /// not padded and not masked), `is_causal` as top-left causal.
    fn attention(&self, options: &MhaOptions, b: usize, nq: usize, nk: usize) -> Result<Attention> {
        let h = self.num_heads;
        let mut attn = Attention::new();
        if options.is_causal {
            attn = attn.causal(Causal::TopLeft);
        }
        if options.key_padding_mask.is_none() && options.attn_mask.is_none() {
            return Ok(match &options.mask {
                Some(m) => attn.mask(m.clone()),
                None => attn,
            });
        }
        let hidden: Option<(Vec<bool>, usize)> = match &options.attn_mask {
            None => None,
            Some(AttnMask::Bool(m)) => Some((m.clone(), m.len())),
            Some(AttnMask::Float(m)) => {
                if let Some(x) = m.iter().find(|&&x| x != 0.0 && x != f32::NEG_INFINITY) {
                    return Err(Error::InvalidOption(format!(
                        "attn_mask: float masks of 0 and -inf only so far (an additive bias of {x} is not yet taken)"
                    )));
                }
                Some((m.iter().map(|&x| x == f32::NEG_INFINITY).collect(), m.len()))
            }
        };
        let per_head = match &hidden {
            Some((_, len)) if *len == nq * nk => false,
            Some((_, len)) if *len == b * h * nq * nk => true,
            Some((_, len)) => {
                return Err(Error::ShapeMismatch(format!(
                    "attn_mask has {len} elements: it must be [Nq, Nk] ({nq}×{nk}) or [B·H, Nq, Nk]"
                )))
            }
            None => false,
        };
        if let Some(p) = &options.key_padding_mask {
            if p.len() != b * nk {
                return Err(Error::ShapeMismatch(format!(
                    "key_padding_mask has {} elements: it must be [B, Nk] ({b}×{nk})",
                    p.len()
                )));
            }
        }
        let per_head = per_head || options.mask.is_some();
        let heads = if per_head { h } else { 1 };
        let dims = crate::mask::Dims { batch: b, heads: h, q_len: nq, kv_len: nk };
        let mut data = vec![true; b * heads * nq * nk];
        for bi in 0..b {
            for hi in 0..heads {
                for i in 0..nq {
                    for j in 0..nk {
                        let padded = options.key_padding_mask.as_ref().is_some_and(|p| p[bi * nk + j]);
                        let masked = hidden.as_ref().is_some_and(|(m, len)| {
                            m[if *len == nq * nk { i * nk + j } else { ((bi * h + hi) * nq + i) * nk + j }]
                        });
                        let library = options.mask.as_ref().is_none_or(|m| m.visible(dims, bi, hi, i, j, nk));
                        data[((bi * heads + hi) * nq + i) * nk + j] = !padded && !masked && library;
                    }
                }
            }
        }
        Ok(attn.mask(Mask::Dense { data: Arc::new(data), batch: b, heads }))
    }
}

#[cfg(feature = "safetensors")]
/// The values of a safetensors tensor as f32 (f32, f16 and bf16 taken; little-endian).
fn read_floats(name: &str, dtype: safetensors::Dtype, data: &[u8]) -> Result<Vec<f32>> {
    use safetensors::Dtype;
    Ok(match dtype {
        Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => {
            data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
        }
        other => {
            return Err(weights_error(name, format!("dtype {other:?} is not supported (f32, f16, bf16 are)")))
        }
    })
}

/// Llama's attention block (Hugging Face `LlamaAttention`): `q_proj`, `k_proj`, `v_proj`,
/// `o_proj` (`.weight`, optional `.bias`), `num_heads` query heads and `num_kv_heads` K/V heads
/// (grouped-query attention), rotary embeddings (rotate-half, base θ) applied on the device,
/// causal self-attention, and a [`KvCache`] for generation. One call records the projections,
/// the rotations, the attention and the output projection and submits once.
#[derive(Clone, Debug)]
pub struct LlamaAttention {
    /// E: the width of the input and output.
    pub hidden: usize,
    /// Query heads.
    pub num_heads: usize,
    /// K/V heads (dividing `num_heads`).
    pub num_kv_heads: usize,
    /// D: `q_proj` has `num_heads · D` rows.
    pub head_dim: usize,
    /// The rotary base θ (10,000 in Llama 2, 500,000 in Llama 3).
    pub rope_theta: f64,
    q: Projection,
    k: Projection,
    v: Projection,
    o: Projection,
}

/// The keys and values of earlier positions of a [`LlamaAttention`]: `[B, Hkv, max_len, D]`
/// each (rotated keys), filled from position 0 by prefill and decode calls.
#[derive(Clone, Debug)]
pub struct KvCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl KvCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first call.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions it can hold.
    pub fn capacity(&self) -> usize {
        self.k.shape().seq
    }
}

impl LlamaAttention {
    #[cfg(feature = "safetensors")]
    /// Load from a safetensors file with Hugging Face's names after `prefix` (e.g.
    /// `model.layers.0.self_attn.`): `q_proj.weight` `[Hq·D, E]`, `k_proj.weight` and
    /// `v_proj.weight` `[Hkv·D, E]`, `o_proj.weight` `[E, Hq·D]`, each with an optional `.bias`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(
        ctx: &Context,
        path: &std::path::Path,
        prefix: &str,
        num_heads: usize,
        num_kv_heads: usize,
        rope_theta: f64,
    ) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| weights_error(&path.display().to_string(), format!("cannot read the file: {e}")))?;
        Self::from_safetensors(ctx, &bytes, prefix, num_heads, num_kv_heads, rope_theta)
    }

    #[cfg(feature = "safetensors")]
    /// [`LlamaAttention::load`] from the bytes of a safetensors file.
    pub fn from_safetensors(
        ctx: &Context,
        bytes: &[u8],
        prefix: &str,
        num_heads: usize,
        num_kv_heads: usize,
        rope_theta: f64,
    ) -> Result<Self> {
        let file = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| weights_error("(file)", format!("not a safetensors file: {e}")))?;
        let names: Vec<String> = file.names().into_iter().cloned().collect();
        let get = |name: &str| -> Result<Option<(Vec<usize>, Vec<f32>)>> {
            let full = format!("{prefix}{name}");
            if !names.contains(&full) {
                return Ok(None);
            }
            let view = file.tensor(&full).map_err(|e| weights_error(&full, e.to_string()))?;
            Ok(Some((view.shape().to_vec(), read_floats(&full, view.dtype(), view.data())?)))
        };
        let q_shape = get("q_proj.weight")?
            .map(|w| w.0)
            .ok_or_else(|| weights_error(&format!("{prefix}q_proj.weight"), "missing from the file"))?;
        if num_heads == 0 || num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
            return Err(weights_error(
                &format!("{prefix}k_proj.weight"),
                format!("num_kv_heads {num_kv_heads} must divide num_heads {num_heads}"),
            ));
        }
        let (rows, e) = (q_shape[0], *q_shape.get(1).unwrap_or(&0));
        if q_shape.len() != 2
            || e == 0
            || !rows.is_multiple_of(num_heads)
            || !(rows / num_heads).is_multiple_of(2)
        {
            return Err(weights_error(
                &format!("{prefix}q_proj.weight"),
                format!("shape {q_shape:?}: it must be [num_heads ({num_heads}) · D, E] with an even D"),
            ));
        }
        let d = rows / num_heads;
        let proj = |name: &str, out: usize, inp: usize| -> Result<Projection> {
            let wname = format!("{name}.weight");
            let (s, w) = get(&wname)?
                .ok_or_else(|| weights_error(&format!("{prefix}{wname}"), "missing from the file"))?;
            if s != [out, inp] {
                return Err(weights_error(
                    &format!("{prefix}{wname}"),
                    format!("shape {s:?}, but E {e}, {num_heads} heads, {num_kv_heads} K/V heads of D {d} need [{out}, {inp}]"),
                ));
            }
            let weight = Tensor::upload(ctx, &HostTensor::new(w, Shape::new(1, 1, out, inp), Layout::Bhsd)?)?;
            let bname = format!("{name}.bias");
            let bias = match get(&bname)? {
                Some((s, b)) if s == [out] => {
                    Some(Tensor::upload(ctx, &HostTensor::new(b, Shape::new(1, 1, 1, out), Layout::Bhsd)?)?)
                }
                Some((s, _)) => {
                    return Err(weights_error(
                        &format!("{prefix}{bname}"),
                        format!("shape {s:?}: it must be [{out}]"),
                    ))
                }
                None => None,
            };
            Ok(Projection { weight, bias })
        };
        Ok(Self {
            hidden: e,
            num_heads,
            num_kv_heads,
            head_dim: d,
            rope_theta,
            q: proj("q_proj", num_heads * d, e)?,
            k: proj("k_proj", num_kv_heads * d, e)?,
            v: proj("v_proj", num_kv_heads * d, e)?,
            o: proj("o_proj", e, num_heads * d)?,
        })
    }

    /// An empty cache for `batch` sequences of up to `max_len` positions.
    pub fn new_cache(&self, ctx: &Context, batch: usize, max_len: usize) -> Result<KvCache> {
        let s = Shape::new(batch, self.num_kv_heads, max_len, self.head_dim);
        Ok(KvCache {
            k: Tensor::zeros(ctx, s, Layout::Bshd)?,
            v: Tensor::zeros(ctx, s, Layout::Bshd)?,
            len: 0,
        })
    }

    /// Causal self-attention over `x` `[B, 1, N, E]` alone, its positions `start..start + N`
    /// (rotary embeddings only: the keys are x's own). Submits once.
    pub fn forward(&self, ctx: &Context, x: &Tensor, start: usize) -> Result<Tensor> {
        let mut rec = Recorder::new(ctx);
        let y = self.record(&mut rec, x, start, None)?;
        rec.submit()?;
        Ok(y)
    }

    /// Prefill or decode through `cache`: x `[B, 1, N, E]` at positions `cache.len()..+N`; its
    /// keys and values are appended to the cache, and it attends to every cached position
    /// (causal). Submits once.
    pub fn forward_cached(&self, ctx: &Context, x: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let mut rec = Recorder::new(ctx);
        let start = cache.len;
        let y = self.record(&mut rec, x, start, Some(cache))?;
        rec.submit()?;
        Ok(y)
    }

    /// Record a call into `rec` (see [`LlamaAttention::forward`] and
    /// [`LlamaAttention::forward_cached`]; with a cache, `start` must be its length).
    pub fn record(
        &self,
        rec: &mut Recorder<'_>,
        x: &Tensor,
        start: usize,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let ctx = rec.context();
        let (e, hq, hkv, d) = (self.hidden, self.num_heads, self.num_kv_heads, self.head_dim);
        let s = x.shape();
        if s.heads != 1 || s.head_dim != e {
            return Err(Error::ShapeMismatch(format!("LlamaAttention: x is {s}: it must be [B, 1, N, {e}]")));
        }
        let (b, n) = (s.batch, s.seq);
        let heads = |t: &Tensor, h: usize| {
            let st = t.strides();
            t.view(Shape::new(b, h, n, d), [st[0], d, st[2]], 0)
        };
        let q = rec.linear(x, &self.q.weight, self.q.bias.as_ref())?;
        let q = heads(&q, hq)?;
        let (k_all, v_all) = match cache {
            Some(cache) => {
                if cache.len != start {
                    return Err(Error::InvalidOption(format!(
                        "start {start} but the cache holds {} positions",
                        cache.len
                    )));
                }
                let cs = cache.k.shape();
                if cs.batch != b || cache.len + n > cs.seq || cs.heads != hkv || cs.head_dim != d {
                    return Err(Error::ShapeMismatch(format!(
                        "LlamaAttention: a cache {cs} holding {} positions cannot take x {s}",
                        cache.len
                    )));
                }
                // the projections write straight into the cache's new positions
                let new = |t: &Tensor| -> Result<Tensor> {
                    let st = t.strides();
                    t.view(Shape::new(b, 1, n, hkv * d), [st[0], st[0], st[2]], start * st[2])
                };
                let (k_new, v_new) = (new(&cache.k)?, new(&cache.v)?);
                rec.linear_into(x, &self.k.weight, self.k.bias.as_ref(), &k_new)?;
                rec.linear_into(x, &self.v.weight, self.v.bias.as_ref(), &v_new)?;
                crate::kernels::rope::record(rec, &cache.k.narrow(2, start, n)?, start, self.rope_theta)?;
                cache.len += n;
                (cache.k.narrow(2, 0, cache.len)?, cache.v.narrow(2, 0, cache.len)?)
            }
            None => {
                let k = heads(&rec.linear(x, &self.k.weight, self.k.bias.as_ref())?, hkv)?;
                let v = heads(&rec.linear(x, &self.v.weight, self.v.bias.as_ref())?, hkv)?;
                crate::kernels::rope::record(rec, &k, start, self.rope_theta)?;
                (k, v)
            }
        };
        crate::kernels::rope::record(rec, &q, start, self.rope_theta)?;
        let o = Tensor::zeros(ctx, Shape::new(b, hq, n, d), Layout::Bshd)?;
        let lse = Tensor::zeros(ctx, Shape::new(b, hq, n, 1), Layout::Bhsd)?;
        rec.forward_into(&q, &k_all, &v_all, &Attention::new().causal(Causal::BottomRight), &o, &lse)?;
        let merged = o.view(Shape::new(b, 1, n, hq * d), [n * hq * d, n * hq * d, hq * d], 0)?;
        rec.linear(&merged, &self.o.weight, self.o.bias.as_ref())
    }
}
