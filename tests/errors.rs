//! Bad input gets a typed error, never a panic or a GPU validation crash.

mod common;

use common::ctx;
use wgpu_attention::testing::Case;
use wgpu_attention::*;

fn host(shape: Shape) -> HostTensor {
    HostTensor::new(vec![0.5; shape.len()], shape, Layout::Bhsd).unwrap()
}

fn run(q: Shape, k: Shape, v: Shape, attn: &Attention) -> Result<HostOutput> {
    wgpu_attention::attention(ctx(), &host(q), &host(k), &host(v), attn)
}

const Q: Shape = Shape::new(2, 4, 16, 32);
const KV: Shape = Shape::new(2, 2, 24, 32);

#[test]
fn shape_mismatches() {
    let a = Attention::new();
    let cases = [
        (Q, KV, Shape::new(2, 2, 25, 32)),                       // K != V
        (Q, Shape::new(1, 2, 24, 32), Shape::new(1, 2, 24, 32)), // batch
        (Q, Shape::new(2, 3, 24, 32), Shape::new(2, 3, 24, 32)), // 3 does not divide 4
        (Q, Shape::new(2, 2, 24, 16), Shape::new(2, 2, 24, 16)), // head dims differ
        (Shape::new(2, 4, 0, 32), KV, KV),                       // no queries
        (Q, Shape::new(2, 2, 0, 32), Shape::new(2, 2, 0, 32)),   // no keys
    ];
    for (q, k, v) in cases {
        let r = run(q, k, v, &a);
        assert!(matches!(r, Err(Error::ShapeMismatch(_))), "{q} {k} {v}: {r:?}");
    }
    assert!(matches!(HostTensor::new(vec![0.0; 5], Q, Layout::Bhsd), Err(Error::ShapeMismatch(_))));
}

#[test]
fn head_dim_out_of_range() {
    for d in [0, 257, 1024] {
        let (q, kv) = (Shape::new(1, 1, 4, d), Shape::new(1, 1, 4, d));
        let r = run(q, kv, kv, &Attention::new());
        assert!(matches!(r, Err(Error::HeadDimUnsupported { head_dim, max: 256 }) if head_dim == d), "{r:?}");
    }
    let msg = Error::HeadDimUnsupported { head_dim: 300, max: 256 }.to_string();
    assert!(msg.contains("1..=256"), "{msg}");
}

#[test]
fn invalid_options() {
    let bad = [
        Attention::new().softcap(0.0),
        Attention::new().softcap(-1.0),
        Attention::new().softcap(f32::INFINITY),
        Attention::new().scale(f32::NAN),
        Attention::new().kv_lens(vec![24]),     // one entry for batch 2
        Attention::new().kv_lens(vec![24, 25]), // longer than Nk
        Attention::new().alibi_slopes(vec![0.5; 3]),
        Attention::new().alibi_slopes(vec![f32::NAN; 4]),
        Attention::new().num_splits(0),
    ];
    for a in bad {
        let r = run(Q, KV, KV, &a);
        assert!(matches!(r, Err(Error::InvalidOption(_))), "{a:?}: {r:?}");
    }
}

#[test]
fn layouts_and_outputs_must_agree() {
    let c = ctx();
    let q = Tensor::upload(c, &host(Q)).unwrap();
    let k = Tensor::upload(c, &host(KV)).unwrap();
    let v_bshd = Tensor::upload(c, &HostTensor::new(vec![0.0; KV.len()], KV, Layout::Bshd).unwrap()).unwrap();
    let r = forward(c, &q, &k, &v_bshd, &Attention::new());
    assert!(matches!(r, Err(Error::ShapeMismatch(_))), "{r:?}");

    let wrong_o = Tensor::zeros(c, Shape::new(2, 4, 15, 32), Layout::Bhsd).unwrap();
    let lse = Tensor::zeros(c, Shape::new(2, 4, 16, 1), Layout::Bhsd).unwrap();
    let r = forward_into(c, &q, &k, &k, &Attention::new(), &wrong_o, &lse);
    assert!(matches!(r, Err(Error::ShapeMismatch(_))), "{r:?}");
}

#[test]
fn tensors_from_another_context() {
    let other = common::context_from(|o| o);
    let q = Tensor::upload(&other, &host(Q)).unwrap();
    let k = Tensor::upload(ctx(), &host(KV)).unwrap();
    let r = forward(ctx(), &q, &k, &k, &Attention::new());
    assert!(matches!(r, Err(Error::ForeignTensor)), "{r:?}");
}

#[test]
fn no_matching_adapter_says_how_to_get_one() {
    let opts = ContextOptions::default().adapter_name("no-such-adapter-xyz");
    let e = Context::with_options(&opts).unwrap_err();
    assert!(matches!(e, Error::NoAdapter { .. }), "{e:?}");
    assert!(e.to_string().contains("mesa-vulkan-drivers"), "{e}");
}

#[test]
fn over_the_binding_limit_is_a_typed_error() {
    // A device whose storage bindings hold 64 KiB cannot bind one head of 1024 keys × D 32
    // (128 KiB) for a fused-forward call with a block table (its splits visit scattered key
    // blocks, so K cannot be cut by key range; without a table it is: tests/limits.rs; the
    // decode kernel, which cuts any cache by key range, runs it: tests/decode.rs).
    let limits = wgpu::Limits { max_storage_buffer_binding_size: 64 << 10, ..ctx().limits().clone() };
    let small = common::context_from(|o| o.limits(limits));
    let case = Case::new(8, 1024, 32);
    let (q, k, v) = case.inputs(1);
    let r = wgpu_attention::attention(
        &small,
        &q,
        &k,
        &v,
        &Attention::new().mask(Mask::window(100, 0)).path(Path::Prefill),
    );
    match r {
        Err(Error::LimitExceeded { limit, needed, available, .. }) => {
            assert_eq!(limit, "max_storage_buffer_binding_size");
            assert!(needed > available);
        }
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
}

#[test]
fn tensor_over_max_buffer_size_is_a_typed_error() {
    let limits = wgpu::Limits { max_buffer_size: 1 << 16, ..ctx().limits().clone() };
    let small = common::context_from(|o| o.limits(limits));
    let r = Tensor::zeros(&small, Shape::new(1, 1, 1024, 32), Layout::Bhsd);
    assert!(matches!(r, Err(Error::LimitExceeded { limit: "max_buffer_size", .. })), "{r:?}");
}
