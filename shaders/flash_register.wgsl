// flash_register.wgsl: the fused attention forward with everything in registers (the "register"
// family, fast where workgroup memory is slow, e.g. lavapipe: see docs/LAVAPIPE.md). Same
// problem, layouts, row packing and block table as flash_forward.wgsl (attention_common.wgsl).
//
// Each invocation owns R query rows: Q (pre-scaled), the O accumulators, m and l live in private
// arrays indexed by constants only (every inner loop is unrolled), so they stay in registers.
// Keys stream in blocks of KB: with SUBGROUPS, lane j < KB of each subgroup loads key row k0 + j as
// DV vec4s and `subgroupBroadcast(x, const lane)` hands it to the other lanes (KB is at most the
// adapter's smallest subgroup size, so every subgroup size from 4 to 128 works; lanes ≥ KB only
// consume); without subgroups every invocation loads the KB rows itself. Online softmax in exp2;
// no workgroup memory, no barriers. Workgroup size WG (8, or 16 where subgroups have 16 lanes:
// llvmpipe at 512 bits); a workgroup owns BQ = WG·R packed rows,
// invocation t rows p0 + t + r·WG. Loops: only the key-block loop runs a run-time count
// (≤ tiles_per_split, bounded by the host); `@unroll` loops are unrolled by src/shader.rs.
//
// Written for CPU adapters (llvmpipe; measured in docs/LAVAPIPE.md): an `if` runs both sides
// under a lane mask there, so options a call does not use are compiled out (VEC4, SOFTCAP, ALIBI,
// BITS: one pipeline per combination) and masks are branch-free selects; fma() is a multiply and
// an add, so loops are ordered for few live accumulators; a storage load is a per-lane loop, so K
// and V loads are spread among the arithmetic (V during the scores, the next K during P·V).

const R: u32 = 4u; // @param query rows per invocation
const KB: u32 = 8u; // @param keys per block (at most the smallest subgroup size)
const KP: u32 = 1u; // @param keys whose scores are computed together (divides KB)
const KG: u32 = 8u; // @param KB / KP
const DV: u32 = 16u; // @param compiled head dim (a multiple of 32, ≥ the call's) / 4
const WG: u32 = 8u; // @param invocations per workgroup
const SUBGROUPS: u32 = 1u; // @param 1: share K/V rows by subgroup broadcast, 0: load per invocation
const VEC4: u32 = 0u; // @param 1: K and V bound as vec4s (head dim, strides, bases multiples of 4)
const SOFTCAP: u32 = 0u; // @param 1: the call soft-caps logits
const ALIBI: u32 = 0u; // @param 1: the call adds ALiBi biases
const RH: u32 = 4u; // @param rows whose O accumulators P·V updates together (divides R)
const RHS: u32 = 1u; // @param R / RH
const VPK: u32 = 2u; // @param ceil(DV / KB): V vec4s each key step of the scores loads
const BITS: u32 = 0u; // @param 1: the block table has partial blocks (bitmaps to test)
const QKV_TYPE: u32 = 0u; // @param element type of Q, K and V: 0 f32, 1 f16, 2 bf16 (half.wgsl)
const O_TYPE: u32 = 0u; // @param element type of O: 0 f32, 1 f16, 2 bf16

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
    // Software pipelining: loads (a per-lane loop on CPU adapters) are spread among the arithmetic
    // so that they overlap with it: the V rows of a block load during its scores, the K rows of
    // the next block during its P·V.
    let my_key = min(lane, KB - 1u);      // the key row of each block this lane loads
    var k_row: array<vec4<f32>, DV>;
    var v_row: array<vec4<f32>, DV>;
    if (tile.tile_begin < tile.tile_end) {
        let first = key_tile(tile, tile.tile_begin, KB).x;
        // @unroll
        for (var dv = 0u; dv < DV; dv++) {
            k_row[dv] = key4(tile, first + my_key, dv);
        }
    }
