// gemm.wgsl: the projections of an attention layer, Y = X·Wᵀ + b (PyTorch's `F.linear`).
//
// Layout: X is a [B, H, S, K] tensor read as B·H·S rows of K elements, row r = (b, h, s) in that
// order, at element b·x_stride.x + h·x_stride.y + s·x_stride.z (any layout); Y is [B, H, S, N]
// by its own strides, the same rows; W is [N, K] (PyTorch's [out_features, in_features]), row n
// at n·w_stride; the bias b is N contiguous elements. X, W and b are of IN_TYPE, Y of OUT_TYPE
// (0 f32, 1 f16, 2 bf16: half.wgsl, 16-bit tensors two elements a u32 word); arithmetic in f32.
// Every index is relative to its bound window (`*_base`, src/kernels/gemm.rs).
//
// Tiling: a workgroup owns MB = XR·SL rows × WG·C columns of Y. Invocation t owns the columns
// n0 + t + c·WG (c < C) and accumulates all MB rows of them in private memory. K streams in
// chunks of 4·KU elements: each invocation loads the KU vec4s of its C rows of W; with
// SUBGROUPS, lane j < SL of each subgroup loads the chunk of the X rows m0 + j + x·SL (x < XR) and
// `subgroupBroadcast(·, constant lane)` hands them to the other lanes (SL is at most the adapter's
// smallest subgroup size and at most WG, both powers of two, so every subgroup size from 4 to 128
// works); without SUBGROUPS every invocation loads the MB rows itself. Accumulators are written
// once per chunk (on CPU adapters every write to a loop-carried value is a masked blend).
// Workgroup size WG. Loops: the chunk loop runs K / (4·KU) times and the tail loop fewer than KU
// times (the host keeps the sum under 65,535: lavapipe's per-invocation loop limit); the rest
// is unrolled by src/shader.rs. Rows and columns past the matrix are clamped on load and never
// stored, so every lane of a subgroup takes part in every broadcast.

const XR: u32 = 1u; // @param X rows each broadcasting lane loads
const SL: u32 = 8u; // @param broadcasting lanes (≤ the smallest subgroup size, ≤ WG)
const C: u32 = 2u; // @param columns per invocation
const KU: u32 = 4u; // @param vec4 chunks of K per loop iteration
const WG: u32 = 8u; // @param invocations per workgroup
const MB: u32 = 8u; // @param XR * SL: rows of the workgroup's tile
const_assert MB == XR * SL; // a specialisation with another MB fails validation
const SUBGROUPS: u32 = 1u; // @param 1: share X rows by subgroup broadcast, 0: load per invocation
const VEC4: u32 = 0u; // @param 1: X and W read as vec4s (K, strides and bases multiples of 4)
const BIAS: u32 = 0u; // @param 1: add the bias
const IN_TYPE: u32 = 0u; // @param element type of X, W and b: 0 f32, 1 f16, 2 bf16
const OUT_TYPE: u32 = 0u; // @param element type of Y


// @include half.wgsl

struct Params {
    rows: u32,             // rows of X and Y in this dispatch's chunk, from row `row0`
    n: u32,                // columns of Y (rows of W)
    k: u32,                // columns of X and W
    grid_x: u32,
    wg_offset: u32,
    col_tiles: u32,        // workgroups across N
    row0: u32,
    heads: u32,            // H and S of the row decomposition r = (b, h, s)
    seq: u32,
    w_stride: u32,
    x_base: u32,
    w_base: u32,
    y_base: u32,
    b_base: u32,
    _pad0: u32,
    _pad1: u32,
    x_stride: vec4<u32>,   // (batch, head, seq, -)
    y_stride: vec4<u32>,
}

