use wgpu_attention::testing::{fresh_seed, run_case, Case};
use wgpu_attention::*;

#[test]
fn smoke() {
    let ctx = Context::new().expect("adapter");
    eprintln!("{:?}", ctx.adapter().info);
    let seed = fresh_seed();
    for case in [
        Case::new(64, 64, 64),
        Case::new(113, 203, 40),
        Case::new(113, 203, 40).attn(Attention::new().causal(Causal::BottomRight)),
        Case::new(113, 203, 59)
            .heads(2, 4, 2)
            .layout(Layout::Bshd)
            .attn(Attention::new().causal(Causal::TopLeft).num_splits(3)),
    ] {
        let e = run_case(&ctx, &case, seed).unwrap();
        eprintln!("{case}: {e:?}");
        assert!(e.pass(1e-5), "{case} seed {seed}: {e:?}");
    }
}
