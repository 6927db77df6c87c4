// decode_common.wgsl: what the two decode kernels share, included by decode.wgsl (one invocation
// per key range, for CPU adapters) and decode_split_d.wgsl (one subgroup per key range, the head
// dim across its lanes, for GPUs): the uniform `Params` (src/kernels/decode.rs `DecodeParams`),
// the bindings, the Q/K/V loads, the score of one (row, key) pair after its dot product and the
// online-softmax step over a block of 4 keys (KB = 4 in both kernels).
// The including kernel defines the @params QKV_TYPE, VEC4, SOFTCAP and ALIBI.
// Tensor layout: decode.wgsl's header (Q [B, Hq, Nq, D]; K, V pages [pages, Hkv, P, D] read
// through the page table in `aux`; partial states [rows, n_parts, D] and [rows, n_parts]).
// Tiling, workgroup size: the including kernel's (declarations and functions only).

const LOG2E: f32 = 1.4426950408889634;
const LN2: f32 = 0.6931471805599453;
const MASKED: f32 = -1.0e30;
const MASKED_CUT: f32 = -1.0e29;
const NONE: u32 = 0xffffffffu;

// soft_cap, alibi_bias, causal_offset, key_visible
// @include score_terms.wgsl

struct Params {
    q_len: u32,
    head_dim: u32,
    group: u32,            // query heads per kv head
    rows_per_group: u32,   // G·Nq
    batch0: u32,           // chunk: batches batch0 .. + batches, kv heads kv_head0 .. + kv_heads
    batches: u32,
    kv_head0: u32,
    kv_heads: u32,
    row_chunks: u32,       // ceil(G·Nq / RB)
    part_groups: u32,      // ceil(parts / WG)
    keys_per_part: u32,    // L, a multiple of KB
    part0: u32,            // first part of this dispatch
    parts: u32,            // parts of this dispatch per (batch, kv head, row chunk)
    n_parts: u32,          // parts in all (the partials' stride)
    part_batch0: u32,      // first batch the partial buffers hold
    part_kv_heads: u32,    // kv heads the partial buffers hold per batch
    grid_x: u32,
    wg_offset: u32,        // linear id of this dispatch's first workgroup
    page_size: u32,        // P
    table_stride: u32,     // page-table entries per sequence
    table_offset: u32,     // aux index of the page table
    _pad0: u32,
    _pad1: u32,
    resume: u32,           // 1: continue from the stored partial state
    key_lo: u32,           // keys bound by this dispatch: key_lo .. key_hi
    key_hi: u32,
    causal: u32,           // 0 none, 1 top-left, 2 bottom-right
    window_left: u32,      // NONE: unbounded
    window_right: u32,
    alibi_offset: u32,     // aux index of slope 0
    scale: f32,
    softcap: f32,
    q_base: u32,           // element offset of each bound window, subtracted from indices
    k_base: u32,
    v_base: u32,
    list_offset: u32,      // aux index of (list start, run length) per sequence for this slab
    // (36 scalars above: the strides start 16-byte aligned)
    q_stride: vec4<u32>,   // (batch, head, query, -)
    k_stride: vec4<u32>,   // (page, kv head, token, -)
    v_stride: vec4<u32>,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(4) var<storage, read> aux: array<u32>;
@group(0) @binding(5) var<storage, read_write> part_o: array<f32>;
@group(0) @binding(6) var<storage, read_write> part_lse: array<f32>;

// Q, K, V (bindings 1-3) and load4_q / load4_k / load4_v: zero past the head dim (those columns
// only meet zero query columns or O columns never stored); with VEC4 one access per 4 elements
// @include qkv_loads.wgsl

// The score of a (row, key j) pair from its scaled dot product x (log2 domain, or natural with
// SOFTCAP): soft-capped, ALiBi-biased, then MASKED where key j is outside the range (`in_range`),
// past the row's causal cut `cut`, or outside the window (win_l keys left, win_r right of the
// row's bottom-right aligned position `pos`).
fn decode_score(x0: f32, j: u32, in_range: bool, pos: i32, cut: i32, slope: f32, win_l: i32, win_r: i32) -> f32 {
    var x = x0;
// @if SOFTCAP
    x = soft_cap(x, params.softcap) * LOG2E;
// @endif
// @if ALIBI
    x -= slope * abs(f32(pos - i32(j))) * LOG2E;
// @endif
    let dist = pos - i32(j);
    let vis = in_range && i32(j) <= cut && dist <= win_l && -dist <= win_r;
    return select(MASKED, x, vis);
}

// One online-softmax step of a row over a block of 4 scores `s` (log2 domain, MASKED where
// hidden), from its running max `m` and sum `l`: the new max and sum, the factor `alpha` the O
// accumulators are rescaled by, and the block's probabilities exp2(s − max) (0 where hidden).
struct SoftmaxStep {
    m: f32,
    l: f32,
    alpha: f32,
    p: vec4<f32>,
}

fn softmax_step(m: f32, l: f32, s: vec4<f32>) -> SoftmaxStep {
    let mx = max(m, max(max(s.x, s.y), max(s.z, s.w)));
    let alpha = exp2(m - mx);
    let p = select(vec4<f32>(0.0), exp2(s - vec4<f32>(mx)), s > vec4<f32>(MASKED_CUT));
    return SoftmaxStep(mx, l * alpha + ((p.x + p.y) + (p.z + p.w)), alpha, p);
}
