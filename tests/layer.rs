//! `layer::MultiHeadAttention` against PyTorch's `nn.MultiheadAttention`: the committed fixtures
//! (tests/fixtures/mha_*.safetensors, written by scripts/mha_fixtures.py) hold a module's
//! state_dict under PyTorch's names, its inputs and PyTorch's output; each is loaded as a user
//! would load a converted module and must match in f32 (rel < 1e-4, the bar). Plus the
//! typed errors of bad weights and inputs.

mod common;

use common::ctx;
use wgpu_attention::cpu::reference;
use wgpu_attention::layer::{AttnMask, MhaOptions, MultiHeadAttention};
use wgpu_attention::{Error, HostTensor, Layout, Shape, Tensor};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/mha_{name}.safetensors", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A tensor of the fixture as (shape, f32 values); u8 masks as 0.0 / 1.0.
fn read(file: &safetensors::SafeTensors<'_>, name: &str) -> Option<(Vec<usize>, Vec<f32>)> {
    let t = file.tensor(name).ok()?;
    let data = match t.dtype() {
        safetensors::Dtype::F32 => {
            t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
        }
        safetensors::Dtype::U8 => t.data().iter().map(|&b| b as f32).collect(),
        other => panic!("{name}: {other:?}"),
    };
    Some((t.shape().to_vec(), data))
}

/// Run the fixture `name` and return (rel, max abs) against PyTorch's output.
fn run(name: &str) -> (f64, f64) {
    let ctx = ctx();
    let bytes = fixture(name);
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap_or_default();
    let heads: usize = meta["num_heads"].parse().unwrap();
    let mha = MultiHeadAttention::from_safetensors(ctx, &bytes, "", heads)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let upload = |n: &str| {
        let (s, d) = read(&file, n).unwrap();
        Tensor::upload(ctx, &HostTensor::new(d, Shape::new(s[0], 1, s[1], s[2]), Layout::Bhsd).unwrap())
            .unwrap()
    };
    let query = upload("query");
    let (key, value) = if meta["self_attention"] == "1" {
        (query.clone(), query.clone())
    } else {
        (upload("key"), upload("value"))
    };
    let options = MhaOptions {
        key_padding_mask: read(&file, "key_padding_mask").map(|(_, d)| d.iter().map(|&x| x != 0.0).collect()),
        attn_mask: read(&file, "attn_mask").map(|(_, d)| match meta.get("attn_mask").map(String::as_str) {
            Some("float") => AttnMask::Float(d),
            _ => AttnMask::Bool(d.iter().map(|&x| x != 0.0).collect()),
        }),
        is_causal: meta["is_causal"] == "1",
        mask: None,
    };
    let y = mha.forward(ctx, &query, &key, &value, &options).unwrap_or_else(|e| panic!("{name}: {e}"));
    let got = y.to_host(ctx).unwrap();
    let (shape, want) = read(&file, "out").unwrap();
    assert_eq!(got.shape, Shape::new(shape[0], 1, shape[1], shape[2]));
    let want: Vec<f64> = want.iter().map(|&x| x as f64).collect();
    let (rel, max_abs) = reference::compare(&got.data, &want);
    eprintln!("{name}: rel={rel:.2e} max_abs={max_abs:.2e}");
    (rel, max_abs)
}

#[test]
fn matches_pytorch_multihead_attention() {
    for name in [
        "self_bias",
        "self_no_bias_causal",
        "cross_kdim_padding",
        "cross_bool_mask",
        "self_float_mask_padding",
    ] {
        let (rel, max_abs) = run(name);
        assert!(rel < 1e-4 && max_abs < 1e-4, "{name}: rel {rel:.3e}, max abs {max_abs:.3e}");
    }
}

#[test]
fn bad_weights_and_inputs_are_typed_errors() {
    let ctx = ctx();
    let bytes = fixture("self_bias");
    // E = 32 is not a multiple of 5 heads
    let err = MultiHeadAttention::from_safetensors(ctx, &bytes, "", 5).unwrap_err();
    assert!(matches!(&err, Error::Weights { tensor, .. } if tensor == "out_proj.weight"), "{err}");
    // a prefix the file lacks: the missing tensor is named
    let err = MultiHeadAttention::from_safetensors(ctx, &bytes, "model.attn.", 4).unwrap_err();
    assert!(matches!(&err, Error::Weights { tensor, .. } if tensor == "model.attn.out_proj.weight"), "{err}");
    // not a safetensors file
    assert!(matches!(
        MultiHeadAttention::from_safetensors(ctx, b"nonsense", "", 4),
        Err(Error::Weights { .. })
    ));
    // a weight of the wrong shape, named
    let e = 8;
    let err = MultiHeadAttention::from_host(
        ctx,
        2,
        e,
        (vec![0.0; 3 * e * e], Some(vec![0.0; 2 * e])),
        (vec![0.0; e * e], None),
    )
    .unwrap_err();
    assert!(matches!(&err, Error::Weights { tensor, .. } if tensor == "in_proj_bias"), "{err}");

    let mha = MultiHeadAttention::from_safetensors(ctx, &bytes, "", 4).unwrap();
    let t = |b, n, w| Tensor::zeros(ctx, Shape::new(b, 1, n, w), Layout::Bhsd).unwrap();
    let x = t(2, 7, 32);
    let no = MhaOptions::default();
    assert!(matches!(mha.forward(ctx, &t(2, 7, 31), &x, &x, &no), Err(Error::ShapeMismatch(_))));
    assert!(matches!(mha.forward(ctx, &x, &t(1, 7, 32), &t(1, 7, 32), &no), Err(Error::ShapeMismatch(_))));
    let pad = MhaOptions { key_padding_mask: Some(vec![false; 7]), ..Default::default() };
    assert!(
        matches!(mha.forward(ctx, &x, &x, &x, &pad), Err(Error::ShapeMismatch(m)) if m.contains("key_padding_mask"))
    );
    let bias = MhaOptions { attn_mask: Some(AttnMask::Float(vec![0.5; 49])), ..Default::default() };
    assert!(matches!(mha.forward(ctx, &x, &x, &x, &bias), Err(Error::InvalidOption(_))));
}

