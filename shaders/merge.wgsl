// merge.wgsl: combine attention states computed over disjoint key ranges ("splits") by their
// log-sum-exp: LSE = log Σ_s exp(LSE_s), O = Σ_s exp(LSE_s − LSE)·O_s. Splits with LSE_s = −∞
// contribute nothing; a row whose every split is −∞ gets O = 0, LSE = −∞.
//
// Layout: partial O [rows, n_splits, D] and partial LSE [rows, n_splits] (f32), rows in
// (batch, kv head, packed row p = (h − kv_head·G)·Nq + i) order of the chunk; final O by strides
// like Q's, of O_TYPE (f32, f16 or bf16: half.wgsl), LSE [B, Hq, Nq] (f32).
// Tiling: none (no workgroup memory): one invocation per (row, d) element, by linear id
// (wg_offset + x + y·grid_x)·64 + local index over a 1D or 2D grid; workgroup size 64; the
// invocation with d = 0 also writes the row's LSE. The only loop runs over n_splits (bounded by
// the host).

const O_TYPE: u32 = 0u; // @param element type of O: 0 f32, 1 f16, 2 bf16

// @include half.wgsl

struct Params {
    rows: u32,           // partial rows in this chunk
    row0: u32,           // first packed row of each head group in the chunk
    rows_per_group: u32, // packed rows per (batch, kv head) in the chunk
    head_dim: u32,
    n_splits: u32,
    grid_x: u32,         // workgroups along x (the dispatch is 2D when large)
    group: u32,          // query heads per kv head
    kv_heads: u32,       // kv heads in the chunk
    q_len: u32,
    rows_per_head: u32,  // packed rows per head (Nq, or Nq rounded up to the query tile)
    batch0: u32,
    kv_head0: u32,
    wg_offset: u32,      // linear id of this dispatch's first workgroup
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    o_stride: vec4<u32>, // (batch, head, seq, -) of the final O
    o_base: u32,
    lse_base: u32,
    lse_stride_b: u32,
    lse_stride_h: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> part_o: array<f32>;
@group(0) @binding(2) var<storage, read> part_lse: array<f32>;
// @if O_TYPE == 0
@group(0) @binding(3) var<storage, read_write> o: array<f32>;
// @else
// two 16-bit elements a word, the other half possibly another row's: stored by atomic and/or
@group(0) @binding(3) var<storage, read_write> o: array<atomic<u32>>;
// @endif
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg_id: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let e = (params.wg_offset + wg_id.x + wg_id.y * params.grid_x) * 64u + tid;
    if (e >= params.rows * params.head_dim) {
        return;
    }
    let row = e / params.head_dim;
    let d = e % params.head_dim;
    let ns = params.n_splits;

    var neg_inf_bits = 0xff800000u;   // a var, so the constant evaluator never sees −∞
    let neg_inf = bitcast<f32>(neg_inf_bits);
    var m = neg_inf;
    for (var s = 0u; s < ns; s++) {
        m = max(m, part_lse[row * ns + s]);
    }
    var sum = 0.0;
    var acc = 0.0;
    if (m > neg_inf) {
        for (var s = 0u; s < ns; s++) {
            let ls = part_lse[row * ns + s];
            if (ls > neg_inf) {
                let w = exp(ls - m);
                sum += w;
                acc += w * part_o[(row * ns + s) * params.head_dim + d];
            }
        }
    }

    // local row -> (batch, kv head, packed row p) -> (head, query)
    let per_batch = params.rows_per_group * params.kv_heads;
    let b = params.batch0 + row / per_batch;
    let kvh = params.kv_head0 + (row % per_batch) / params.rows_per_group;
    let p = params.row0 + row % params.rows_per_group;
    let h = kvh * params.group + p / params.rows_per_head;
    let i = p % params.rows_per_head;
    if (i >= params.q_len) {
        return;   // a padding row: no query
    }
    var out = 0.0;
    if (sum > 0.0) {
        out = acc / sum;
    }
    let at = b * params.o_stride.x + h * params.o_stride.y + i * params.o_stride.z + d - params.o_base;
// @if O_TYPE == 0
    o[at] = out;
// @else
    let shift = (at & 1u) * 16u;
    atomicAnd(&o[at >> 1u], ~(0xffffu << shift));
    atomicOr(&o[at >> 1u], narrow_bits(out, O_TYPE) << shift);
// @endif
    if (d == 0u) {
        var row_lse = neg_inf;
        if (sum > 0.0) {
            row_lse = m + log(sum);
        }
        lse[b * params.lse_stride_b + h * params.lse_stride_h + i - params.lse_base] = row_lse;
    }
}
