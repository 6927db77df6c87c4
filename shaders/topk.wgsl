// topk.wgsl: dynamic block sparsity (MoBA / NSA style). Chooses, from the data of this call, which
// key blocks each query block attends to, and writes the block table the fused kernel walks
// (flash_forward.wgsl), all on the device.
//
// Four entry points, run in order:
//   pool_q / pool_k  mean of each block of S query / key rows: one invocation per (row block, d);
//                    pooled Q [B, Hq, NQB, D] then pooled K [B, Hkv, NKB, D] in `pooled`.
//                    Key blocks pool only keys below the batch's key length.
//   score            s[b, h, qb, kb] = scale · pooled_q · pooled_k: one invocation per score.
//   select_blocks    one invocation per (b, h, qb): keeps the local block (the key block holding
//                    the query block's last aligned position), the sink block 0 if asked, and the
//                    best remaining blocks by (score descending, block index ascending) up to k;
//                    only eligible blocks (below the key length, and for causal masks not wholly
//                    after the block's last query) are kept. Writes (first entry, count) and the
//                    entries (key block, NO_BITS: full), ascending, into `aux`.
// Tensor layout (Q and K of QKV_TYPE: f32, f16 or bf16 (half.wgsl), widened on load; the rest
// f32; element strides of Q and K come in `params`, the head-dim stride is 1):
//   Q  [B, Hq, Nq, D]     K  [B, Hkv, Nk, D]     (as in attention_common.wgsl)
//   pooled  [pooled Q: B, Hq, NQB, D | pooled K from pooled_k_offset: B, Hkv, NKB, D]
//   scores  [B, Hq, NQB, NKB]
//   aux  u32 [kv_lens (B) | … | lists: (first entry, count) per (b, h, qb) from lists_offset |
//        entries: (key block, NO_BITS), k + 2 per list, from entries_offset] (see src/kernels/topk.rs)
// Tiling: none (no workgroup memory); each entry point maps one invocation to one output element
// or list, by linear id (workgroup x + y·grid_x)·64 + local index over a 1D or 2D grid.
// Workgroup size 64. Loops: pool ≤ S, score ≤ D, select 2·NKB iterations per invocation; the
// top list (K_MAX) is unrolled.

const K_MAX: u32 = 32u; // @param the largest k (top list length, unrolled)
const QKV_TYPE: u32 = 0u; // @param element type of Q and K: 0 f32, 1 f16, 2 bf16

// @include half.wgsl

const NO_BITS: u32 = 0xffffffffu;
const NONE: u32 = 0xffffffffu;
const LOW: f32 = -3.0e38;

struct Params {
    batch: u32,
    q_heads: u32,
    kv_heads: u32,
    group: u32,
    q_len: u32,
    kv_len: u32,
    head_dim: u32,
    block: u32,
    q_blocks: u32,
    k_blocks: u32,
    k: u32,
    sink: u32,
    causal: u32,          // 0 none, 1 top-left, 2 bottom-right
    scale: f32,
    grid_x: u32,
    lists_offset: u32,    // aux index of (first entry, count) per list
    entries_offset: u32,  // aux index of the entries
    pooled_k_offset: u32, // index of pooled K in `pooled`
    _pad0: u32,
    _pad1: u32,
    q_stride: vec4<u32>,
    k_stride: vec4<u32>,
}

@group(0) @binding(0) var<uniform> params: Params;
// @if QKV_TYPE == 0
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
// @else
@group(0) @binding(1) var<storage, read> q: array<u32>;
@group(0) @binding(2) var<storage, read> k: array<u32>;
// @endif
@group(0) @binding(3) var<storage, read_write> pooled: array<f32>;
@group(0) @binding(4) var<storage, read_write> scores: array<f32>;
@group(0) @binding(5) var<storage, read_write> aux: array<u32>;

// Element e of Q / K, widened to f32.
fn q_at(e: u32) -> f32 {
// @if QKV_TYPE == 0
    return q[e];
// @else
    return widen_at(q[e >> 1u], e, QKV_TYPE);
// @endif
}

fn k_at(e: u32) -> f32 {
// @if QKV_TYPE == 0
    return k[e];
// @else
    return widen_at(k[e >> 1u], e, QKV_TYPE);
// @endif
}

fn linear(wg: vec3<u32>, tid: u32) -> u32 {
    return (wg.x + wg.y * params.grid_x) * 64u + tid;
}

@compute @workgroup_size(64)
fn pool_q(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let e = linear(wg, tid);
    let d = params.head_dim;
    if (e >= params.batch * params.q_heads * params.q_blocks * d) {
        return;
    }
    let x = e % d;
    let blk = (e / d) % params.q_blocks;
    let bh = e / d / params.q_blocks;
    let h = bh % params.q_heads;
    let b = bh / params.q_heads;
    let first = blk * params.block;
    let last = min(first + params.block, params.q_len);
    var sum = 0.0;
    for (var i = first; i < last; i++) {
        sum += q_at(b * params.q_stride.x + h * params.q_stride.y + i * params.q_stride.z + x);
    }
    pooled[e] = sum / f32(last - first);
}

