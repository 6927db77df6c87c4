// decode_split_d.wgsl: the decode kernel for GPUs. The same work as decode.wgsl (FlashDecoding:
// the cache cut into key ranges, "parts", each reduced to a partial state (O, LSE) of its rows,
// merged by merge.wgsl), with the head dim split across the T lanes of one workgroup instead of
// held whole by one invocation: a K or V row is read by T neighbouring lanes together (one
// coalesced access per 4·T elements), and each lane keeps only its columns of the query rows and
// O accumulators (2·RB·NV vec4s: registers, where decode.wgsl's 2·RB·D floats per invocation
// spill on a GPU).
//
// Tensor layout: decode.wgsl's (decode_common.wgsl): Q [B, Hq, Nq, D] by q_stride; K, V pages
// [pages, Hkv, P, D] read through the page table; partial states part_o [rows, n_parts, D] and
// part_lse [rows, n_parts], rows = (batch − part_batch0, kv head, packed row (h − kv_head·G)·Nq + i).
// Tiling: one workgroup per (batch, kv head, chunk of RB packed rows, part); lane l owns the
// 4-column groups c = l + T·t (t < NV), zero past the head dim. Keys stream in blocks of KB = 4:
// every lane forms its share of the block's 4 dot products for each row, and one subgroupAdd of
// a vec4 (the 4 keys) per row hands the whole scores to every lane; the online softmax runs in
// every lane on identical values, then each lane updates its own O columns. No workgroup memory,
// no barriers.
// Workgroup size T, at most the adapter's smallest subgroup (src/kernels/decode.rs), so that a
// workgroup is one subgroup whatever the subgroup size (4 to 128): subgroupAdd then sums exactly
// the workgroup's lanes, and the kernel never asks which lane of the subgroup it is. All control
// flow is uniform in the workgroup (every bound depends on the workgroup id only).
// Loops: only the key-block loop runs a run-time count (≤ L / KB, bounded by the host: lavapipe
// stops a loop after 65,535 iterations).

const RB: u32 = 4u; // @param query rows per workgroup
const DV: u32 = 32u; // @param compiled head dim / 4
const T: u32 = 8u; // @param lanes per workgroup (at most the adapter's smallest subgroup)
const NV: u32 = 4u; // @param 4-column groups per lane: ceil(DV / T)
const VEC4: u32 = 1u; // @param 1: Q, K, V bound as vec4s (head dim, strides, bases multiples of 4)
const SOFTCAP: u32 = 0u; // @param 1: the call soft-caps logits
const ALIBI: u32 = 0u; // @param 1: the call adds ALiBi biases
const QKV_TYPE: u32 = 0u; // @param element type of Q, K and V: 0 f32, 1 f16, 2 bf16 (half.wgsl)

const KB: u32 = 4u; // @param keys per block: 4, the components of one subgroupAdd

// Params, bindings, loads, decode_score
// @include decode_common.wgsl

