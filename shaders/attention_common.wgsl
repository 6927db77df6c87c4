// attention_common.wgsl: what every fused-forward family shares, included by the kernels with
// `// @include attention_common.wgsl` (src/shader.rs): the uniform `Params`, the bindings, loads,
// and the functions that map a workgroup to its work, walk its key tiles (a contiguous range, or
// the block table's list) and form masked scores. Kept in one place so that every family sees
// exactly the same problem.
//
// Tensor layout (Q, K, V of QKV_TYPE, O of O_TYPE: f32, f16 or bf16 (half.wgsl); LSE f32; element
// strides come in `params`, the head-dim stride is always 1):
//   Q, O  [B, Hq, Nq, D]      K, V  [B, Hkv, Nk, D]      LSE [B, Hq, Nq] (natural log)
//   aux   u32 [kv_lens (B) | ALiBi slopes as f32 bits (Hq) | block table: (first entry, count)
//         per list, entries (key block, bitmap offset), bitmaps] (see src/mask.rs)
// With a split key range (n_splits > 1) O and LSE point at partial buffers; `merge.wgsl` combines
// them. A kernel does not know: it writes O/l and LSE at `*_stride.w · split`. A dispatch may run
// only some splits (split0 ..): when K/V are too large for one binding, each split binds just the
// window of its key range (k_base, v_base; keys are only read inside the split's range).
// Rows: a workgroup owns BQ "packed" query rows of one (batch, kv head): packed row
// p ∈ [0, G·R) is query i = p mod R of head h = kv_head·G + p / R, so a K/V tile loaded once
// serves every query head of its GQA group. R (rows_per_head) is Nq when short queries are packed
// across heads, else Nq rounded up to BQ so that no tile straddles two heads (rows i ≥ Nq idle).
// Tiling and workgroup size are the including kernel's (tile_of and key_tile take BQ and BK):
//   flash_forward.wgsl   BQ rows × BK-key tiles in workgroup memory, BQ·TPR invocations
//   flash_register.wgsl  BQ = WG·R rows in registers, KB-key blocks, WG invocations (8 or 16)
// Workgroups are numbered linearly (wg_offset + x + y·grid_x) over a 1D or 2D grid: one per
// (batch, kv head, query tile, split) of the dispatch's chunk.

const LOG2E: f32 = 1.4426950408889634;
const LN2: f32 = 0.6931471805599453;
// Masked scores; anything at or below MASKED_CUT counts as masked.
const MASKED: f32 = -1.0e30;
const MASKED_CUT: f32 = -1.0e29;
// A table entry without a bitmap is a full block.
const NO_BITS: u32 = 0xffffffffu;

// soft_cap, alibi_bias, causal_offset, key_visible: the score terms every kernel shares
// @include score_terms.wgsl

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
    n_splits: u32,         // key splits this dispatch runs: split0 .. split0 + n_splits
    tiles_per_split: u32,
    grid_x: u32,
    causal: u32,           // 0 none, 1 top-left, 2 bottom-right
    alibi_offset: u32,     // index of slope 0 in aux
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
    split0: u32,           // first key split of this dispatch (of n_splits in it)
    pad0: u32,
    pad1: u32,
    pad2: u32,
    // (36 scalars above: the strides start 16-byte aligned)
    q_stride: vec4<u32>,   // (batch, head, seq, -)
    k_stride: vec4<u32>,
    v_stride: vec4<u32>,
    o_stride: vec4<u32>,   // (batch, head, seq, split)
    lse_stride: vec4<u32>, // (batch, head, seq, split)
}

@group(0) @binding(0) var<uniform> params: Params;
// O is stored as O_TYPE (0 f32, 1 f16, 2 bf16: half.wgsl); Q, K and V (bindings 1-3) and their
// loads are in qkv_loads.wgsl. A 16-bit O that is not VEC4 may share a word between two rows
// (odd head dims), so its elements are stored by atomic and/or of their half.
// @if O_TYPE == 0
// @if VEC4
@group(0) @binding(5) var<storage, read_write> o: array<vec4<f32>>;
// @else
@group(0) @binding(5) var<storage, read_write> o: array<f32>;
// @endif
// @else
// @if VEC4
@group(0) @binding(5) var<storage, read_write> o: array<vec2<u32>>;
// @else
@group(0) @binding(5) var<storage, read_write> o: array<atomic<u32>>;
// @endif
// @endif
@group(0) @binding(4) var<storage, read> aux: array<u32>;
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;

