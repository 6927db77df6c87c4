// flash_forward.wgsl: the fused attention forward, FlashAttention-2 style with tiles in workgroup
// memory ("tiled" family). O = softmax(scale·Q·Kᵀ [+ softcap, ALiBi, masks])·V and LSE, in one pass,
// never materialising Nq×Nk.
//
// Tensor layout (f32; element strides come in `params`, the head-dim stride is always 1):
//   Q, O  [B, Hq, Nq, D]      K, V  [B, Hkv, Nk, D]      LSE [B, Hq, Nq] (natural log)
//   aux   u32 [kv_lens (B) | ALiBi slopes as f32 bits (Hq) | block table: (first entry, count)
//         per list, entries (key block, bitmap offset), bitmaps] (see src/mask.rs: a list per (batch, head, query block) of key blocks to visit)
// With a split key range (n_splits > 1) O and LSE point at partial buffers; `merge.wgsl` combines
// them. The kernel itself does not know: it writes O/l and LSE at `*_stride_split · split`.
//
// Tiling: one workgroup owns BQ "packed" query rows of one (batch, kv head): packed row
// p ∈ [0, G·R) is query i = p mod R of head h = kv_head·G + p / R, so a K/V tile loaded once
// serves every query head of its GQA group. R (rows_per_head) is Nq when short queries are packed
// across heads, else Nq rounded up to BQ so that no tile straddles two heads (rows i ≥ Nq idle). Keys stream in tiles of BK through workgroup memory
// (K, then V in the same array); S and P tiles live in workgroup memory too.
// Workgroup size: BQ·TPR invocations; invocation (r, t) owns row r and the O columns
// dv ≡ t (mod TPR) (as vec4s), and scores c ≡ t (mod TPR) of each tile.
// Loops: the only loop with a run-time trip count is the key-tile loop (≤ tiles_per_split, which
// the host bounds below lavapipe's 65,535-iteration limit); every loop marked `@unroll` is unrolled
// by the host's template step (src/shader.rs).

const BQ: u32 = 16u; // @param query rows per workgroup
const BK: u32 = 16u; // @param keys per tile
const TPR: u32 = 4u; // @param invocations per query row
const DV: u32 = 16u; // @param padded head dim / 4 (a multiple of TPR)
const KPT: u32 = 4u; // @param BK / TPR: scores per invocation per tile
const OPT: u32 = 4u; // @param DV / TPR: O vec4s per invocation
const QLOADS: u32 = 4u; // @param ceil(BQ·DV / WG)
const KVLOADS: u32 = 4u; // @param ceil(BK·DV / WG)

const WG: u32 = BQ * TPR;
const LOG2E: f32 = 1.4426950408889634;
const LN2: f32 = 0.6931471805599453;
// Masked scores; anything at or below MASKED_CUT counts as masked.
const MASKED: f32 = -1.0e30;
const MASKED_CUT: f32 = -1.0e29;
// A table entry without a bitmap is a full block.
const NO_BITS: u32 = 0xffffffffu;

