//! The fast CPU attention path: FlashAttention-2's tiled online softmax in f32, multithreaded over
//! all cores, with register-blocked micro-kernels that run on AVX2 + FMA when the CPU has them
//! (detected at run time) and on portable code the compiler vectorises otherwise.
//!
//! It computes what [`reference`](super::reference) computes (every option of [`Attention`]: scale,
//! causal masks of both alignments, key padding, GQA/MQA, ALiBi, soft cap, element masks, block
//! masks and top-k block selection; both layouts, in any mix), in f32 instead of f64.
//!
//! # Blocking
//!
//! The work is split into *items*: one (batch, query head, block of [`BR`] = 24 query rows) each.
//! Threads take items from a shared queue, heaviest first within a head, so causal problems (whose
//! items differ in cost) balance themselves. Items never share an output row, and each computes its
//! rows alone, so the result does not depend on the thread count.
//!
//! Inside an item everything is *transposed*: the query rows live in the SIMD lanes (3 vectors of 8).
//! A thread keeps, in L1-sized scratch,
//!
//! - `Qᵀ` (`D × BR`), pre-multiplied by `scale·log2 e` so the softmax can use `exp2`,
//! - `Sᵀ`, then `Pᵀ` (`BC × BR`), the scores of one block of [`BC`] = 126 keys, then their
//!   exponentials,
//! - `Oᵀ` (`D × BR`), the unnormalised output, with the running max `m` and sum `l` as 3 vectors.
//!
//! With rows in lanes the softmax needs no horizontal reduction: the row max over a key block is an
//! element-wise max, and rescaling `Oᵀ` by `exp2(m_old − m_new)` is one multiply per accumulator.
//! Per key block:
//!
//! 1. `Sᵀ = K·Qᵀ` by a 3-key × 24-row micro-kernel: per head-dim index it loads 3 vectors of `Qᵀ`,
//!    broadcasts 3 key values and issues 9 FMAs into 9 accumulators. (4 × 3 = 12 accumulators plus
//!    3 operands and a broadcast would need all 16 AVX2 registers, and LLVM then spills one into the
//!    loop-carried chain, which halves the speed.) The tile's max comes out with it.
//! 2. Only where needed, one pass that applies the soft cap, the ALiBi bias and the masks. The
//!    causal mask and key padding are applied only to *partial* blocks: the key loop of an item stops
//!    at the last key its last row sees, and a block that every row of the item sees in full skips
//!    the per-element test. Element masks are lowered once per call to a [`BlockMask`] (as on the
//!    GPU; a prebuilt one is used as it is), and top-k selection to the oracle's own choice of key
//!    blocks; per item and key block their lists become one 128-bit visibility word per row, so a
//!    block no row sees is skipped and a block every row sees in full needs no test.
//! 3. The online-softmax update: `exp2` by a degree-6 polynomial (exactly 0 for −∞, so a row that
//!    sees no key keeps `l = 0`: O = 0 and LSE = −∞, never NaN).
//! 4. `Oᵀ = alpha·Oᵀ + Vᵀ·Pᵀ` by a 3-head-dim × 24-row micro-kernel over the block's keys.
//!
//! Both micro-kernels read K and V through broadcasts, so neither needs a transpose; they are packed
//! once per call (in parallel, into a buffer the calling thread keeps for its next call) so that each
//! micro-kernel reads one contiguous stream: K as groups of 3 keys interleaved per head-dim index
//! (`[Nk/3][D][3]`), V per key block as groups of 3 head-dim indices (`[Nk/BC][D/3][BC][3]`).
//! Packing pads K to a multiple of 3 keys and V to a multiple of 3 head-dim indices with zeros, so
//! the micro-kernels have no remainder cases, and turns every layout into the same one.
//!
//! For B1 H8 D64 the two micro-kernels run at about the FMA peak and take ~87% of the time, the
//! softmax ~8%.

use std::borrow::Cow;
use std::f64::consts::{LN_2, LOG2_E};
use std::marker::PhantomData;
use std::sync::{Mutex, PoisonError};

use crate::attention::{Attention, Causal, HostOutput, HostTensor, Problem};
use crate::cpu::reference::topk_blocks;
use crate::error::{Error, Result};
use crate::mask::BlockMask;

/// SIMD width the kernels are written for (8 f32 lanes: one AVX2 register).
const LANES: usize = 8;
/// Query vectors per item.
const NV: usize = 3;
/// Query rows per item (`NV` vectors of `LANES`).
pub const BR: usize = NV * LANES;
/// Keys per key block.
pub const BC: usize = 126;
/// Keys per `S = K·Qᵀ` micro-tile (and K's packing group).
const MK: usize = 3;
/// Head-dim indices per `O += V·P` micro-tile (and V's packing group).
const MD: usize = 3;
// The micro-kernels are written out for 3 × 3 vectors (9 accumulators).
const _: () = assert!(MK == 3 && MD == 3 && NV == 3);
/// Largest packed K/V buffer (in floats: 64 MiB) a calling thread keeps for its next call.
const KEEP_SCRATCH: usize = 1 << 24;
/// Block edge used to lower `Attention::mask` when `Attention::block_size` is unset (as on the GPU).
const DEFAULT_MASK_BLOCK: usize = 64;
/// Below this many FLOPs one thread does everything (spawning threads would cost more).
const SERIAL_FLOPS: f64 = 2e6;

/// The instruction set the kernels run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// x86-64 AVX2 with FMA (256-bit vectors, 16 registers).
    Avx2Fma,
    /// Plain Rust the compiler vectorises for the build's target (SSE2 on a default x86-64 build).
    Portable,
}

impl Isa {
    /// The fastest instruction set this CPU supports.
    pub fn detect() -> Self {
        if Self::Avx2Fma.available() {
            Self::Avx2Fma
        } else {
            Self::Portable
        }
    }

    /// Whether this CPU can run `self`.
    pub fn available(self) -> bool {
        match self {
            Self::Avx2Fma => avx2_token().is_some(),
            Self::Portable => true,
        }
    }
}

