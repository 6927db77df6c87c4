//! A paged KV cache on the device (vLLM's PagedAttention): a pool of pages of `page_size`
//! tokens, a page table per sequence, sequences of different lengths in one batch (continuous
//! batching) and pages in any physical order.
//!
//! Pages are allocated and freed on the host (WebGPU cannot report free memory, so the pool's
//! size is the caller's: [`PagedKvConfig::pages`]); a full pool is [`Error::PoolFull`].
//! [`PagedKvCache::append`] records the kernel that writes new K/V tokens into their pages
//! (`shaders/paged_append.wgsl`: no host round trip), [`PagedKvCache::attention`] records
//! attention of a batch of sequences through their page tables with the decode kernel
//! (`kernels::decode`, which reads every cache through a page table: a contiguous cache is its
//! one-page-per-sequence case). The pool lives in slabs of whole pages, each within one storage
//! binding; the kernels visit them in turn.
//!
//! ```
//! use wgpu_attention::paged::{PagedKvCache, PagedKvConfig};
//! use wgpu_attention::{Attention, Context, DType, HostTensor, Layout, Recorder, Shape, Tensor};
//! # fn main() -> Result<(), wgpu_attention::Error> {
//! let ctx = Context::new()?;
//! let config = PagedKvConfig { pages: 64, page_size: 16, kv_heads: 2, head_dim: 32, dtype: DType::F32 };
//! let mut cache = PagedKvCache::new(&ctx, config)?;
//! let (a, b) = (cache.add_sequence(), cache.add_sequence());
//! let rand = |shape: Shape| {
//!     let data = (0..shape.len()).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
//!     Tensor::upload(&ctx, &HostTensor::new(data, shape, Layout::Bhsd).unwrap())
//! };
//! let mut rec = Recorder::new(&ctx);
//! // a prompt of 40 tokens for both sequences, then one decode step
//! let (k, v) = (rand(Shape::new(2, 2, 40, 32))?, rand(Shape::new(2, 2, 40, 32))?);
//! cache.append(&mut rec, &[a, b], &k, &v)?;
//! let q = rand(Shape::new(2, 8, 1, 32))?;
//! let out = cache.attention(&mut rec, &q, &[a, b], &Attention::new())?;
//! rec.submit()?;
//! assert_eq!(cache.len(a)?, 40);
//! assert_eq!(out.o.to_host(&ctx)?.data.len(), 2 * 8 * 32);
//! # Ok(()) }
//! ```

use bytemuck::{Pod, Zeroable};

use crate::attention::{Attention, Layout, Shape};
use crate::context::Context;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::decode::{self, KvPages, KEY_BLOCK};
use crate::kernels::flash::plan::{element_range, key_range};
use crate::kernels::{dispatch_all, pipeline, strides4, Window};
use crate::record::{outputs, CallInfo, Output, Recorder};
use crate::shader::Params;
use crate::tensor::Tensor;

const APPEND_SOURCE: &str = include_str!("../shaders/paged_append.wgsl");

/// Page sizes a cache takes: multiples of 16 tokens from 16 to 256.
pub const PAGE_SIZES: std::ops::RangeInclusive<usize> = 16..=256;

/// The sizes of a paged cache's pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagedKvConfig {
    /// Pages in the pool (each `page_size · kv_heads · head_dim` elements of K and as many of V).
    pub pages: usize,
    /// Tokens per page: a multiple of 16 in [`PAGE_SIZES`].
    pub page_size: usize,
    /// K/V heads.
    pub kv_heads: usize,
    /// Head dim (1 to [`crate::MAX_HEAD_DIM`]).
    pub head_dim: usize,
    /// Storage type of K and V.
    pub dtype: DType,
}

/// A sequence of a [`PagedKvCache`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeqId(usize);

/// One sequence's pages and length.
#[derive(Clone, Debug, Default)]
struct Sequence {
    pages: Vec<u32>,
    len: usize,
}