// @endif
    var s: array<f32, R * KB>;            // scores, then probabilities, of the block
    var rescale: array<f32, R>;           // exp2(m_old − m_new) of each row, for O

    for (var kt = tile.tile_begin; kt < tile.tile_end; kt++) {
        let kb = key_tile(tile, kt, KB);
        let k0 = kb.x;
        let bits_at = kb.y;
// @if SUBGROUPS
        let next_k0 = key_tile(tile, min(kt + 1u, tile.tile_end - 1u), KB).x;
// @endif

        // 1. scores of the R rows against the KB keys, KP keys at a time: for each head-dim
        // vec4, the KP keys' vec4s (broadcast from their lanes, or loaded) and each row's query
        // vec4 (read once for KP keys) give R·KP dot products that accumulate as scalars
        // (independent chains). KP > 1 pays where registers hold the KP key vec4s (AVX-512's
        // 32 at 16 lanes: docs/LAVAPIPE.md).
        // @unroll
        for (var kg = 0u; kg < KG; kg++) {
            var dots: array<f32, R * KP>;
            // @unroll
            for (var r = 0u; r < R; r++) {
                // @unroll
                for (var kp = 0u; kp < KP; kp++) {
                    dots[r * KP + kp] = 0.0;
                }
            }
            // @unroll
            for (var dv = 0u; dv < DV; dv++) {
                var kv: array<vec4<f32>, KP>;
                // @unroll
                for (var kp = 0u; kp < KP; kp++) {
// @if SUBGROUPS
                    kv[kp] = subgroupBroadcast(k_row[dv], kg * KP + kp);
// @else
                    kv[kp] = key4(tile, k0 + kg * KP + kp, dv);
// @endif
                }
                // @unroll
                for (var r = 0u; r < R; r++) {
                    let q = qreg[r * DV + dv];
                    // @unroll
                    for (var kp = 0u; kp < KP; kp++) {
                        // a short dependency chain per element: (x + y) + (z + w), then one add
                        let t = q * kv[kp];
                        dots[r * KP + kp] += (t.x + t.y) + (t.z + t.w);
                    }
                }
            }
            // @unroll
            for (var kp = 0u; kp < KP; kp++) {
                const kk = kg * KP + kp;
                // @unroll
                for (var r = 0u; r < R; r++) {
                    s[r * KB + kk] = score(tile, rows[r], dots[r * KP + kp], k0 + kk);
                }
// @if SUBGROUPS
                // this block's V rows, VPK vec4s per key
                // @unroll
                for (var j = 0u; j < VPK; j++) {
                    if (kk * VPK + j < DV) {
                        const dv = min(kk * VPK + j, DV - 1u);
                        v_row[dv] = value4(tile, k0 + my_key, dv);
                    }
                }
// @endif
            }
        }

        // masks, branch-free (a uniform `if (needs_mask)` would not skip the work on CPU adapters)
        // @unroll
        for (var r = 0u; r < R; r++) {
            // @unroll
            for (var kk = 0u; kk < KB; kk++) {
                s[r * KB + kk] = select(MASKED, s[r * KB + kk], visible(tile, rows[r], k0 + kk, bits_at));
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
            rescale[r] = alpha;           // applied to O in the P·V loop below (no extra pass)
        }

        // 3. O += P·V. Each O vec4 column dv in turn, for RH rows at a time: their accumulators
        // stay in registers over the whole key block (one load and store per KB keys), each
        // value vec4 (broadcast from lane kk, or loaded) serving the RH rows.
        // @unroll
        for (var dv = 0u; dv < DV; dv++) {
            // @unroll
            for (var rh = 0u; rh < RHS; rh++) {
                var a: array<vec4<f32>, RH>;
                // @unroll
                for (var ri = 0u; ri < RH; ri++) {
                    a[ri] = acc[(rh * RH + ri) * DV + dv] * rescale[rh * RH + ri];
                }
                // @unroll
                for (var kk = 0u; kk < KB; kk++) {
// @if SUBGROUPS
                    let vv = subgroupBroadcast(v_row[dv], kk);
// @else
                    let vv = value4(tile, k0 + kk, dv);
// @endif
                    // @unroll
                    for (var ri = 0u; ri < RH; ri++) {
                        a[ri] = fma(vec4<f32>(s[(rh * RH + ri) * KB + kk]), vv, a[ri]);
                    }
                }
                // @unroll
                for (var ri = 0u; ri < RH; ri++) {
                    acc[(rh * RH + ri) * DV + dv] = a[ri];
                }
            }
// @if SUBGROUPS
            // the next block's K row (the last block reloads its own, unused)
            k_row[dv] = key4(tile, next_k0 + my_key, dv);
// @endif
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
