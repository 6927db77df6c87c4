//! Compiling ahead of time. A kernel's pipeline is compiled the first time a call needs it, and
//! a software adapter (lavapipe) compiles a fused-forward pipeline in seconds: an application
//! that prefers a slow start to a slow first call names the head dims and mask classes it will
//! use, and [`Context::warm_up`] runs one tiny call of each, which compiles everything those
//! calls need (the fused forward in the family the calls would choose, the LSE merge of split
//! keys, the top-k selection of dynamic masks) and waits for it.
//!
//! Head dims compile in sizes of [`crate::kernels::flash::HEAD_DIM_STEP`] (32): warming head
//! dim 64 also serves 33..=64. What stays for the first real call: the variants of options the
//! warm-up was not told of (soft-capping, ALiBi: [`WarmUp::softcap`], [`WarmUp::alibi`]), and
//! the two small copy kernels of views whose offsets or strides are not multiples of 4 elements
//! (warming any head dim that is not a multiple of 4 compiles them too).
//!
//! ```
//! use wgpu_attention::{Context, MaskClass, WarmUp};
//! # fn main() -> Result<(), wgpu_attention::Error> {
//! let ctx = Context::new()?;
//! let plan = WarmUp::new(&[64]).masks(&[MaskClass::Causal]);
//! let report = ctx.warm_up(&plan, |done, total| eprintln!("compiled {done}/{total}"))?;
//! assert_eq!(report.steps, 1);
//! # Ok(()) }
//! ```

use std::time::{Duration, Instant};

use crate::attention::{Attention, Causal, HostTensor, Layout, Shape};
use crate::context::Context;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::flash::{compiled_head_dim, Family};
use crate::mask::Mask;
use crate::tensor::Tensor;
use crate::tune::MaskClass;

/// What to compile: every combination of head dim, element type and mask class (and, when
/// asked, the soft-capping and ALiBi variants of each).
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq)]
pub struct WarmUp {
    /// Head dims (1..=[`crate::MAX_HEAD_DIM`]); dims that compile to the same kernel count once
    /// (same size, both below it or both filling it, both multiples of 4 or not).
    pub head_dims: Vec<usize>,
    /// Element types of Q, K, V and O (each dtype is a kernel of its own).
    pub dtypes: Vec<DType>,
    /// Mask classes: no mask (and key padding), causal, block tables (masks, patterns, top-k).
    pub masks: Vec<MaskClass>,
    /// Also compile the soft-capping variant of each.
    pub softcap: bool,
    /// Also compile the ALiBi variant of each.
    pub alibi: bool,
    /// Kernel families to compile; empty (the default): the family calls would choose.
    pub kernels: Vec<Family>,
}

impl WarmUp {
    /// `head_dims` in f32, every mask class, without the soft-capping and ALiBi variants.
    pub fn new(head_dims: &[usize]) -> Self {
        Self {
            head_dims: head_dims.to_vec(),
            dtypes: vec![DType::F32],
            masks: vec![MaskClass::Dense, MaskClass::Causal, MaskClass::Table],
            softcap: false,
            alibi: false,
            kernels: Vec::new(),
        }
    }
    /// Set [`WarmUp::kernels`].
    pub fn kernels(mut self, families: &[Family]) -> Self {
        self.kernels = families.to_vec();
        self
    }
    /// Set [`WarmUp::dtypes`].
    pub fn dtypes(mut self, dtypes: &[DType]) -> Self {
        self.dtypes = dtypes.to_vec();
        self
    }
    /// Set [`WarmUp::masks`].
    pub fn masks(mut self, masks: &[MaskClass]) -> Self {
        self.masks = masks.to_vec();
        self
    }
    /// Set [`WarmUp::softcap`].
    pub fn softcap(mut self, on: bool) -> Self {
        self.softcap = on;
        self
    }
    /// Set [`WarmUp::alibi`].
    pub fn alibi(mut self, on: bool) -> Self {
        self.alibi = on;
        self
    }

