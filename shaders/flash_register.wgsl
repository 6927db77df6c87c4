// flash_register.wgsl: the fused attention forward with everything in registers (the "register"
// family, fast where workgroup memory is slow, e.g. lavapipe: see ../shared/LAVAPIPE.md). Same
// problem, layouts, row packing and block table as flash_forward.wgsl (attention_common.wgsl).
//
// Each invocation owns R query rows: Q (pre-scaled), the O accumulators, m and l live in private
// arrays indexed by constants only (every inner loop is unrolled), so they stay in registers.
// Keys stream in blocks of KB: with SUBGROUPS, lane j < KB of each subgroup loads key row k0 + j as
// DV vec4s and `subgroupBroadcast(x, const lane)` hands it to the other lanes (KB is at most the
// adapter's smallest subgroup size, so every subgroup size from 4 to 128 works; lanes ≥ KB only
// consume); without subgroups every invocation loads the KB rows itself. Online softmax in exp2;
// no workgroup memory, no barriers. Workgroup size WG; a workgroup owns BQ = WG·R packed rows,
// invocation t rows p0 + t + r·WG. Loops: only the key-block loop runs a run-time count
// (≤ tiles_per_split, bounded by the host); `@unroll` loops are unrolled by src/shader.rs.

const R: u32 = 4u; // @param query rows per invocation
const KB: u32 = 8u; // @param keys per block (at most the smallest subgroup size)
const DV: u32 = 16u; // @param head dim rounded up to 4, / 4
const WG: u32 = 8u; // @param invocations per workgroup
const SUBGROUPS: u32 = 1u; // @param 1: share K/V rows by subgroup broadcast, 0: load per invocation

const BQ: u32 = WG * R;

// @include attention_common.wgsl

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wg_id: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
// @if SUBGROUPS
    @builtin(subgroup_invocation_id) lane: u32,
// @endif
) {
    let wid = params.wg_offset + wg_id.x + wg_id.y * params.grid_x;
    if (wid >= params.batches * params.kv_heads * params.q_tiles * params.n_splits) {
        return;
    }
    let tile = tile_of(wid, BQ, KB);

    var rows: array<Row, R>;
    var qreg: array<vec4<f32>, R * DV>;   // pre-scaled query rows
    var acc: array<vec4<f32>, R * DV>;    // O accumulators
    var m: array<f32, R>;                 // running max, log2 domain
    var l: array<f32, R>;                 // running sum of exp2(s - m)
    // @unroll
    for (var r = 0u; r < R; r++) {
        rows[r] = row_of(tile, tile.p0 + tid + r * WG);
        m[r] = MASKED;
        l[r] = 0.0;
        // @unroll
        for (var dv = 0u; dv < DV; dv++) {
            qreg[r * DV + dv] = load_q4(tile, rows[r], dv * 4u);
            acc[r * DV + dv] = vec4<f32>(0.0);
        }
    }

// @if SUBGROUPS
    let my_key = min(lane, KB - 1u);      // the key row of the block this lane loads
    var kv_row: array<vec4<f32>, DV>;
// @endif
    var s: array<f32, R * KB>;            // scores, then probabilities, of the block

    for (var kt = tile.tile_begin; kt < tile.tile_end; kt++) {
        let kb = key_tile(tile, kt, KB);
        let k0 = kb.x;
        let bits_at = kb.y;
        let needs_mask = tile_needs_mask(tile, k0, bits_at, KB);

        // 1. scores of the R rows against the KB keys
// @if SUBGROUPS
        // @unroll
        for (var dv = 0u; dv < DV; dv++) {
            kv_row[dv] = load_k4(tile, k0 + my_key, dv * 4u);
        }
// @endif
        // @unroll
        for (var kk = 0u; kk < KB; kk++) {
            var dots: array<vec4<f32>, R>;
            // @unroll
            for (var r = 0u; r < R; r++) {
                dots[r] = vec4<f32>(0.0);
            }
            // @unroll
            for (var dv = 0u; dv < DV; dv++) {
// @if SUBGROUPS
                let kv = subgroupBroadcast(kv_row[dv], kk);
// @else
                let kv = load_k4(tile, k0 + kk, dv * 4u);
// @endif
                // @unroll
                for (var r = 0u; r < R; r++) {
                    dots[r] = fma(qreg[r * DV + dv], kv, dots[r]);
                }
            }
            // @unroll
            for (var r = 0u; r < R; r++) {
                let dot = dots[r].x + dots[r].y + dots[r].z + dots[r].w;
                s[r * KB + kk] = score(tile, rows[r], dot, k0 + kk, needs_mask, bits_at);
            }
        }

        // 2. online softmax: rescale O and l, turn scores into probabilities
        // @unroll
        for (var r = 0u; r < R; r++) {
            var m_blk = MASKED;
            // @unroll
            for (var kk = 0u; kk < KB; kk++) {
                m_blk = max(m_blk, s[r * KB + kk]);
            }
            let m_new = max(m[r], m_blk);
            let any_visible = m_new > MASKED_CUT;
            let alpha = select(1.0, exp2(m[r] - m_new), any_visible);
            m[r] = m_new;
            var p_sum = 0.0;
            // @unroll
            for (var kk = 0u; kk < KB; kk++) {
                let sc = s[r * KB + kk];
                let p = select(0.0, exp2(sc - m_new), any_visible && sc > MASKED_CUT);
                s[r * KB + kk] = p;
                p_sum += p;
            }
            l[r] = l[r] * alpha + p_sum;
            // @unroll
            for (var dv = 0u; dv < DV; dv++) {
                acc[r * DV + dv] *= alpha;
            }
        }

        // 3. O += P·V
// @if SUBGROUPS
        // @unroll
        for (var dv = 0u; dv < DV; dv++) {
            kv_row[dv] = load_v4(tile, k0 + my_key, dv * 4u);
        }
// @endif
        // @unroll
        for (var kk = 0u; kk < KB; kk++) {
            // @unroll
            for (var dv = 0u; dv < DV; dv++) {
// @if SUBGROUPS
                let vv = subgroupBroadcast(kv_row[dv], kk);
// @else
                let vv = load_v4(tile, k0 + kk, dv * 4u);
// @endif
                // @unroll
                for (var r = 0u; r < R; r++) {
                    acc[r * DV + dv] = fma(vec4<f32>(s[r * KB + kk]), vv, acc[r * DV + dv]);
                }
            }
        }
    }

    // ---- write O / l and LSE (0 and −∞ for a row that saw no key)
    // @unroll
    for (var r = 0u; r < R; r++) {
        if (rows[r].valid) {
            let inv_l = select(0.0, 1.0 / l[r], l[r] > 0.0);
            // @unroll
            for (var dv = 0u; dv < DV; dv++) {
                store_o4(tile, rows[r], dv * 4u, acc[r * DV + dv] * inv_l);
            }
            store_lse(tile, rows[r], m[r], l[r]);
        }
    }
}