/// A paged KV cache on one context. See the module docs.
pub struct PagedKvCache {
    config: PagedKvConfig,
    /// (K, V) of each slab: tensors `[pages in slab, Hkv, P, D]`, contiguous.
    slabs: Vec<(Tensor, Tensor)>,
    pages_per_slab: usize,
    /// Free pages; the next allocation takes the last.
    free: Vec<u32>,
    sequences: Vec<Option<Sequence>>,
}

/// Mirrors `Params` in paged_append.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct AppendParams {
    pub elements: u32,
    pub heads: u32,
    pub tokens: u32,
    pub head_dim: u32,
    pub batch0: u32,
    pub page_size: u32,
    pub table_stride: u32,
    pub lens_offset: u32,
    pub page_lo: u32,
    pub page_hi: u32,
    pub grid_x: u32,
    pub wg_offset: u32,
    pub src_base: u32,
    pub head0: u32,
    pub token0: u32,
    pub heads_here: u32,
    pub tokens_here: u32,
    pub _pad: [u32; 3],
    pub src_stride: [u32; 4],
}

/// A block of appended tokens whose source window fits one binding: batches `b0..b0+nb`, heads
/// `h0..h0+nh`, tokens `t0..t0+nt`.
struct AppendBlock {
    b0: usize,
    nb: usize,
    h0: usize,
    nh: usize,
    t0: usize,
    nt: usize,
}

/// Cut the appended `src` (`[B, Hkv, T, D]`) into blocks whose windows fit `max` bytes: whole
/// sequences where they fit, else one (sequence, head) and token ranges.
fn append_blocks(src: &Tensor, max: u64) -> Vec<Result<AppendBlock>> {
    let s = src.shape;
    let bytes = |(a, e): (u64, u64)| src.dtype.bytes(e - a) + 256;
    let mut out = Vec::new();
    let mut b0 = 0;
    while b0 < s.batch {
        let mut nb = s.batch - b0;
        while nb > 1 && bytes(element_range(s, src.strides, b0, nb, 0, s.heads)) > max {
            nb = nb.div_ceil(2);
        }
        if bytes(element_range(s, src.strides, b0, nb, 0, s.heads)) <= max {
            out.push(Ok(AppendBlock { b0, nb, h0: 0, nh: s.heads, t0: 0, nt: s.seq }));
            b0 += nb;
            continue;
        }
        for h in 0..s.heads {
            let mut t0 = 0;
            while t0 < s.seq {
                let mut nt = s.seq - t0;
                while nt > 1 && bytes(key_range(s, src.strides, b0, h, t0, t0 + nt)) > max {
                    nt = nt.div_ceil(2);
                }
                if bytes(key_range(s, src.strides, b0, h, t0, t0 + nt)) > max {
                    out.push(Err(Error::LimitExceeded {
                        what: "one appended token's row".into(),
                        limit: "max_storage_buffer_binding_size",
                        needed: bytes(key_range(s, src.strides, b0, h, t0, t0 + 1)),
                        available: max,
                    }));
                    return out;
                }
                out.push(Ok(AppendBlock { b0, nb: 1, h0: h, nh: 1, t0, nt }));
                t0 += nt;
            }
        }
        b0 += 1;
    }
    out
}

