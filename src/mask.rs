//! Masks beyond causal and key padding: sliding windows, packed documents, prefix-LM, dense element
//! masks, block-level masks, sparse patterns (Sparse Transformer, Longformer, BigBird, dilated
//! windows) and their AND / OR compositions.
//!
//! A [`Mask`] is an element predicate `visible(b, h, i, j)`; the CPU oracle evaluates it directly.
//! The GPU kernel never sees the predicate: a mask is lowered to a [`BlockMask`] (FlexAttention's
//! idea): for each (batch, head, query block) the list of key blocks to visit, each *full* (no
//! per-element test) or *partial* (with a bitmap of its visible elements). Empty blocks are not
//! listed, so the kernel never loads them: work falls with density. Build a `BlockMask` once with
//! [`BlockMask::build`] and reuse it across calls, or let each call build it from `Attention::mask`.
//!
//! Alignment: like causal masks, windows are bottom-right aligned: query `i` of `Nq` sits at key
//! position `i + L − Nq` (L the batch's key length), and `Window { left, right }` keeps keys
//! `j ∈ [pos − left, pos + right]`.

use std::ops::Range;
use std::sync::Arc;

use rand::SeedableRng;

use crate::attention::{Attention, Causal};
use crate::error::{Error, Result};

/// Block sizes a [`BlockMask`] may use.
pub const BLOCK_SIZES: [usize; 3] = [32, 64, 128];

/// An element-level mask; composes with [`Mask::and`] / [`Mask::or`].
#[derive(Clone, Debug, PartialEq)]
pub enum Mask {
    /// Keys within `left` before and `right` after the query's aligned position (`None`: unbounded).
    Window {
        /// Keys visible before the query position.
        left: Option<usize>,
        /// Keys visible after the query position.
        right: Option<usize>,
    },
    /// Keys `j < prefix` are visible to every query; after it the mask is causal (bottom-right).
    /// Use without `Attention::causal`, which would hide the prefix's later keys.
    Prefix(usize),
    /// Packed sequences: a query sees only keys of its own document. Ids are per token,
    /// `q_ids` `[B, Nq]` and `k_ids` `[B, Nk]`.
    Documents {
        /// Document id of every query token.
        q_ids: Arc<Vec<i32>>,
        /// Document id of every key token.
        k_ids: Arc<Vec<i32>>,
    },
    /// A dense boolean mask `[batch, heads, Nq, Nk]` where `batch` is 1 or B and `heads` is 1 or Hq
    /// (broadcast when 1). `true` = visible.
    Dense {
        /// Row-major visibility.
        data: Arc<Vec<bool>>,
        /// 1 or B.
        batch: usize,
        /// 1 or Hq.
        heads: usize,
    },
    /// Block-level visibility `[batch, heads, ceil(Nq/size), ceil(Nk/size)]` (`batch` 1 or B,
    /// `heads` 1 or Hq): a visible block shows all its elements.
    Blocks {
        /// Row-major visibility of blocks.
        data: Arc<Vec<bool>>,
        /// 1 or B.
        batch: usize,
        /// 1 or Hq.
        heads: usize,
        /// Block edge in elements.
        size: usize,
    },
    /// Global tokens: the first `n` positions are global: queries at aligned positions `< n` see
    /// every key and the first `n` keys are seen by every query (Longformer's global attention).
    Global(usize),
    /// Sparse Transformer *strided*: `|i − j| < stride` or `(pos − j) mod stride = 0`.
    Strided {
        /// The stride.
        stride: usize,
    },
    /// Sparse Transformer *fixed*: same block of `stride` (`⌊j/stride⌋ = ⌊pos/stride⌋`), or `j` in
    /// the last `c` positions of its block (`j mod stride ≥ stride − c`).
    Fixed {
        /// Block length.
        stride: usize,
        /// Summary positions per block.
        c: usize,
    },
    /// Dilated sliding window: `|pos − j| ≤ window·dilation` and `(pos − j) mod dilation = 0`.
    Dilated {
        /// Keys on each side.
        window: usize,
        /// Gap between visible keys.
        dilation: usize,
    },
    /// BigBird's random blocks: each query block sees `count` distinct key blocks (all of them when
    /// there are fewer), drawn without replacement from `seed`.
    RandomBlocks {
        /// Block edge.
        size: usize,
        /// Random key blocks per query block.
        count: usize,
        /// Seed of the draw (same for every batch and head).
        seed: u64,
    },
    /// Visible where every part is visible.
    And(Vec<Mask>),
    /// Visible where any part is visible.
    Or(Vec<Mask>),
}

