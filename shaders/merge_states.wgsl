// merge_states.wgsl: the public form of merge.wgsl's combine: two attention states (O₁, LSE₁)
// and (O₂, LSE₂) computed over disjoint key sets give the state over their union,
//   LSE = log(exp LSE₁ + exp LSE₂),  O = exp(LSE₁ − LSE)·O₁ + exp(LSE₂ − LSE)·O₂.
// A side with LSE = −∞ (it saw no key) contributes nothing, whatever its O holds; both −∞ give
// O = 0, LSE = −∞.
//
// Layout: O₁, O₂, O [B, H, N, D] by their own element strides (batch, head, row), of O_TYPE
// (f32, f16 or bf16: half.wgsl; 16-bit tensors are two elements a u32 word); LSE₁, LSE₂, LSE
// contiguous f32 [B, H, N]. Every index is relative to its bound window (`*_base`).
// Tiling: none (no workgroup memory): one invocation per (row, d) element, by linear id
// (wg_offset + x + y·grid_x)·64 + local index over a 1D or 2D grid; workgroup size 64; the
// invocation with d = 0 also writes the row's LSE. No loops.

const O_TYPE: u32 = 0u; // @param element type of O₁, O₂ and O: 0 f32, 1 f16, 2 bf16

// @include half.wgsl

struct Params {
    rows: u32,             // B·H·N rows of this dispatch's chunk, from batch `batch0`
    head_dim: u32,
    heads: u32,
    seq: u32,
    batch0: u32,
    grid_x: u32,
    wg_offset: u32,
    o1_base: u32,
    o2_base: u32,
    o_base: u32,
    lse1_base: u32,
    lse2_base: u32,
    lse_base: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    o1_stride: vec4<u32>,  // (batch, head, row, -)
    o2_stride: vec4<u32>,
    o_stride: vec4<u32>,
}

@group(0) @binding(0) var<uniform> params: Params;
// @if O_TYPE == 0
@group(0) @binding(1) var<storage, read> o1: array<f32>;
@group(0) @binding(2) var<storage, read> o2: array<f32>;
@group(0) @binding(3) var<storage, read_write> o: array<f32>;
// @else
@group(0) @binding(1) var<storage, read> o1: array<u32>;
@group(0) @binding(2) var<storage, read> o2: array<u32>;
// two 16-bit elements a word, the other half possibly another row's: stored by atomic and/or
@group(0) @binding(3) var<storage, read_write> o: array<atomic<u32>>;
// @endif
@group(0) @binding(4) var<storage, read> lse1: array<f32>;
@group(0) @binding(5) var<storage, read> lse2: array<f32>;
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;

fn load1(e: u32) -> f32 {
// @if O_TYPE == 0
    return o1[e];
// @else
    return widen_at(o1[e >> 1u], e, O_TYPE);
// @endif
}

fn load2(e: u32) -> f32 {
// @if O_TYPE == 0
    return o2[e];
// @else
    return widen_at(o2[e >> 1u], e, O_TYPE);
// @endif
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg_id: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let e = (params.wg_offset + wg_id.x + wg_id.y * params.grid_x) * 64u + tid;
    if (e >= params.rows * params.head_dim) {
        return;
    }
    let row = e / params.head_dim;
    let d = e % params.head_dim;
    let per_batch = params.heads * params.seq;
    let b = params.batch0 + row / per_batch;
    let h = (row % per_batch) / params.seq;
    let i = row % params.seq;
    let lrow = b * per_batch + h * params.seq + i;

    var neg_inf_bits = 0xff800000u;   // a var, so the constant evaluator never sees −∞
    let neg_inf = bitcast<f32>(neg_inf_bits);
    let l1 = lse1[lrow - params.lse1_base];
    let l2 = lse2[lrow - params.lse2_base];
    let m = max(l1, l2);
    var out = 0.0;
    var row_lse = neg_inf;
    if (m > neg_inf) {
        let seen1 = l1 > neg_inf;
        let seen2 = l2 > neg_inf;
        let w1 = select(0.0, exp(l1 - m), seen1);
        let w2 = select(0.0, exp(l2 - m), seen2);
        let x1 = load1(b * params.o1_stride.x + h * params.o1_stride.y + i * params.o1_stride.z + d - params.o1_base);
        let x2 = load2(b * params.o2_stride.x + h * params.o2_stride.y + i * params.o2_stride.z + d - params.o2_base);
        out = (select(0.0, w1 * x1, seen1) + select(0.0, w2 * x2, seen2)) / (w1 + w2);
        row_lse = m + log(w1 + w2);
    }
    let at = b * params.o_stride.x + h * params.o_stride.y + i * params.o_stride.z + d - params.o_base;
// @if O_TYPE == 0
    o[at] = out;
// @else
    let shift = (at & 1u) * 16u;
    atomicAnd(&o[at >> 1u], ~(0xffffu << shift));
    atomicOr(&o[at >> 1u], narrow_bits(out, O_TYPE) << shift);
// @endif
    if (d == 0u) {
        lse[lrow - params.lse_base] = row_lse;
    }
}