/// Tuning of [`attention_with`]; the default is what [`attention`] uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Worker threads; `None`: all cores (`std::thread::available_parallelism`).
    pub threads: Option<usize>,
    /// Instruction set; `None`: [`Isa::detect`].
    pub isa: Option<Isa>,
}

/// Attention on the CPU in f32 with every option of [`Attention`], on all cores.
///
/// O comes back in Q's shape and layout. A row that sees no key gets O = 0 and LSE = −∞.
/// Invalid problems are rejected by [`Attention::validate`]. An element mask
/// ([`Attention::mask`]) is lowered to a [`BlockMask`] on every call, one predicate evaluation per
/// element on one thread, as on the GPU: set [`Attention::block_mask`] to a prebuilt one to pay
/// that once.
pub fn attention(q: &HostTensor, k: &HostTensor, v: &HostTensor, attn: &Attention) -> Result<HostOutput> {
    attention_with(q, k, v, attn, &Config::default())
}

/// [`attention`] with an explicit thread count and instruction set.
pub fn attention_with(
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    attn: &Attention,
    config: &Config,
) -> Result<HostOutput> {
    let p = attn.validate(q.shape, k.shape, v.shape)?;
    for (name, t) in [("Q", q), ("K", k), ("V", v)] {
        if t.data.len() != t.shape.len() {
            return Err(Error::ShapeMismatch(format!(
                "{name} holds {} elements but its shape {} needs {}",
                t.data.len(),
                t.shape,
                t.shape.len()
            )));
        }
    }
    let isa = config.isa.unwrap_or_else(Isa::detect);
    if !isa.available() {
        return Err(Error::InvalidOption(format!("this CPU cannot run the {isa:?} kernels")));
    }
    let threads = match config.threads {
        Some(t) => t.max(1),
        None if p.dense_flops() < SERIAL_FLOPS => 1,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };

    let extra = Extra::new(&p, attn, q, k)?;
    let heads = p.batch * p.kv_heads;
    let (k_len, v_len) = (heads * k_head_len(&p), heads * v_head_len(&p));
    let blocks = p.q_len.div_ceil(BR);
    let d = p.head_dim;
    // Within a head the heaviest blocks (the last rows, under a causal mask) go first, so the
    // queue ends on light items.
    let items: Vec<Item> = (0..p.batch)
        .flat_map(|b| (0..p.q_heads).flat_map(move |h| (0..blocks).rev().map(move |qb| (b, h, qb))))
        .map(|(b, h, qb)| Item { b, h, i0: qb * BR, n: BR.min(p.q_len - qb * BR) })
        .collect();
    let mut o = HostTensor::new(vec![0.0; q.shape.len()], q.shape, q.layout)?;
    let mut lse = vec![f32::NEG_INFINITY; p.batch * p.q_heads * p.q_len];
    with_scratch(k_len + v_len, |packed| {
        let (kp, vp) = packed.split_at_mut(k_len);
        pack_kv(&p, k, v, threads, kp, vp);
        let plan = Plan::new(&p, attn, extra.as_ref(), q, kp, vp);
        let out = Out { o: Disjoint::new(&mut o.data), lse: Disjoint::new(&mut lse) };
        let threads = threads.min(items.len());
        parallel(threads, items, || Scratch::new(d), |scr, item| plan.run(isa, item, scr, &out));
    });
    Ok(HostOutput::cpu(o, lse))
}

/// A mutable buffer that several threads write *disjoint* parts of (the items' rows of O and LSE).
struct Disjoint<'a> {
    ptr: *mut f32,
    len: usize,
    _buffer: PhantomData<&'a mut [f32]>,
}

// SAFETY: `Disjoint` hands out only the ranges its (unsafe) caller promises no other thread uses.
unsafe impl Send for Disjoint<'_> {}
unsafe impl Sync for Disjoint<'_> {}

impl<'a> Disjoint<'a> {
    fn new(buffer: &'a mut [f32]) -> Self {
        Self { ptr: buffer.as_mut_ptr(), len: buffer.len(), _buffer: PhantomData }
    }

    /// `buffer[at..at + len]`.
    ///
    /// # Safety
    /// No other slice overlapping this range may be alive (in any thread) while this one is.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, at: usize, len: usize) -> &mut [f32] {
        assert!(at <= self.len && len <= self.len - at, "range {at}+{len} out of {}", self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(at), len)
    }
}

/// The outputs, written by the items: each item owns its rows of O and their LSEs, and no
/// two items share a row, so every item's slices are disjoint from every other's.
struct Out<'a> {
    o: Disjoint<'a>,
    lse: Disjoint<'a>,
}

/// Visibility beyond causal and key padding (the options `mask`, `block_mask` and `topk`), as
/// key-block lists per (batch, query head, query block), each block full or with a bitmap.
enum Extra<'a> {
    /// A block mask: the prebuilt one, or one lowered from `Attention::mask` for this call.
    Blocks(Cow<'a, BlockMask>),
    /// The key blocks top-k selection chose (by the oracle's own selection, so both agree).
    TopK {
        /// Block edge.
        size: usize,
        /// Query heads.
        q_heads: usize,
        /// Query blocks per (batch, head).
        q_blocks: usize,
        /// Chosen key blocks per (batch, query head, query block).
        lists: Vec<Vec<u32>>,
    },
}

impl<'a> Extra<'a> {
    /// The extra visibility of a call, if it has any.
    fn new(p: &Problem, attn: &'a Attention, q: &HostTensor, k: &HostTensor) -> Result<Option<Self>> {
        if let Some(t) = attn.topk {
            let size = t.block_size;
            let lists = topk_blocks(q, k, attn)?.into_iter().map(|(chosen, _)| chosen).collect();
            return Ok(Some(Extra::TopK {
                size,
                q_heads: p.q_heads,
                q_blocks: p.q_len.div_ceil(size),
                lists,
            }));
        }
        Ok(match (&attn.mask, &attn.block_mask) {
            // A built block mask evaluates the whole predicate (and so any prebuilt block mask).
            (Some(_), _) => {
                let size = attn.launch.block_size.unwrap_or(DEFAULT_MASK_BLOCK);
                Some(Extra::Blocks(Cow::Owned(BlockMask::build(attn, p.dims(), size)?)))
            }
            (None, Some(bm)) => Some(Extra::Blocks(Cow::Borrowed(bm))),
            (None, None) => None,
        })
    }