impl PagedKvCache {
    /// A pool of `config.pages` pages on `ctx` (zeroed), cut into slabs of whole pages that each
    /// fit one storage binding and one buffer.
    pub fn new(ctx: &Context, config: PagedKvConfig) -> Result<Self> {
        let PagedKvConfig { pages, page_size, kv_heads, head_dim, dtype } = config;
        if !PAGE_SIZES.contains(&page_size) || !page_size.is_multiple_of(16) {
            return Err(Error::InvalidOption(format!(
                "page size {page_size}: a page holds a multiple of 16 tokens from 16 to 256"
            )));
        }
        if head_dim == 0 || head_dim > crate::MAX_HEAD_DIM {
            return Err(Error::HeadDimUnsupported { head_dim, max: crate::MAX_HEAD_DIM });
        }
        if pages == 0 || kv_heads == 0 {
            return Err(Error::InvalidOption(
                "a paged cache needs at least one page and one K/V head".into(),
            ));
        }
        if pages > u32::MAX as usize / 2 {
            return Err(Error::InvalidOption(format!(
                "{pages} pages: at most {} are addressed",
                u32::MAX / 2
            )));
        }
        let page_elements = page_size * kv_heads * head_dim;
        let page_bytes = dtype.bytes(page_elements as u64);
        let limits = ctx.limits();
        let max = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        let pages_per_slab = ((max / page_bytes) as usize).min(pages);
        if pages_per_slab == 0 {
            return Err(Error::LimitExceeded {
                what: format!("one page of {page_size} tokens × {kv_heads} K/V heads × head dim {head_dim}"),
                limit: "max_storage_buffer_binding_size",
                needed: page_bytes,
                available: max,
            });
        }
        let mut slabs = Vec::new();
        let mut first = 0;
        while first < pages {
            let n = pages_per_slab.min(pages - first);
            let shape = Shape::new(n, kv_heads, page_size, head_dim);
            slabs.push((
                Tensor::zeros_as(ctx, shape, Layout::Bhsd, dtype)?,
                Tensor::zeros_as(ctx, shape, Layout::Bhsd, dtype)?,
            ));
            first += n;
        }
        Ok(Self {
            config,
            slabs,
            pages_per_slab,
            free: (0..pages as u32).rev().collect(),
            sequences: Vec::new(),
        })
    }

    /// The pool's sizes.
    pub fn config(&self) -> PagedKvConfig {
        self.config
    }

    /// Pages not held by any sequence.
    pub fn free_pages(&self) -> usize {
        self.free.len()
    }

    /// Slabs the pool is stored in (one unless it is larger than a storage binding).
    pub fn slabs(&self) -> usize {
        self.slabs.len()
    }

    /// Put the free pages in a random physical order (of `seed`), so that sequences get pages
    /// scattered over the pool, as after a long run of allocations and frees.
    pub fn shuffle_free_pages(&mut self, seed: u64) {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for i in (1..self.free.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.free.swap(i, (x % (i as u64 + 1)) as usize);
        }
    }

    /// A new, empty sequence.
    pub fn add_sequence(&mut self) -> SeqId {
        self.sequences.push(Some(Sequence::default()));
        SeqId(self.sequences.len() - 1)
    }

    /// Drop a sequence and return its pages to the pool.
    pub fn remove_sequence(&mut self, id: SeqId) -> Result<()> {
        self.sequence(id)?;
        let seq = self.sequences[id.0].take().unwrap_or_default();
        self.free.extend(seq.pages.iter().rev());
        Ok(())
    }

    /// Tokens held for a sequence.
    pub fn len(&self, id: SeqId) -> Result<usize> {
        Ok(self.sequence(id)?.len)
    }

    /// The physical pages of a sequence, in token order.
    pub fn pages(&self, id: SeqId) -> Result<&[u32]> {
        Ok(&self.sequence(id)?.pages)
    }

