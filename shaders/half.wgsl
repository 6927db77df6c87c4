// half.wgsl: 16-bit storage types in core WGSL, included by the kernels with
// `// @include half.wgsl` (src/shader.rs). No `enable f16;`: f16 and bf16 tensors are arrays of
// u32 words holding two elements each, element e in the low half of word e / 2 when e is even,
// the high half when it is odd (the byte order of a little-endian `[u16]`, src/dtype.rs). So
// every dtype runs on every adapter, those without SHADER_F16 included (browsers, GL).
// Arithmetic is f32 throughout: 16-bit values are widened on load (exactly) and O is narrowed
// on store (round to nearest even).
//
// `ty` is a kernel's `*_TYPE` @param: 0 f32, 1 f16, 2 bf16. Call sites pass a constant, so the
// branches fold away when the driver compiles the pipeline.
// Layout, tiling, workgroup size: none (functions only).

// The two elements of a word, widened to f32.
fn widen2(w: u32, ty: u32) -> vec2<f32> {
    if (ty == 1u) {
        return unpack2x16float(w);
    }
    // bf16: the element is the top half of an f32
    return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u));
}

// Four consecutive elements held in two words (element 0 in the low half of `w.x`).
fn widen4(w: vec2<u32>, ty: u32) -> vec4<f32> {
    return vec4<f32>(widen2(w.x, ty), widen2(w.y, ty));
}

// Element e of a 16-bit array whose word e / 2 is `w`.
fn widen_at(w: u32, e: u32, ty: u32) -> f32 {
    let pair = widen2(w, ty);
    return select(pair.x, pair.y, (e & 1u) == 1u);
}

// The 16 bits of x rounded to the nearest value of type `ty` (ties to even): ±∞ past the
// largest finite value, NaN stays NaN.
fn narrow_bits(x: f32, ty: u32) -> u32 {
    let u = bitcast<u32>(x);
    let nan = (u & 0x7fffffffu) > 0x7f800000u;
    if (ty == 1u) {
        // pack2x16float is indeterminate outside f16's finite range: clamp, and give ±∞ where
        // round to nearest would (|x| ≥ 65520)
        let sign = (u >> 16u) & 0x8000u;
        let finite = pack2x16float(vec2<f32>(clamp(x, -65504.0, 65504.0), 0.0)) & 0xffffu;
        let big = abs(x) >= 65520.0;
        return select(select(finite, sign | 0x7c00u, big), 0x7e00u, nan);
    }
    // bf16: round the f32 to its top 16 bits, ties to even (an overflow carries into ∞)
    let rounded = (u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u;
    return select(rounded, (u >> 16u) | 0x40u, nan);
}

// Two elements narrowed into one word (`x.x` in the low half).
fn narrow2(x: vec2<f32>, ty: u32) -> u32 {
    return narrow_bits(x.x, ty) | (narrow_bits(x.y, ty) << 16u);
}

// Four elements narrowed into two words.
fn narrow4(x: vec4<f32>, ty: u32) -> vec2<u32> {
    return vec2<u32>(narrow2(x.xy, ty), narrow2(x.zw, ty));
}
