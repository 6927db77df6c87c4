// paged_append.wgsl: write new K or V tokens into their pages of a paged KV cache.
//
// Layout: source [B, Hkv, T, D] by element strides (batch, head, token) of TYPE; the pool slab
// [pages, Hkv, P, D] contiguous (strides Hkv·P·D, P·D, D) of TYPE (0 f32, 1 f16, 2 bf16: 16-bit
// tensors are two elements a u32 word); table u32: per sequence
// `table_stride` page numbers, then the sequences' lengths before this append. Token t of
// sequence b lands at position len_b + t: page table[b·table_stride + (len_b + t) / P], token
// (len_b + t) mod P. A dispatch writes only pages in [page_lo, page_hi) (its bound slab).
// Tiling: none (no workgroup memory): one invocation per source element of the dispatch's
// (batches, heads, tokens) block, by linear id
// (wg_offset + x + y·grid_x)·64 + local index over a 1D or 2D grid; workgroup size 64. No loops.

const TYPE: u32 = 0u; // @param element type of the source and the pool: 0 f32, 1 f16, 2 bf16

// @include half.wgsl

struct Params {
    elements: u32,        // batches × heads_here × tokens_here × D of this dispatch, from `batch0`
    heads: u32,           // Hkv
    tokens: u32,          // T, the tokens appended
    head_dim: u32,
    batch0: u32,
    page_size: u32,
    table_stride: u32,
    lens_offset: u32,     // table index of the lengths
    page_lo: u32,
    page_hi: u32,
    grid_x: u32,
    wg_offset: u32,
    src_base: u32,        // element offset of the source's bound window
    head0: u32,           // this dispatch: heads head0 .. + heads_here, tokens token0 .. + tokens_here
    token0: u32,
    heads_here: u32,
    tokens_here: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    src_stride: vec4<u32>, // (batch, head, token, -)
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> table: array<u32>;
// @if TYPE == 0
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read_write> pool: array<f32>;
// @else
@group(0) @binding(1) var<storage, read> src: array<u32>;
// two 16-bit elements a word, the other half possibly another token's: stored by atomic and/or
@group(0) @binding(3) var<storage, read_write> pool: array<atomic<u32>>;
// @endif

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg_id: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let e = (params.wg_offset + wg_id.x + wg_id.y * params.grid_x) * 64u + tid;
    if (e >= params.elements) {
        return;
    }
    let d = e % params.head_dim;
    let row = e / params.head_dim;
    let t = params.token0 + row % params.tokens_here;
    let h = params.head0 + (row / params.tokens_here) % params.heads_here;
    let b = params.batch0 + row / (params.tokens_here * params.heads_here);
    let pos = table[params.lens_offset + b] + t;
    let page = table[b * params.table_stride + pos / params.page_size];
    if (page < params.page_lo || page >= params.page_hi) {
        return;   // another slab's page
    }
    let at = (((page - params.page_lo) * params.heads + h) * params.page_size + pos % params.page_size)
        * params.head_dim + d;
    let src_at = b * params.src_stride.x + h * params.src_stride.y + t * params.src_stride.z + d - params.src_base;
// @if TYPE == 0
    pool[at] = src[src_at];
// @else
    let bits = (src[src_at >> 1u] >> ((src_at & 1u) * 16u)) & 0xffffu;
    let shift = (at & 1u) * 16u;
    atomicAnd(&pool[at >> 1u], ~(0xffffu << shift));
    atomicOr(&pool[at >> 1u], bits << shift);
// @endif
}