    fn sequence(&self, id: SeqId) -> Result<&Sequence> {
        self.sequences
            .get(id.0)
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::InvalidOption(format!("sequence {} is not in this cache", id.0)))
    }

    /// Distinct live sequences, or a typed error.
    fn check_ids(&self, ids: &[SeqId]) -> Result<()> {
        if ids.is_empty() {
            return Err(Error::ShapeMismatch("no sequences given".into()));
        }
        for (i, id) in ids.iter().enumerate() {
            self.sequence(*id)?;
            if ids[..i].contains(id) {
                return Err(Error::InvalidOption(format!("sequence {} is given twice", id.0)));
            }
        }
        Ok(())
    }

    /// Make room for `tokens` more tokens of each sequence in `ids` (in order), allocating pages;
    /// nothing is allocated unless all of them fit. Appends call it; a caller may reserve ahead.
    pub fn reserve(&mut self, ids: &[SeqId], tokens: usize) -> Result<()> {
        self.check_ids(ids)?;
        let p = self.config.page_size;
        let needed: usize = ids
            .iter()
            .map(|id| {
                let s = self.sequences[id.0].as_ref().unwrap();
                (s.len + tokens).div_ceil(p).saturating_sub(s.pages.len())
            })
            .sum();
        if needed > self.free.len() {
            return Err(Error::PoolFull { needed, free: self.free.len(), pages: self.config.pages });
        }
        for id in ids {
            let s = self.sequences[id.0].as_mut().unwrap();
            while s.pages.len() * p < s.len + tokens {
                s.pages.push(self.free.pop().unwrap());
            }
        }
        Ok(())
    }

    /// The page table of `ids` (row stride: the most pages any of them holds, at least 1) and
    /// their lengths.
    fn table(&self, ids: &[SeqId]) -> (Vec<u32>, usize, Vec<u32>) {
        let seqs: Vec<&Sequence> = ids.iter().map(|id| self.sequences[id.0].as_ref().unwrap()).collect();
        let stride = seqs.iter().map(|s| s.pages.len()).max().unwrap_or(0).max(1);
        let mut table = vec![0u32; stride * seqs.len()];
        for (b, s) in seqs.iter().enumerate() {
            table[b * stride..b * stride + s.pages.len()].copy_from_slice(&s.pages);
        }
        (table, stride, seqs.iter().map(|s| s.len as u32).collect())
    }

    /// Record the append of `k` and `v` (`[B, Hkv, T, D]`, any layout, the cache's dtype; B =
    /// `ids.len()`) as the next T tokens of each sequence in `ids`: pages are allocated now (a
    /// full pool is [`Error::PoolFull`] and changes nothing), the copy runs on the device when
    /// the recording is submitted.
    pub fn append(&mut self, rec: &mut Recorder<'_>, ids: &[SeqId], k: &Tensor, v: &Tensor) -> Result<()> {
        let ctx = rec.context();
        let c = self.config;
        self.check_ids(ids)?;
        for (name, t) in [("K", k), ("V", v)] {
            t.check_context(ctx)?;
            let s = t.shape;
            if s.batch != ids.len() || s.heads != c.kv_heads || s.head_dim != c.head_dim || s.seq == 0 {
                return Err(Error::ShapeMismatch(format!(
                    "appended {name} is {s}: it must be [{} sequences, {} K/V heads, T ≥ 1 tokens, head dim {}]",
                    ids.len(),
                    c.kv_heads,
                    c.head_dim
                )));
            }
            if t.dtype != c.dtype {
                return Err(Error::UnsupportedDType(format!(
                    "appended {name} is {} but the cache is {}",
                    t.dtype, c.dtype
                )));
            }
        }
        if k.shape != v.shape {
            return Err(Error::ShapeMismatch(format!("appended K is {} but V is {}", k.shape, v.shape)));
        }
        let tokens = k.shape.seq;
        // lengths before the append, then pages for the new tokens
        let lens_before: Vec<u32> =
            ids.iter().map(|id| self.sequences[id.0].as_ref().unwrap().len as u32).collect();
        self.reserve(ids, tokens)?;
        let (mut words, stride, _) = self.table(ids);
        let lens_offset = words.len() as u32;
        words.extend_from_slice(&lens_before);
        for id in ids {
            self.sequences[id.0].as_mut().unwrap().len += tokens;
        }
        let table = ctx.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("paged append table"),
            contents: bytemuck::cast_slice(&words),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let pipeline = pipeline(
            ctx,
            "paged_append.wgsl",
            APPEND_SOURCE,
            &Params::from([("TYPE", c.dtype.shader_code())]),
        )?;
        let max = ctx.limits().max_storage_buffer_binding_size;
        let slabs: Vec<_> =
            self.slabs.iter().enumerate().map(|(i, s)| ((i * self.pages_per_slab) as u32, s)).collect();
        let mut dispatches = 0;
        rec.record(|ctx, encoder, timing| {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("paged append"),
                timestamp_writes: timing,
            });
            for (src, dst_of) in [(k, 0usize), (v, 1usize)] {
                for block in append_blocks(src, max) {
                    let AppendBlock { b0, nb, h0, nh, t0, nt } = block?;
                    let range = if nh == c.kv_heads && nt == tokens {
                        element_range(src.shape, src.strides, b0, nb, 0, c.kv_heads)
                    } else {
                        key_range(src.shape, src.strides, b0, h0, t0, t0 + nt)
                    };
                    let w = Window::new(ctx, src, range);
                    for &(page0, slab) in &slabs {
                        let dst = if dst_of == 0 { &slab.0 } else { &slab.1 };
                        let ap = AppendParams {
                            elements: (nb * nh * nt * c.head_dim) as u32,
                            heads: c.kv_heads as u32,
                            tokens: tokens as u32,
                            head_dim: c.head_dim as u32,
                            batch0: b0 as u32,
                            page_size: c.page_size as u32,
                            table_stride: stride as u32,
                            lens_offset,
                            page_lo: page0,
                            page_hi: page0 + dst.shape.batch as u32,
                            src_base: w.base,
                            head0: h0 as u32,
                            token0: t0 as u32,
                            heads_here: nh as u32,
                            tokens_here: nt as u32,
                            src_stride: strides4(src),
                            ..Default::default()
                        };
                        let total = (ap.elements as u64).div_ceil(64);
                        let uniform = |grid_x, wg_offset| {
                            bytemuck::bytes_of(&AppendParams { grid_x, wg_offset, ..ap }).to_vec()
                        };
                        let resources = [
                            (1, w.binding(&src.buffer)),
                            (2, table.as_entire_binding()),
                            (3, dst.buffer.as_entire_binding()),
                        ];
                        dispatches += dispatch_all(
                            ctx,
                            &mut pass,
                            &pipeline,
                            "paged append",
                            total,
                            uniform,
                            &resources,
                        );
                    }
                }
            }
            Ok(CallInfo::new("paged_append", None, 1, dispatches))
        })?;
        Ok(())
    }

    /// Record attention of `q` (`[B, Hq, Nq, D]`, B = `ids.len()`, the cache's dtype, Hkv
    /// dividing Hq) against the cached tokens of each sequence in `ids`, through their page
    /// tables: fresh O (Q's shape, layout and dtype) and LSE. Bottom-right causal masks, windows
    /// and ALiBi align with each sequence's length; `attn.kv_lens` must be unset (the cache
    /// knows the lengths). Short queries are decode steps; longer ones (prefill over the cache)
    /// run the same kernel in chunks of query rows. A sequence with no tokens gets O = 0 and
    /// LSE −∞.
    pub fn attention(
        &self,
        rec: &mut Recorder<'_>,
        q: &Tensor,
        ids: &[SeqId],
        attn: &Attention,
    ) -> Result<Output> {
        let (o, lse) = outputs(rec.context(), q)?;
        let info = self.attention_into(rec, q, ids, attn, (&o, &lse))?;
        Ok(Output { o, lse, info })
    }

    /// [`PagedKvCache::attention`] into existing O (Q's shape, any layout and dtype) and LSE
    /// (`[B, Hq, Nq, 1]`) tensors.
    pub fn attention_into(
        &self,
        rec: &mut Recorder<'_>,
        q: &Tensor,
        ids: &[SeqId],
        attn: &Attention,
        (o, lse): (&Tensor, &Tensor),
    ) -> Result<CallInfo> {
        self.check_ids(ids)?;
        if attn.kv_lens.is_some() {
            return Err(Error::InvalidOption(
                "kv_lens is set: a paged cache's sequences have their own lengths".into(),
            ));
        }
        let c = self.config;
        let (table, table_stride, lens) = self.table(ids);
        let max_len = lens.iter().copied().max().unwrap_or(0).max(1) as usize;
        let kv_shape = Shape::new(ids.len(), c.kv_heads, max_len, c.head_dim);
        let p = attn.validate(q.shape, kv_shape, kv_shape)?;
        let kv = KvPages {
            slabs: self
                .slabs
                .iter()
                .enumerate()
                .map(|(i, s)| ((i * self.pages_per_slab) as u32, &s.0, &s.1))
                .collect(),
            page_size: c.page_size,
            table,
            table_stride,
            lens,
            contiguous: false,
        };
        debug_assert!(c.page_size.is_multiple_of(KEY_BLOCK));
        rec.record(|ctx, encoder, timing| decode::encode(ctx, encoder, timing, &p, q, &kv, attn, (o, lse)))
    }
}
