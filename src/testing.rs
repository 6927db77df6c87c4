//! Helpers shared by the test suite and `wgattn check`: random problems, a GPU run with poisoned
//! outputs, and the comparison against the oracle. Public so the CLI's `check` and the tests use
//! exactly the same procedure.

use rand::{Rng, SeedableRng};

use crate::attention::{Attention, HostTensor, Layout, Shape};
use crate::context::Context;
use crate::cpu::reference;
use crate::dtype::DType;
use crate::error::Result;
#[cfg(not(target_arch = "wasm32"))]
use crate::record::forward_into;
use crate::record::CallInfo;
use crate::tensor::Tensor;

/// One randomised case: sizes, layout and options.
#[derive(Clone, Debug)]
pub struct Case {
    /// B.
    pub batch: usize,
    /// Hq.
    pub q_heads: usize,
    /// Hkv.
    pub kv_heads: usize,
    /// Nq.
    pub q_len: usize,
    /// Nk.
    pub kv_len: usize,
    /// D.
    pub head_dim: usize,
    /// Layout of Q, K, V and O.
    pub layout: Layout,
    /// Options.
    pub attn: Attention,
}

impl Case {
    /// A case with one batch, one head, no options.
    pub fn new(q_len: usize, kv_len: usize, head_dim: usize) -> Self {
        Self {
            batch: 1,
            q_heads: 1,
            kv_heads: 1,
            q_len,
            kv_len,
            head_dim,
            layout: Layout::Bhsd,
            attn: Attention::new(),
        }
    }
    /// Set batch, query heads and K/V heads.
    pub fn heads(mut self, batch: usize, q_heads: usize, kv_heads: usize) -> Self {
        (self.batch, self.q_heads, self.kv_heads) = (batch, q_heads, kv_heads);
        self
    }
    /// Set the layout.
    pub fn layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }
    /// Set the options.
    pub fn attn(mut self, attn: Attention) -> Self {
        self.attn = attn;
        self
    }

    /// Random Q, K, V (uniform in [-1, 1)) from `seed`.
    pub fn inputs(&self, seed: u64) -> (HostTensor, HostTensor, HostTensor) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut gen = |shape: Shape| {
            let data = (0..shape.len()).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            HostTensor::new(data, shape, self.layout).expect("length matches")
        };
        let qs = Shape::new(self.batch, self.q_heads, self.q_len, self.head_dim);
        let ks = Shape::new(self.batch, self.kv_heads, self.kv_len, self.head_dim);
        (gen(qs), gen(ks), gen(ks))
    }
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "B{} Hq{} Hkv{} Nq{} Nk{} D{} {:?}",
            self.batch, self.q_heads, self.kv_heads, self.q_len, self.kv_len, self.head_dim, self.layout
        )?;
        let a = &self.attn;
        if let Some(c) = a.causal {
            write!(f, " causal={c:?}")?;
        }
        if a.kv_lens.is_some() {
            write!(f, " kv_lens")?;
        }
        if a.alibi_slopes.is_some() {
            write!(f, " alibi")?;
        }
        if let Some(c) = a.softcap {
            write!(f, " softcap={c}")?;
        }
        if let Some(s) = a.scale {
            write!(f, " scale={s}")?;
        }
        if let Some(n) = a.launch.num_splits {
            write!(f, " splits={n}")?;
        }
        if let Some(m) = &a.mask {
            write!(f, " mask={}", mask_name(m))?;
        }
        if let Some(s) = a.launch.block_size {
            write!(f, " block={s}")?;
        }
        if let Some(k) = &a.launch.kernel {
            write!(f, " kernel={}", k.name())?;
        }
        if let Some(t) = &a.topk {
            write!(f, " topk(k={},block={},sink={})", t.k, t.block_size, t.sink)?;
        }
        if let Some(bm) = &a.block_mask {
            write!(f, " block_mask(size={}, density={:.2})", bm.size, bm.density())?;
        }
        Ok(())
    }
}

/// Errors of one GPU run against the oracle.
#[derive(Clone, Copy, Debug)]
pub struct Errors {
    /// ‖o − ref‖ / ‖ref‖ (see [`Errors::pass`] for when ‖ref‖ is tiny).
    pub rel: f64,
    /// max |o − ref|.
    pub max_abs: f64,
    /// max |lse − ref| (∞ when a −∞ does not match).
    pub lse_max_abs: f64,
    /// What the GPU ran for the case.
    pub info: Option<CallInfo>,
}

impl Errors {
    /// True when every error is below the tolerances (and none is NaN).
    ///
    /// The relative error is ill-conditioned when the reference output is tiny: one output element
    /// (Nq = 1, D = 1) that is a weighted mean of ±1 values can land near 0, so ‖ref‖ ≈ 1e-5 and
    /// an error of 1e-8 (f32 rounding of O(1) inputs) reads as 1e-3. Like `allclose`, an output
    /// also passes when its max abs error is under the absolute floor `rel_tol / 10` (inputs are
    /// O(1)); the max abs error must be under `rel_tol × 100` in every case.
    pub fn pass(&self, rel_tol: f64) -> bool {
        output_close(self.rel, self.max_abs, rel_tol) && self.lse_max_abs < rel_tol * 10.0
    }
}

