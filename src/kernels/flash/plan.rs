//! Planning a fused-forward call: how it is cut into dispatches that fit the adapter's limits.
//! Pure host arithmetic on the problem's sizes, strides and the device limits (no device needed:
//! the unit tests below plan against made-up limits).
//!
//! Tensors are bound as windows per chunk of (batches, K/V heads, query tiles); when one K/V head
//! alone is over the storage-binding limit (long keys, or BSHD where a head's keys stride across
//! all heads of its batch) and the call has no block table, the key range is cut into splits that
//! each bind only their own keys, run as separate dispatches and merged by LSE.

use super::tiles::TileConfig;
use crate::attention::{Problem, Shape};
use crate::dtype::DType;
use crate::error::{Error, Result};

/// Keys one invocation may loop over. Lavapipe stops an invocation after 65,535 loop iterations in
/// total (the kernel's only run-time loop is the key-tile loop), and an f32 running sum over very
/// long rows loses digits (rel. error 5e-6 at 70k keys in one split, 1e-6 split), so longer key
/// ranges are split across workgroups and merged by log-sum-exp.
pub const MAX_KEYS_PER_SPLIT: u32 = 16_384;

/// Workgroups below which the key range is split further to keep the adapter busy.
const MIN_WORKGROUPS: u64 = 64;

/// How one call is cut into dispatches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Tiles of the kernel.
    pub tiles: TileConfig,
    /// Parts the key range is split into (merged by LSE when > 1).
    pub n_splits: u32,
    /// Key tiles per split.
    pub tiles_per_split: u32,
    /// Pieces of the problem whose tensors each fit one storage binding.
    pub chunks: Vec<Chunk>,
}

/// A piece of one call: batches `b0..b0+nb`, K/V heads `kh0..kh0+nkh`, and query tiles
/// `t0..t0+nt` of each head group's packed rows (a sub-range only when `nb = nkh = 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// First batch.
    pub b0: usize,
    /// Batches.
    pub nb: usize,
    /// First K/V head.
    pub kh0: usize,
    /// K/V heads.
    pub nkh: usize,
    /// First query tile.
    pub t0: usize,
    /// Query tiles.
    pub nt: usize,
    /// First key split this chunk runs (0 unless K/V are cut by key range).
    pub s0: u32,
    /// Key splits it runs (all of them unless K/V are cut by key range: then one, whose keys alone
    /// are bound).
    pub ns: u32,
}

/// Element range `[start, end)` of batches `b0..b0+nb`, heads `h0..h0+nh`, all rows.
pub(crate) fn element_range(
    shape: Shape,
    strides: [usize; 3],
    b0: usize,
    nb: usize,
    h0: usize,
    nh: usize,
) -> (u64, u64) {
    let [sb, sh, ss] = strides;
    let start = b0 * sb + h0 * sh;
    let last = (b0 + nb - 1) * sb + (h0 + nh - 1) * sh + (shape.seq - 1) * ss + shape.head_dim;
    (start as u64, last as u64)
}

/// Element range `[start, end)` of keys `k0..k1` of batch `b`, head `h`.
pub(crate) fn key_range(
    shape: Shape,
    strides: [usize; 3],
    b: usize,
    h: usize,
    k0: usize,
    k1: usize,
) -> (u64, u64) {
    let [sb, sh, ss] = strides;
    let start = b * sb + h * sh + k0 * ss;
    (start as u64, (start + (k1 - 1 - k0) * ss + shape.head_dim) as u64)
}

/// Query-side geometry: each K/V head's group of G query heads is a run of G·R "packed" rows,
/// R = `rph` rows per head (Nq when short queries are packed across heads, else Nq rounded up to
/// the query tile so that no tile straddles two heads), cut into tiles of `bq` rows.
pub(crate) struct Rows {
    shape: Shape,
    group: usize,
    bq: usize,
    pub(crate) rph: usize,
}

