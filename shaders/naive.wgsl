// naive.wgsl: the textbook, unfused attention forward in three passes, the baseline that shows what
// fusion buys: S = scale·Q·Kᵀ is written to memory, softmax turns it into P in place, O = P·V.
// Scores are formed as in the oracle, with the fused kernels' terms (score_terms.wgsl, included):
// s = scale·q·k; with a soft cap s = cap·tanh(s/cap); with ALiBi s −= slope[h]·|i + L − Nq − j|
// (L the batch's key length); masked keys (j ≥ L, causal) get MASKED. A row with no visible key
// gets P = 0, so O = 0, and LSE = −∞.
//
// Tensor layout (Q, K, V of QKV_TYPE and O of O_TYPE: f32, f16 or bf16, two 16-bit elements a
// word (half.wgsl); S, LSE f32; element strides of Q, K, V, O come in `params`, the head-dim
// stride is 1):
//   Q, O  [B, Hq, Nq, D]        K, V  [B, Hkv, Nk, D]  (query head h reads K/V head h / G, no copies)
//   S     [B, Hq, Nq, Nk]       contiguous, row (b·Hq + h)·Nq + i; scores, then P in place
//   LSE   [B, Hq, Nq]           natural log
//   aux   u32 [kv_lens (B) | ALiBi slopes as f32 bits (Hq)]
// Masked scores are stored as MASKED (−1e30), not −∞ (WGSL lets implementations assume finite
// values); anything at or below MASKED_CUT counts as masked.
//
// Work split: every workgroup has WG = 64 invocations; workgroups are numbered linearly over a 1D
// or 2D grid (wg_offset + x + y·grid_x), so a pass may span several dispatches.
//   scores   a workgroup owns SQ = 16 queries × 64 keys of S of one (batch, head); invocation t
//            computes the 16 scores of key j0 + t. Q and K rows stream through workgroup memory in
//            chunks of DC = min(ceil(D/4), 8) vec4s.
//            Loop bound: ceil(ceil(D/4)/DC) ≤ 8 iterations per invocation (the inner DC × 16
//            multiply-adds and the tile loads are unrolled).
//   softmax  a workgroup owns one row of S; invocation t visits the keys j ≡ t (mod 64) three
//            times (max, sum of exp, write P = exp(s − m)/l); reductions in workgroup memory
//            (unrolled trees). Invocation 0 writes LSE = m + ln l.
//            Loop bound: 3·ceil(Nk/64) ≤ 49,152 iterations (the host refuses Nk > 2^20).
//   pv       O = P·V as a tiled matmul: a workgroup owns PR query rows × OC vec4 columns of O of
//            one (batch, head) (OC = 4, 8 or 16 covering ceil(D/4), PR = 256/OC); invocation t
//            computes RPI = 4 rows of column t mod OC. P and V stream through workgroup memory in
//            chunks of KC = 32 keys. One dispatch covers the keys [key0, key0 + key_count) with
//            key_count ≤ 4096; the host splits longer rows over several dispatches, the later ones
//            adding to O (accumulate = 1).
//            Loop bound: 4096/32 = 128 iterations per invocation (the inner 32 × 4 unrolled).
// Lavapipe (llvmpipe) silently stops an invocation after 65,535 loop iterations in total; every
// bound above stays below it.

const DC: u32 = 8u; // @param vec4s of head dim per scores chunk: min(ceil(D/4), 8)
const QLOADS: u32 = 2u; // @param Q-tile vec4s each scores invocation loads per chunk: ceil(SQ·DC / WG)
const OC: u32 = 16u; // @param vec4 columns of O per pv workgroup: 4, 8 or 16
const PR: u32 = 16u; // @param query rows per pv workgroup: WG·RPI / OC
const PLOADS: u32 = 8u; // @param P elements each pv invocation loads per chunk: PR·KC / WG
const VLOADS: u32 = 8u; // @param V vec4s each pv invocation loads per chunk: KC·OC / WG
const QKV_TYPE: u32 = 0u; // @param element type of Q, K and V: 0 f32, 1 f16, 2 bf16
const O_TYPE: u32 = 0u; // @param element type of O: 0 f32, 1 f16, 2 bf16

const WG: u32 = 64u;         // invocations of every workgroup
const SQ: u32 = 16u;         // queries of a scores tile (keys: WG, one per invocation)
const KC: u32 = 32u;         // keys per pv chunk
const RPI: u32 = 4u;         // pv: query rows per invocation
const MASKED: f32 = -1.0e30;
const MASKED_CUT: f32 = -1.0e29;

// soft_cap, alibi_bias, causal_offset, key_visible: the score terms every kernel shares
// @include score_terms.wgsl
// widen_at, narrow_bits: 16-bit storage
// @include half.wgsl