    /// The tiny calls, one per step: (head dim, options).
    fn steps(&self) -> Result<Vec<(usize, DType, Vec<Attention>)>> {
        let mut dims: Vec<usize> = Vec::new();
        for &d in &self.head_dims {
            if d == 0 || d > crate::MAX_HEAD_DIM {
                return Err(Error::HeadDimUnsupported { head_dim: d, max: crate::MAX_HEAD_DIM });
            }
            // once per compiled variant: the size (a multiple of 32, every head dim up to it one
            // kernel) and whether Q, K, V and O are read as they are (vec4s) or packed first
            let variant = |d: usize| (compiled_head_dim(d), d.is_multiple_of(4));
            if !dims.iter().any(|&e| variant(e) == variant(d)) {
                dims.push(d);
            }
        }
        let mut steps = Vec::new();
        for &d in &dims {
            for &dtype in &self.dtypes {
                for &class in &self.masks {
                    let mut calls = match class {
                        // split keys: the LSE merge too
                        MaskClass::Dense => vec![Attention::new().num_splits(2)],
                        MaskClass::Causal => vec![Attention::new().causal(Causal::BottomRight)],
                        // a window has partial blocks (per-element bitmaps); top-k has whole blocks
                        // and its own selection kernel
                        MaskClass::Table => vec![
                            Attention::new().causal(Causal::BottomRight).mask(Mask::window(40, 0)),
                            Attention::new().topk(1, 32),
                        ],
                    };
                    let base = calls.clone();
                    if self.softcap {
                        calls.extend(base.iter().map(|a| a.clone().softcap(30.0)));
                    }
                    if self.alibi {
                        calls.extend(base.iter().map(|a| a.clone().alibi_slopes(vec![0.5])));
                    }
                    if !self.kernels.is_empty() {
                        calls = calls
                            .iter()
                            .flat_map(|a| self.kernels.iter().map(|&f| a.clone().kernel(f)))
                            .collect();
                    }
                    steps.push((d, dtype, calls));
                }
            }
        }
        Ok(steps)
    }
}

/// What a warm-up did.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WarmUpReport {
    /// Steps run: (compiled head dim, dtype, mask class) triples.
    pub steps: usize,
    /// Pipelines the context compiled during the warm-up (0 when all were compiled before).
    pub pipelines: usize,
    /// Wall time of the warm-up.
    pub elapsed: Duration,
}

impl Context {
    /// Compile now what calls with `plan`'s head dims, element types and mask classes will
    /// need, by running a tiny call of each (B 1, H 1, 64 queries and keys) and waiting for it;
    /// `progress(done, total)` is called after each step. Native targets (it waits for the GPU).
    /// See [`crate::warm_up`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn warm_up(&self, plan: &WarmUp, progress: impl FnMut(usize, usize)) -> Result<WarmUpReport> {
        self.warm_up_all(std::slice::from_ref(plan), progress)
    }

    /// [`Context::warm_up`] of several plans, their steps one after the other: for combinations
    /// that are not one plan's product of head dims, mask classes and families, as `wgattn
    /// check` compiles its cases'.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn warm_up_all(
        &self,
        plans: &[WarmUp],
        mut progress: impl FnMut(usize, usize),
    ) -> Result<WarmUpReport> {
        let started = Instant::now();
        let before = self.cached_pipelines();
        let mut steps = Vec::new();
        for plan in plans {
            steps.extend(plan.steps()?);
        }
        for (i, (d, dtype, calls)) in steps.iter().enumerate() {
            warm_step(self, *d, *dtype, calls)?;
            progress(i + 1, steps.len());
        }
        Ok(WarmUpReport {
            steps: steps.len(),
            pipelines: self.cached_pipelines() - before,
            elapsed: started.elapsed(),
        })
    }
}

/// One warm-up step on `ctx`: a tiny call (B 1, H 1, 64 queries and keys) of head dim `d` in
/// `dtype` for each of `calls`, waited for.
#[cfg(not(target_arch = "wasm32"))]
fn warm_step(ctx: &Context, d: usize, dtype: DType, calls: &[Attention]) -> Result<()> {
    let shape = Shape::new(1, 1, 64, d);
    let data = (0..shape.len()).map(|i| ((i * 37) % 101) as f32 / 101.0 - 0.5).collect();
    let x = Tensor::upload_as(ctx, &HostTensor::new(data, shape, Layout::Bhsd)?, dtype)?;
    for attn in calls {
        // the kernels later calls run, never FirstCall::Quick's stand-ins
        let mut attn = attn.clone();
        attn.launch.full_kernel = true;
        crate::record::forward(ctx, &x, &x, &x, &attn)?;
    }
    ctx.wait_idle()
}