    /// Bit `c` set when key `j0 + c` (c < bc ≤ 128) is visible to query row `i` of head `h` in
    /// batch `b`, as far as this extra visibility goes.
    fn row_bits(&self, b: usize, h: usize, i: usize, j0: usize, bc: usize) -> u128 {
        let span = |lo: usize, hi: usize| -> u128 {
            // keys lo..hi of the whole row, clipped to the block
            let (lo, hi) = (lo.max(j0), hi.min(j0 + bc));
            if lo >= hi {
                0
            } else {
                (u128::MAX >> (128 - (hi - lo))) << (lo - j0)
            }
        };
        match self {
            Extra::Blocks(bm) => {
                let (size, words, r) = (bm.size, bm.size / 32, i % bm.size);
                let mut out = 0;
                for e in bm.list(b, h, i / size) {
                    let k0 = e.key_block as usize * size;
                    match e.bits {
                        None => out |= span(k0, k0 + size),
                        Some(off) => {
                            let row = &bm.bits[off as usize + r * words..][..words];
                            for j in k0.max(j0)..(k0 + size).min(j0 + bc) {
                                let c = j - k0;
                                out |= u128::from(row[c / 32] >> (c % 32) & 1) << (j - j0);
                            }
                        }
                    }
                }
                out
            }
            Extra::TopK { size, q_heads, q_blocks, lists } => lists[(b * q_heads + h) * q_blocks + i / size]
                .iter()
                .fold(0, |out, &kb| out | span(kb as usize * size, (kb as usize + 1) * size)),
        }
    }
}

/// Run `body` on every element of `work` on `threads` threads, each with its own state from
/// `init`. Elements are handed out one at a time from a shared queue (dynamic scheduling).
fn parallel<T: Send, W>(
    threads: usize,
    work: Vec<T>,
    init: impl Fn() -> W + Sync,
    body: impl Fn(&mut W, T) + Sync,
) {
    if threads <= 1 {
        let mut state = init();
        work.into_iter().for_each(|t| body(&mut state, t));
        return;
    }
    let queue = Mutex::new(work.into_iter());
    let worker = || {
        let mut state = init();
        loop {
            // (its own statement: the lock must be released before `body` runs)
            let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
            let Some(t) = next else { break };
            body(&mut state, t);
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(worker);
        }
        worker(); // the calling thread is one of the workers
    });
}

/// Pack every (batch, K/V head) of K and V into the micro-kernels' layouts (see the module doc),
/// heads one after another, into `kp` and `vp` (every element is written, padding with zeros):
/// K as `[ceil(Nk/MK)][D][MK]`; V as `[ceil(Nk/BC)][ceil(D/MD)][BC][MD]`, so that one key block's
/// V is one contiguous stream, read tile after tile.
fn pack_kv(p: &Problem, k: &HostTensor, v: &HostTensor, threads: usize, kp: &mut [f32], vp: &mut [f32]) {
    let (d, nk) = (p.head_dim, p.kv_len);
    let work: Vec<_> =
        kp.chunks_exact_mut(k_head_len(p)).zip(vp.chunks_exact_mut(v_head_len(p))).enumerate().collect();
    let threads = if p.dense_flops() < SERIAL_FLOPS { 1 } else { threads.min(work.len()) };
    parallel(
        threads,
        work,
        || (),
        |_, (bh, (kp, vp))| {
            let (b, h) = (bh / p.kv_heads, bh % p.kv_heads);
            let k_row = |j: usize| (j < nk).then(|| &k.data[k.layout.offset(k.shape, b, h, j, 0)..][..d]);
            let v_row = |j: usize| (j < nk).then(|| &v.data[v.layout.offset(v.shape, b, h, j, 0)..][..d]);
            // Both loops write their output in order.
            for (g, group) in kp.chunks_exact_mut(d * MK).enumerate() {
                for m in 0..MK {
                    let dst = group.chunks_exact_mut(MK).map(|c| &mut c[m]);
                    match k_row(g * MK + m) {
                        Some(src) => dst.zip(src).for_each(|(dst, &x)| *dst = x),
                        None => dst.for_each(|dst| *dst = 0.0),
                    }
                }
            }
            let dp = d.next_multiple_of(MD);
            for (blk, block) in vp.chunks_exact_mut(dp * BC).enumerate() {
                for jj in 0..BC {
                    let src = v_row(blk * BC + jj).unwrap_or(&[]);
                    let mut x = 0..dp;
                    for t in 0..dp / MD {
                        for dst in &mut block[(t * BC + jj) * MD..][..MD] {
                            *dst = x.next().and_then(|x| src.get(x)).copied().unwrap_or(0.0);
                        }
                    }
                }
            }
        },
    );
}

/// Run `f` with a buffer of `len` floats (contents unspecified) that is kept per thread between
/// calls (up to [`KEEP_SCRATCH`] floats), sparing the page faults of a fresh allocation.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let mut buffer = SCRATCH.take();
    if buffer.len() < len {
        buffer = vec![0.0; len];
    }
    let result = f(&mut buffer[..len]);
    if buffer.len() <= KEEP_SCRATCH {
        SCRATCH.set(buffer);
    }
    result
}

/// Length of one head of packed K.
fn k_head_len(p: &Problem) -> usize {
    p.kv_len.next_multiple_of(MK) * p.head_dim
}

/// Length of one head of packed V.
fn v_head_len(p: &Problem) -> usize {
    p.kv_len.next_multiple_of(BC) * p.head_dim.next_multiple_of(MD)
}