/// The Llama fixture `name`: the block, x `[B, 1, N, E]` on the device, the expected output and
/// the first position.
fn llama(name: &str) -> (wgpu_attention::layer::LlamaAttention, Tensor, Vec<f64>, usize) {
    let ctx = ctx();
    let path = format!("{}/tests/fixtures/llama_{name}.safetensors", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap_or_default();
    let block = wgpu_attention::layer::LlamaAttention::from_safetensors(
        ctx,
        &bytes,
        "model.layers.0.self_attn.",
        meta["num_heads"].parse().unwrap(),
        meta["num_kv_heads"].parse().unwrap(),
        meta["rope_theta"].parse().unwrap(),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (s, x) = read(&file, "x").unwrap();
    let x = Tensor::upload(ctx, &HostTensor::new(x, Shape::new(s[0], 1, s[1], s[2]), Layout::Bhsd).unwrap())
        .unwrap();
    let want = read(&file, "out").unwrap().1.iter().map(|&v| v as f64).collect();
    (block, x, want, meta["start"].parse().unwrap())
}

/// GQA 4/1 and 8/2, θ 10,000 and 500,000, with and without biases, a first position of 0 and of
/// 7: against Hugging Face Llama's computation (in f64).
#[test]
fn llama_block_matches_the_reference() {
    for name in ["gqa4_1_theta1e4", "gqa8_2_theta5e5_bias", "gqa4_1_start7"] {
        let (block, x, want, start) = llama(name);
        let got = block.forward(ctx(), &x, start).unwrap().to_host(ctx()).unwrap();
        let (rel, max_abs) = reference::compare(&got.data, &want);
        eprintln!("{name}: rel={rel:.2e} max_abs={max_abs:.2e}");
        assert!(rel < 1e-4 && max_abs < 1e-4, "{name}: rel {rel:.3e}, max abs {max_abs:.3e}");
    }
}

/// A prefill of 5 positions into the KV cache, then 4 decode steps of one token each: the outputs
/// equal one pass over all 9 positions.
#[test]
fn llama_prefill_then_decode_equals_one_pass() {
    let ctx = ctx();
    let (block, x, want, _) = llama("gqa4_1_theta1e4");
    let s = x.shape();
    let mut cache = block.new_cache(ctx, s.batch, 16).unwrap();
    let mut steps = vec![block.forward_cached(ctx, &x.narrow(2, 0, 5).unwrap(), &mut cache).unwrap()];
    for i in 5..s.seq {
        steps.push(block.forward_cached(ctx, &x.narrow(2, i, 1).unwrap(), &mut cache).unwrap());
    }
    assert_eq!(cache.len(), s.seq);
    // reassemble [B, N, E] from the steps' [B, n, E] outputs
    let e = s.head_dim;
    let mut got = vec![f32::NAN; s.len()];
    let mut pos = 0;
    for y in &steps {
        let h = y.to_host(ctx).unwrap();
        let n = h.shape.seq;
        for b in 0..s.batch {
            for i in 0..n {
                for c in 0..e {
                    got[(b * s.seq + pos + i) * e + c] = h.at(b, 0, i, c);
                }
            }
        }
        pos += n;
    }
    let (rel, max_abs) = reference::compare(&got, &want);
    eprintln!("prefill + decode: rel={rel:.2e} max_abs={max_abs:.2e}");
    assert!(rel < 1e-4 && max_abs < 1e-4, "rel {rel:.3e}, max abs {max_abs:.3e}");
    // a full cache refuses more
    let mut full = block.new_cache(ctx, s.batch, 4).unwrap();
    assert!(matches!(
        block.forward_cached(ctx, &x.narrow(2, 0, 5).unwrap(), &mut full),
        Err(Error::ShapeMismatch(_))
    ));
}

#[test]
fn llama_bad_weights_name_the_tensor() {
    let ctx = ctx();
    let path = format!("{}/tests/fixtures/llama_gqa4_1_theta1e4.safetensors", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(path).unwrap();
    use wgpu_attention::layer::LlamaAttention;
    let err =
        LlamaAttention::from_safetensors(ctx, &bytes, "model.layers.1.self_attn.", 4, 1, 1e4).unwrap_err();
    assert!(
        matches!(&err, Error::Weights { tensor, .. } if tensor == "model.layers.1.self_attn.q_proj.weight"),
        "{err}"
    );
    // 2 K/V heads do not match k_proj's 16 rows of D 16
    let err =
        LlamaAttention::from_safetensors(ctx, &bytes, "model.layers.0.self_attn.", 4, 2, 1e4).unwrap_err();
    assert!(matches!(&err, Error::Weights { tensor, .. } if tensor.ends_with("k_proj.weight")), "{err}");
    let err =
        LlamaAttention::from_safetensors(ctx, &bytes, "model.layers.0.self_attn.", 4, 3, 1e4).unwrap_err();
    assert!(matches!(&err, Error::Weights { .. }), "{err}");
}

/// A weight stored as f64 (a dtype the crate does not read) is refused naming the tensor.
#[test]
fn unsupported_weight_dtype_names_the_tensor() {
    let e = 8;
    let f32_bytes = |n: usize| vec![0u8; n * 4];
    let f64_bytes = vec![0u8; e * e * 8];
    let (w_in, w_out) = (f32_bytes(3 * e * e), f64_bytes);
    let views = vec![
        (
            "in_proj_weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3 * e, e], &w_in).unwrap(),
        ),
        (
            "out_proj.weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![e, e], &w_out).unwrap(),
        ),
    ];
    let bytes = safetensors::serialize(views, &None).unwrap();
    let err = MultiHeadAttention::from_safetensors(ctx(), &bytes, "", 2).unwrap_err();
    assert!(
        matches!(&err, Error::Weights { tensor, problem } if tensor == "out_proj.weight" && problem.contains("F64")),
        "{err}"
    );
}

/// PyTorch's batch-second layout `[N, B, E]` is a strided view of the same buffer: the output
/// equals the batch-first call's.
#[test]
fn batch_second_inputs_are_views() {
    let ctx = ctx();
    let bytes = fixture("self_bias");
    let mha = MultiHeadAttention::from_safetensors(ctx, &bytes, "", 4).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (s, x) = read(&file, "query").unwrap();
    let (b, n, e) = (s[0], s[1], s[2]);
    // [N, B, E] in memory
    let mut second = vec![0.0; x.len()];
    for bi in 0..b {
        for i in 0..n {
            for c in 0..e {
                second[(i * b + bi) * e + c] = x[(bi * n + i) * e + c];
            }
        }
    }
    let flat =
        Tensor::upload(ctx, &HostTensor::new(second, Shape::new(1, 1, n * b, e), Layout::Bhsd).unwrap())
            .unwrap();
    let view = flat.view(Shape::new(b, 1, n, e), [e, e, b * e], 0).unwrap();
    let got = mha.forward(ctx, &view, &view, &view, &MhaOptions::default()).unwrap().to_host(ctx).unwrap();
    let want: Vec<f64> = read(&file, "out").unwrap().1.iter().map(|&v| v as f64).collect();
    let (rel, max_abs) = reference::compare(&got.data, &want);
    assert!(rel < 1e-4 && max_abs < 1e-4, "rel {rel:.3e}, max abs {max_abs:.3e}");
}

/// A library mask (a sliding window) alone runs as the kernels' own mask, and with key padding
/// is folded into one dense mask: both equal the same visibility given as a boolean attn_mask.
#[test]
fn library_masks_combine_with_pytorch_masks() {
    let ctx = ctx();
    let bytes = fixture("self_bias");
    let mha = MultiHeadAttention::from_safetensors(ctx, &bytes, "", 4).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (s, x) = read(&file, "query").unwrap();
    let (b, n) = (s[0], s[1]);
    let x =
        Tensor::upload(ctx, &HostTensor::new(x, Shape::new(b, 1, n, s[2]), Layout::Bhsd).unwrap()).unwrap();
    // window of 2 keys before the query, none after: hidden = j > i or i - j > 2
    let hidden: Vec<bool> = (0..n * n).map(|k| (k % n > k / n) || (k / n) - (k % n).min(k / n) > 2).collect();
    let pad: Vec<bool> = (0..b * n).map(|k| k == 1).collect();
    let run = |o: MhaOptions| mha.forward(ctx, &x, &x, &x, &o).unwrap().to_host(ctx).unwrap().data;
    let window = wgpu_attention::Mask::window(2, 0);
    for padding in [None, Some(pad)] {
        let by_mask = run(MhaOptions {
            mask: Some(window.clone()),
            key_padding_mask: padding.clone(),
            ..Default::default()
        });
        let by_attn_mask = run(MhaOptions {
            attn_mask: Some(AttnMask::Bool(hidden.clone())),
            key_padding_mask: padding,
            ..Default::default()
        });
        let want: Vec<f64> = by_attn_mask.iter().map(|&v| v as f64).collect();
        let (rel, max_abs) = reference::compare(&by_mask, &want);
        assert!(rel < 1e-5 && max_abs < 1e-5, "rel {rel:.3e}, max abs {max_abs:.3e}");
    }
}