// Q, K, V bindings and loads (q_vec4, k_at, load4_k, ...); 16-bit storage (widen2, narrow_bits)
// @include qkv_loads.wgsl

// Store O element e (not VEC4) / the 4 elements from 4i (VEC4), narrowed to O_TYPE.
// @if VEC4
fn o_store4(i: u32, val: vec4<f32>) {
// @if O_TYPE == 0
    o[i] = val;
// @else
    o[i] = narrow4(val, O_TYPE);
// @endif
}
// @else
fn o_store(e: u32, x: f32) {
// @if O_TYPE == 0
    o[e] = x;
// @else
    // the other half of the word may be another row's: clear this half, then set it
    let shift = (e & 1u) * 16u;
    atomicAnd(&o[e >> 1u], ~(0xffffu << shift));
    atomicOr(&o[e >> 1u], narrow_bits(x, O_TYPE) << shift);
// @endif
}
// @endif


// ---- the work of one workgroup
struct Tile {
    batch: u32,
    kv_head: u32,
    split: u32,
    p0: u32,           // first packed row
    kv_len_b: u32,     // keys at or past this are invisible
    offset: i32,       // causal: query i sees keys j <= i + offset
    i_min: u32,        // smallest query index among the tile's rows
    tile_begin: u32,   // key tiles [tile_begin, tile_end) of this split
    tile_end: u32,
    list_start: u32,   // first entry of the block-table list (with a table)
    sub_tiles: u32,    // key tiles per table block
    k_head: u32,       // element index of key 0 of this (batch, kv head) in the K binding
    v_head: u32,       // likewise in V
}

// The workgroup with linear id `wid` (false when past the end), for BQ query rows and key tiles of BK.
fn tile_of(wid: u32, bq: u32, bk: u32) -> Tile {
    var t: Tile;
    let split = params.split0 + wid % params.n_splits;
    let rest = wid / params.n_splits;
    // zig-zag over the query tiles (0, n−1, 1, n−2, …): with causal masks the work per tile grows
    // with its index, and adapters that hand each thread a contiguous run of workgroups
    // (lavapipe) would otherwise give one thread most of it
    let t_local = rest % params.q_tiles;
    let zz = select(params.q_tiles - 1u - t_local / 2u, t_local / 2u, t_local % 2u == 0u);
    let q_tile_idx = params.q_tile0 + zz;
    let pair = rest / params.q_tiles;
    t.split = split;
    t.kv_head = params.kv_head0 + pair % params.kv_heads;
    t.batch = params.batch0 + pair / params.kv_heads;
    t.p0 = q_tile_idx * bq;
    t.kv_len_b = aux[t.batch];
    t.offset = causal_offset(params.causal, t.kv_len_b, params.q_len);
    let q_len = params.q_len;
    let rph = params.rows_per_head;
    let packed_rows = params.group * rph;
    // the key range every row of the tile may need: [0, key_end)
    let p_last = min(t.p0 + bq, packed_rows) - 1u;
    var i_min = min(t.p0 % rph, q_len - 1u);
    var i_max = min(p_last % rph, q_len - 1u);
    if (t.p0 / rph != p_last / rph) {   // the tile wraps into the next head
        i_min = 0u;
        i_max = q_len - 1u;
    }
    t.i_min = i_min;
    var key_end = t.kv_len_b;
    if (params.causal != 0u) {
        key_end = u32(clamp(i32(i_max) + t.offset + 1, 0, i32(t.kv_len_b)));
    }
    // the key tiles to visit: [0, key_end) in tiles of bk, or the tiles of the listed blocks
    var n_tiles = (key_end + bk - 1u) / bk;
    t.list_start = 0u;
    t.sub_tiles = 1u;
    if (params.use_table != 0u) {
        // with a table no tile straddles two heads or two query blocks (BQ divides S and R)
        let tile_head = t.kv_head * params.group + t.p0 / rph;
        let q_block = (t.p0 % rph) / params.block_size;
        let tb = select(0u, t.batch, params.table_batch > 1u);
        let th = select(0u, tile_head, params.table_heads > 1u);
        let list = (tb * params.table_heads + th) * params.q_blocks + q_block;
        t.list_start = aux[params.lists_offset + 2u * list];
        t.sub_tiles = params.block_size / bk;
        n_tiles = aux[params.lists_offset + 2u * list + 1u] * t.sub_tiles;
    }
    t.k_head = t.batch * params.k_stride.x + t.kv_head * params.k_stride.y - params.k_base;
    t.v_head = t.batch * params.v_stride.x + t.kv_head * params.v_stride.y - params.v_base;
    t.tile_begin = min(split * params.tiles_per_split, n_tiles);
    t.tile_end = min(t.tile_begin + params.tiles_per_split, n_tiles);
    return t;
}