struct Params {
    rows: u32,             // B·Hq·Nq (rows of S)
    q_len: u32,
    kv_len: u32,           // Nk (row length of S)
    head_dim: u32,
    q_heads: u32,
    group: u32,            // query heads per K/V head
    causal: u32,           // 0 none, 1 top-left, 2 bottom-right
    use_alibi: u32,
    alibi_offset: u32,     // index of slope 0 in aux
    use_softcap: u32,
    scale: f32,
    softcap: f32,
    grid_x: u32,           // workgroups along x (the dispatch is 2D when large)
    wg_offset: u32,        // linear id of this dispatch's first workgroup
    total: u32,            // workgroups of the whole pass
    key0: u32,             // pv: first key of this dispatch
    key_count: u32,        // pv: keys of this dispatch (≤ 4096)
    accumulate: u32,       // pv: 1 adds to O, 0 overwrites it
    q_tiles: u32,          // scores: ceil(Nq / SQ); pv: ceil(Nq / PR)
    k_tiles: u32,          // ceil(Nk / 64)
    d_tiles: u32,          // ceil(ceil(D / 4) / OC)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    q_stride: vec4<u32>,   // (batch, head, seq, -)
    k_stride: vec4<u32>,
    v_stride: vec4<u32>,
    o_stride: vec4<u32>,
}

@group(0) @binding(0) var<uniform> params: Params;

// scores
// @if QKV_TYPE == 0
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
// @else
@group(0) @binding(1) var<storage, read> q: array<u32>;
@group(0) @binding(2) var<storage, read> k: array<u32>;
// @endif
@group(0) @binding(3) var<storage, read> aux: array<u32>;
@group(0) @binding(4) var<storage, read_write> s_out: array<f32>;

// softmax
@group(0) @binding(1) var<storage, read_write> s_rows: array<f32>;
@group(0) @binding(2) var<storage, read_write> lse: array<f32>;

// pv
@group(0) @binding(1) var<storage, read> p_in: array<f32>;
// @if QKV_TYPE == 0
@group(0) @binding(2) var<storage, read> v: array<f32>;
// @else
@group(0) @binding(2) var<storage, read> v: array<u32>;
// @endif
// @if O_TYPE == 0
@group(0) @binding(3) var<storage, read_write> o: array<f32>;
// @else
// the other half of a word may be another row's: elements are stored by atomic and/or
@group(0) @binding(3) var<storage, read_write> o: array<atomic<u32>>;
// @endif

// Element e of Q, K, V, widened to f32.
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

fn v_at(e: u32) -> f32 {
// @if QKV_TYPE == 0
    return v[e];
// @else
    return widen_at(v[e >> 1u], e, QKV_TYPE);
// @endif
}

// O element e: read (widened) and written (narrowed to O_TYPE).
fn o_load(e: u32) -> f32 {
// @if O_TYPE == 0
    return o[e];
// @else
    return widen_at(atomicLoad(&o[e >> 1u]), e, O_TYPE);
// @endif
}

fn o_store(e: u32, x: f32) {
// @if O_TYPE == 0
    o[e] = x;
// @else
    let shift = (e & 1u) * 16u;
    atomicAnd(&o[e >> 1u], ~(0xffffu << shift));
    atomicOr(&o[e >> 1u], narrow_bits(x, O_TYPE) << shift);
// @endif
}

var<workgroup> q_tile: array<vec4<f32>, SQ * DC>;
var<workgroup> k_tile: array<vec4<f32>, WG * DC>;
var<workgroup> red: array<f32, WG>;
var<workgroup> p_tile: array<f32, PR * KC>;
var<workgroup> v_tile: array<vec4<f32>, KC * OC>;

fn workgroup_index(wg_id: vec3<u32>) -> u32 {
    return params.wg_offset + wg_id.x + wg_id.y * params.grid_x;
}

// 4 consecutive head-dim elements from element `base + d0`, zero past D.
fn load4_q(base: u32, d0: u32) -> vec4<f32> {
    var r = vec4<f32>(0.0);
    let d = params.head_dim;
    if (d0 < d) { r.x = q_at(base + d0); }
    if (d0 + 1u < d) { r.y = q_at(base + d0 + 1u); }
    if (d0 + 2u < d) { r.z = q_at(base + d0 + 2u); }
    if (d0 + 3u < d) { r.w = q_at(base + d0 + 3u); }
    return r;
}

fn load4_k(base: u32, d0: u32) -> vec4<f32> {
    var r = vec4<f32>(0.0);
    let d = params.head_dim;
    if (d0 < d) { r.x = k_at(base + d0); }
    if (d0 + 1u < d) { r.y = k_at(base + d0 + 1u); }
    if (d0 + 2u < d) { r.z = k_at(base + d0 + 2u); }
    if (d0 + 3u < d) { r.w = k_at(base + d0 + 3u); }
    return r;
}

