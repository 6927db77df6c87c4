// decode.wgsl: attention for short queries (Nq ≤ 16) against a long K/V cache, FlashDecoding
// style: the cache is cut into many key ranges ("parts"), each reduced by one invocation to a
// partial state (O, LSE) of its rows; merge.wgsl combines the parts exactly by log-sum-exp.
// This is the CPU adapters' kernel (an invocation is a SIMD lane there, streaming its own key
// range); decode_split_d.wgsl does the same work with the head dim split across a subgroup's
// lanes, for GPUs (and on CPU adapters where a K/V head has more rows than one invocation holds).
//
// Tensor layout (Q, K, V of QKV_TYPE: f32, f16 or bf16 (half.wgsl); partials f32; element strides
// in `params`, the head-dim stride always 1):
//   Q        [B, Hq, Nq, D] by q_stride (batch, head, query)
//   K, V     pages [pages, Hkv, P, D] by k_stride / v_stride (page, kv head, token in page): key j
//            of sequence b is token j mod P of page table[b·table_stride + j / P]. A contiguous
//            cache [B, Hkv, Nk, D] is the case of one page per sequence (P = Nk, table[b] = b).
//   aux     u32 [key lengths (B) | ALiBi slopes as f32 bits (Hq) | page table | per slab: (list
//            start, run length) per sequence, then lists of the sequence's logical pages held in
//            that slab, in order]
//   part_o   [rows, n_parts, D], part_lse [rows, n_parts] (natural log; −∞: the part saw no key),
//            rows (batch − part_batch0, kv head, packed row p = (h − kv_head·G)·Nq + i): the
//            layout merge.wgsl reads.
// Rows: the G·Nq query rows of one (batch, kv head) share its K/V (GQA packed), RB of them per
// invocation, so each K/V row is read once per RB rows.
// Tiling: no workgroup memory, no barriers. Invocation = (batch, kv head, row chunk, part); a
// part is keys [part·L, part·L + L) of its sequence, streamed in blocks of KB keys with an
// online softmax (exp2 domain); Q, the O accumulators, m and l live in private arrays indexed by
// constants only (`@unroll` loops, unrolled by src/shader.rs). Workgroup size WG (64) along
// parts. Loops: only the key-block loop runs a run-time count (≤ L / KB, bounded by the host:
// lavapipe stops a loop after 65,535 iterations).
// A dispatch covers parts part0 .. part0 + parts of batches batch0 .. and kv heads kv_head0 ..
// of one slab of pages: each sequence's pages in the slab, listed in key order,
// form a run of keys that the parts cut into ranges of L (so a pool in several slabs costs no
// extra work: each dispatch visits only its own pages); a contiguous cache is one slab, one page
// per sequence, and may be cut further to [key_lo, key_hi) (the bound window of a cache too
// large for one binding). With `resume` a part starts from the state the previous slab's
// dispatch stored for it (states merge exactly, whatever keys they saw).

const RB: u32 = 4u; // @param query rows per invocation
const DV: u32 = 32u; // @param compiled head dim / 4 (a multiple of 8, ≥ the call's)
const WG: u32 = 64u; // @param invocations per workgroup
const VEC4: u32 = 1u; // @param 1: Q, K, V bound as vec4s (head dim, strides, bases multiples of 4)
const SOFTCAP: u32 = 0u; // @param 1: the call soft-caps logits
const ALIBI: u32 = 0u; // @param 1: the call adds ALiBi biases
const QKV_TYPE: u32 = 0u; // @param element type of Q, K and V: 0 f32, 1 f16, 2 bf16 (half.wgsl)

