// score_terms.wgsl: the terms of the attention score after the dot product, the one copy every
// kernel uses (naive.wgsl includes it, the fused kernels through attention_common.wgsl), so that
// all of them score exactly the same problem. The formula, in FlashAttention's order:
//   s = scale·q·k;  with a soft cap s = cap·tanh(s/cap);  with ALiBi s −= slope[h]·|i + L − Nq − j|
//   (L the batch's key length);  keys the query may not see (j ≥ L, causal) are masked.
// The kernels form scale·q·k themselves (the fused ones pre-scale Q, in the log2 domain unless
// soft-capped) and compose these terms with compile-time `@if`s or uniform flags; the functions
// are pure (no bindings, no uniform), so they add no code a kernel does not call.
//
// Tensor layout, tiling, workgroup size: none here (functions of scalars only); see the kernels.

// The soft cap of score s: cap·tanh(s/cap).
fn soft_cap(s: f32, cap: f32) -> f32 {
    return cap * tanh(s / cap);
}

// The ALiBi bias subtracted from the score of query i and key j: slope·|i + L − Nq − j|, the
// distance of key j from the query's bottom-right aligned position (L = kv_len_b, Nq = q_len).
fn alibi_bias(slope: f32, i: u32, j: u32, kv_len_b: u32, q_len: u32) -> f32 {
    return slope * abs(f32(i32(i) + i32(kv_len_b) - i32(q_len) - i32(j)));
}

// The causal offset of a batch: with a causal mask query i sees keys j ≤ i + offset; 0 for
// top-left (causal = 1), L − Nq for bottom-right (causal = 2).
fn causal_offset(causal: u32, kv_len_b: u32, q_len: u32) -> i32 {
    return select(0, i32(kv_len_b) - i32(q_len), causal == 2u);
}

// Whether key j is visible to query i: below the batch's key length and, with a causal mask
// (causal ≠ 0), j ≤ i + offset (offset from causal_offset()). Branch-free.
fn key_visible(i: u32, j: u32, kv_len_b: u32, causal: u32, offset: i32) -> bool {
    return (j < kv_len_b) & ((causal == 0u) | (i32(j) <= i32(i) + offset));
}