/// The largest `k` of [`TopK`].
pub const TOPK_MAX: usize = 32;

/// Dynamic block sparsity (MoBA / Native Sparse Attention style): on every call each query block
/// attends to the `k` key blocks whose mean key scores best against the block's mean query.
///
/// Selection, per (batch, query head, query block of `block_size` rows), identically on the GPU
/// (f32) and in the oracle (f64): pool queries and keys by the mean over each block (keys only below
/// the batch's key length); score `scale · q̄ · k̄`; a key block is *eligible* when it holds a key
/// below the key length and, with a causal mask, its first key is visible to the block's last
/// query. Always keep the *local* block (holding the aligned position of the block's last query,
/// bottom-right aligned unless the causal mask is top-left) and, with `sink`, block 0; fill up to `k`
/// with the best other eligible blocks by score, ties going to the lower block index. Within the
/// chosen blocks the causal mask and key padding still apply element by element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopK {
    /// Key blocks per query block (1..=32), forced ones included.
    pub k: usize,
    /// Block edge (32, 64 or 128).
    pub block_size: usize,
    /// Always keep key block 0 (an attention sink).
    pub sink: bool,
}

impl TopK {
    /// Fails for k outside 1..=32 or an unsupported block size.
    pub fn validate(&self) -> Result<()> {
        if self.k == 0 || self.k > TOPK_MAX {
            return Err(Error::InvalidOption(format!("top-k: k = {} must be in 1..={TOPK_MAX}", self.k)));
        }
        if !BLOCK_SIZES.contains(&self.block_size) {
            return Err(Error::InvalidOption(format!(
                "top-k block size {} is not supported: use one of {BLOCK_SIZES:?}",
                self.block_size
            )));
        }
        Ok(())
    }
}

/// Sizes a mask is evaluated against.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    /// B.
    pub batch: usize,
    /// Hq.
    pub heads: usize,
    /// Nq.
    pub q_len: usize,
    /// Nk.
    pub kv_len: usize,
}

impl Mask {
    /// A sliding window of `left` keys before and `right` after the query position.
    pub fn window(left: usize, right: usize) -> Self {
        Mask::Window { left: Some(left), right: Some(right) }
    }
    /// Documents given by one id array `[B, N]` for both queries and keys (Nq = Nk).
    pub fn documents(ids: Vec<i32>) -> Self {
        let ids = Arc::new(ids);
        Mask::Documents { q_ids: ids.clone(), k_ids: ids }
    }
    /// Documents given by cumulative offsets per batch row (`[0, n1, n1+n2, …, N]`, FlashAttention's
    /// `cu_seqlens`) for both queries and keys.
    pub fn documents_from_offsets(offsets: &[Vec<usize>]) -> Result<Self> {
        let mut ids = Vec::new();
        for (b, off) in offsets.iter().enumerate() {
            if off.first() != Some(&0) || off.windows(2).any(|w| w[1] < w[0]) {
                return Err(Error::InvalidOption(format!(
                    "document offsets of batch {b} must start at 0 and not decrease"
                )));
            }
            for (d, w) in off.windows(2).enumerate() {
                ids.extend(std::iter::repeat_n(d as i32, w[1] - w[0]));
            }
        }
        Ok(Mask::documents(ids))
    }
    /// Both masks.
    pub fn and(self, other: Mask) -> Self {
        Mask::And(vec![self, other])
    }
    /// Either mask.
    pub fn or(self, other: Mask) -> Self {
        Mask::Or(vec![self, other])
    }
    /// Longformer: a window of `window` keys on each side plus `global` global tokens.
    pub fn longformer(window: usize, global: usize) -> Self {
        Mask::window(window, window).or(Mask::Global(global))
    }
    /// BigBird: window + global tokens + `random` random key blocks of `size` per query block.
    pub fn bigbird(window: usize, global: usize, random: usize, size: usize, seed: u64) -> Self {
        Mask::Or(vec![
            Mask::window(window, window),
            Mask::Global(global),
            Mask::RandomBlocks { size, count: random, seed },
        ])
    }

