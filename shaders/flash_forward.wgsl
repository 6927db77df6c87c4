// flash_forward.wgsl: the fused attention forward, FlashAttention-2 style with tiles in workgroup
// memory (the "tiled" family, right for discrete GPUs). O = softmax(scale·Q·Kᵀ [+ softcap, ALiBi,
// masks])·V and LSE, in one pass, never materialising Nq×Nk. Tensor layouts, the row packing and
// the block table: attention_common.wgsl.
//
// Tiling: a workgroup owns BQ packed query rows (Q tile in workgroup memory, pre-scaled); keys
// stream in tiles of BK through workgroup memory (K, then V in the same array); S and P tiles live
// in workgroup memory too. Workgroup size: BQ·TPR invocations; invocation (r, t) owns row r, the O
// columns dv ≡ t (mod TPR) (as vec4s), and scores c ≡ t (mod TPR) of each tile.
// Loops: the only loop with a run-time trip count is the key-tile loop (≤ tiles_per_split, which
// the host bounds below lavapipe's 65,535-iteration limit); every loop marked `@unroll` is unrolled
// by the host's template step (src/shader.rs).

const BQ: u32 = 16u; // @param query rows per workgroup
const BK: u32 = 16u; // @param keys per tile
const TPR: u32 = 4u; // @param invocations per query row
const DV: u32 = 16u; // @param compiled head dim (a multiple of 32, ≥ the call's) / 4
const KPT: u32 = 4u; // @param BK / TPR: scores per invocation per tile
const OPT: u32 = 4u; // @param DV / TPR: O vec4s per invocation
const QLOADS: u32 = 4u; // @param ceil(BQ·DV / WG)
const KVLOADS: u32 = 4u; // @param ceil(BK·DV / WG)
const VEC4: u32 = 0u; // @param 1: K and V bound as vec4s (head dim, strides, bases multiples of 4)
const SOFTCAP: u32 = 0u; // @param 1: the call soft-caps logits
const ALIBI: u32 = 0u; // @param 1: the call adds ALiBi biases
const BITS: u32 = 0u; // @param 1: the block table has partial blocks (bitmaps to test)
const QKV_TYPE: u32 = 0u; // @param element type of Q, K and V: 0 f32, 1 f16, 2 bf16 (half.wgsl)
const O_TYPE: u32 = 0u; // @param element type of O: 0 f32, 1 f16, 2 bf16

const WG: u32 = BQ * TPR;

// @include attention_common.wgsl

var<workgroup> q_tile: array<vec4<f32>, BQ * DV>;
var<workgroup> kv_tile: array<vec4<f32>, BK * DV>;
var<workgroup> s_tile: array<f32, BQ * BK>;
var<workgroup> p_tile: array<f32, BQ * BK>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg_id: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let wid = params.wg_offset + wg_id.x + wg_id.y * params.grid_x;
    if (wid >= params.batches * params.kv_heads * params.q_tiles * params.n_splits) {
        return;
    }
    let tile = tile_of(wid, BQ, BK);
    let r = tid / TPR;
    let t = tid % TPR;
    let row = row_of(tile, tile.p0 + r);

    // ---- Q tile, pre-scaled
    // @unroll
    for (var qi = 0u; qi < QLOADS; qi++) {
        let e = qi * WG + tid;
        if (e < BQ * DV) {
            q_tile[e] = load_q4(tile, row_of(tile, tile.p0 + e / DV), (e % DV) * 4u);
        }
    }

    var m = MASKED;        // running max, log2 domain
    var l = 0.0;           // running sum of exp2(s - m)
    var acc: array<vec4<f32>, OPT>;
    // @unroll
    for (var oi = 0u; oi < OPT; oi++) {
        acc[oi] = vec4<f32>(0.0);
    }

    for (var kt = tile.tile_begin; kt < tile.tile_end; kt++) {
        let kb = key_tile(tile, kt, BK);
        let k0 = kb.x;
        let bits_at = kb.y;
        let needs_mask = tile_needs_mask(tile, k0, bits_at, BK);

        // 1. K tile -> workgroup memory
        // @unroll
        for (var li = 0u; li < KVLOADS; li++) {
            let e = li * WG + tid;
            if (e < BK * DV) {
                kv_tile[e] = load_k4(tile, k0 + e / DV, (e % DV) * 4u);
            }
        }
        workgroupBarrier();

        // 2. S = Q·Kᵀ for this invocation's scores, then softcap, ALiBi, mask; log2 domain
        // @unroll
        for (var cc = 0u; cc < KPT; cc++) {
            let c = cc * TPR + t;
            var dot4 = vec4<f32>(0.0);
            // @unroll
            for (var dv = 0u; dv < DV; dv++) {
                dot4 = fma(q_tile[r * DV + dv], kv_tile[c * DV + dv], dot4);
            }
            let dot = dot4.x + dot4.y + dot4.z + dot4.w;
            s_tile[r * BK + c] = masked_score(tile, row, dot, k0 + c, needs_mask, bits_at);
        }
        workgroupBarrier();

        // 3. V tile -> workgroup memory (K is no longer read), and P = exp2(S - m_new)
        // @unroll
        for (var li = 0u; li < KVLOADS; li++) {
            let e = li * WG + tid;
            if (e < BK * DV) {
                kv_tile[e] = load_v4(tile, k0 + e / DV, (e % DV) * 4u);
            }
        }
        var m_tile = MASKED;
        // @unroll
        for (var c = 0u; c < BK; c++) {
            m_tile = max(m_tile, s_tile[r * BK + c]);
        }
        let m_new = max(m, m_tile);
        let any_visible = m_new > MASKED_CUT;
        // @unroll
        for (var cc = 0u; cc < KPT; cc++) {
            let c = cc * TPR + t;
            let s = s_tile[r * BK + c];
            p_tile[r * BK + c] = select(0.0, exp2(s - m_new), any_visible && s > MASKED_CUT);
        }
        workgroupBarrier();

        // 4. rescale and accumulate: l = l·α + Σp, O = O·α + P·V
        let alpha = select(1.0, exp2(m - m_new), any_visible);
        m = m_new;
        var p_sum = 0.0;
        // @unroll
        for (var oi = 0u; oi < OPT; oi++) {
            acc[oi] *= alpha;
        }
        // @unroll
        for (var c = 0u; c < BK; c++) {
            let p = p_tile[r * BK + c];
            p_sum += p;
            // @unroll
            for (var oi = 0u; oi < OPT; oi++) {
                acc[oi] = fma(vec4<f32>(p), kv_tile[c * DV + oi * TPR + t], acc[oi]);
            }
        }
        l = l * alpha + p_sum;
        workgroupBarrier();
    }

    // ---- write O / l and LSE (0 and −∞ for a row that saw no key)
    if (!row.valid) {
        return;
    }
    let inv_l = select(0.0, 1.0 / l, l > 0.0);
    // @unroll
    for (var oi = 0u; oi < OPT; oi++) {
        store_o4(tile, row, (oi * TPR + t) * 4u, acc[oi] * inv_l);
    }
    if (t == 0u) {
        store_lse(tile, row, m, l);
    }
}
