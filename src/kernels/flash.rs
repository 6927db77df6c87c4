//! The fused forward (`shaders/flash_forward.wgsl`): tile choice, dispatch splitting under the
//! adapter's limits, and the launch.
//!
//! Device memory per call: O (`4·B·Hq·Nq·D` bytes), LSE (`4·B·Hq·Nq`), a small aux buffer
//! (`4·(B + Hq)`) and a uniform per dispatch; with a split key range also partial states of
//! `4·rows·n_splits·(D + 1)` bytes for the largest chunk of rows. Nothing is O(Nq·Nk).

use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

use super::merge::{self, MergeBuffers, MergeParams};
use super::{grid, pipeline, window_bytes, Window};
use crate::attention::{Attention, Causal, Layout, Problem, Shape};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::shader::Params;
use crate::tensor::{check_buffer_size, Tensor};

const SOURCE: &str = include_str!("../../shaders/flash_forward.wgsl");

/// Key tiles one invocation may loop over. Lavapipe stops an invocation after 65,535 loop
/// iterations in total; the kernel's only run-time loop is the tile loop, so longer key ranges are
/// split across workgroups and merged by log-sum-exp.
pub const MAX_TILES_PER_SPLIT: u32 = 32_768;

/// Workgroups below which the key range is split further to keep the adapter busy.
const MIN_WORKGROUPS: u64 = 64;

/// Tile sizes of one specialisation of the tiled kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TileConfig {
    /// Query rows per workgroup.
    pub bq: u32,
    /// Keys per tile.
    pub bk: u32,
    /// Invocations per query row.
    pub tpr: u32,
    /// Head dim padded to a multiple of `4·tpr`.
    pub d_pad: u32,
}

impl TileConfig {
    /// The largest tiles that fit the adapter's workgroup memory and invocation limits.
    pub fn choose(head_dim: usize, limits: &wgpu::Limits) -> Result<Self> {
        let tpr = if head_dim <= 64 { 4 } else { 8 };
        let d_pad = (head_dim as u32).div_ceil(4 * tpr) * 4 * tpr;
        let candidates = [(32, 32), (16, 32), (16, 16), (8, 16), (8, 8), (4, 8), (2, 8)];
        let mut smallest = 0;
        for (bq, bk) in candidates {
            let c = Self { bq, bk, tpr, d_pad };
            smallest = c.workgroup_bytes();
            if c.workgroup_bytes() <= limits.max_compute_workgroup_storage_size
                && bq * tpr <= limits.max_compute_invocations_per_workgroup
                && bq * tpr <= limits.max_compute_workgroup_size_x
            {
                return Ok(c);
            }
        }
        Err(Error::LimitExceeded {
            what: format!("the smallest attention tile for head dim {head_dim}"),
            limit: "max_compute_workgroup_storage_size",
            needed: smallest as u64,
            available: limits.max_compute_workgroup_storage_size as u64,
        })
    }

    /// Workgroup memory of the specialisation: Q and K/V tiles (vec4) plus the S and P tiles.
    pub fn workgroup_bytes(&self) -> u32 {
        let dv = self.d_pad / 4;
        (self.bq * dv + self.bk * dv) * 16 + 2 * self.bq * self.bk * 4
    }

    fn params(&self) -> Params {
        let wg = self.bq * self.tpr;
        let dv = self.d_pad / 4;
        Params::from([
            ("BQ", self.bq),
            ("BK", self.bk),
            ("TPR", self.tpr),
            ("DV", dv),
            ("KPT", self.bk / self.tpr),
            ("OPT", dv / self.tpr),
            ("QLOADS", (self.bq * dv).div_ceil(wg)),
            ("KVLOADS", (self.bk * dv).div_ceil(wg)),
        ])
    }
}

/// Mirrors `Params` in flash_forward.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
struct ForwardParams {
    q_len: u32,
    kv_len: u32,
    head_dim: u32,
    group: u32,
    batch0: u32,
    batches: u32,
    kv_head0: u32,
    kv_heads: u32,
    q_tiles: u32,
    n_splits: u32,
    tiles_per_split: u32,
    grid_x: u32,
    causal: u32,
    use_alibi: u32,
    alibi_offset: u32,
    use_softcap: u32,
    scale: f32,
    softcap: f32,
    q_base: u32,
    k_base: u32,
    v_base: u32,
    o_base: u32,
    lse_base: u32,
    _pad: u32,
    q_stride: [u32; 4],
    k_stride: [u32; 4],
    v_stride: [u32; 4],
    o_stride: [u32; 4],
    lse_stride: [u32; 4],
}