/// One unit of work: rows `i0..i0 + n` (n ≤ BR) of query head `h` in batch `b`.
#[derive(Clone, Copy, Debug)]
struct Item {
    b: usize,
    h: usize,
    i0: usize,
    n: usize,
}

/// A thread's scratch tiles (see the module doc).
struct Scratch {
    /// `Qᵀ`, `D × BR`, pre-scaled.
    qt: Vec<f32>,
    /// `Sᵀ`, then `Pᵀ`, of one key block: `BC × BR`.
    st: Vec<f32>,
    /// `Oᵀ`, `D' × BR` (D' = D rounded up to a multiple of `MD`).
    ot: Vec<f32>,
}

impl Scratch {
    fn new(d: usize) -> Self {
        Self { qt: vec![0.0; d * BR], st: vec![0.0; BC * BR], ot: vec![0.0; d.next_multiple_of(MD) * BR] }
    }
}

/// Everything an item needs, shared read-only by the threads.
struct Plan<'a> {
    p: Problem,
    q: &'a HostTensor,
    /// Packed K and V of all heads (see [`pack_kv`]).
    kp: &'a [f32],
    vp: &'a [f32],
    /// Factor applied to Q: `scale·log2 e`, or `scale/cap` with a soft cap.
    q_scale: f32,
    /// `cap·log2 e` when soft-capping.
    cap_l2e: Option<f32>,
    /// ALiBi slopes times `log2 e`.
    slopes_l2e: Option<Vec<f32>>,
    causal: Option<Causal>,
    kv_lens: Option<&'a [u32]>,
    /// Masks, block masks, top-k.
    extra: Option<&'a Extra<'a>>,
}

impl<'a> Plan<'a> {
    fn new(
        p: &Problem,
        attn: &'a Attention,
        extra: Option<&'a Extra<'a>>,
        q: &'a HostTensor,
        kp: &'a [f32],
        vp: &'a [f32],
    ) -> Self {
        let scale = attn.scale_for(p.head_dim) as f64;
        let (q_scale, cap_l2e) = match attn.softcap {
            Some(cap) => (scale / cap as f64, Some((cap as f64 * LOG2_E) as f32)),
            None => (scale * LOG2_E, None),
        };
        Plan {
            p: *p,
            q,
            kp,
            vp,
            q_scale: q_scale as f32,
            cap_l2e,
            slopes_l2e: attn
                .alibi_slopes
                .as_ref()
                .map(|s| s.iter().map(|&x| (x as f64 * LOG2_E) as f32).collect()),
            causal: attn.causal,
            kv_lens: attn.kv_lens.as_deref(),
            extra,
        }
    }

    /// Compute one item and write its rows of O and LSE into `out`.
    fn run(&self, isa: Isa, item: Item, scr: &mut Scratch, out: &Out) {
        match isa {
            Isa::Avx2Fma => match avx2_token() {
                // SAFETY: the token exists only on a CPU with AVX2 and FMA.
                #[cfg(target_arch = "x86_64")]
                Some(avx) => unsafe { run_item_avx2(avx, self, item, scr, out) },
                _ => unreachable!("attention_with checked that the ISA is available"),
            },
            Isa::Portable => run_item(Portable, self, item, scr, out),
        }
    }

    /// Exclusive end of the keys query row `i` of batch `b` sees (they are `0..end`).
    fn key_end(&self, b: usize, i: usize) -> usize {
        let l = self.kv_len(b);
        match self.causal {
            None => l,
            Some(Causal::TopLeft) => (i + 1).min(l),
            Some(Causal::BottomRight) => {
                (i as i64 + 1 + l as i64 - self.p.q_len as i64).clamp(0, l as i64) as usize
            }
        }
    }

    /// Effective key length of batch `b`.
    fn kv_len(&self, b: usize) -> usize {
        self.kv_lens.map_or(self.p.kv_len, |l| l[b] as usize)
    }

    /// Fill `qt` with the item's rows of Q, transposed and pre-scaled; lanes past `n` are zero.
    fn load_qt(&self, item: Item, qt: &mut [f32]) {
        let (q, d) = (self.q, self.p.head_dim);
        let qt = &mut qt[..d * BR];
        for r in 0..BR {
            let lanes = qt.chunks_exact_mut(BR).map(|lanes| &mut lanes[r]);
            if r < item.n {
                let at = q.layout.offset(q.shape, item.b, item.h, item.i0 + r, 0);
                lanes.zip(&q.data[at..at + d]).for_each(|(lane, &x)| *lane = x * self.q_scale);
            } else {
                lanes.for_each(|lane| *lane = 0.0);
            }
        }
    }
}

/// Per-element work on a block of scores beyond the plain scaled dot product.
struct Post<'a, S: Simd> {
    /// Soft cap times `log2 e`.
    cap_l2e: Option<f32>,
    /// ALiBi slope times `log2 e`, and per lane `i + L − Nq − j0` (the distance is `|i + L − Nq − j|`).
    alibi: Option<(f32, [S::V; NV])>,
    /// Per lane the key-end of its row minus `j0`: keys at or past it become −∞.
    mask: Option<[S::V; NV]>,
    /// Per lane the visible keys of the block as far as [`Extra`] goes (bit `jj` for key `j0 + jj`).
    extra: Option<&'a [u128; BR]>,
}

/// The AVX2 + FMA build of [`run_item`].
///
/// # Safety
/// The CPU must have AVX2 and FMA (an [`Avx2`] value proves it).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_item_avx2(s: Avx2, plan: &Plan, item: Item, scr: &mut Scratch, out: &Out) {
    run_item(s, plan, item, scr, out)
}