    /// Check the mask's own sizes and values against the problem.
    pub fn validate(&self, d: Dims) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidOption(m));
        match self {
            Mask::Documents { q_ids, k_ids }
                if q_ids.len() != d.batch * d.q_len || k_ids.len() != d.batch * d.kv_len =>
            {
                return bad(format!(
                    "document ids: {} query ids and {} key ids given, {}×{} and {}×{} expected",
                    q_ids.len(),
                    k_ids.len(),
                    d.batch,
                    d.q_len,
                    d.batch,
                    d.kv_len
                ));
            }
            Mask::Dense { data, batch, heads } => {
                if !(*batch == 1 || *batch == d.batch) || !(*heads == 1 || *heads == d.heads) {
                    return bad(format!("dense mask of {batch} batches × {heads} heads for B={} Hq={}: each must be 1 or equal", d.batch, d.heads));
                }
                if data.len() != batch * heads * d.q_len * d.kv_len {
                    return bad(format!(
                        "dense mask has {} elements, {}×{}×{}×{} expected",
                        data.len(),
                        batch,
                        heads,
                        d.q_len,
                        d.kv_len
                    ));
                }
            }
            Mask::Blocks { data, batch, heads, size } => {
                if !BLOCK_SIZES.contains(size) {
                    return bad(format!("block size {size} is not supported: use one of {BLOCK_SIZES:?}"));
                }
                if !(*batch == 1 || *batch == d.batch) || !(*heads == 1 || *heads == d.heads) {
                    return bad(format!("block mask of {batch} batches × {heads} heads for B={} Hq={}: each must be 1 or equal", d.batch, d.heads));
                }
                let (qb, kb) = (d.q_len.div_ceil(*size), d.kv_len.div_ceil(*size));
                if data.len() != batch * heads * qb * kb {
                    return bad(format!(
                        "block mask has {} entries, {batch}×{heads}×{qb}×{kb} expected for block size {size}",
                        data.len()
                    ));
                }
            }
            Mask::Strided { stride } | Mask::Fixed { stride, .. } if *stride == 0 => {
                return bad("pattern stride must be at least 1".into());
            }
            Mask::Fixed { stride, c } if c > stride => {
                return bad(format!("fixed pattern: c = {c} exceeds the stride {stride}"));
            }
            Mask::Dilated { dilation: 0, .. } => return bad("dilation must be at least 1".into()),
            Mask::RandomBlocks { size, .. } if *size == 0 => {
                return bad("random block size must be at least 1".into());
            }
            Mask::And(v) | Mask::Or(v) => {
                for m in v {
                    m.validate(d)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether query `i` of head `h` in batch `b` sees key `j` (`kv_len_b`: the batch's key
    /// length, which aligns windows and prefixes).
    #[allow(clippy::too_many_arguments)]
    pub fn visible(&self, d: Dims, b: usize, h: usize, i: usize, j: usize, kv_len_b: usize) -> bool {
        let pos = i as i64 + kv_len_b as i64 - d.q_len as i64; // query's aligned key position
        let (j_, dist) = (j as i64, pos - j as i64);
        match self {
            Mask::Window { left, right } => {
                let bound = |x: usize| i64::try_from(x).unwrap_or(i64::MAX);
                left.is_none_or(|l| dist <= bound(l)) && right.is_none_or(|r| -dist <= bound(r))
            }
            Mask::Prefix(p) => j < *p || j_ <= pos,
            Mask::Documents { q_ids, k_ids } => q_ids[b * d.q_len + i] == k_ids[b * d.kv_len + j],
            Mask::Dense { data, batch, heads } => {
                let (bb, hh) = (if *batch == 1 { 0 } else { b }, if *heads == 1 { 0 } else { h });
                data[((bb * heads + hh) * d.q_len + i) * d.kv_len + j]
            }
            Mask::Blocks { data, batch, heads, size } => {
                let (bb, hh) = (if *batch == 1 { 0 } else { b }, if *heads == 1 { 0 } else { h });
                let (qb, kb) = (d.q_len.div_ceil(*size), d.kv_len.div_ceil(*size));
                data[((bb * heads + hh) * qb + i / size) * kb + j / size]
            }
            Mask::Global(n) => pos < i64::try_from(*n).unwrap_or(i64::MAX) || j < *n,
            Mask::Strided { stride } => dist.abs() < *stride as i64 || dist.rem_euclid(*stride as i64) == 0,
            Mask::Fixed { stride, c } => {
                let s = *stride as i64;
                j_.div_euclid(s) == pos.div_euclid(s) || j_.rem_euclid(s) >= s - *c as i64
            }
            Mask::Dilated { window, dilation } => {
                let reach = i64::try_from(window.saturating_mul(*dilation)).unwrap_or(i64::MAX);
                dist.abs() <= reach && dist.rem_euclid(*dilation as i64) == 0
            }
            Mask::RandomBlocks { size, count, seed } => random_block_visible(*seed, *size, *count, d, i, j),
            Mask::And(v) => v.iter().all(|m| m.visible(d, b, h, i, j, kv_len_b)),
            Mask::Or(v) => v.iter().any(|m| m.visible(d, b, h, i, j, kv_len_b)),
        }
    }

    /// How the mask covers the rectangle of queries `rows` × keys `cols` (both non-empty) of batch
    /// `b`, head `h`: exactly, or [`Cover::Mixed`] when it cannot tell without looking at every
    /// element (never wrong: `Full` and `Empty` are only said when true of every element).
    fn cover(
        &self,
        d: Dims,
        b: usize,
        h: usize,
        rows: Range<usize>,
        cols: Range<usize>,
        kv_len_b: usize,
    ) -> Cover {
        // the aligned query position minus the key, over the rectangle: [lo, hi]
        let shift = kv_len_b as i64 - d.q_len as i64;
        let (i0, i1, j0, j1) =
            (rows.start as i64, rows.end as i64 - 1, cols.start as i64, cols.end as i64 - 1);
        let (lo, hi) = (i0 + shift - j1, i1 + shift - j0);
        let bound = |x: usize| i64::try_from(x).unwrap_or(i64::MAX);
        // visible exactly where a ≤ dist ≤ c
        let band = |a: i64, c: i64| Cover::of(lo >= a && hi <= c, hi < a || lo > c);
        let one_cell = |size: usize| {
            rows.start / size == (rows.end - 1) / size && cols.start / size == (cols.end - 1) / size
        };
        let parts = |v: &[Mask], start: Cover, join: fn(Cover, Cover) -> Cover, decided: Cover| {
            v.iter()
                .try_fold(start, |acc, m| {
                    let c = join(acc, m.cover(d, b, h, rows.clone(), cols.clone(), kv_len_b));
                    if c == decided {
                        Err(c)
                    } else {
                        Ok(c)
                    }
                })
                .unwrap_or_else(|c| c)
        };
        match self {
            Mask::Window { left, right } => {
                band(right.map_or(i64::MIN, |r| -bound(r)), left.map_or(i64::MAX, bound))
            }
            // j < p, or j ≤ pos
            Mask::Prefix(p) => {
                let p = bound(*p);
                Cover::of(j1 < p || lo >= 0, j0 >= p && hi < 0)
            }
            // pos < n, or j < n
            Mask::Global(n) => {
                let n = bound(*n);
                Cover::of(i1 + shift < n || j1 < n, i0 + shift >= n && j0 >= n)
            }
            Mask::Dilated { window, dilation } => {
                let reach = bound(window.saturating_mul(*dilation));
                if *dilation == 1 {
                    band(-reach, reach)
                } else {
                    band(-reach, reach).at_most_mixed()
                }
            }
            Mask::Strided { stride } => {
                let s = bound(*stride);
                if lo > -s && hi < s {
                    Cover::Full
                } else {
                    Cover::Mixed
                }
            }
            Mask::Documents { q_ids, k_ids } => {
                let span =
                    |ids: &[i32]| ids.iter().fold((i32::MAX, i32::MIN), |(a, c), &x| (a.min(x), c.max(x)));
                let (qa, qc) = span(&q_ids[b * d.q_len + rows.start..b * d.q_len + rows.end]);
                let (ka, kc) = span(&k_ids[b * d.kv_len + cols.start..b * d.kv_len + cols.end]);
                Cover::of(qa == qc && ka == kc && qa == ka, qc < ka || kc < qa)
            }
            Mask::Blocks { size, .. } | Mask::RandomBlocks { size, .. } if one_cell(*size) => {
                let v = self.visible(d, b, h, rows.start, cols.start, kv_len_b);
                Cover::of(v, !v)
            }
            // stop at the first part that decides (Empty for And, Full for Or)
            Mask::And(v) => parts(v, Cover::Full, Cover::and, Cover::Empty),
            Mask::Or(v) => parts(v, Cover::Empty, Cover::or, Cover::Full),
            _ => Cover::Mixed,
        }
    }

    /// True when the predicate does not depend on the batch index (so one block table serves all).
    fn batch_invariant(&self) -> bool {
        match self {
            Mask::Documents { .. } => false,
            Mask::Dense { batch, .. } | Mask::Blocks { batch, .. } => *batch == 1,
            Mask::And(v) | Mask::Or(v) => v.iter().all(Mask::batch_invariant),
            _ => true,
        }
    }

    /// True when the predicate does not depend on the head.
    fn head_invariant(&self) -> bool {
        match self {
            Mask::Dense { heads, .. } | Mask::Blocks { heads, .. } => *heads == 1,
            Mask::And(v) | Mask::Or(v) => v.iter().all(Mask::head_invariant),
            _ => true,
        }
    }
}

/// (seed, key blocks, count, query block) of one random draw.
type DrawKey = (u64, usize, usize, usize);

/// The `count` key blocks query block `qb` sees, drawn from `seed` (deterministic per query block).
fn random_block_visible(seed: u64, size: usize, count: usize, d: Dims, i: usize, j: usize) -> bool {
    let kb = d.kv_len.div_ceil(size);
    let qb = i / size;
    // the draw of the last query block asked for, per thread: callers walk keys within a query
    // block, so this saves a seeded RNG and a draw per element (or per block)
    thread_local! {
        static LAST: std::cell::RefCell<Option<(DrawKey, Vec<usize>)>> = const { std::cell::RefCell::new(None) };
    }
    let key = (seed, kb, count, qb);
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.as_ref().is_none_or(|(k, _)| *k != key) {
            let mut rng =
                rand::rngs::StdRng::seed_from_u64(seed ^ (qb as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            *last = Some((key, rand::seq::index::sample(&mut rng, kb, count.min(kb)).into_vec()));
        }
        last.as_ref().is_some_and(|(_, blocks)| blocks.contains(&(j / size)))
    })
}

/// How a predicate covers a rectangle of the score matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cover {
    /// Every element visible.
    Full,
    /// No element visible.
    Empty,
    /// Some, or unknown without looking at each element.
    Mixed,
}

impl Cover {
    fn of(full: bool, empty: bool) -> Self {
        if full {
            Cover::Full
        } else if empty {
            Cover::Empty
        } else {
            Cover::Mixed
        }
    }
    /// `Empty` stays (nothing visible), `Full` becomes `Mixed` (a sub-pattern hides some).
    fn at_most_mixed(self) -> Self {
        if self == Cover::Empty {
            Cover::Empty
        } else {
            Cover::Mixed
        }
    }
    fn and(self, other: Self) -> Self {
        match (self, other) {
            (Cover::Empty, _) | (_, Cover::Empty) => Cover::Empty,
            (Cover::Full, Cover::Full) => Cover::Full,
            _ => Cover::Mixed,
        }
    }
    fn or(self, other: Self) -> Self {
        match (self, other) {
            (Cover::Full, _) | (_, Cover::Full) => Cover::Full,
            (Cover::Empty, Cover::Empty) => Cover::Empty,
            _ => Cover::Mixed,
        }
    }
}

/// How the full predicate of a call ([`visible`]) covers queries `rows` × keys `cols` of batch `b`,
/// head `h` (exact, or `Mixed` when unsure).
fn cover(attn: &Attention, d: Dims, b: usize, h: usize, rows: Range<usize>, cols: Range<usize>) -> Cover {
    let kv_len_b = attn.kv_lens.as_ref().map_or(d.kv_len, |l| l[b] as usize);
    let (i0, i1, j0, j1) = (rows.start as i64, rows.end as i64 - 1, cols.start as i64, cols.end as i64 - 1);
    let padding = Cover::of(j1 < kv_len_b as i64, j0 >= kv_len_b as i64);
    let causal = match attn.causal {
        None => Cover::Full,
        Some(Causal::TopLeft) => Cover::of(j1 <= i0, j0 > i1),
        Some(Causal::BottomRight) => {
            let shift = kv_len_b as i64 - d.q_len as i64;
            Cover::of(j1 <= i0 + shift, j0 > i1 + shift)
        }
    };
    let mask =
        attn.mask.as_ref().map_or(Cover::Full, |m| m.cover(d, b, h, rows.clone(), cols.clone(), kv_len_b));
    let table = if attn.block_mask.is_some() { Cover::Mixed } else { Cover::Full };
    padding.and(causal).and(mask).and(table)
}

/// Full visibility predicate of a call: key padding, causal, and the optional mask.
pub fn visible(attn: &Attention, d: Dims, b: usize, h: usize, i: usize, j: usize) -> bool {
    let kv_len_b = attn.kv_lens.as_ref().map_or(d.kv_len, |l| l[b] as usize);
    if j >= kv_len_b {
        return false;
    }
    let causal_ok = match attn.causal {
        None => true,
        Some(Causal::TopLeft) => j <= i,
        Some(Causal::BottomRight) => (j as i64) <= i as i64 + kv_len_b as i64 - d.q_len as i64,
    };
    causal_ok
        && attn.mask.as_ref().is_none_or(|m| m.visible(d, b, h, i, j, kv_len_b))
        && attn.block_mask.as_ref().is_none_or(|bm| bm.visible(b, h, i, j))
}

/// One listed key block: its index and, for a partial block, where its bitmap starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockEntry {
    /// Key block index.
    pub key_block: u32,
    /// Offset (in u32 words) of the block's `size × size` bitmap in [`BlockMask::bits`], row-major
    /// with `size/32` words per query row; `None` for a full block.
    pub bits: Option<u32>,
}

/// The kernel-level mask: per (batch, head, query block) the key blocks to visit.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockMask {
    /// Block edge (queries and keys), one of [`BLOCK_SIZES`].
    pub size: usize,
    /// 1 or B.
    pub batch: usize,
    /// 1 or Hq.
    pub heads: usize,
    /// Query blocks (`ceil(Nq/size)`).
    pub q_blocks: usize,
    /// Key blocks (`ceil(Nk/size)`).
    pub k_blocks: usize,
    /// Lists in (batch, head, query block) order.
    pub lists: Vec<Vec<BlockEntry>>,
    /// Bitmaps of the partial blocks.
    pub bits: Vec<u32>,
    dims: (usize, usize),
}

