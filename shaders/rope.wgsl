// rope.wgsl: rotary position embeddings applied in place, Hugging Face Llama's rotate-half
// convention: for d < D/2, x1 = t[d], x2 = t[d + D/2] of a row at position p,
//   t[d] = x1·cos(p·ω_d) − x2·sin(p·ω_d),  t[d + D/2] = x2·cos(p·ω_d) + x1·sin(p·ω_d),
// ω_d = θ^(−2d/D). The (cos, sin) pairs come from the host (computed in f64 for the call's
// positions: a GPU's cos/sin of large angles is not accurate enough), table[s·D/2 + d] for
// sequence index s.
//
// Layout: t is f32 [B, H, S, D], element (b, h, s, d) at b·stride.x + h·stride.y + s·stride.z + d
// (any strides), relative to its bound window (`base`, src/kernels/rope.rs).
// Tiling: one invocation per (row, d < D/2) pair, workgroups of 64; no loops.

struct Params {
    pairs: u32,       // B·H·S·(D/2)
    half: u32,        // D/2
    heads: u32,
    seq: u32,
    grid_x: u32,
    wg_offset: u32,
    base: u32,
    _pad: u32,
    stride: vec4<u32>, // (batch, head, seq, -)
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> t: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<vec2<f32>>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg_id: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (params.wg_offset + wg_id.x + wg_id.y * params.grid_x) * 64u + lid;
    if (i >= params.pairs) {
        return;
    }
    let r = i / params.half;
    let d = i % params.half;
    let s = r % params.seq;
    let h = (r / params.seq) % params.heads;
    let b = r / (params.seq * params.heads);
    let at = b * params.stride.x + h * params.stride.y + s * params.stride.z - params.base;
    let cs = table[s * params.half + d];
    let x1 = t[at + d];
    let x2 = t[at + d + params.half];
    t[at + d] = x1 * cs.x - x2 * cs.y;
    t[at + d + params.half] = x2 * cs.x + x1 * cs.y;
}
