//! Host time of `BlockMask::build` (lowering a mask to the block table the kernels read) for long
//! sequences: sliding window, Longformer and BigBird at N = 8192 and 65,536, blocks of 64.
//!
//!     cargo run --release --example block_mask_build
//!
//! Blocks the mask's structure decides cost O(1); only partial ones are evaluated per element.
//! Figures: docs/PERFORMANCE.md.

use wgpu_attention::mask::{BlockMask, Dims};
use wgpu_attention::{Attention, Causal, Mask};
fn main() {
    for n in [8192usize, 65536] {
        let d = Dims { batch: 1, heads: 1, q_len: n, kv_len: n };
        for (name, attn) in [
            ("window256", Attention::new().mask(Mask::window(256, 0)).causal(Causal::BottomRight)),
            ("longformer", Attention::new().mask(Mask::longformer(128, 16))),
            ("bigbird", Attention::new().mask(Mask::bigbird(128, 16, 3, 64, 1))),
        ] {
            let t = std::time::Instant::now();
            let bm = BlockMask::build(&attn, d, 64).unwrap();
            println!("{n} {name} {:.3} s density {:.4}", t.elapsed().as_secs_f64(), bm.density());
            if n > 8192 && t.elapsed().as_secs() > 60 {
                return;
            }
        }
    }
}
