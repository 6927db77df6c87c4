//! Dynamic top-k block sparsity: the blocks the GPU chooses match the f64 oracle's choice (up to
//! near-ties of the pooled scores), and the output matches the oracle's attention over its choice.

mod common;

use common::{check, ctx};
use wgpu_attention::cpu::reference;
use wgpu_attention::kernels::topk::selected_blocks;
use wgpu_attention::mask::TopK;
use wgpu_attention::testing::{fresh_seed, Case};
use wgpu_attention::{Attention, Causal, Error, Layout, Tensor};

/// GPU and oracle choose the same blocks, except where the scores that decide differ by < 1e-4
/// (f32 pooling against f64): such near-ties may go either way.
fn same_choice(case: &Case, seed: u64) {
    let (q, k, _) = case.inputs(seed);
    let want = reference::topk_blocks(&q, &k, &case.attn).unwrap();
    let (qd, kd) = (Tensor::upload(ctx(), &q).unwrap(), Tensor::upload(ctx(), &k).unwrap());
    let got = selected_blocks(ctx(), &qd, &kd, &case.attn).unwrap();
    assert_eq!(got.len(), want.len());
    let mut near_ties = 0;
    for (l, (g, (w, scores))) in got.iter().zip(&want).enumerate() {
        if g == w {
            continue;
        }
        assert_eq!(g.len(), w.len(), "{case} seed {seed} list {l}: {g:?} vs {w:?}");
        // every block in one choice and not the other must score like the worst block kept
        let kept_min = w.iter().map(|&b| scores[b as usize]).fold(f64::INFINITY, f64::min);
        for b in g.iter().filter(|b| !w.contains(b)).chain(w.iter().filter(|b| !g.contains(b))) {
            let gap = (scores[*b as usize] - kept_min).abs();
            assert!(gap < 1e-4, "{case} seed {seed} list {l}: {g:?} vs {w:?} (block {b} off by {gap:e})");
        }
        near_ties += 1;
    }
    assert!(near_ties * 20 <= got.len().max(20), "too many near-ties: {near_ties} of {}", got.len());
    // the selection really is sparse: fewer blocks than eligible ones, and never more than k (+ sink)
    let kept: usize = got.iter().map(Vec::len).sum();
    let eligible: usize = want.iter().map(|(_, s)| s.len()).sum();
    let t = case.attn.topk.unwrap();
    assert!(got.iter().all(|l| l.len() <= t.k.max(1 + t.sink as usize)));
    assert!(kept < eligible, "{case}: kept {kept} of {eligible} eligible blocks");
    eprintln!("{case}: kept {kept} of {eligible} eligible blocks, {near_ties} near-ties");
}

fn topk(k: usize, block: usize, sink: bool) -> Attention {
    let mut attn = Attention::new();
    attn.topk = Some(TopK { k, block_size: block, sink });
    attn
}

#[test]
fn chosen_blocks_match_the_oracle() {
    let seed = fresh_seed();
    for (k, block, sink, causal) in [
        (2, 32, false, None),
        (3, 32, true, Some(Causal::BottomRight)),
        (4, 64, false, Some(Causal::TopLeft)),
        (2, 128, true, None),
    ] {
        let mut attn = topk(k, block, sink);
        attn.causal = causal;
        same_choice(&Case::new(300, 450, 64).heads(2, 4, 2).attn(attn), seed);
    }
    let attn = topk(3, 32, false).kv_lens(vec![450, 100]).causal(Causal::BottomRight);
    same_choice(&Case::new(300, 450, 40).heads(2, 2, 1).layout(Layout::Bshd).attn(attn), seed);
}

#[test]
fn output_matches_the_oracle() {
    for (k, block, sink, causal) in [
        (2, 32, false, None),
        (3, 32, true, Some(Causal::BottomRight)),
        (2, 64, false, Some(Causal::TopLeft)),
    ] {
        let mut attn = topk(k, block, sink);
        attn.causal = causal;
        check(&Case::new(257, 333, 64).heads(1, 4, 2).attn(attn));
    }
    // k covering every block equals dense attention
    check(&Case::new(100, 130, 32).attn(topk(32, 32, false)));
    check(&Case::new(150, 200, 59).heads(2, 2, 2).attn(topk(2, 32, true).kv_lens(vec![0, 120])));
}

#[test]
fn invalid_topk_options() {
    let (q, k, v) = Case::new(64, 64, 32).inputs(1);
    for attn in [
        topk(0, 32, false),
        topk(33, 32, false),
        topk(2, 48, false),
        topk(2, 32, false).mask(wgpu_attention::Mask::window(4, 4)),
    ] {
        let r = wgpu_attention::attention(ctx(), &q, &k, &v, &attn);
        assert!(matches!(r, Err(Error::InvalidOption(_))), "{attn:?}: {r:?}");
    }
}