/// Compute one item: the online-softmax loop over its key blocks, then normalise into its rows of
/// O and LSE in `out`. Inlined into an entry point per instruction set (`#[inline(always)]` all the way
/// down, so the whole loop is compiled with that set's target features).
#[inline(always)]
fn run_item<S: Simd>(s: S, plan: &Plan, item: Item, scr: &mut Scratch, out: &Out) {
    let p = &plan.p;
    let d = p.head_dim;
    let dp = d.next_multiple_of(MD);
    let hk_index = item.b * p.kv_heads + item.h / p.group();
    let kp = &plan.kp[hk_index * k_head_len(p)..][..k_head_len(p)];
    let vp = &plan.vp[hk_index * v_head_len(p)..][..v_head_len(p)];
    plan.load_qt(item, &mut scr.qt);

    // Key bounds: rows see keys 0..key_end(row), which grows with the row.
    let last = item.i0 + item.n - 1;
    let (kv_full, kv_end) = (plan.key_end(item.b, item.i0), plan.key_end(item.b, last));
    // Per lane (row) of a block from key j0: a key position relative to j0, exact in f32 where it
    // matters (near the block) however long the sequence.
    let lane_vectors = |j0: usize, f: &dyn Fn(usize) -> i64| -> [S::V; NV] {
        let lanes: [f32; BR] = std::array::from_fn(|r| (f((item.i0 + r).min(last)) - j0 as i64) as f32);
        // SAFETY: `lanes` holds NV·LANES floats.
        std::array::from_fn(|n| unsafe { s.load(lanes.as_ptr().add(n * LANES)) })
    };
    let key_end = |i: usize| plan.key_end(item.b, i) as i64;
    let offset = plan.kv_len(item.b) as i64 - p.q_len as i64;
    let aligned = |i: usize| i as i64 + offset; // the query's key position: ALiBi's distance is |that − j|
    let slope = plan.slopes_l2e.as_ref().map(|sl| sl[item.h]);

    let mut m = [s.splat(f32::NEG_INFINITY); NV];
    let mut l = [s.splat(0.0); NV];
    scr.ot.fill(0.0);
    for j0 in (0..kv_end).step_by(BC) {
        let bc = BC.min(kv_end - j0);
        let vis: Option<[u128; BR]> = plan
            .extra
            .map(|e| std::array::from_fn(|r| e.row_bits(item.b, item.h, (item.i0 + r).min(last), j0, bc)));
        if vis.is_some_and(|v| v[..item.n].iter().all(|&bits| bits == 0)) {
            continue; // no row of the item sees a key of this block
        }
        let all = u128::MAX >> (128 - bc);
        let mut max = qk_block(s, &scr.qt, kp, d, j0, bc, &mut scr.st);
        let post = Post::<S> {
            cap_l2e: plan.cap_l2e,
            alibi: slope.map(|sl| (sl, lane_vectors(j0, &aligned))),
            mask: (j0 + bc > kv_full).then(|| lane_vectors(j0, &key_end)),
            extra: vis.as_ref().filter(|v| v.iter().any(|&bits| bits != all)),
        };
        if post.cap_l2e.is_some() || post.alibi.is_some() || post.mask.is_some() || post.extra.is_some() {
            max = post_block(s, &post, &mut scr.st, bc);
        }
        let alpha = softmax_block(s, &mut scr.st, bc, max, &mut m, &mut l);
        pv_block(s, &scr.st, &vp[j0 * dp..][..BC * dp], bc, &alpha, &mut scr.ot);
    }

    let (mut m_lanes, mut l_lanes) = ([0.0f32; BR], [0.0f32; BR]);
    for n in 0..NV {
        // SAFETY: both arrays hold NV·LANES floats.
        unsafe {
            s.store(m_lanes.as_mut_ptr().add(n * LANES), m[n]);
            s.store(l_lanes.as_mut_ptr().add(n * LANES), l[n]);
        }
    }
    let q = plan.q;
    // SAFETY: these LSEs and the rows below belong to this item alone (see `Out`).
    let lse = unsafe { out.lse.slice((item.b * p.q_heads + item.h) * p.q_len + item.i0, item.n) };
    for r in 0..item.n {
        let at = q.layout.offset(q.shape, item.b, item.h, item.i0 + r, 0);
        let row = unsafe { out.o.slice(at, d) };
        // l is exactly 0 only for a row that saw no key (a NaN input makes it NaN, and NaN out).
        if l_lanes[r] == 0.0 {
            row.fill(0.0);
            lse[r] = f32::NEG_INFINITY;
        } else {
            let inv = 1.0 / l_lanes[r];
            row.iter_mut().enumerate().for_each(|(x, o)| *o = scr.ot[x * BR + r] * inv);
            lse[r] = ((m_lanes[r] as f64 + (l_lanes[r] as f64).log2()) * LN_2) as f32;
        }
    }
}

/// `Sᵀ = K·Qᵀ` for keys `j0..j0 + bc` into `st`; returns the max over those keys per lane. Rows
/// past `bc`, up to the next multiple of `MK`, get the scores of K's zero padding or of later keys;
/// they are never read.
#[inline(always)]
fn qk_block<S: Simd>(
    s: S,
    qt: &[f32],
    kp: &[f32],
    d: usize,
    j0: usize,
    bc: usize,
    st: &mut [f32],
) -> [S::V; NV] {
    let (full, groups) = (bc / MK, bc.div_ceil(MK));
    let g0 = j0 / MK;
    assert!(j0.is_multiple_of(MK) && qt.len() >= d * BR && st.len() >= groups * MK * BR);
    assert!(kp.len() >= (g0 + groups) * MK * d);
    let mut max = [s.splat(f32::NEG_INFINITY); NV];
    for g in 0..groups {
        // SAFETY: the asserts above keep every access of the tile in bounds.
        let tile_max = unsafe {
            qk_tile(s, qt.as_ptr(), kp.as_ptr().add((g0 + g) * MK * d), d, st.as_mut_ptr().add(g * MK * BR))
        };
        if g < full {
            max = std::array::from_fn(|n| s.max(max[n], tile_max[n]));
        }
    }
    // The keys of a last, partial group.
    for row in st[full * MK * BR..bc * BR].chunks_exact(BR) {
        // SAFETY: `row` is NV·LANES floats long.
        max = std::array::from_fn(|n| s.max(max[n], unsafe { s.load(row.as_ptr().add(n * LANES)) }));
    }
    max
}