const KB: u32 = 4u; // @param keys per block: 4, one vec4 of scores (page sizes are multiples of it)
// Params, bindings, loads, decode_score
// @include decode_common.wgsl

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg_id: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    // linear workgroup id -> (batch, kv head, row chunk, group of WG parts), parts fastest
    let wid = params.wg_offset + wg_id.x + wg_id.y * params.grid_x;
    let pg = wid % params.part_groups;
    let rest = wid / params.part_groups;
    let rc = rest % params.row_chunks;
    let pair = rest / params.row_chunks;
    if (pair >= params.batches * params.kv_heads) {
        return;   // past the grid's last workgroup
    }
    let b = params.batch0 + pair / params.kv_heads;
    let kvh = params.kv_head0 + pair % params.kv_heads;
    let local_part = pg * WG + tid;
    if (local_part >= params.parts) {
        return;
    }
    let part = params.part0 + local_part;

    let len_b = aux[b];
    // the keys this dispatch sees of sequence b: its pages in this slab, in key order, as one
    // run of `run_len` "slab keys"; slab key u is key list[u / P]·P + u mod P
    let list_at = aux[params.list_offset + 2u * b];
    let run_len = aux[params.list_offset + 2u * b + 1u];
    let k_start = max(part * params.keys_per_part, params.key_lo);
    let k_end = min(min(part * params.keys_per_part + params.keys_per_part, run_len), params.key_hi);

    // the invocation's rows: packed row p = rc·RB + r is query i = p mod Nq of head kvh·G + p / Nq
    var qreg: array<vec4<f32>, RB * DV>;   // query rows pre-scaled by q_scale
    var acc: array<vec4<f32>, RB * DV>;    // O accumulators
    var m: array<f32, RB>;                 // running max, log2 domain
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
        for (var dv = 0u; dv < DV; dv++) {
            qreg[r * DV + dv] = load4_q(qb, dv * 4u) * q_scale;
            acc[r * DV + dv] = vec4<f32>(0.0);
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
                for (var dv = 0u; dv < DV; dv++) {
                    let e = at * params.head_dim + dv * 4u;
                    let x = vec4<f32>(part_o[e], part_o[e + 1u], part_o[e + 2u], part_o[e + 3u]);
                    acc[r * DV + dv] = select(vec4<f32>(0.0), x, vec4<u32>(dv * 4u) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(params.head_dim));
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

        // scores of the block's keys for every row
        var s: array<vec4<f32>, RB>;   // the block's scores, key kk in component kk
        var key_ok: array<bool, KB>;
        // @unroll
        for (var kk = 0u; kk < KB; kk++) {
            let j = k0 + kk;
            key_ok[kk] = u0 + kk < k_end;
            var dots: array<vec4<f32>, RB>;
            // @unroll
            for (var dv = 0u; dv < DV; dv++) {
                let kx = load4_k(kb + kk * params.k_stride.z, dv * 4u);
                // @unroll
                for (var r = 0u; r < RB; r++) {
                    dots[r] += qreg[r * DV + dv] * kx;
                }
            }
            // @unroll
            for (var r = 0u; r < RB; r++) {
                let x = dots[r].x + dots[r].y + dots[r].z + dots[r].w;
                s[r][kk] = decode_score(x, j, key_ok[kk], pos[r], cut[r], slope[r], win_l, win_r);
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
            for (var dv = 0u; dv < DV; dv++) {
                acc[r * DV + dv] *= st.alpha;
            }
        }

        // P·V; rows of keys outside the range read as zero (a page pool's unused tokens may hold
        // anything, NaN included)
        // @unroll
        for (var kk = 0u; kk < KB; kk++) {
            // @unroll
            for (var dv = 0u; dv < DV; dv++) {
                let vx = select(vec4<f32>(0.0), load4_v(vb + kk * params.v_stride.z, dv * 4u), key_ok[kk]);
                // @unroll
                for (var r = 0u; r < RB; r++) {
                    acc[r * DV + dv] += pr[r][kk] * vx;
                }
            }
        }
    }

    // the partial state of each valid row: O = acc / l, LSE (natural log; −∞ when no key)
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
            part_lse[at] = lse;
            // @unroll
            for (var dv = 0u; dv < DV; dv++) {
                let x = acc[r * DV + dv] * inv;
                let e = at * params.head_dim + dv * 4u;
                let d = params.head_dim;
                if (dv * 4u < d) { part_o[e] = x.x; }
                if (dv * 4u + 1u < d) { part_o[e + 1u] = x.y; }
                if (dv * 4u + 2u < d) { part_o[e + 2u] = x.z; }
                if (dv * 4u + 3u < d) { part_o[e + 3u] = x.w; }
            }
        }
    }
}