impl BlockMask {
    /// Evaluate the full predicate of `attn` (key padding, causal, mask) over every block and keep
    /// the non-empty ones. Blocks that the mask's structure shows to be wholly visible or hidden
    /// (windows, causal, prefix, global tokens, documents in order, padding, and their `And`/`Or`)
    /// cost O(1) each; only the others evaluate the predicate per element. Reuse the result.
    pub fn build(attn: &Attention, d: Dims, size: usize) -> Result<Self> {
        if !BLOCK_SIZES.contains(&size) {
            return Err(Error::InvalidOption(format!(
                "block size {size} is not supported: use one of {BLOCK_SIZES:?}"
            )));
        }
        if let Some(m) = &attn.mask {
            m.validate(d)?;
        }
        let mask = attn.mask.as_ref();
        let batch =
            if attn.kv_lens.is_none() && mask.is_none_or(|m| m.batch_invariant()) { 1 } else { d.batch };
        let heads = if mask.is_none_or(|m| m.head_invariant()) { 1 } else { d.heads };
        let (qbs, kbs) = (d.q_len.div_ceil(size), d.kv_len.div_ceil(size));
        let words = size / 32;
        let mut lists = Vec::with_capacity(batch * heads * qbs);
        let mut bits = Vec::new();
        let mut tile = vec![0u32; size * words];
        for b in 0..batch {
            for h in 0..heads {
                for qb in 0..qbs {
                    let mut list = Vec::new();
                    for kb in 0..kbs {
                        let (rows, cols) = (
                            qb * size..d.q_len.min(qb * size + size),
                            kb * size..d.kv_len.min(kb * size + size),
                        );
                        match cover(attn, d, b, h, rows, cols) {
                            Cover::Empty => continue,
                            Cover::Full => {
                                list.push(BlockEntry { key_block: kb as u32, bits: None });
                                continue;
                            }
                            Cover::Mixed => {}
                        }
                        tile.iter_mut().for_each(|w| *w = 0);
                        let (mut seen, mut total) = (0usize, 0usize);
                        for r in 0..size.min(d.q_len - qb * size) {
                            for c in 0..size.min(d.kv_len - kb * size) {
                                total += 1;
                                if visible(attn, d, b, h, qb * size + r, kb * size + c) {
                                    seen += 1;
                                    tile[r * words + c / 32] |= 1 << (c % 32);
                                }
                            }
                        }
                        if seen == 0 {
                            continue;
                        }
                        let entry_bits = if seen == total {
                            None
                        } else {
                            bits.extend_from_slice(&tile);
                            Some((bits.len() - tile.len()) as u32)
                        };
                        list.push(BlockEntry { key_block: kb as u32, bits: entry_bits });
                    }
                    lists.push(list);
                }
            }
        }
        Ok(Self { size, batch, heads, q_blocks: qbs, k_blocks: kbs, lists, bits, dims: (d.q_len, d.kv_len) })
    }