/// The `S` micro-kernel: 3 keys × 24 query rows in 9 accumulators, summed over the head dim, stored
/// to `st`; returns their max per lane.
///
/// # Safety
/// `qt` must hold `d·BR` floats, `kg` `d·MK` (one packed key group), `st` `MK·BR`.
#[inline(always)]
unsafe fn qk_tile<S: Simd>(s: S, qt: *const f32, kg: *const f32, d: usize, st: *mut f32) -> [S::V; NV] {
    let z = s.splat(0.0);
    let (mut a00, mut a01, mut a02, mut a10, mut a11, mut a12, mut a20, mut a21, mut a22) =
        (z, z, z, z, z, z, z, z, z);
    for x in 0..d {
        let q = qt.add(x * BR);
        let (q0, q1, q2) = (s.load(q), s.load(q.add(LANES)), s.load(q.add(2 * LANES)));
        let k = kg.add(x * MK);
        let b = s.splat(*k);
        a00 = s.fma(b, q0, a00);
        a01 = s.fma(b, q1, a01);
        a02 = s.fma(b, q2, a02);
        let b = s.splat(*k.add(1));
        a10 = s.fma(b, q0, a10);
        a11 = s.fma(b, q1, a11);
        a12 = s.fma(b, q2, a12);
        let b = s.splat(*k.add(2));
        a20 = s.fma(b, q0, a20);
        a21 = s.fma(b, q1, a21);
        a22 = s.fma(b, q2, a22);
    }
    for (i, a) in [a00, a01, a02, a10, a11, a12, a20, a21, a22].into_iter().enumerate() {
        s.store(st.add((i / NV) * BR + (i % NV) * LANES), a);
    }
    [s.max(a00, s.max(a10, a20)), s.max(a01, s.max(a11, a21)), s.max(a02, s.max(a12, a22))]
}