struct Params {
    q_len: u32,
    kv_len: u32,
    head_dim: u32,
    group: u32,
    rows_per_head: u32,    // Nq (heads packed into tiles) or Nq rounded up to BQ
    // chunk of (batch, kv head) pairs this dispatch covers
    batch0: u32,
    batches: u32,
    kv_head0: u32,
    kv_heads: u32,
    q_tile0: u32,          // first query tile of the chunk
    q_tiles: u32,          // query tiles in the chunk (of ceil(G·Nq / BQ) per head group)
    n_splits: u32,
    tiles_per_split: u32,
    grid_x: u32,
    causal: u32,           // 0 none, 1 top-left, 2 bottom-right
    use_alibi: u32,
    alibi_offset: u32,     // index of slope 0 in aux
    use_softcap: u32,
    scale: f32,
    softcap: f32,
    q_base: u32,           // element offset of the bound window start, subtracted from indices
    k_base: u32,
    v_base: u32,
    o_base: u32,
    lse_base: u32,
    wg_offset: u32,        // linear id of this dispatch's first workgroup
    use_table: u32,        // 1: visit the key blocks listed in the block table (aux)
    block_size: u32,       // block edge S of the table (a multiple of BQ and BK)
    table_batch: u32,      // 1 (broadcast) or B
    table_heads: u32,      // 1 (broadcast) or Hq
    q_blocks: u32,         // ceil(Nq / S)
    lists_offset: u32,     // aux index of the lists: (first entry, entry count) per list
    entries_offset: u32,   // aux index of the entries: (key block, bitmap offset or NO_BITS)
    bits_offset: u32,      // aux index of the partial blocks' bitmaps (S/32 words per row)
    _pad0: u32,
    _pad1: u32,
    q_stride: vec4<u32>,   // (batch, head, seq, -)
    k_stride: vec4<u32>,
    v_stride: vec4<u32>,
    o_stride: vec4<u32>,   // (batch, head, seq, split)
    lse_stride: vec4<u32>, // (batch, head, seq, split)
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> aux: array<u32>;
@group(0) @binding(5) var<storage, read_write> o: array<f32>;
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;

var<workgroup> q_tile: array<vec4<f32>, BQ * DV>;
var<workgroup> kv_tile: array<vec4<f32>, BK * DV>;
var<workgroup> s_tile: array<f32, BQ * BK>;
var<workgroup> p_tile: array<f32, BQ * BK>;

// Load 4 consecutive head-dim elements starting at d0 of row `base` (an element index), zero past D.
fn load4_q(base: u32, d0: u32) -> vec4<f32> {
    var r = vec4<f32>(0.0);
    let d = params.head_dim;
    if (d0 < d) { r.x = q[base + d0]; }
    if (d0 + 1u < d) { r.y = q[base + d0 + 1u]; }
    if (d0 + 2u < d) { r.z = q[base + d0 + 2u]; }
    if (d0 + 3u < d) { r.w = q[base + d0 + 3u]; }
    return r;
}

fn load4_k(base: u32, d0: u32) -> vec4<f32> {
    var r = vec4<f32>(0.0);
    let d = params.head_dim;
    if (d0 < d) { r.x = k[base + d0]; }
    if (d0 + 1u < d) { r.y = k[base + d0 + 1u]; }
    if (d0 + 2u < d) { r.z = k[base + d0 + 2u]; }
    if (d0 + 3u < d) { r.w = k[base + d0 + 3u]; }
    return r;
}

fn load4_v(base: u32, d0: u32) -> vec4<f32> {
    var r = vec4<f32>(0.0);
    let d = params.head_dim;
    if (d0 < d) { r.x = v[base + d0]; }
    if (d0 + 1u < d) { r.y = v[base + d0 + 1u]; }
    if (d0 + 2u < d) { r.z = v[base + d0 + 2u]; }
    if (d0 + 3u < d) { r.w = v[base + d0 + 3u]; }
    return r;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg_id: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    // ---- which (batch, kv head, query tile, key split) this workgroup owns
    let wid = params.wg_offset + wg_id.x + wg_id.y * params.grid_x;
    let total = params.batches * params.kv_heads * params.q_tiles * params.n_splits;
    if (wid >= total) {
        return;
    }
    let split = wid % params.n_splits;
    let rest = wid / params.n_splits;
    let q_tile_idx = params.q_tile0 + rest % params.q_tiles;
    let pair = rest / params.q_tiles;
    let kv_head = params.kv_head0 + pair % params.kv_heads;
    let batch = params.batch0 + pair / params.kv_heads;

    let q_len = params.q_len;
    let rph = params.rows_per_head;       // Nq, or Nq rounded up to BQ when heads are not packed
    let packed_rows = params.group * rph;
    let kv_len_b = aux[batch];            // keys at or past this are invisible
    var offset = 0i;                      // query i sees keys j <= i + offset (causal)
    if (params.causal == 2u) {
        offset = i32(kv_len_b) - i32(q_len);
    }

    // ---- this invocation's row
    let r = tid / TPR;
    let t = tid % TPR;
    let p0 = q_tile_idx * BQ;
    let my_p = p0 + r;
    let my_h = kv_head * params.group + min(my_p, packed_rows - 1u) / rph;
    let my_i = min(min(my_p, packed_rows - 1u) % rph, q_len - 1u);
    let row_valid = my_p < packed_rows && my_p % rph < q_len;
    var slope = 0.0;
    if (params.use_alibi != 0u) {
        slope = bitcast<f32>(aux[params.alibi_offset + my_h]);
    }

    // ---- the key range every row of the tile may need: [0, key_end)
    let p_last = min(p0 + BQ, packed_rows) - 1u;
    var i_min = min(p0 % rph, q_len - 1u);
    var i_max = min(p_last % rph, q_len - 1u);
    if (p0 / rph != p_last / rph) {       // the tile wraps into the next head
        i_min = 0u;
        i_max = q_len - 1u;
    }
    var key_end = kv_len_b;
    if (params.causal != 0u) {
        key_end = u32(clamp(i32(i_max) + offset + 1, 0, i32(kv_len_b)));
    }
    // ---- the key tiles to visit: [0, key_end) in tiles of BK, or the tiles of the listed blocks
    var n_tiles = (key_end + BK - 1u) / BK;
    var list_start = 0u;
    var sub_tiles = 1u;
    if (params.use_table != 0u) {
        // with a table no tile straddles two heads or two query blocks (BQ divides S and R)
        let tile_head = kv_head * params.group + p0 / rph;
        let q_block = (p0 % rph) / params.block_size;
        let tb = select(0u, batch, params.table_batch > 1u);
        let th = select(0u, tile_head, params.table_heads > 1u);
        let list = (tb * params.table_heads + th) * params.q_blocks + q_block;
        list_start = aux[params.lists_offset + 2u * list];
        sub_tiles = params.block_size / BK;
        n_tiles = aux[params.lists_offset + 2u * list + 1u] * sub_tiles;
    }
    let row_in_block = my_i % max(params.block_size, 1u);
    let tile_begin = min(split * params.tiles_per_split, n_tiles);
    let tile_end = min(tile_begin + params.tiles_per_split, n_tiles);

    // ---- Q tile, pre-scaled
    let q_elem = params.q_stride;
    // @unroll
    for (var qi = 0u; qi < QLOADS; qi++) {
        let e = qi * WG + tid;
        if (e < BQ * DV) {
            let row = e / DV;
            let dv = e % DV;
            let p = p0 + row;
            var val = vec4<f32>(0.0);
            if (p < packed_rows && p % rph < q_len) {
                let h = kv_head * params.group + p / rph;
                let i = p % rph;
                let base = batch * q_elem.x + h * q_elem.y + i * q_elem.z - params.q_base;
                val = load4_q(base, dv * 4u) * params.scale;
            }
            q_tile[e] = val;
        }
    }

    var m = MASKED;        // running max, log2 domain
    var l = 0.0;           // running sum of exp2(s - m)
    var acc: array<vec4<f32>, OPT>;
    // @unroll
    for (var oi = 0u; oi < OPT; oi++) {
        acc[oi] = vec4<f32>(0.0);
    }

    for (var tile = tile_begin; tile < tile_end; tile++) {
        var k0 = tile * BK;
        var bits_at = NO_BITS;
        if (params.use_table != 0u) {
            let entry = params.entries_offset + 2u * (list_start + tile / sub_tiles);
            k0 = aux[entry] * params.block_size + (tile % sub_tiles) * BK;
            bits_at = aux[entry + 1u];
        }
        // Element masking is needed only in partial blocks and where the tile crosses the key
        // end or the causal edge.
        let partial = bits_at != NO_BITS;
        let needs_mask = partial || k0 + BK > kv_len_b
            || (params.causal != 0u && i32(k0 + BK - 1u) > i32(i_min) + offset);

        // 1. K tile -> workgroup memory
        // @unroll
        for (var li = 0u; li < KVLOADS; li++) {
            let e = li * WG + tid;
            if (e < BK * DV) {
                let key = k0 + e / DV;
                var val = vec4<f32>(0.0);
                if (key < params.kv_len) {
                    let base = batch * params.k_stride.x + kv_head * params.k_stride.y
                        + key * params.k_stride.z - params.k_base;
                    val = load4_k(base, (e % DV) * 4u);
                }
                kv_tile[e] = val;
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
            var s = dot4.x + dot4.y + dot4.z + dot4.w;
            if (params.use_softcap != 0u) {
                s = params.softcap * tanh(s / params.softcap);
            }
            let key = k0 + c;
            if (params.use_alibi != 0u) {
                s -= slope * abs(f32(i32(my_i) + i32(kv_len_b) - i32(q_len) - i32(key)));
            }
            s *= LOG2E;
            if (needs_mask) {
                var visible = key < kv_len_b;
                if (params.causal != 0u) {
                    visible = visible && i32(key) <= i32(my_i) + offset;
                }
                if (partial) {
                    let col = key % params.block_size;
                    let word = aux[params.bits_offset + bits_at
                        + row_in_block * (params.block_size / 32u) + col / 32u];
                    visible = visible && ((word >> (col % 32u)) & 1u) == 1u;
                }
                s = select(MASKED, s, visible);
            }
            s_tile[r * BK + c] = s;
        }
        workgroupBarrier();

        // 3. V tile -> workgroup memory (K is no longer read), and P = exp2(S - m_new)
        // @unroll
        for (var li = 0u; li < KVLOADS; li++) {
            let e = li * WG + tid;
            if (e < BK * DV) {
                let key = k0 + e / DV;
                var val = vec4<f32>(0.0);
                if (key < params.kv_len) {
                    let base = batch * params.v_stride.x + kv_head * params.v_stride.y
                        + key * params.v_stride.z - params.v_base;
                    val = load4_v(base, (e % DV) * 4u);
                }
                kv_tile[e] = val;
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
    if (!row_valid) {
        return;
    }
    var inv_l = 0.0;
    if (l > 0.0) {
        inv_l = 1.0 / l;
    }
    let ob = batch * params.o_stride.x + my_h * params.o_stride.y + my_i * params.o_stride.z
        + split * params.o_stride.w - params.o_base;
    // @unroll
    for (var oi = 0u; oi < OPT; oi++) {
        let d0 = (oi * TPR + t) * 4u;
        let val = acc[oi] * inv_l;
        if (d0 < params.head_dim) { o[ob + d0] = val.x; }
        if (d0 + 1u < params.head_dim) { o[ob + d0 + 1u] = val.y; }
        if (d0 + 2u < params.head_dim) { o[ob + d0 + 2u] = val.z; }
        if (d0 + 3u < params.head_dim) { o[ob + d0 + 3u] = val.w; }
    }
    if (t == 0u) {
        var neg_inf_bits = 0xff800000u;   // a var, so the constant evaluator never sees −∞
        var row_lse = bitcast<f32>(neg_inf_bits);
        if (l > 0.0) {
            row_lse = (m + log2(l)) * LN2;
        }
        let lb = batch * params.lse_stride.x + my_h * params.lse_stride.y
            + my_i * params.lse_stride.z + split * params.lse_stride.w - params.lse_base;
        lse[lb] = row_lse;
    }
}