    /// The list of (batch `b`, head `h`, query block `qb`), broadcasting batch and head.
    pub fn list(&self, b: usize, h: usize, qb: usize) -> &[BlockEntry] {
        let (bb, hh) = (if self.batch == 1 { 0 } else { b }, if self.heads == 1 { 0 } else { h });
        &self.lists[(bb * self.heads + hh) * self.q_blocks + qb]
    }

    /// Whether the block mask shows element (i, j) of batch `b`, head `h`.
    pub fn visible(&self, b: usize, h: usize, i: usize, j: usize) -> bool {
        let words = self.size / 32;
        self.list(b, h, i / self.size).iter().any(|e| {
            e.key_block as usize == j / self.size
                && e.bits.is_none_or(|off| {
                    let (r, c) = (i % self.size, j % self.size);
                    self.bits[off as usize + r * words + c / 32] >> (c % 32) & 1 == 1
                })
        })
    }

    /// Fails unless the mask fits a problem of sizes `d`.
    pub fn check(&self, d: Dims) -> Result<()> {
        if self.dims != (d.q_len, d.kv_len)
            || !(self.batch == 1 || self.batch == d.batch)
            || !(self.heads == 1 || self.heads == d.heads)
        {
            return Err(Error::InvalidOption(format!(
                "block mask built for B={} H={} Nq={} Nk={} does not fit B={} Hq={} Nq={} Nk={}",
                self.batch, self.heads, self.dims.0, self.dims.1, d.batch, d.heads, d.q_len, d.kv_len
            )));
        }
        Ok(())
    }