@compute @workgroup_size(64)
fn pool_k(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let e = linear(wg, tid);
    let d = params.head_dim;
    if (e >= params.batch * params.kv_heads * params.k_blocks * d) {
        return;
    }
    let x = e % d;
    let blk = (e / d) % params.k_blocks;
    let bh = e / d / params.k_blocks;
    let h = bh % params.kv_heads;
    let b = bh / params.kv_heads;
    let first = blk * params.block;
    let last = min(first + params.block, aux[b]);   // aux[b]: the batch's key length
    var sum = 0.0;
    for (var j = first; j < last; j++) {
        sum += k_at(b * params.k_stride.x + h * params.k_stride.y + j * params.k_stride.z + x);
    }
    pooled[params.pooled_k_offset + e] = select(0.0, sum / f32(max(last, first + 1u) - first), last > first);
}

@compute @workgroup_size(64)
fn score(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let e = linear(wg, tid);
    let nkb = params.k_blocks;
    if (e >= params.batch * params.q_heads * params.q_blocks * nkb) {
        return;
    }
    let kb = e % nkb;
    let row = e / nkb;                        // (b, h, qb)
    let h = (row / params.q_blocks) % params.q_heads;
    let b = row / params.q_blocks / params.q_heads;
    let kh = h / params.group;
    let d = params.head_dim;
    let qo = row * d;
    let ko = params.pooled_k_offset + ((b * params.kv_heads + kh) * nkb + kb) * d;
    var dot = 0.0;
    for (var x = 0u; x < d; x++) {
        dot += pooled[qo + x] * pooled[ko + x];
    }
    scores[e] = params.scale * dot;
}

@compute @workgroup_size(64)
fn select_blocks(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let list = linear(wg, tid);
    if (list >= params.batch * params.q_heads * params.q_blocks) {
        return;
    }
    let qb = list % params.q_blocks;
    let b = list / params.q_blocks / params.q_heads;
    let s = params.block;
    let kv_len_b = aux[b];
    let i_last = min((qb + 1u) * s, params.q_len) - 1u;
    // aligned position of the block's last query: top-left causal uses i, the rest bottom-right
    var pos = i32(i_last) + i32(kv_len_b) - i32(params.q_len);
    if (params.causal == 1u) {
        pos = i32(i_last);
    }
    var limit = (kv_len_b + s - 1u) / s;      // key blocks [0, limit) are eligible
    if (params.causal != 0u) {
        // a block is eligible when its first key is visible to the block's last query
        if (pos < 0) {
            limit = 0u;
        } else {
            limit = min(limit, u32(pos) / s + 1u);
        }
    }
    var local = NONE;
    if (limit > 0u) {
        local = u32(clamp(pos, 0, i32(kv_len_b) - 1)) / s;
        local = min(local, limit - 1u);
    }
    var sink = NONE;
    if (params.sink != 0u && limit > 0u) {
        sink = 0u;
    }
    var forced = 0u;
    if (local != NONE) { forced += 1u; }
    if (sink != NONE && sink != local) { forced += 1u; }
    let wanted = select(0u, params.k - forced, params.k > forced);

    // best `wanted` blocks other than the forced ones, kept sorted (score desc, index asc)
    var top_s: array<f32, K_MAX>;
    var top_b: array<u32, K_MAX>;
    // @unroll
    for (var t = 0u; t < K_MAX; t++) {
        top_s[t] = LOW;
        top_b[t] = NONE;
    }
    for (var kb = 0u; kb < limit; kb++) {
        if (kb == local || kb == sink) {
            continue;
        }
        var cs = scores[list * params.k_blocks + kb];
        var cb = kb;
        // @unroll
        for (var t = 0u; t < K_MAX; t++) {
            if (t < wanted && (cb != NONE) && (cs > top_s[t] || (cs == top_s[t] && cb < top_b[t]))) {
                let ts = top_s[t];
                let tb = top_b[t];
                top_s[t] = cs;
                top_b[t] = cb;
                cs = ts;
                cb = tb;
            }
        }
    }

    // write the chosen blocks in ascending order
    let first = list * (params.k + 2u);
    var count = 0u;
    for (var kb = 0u; kb < limit; kb++) {
        var keep = kb == local || kb == sink;
        // @unroll
        for (var t = 0u; t < K_MAX; t++) {
            keep = keep || top_b[t] == kb;
        }
        if (keep) {
            let e = params.entries_offset + 2u * (first + count);
            aux[e] = kb;
            aux[e + 1u] = NO_BITS;
            count += 1u;
        }
    }
    aux[params.lists_offset + 2u * list] = first;
    aux[params.lists_offset + 2u * list + 1u] = count;
}
