//! The fused forward (`shaders/flash_forward.wgsl`, `shaders/flash_register.wgsl`), by concern:
//! [`tiles`] (families and their specialisations), [`mod@plan`] (cutting a call into dispatches that
//! fit the adapter's limits: host arithmetic, no device) and `launch` (recording a call's
//! dispatches into a caller's encoder).
//!
//! Device memory per call: O (`4·B·Hq·Nq·D` bytes), LSE (`4·B·Hq·Nq`), a small aux buffer
//! (`4·(B + Hq)`) and a uniform per dispatch; with a split key range also partial states of
//! `4·rows·n_splits·(D + 1)` bytes for the largest chunk of rows; for a call whose tensors are not
//! all vec4-aligned, packed copies of Q, K, V and O (`kernels::repack`). Nothing is O(Nq·Nk).

mod launch;
pub mod plan;
pub mod tiles;

pub use launch::encode;
pub(crate) use launch::{encode_valid, Io};
#[cfg(test)]
pub(crate) use launch::ForwardParams;
pub use plan::{plan, Chunk, Plan, MAX_KEYS_PER_SPLIT};
pub use tiles::{compiled_head_dim, default_family, Family, TileConfig, Variant, FAMILIES, HEAD_DIM_STEP};