/// O and LSE of one forward call.
#[derive(Debug)]
pub struct Output {
    /// `[B, Hq, Nq, D]` in Q's layout.
    pub o: Tensor,
    /// `[B, Hq, Nq]` (a tensor of shape `[B, Hq, Nq, 1]`), natural log; −∞ for rows that saw no key.
    pub lse: Tensor,
}

/// How one call is cut into dispatches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Tiles of the kernel.
    pub tiles: TileConfig,
    /// Parts the key range is split into (merged by LSE when > 1).
    pub n_splits: u32,
    /// Key tiles per split.
    pub tiles_per_split: u32,
    /// Batches per dispatch chunk.
    pub chunk_batches: usize,
    /// K/V heads per dispatch chunk.
    pub chunk_kv_heads: usize,
}

fn element_range(shape: Shape, layout: Layout, b0: usize, nb: usize, h0: usize, nh: usize) -> (u64, u64) {
    let [sb, sh, ss] = layout.strides(shape);
    let start = b0 * sb + h0 * sh;
    let last = (b0 + nb - 1) * sb + (h0 + nh - 1) * sh + (shape.seq - 1) * ss + shape.head_dim;
    (start as u64, last as u64)
}

/// Plan a call: tiles, key splits, and chunks of (batch, kv head) that fit the binding limits.
pub fn plan(
    ctx: &Context,
    p: &Problem,
    attn: &Attention,
    q_layout: Layout,
    kv_layout: Layout,
) -> Result<Plan> {
    let limits = ctx.limits();
    let tiles = TileConfig::choose(p.head_dim, limits)?;
    let g = p.group();
    let q_tiles = (g * p.q_len).div_ceil(tiles.bq as usize) as u64;
    let n_tiles = p.kv_len.div_ceil(tiles.bk as usize) as u32;

    let mut n_splits = match attn.num_splits {
        Some(n) => n.max(1),
        None => {
            let wgs = (p.batch * p.kv_heads) as u64 * q_tiles;
            if wgs < MIN_WORKGROUPS && n_tiles >= 8 {
                (MIN_WORKGROUPS.div_ceil(wgs) as u32).min(n_tiles / 4)
            } else {
                1
            }
        }
    };
    n_splits = n_splits.max(n_tiles.div_ceil(MAX_TILES_PER_SPLIT)).clamp(1, n_tiles.max(1));
    let tiles_per_split = n_tiles.div_ceil(n_splits).max(1);
    let n_splits = n_tiles.div_ceil(tiles_per_split).max(1);

    let max_binding = limits.max_storage_buffer_binding_size;
    let fits = |nb: usize, nh: usize| -> bool {
        let q = element_range(p.q_shape(), q_layout, 0, nb, 0, nh * g);
        let kv = element_range(p.kv_shape(), kv_layout, 0, nb, 0, nh);
        let rows = (nb * nh * g * p.q_len) as u64;
        let partial = if n_splits > 1 { rows * n_splits as u64 * p.head_dim as u64 * 4 } else { 0 };
        window_bytes(ctx, q.0, q.1) <= max_binding
            && window_bytes(ctx, kv.0, kv.1) <= max_binding
            && window_bytes(ctx, 0, rows) <= max_binding
            && partial <= max_binding
    };
    let (chunk_batches, chunk_kv_heads) = if fits(p.batch, p.kv_heads) {
        (p.batch, p.kv_heads)
    } else if fits(1, p.kv_heads) {
        ((1..=p.batch).rev().find(|&nb| fits(nb, p.kv_heads)).unwrap_or(1), p.kv_heads)
    } else {
        match (1..=p.kv_heads).rev().find(|&nh| fits(1, nh)) {
            Some(nh) => (1, nh),
            None => {
                let kv = element_range(p.kv_shape(), kv_layout, 0, 1, 0, 1);
                return Err(Error::LimitExceeded {
                    what: format!(
                        "one head of one batch ({} queries, {} keys, head dim {})",
                        p.q_len, p.kv_len, p.head_dim
                    ),
                    limit: "max_storage_buffer_binding_size",
                    needed: window_bytes(ctx, kv.0, kv.1),
                    available: max_binding,
                });
            }
        }
    };
    Ok(Plan { tiles, n_splits, tiles_per_split, chunk_batches, chunk_kv_heads })
}

fn strides4(layout: Layout, shape: Shape) -> [u32; 4] {
    let [b, h, s] = layout.strides(shape);
    [b as u32, h as u32, s as u32, 0]
}