impl Rows {
    /// `pack`: let short query runs share tiles across heads (not with a block table, whose
    /// lists are per head and query block).
    pub(crate) fn new(shape: Shape, group: usize, bq: usize, pack: bool) -> Self {
        let rph = if pack && shape.seq < bq { shape.seq } else { shape.seq.next_multiple_of(bq) };
        Self { shape, group, bq, rph }
    }
    fn packed(&self) -> usize {
        self.group * self.rph
    }
    fn tiles(&self) -> usize {
        self.packed().div_ceil(self.bq)
    }
    /// Packed rows `[p0, p1)` of a chunk (within each head group).
    pub(crate) fn rows(&self, c: &Chunk) -> (usize, usize) {
        (c.t0 * self.bq, ((c.t0 + c.nt) * self.bq).min(self.packed()))
    }
    /// (head within the group, query) of packed row `p`, the query clipped to the last real one.
    fn split(&self, p: usize) -> (usize, usize) {
        (p / self.rph, (p % self.rph).min(self.shape.seq - 1))
    }
    /// Element range of Q or O (with `strides`) that chunk `c` touches.
    pub(crate) fn range(&self, strides: [usize; 3], c: &Chunk) -> (u64, u64) {
        let [sb, sh, ss] = strides;
        let (p0, p1) = self.rows(c);
        let ((hf, i0), (hl, i1)) = (self.split(p0), self.split(p1 - 1));
        let n = self.shape.seq;
        let first = (hf..=hl).map(|h| h * sh + if h == hf { i0 } else { 0 } * ss).min().unwrap();
        let last = (hf..=hl).map(|h| h * sh + if h == hl { i1 } else { n - 1 } * ss).max().unwrap();
        let g = self.group;
        let start = c.b0 * sb + c.kh0 * g * sh + first;
        let end = (c.b0 + c.nb - 1) * sb + (c.kh0 + c.nkh - 1) * g * sh + last + self.shape.head_dim;
        (start as u64, end as u64)
    }
    /// Element range of LSE `[B, Hq, Nq]` that chunk `c` touches.
    pub(crate) fn lse_range(&self, c: &Chunk) -> (u64, u64) {
        let (hq, n, g) = (self.shape.heads, self.shape.seq, self.group);
        let (p0, p1) = self.rows(c);
        let ((hf, i0), (hl, i1)) = (self.split(p0), self.split(p1 - 1));
        let start = (c.b0 * hq + c.kh0 * g + hf) * n + i0;
        let end = ((c.b0 + c.nb - 1) * hq + (c.kh0 + c.nkh - 1) * g + hl) * n + i1 + 1;
        (start as u64, end as u64)
    }
    /// Packed rows (padding included) summed over the chunk's heads and batches.
    pub(crate) fn count(&self, c: &Chunk) -> u64 {
        let (p0, p1) = self.rows(c);
        (c.nb * c.nkh * (p1 - p0)) as u64
    }
}

/// Plan a call of problem `p` with `tiles` (the specialisation of the family the tuner chose):
/// key splits (`num_splits`, else chosen), and chunks whose tensors fit the binding limit.
/// `table` is the (longest list, block size) of the call's block table, if any; strides are the
/// tensors' (batch, head, seq) element strides. Where one query tile's tensors are over the limit,
/// the register family retries with fewer query rows per invocation before giving up.
pub fn plan(
    limits: &wgpu::Limits,
    tiles: TileConfig,
    p: &Problem,
    num_splits: Option<u32>,
    table: Option<(usize, usize)>,
    q_strides: [usize; 3],
    kv_strides: [usize; 3],
) -> Result<Plan> {
    let mut tiles = tiles;
    loop {
        match plan_tiles(limits, p, num_splits, table, (q_strides, kv_strides), tiles) {
            Err(e @ Error::LimitExceeded { .. }) => match tiles.fewer_rows() {
                Some(fewer) => tiles = fewer,
                None => return Err(e),
            },
            planned => return planned,
        }
    }
}

/// Bytes a binding window over elements `[start, end)` occupies in the worst alignment case.
pub(crate) fn window_bytes(limits: &wgpu::Limits, start: u64, end: u64) -> u64 {
    DType::F32.bytes(end - start) + limits.min_storage_buffer_offset_alignment as u64
}