@compute @workgroup_size(T)
fn main(@builtin(workgroup_id) wg_id: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    // linear workgroup id -> (batch, kv head, row chunk, part), parts fastest
    let wid = params.wg_offset + wg_id.x + wg_id.y * params.grid_x;
    let local_part = wid % params.part_groups;   // one part per workgroup: part_groups = parts
    let rest = wid / params.part_groups;
    let rc = rest % params.row_chunks;
    let pair = rest / params.row_chunks;
    if (pair >= params.batches * params.kv_heads || local_part >= params.parts) {
        return;   // past the grid's last workgroup (the whole workgroup returns)
    }
    let b = params.batch0 + pair / params.kv_heads;
    let kvh = params.kv_head0 + pair % params.kv_heads;
    let part = params.part0 + local_part;

    let len_b = aux[b];
    // the keys this dispatch sees of sequence b: its pages in this slab, in key order, as one
    // run of `run_len` "slab keys"; slab key u is key list[u / P]·P + u mod P
    let list_at = aux[params.list_offset + 2u * b];
    let run_len = aux[params.list_offset + 2u * b + 1u];
    let k_start = max(part * params.keys_per_part, params.key_lo);
    let k_end = min(min(part * params.keys_per_part + params.keys_per_part, run_len), params.key_hi);

    // this lane's columns of the rows: packed row p = rc·RB + r is query i = p mod Nq of head
    // kvh·G + p / Nq; column group t of the lane starts at element col[t]
    var col: array<u32, NV>;
    // @unroll
    for (var t = 0u; t < NV; t++) {
        col[t] = (lane + T * t) * 4u;
    }
    var qreg: array<vec4<f32>, RB * NV>;   // query columns pre-scaled by q_scale
    var acc: array<vec4<f32>, RB * NV>;    // O accumulator columns
    var m: array<f32, RB>;                 // running max, log2 domain (the same in every lane)
    var l: array<f32, RB>;                 // running sum of exp2(s − m)
    var pos: array<i32, RB>;               // the query's bottom-right aligned key position
    var cut: array<i32, RB>;               // last visible key under the causal mask
    var slope: array<f32, RB>;
    var q_scale = params.scale * LOG2E;
// @if SOFTCAP
    q_scale = params.scale;   // tanh needs the natural-domain score
// @endif
    let offset = causal_offset(params.causal, len_b, params.q_len);
    // @unroll
    for (var r = 0u; r < RB; r++) {
        let p = min(rc * RB + r, params.rows_per_group - 1u);
        let h = kvh * params.group + p / params.q_len;
        let i = p % params.q_len;
        pos[r] = i32(i) + i32(len_b) - i32(params.q_len);
        cut[r] = select(2147483647, i32(i) + offset, params.causal != 0u);
        slope[r] = 0.0;
// @if ALIBI
        slope[r] = bitcast<f32>(aux[params.alibi_offset + h]);
// @endif
        let qb = b * params.q_stride.x + h * params.q_stride.y + i * params.q_stride.z - params.q_base;
        m[r] = MASKED;
        l[r] = 0.0;
        // @unroll
        for (var t = 0u; t < NV; t++) {
            qreg[r * NV + t] = load4_q(qb, col[t]) * q_scale;
            acc[r * NV + t] = vec4<f32>(0.0);
        }
    }
    let prow0 = ((b - params.part_batch0) * params.part_kv_heads + kvh) * params.rows_per_group + rc * RB;
    if (params.resume != 0u) {
        // continue from the state an earlier dispatch stored: (O, LSE) is acc = O, l = 1, m = LSE
        // in the log2 domain
        // @unroll
        for (var r = 0u; r < RB; r++) {
            let at = (prow0 + min(r, params.rows_per_group - 1u - rc * RB)) * params.n_parts + part;
            let lse = part_lse[at];
            if (lse > MASKED_CUT) {
                m[r] = lse * LOG2E;
                l[r] = 1.0;
                // @unroll
                for (var t = 0u; t < NV; t++) {
                    let e = at * params.head_dim + col[t];
                    let d = params.head_dim;
                    var x = vec4<f32>(0.0);
                    if (col[t] < d) { x.x = part_o[e]; }
                    if (col[t] + 1u < d) { x.y = part_o[e + 1u]; }
                    if (col[t] + 2u < d) { x.z = part_o[e + 2u]; }
                    if (col[t] + 3u < d) { x.w = part_o[e + 3u]; }
                    acc[r * NV + t] = x;
                }
            }
        }
    }

    let win_l = i32(min(params.window_left, 2147483647u));
    let win_r = i32(min(params.window_right, 2147483647u));
    let P = params.page_size;
    for (var u0 = k_start; u0 < k_end; u0 += KB) {
        // the block's page (KB divides P: a block never straddles two pages) and first key
        let lp = aux[list_at + u0 / P];
        let page = aux[params.table_offset + b * params.table_stride + lp];
        let tok = u0 % P;
        let k0 = lp * P + tok;
        let kb = page * params.k_stride.x + kvh * params.k_stride.y + tok * params.k_stride.z - params.k_base;
        let vb = page * params.v_stride.x + kvh * params.v_stride.y + tok * params.v_stride.z - params.v_base;

        // this lane's share of the block's dot products, key kk in component kk of each row's
        // vec4; then the whole scores, summed over the workgroup's lanes
        var key_ok: array<bool, KB>;
        var share: array<vec4<f32>, RB>;
        // @unroll
        for (var kk = 0u; kk < KB; kk++) {
            key_ok[kk] = u0 + kk < k_end;
            var dots: array<vec4<f32>, RB>;
            // @unroll
            for (var t = 0u; t < NV; t++) {
                let kx = load4_k(kb + kk * params.k_stride.z, col[t]);
                // @unroll
                for (var r = 0u; r < RB; r++) {
                    dots[r] += qreg[r * NV + t] * kx;
                }
            }
            // @unroll
            for (var r = 0u; r < RB; r++) {
                share[r][kk] = (dots[r].x + dots[r].y) + (dots[r].z + dots[r].w);
            }
        }
        var s: array<vec4<f32>, RB>;   // the block's scores, key kk in component kk
        // @unroll
        for (var r = 0u; r < RB; r++) {
            let dot4 = subgroupAdd(share[r]);
            // @unroll
            for (var kk = 0u; kk < KB; kk++) {
                s[r][kk] = decode_score(dot4[kk], k0 + kk, key_ok[kk], pos[r], cut[r], slope[r], win_l, win_r);
            }
        }

        // online softmax: one rescale per block
        var pr: array<vec4<f32>, RB>;
        // @unroll
        for (var r = 0u; r < RB; r++) {
            let st = softmax_step(m[r], l[r], s[r]);
            m[r] = st.m;
            l[r] = st.l;
            pr[r] = st.p;
            // @unroll
            for (var t = 0u; t < NV; t++) {
                acc[r * NV + t] *= st.alpha;
            }
        }

        // P·V on this lane's columns; rows of keys outside the range read as zero (a page pool's
        // unused tokens may hold anything, NaN included)
        // @unroll
        for (var kk = 0u; kk < KB; kk++) {
            // @unroll
            for (var t = 0u; t < NV; t++) {
                let vx = select(vec4<f32>(0.0), load4_v(vb + kk * params.v_stride.z, col[t]), key_ok[kk]);
                // @unroll
                for (var r = 0u; r < RB; r++) {
                    acc[r * NV + t] += pr[r][kk] * vx;
                }
            }
        }
    }

    // the partial state of each valid row: O = acc / l (each lane its columns), LSE (natural
    // log; −∞ when no key) by lane 0
    var neg_inf_bits = 0xff800000u;   // a var, so the constant evaluator never sees −∞
    let neg_inf = bitcast<f32>(neg_inf_bits);
    // @unroll
    for (var r = 0u; r < RB; r++) {
        if (rc * RB + r < params.rows_per_group) {
            let at = (prow0 + r) * params.n_parts + part;
            var inv = 0.0;
            var lse = neg_inf;
            if (l[r] > 0.0) {
                inv = 1.0 / l[r];
                lse = (m[r] + log2(l[r])) * LN2;
            }
            if (lane == 0u) {
                part_lse[at] = lse;
            }
            // @unroll
            for (var t = 0u; t < NV; t++) {
                let x = acc[r * NV + t] * inv;
                let e = at * params.head_dim + col[t];
                let d = params.head_dim;
                if (col[t] < d) { part_o[e] = x.x; }
                if (col[t] + 1u < d) { part_o[e + 1u] = x.y; }
                if (col[t] + 2u < d) { part_o[e + 2u] = x.z; }
                if (col[t] + 3u < d) { part_o[e + 3u] = x.w; }
            }
        }
    }
}
