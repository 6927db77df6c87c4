// repack.wgsl: copy a strided 4-D tensor view to or from a packed, zero-padded copy, so that the
// fused forward reads and writes every tensor as vec4s (src/kernels/repack.rs says when).
//
// Layout: the view [B, H, N, D] by element strides (batch, head, seq) from element `base` of its
// binding window; the packed copy [B, H, N, DP] contiguous, DP = D rounded up to 4, the elements
// past D zero; both of one element type: f32, or with HALF a 16-bit type (f16 or bf16: two
// elements a u32 word, element e in the low half of word e / 2 when e is even), whose bits are
// copied as they are. `pack` writes the packed copy from the view, `unpack` the view's D columns
// from the packed copy (16-bit: by atomic and/or of each element's half, as a view's rows may
// share words).
// Tiling: none: one invocation per packed element (pack; with HALF per packed word, two
// elements of one row since DP is even) or view element (unpack), by linear id
// (wg_offset + x + y·grid_x)·64 + local index; workgroup size 64; no loops.

const HALF: u32 = 0u; // @param 1: 16-bit elements, two a word

struct Params {
    batch: u32,
    heads: u32,
    seq: u32,
    head_dim: u32,         // D
    packed_dim: u32,       // DP
    grid_x: u32,           // workgroups along x (the dispatch is 2D when large)
    wg_offset: u32,        // linear id of this dispatch's first workgroup
    view_base: u32,        // subtracted from the view's element indices (its binding window)
    stride: vec4<u32>,     // (batch, head, seq, -) of the view
}

@group(0) @binding(0) var<uniform> params: Params;
// @if HALF
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<atomic<u32>>;
// @else
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
// @endif

// The 16 bits of element e of `src` (HALF).
fn src_bits(e: u32) -> u32 {
// @if HALF
    return (src[e >> 1u] >> ((e & 1u) * 16u)) & 0xffffu;
// @else
    return 0u;
// @endif
}

// The view's element index of (row, d), rows in (batch, head, seq) order.
fn view_index(row: u32, d: u32) -> u32 {
    let s = row % params.seq;
    let h = (row / params.seq) % params.heads;
    let b = row / (params.seq * params.heads);
    return b * params.stride.x + h * params.stride.y + s * params.stride.z + d - params.view_base;
}

fn linear_id(wg_id: vec3<u32>, tid: u32) -> u32 {
    return (params.wg_offset + wg_id.x + wg_id.y * params.grid_x) * 64u + tid;
}

@compute @workgroup_size(64)
fn pack(@builtin(workgroup_id) wg_id: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let e = linear_id(wg_id, tid);
    let rows = params.batch * params.heads * params.seq;
// @if HALF
    // packed word e: elements 2e and 2e + 1, of one row
    if (e >= rows * params.packed_dim / 2u) {
        return;
    }
    let row = (2u * e) / params.packed_dim;
    let d = (2u * e) % params.packed_dim;
    var lo = 0u;
    var hi = 0u;
    if (d < params.head_dim) {
        lo = src_bits(view_index(row, d));
    }
    if (d + 1u < params.head_dim) {
        hi = src_bits(view_index(row, d + 1u));
    }
    atomicStore(&dst[e], lo | (hi << 16u));
// @else
    if (e >= rows * params.packed_dim) {
        return;
    }
    let row = e / params.packed_dim;
    let d = e % params.packed_dim;
    var x = 0.0;
    if (d < params.head_dim) {
        x = src[view_index(row, d)];
    }
    dst[e] = x;
// @endif
}

@compute @workgroup_size(64)
fn unpack(@builtin(workgroup_id) wg_id: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let e = linear_id(wg_id, tid);
    let rows = params.batch * params.heads * params.seq;
    if (e >= rows * params.head_dim) {
        return;
    }
    let row = e / params.head_dim;
    let d = e % params.head_dim;
// @if HALF
    let at = view_index(row, d);
    let shift = (at & 1u) * 16u;
    atomicAnd(&dst[at >> 1u], ~(0xffffu << shift));
    atomicOr(&dst[at >> 1u], src_bits(row * params.packed_dim + d) << shift);
// @else
    dst[view_index(row, d)] = src[row * params.packed_dim + d];
// @endif
}
