// qkv_loads.wgsl: the bindings of Q, K and V and their loads, shared by the kernels that read
// them through strided element indices (attention_common.wgsl for the fused forward, and
// decode.wgsl), included with `// @include qkv_loads.wgsl` (src/shader.rs).
// The including kernel defines the @params QKV_TYPE (0 f32, 1 f16, 2 bf16: half.wgsl) and VEC4,
// and a uniform `params` with a `head_dim` member. Q, K and V are bindings 1, 2 and 3.
// f32 tensors are vec4s when VEC4 (head dim, strides and window bases all multiples of 4: one
// 16-byte access per 4 elements), else scalars; 16-bit tensors are words of two elements, read
// two words (four elements) at a time when VEC4. On CPU adapters every storage access is a
// per-lane loop and every `if` a branch of its own: the vec4 forms keep the unrolled register
// kernels small, which is most of their compile time (docs/COMPILE.md).
// Layout, tiling, workgroup size: the including kernel's (functions and bindings only).

// @if QKV_TYPE == 0
// @if VEC4
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
// @else
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
// @endif
// @else
// @if VEC4
@group(0) @binding(1) var<storage, read> q: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> k: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read> v: array<vec2<u32>>;
// @else
@group(0) @binding(1) var<storage, read> q: array<u32>;
@group(0) @binding(2) var<storage, read> k: array<u32>;
@group(0) @binding(3) var<storage, read> v: array<u32>;
// @endif
// @endif

// 16-bit storage: widen2, narrow_bits, ...
// @include half.wgsl

// The i-th 4-element group of Q, K, V (VEC4 only: element 4i on).
// @if VEC4
fn q_vec4(i: u32) -> vec4<f32> {
// @if QKV_TYPE == 0
    return q[i];
// @else
    return widen4(q[i], QKV_TYPE);
// @endif
}

fn k_vec4(i: u32) -> vec4<f32> {
// @if QKV_TYPE == 0
    return k[i];
// @else
    return widen4(k[i], QKV_TYPE);
// @endif
}

fn v_vec4(i: u32) -> vec4<f32> {
// @if QKV_TYPE == 0
    return v[i];
// @else
    return widen4(v[i], QKV_TYPE);
// @endif
}
// @else
// Element e of Q, K, V (not VEC4).
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
// @endif

// Load 4 consecutive head-dim elements starting at d0 of row `base` (an element index), zero past
// D. Branch-free: elements past D are read (WGSL bounds every access) and replaced by zero.
fn load4_q(base: u32, d0: u32) -> vec4<f32> {
// @if VEC4
    return select(vec4<f32>(0.0), q_vec4((base + d0) / 4u), d0 < params.head_dim);
// @else
    let x = vec4<f32>(q_at(base + d0), q_at(base + d0 + 1u), q_at(base + d0 + 2u), q_at(base + d0 + 3u));
    return select(vec4<f32>(0.0), x, vec4<u32>(d0) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(params.head_dim));
// @endif
}

fn load4_k(base: u32, d0: u32) -> vec4<f32> {
// @if VEC4
    return select(vec4<f32>(0.0), k_vec4((base + d0) / 4u), d0 < params.head_dim);
// @else
    let x = vec4<f32>(k_at(base + d0), k_at(base + d0 + 1u), k_at(base + d0 + 2u), k_at(base + d0 + 3u));
    return select(vec4<f32>(0.0), x, vec4<u32>(d0) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(params.head_dim));
// @endif
}

fn load4_v(base: u32, d0: u32) -> vec4<f32> {
// @if VEC4
    return select(vec4<f32>(0.0), v_vec4((base + d0) / 4u), d0 < params.head_dim);
// @else
    let x = vec4<f32>(v_at(base + d0), v_at(base + d0 + 1u), v_at(base + d0 + 2u), v_at(base + d0 + 3u));
    return select(vec4<f32>(0.0), x, vec4<u32>(d0) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(params.head_dim));
// @endif
}