/// [`plan`] with these tiles.
fn plan_tiles(
    limits: &wgpu::Limits,
    p: &Problem,
    num_splits: Option<u32>,
    table: Option<(usize, usize)>,
    (q_strides, kv_strides): ([usize; 3], [usize; 3]),
    tiles: TileConfig,
) -> Result<Plan> {
    let rows = Rows::new(p.q_shape(), p.group(), tiles.bq as usize, table.is_none());
    let q_tiles = rows.tiles();
    // key tiles of the longest row of tiles
    let n_tiles = match table {
        Some((max_list, size)) => (max_list * size / tiles.bk as usize) as u32,
        None => p.kv_len.div_ceil(tiles.bk as usize) as u32,
    };

    let mut n_splits = match num_splits {
        Some(n) => n.max(1),
        None => {
            let wgs = (p.batch * p.kv_heads * q_tiles) as u64;
            if wgs < MIN_WORKGROUPS && n_tiles >= 8 {
                (MIN_WORKGROUPS.div_ceil(wgs) as u32).min(n_tiles / 4)
            } else {
                1
            }
        }
    };
    let max_binding = limits.max_storage_buffer_binding_size;
    // K/V of one (batch, kv head) too large for one binding: without a block table (whose splits
    // visit scattered key blocks) each split binds only the window of its own keys, so the
    // splits are made short enough for that window to fit, and run as separate dispatches
    let head_kv = element_range(p.kv_shape(), kv_strides, 0, 1, 0, 1);
    let by_key_range = table.is_none() && window_bytes(limits, head_kv.0, head_kv.1) > max_binding;
    let mut max_tiles_per_split = MAX_KEYS_PER_SPLIT / tiles.bk;
    if by_key_range {
        let [_, _, ss] = kv_strides;
        let elements = (max_binding.saturating_sub(window_bytes(limits, 0, 0)) / DType::F32.size()) as usize;
        let keys = elements.saturating_sub(p.head_dim).checked_div(ss).map_or(0, |k| k + 1);
        let fit_tiles = (keys / tiles.bk as usize) as u32;
        if fit_tiles == 0 {
            let bk = tiles.bk as usize;
            return Err(Error::LimitExceeded {
                what: format!("one key tile ({bk} keys, head dim {}) of K or V", p.head_dim),
                limit: "max_storage_buffer_binding_size",
                needed: window_bytes(limits, 0, ((bk - 1) * ss + p.head_dim) as u64),
                available: max_binding,
            });
        }
        max_tiles_per_split = max_tiles_per_split.min(fit_tiles);
    }
    // more splits than the partial states of one query tile can hold in a binding only for the
    // splits that correctness needs (short enough loops, key ranges that fit)
    let partial_cap = (max_binding / DType::F32.bytes(tiles.bq as u64 * p.head_dim as u64)).max(1) as u32;
    n_splits = n_splits.min(partial_cap).max(n_tiles.div_ceil(max_tiles_per_split)).clamp(1, n_tiles.max(1));
    let tiles_per_split = n_tiles.div_ceil(n_splits).max(1);
    let n_splits = n_tiles.div_ceil(tiles_per_split).max(1);
    let split_keys = (tiles_per_split * tiles.bk) as usize;

    let fits = |c: &Chunk| -> bool {
        let q = rows.range(q_strides, c);
        let kv = if by_key_range {
            key_range(p.kv_shape(), kv_strides, 0, 0, 0, split_keys.min(p.kv_len))
        } else {
            element_range(p.kv_shape(), kv_strides, c.b0, c.nb, c.kh0, c.nkh)
        };
        let lse = rows.lse_range(c);
        let partial = if n_splits > 1 {
            rows.count(c) * n_splits as u64 * DType::F32.bytes(p.head_dim as u64)
        } else {
            0
        };
        window_bytes(limits, q.0, q.1) <= max_binding
            && window_bytes(limits, kv.0, kv.1) <= max_binding
            && window_bytes(limits, lse.0, lse.1) <= max_binding
            && partial <= max_binding
    };
    let whole = |b0, nb, kh0, nkh| Chunk { b0, nb, kh0, nkh, t0: 0, nt: q_tiles, s0: 0, ns: n_splits };
    let mut chunks = Vec::new();
    if !by_key_range && fits(&whole(0, p.batch, 0, p.kv_heads)) {
        chunks.push(whole(0, p.batch, 0, p.kv_heads));
    } else if !by_key_range && fits(&whole(0, 1, 0, p.kv_heads)) {
        let nb = (1..=p.batch).rev().find(|&nb| fits(&whole(0, nb, 0, p.kv_heads))).unwrap_or(1);
        chunks.extend((0..p.batch).step_by(nb).map(|b0| whole(b0, nb.min(p.batch - b0), 0, p.kv_heads)));
    } else if let Some(nkh) = (1..=p.kv_heads).rev().find(|&n| !by_key_range && fits(&whole(0, 1, 0, n))) {
        for b0 in 0..p.batch {
            chunks
                .extend((0..p.kv_heads).step_by(nkh).map(|kh0| whole(b0, 1, kh0, nkh.min(p.kv_heads - kh0))));
        }
    } else {
        // query-row ranges of one (batch, kv head): the longest run of tiles that fits, in turn;
        // by key range, each run once per split
        for b0 in 0..p.batch {
            for kh0 in 0..p.kv_heads {
                let mut t0 = 0;
                while t0 < q_tiles {
                    let chunk = |nt| Chunk { b0, nb: 1, kh0, nkh: 1, t0, nt, s0: 0, ns: n_splits };
                    let (mut lo, mut hi) = (0, q_tiles - t0); // largest nt in lo..=hi that fits
                    while lo < hi {
                        let mid = (lo + hi).div_ceil(2);
                        if fits(&chunk(mid)) {
                            lo = mid
                        } else {
                            hi = mid - 1
                        }
                    }
                    if lo == 0 {
                        let kv = element_range(p.kv_shape(), kv_strides, 0, 1, 0, 1);
                        return Err(Error::LimitExceeded {
                            what: format!(
                                "one query tile against one K/V head ({} keys, head dim {}{})",
                                p.kv_len,
                                p.head_dim,
                                if n_splits > 1 { format!(", {n_splits} key splits") } else { String::new() }
                            ),
                            limit: "max_storage_buffer_binding_size",
                            needed: window_bytes(limits, kv.0, kv.1),
                            available: max_binding,
                        });
                    }
                    if by_key_range {
                        chunks.extend((0..n_splits).map(|s0| Chunk { s0, ns: 1, ..chunk(lo) }));
                    } else {
                        chunks.push(chunk(lo));
                    }
                    t0 += lo;
                }
            }
        }
    }
    Ok(Plan { tiles, n_splits, tiles_per_split, chunks })
}