@group(0) @binding(0) var<uniform> params: Params;
// @if IN_TYPE == 0
// @if VEC4
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;
// @else
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
// @endif
@group(0) @binding(3) var<storage, read> bias: array<f32>;
// @else
// @if VEC4
@group(0) @binding(1) var<storage, read> x: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> w: array<vec2<u32>>;
// @else
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
// @endif
@group(0) @binding(3) var<storage, read> bias: array<u32>;
// @endif
// @if OUT_TYPE == 0
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
// @else
// two 16-bit elements a word, the other half another lane's column: stored by atomic and/or
@group(0) @binding(4) var<storage, read_write> y: array<atomic<u32>>;
// @endif

// Elements e, e+1, e+2, e+3 of X (of W); those at or past `end` read as 0 (the masked tail of a
// row; `end` is the row's last element + 1, so clamped indices stay inside it).
fn x4(e: u32, end: u32) -> vec4<f32> {
// @if VEC4
// @if IN_TYPE == 0
    return x[e >> 2u];
// @else
    return widen4(x[e >> 2u], IN_TYPE);
// @endif
// @else
    var v: vec4<f32>;
    // @unroll
    for (var i = 0u; i < 4u; i++) {
        let at = min(e + i, end - 1u);
// @if IN_TYPE == 0
        let xi = x[at];
// @else
        let xi = widen_at(x[at >> 1u], at, IN_TYPE);
// @endif
        v[i] = select(0.0, xi, e + i < end);
    }
    return v;
// @endif
}

fn w4(e: u32, end: u32) -> vec4<f32> {
// @if VEC4
// @if IN_TYPE == 0
    return w[e >> 2u];
// @else
    return widen4(w[e >> 2u], IN_TYPE);
// @endif
// @else
    var v: vec4<f32>;
    // @unroll
    for (var i = 0u; i < 4u; i++) {
        let at = min(e + i, end - 1u);
// @if IN_TYPE == 0
        let wi = w[at];
// @else
        let wi = widen_at(w[at >> 1u], at, IN_TYPE);
// @endif
        v[i] = select(0.0, wi, e + i < end);
    }
    return v;
// @endif
}

fn bias_at(n: u32) -> f32 {
    let e = n - params.b_base;
// @if IN_TYPE == 0
    return bias[e];
// @else
    return widen_at(bias[e >> 1u], e, IN_TYPE);
// @endif
}

fn store_y(e: u32, v: f32) {
// @if OUT_TYPE == 0
    y[e] = v;
// @else
    let shift = (e & 1u) * 16u;
    atomicAnd(&y[e >> 1u], ~(0xffffu << shift));
    atomicOr(&y[e >> 1u], narrow_bits(v, OUT_TYPE) << shift);
// @endif
}

// Element offset of row r's first element, for strides `s`.
fn row_at(r: u32, s: vec4<u32>) -> u32 {
    let per_batch = params.heads * params.seq;
    return (r / per_batch) * s.x + ((r % per_batch) / params.seq) * s.y + (r % params.seq) * s.z;
}

// (a·b) as two 2-deep chains and one add: fewer dependent adds than a running sum
fn dot4(a: vec4<f32>, b: vec4<f32>) -> f32 {
    return (a.x * b.x + a.y * b.y) + (a.z * b.z + a.w * b.w);
}

var<private> acc: array<f32, MB * C>;
var<private> w_row: array<u32, C>;      // each column's W row: first element, window-relative
// @if SUBGROUPS
var<private> x_row: array<u32, XR>;     // the X rows this lane loads for the broadcast
// @else
var<private> x_row: array<u32, MB>;     // every X row of the tile
// @endif