/// Attention forward on device tensors: O (in Q's layout) and LSE, freshly allocated.
pub fn forward(ctx: &Context, q: &Tensor, k: &Tensor, v: &Tensor, attn: &Attention) -> Result<Output> {
    let p = attn.validate(q.shape, k.shape, v.shape)?;
    let out = Output {
        o: Tensor::zeros(ctx, p.q_shape(), q.layout)?,
        lse: Tensor::zeros(ctx, Shape::new(p.batch, p.q_heads, p.q_len, 1), Layout::Bhsd)?,
    };
    forward_into(ctx, q, k, v, attn, &out)?;
    Ok(out)
}

/// Attention forward into existing O and LSE tensors (O: Q's shape, any layout; LSE: shape
/// `[B, Hq, Nq, 1]`, BHSD). Reusing outputs avoids an allocation per call.
pub fn forward_into(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    attn: &Attention,
    out: &Output,
) -> Result<()> {
    for t in [q, k, v, &out.o, &out.lse] {
        t.check_context(ctx)?;
    }
    if k.layout != v.layout {
        return Err(Error::ShapeMismatch(format!(
            "K is in layout {:?} but V in {:?}: they must agree",
            k.layout, v.layout
        )));
    }
    let p = attn.validate(q.shape, k.shape, v.shape)?;
    if out.o.shape != p.q_shape() {
        return Err(Error::ShapeMismatch(format!("O is {} but Q is {}", out.o.shape, p.q_shape())));
    }
    let lse_shape = Shape::new(p.batch, p.q_heads, p.q_len, 1);
    if out.lse.shape != lse_shape {
        return Err(Error::ShapeMismatch(format!("LSE is {} but must be {lse_shape}", out.lse.shape)));
    }
    let (o, lse) = (&out.o, &out.lse);
    let plan = plan(ctx, &p, attn, q.layout, k.layout)?;
    let g = p.group();

    // aux: per-batch key lengths, then ALiBi slopes as f32 bits
    let mut aux: Vec<u32> = match &attn.kv_lens {
        Some(l) => l.clone(),
        None => vec![p.kv_len as u32; p.batch],
    };
    let alibi_offset = aux.len() as u32;
    if let Some(s) = &attn.alibi_slopes {
        aux.extend(s.iter().map(|x| x.to_bits()));
    }
    let aux = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("attention aux"),
        contents: bytemuck::cast_slice(&aux),
        usage: wgpu::BufferUsages::STORAGE,
    });

    // partial states for split key ranges, sized for the largest chunk
    let chunk_rows = (plan.chunk_batches * plan.chunk_kv_heads * g * p.q_len) as u64;
    let ns = plan.n_splits as u64;
    let partial = if ns > 1 {
        let o_bytes = chunk_rows * ns * p.head_dim as u64 * 4;
        check_buffer_size(ctx, "partial-output buffer", o_bytes)?;
        let make = |label, size| {
            ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        Some((make("partial O", o_bytes), make("partial LSE", chunk_rows * ns * 4)))
    } else {
        None
    };

    let pipeline = pipeline(ctx, "flash_forward.wgsl", SOURCE, &plan.tiles.params())?;
    let layout = pipeline.get_bind_group_layout(0);
    let q_tiles = (g * p.q_len).div_ceil(plan.tiles.bq as usize) as u32;

    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    let result = ctx.scoped(|| -> Result<()> {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        for b0 in (0..p.batch).step_by(plan.chunk_batches) {
            let nb = plan.chunk_batches.min(p.batch - b0);
            for kh0 in (0..p.kv_heads).step_by(plan.chunk_kv_heads) {
                let nkh = plan.chunk_kv_heads.min(p.kv_heads - kh0);
                let h0 = kh0 * g;
                let nh = nkh * g;
                let rows = (nb * nh * p.q_len) as u64;
                let qr = element_range(p.q_shape(), q.layout, b0, nb, h0, nh);
                let kr = element_range(p.kv_shape(), k.layout, b0, nb, kh0, nkh);
                let qw = Window::new(ctx, &q.buffer, qr.0, qr.1);
                let kw = Window::new(ctx, &k.buffer, kr.0, kr.1);
                let vw = Window::new(ctx, &v.buffer, kr.0, kr.1);
                let or = element_range(p.q_shape(), o.layout, b0, nb, h0, nh);
                let ow = Window::new(ctx, &o.buffer, or.0, or.1);
                let lse_start = ((b0 * p.q_heads + h0) * p.q_len) as u64;
                let lse_end = (((b0 + nb - 1) * p.q_heads + h0 + nh) * p.q_len) as u64;
                let lw = Window::new(ctx, &lse.buffer, lse_start, lse_end);

                let total = nb as u64 * nkh as u64 * q_tiles as u64 * ns;
                let (gx, gy) = grid(ctx, total)?;
                let mut fp = ForwardParams {
                    q_len: p.q_len as u32,
                    kv_len: p.kv_len as u32,
                    head_dim: p.head_dim as u32,
                    group: g as u32,
                    batch0: b0 as u32,
                    batches: nb as u32,
                    kv_head0: kh0 as u32,
                    kv_heads: nkh as u32,
                    q_tiles,
                    n_splits: plan.n_splits,
                    tiles_per_split: plan.tiles_per_split,
                    grid_x: gx,
                    causal: match attn.causal {
                        None => 0,
                        Some(Causal::TopLeft) => 1,
                        Some(Causal::BottomRight) => 2,
                    },
                    use_alibi: attn.alibi_slopes.is_some() as u32,
                    alibi_offset,
                    use_softcap: attn.softcap.is_some() as u32,
                    scale: attn.scale_for(p.head_dim),
                    softcap: attn.softcap.unwrap_or(1.0),
                    q_base: qw.base,
                    k_base: kw.base,
                    v_base: vw.base,
                    q_stride: strides4(q.layout, p.q_shape()),
                    k_stride: strides4(k.layout, p.kv_shape()),
                    v_stride: strides4(v.layout, p.kv_shape()),
                    ..Default::default()
                };
                let (o_res, lse_res);
                if let Some((po, pl)) = &partial {
                    // partial layout [b - b0, h - h0, i, split, d] and [b - b0, h - h0, i, split]
                    let d = p.head_dim as u32;
                    let (nq, nhu, nsu) = (p.q_len as u32, nh as u32, plan.n_splits);
                    fp.o_stride = [nhu * nq * nsu * d, nq * nsu * d, nsu * d, d];
                    fp.o_base = b0 as u32 * fp.o_stride[0] + h0 as u32 * fp.o_stride[1];
                    fp.lse_stride = [nhu * nq * nsu, nq * nsu, nsu, 1];
                    fp.lse_base = b0 as u32 * fp.lse_stride[0] + h0 as u32 * fp.lse_stride[1];
                    o_res = po.as_entire_binding();
                    lse_res = pl.as_entire_binding();
                } else {
                    fp.o_stride = strides4(o.layout, p.q_shape());
                    fp.o_base = ow.base;
                    fp.lse_stride = [(p.q_heads * p.q_len) as u32, p.q_len as u32, 1, 0];
                    fp.lse_base = lw.base;
                    o_res = ow.binding(&o.buffer);
                    lse_res = lw.binding(&lse.buffer);
                }
                let uniform = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("forward params"),
                    contents: bytemuck::bytes_of(&fp),
                    usage: wgpu::BufferUsages::UNIFORM,
                });
                let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("flash forward"),
                    layout: &layout,
                    entries: &[
                        wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 1, resource: qw.binding(&q.buffer) },
                        wgpu::BindGroupEntry { binding: 2, resource: kw.binding(&k.buffer) },
                        wgpu::BindGroupEntry { binding: 3, resource: vw.binding(&v.buffer) },
                        wgpu::BindGroupEntry { binding: 4, resource: aux.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 5, resource: o_res },
                        wgpu::BindGroupEntry { binding: 6, resource: lse_res },
                    ],
                });
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                pass.dispatch_workgroups(gx, gy, 1);

                if let Some((po, pl)) = &partial {
                    let mp = MergeParams {
                        rows: rows as u32,
                        head_dim: p.head_dim as u32,
                        n_splits: plan.n_splits,
                        q_heads: nh as u32,
                        q_len: p.q_len as u32,
                        batch0: b0 as u32,
                        head0: h0 as u32,
                        o_stride: strides4(o.layout, p.q_shape()),
                        lse_stride_b: (p.q_heads * p.q_len) as u32,
                        lse_stride_h: p.q_len as u32,
                        ..Default::default()
                    };
                    let bufs =
                        MergeBuffers { part_o: po, part_lse: pl, o: (&o.buffer, ow), lse: (&lse.buffer, lw) };
                    merge::encode(ctx, &mut pass, mp, &bufs)?;
                }
            }
        }
        Ok(())
    });
    result??;
    ctx.submit_and_wait(encoder)
}