fn load4_v(base: u32, d0: u32) -> vec4<f32> {
    var r = vec4<f32>(0.0);
    let d = params.head_dim;
    if (d0 < d) { r.x = v_at(base + d0); }
    if (d0 + 1u < d) { r.y = v_at(base + d0 + 1u); }
    if (d0 + 2u < d) { r.z = v_at(base + d0 + 2u); }
    if (d0 + 3u < d) { r.w = v_at(base + d0 + 3u); }
    return r;
}

@compute @workgroup_size(WG)
fn scores(@builtin(workgroup_id) wg_id: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let wid = workgroup_index(wg_id);
    if (wid >= params.total) {
        return;
    }
    let j0 = (wid % params.k_tiles) * WG;
    let rest = wid / params.k_tiles;
    let i0 = (rest % params.q_tiles) * SQ;
    let bh = rest / params.q_tiles;
    let b = bh / params.q_heads;
    let h = bh % params.q_heads;
    let kvh = h / params.group;
    let q_len = params.q_len;
    let kv_len = params.kv_len;
    let q_head = b * params.q_stride.x + h * params.q_stride.y;
    let k_head = b * params.k_stride.x + kvh * params.k_stride.y;

    var acc: array<f32, SQ>;
    // @unroll
    for (var r = 0u; r < 16u; r++) {   // SQ
        acc[r] = 0.0;
    }
    let chunks = ((params.head_dim + 3u) / 4u + DC - 1u) / DC;
    for (var ch = 0u; ch < chunks; ch++) {
        let dv0 = ch * DC;
        // Q tile: SQ rows × DC vec4s
        // @unroll
        for (var li = 0u; li < QLOADS; li++) {
            let e = li * WG + tid;
            if (e < SQ * DC) {
                let row = e / DC;
                var val = vec4<f32>(0.0);
                if (i0 + row < q_len) {
                    val = load4_q(q_head + (i0 + row) * params.q_stride.z, (dv0 + e % DC) * 4u);
                }
                q_tile[e] = val;
            }
        }
        // K tile: WG keys × DC vec4s
        // @unroll
        for (var li = 0u; li < DC; li++) {
            let e = li * WG + tid;
            let key = j0 + e / DC;
            var val = vec4<f32>(0.0);
            if (key < kv_len) {
                val = load4_k(k_head + key * params.k_stride.z, (dv0 + e % DC) * 4u);
            }
            k_tile[e] = val;
        }
        workgroupBarrier();
        // @unroll
        for (var x = 0u; x < DC; x++) {
            let kx = k_tile[tid * DC + x];
            // @unroll
            for (var r = 0u; r < 16u; r++) {   // SQ
                acc[r] += dot(q_tile[r * DC + x], kx);
            }
        }
        workgroupBarrier();
    }

    let j = j0 + tid;
    if (j >= kv_len) {
        return;
    }
    let kv_len_b = aux[b];
    let offset = causal_offset(params.causal, kv_len_b, q_len);
    var slope = 0.0;
    if (params.use_alibi != 0u) {
        slope = bitcast<f32>(aux[params.alibi_offset + h]);
    }
    // @unroll
    for (var r = 0u; r < 16u; r++) {   // SQ
        let i = i0 + r;
        if (i < q_len) {
            // the score terms of score_terms.wgsl, as the fused kernels form them
            var s = params.scale * acc[r];
            if (params.use_softcap != 0u) {
                s = soft_cap(s, params.softcap);
            }
            if (params.use_alibi != 0u) {
                s -= alibi_bias(slope, i, j, kv_len_b, q_len);
            }
            let visible = key_visible(i, j, kv_len_b, params.causal, offset);
            s_out[(bh * q_len + i) * kv_len + j] = select(MASKED, s, visible);
        }
    }
}