// One query row of a tile.
struct Row {
    h: u32,
    i: u32,
    valid: bool,           // false for rows past the end or padding rows
    slope: f32,            // ALiBi slope of the head times log2 e (0 without ALiBi)
    row_in_block: u32,     // row within its table block
}

fn row_of(t: Tile, p: u32) -> Row {
    var row: Row;
    let rph = params.rows_per_head;
    let packed_rows = params.group * rph;
    let pc = min(p, packed_rows - 1u);
    row.h = t.kv_head * params.group + pc / rph;
    row.i = min(pc % rph, params.q_len - 1u);
    row.valid = p < packed_rows && p % rph < params.q_len;
    row.slope = 0.0;
// @if ALIBI
    row.slope = bitcast<f32>(aux[params.alibi_offset + row.h]) * LOG2E;
// @endif
    row.row_in_block = row.i % max(params.block_size, 1u);
    return row;
}

// The factor Q is pre-multiplied by: scale·log2 e, so that q·k is the score in the log2 domain;
// only scale with a softcap, whose tanh needs the natural-domain score.
fn q_scale() -> f32 {
// @if SOFTCAP
    return params.scale;
// @else
    return params.scale * LOG2E;
// @endif
}

// Query row elements d0..d0+3, pre-scaled by q_scale() (zero for invalid rows and past D).
fn load_q4(t: Tile, row: Row, d0: u32) -> vec4<f32> {
    let base = t.batch * params.q_stride.x + row.h * params.q_stride.y + row.i * params.q_stride.z
        - params.q_base;
    // branch-free (an invalid row, or a vec4 past the head dim, reads in-bounds garbage,
    // replaced by zero: 0·k is then 0 even where that garbage is not finite)
    return select(vec4<f32>(0.0), load4_q(base, d0) * q_scale(), row.valid && d0 < params.head_dim);
}

// Key / value row elements d0..d0+3 (zero past Nk and past D).
fn load_k4(t: Tile, key: u32, d0: u32) -> vec4<f32> {
    if (key >= params.kv_len) {
        return vec4<f32>(0.0);
    }
    return load4_k(t.k_head + key * params.k_stride.z, d0);
}

fn load_v4(t: Tile, key: u32, d0: u32) -> vec4<f32> {
    if (key >= params.kv_len) {
        return vec4<f32>(0.0);
    }
    return load4_v(t.v_head + key * params.v_stride.z, d0);
}

// The dv-th vec4 of K / V row `key`. Keys past Nk read the last row instead (finite values;
// every kernel masks those keys), so with VEC4 a load is one vec4 read. Key vec4s past the head
// dim (a head dim below the compiled 4·DV: one kernel serves every head dim of its size) are
// zero, so that they add nothing to q·k even where the elements after a row are not finite; value
// vec4s past it are read as they are: they only reach O columns past the head dim, never stored.
fn key4(t: Tile, key: u32, dv: u32) -> vec4<f32> {
// @if VEC4
    let x = k_vec4((t.k_head + min(key, params.kv_len - 1u) * params.k_stride.z) / 4u + dv);
    return select(vec4<f32>(0.0), x, dv * 4u < params.head_dim);
// @else
    return load_k4(t, key, dv * 4u);
// @endif
}

fn value4(t: Tile, key: u32, dv: u32) -> vec4<f32> {
// @if VEC4
    return v_vec4((t.v_head + min(key, params.kv_len - 1u) * params.v_stride.z) / 4u + dv);
// @else
    return load_v4(t, key, dv * 4u);
// @endif
}