/// The output half of [`Errors::pass`]: `rel < rel_tol` or, for a tiny reference, `max_abs` under
/// the absolute floor `rel_tol / 10`; and `max_abs < rel_tol × 100` always. False on NaN.
pub fn output_close(rel: f64, max_abs: f64, rel_tol: f64) -> bool {
    (rel < rel_tol || max_abs < rel_tol / 10.0) && max_abs < rel_tol * 100.0
}

/// Run `case` on the GPU with NaN-poisoned outputs and compare with the f64 oracle.
#[cfg(not(target_arch = "wasm32"))]
pub fn run_case(ctx: &Context, case: &Case, seed: u64) -> Result<Errors> {
    run_case_with(ctx, case, seed, forward_into)
}

/// The signature of a GPU forward that writes into given O and LSE tensors ([`forward_into`],
/// `kernels::naive::forward_into`).
pub type ForwardInto =
    fn(&Context, &Tensor, &Tensor, &Tensor, &crate::Attention, &Tensor, &Tensor) -> Result<CallInfo>;

/// [`run_case`] through `forward`: inputs of `seed`, O and LSE poisoned with NaN before the run
/// (so an unwritten element fails), errors against the f64 oracle.
#[cfg(not(target_arch = "wasm32"))]
pub fn run_case_with(ctx: &Context, case: &Case, seed: u64, forward: ForwardInto) -> Result<Errors> {
    let (q, k, v) = case.inputs(seed);
    let want = reference::attention(&q, &k, &v, &case.attn)?;
    let (qd, kd, vd) = (Tensor::upload(ctx, &q)?, Tensor::upload(ctx, &k)?, Tensor::upload(ctx, &v)?);
    let o = Tensor::zeros(ctx, q.shape, case.layout)?;
    let lse = Tensor::zeros(ctx, Shape::new(case.batch, case.q_heads, case.q_len, 1), Layout::Bhsd)?;
    o.fill(ctx, f32::NAN)?;
    lse.fill(ctx, f32::NAN)?;
    let info = forward(ctx, &qd, &kd, &vd, &case.attn, &o, &lse)?;
    let (o, lse) = (o.to_host(ctx)?, lse.to_host(ctx)?);
    Ok(errors(&o.data, &lse.data, &want, Some(info)))
}

/// Errors of a 16-bit run: the kernel's, and those of the same computation done naively in the
/// storage precision ([`reference::attention_in_storage`]), both against the f64 oracle on the
/// rounded inputs.
#[derive(Clone, Copy, Debug)]
pub struct HalfErrors {
    /// The kernel's errors.
    pub kernel: Errors,
    /// The naive storage-precision computation's errors (its `info` is `None`).
    pub naive: Errors,
}

impl HalfErrors {
    /// Absolute floor of the 2× rule: f32 rounding of O(1) values, so that an output stored in
    /// f32 (whose naive error is P's rounding alone) is not held to less.
    pub const FLOOR: f64 = 1e-5;

    /// FlashAttention's rule for 16-bit: the kernel's relative and max abs errors at most twice
    /// the naive computation's plus [`HalfErrors::FLOOR`], its relative error under 1e-2 and its
    /// LSE within 1e-3 (LSE is computed in f32 from the widened inputs). False on NaN.
    pub fn pass(&self) -> bool {
        let (k, n) = (&self.kernel, &self.naive);
        k.rel <= 2.0 * n.rel + Self::FLOOR
            && k.max_abs <= 2.0 * n.max_abs + Self::FLOOR
            && k.rel < 1e-2
            && k.lse_max_abs < 1e-3
    }
}

/// [`run_case`] with Q, K and V stored as `qkv` and O as `o` (LSE f32): the inputs of `seed`
/// rounded to `qkv`, uploaded as `qkv`; O and LSE poisoned with NaN; the kernel's errors and the
/// naive storage-precision computation's against the f64 oracle on the rounded inputs.
#[cfg(not(target_arch = "wasm32"))]
pub fn run_case_16(ctx: &Context, case: &Case, seed: u64, qkv: DType, o: DType) -> Result<HalfErrors> {
    run_case_16_with(ctx, case, seed, (qkv, o), forward_into)
}

/// [`run_case_16`] through another forward (e.g. the naive baseline's `forward_into`).
#[cfg(not(target_arch = "wasm32"))]
pub fn run_case_16_with(
    ctx: &Context,
    case: &Case,
    seed: u64,
    (qkv, o): (DType, DType),
    forward: ForwardInto,
) -> Result<HalfErrors> {
    let (q, k, v) = case.inputs(seed);
    let (q, k, v) = (q.rounded(qkv), k.rounded(qkv), v.rounded(qkv));
    run_inputs_16(ctx, case, (&q, &k, &v), (qkv, o), forward)
}