@compute @workgroup_size(WG)
fn softmax(@builtin(workgroup_id) wg_id: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let row = workgroup_index(wg_id);
    if (row >= params.rows) {
        return;
    }
    let n = params.kv_len;
    let base = row * n;

    // 1. row max
    var m_local = MASKED;
    for (var j = tid; j < n; j += WG) {
        m_local = max(m_local, s_rows[base + j]);
    }
    red[tid] = m_local;
    workgroupBarrier();
    // @unroll
    for (var st = 0u; st < 6u; st++) {   // log2(WG)
        let width = WG >> (st + 1u);
        if (tid < width) {
            red[tid] = max(red[tid], red[tid + width]);
        }
        workgroupBarrier();
    }
    let m = red[0];
    let any_visible = m > MASKED_CUT;
    workgroupBarrier();   // everyone has read red[0] before it is reused

    // 2. sum of exp(s − m) over visible keys
    var l_local = 0.0;
    for (var j = tid; j < n; j += WG) {
        let s = s_rows[base + j];
        if (s > MASKED_CUT) {
            l_local += exp(s - m);
        }
    }
    red[tid] = l_local;
    workgroupBarrier();
    // @unroll
    for (var st = 0u; st < 6u; st++) {   // log2(WG)
        let width = WG >> (st + 1u);
        if (tid < width) {
            red[tid] = red[tid] + red[tid + width];
        }
        workgroupBarrier();
    }
    let l = red[0];

    // 3. P = exp(s − m) / l in place; 0 for masked keys and rows without a visible key
    let inv_l = select(0.0, 1.0 / l, any_visible);
    for (var j = tid; j < n; j += WG) {
        let s = s_rows[base + j];
        s_rows[base + j] = select(0.0, exp(s - m) * inv_l, any_visible && s > MASKED_CUT);
    }
    if (tid == 0u) {
        var neg_inf_bits = 0xff800000u;   // a var, so the constant evaluator never sees −∞
        var row_lse = bitcast<f32>(neg_inf_bits);
        if (any_visible) {
            row_lse = m + log(l);
        }
        lse[row] = row_lse;
    }
}

@compute @workgroup_size(WG)
fn pv(@builtin(workgroup_id) wg_id: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let wid = workgroup_index(wg_id);
    if (wid >= params.total) {
        return;
    }
    let dv0 = (wid % params.d_tiles) * OC;
    let rest = wid / params.d_tiles;
    let i0 = (rest % params.q_tiles) * PR;
    let bh = rest / params.q_tiles;
    let b = bh / params.q_heads;
    let h = bh % params.q_heads;
    let kvh = h / params.group;
    let c = tid % OC;          // vec4 column of O
    let r0 = (tid / OC) * RPI; // first of this invocation's RPI rows
    let q_len = params.q_len;
    let key_end = params.key0 + params.key_count;
    let p_row0 = bh * q_len + i0;   // row of S of query i0
    let v_head = b * params.v_stride.x + kvh * params.v_stride.y;

    var acc: array<vec4<f32>, RPI>;
    // @unroll
    for (var rr = 0u; rr < 4u; rr++) {   // RPI
        acc[rr] = vec4<f32>(0.0);
    }
    let chunks = (params.key_count + KC - 1u) / KC;
    for (var ch = 0u; ch < chunks; ch++) {
        let key = params.key0 + ch * KC;
        // P tile: PR rows × KC keys
        // @unroll
        for (var li = 0u; li < PLOADS; li++) {
            let e = li * WG + tid;
            let row = e / KC;
            let kk = e % KC;
            var pval = 0.0;
            if (i0 + row < q_len && key + kk < key_end) {
                pval = p_in[(p_row0 + row) * params.kv_len + key + kk];
            }
            p_tile[e] = pval;
        }
        // V tile: KC keys × OC vec4s
        // @unroll
        for (var li = 0u; li < VLOADS; li++) {
            let e = li * WG + tid;
            let kk = e / OC;
            var vv = vec4<f32>(0.0);
            if (key + kk < key_end) {
                vv = load4_v(v_head + (key + kk) * params.v_stride.z, (dv0 + e % OC) * 4u);
            }
            v_tile[e] = vv;
        }
        workgroupBarrier();
        // @unroll
        for (var x = 0u; x < 32u; x++) {   // KC
            let vx = v_tile[x * OC + c];
            // @unroll
            for (var rr = 0u; rr < 4u; rr++) {   // RPI
                acc[rr] = fma(vec4<f32>(p_tile[(r0 + rr) * KC + x]), vx, acc[rr]);
            }
        }
        workgroupBarrier();
    }

    let d0 = (dv0 + c) * 4u;
    let dims = params.head_dim;
    if (d0 >= dims) {
        return;
    }
    // @unroll
    for (var rr = 0u; rr < 4u; rr++) {   // RPI
        let i = i0 + r0 + rr;
        if (i < q_len) {
            let at = b * params.o_stride.x + h * params.o_stride.y + i * params.o_stride.z + d0;
            var add = vec4<f32>(0.0);
            if (params.accumulate != 0u) {
                add.x = o_load(at);
                if (d0 + 1u < dims) { add.y = o_load(at + 1u); }
                if (d0 + 2u < dims) { add.z = o_load(at + 2u); }
                if (d0 + 3u < dims) { add.w = o_load(at + 3u); }
            }
            let out = acc[rr] + add;
            o_store(at, out.x);
            if (d0 + 1u < dims) { o_store(at + 1u, out.y); }
            if (d0 + 2u < dims) { o_store(at + 2u, out.z); }
            if (d0 + 3u < dims) { o_store(at + 3u, out.w); }
        }
    }
}