    /// Longest key-block list.
    pub fn max_list(&self) -> usize {
        self.lists.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// Fraction of (query block, key block) pairs visited.
    pub fn density(&self) -> f64 {
        let visited: usize = self.lists.iter().map(Vec::len).sum();
        visited as f64 / (self.lists.len() * self.k_blocks).max(1) as f64
    }

    /// (Nq, Nk) the mask was built for.
    pub fn dims(&self) -> (usize, usize) {
        self.dims
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block table of every mask kind (and combinations, causal modes, key padding, documents
    /// in and out of order) shows exactly the predicate's elements, and a block carries a bitmap
    /// exactly when it is partial: what evaluating every element gives, whatever the shortcuts.
    #[test]
    fn build_matches_the_predicate_element_by_element() {
        let d = Dims { batch: 2, heads: 2, q_len: 150, kv_len: 270 };
        let docs = |shuffled: bool| {
            let q: Vec<i32> = (0..2 * 150).map(|x| if shuffled { x % 3 } else { (x % 150) / 40 }).collect();
            let k: Vec<i32> = (0..2 * 270).map(|x| if shuffled { x % 2 } else { (x % 270) / 70 }).collect();
            Mask::Documents { q_ids: Arc::new(q), k_ids: Arc::new(k) }
        };
        let masks = [
            None,
            Some(Mask::window(40, 0)),
            Some(Mask::window(7, 90)),
            Some(Mask::Window { left: None, right: Some(3) }),
            Some(Mask::Prefix(70)),
            Some(Mask::longformer(20, 33)),
            Some(Mask::bigbird(16, 8, 2, 32, 7)),
            Some(Mask::Strided { stride: 48 }),
            Some(Mask::Fixed { stride: 64, c: 5 }),
            Some(Mask::Dilated { window: 20, dilation: 1 }),
            Some(Mask::Dilated { window: 10, dilation: 3 }),
            Some(docs(false)),
            Some(docs(true)),
            Some(Mask::window(64, 64).and(Mask::Prefix(100)).or(Mask::Global(5))),
        ];
        for mask in masks {
            for causal in [None, Some(Causal::TopLeft), Some(Causal::BottomRight)] {
                for kv_lens in [None, Some(vec![270, 101])] {
                    let attn = Attention {
                        mask: mask.clone(),
                        causal,
                        kv_lens: kv_lens.clone(),
                        ..Attention::new()
                    };
                    for size in [32, 64] {
                        let bm = BlockMask::build(&attn, d, size).unwrap();
                        for (b, h) in [(0, 0), (1, 1)] {
                            for i in 0..d.q_len {
                                for j in 0..d.kv_len {
                                    assert_eq!(
                                        bm.visible(b, h, i, j),
                                        visible(&attn, d, b, h, i, j),
                                        "{mask:?} {causal:?} {kv_lens:?} size {size}: ({b}, {h}, {i}, {j})"
                                    );
                                }
                            }
                        }
                        // a bitmap only for partial blocks: some but not all of its elements
                        for (n, list) in bm.lists.iter().enumerate() {
                            let qb = n % bm.q_blocks;
                            let (b, h) = (n / bm.q_blocks / bm.heads, n / bm.q_blocks % bm.heads);
                            for e in list {
                                let (rows, cols) = (
                                    qb * size..d.q_len.min(qb * size + size),
                                    e.key_block as usize * size
                                        ..d.kv_len.min((e.key_block as usize + 1) * size),
                                );
                                let seen = rows
                                    .flat_map(|i| cols.clone().map(move |j| (i, j)))
                                    .filter(|&(i, j)| visible(&attn, d, b, h, i, j))
                                    .count();
                                let total = (d.q_len.min(qb * size + size) - qb * size) * cols.len();
                                assert!(seen > 0, "{mask:?}: an empty block is listed");
                                assert_eq!(
                                    e.bits.is_some(),
                                    seen < total,
                                    "{mask:?} {causal:?} block ({qb}, {})",
                                    e.key_block
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