#[cfg(test)]
mod tests {
    //! Planning needs no device: made-up limits and the register tiles of an 8-lane adapter.
    use super::*;
    use crate::attention::Layout;

    fn problem(
        batch: usize,
        q_heads: usize,
        kv_heads: usize,
        q_len: usize,
        kv_len: usize,
        d: usize,
    ) -> Problem {
        Problem { batch, q_heads, kv_heads, q_len, kv_len, head_dim: d }
    }

    fn limits(max_binding: u64) -> wgpu::Limits {
        wgpu::Limits {
            max_storage_buffer_binding_size: max_binding,
            min_storage_buffer_offset_alignment: 256,
            ..wgpu::Limits::default()
        }
    }

    /// Every (batch, kv head, query tile, split) is run by exactly one chunk.
    fn assert_covers(plan: &Plan, p: &Problem) {
        let rows = Rows::new(p.q_shape(), p.group(), plan.tiles.bq as usize, true);
        let mut seen = std::collections::HashMap::new();
        for c in &plan.chunks {
            for b in c.b0..c.b0 + c.nb {
                for kh in c.kh0..c.kh0 + c.nkh {
                    for t in c.t0..c.t0 + c.nt {
                        for s in c.s0..c.s0 + c.ns {
                            *seen.entry((b, kh, t, s)).or_insert(0) += 1;
                        }
                    }
                }
            }
        }
        let want = p.batch * p.kv_heads * rows.tiles() * plan.n_splits as usize;
        assert_eq!(seen.len(), want, "{plan:?}");
        assert!(seen.values().all(|&n| n == 1), "a piece runs twice: {plan:?}");
    }

    fn tiles(d: usize) -> TileConfig {
        TileConfig::register(d, Some(8), None, false)
    }

    #[test]
    fn a_problem_that_fits_is_one_chunk() {
        let p = problem(2, 8, 2, 300, 500, 64);
        let s = Layout::Bhsd.strides(p.q_shape());
        let k = Layout::Bhsd.strides(p.kv_shape());
        let plan = plan(&limits(128 << 20), tiles(64), &p, Some(3), None, s, k).unwrap();
        assert_eq!(plan.chunks.len(), 1);
        assert_eq!(plan.n_splits, 3);
        assert_covers(&plan, &p);
    }

    #[test]
    fn small_bindings_cut_by_batch_head_rows_and_key_range() {
        for (layout, kv_len) in [(Layout::Bhsd, 4000), (Layout::Bshd, 4000), (Layout::Bshd, 20_000)] {
            let p = problem(3, 4, 2, 700, kv_len, 64);
            let (s, k) = (layout.strides(p.q_shape()), layout.strides(p.kv_shape()));
            let lim = limits(256 << 10);
            let plan = plan(&lim, tiles(64), &p, None, None, s, k).unwrap();
            assert!(plan.chunks.len() > 1, "{layout:?} {kv_len}: {plan:?}");
            assert_covers(&plan, &p);
            let rows = Rows::new(p.q_shape(), p.group(), plan.tiles.bq as usize, true);
            for c in &plan.chunks {
                let q = rows.range(s, c);
                assert!(window_bytes(&lim, q.0, q.1) <= lim.max_storage_buffer_binding_size, "{c:?}");
            }
        }
    }

    #[test]
    fn key_splits_bound_each_invocation_s_loop() {
        let p = problem(1, 1, 1, 16, 70_000, 32);
        let s = Layout::Bhsd.strides(p.q_shape());
        let plan = plan(&limits(128 << 20), tiles(32), &p, Some(1), None, s, s).unwrap();
        assert!(plan.tiles_per_split * plan.tiles.bk <= MAX_KEYS_PER_SPLIT, "{plan:?}");
        assert!(plan.n_splits >= 5);
    }

    #[test]
    fn what_cannot_fit_is_a_typed_error() {
        let p = problem(1, 1, 1, 64, 1024, 256);
        let s = Layout::Bhsd.strides(p.q_shape());
        let e = plan(&limits(2 << 10), tiles(256), &p, None, Some((16, 64)), s, s).unwrap_err();
        assert!(matches!(e, Error::LimitExceeded { limit: "max_storage_buffer_binding_size", .. }), "{e:?}");
    }
}