// First key of the tile-th key tile (of bk keys), and its bitmap (NO_BITS: none needed).
fn key_tile(t: Tile, tile: u32, bk: u32) -> vec2<u32> {
    if (params.use_table == 0u) {
        return vec2<u32>(tile * bk, NO_BITS);
    }
    let entry = params.entries_offset + 2u * (t.list_start + tile / t.sub_tiles);
    return vec2<u32>(aux[entry] * params.block_size + (tile % t.sub_tiles) * bk, aux[entry + 1u]);
}

// Element masking is needed only in partial blocks and where the tile crosses the key end or the
// causal edge of the tile's first row.
fn tile_needs_mask(t: Tile, k0: u32, bits_at: u32, bk: u32) -> bool {
    return bits_at != NO_BITS || k0 + bk > t.kv_len_b
        || (params.causal != 0u && i32(k0 + bk - 1u) > i32(t.i_min) + t.offset);
}

// The score in the log2 domain of `dot` (q·k with Q pre-scaled by q_scale()) for key `key`:
// softcap, then ALiBi (both compiled in only when the call uses them; masks are separate).
fn score(t: Tile, row: Row, dot: f32, key: u32) -> f32 {
    var s = dot;
// @if SOFTCAP
    s = soft_cap(s, params.softcap) * LOG2E;
// @endif
// @if ALIBI
    s -= alibi_bias(row.slope, row.i, key, t.kv_len_b, params.q_len);
// @endif
    return s;
}

// Whether `key` is visible to `row`: key padding, causality, and with BITS the partial block's
// bitmap (`bits_at`, or NO_BITS). Branch-free but for the bitmap: CPU adapters (llvmpipe) run
// both sides of every `if` under a lane mask, so an `if` saves nothing there.
fn visible(t: Tile, row: Row, key: u32, bits_at: u32) -> bool {
    var vis = key_visible(row.i, key, t.kv_len_b, params.causal, t.offset);
// @if BITS
    if (bits_at != NO_BITS) {
        let col = key % params.block_size;
        let word = aux[params.bits_offset + bits_at
            + row.row_in_block * (params.block_size / 32u) + col / 32u];
        vis = vis && ((word >> (col % 32u)) & 1u) == 1u;
    }
// @endif
    return vis;
}

// score(), MASKED where the key is invisible (tested only when `needs_mask`).
fn masked_score(t: Tile, row: Row, dot: f32, key: u32, needs_mask: bool, bits_at: u32) -> f32 {
    let s = score(t, row, dot, key);
    if (needs_mask && !visible(t, row, key, bits_at)) {
        return MASKED;
    }
    return s;
}

// Store O elements d0..d0+3 of a row (already divided by l), skipping those past D.
fn store_o4(t: Tile, row: Row, d0: u32, val: vec4<f32>) {
    let ob = t.batch * params.o_stride.x + row.h * params.o_stride.y + row.i * params.o_stride.z
        + t.split * params.o_stride.w - params.o_base;
    let d = params.head_dim;
// @if VEC4
    if (d0 < d) { o_store4((ob + d0) / 4u, val); }   // the head dim is a multiple of 4 with VEC4
// @else
    if (d0 < d) { o_store(ob + d0, val.x); }
    if (d0 + 1u < d) { o_store(ob + d0 + 1u, val.y); }
    if (d0 + 2u < d) { o_store(ob + d0 + 2u, val.z); }
    if (d0 + 3u < d) { o_store(ob + d0 + 3u, val.w); }
// @endif
}

// Store the row's LSE from its running max m (log2 domain) and sum l; −∞ when l = 0.
fn store_lse(t: Tile, row: Row, m: f32, l: f32) {
    var neg_inf_bits = 0xff800000u;   // a var, so the constant evaluator never sees −∞
    var row_lse = bitcast<f32>(neg_inf_bits);
    if (l > 0.0) {
        row_lse = (m + log2(l)) * LN2;
    }
    let lb = t.batch * params.lse_stride.x + row.h * params.lse_stride.y + row.i * params.lse_stride.z
        + t.split * params.lse_stride.w - params.lse_base;
    lse[lb] = row_lse;
}