// Add the products of the KU vec4 chunks of K from element k (elements past K read as 0) into
// `acc`.
fn chunks(k: u32) {
    var wv: array<vec4<f32>, C * KU>;
    // @unroll
    for (var c = 0u; c < C; c++) {
        // @unroll
        for (var u = 0u; u < KU; u++) {
            wv[c * KU + u] = w4(w_row[c] + k + u * 4u, w_row[c] + params.k);
        }
    }
// @if SUBGROUPS
    var xv: array<vec4<f32>, XR * KU>;
    // @unroll
    for (var xr = 0u; xr < XR; xr++) {
        // @unroll
        for (var u = 0u; u < KU; u++) {
            xv[xr * KU + u] = x4(x_row[xr] + k + u * 4u, x_row[xr] + params.k);
        }
    }
// @endif
    // @unroll
    for (var r = 0u; r < MB; r++) {
        var s: array<f32, C>;
        // @unroll
        for (var u = 0u; u < KU; u++) {
// @if SUBGROUPS
            let xu = subgroupBroadcast(xv[(r / SL) * KU + u], r % SL);
// @else
            let xu = x4(x_row[r] + k + u * 4u, x_row[r] + params.k);
// @endif
            // @unroll
            for (var c = 0u; c < C; c++) {
                s[c] += dot4(xu, wv[c * KU + u]);
            }
        }
        // @unroll
        for (var c = 0u; c < C; c++) {
            acc[r * C + c] += s[c];
        }
    }
}

// One vec4 chunk of K from element k (the tail after the last whole KU chunks), like `chunks`.
fn chunk(k: u32) {
    var wv: array<vec4<f32>, C>;
    // @unroll
    for (var c = 0u; c < C; c++) {
        wv[c] = w4(w_row[c] + k, w_row[c] + params.k);
    }
// @if SUBGROUPS
    var xv: array<vec4<f32>, XR>;
    // @unroll
    for (var xr = 0u; xr < XR; xr++) {
        xv[xr] = x4(x_row[xr] + k, x_row[xr] + params.k);
    }
// @endif
    // @unroll
    for (var r = 0u; r < MB; r++) {
// @if SUBGROUPS
        let xu = subgroupBroadcast(xv[r / SL], r % SL);
// @else
        let xu = x4(x_row[r] + k, x_row[r] + params.k);
// @endif
        // @unroll
        for (var c = 0u; c < C; c++) {
            acc[r * C + c] += dot4(xu, wv[c]);
        }
    }
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wg_id: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
// @if SUBGROUPS
    @builtin(subgroup_invocation_id) lane: u32,
// @endif
) {
    let wid = params.wg_offset + wg_id.x + wg_id.y * params.grid_x;
    // uniform across the workgroup: whole workgroups leave, never single lanes
    if (wid >= params.col_tiles * ((params.rows + MB - 1u) / MB)) {
        return;
    }
    let m0 = (wid / params.col_tiles) * MB;
    let n0 = (wid % params.col_tiles) * (WG * C);
    // @unroll
    for (var c = 0u; c < C; c++) {
        w_row[c] = min(n0 + tid + c * WG, params.n - 1u) * params.w_stride - params.w_base;
    }
// @if SUBGROUPS
    // @unroll
    for (var xr = 0u; xr < XR; xr++) {
        let r = min(m0 + min(lane, SL - 1u) + xr * SL, params.rows - 1u);
        x_row[xr] = row_at(params.row0 + r, params.x_stride) - params.x_base;
    }
// @else
    // @unroll
    for (var r = 0u; r < MB; r++) {
        x_row[r] = row_at(params.row0 + min(m0 + r, params.rows - 1u), params.x_stride) - params.x_base;
    }
// @endif

    let whole = params.k / (4u * KU);
    for (var i = 0u; i < whole; i++) {
        chunks(i * 4u * KU);
    }
    let vec4s = (params.k + 3u) / 4u;
    for (var i = whole * KU; i < vec4s; i++) {
        chunk(i * 4u);
    }

    // @unroll
    for (var r = 0u; r < MB; r++) {
        let m = m0 + r;
        if (m < params.rows) {
            let y_row = row_at(params.row0 + m, params.y_stride) - params.y_base;
            // @unroll
            for (var c = 0u; c < C; c++) {
                let n = n0 + tid + c * WG;
                if (n < params.n) {
// @if BIAS
                    store_y(y_row + n, acc[r * C + c] + bias_at(n));
// @else
                    store_y(y_row + n, acc[r * C + c]);
// @endif
                }
            }
        }
    }
}