/// Soft cap, ALiBi bias and masks on the first `bc` key rows of `st` (keys `j0 + jj`, with the
/// positions in `post` relative to `j0`); returns the new max over those keys per lane.
#[inline(always)]
fn post_block<S: Simd>(s: S, post: &Post<S>, st: &mut [f32], bc: usize) -> [S::V; NV] {
    let mut max = [s.splat(f32::NEG_INFINITY); NV];
    for (jj, row) in st.chunks_exact_mut(BR).take(bc).enumerate() {
        let j = s.splat(jj as f32);
        for (n, lanes) in row.chunks_exact_mut(LANES).enumerate() {
            // SAFETY: `lanes` is LANES floats long.
            let mut x = unsafe { s.load(lanes.as_ptr()) };
            if let Some(cap) = post.cap_l2e {
                x = s.mul(s.splat(cap), tanh(s, x));
            }
            if let Some((slope, base)) = &post.alibi {
                x = s.fnma(s.splat(*slope), s.abs(s.sub(base[n], j)), x);
            }
            if let Some(hi) = &post.mask {
                x = s.select(s.ge(j, hi[n]), s.splat(f32::NEG_INFINITY), x);
            }
            // SAFETY: as above.
            unsafe { s.store(lanes.as_mut_ptr(), x) }
        }
        if let Some(vis) = post.extra {
            for (x, bits) in row.iter_mut().zip(vis) {
                if bits >> jj & 1 == 0 {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        for (n, lanes) in row.chunks_exact(LANES).enumerate() {
            // SAFETY: `lanes` is LANES floats long.
            max[n] = s.max(max[n], unsafe { s.load(lanes.as_ptr()) });
        }
    }
    max
}

/// Online-softmax update over the first `bc` key rows of `st` (scores in log2 units, whose max per
/// lane is `max`): raise the running max `m`, turn the scores into `exp2(s − m)` in place, add them
/// to `l`, and return the factor `exp2(m_old − m_new)` the output accumulators must be scaled by. A
/// row with no visible key so far keeps `m = −∞`, `l = 0` and gets factor 0, never NaN.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn softmax_block<S: Simd>(
    s: S,
    st: &mut [f32],
    bc: usize,
    max: [S::V; NV],
    m: &mut [S::V; NV],
    l: &mut [S::V; NV],
) -> [S::V; NV] {
    let neg_inf = s.splat(f32::NEG_INFINITY);
    let rows = &mut st[..bc * BR];
    let mut alpha = [neg_inf; NV];
    let mut base = [neg_inf; NV];
    for n in 0..NV {
        let m_new = s.max(m[n], max[n]);
        // With no visible key yet subtract 0: exp2(−∞ − 0) = 0 where −∞ − (−∞) would be NaN.
        base[n] = s.select(s.eq(m_new, neg_inf), s.splat(0.0), m_new);
        alpha[n] = s.exp2(s.sub(m[n], base[n]));
        m[n] = m_new;
    }
    // One lane group at a time: few live registers besides exp2's constants.
    for n in 0..NV {
        let mut sum = s.splat(0.0);
        for row in rows.chunks_exact_mut(BR) {
            // SAFETY: `row` is NV·LANES floats long.
            unsafe {
                let at = row.as_mut_ptr().add(n * LANES);
                let e = s.exp2(s.sub(s.load(at), base[n]));
                s.store(at, e);
                sum = s.add(sum, e);
            }
        }
        l[n] = s.fma(l[n], alpha[n], sum);
    }
    alpha
}

/// `Oᵀ = alpha·Oᵀ + Vᵀ·Pᵀ` over the `bc` keys of one block (`p` holds their `Pᵀ` rows, `vb` the
/// block's packed V).
#[inline(always)]
fn pv_block<S: Simd>(s: S, p: &[f32], vb: &[f32], bc: usize, alpha: &[S::V; NV], ot: &mut [f32]) {
    let tiles = ot.len() / (MD * BR);
    assert!(p.len() >= bc * BR && bc <= BC && vb.len() >= tiles * MD * BC);
    for t in 0..tiles {
        // SAFETY: the assert keeps every access of the tile in bounds.
        unsafe {
            pv_tile(s, p.as_ptr(), vb.as_ptr().add(t * MD * BC), bc, alpha, ot.as_mut_ptr().add(t * MD * BR))
        }
    }
}

/// The `O` micro-kernel: 3 head-dim indices × 24 query rows in 9 accumulators, loaded from `ot`
/// scaled by `alpha`, summed over `bc` keys, stored back.
///
/// # Safety
/// `p` must hold `bc·BR` floats, `vt` `bc·MD` (one packed tile of V's block), `ot` `MD·BR`.
#[inline(always)]
unsafe fn pv_tile<S: Simd>(s: S, p: *const f32, vt: *const f32, bc: usize, alpha: &[S::V; NV], ot: *mut f32) {
    let o = |x: usize, n: usize| s.mul(s.load(ot.add(x * BR + n * LANES)), alpha[n]);
    let (mut a00, mut a01, mut a02) = (o(0, 0), o(0, 1), o(0, 2));
    let (mut a10, mut a11, mut a12) = (o(1, 0), o(1, 1), o(1, 2));
    let (mut a20, mut a21, mut a22) = (o(2, 0), o(2, 1), o(2, 2));
    for j in 0..bc {
        let pj = p.add(j * BR);
        let (p0, p1, p2) = (s.load(pj), s.load(pj.add(LANES)), s.load(pj.add(2 * LANES)));
        let v = vt.add(j * MD);
        let b = s.splat(*v);
        a00 = s.fma(b, p0, a00);
        a01 = s.fma(b, p1, a01);
        a02 = s.fma(b, p2, a02);
        let b = s.splat(*v.add(1));
        a10 = s.fma(b, p0, a10);
        a11 = s.fma(b, p1, a11);
        a12 = s.fma(b, p2, a12);
        let b = s.splat(*v.add(2));
        a20 = s.fma(b, p0, a20);
        a21 = s.fma(b, p1, a21);
        a22 = s.fma(b, p2, a22);
    }
    for (i, a) in [a00, a01, a02, a10, a11, a12, a20, a21, a22].into_iter().enumerate() {
        s.store(ot.add((i / NV) * BR + (i % NV) * LANES), a);
    }
}

/// `tanh` in f32 (Cephes' `tanhf`: an odd polynomial below 0.625, `1 − 2/(e^{2|x|} + 1)` above;
/// relative error ~1.5e-7).
#[inline(always)]
fn tanh<S: Simd>(s: S, x: S::V) -> S::V {
    let a = s.abs(x);
    let z = s.mul(a, a);
    let mut poly = s.splat(-5.704_988_7e-3);
    for c in [2.063_909e-2, -5.373_971_6e-2, 1.333_144_2e-1, -3.333_328e-1] {
        poly = s.fma(poly, z, s.splat(c));
    }
    let small = s.fma(s.mul(a, z), poly, a);
    let e = s.exp2(s.min(s.mul(a, s.splat(2.0 * std::f32::consts::LOG2_E)), s.splat(126.0)));
    let large = s.sub(s.splat(1.0), s.div(s.splat(2.0), s.add(e, s.splat(1.0))));
    s.copysign(s.select(s.ge(a, s.splat(0.625)), large, small), x)
}

/// Coefficients of `2^f` on `[−0.5, 0.5]` (Cephes' `exp2f`), highest degree first; the constant
/// term is 1.
const EXP2_POLY: [f32; 6] =
    [1.535_336_2e-4, 1.339_887_4e-3, 9.618_438e-3, 5.550_332_5e-2, 2.402_264_8e-1, 6.931_472e-1];

/// `1.5·2^23`: adding it to an f32 of magnitude below 2^22 rounds it to an integer (ties to even)
/// kept in the low mantissa bits.
const EXP2_ROUND: f32 = 12_582_912.0;

/// Vector operations the kernels are written in: 8 f32 lanes.
trait Simd: Copy {
    /// A vector of 8 f32.
    type V: Copy;
    /// A lane mask from a comparison.
    type M: Copy;
    fn splat(self, x: f32) -> Self::V;
    /// # Safety
    /// `p` must be valid for reading 8 floats.
    unsafe fn load(self, p: *const f32) -> Self::V;
    /// # Safety
    /// `p` must be valid for writing 8 floats.
    unsafe fn store(self, p: *mut f32, v: Self::V);
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a·b + c`.
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `c − a·b`.
    fn fnma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    fn abs(self, a: Self::V) -> Self::V;
    /// `|mag|` with the sign of `sign`.
    fn copysign(self, mag: Self::V, sign: Self::V) -> Self::V;
    fn ge(self, a: Self::V, b: Self::V) -> Self::M;
    fn eq(self, a: Self::V, b: Self::V) -> Self::M;
    /// `m ? a : b` per lane.
    fn select(self, m: Self::M, a: Self::V, b: Self::V) -> Self::V;
    /// `2^x` for `x ≤ 127` (relative error ~2e-7); exactly 0 for `x ≤ −127` (so for −∞); NaN for NaN.
    fn exp2(self, x: Self::V) -> Self::V;
}

/// Portable lanes: plain arrays the compiler vectorises for whatever the build targets.
#[derive(Clone, Copy)]
struct Portable;

impl Portable {
    #[inline(always)]
    fn map(a: [f32; LANES], f: impl Fn(f32) -> f32) -> [f32; LANES] {
        std::array::from_fn(|i| f(a[i]))
    }
    #[inline(always)]
    fn zip(a: [f32; LANES], b: [f32; LANES], f: impl Fn(f32, f32) -> f32) -> [f32; LANES] {
        std::array::from_fn(|i| f(a[i], b[i]))
    }
}

impl Simd for Portable {
    type V = [f32; LANES];
    type M = [bool; LANES];
    #[inline(always)]
    fn splat(self, x: f32) -> Self::V {
        [x; LANES]
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> Self::V {
        p.cast::<[f32; LANES]>().read_unaligned()
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: Self::V) {
        p.cast::<[f32; LANES]>().write_unaligned(v)
    }
    #[inline(always)]
    fn add(self, a: Self::V, b: Self::V) -> Self::V {
        Self::zip(a, b, |a, b| a + b)
    }
    #[inline(always)]
    fn sub(self, a: Self::V, b: Self::V) -> Self::V {
        Self::zip(a, b, |a, b| a - b)
    }
    #[inline(always)]
    fn mul(self, a: Self::V, b: Self::V) -> Self::V {
        Self::zip(a, b, |a, b| a * b)
    }
    #[inline(always)]
    fn div(self, a: Self::V, b: Self::V) -> Self::V {
        Self::zip(a, b, |a, b| a / b)
    }
    #[inline(always)]
    fn max(self, a: Self::V, b: Self::V) -> Self::V {
        Self::zip(a, b, |a, b| if a > b { a } else { b })
    }
    #[inline(always)]
    fn min(self, a: Self::V, b: Self::V) -> Self::V {
        Self::zip(a, b, |a, b| if a < b { a } else { b })
    }
    #[inline(always)]
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        // Not `mul_add`: without hardware FMA that is a slow library call.
        std::array::from_fn(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    fn fnma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::array::from_fn(|i| c[i] - a[i] * b[i])
    }
    #[inline(always)]
    fn abs(self, a: Self::V) -> Self::V {
        Self::map(a, f32::abs)
    }
    #[inline(always)]
    fn copysign(self, mag: Self::V, sign: Self::V) -> Self::V {
        Self::zip(mag, sign, f32::copysign)
    }
    #[inline(always)]
    fn ge(self, a: Self::V, b: Self::V) -> Self::M {
        std::array::from_fn(|i| a[i] >= b[i])
    }
    #[inline(always)]
    fn eq(self, a: Self::V, b: Self::V) -> Self::M {
        std::array::from_fn(|i| a[i] == b[i])
    }
    #[inline(always)]
    fn select(self, m: Self::M, a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| if m[i] { a[i] } else { b[i] })
    }
    #[inline(always)]
    fn exp2(self, x: Self::V) -> Self::V {
        Self::map(x, |x| {
            let x = if x < -127.0 { -127.0 } else { x }; // (not `max`: NaN must propagate)
                                                         // Round to an integer n by adding 1.5·2^23: n lands in the low mantissa bits of t.
            let t = x + EXP2_ROUND;
            let f = x - (t - EXP2_ROUND);
            let p = EXP2_POLY.iter().fold(0.0, |p, &c| p * f + c) * f + 1.0;
            // 2^n from its bits: (n + 127) << 23; n = −127 gives the bits of +0.
            p * f32::from_bits(t.to_bits().wrapping_add(127) << 23)
        })
    }
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// AVX2 + FMA lanes. A value exists only on a CPU that has both (see [`avx2_token`]), which is
/// what makes its intrinsic calls sound.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Avx2(());

/// An [`Avx2`] token when this CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
fn avx2_token() -> Option<Avx2> {
    (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")).then_some(Avx2(()))
}

/// No AVX2 off x86-64.
#[cfg(not(target_arch = "x86_64"))]
fn avx2_token() -> Option<()> {
    None
}

// SAFETY (every `unsafe` block below): an `Avx2` value proves the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
impl Simd for Avx2 {
    type V = __m256;
    type M = __m256;
    #[inline(always)]
    fn splat(self, x: f32) -> __m256 {
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m256) {
        _mm256_storeu_ps(p, v)
    }
    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_div_ps(a, b) }
    }
    #[inline(always)]
    fn max(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    fn min(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_min_ps(a, b) }
    }
    #[inline(always)]
    fn fma(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn fnma(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fnmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn abs(self, a: __m256) -> __m256 {
        unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), a) }
    }
    #[inline(always)]
    fn copysign(self, mag: __m256, sign: __m256) -> __m256 {
        unsafe {
            let bit = _mm256_set1_ps(-0.0);
            _mm256_or_ps(_mm256_andnot_ps(bit, mag), _mm256_and_ps(bit, sign))
        }
    }
    #[inline(always)]
    fn ge(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_cmp_ps::<_CMP_GE_OQ>(a, b) }
    }
    #[inline(always)]
    fn eq(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_cmp_ps::<_CMP_EQ_OQ>(a, b) }
    }
    #[inline(always)]
    fn select(self, m: __m256, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_blendv_ps(b, a, m) }
    }
    #[inline(always)]
    fn exp2(self, x: __m256) -> __m256 {
        unsafe {
            // (−127 first: max_ps returns its second operand for a NaN, so NaN propagates.)
            let x = _mm256_max_ps(_mm256_set1_ps(-127.0), x);
            // Round to an integer n by adding 1.5·2^23: n lands in the low mantissa bits of t.
            let t = _mm256_add_ps(x, _mm256_set1_ps(EXP2_ROUND));
            let f = _mm256_sub_ps(x, _mm256_sub_ps(t, _mm256_set1_ps(EXP2_ROUND)));
            let mut p = _mm256_set1_ps(EXP2_POLY[0]);
            for &c in &EXP2_POLY[1..] {
                p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c));
            }
            p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0));
            // 2^n from its bits: (n + 127) << 23; n = −127 gives the bits of +0.
            let bits =
                _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(127)));
            _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    /// The workers of `parallel` really run at once (the queue's lock is not held during `body`).
    #[test]
    fn parallel_runs_items_concurrently() {
        let (in_flight, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        super::parallel(
            2,
            vec![(); 2],
            || (),
            |_, ()| {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // wait (bounded) for the other item to start
                let start = Instant::now();
                while most.load(Ordering::SeqCst) < 2 && start.elapsed() < Duration::from_secs(2) {
                    std::thread::yield_now();
                }
                in_flight.fetch_sub(1, Ordering::SeqCst);
            },
        );
        assert_eq!(most.load(Ordering::SeqCst), 2, "the two items never ran at the same time");
    }
}