/// [`run_case_16_with`] on given inputs (already `qkv` values, e.g. large logits).
#[cfg(not(target_arch = "wasm32"))]
pub fn run_inputs_16(
    ctx: &Context,
    case: &Case,
    (q, k, v): (&HostTensor, &HostTensor, &HostTensor),
    (qkv, o_dtype): (DType, DType),
    forward: ForwardInto,
) -> Result<HalfErrors> {
    let want = reference::attention(q, k, v, &case.attn)?;
    let naive = reference::attention_in_storage(q, k, v, &case.attn, qkv, o_dtype)?;
    let (qd, kd, vd) = (Tensor::upload_as(ctx, q, qkv)?, Tensor::upload_as(ctx, k, qkv)?, Tensor::upload_as(ctx, v, qkv)?);
    let o = Tensor::zeros_as(ctx, q.shape, case.layout, o_dtype)?;
    let lse = Tensor::zeros(ctx, Shape::new(case.batch, case.q_heads, case.q_len, 1), Layout::Bhsd)?;
    o.fill(ctx, f32::NAN)?;
    lse.fill(ctx, f32::NAN)?;
    let info = forward(ctx, &qd, &kd, &vd, &case.attn, &o, &lse)?;
    let (o, lse) = (o.to_host(ctx)?, lse.to_host(ctx)?);
    let naive_o: Vec<f32> = naive.o.iter().map(|&x| x as f32).collect();
    let naive_lse: Vec<f32> = naive.lse.iter().map(|&x| x as f32).collect();
    Ok(HalfErrors { kernel: errors(&o.data, &lse.data, &want, Some(info)), naive: errors(&naive_o, &naive_lse, &want, None) })
}

/// The errors of O and LSE against the oracle's answer `want`.
pub fn errors(o: &[f32], lse: &[f32], want: &reference::Reference, info: Option<CallInfo>) -> Errors {
    let (rel, max_abs) = reference::compare(o, &want.o);
    let lse_max_abs = reference::compare_lse(lse, &want.lse);
    Errors { rel, max_abs, lse_max_abs, info }
}

/// A seed from the clock, or `WGATTN_SEED` when set (to reproduce a failure).
pub fn fresh_seed() -> u64 {
    if let Some(s) = std::env::var("WGATTN_SEED").ok().and_then(|s| s.parse().ok()) {
        return s;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed)
}

/// ALiBi slopes as in the ALiBi paper: 2^(−8(h+1)/H).
pub fn alibi_slopes(heads: usize) -> Vec<f32> {
    (0..heads).map(|h| 2f32.powf(-8.0 * (h + 1) as f32 / heads as f32)).collect()
}

/// A short name of a mask for tables and messages.
pub fn mask_name(m: &crate::mask::Mask) -> String {
    use crate::mask::Mask::*;
    match m {
        Window { left, right } => format!("window({left:?},{right:?})"),
        Prefix(p) => format!("prefix({p})"),
        Documents { .. } => "documents".into(),
        Dense { batch, heads, .. } => format!("dense({batch}x{heads})"),
        Blocks { size, .. } => format!("blocks({size})"),
        Global(n) => format!("global({n})"),
        Strided { stride } => format!("strided({stride})"),
        Fixed { stride, c } => format!("fixed({stride},{c})"),
        Dilated { window, dilation } => format!("dilated({window},{dilation})"),
        RandomBlocks { size, count, seed } => format!("random({size},{count},{seed})"),
        And(v) => format!("and({})", v.iter().map(mask_name).collect::<Vec<_>>().join(",")),
        Or(v) => format!("or({})", v.iter().map(mask_name).collect::<Vec<_>>().join(",")),
    }
}

#[cfg(test)]
mod tests {
    use super::Errors;

    #[test]
    fn pass_uses_an_absolute_floor_only_for_tiny_errors() {
        let e = |rel, max_abs, lse| Errors { rel, max_abs, lse_max_abs: lse, info: None };
        assert!(e(1e-7, 1e-6, 1e-6).pass(1e-5));
        // a near-zero reference: rel is large, but the error is f32 rounding of O(1) values
        assert!(e(2.2e-4, 1e-8, 2e-7).pass(1e-5));
        assert!(!e(2.2e-4, 2e-6, 2e-7).pass(1e-5));
        assert!(!e(1e-7, 1e-2, 1e-6).pass(1e-5));
        assert!(!e(1e-7, 1e-8, 1e-3).pass(1e-5));
        assert!(!e(f64::NAN, f64::NAN, 0.0).pass(1e-5));
        assert!(!e(1e-7, 1e-8, f64::INFINITY).pass(1e-5));
    }
}
