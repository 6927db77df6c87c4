//! Recording a fused-forward call: the block table and aux words, the per-chunk uniforms and
//! binding windows of its plan, and the top-k selection and LSE merge around the kernel. Never
//! blocks: the dispatches go into the caller's encoder.

use bytemuck::{Pod, Zeroable};

use super::plan::{element_range, key_range, plan, Rows};
use super::tiles::{Family, TileConfig, Variant};
use crate::attention::{Attention, Problem};
use crate::context::{Context, PipelineKey};
use crate::dtype::{word_bytes, DType};
use crate::error::{Error, Result};
use crate::kernels::merge::{self, MergeBuffers, MergeParams};
use crate::kernels::topk;
use crate::kernels::{aux_words, causal_code, check_tensors, dispatch_all, pipeline, repack, strides4, Window};
use crate::mask::BlockMask;
use crate::record::CallInfo;
use crate::tensor::{check_buffer_size, Tensor};

/// Mirrors `Params` in attention_common.wgsl: 36 scalars (144 bytes, the last three padding, so
/// that the vec4 strides that follow sit at WGSL's 16-byte alignment), then five strides
/// (`kernels::uniform_layout` checks every member against naga's layout of the WGSL struct).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct ForwardParams {
    pub(crate) q_len: u32,
    pub(crate) kv_len: u32,
    pub(crate) head_dim: u32,
    pub(crate) group: u32,
    pub(crate) rows_per_head: u32,
    pub(crate) batch0: u32,
    pub(crate) batches: u32,
    pub(crate) kv_head0: u32,
    pub(crate) kv_heads: u32,
    pub(crate) q_tile0: u32,
    pub(crate) q_tiles: u32,
    pub(crate) n_splits: u32,
    pub(crate) tiles_per_split: u32,
    pub(crate) grid_x: u32,
    pub(crate) causal: u32,
    pub(crate) alibi_offset: u32,
    pub(crate) scale: f32,
    pub(crate) softcap: f32,
    pub(crate) q_base: u32,
    pub(crate) k_base: u32,
    pub(crate) v_base: u32,
    pub(crate) o_base: u32,
    pub(crate) lse_base: u32,
    pub(crate) wg_offset: u32,
    pub(crate) use_table: u32,
    pub(crate) block_size: u32,
    pub(crate) table_batch: u32,
    pub(crate) table_heads: u32,
    pub(crate) q_blocks: u32,
    pub(crate) lists_offset: u32,
    pub(crate) entries_offset: u32,
    pub(crate) bits_offset: u32,
    pub(crate) split0: u32,
    pub(crate) pad: [u32; 3],
    pub(crate) q_stride: [u32; 4],
    pub(crate) k_stride: [u32; 4],
    pub(crate) v_stride: [u32; 4],
    pub(crate) o_stride: [u32; 4],
    pub(crate) lse_stride: [u32; 4],
}

/// The tensors of one call.
#[derive(Clone, Copy)]
pub(crate) struct Io<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub o: &'a Tensor,
    pub lse: &'a Tensor,
}

/// Record one fused forward of `family` into `encoder` (its own compute pass, which writes
/// `timing`'s timestamps if given). Validates the call; blocks on nothing.
#[allow(clippy::too_many_arguments)]
pub fn encode(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    timing: Option<wgpu::ComputePassTimestampWrites<'_>>,
    family: Family,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    attn: &Attention,
    (o, lse): (&Tensor, &Tensor),
) -> Result<CallInfo> {
    let p = attn.validate(q.shape, k.shape, v.shape)?;
    encode_valid(ctx, encoder, timing, &p, family, Io { q, k, v, o, lse }, attn)
}

/// [`encode_valid`] on packed, zero-padded copies of Q, K, V and O (see [`repack`]): pack, the
/// forward on the copies (its own pass, the one `timing` times), unpack O.
fn encode_packed(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    timing: Option<wgpu::ComputePassTimestampWrites<'_>>,
    p: &Problem,
    family: Family,
    io: Io<'_>,
    attn: &Attention,
) -> Result<CallInfo> {
    let Io { q, k, v, o, lse } = io;
    let [qp, kp, vp, op] = [q, k, v, o].map(|t| repack::packed_zeros(ctx, t));
    let (qp, kp, vp, op) = (qp?, kp?, vp?, op?);
    let mut dispatches = 0;
    {
        let mut pass =
            encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("pack"), timestamp_writes: None });
        for (view, packed) in [(q, &qp), (k, &kp), (v, &vp)] {
            dispatches += repack::encode(ctx, &mut pass, view, packed, false)?;
        }
    }
    // the padding adds nothing to q·k; the scale stays the caller's head dim's
    let packed_attn = attn.clone().scale(attn.scale_for(p.head_dim));
    let pp = packed_attn.validate(qp.shape, kp.shape, vp.shape)?;
    let io = Io { q: &qp, k: &kp, v: &vp, o: &op, lse };
    let mut info = encode_valid(ctx, encoder, timing, &pp, family, io, &packed_attn)?;
    {
        let mut pass =
            encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("unpack"), timestamp_writes: None });
        dispatches += repack::encode(ctx, &mut pass, o, &op, true)?;
    }
    info.dispatches += dispatches;
    Ok(info)
}

/// The tiles a call runs now ([`crate::FirstCall::Quick`]): `full`, unless its kernel in
/// `variant` is neither built on this context nor compiled on this machine before; then the call
/// runs [`TileConfig::quick`], which compiles in about half the time (docs/COMPILE.md), and
/// returns the full kernel's pipeline key for the background compiler.
fn first_call_tiles(ctx: &Context, full: TileConfig, variant: Variant) -> (TileConfig, Option<(PipelineKey, &'static str)>) {
    let Some(quick) = full.quick().filter(|_| ctx.compiles_in_background()) else { return (full, None) };
    let (name, source) = full.source();
    let key = PipelineKey { shader: name, entry: "main", params: full.params(variant) };
    if ctx.has_pipeline(&key) || ctx.background.compiled(&key) || ctx.background.failed(&key) {
        return (full, None);
    }
    log::info!(
        "head dim {}: running {} rows and {}-key blocks per invocation while the kernel of {} rows and {}-key blocks compiles in the background",
        full.d_pad,
        quick.tpr,
        quick.bk,
        full.tpr,
        full.bk
    );
    (quick, Some((key, source)))
}

/// [`encode`] of a validated problem `p`.
pub(crate) fn encode_valid(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    timing: Option<wgpu::ComputePassTimestampWrites<'_>>,
    p: &Problem,
    family: Family,
    io: Io<'_>,
    attn: &Attention,
) -> Result<CallInfo> {
    let Io { q, k, v, o, lse } = io;
    check_tensors(ctx, p, [q, k, v], o, lse, true, "the fused forward")?;
    if k.strides != v.strides {
        return Err(Error::ShapeMismatch(format!(
            "K has strides {:?} but V {:?}: they must agree",
            k.strides, v.strides
        )));
    }
    // views the kernels cannot access as vec4s run on packed copies (kernels::repack)
    let vec4_ready = [q, k, v, o].into_iter().all(repack::vec4_ready);
    if !vec4_ready
        && ctx.limits().min_storage_buffer_offset_alignment.is_multiple_of(16)
        && repack::fits(ctx, &[q, k, v, o])
    {
        return encode_packed(ctx, encoder, timing, p, family, io, attn);
    }
    // a mask is lowered to a block table (a prebuilt one is used as it is)
    let built;
    let table: Option<&BlockMask> = match (&attn.block_mask, &attn.mask) {
        (Some(bm), None) => Some(bm),
        (None, None) => None,
        _ => {
            built = BlockMask::build(attn, p.dims(), attn.launch.block_size.unwrap_or(64))?;
            Some(&built)
        }
    };
    // (longest list, block size) of the table the kernel walks, if any
    let table_shape = match (&attn.topk, table) {
        (Some(t), _) => Some((t.k + 2, t.block_size)),
        (None, Some(t)) => Some((t.max_list(), t.size)),
        (None, None) => None,
    };
    let variant = Variant::for_call(ctx, p.head_dim, attn, table, vec4_ready, (q.dtype, o.dtype));
    let full = TileConfig::for_family(ctx, family, p.head_dim, table_shape.map(|(_, size)| size))?;
    let (first, mut background) =
        if attn.launch.full_kernel || attn.launch.kernel.is_some() || ctx.options().kernel.is_some() {
            (full, None)
        } else {
            first_call_tiles(ctx, full, variant)
        };
    let plan = plan(ctx.limits(), first, p, attn.launch.num_splits, table_shape, q.strides, k.strides)?;
    // with split keys the kernel writes f32 partial states; the merge stores O in its dtype
    let variant = Variant { o: if plan.n_splits > 1 { DType::F32 } else { o.dtype }, ..variant };
    if let Some((key, _)) = background.as_mut() {
        key.params = full.params(variant);
    }
    let g = p.group();
    let rows = Rows::new(p.q_shape(), g, plan.tiles.bq as usize, table_shape.is_none());

    // aux: per-batch key lengths and ALiBi slopes, then the block table
    let (mut aux, alibi_offset) = aux_words(attn, p);
    let mut table_params = [0u32; 8];
    if let Some(t) = table {
        let lists_offset = aux.len() as u32;
        let mut start = 0u32;
        for list in &t.lists {
            aux.extend([start, list.len() as u32]);
            start += list.len() as u32;
        }
        let entries_offset = aux.len() as u32;
        for e in t.lists.iter().flatten() {
            aux.extend([e.key_block, e.bits.unwrap_or(u32::MAX)]);
        }
        let bits_offset = aux.len() as u32;
        aux.extend_from_slice(&t.bits);
        table_params = [
            1,
            t.size as u32,
            t.batch as u32,
            t.heads as u32,
            t.q_blocks as u32,
            lists_offset,
            entries_offset,
            bits_offset,
        ];
    }
    let mut topk_offsets = (0, 0);
    if let Some(t) = &attn.topk {
        // filled on the device by the top-k selection before the kernel runs
        let (lists_words, entries_words) = topk::table_words(p, t);
        topk_offsets = (aux.len() as u32, (aux.len() + lists_words) as u32);
        aux.resize(aux.len() + lists_words + entries_words, 0);
        table_params = [
            1,
            t.block_size as u32,
            p.batch as u32,
            p.q_heads as u32,
            p.q_len.div_ceil(t.block_size) as u32,
            topk_offsets.0,
            topk_offsets.1,
            0,
        ];
    }
    let aux_bytes = word_bytes(aux.len() as u64);
    if aux_bytes > ctx.limits().max_storage_buffer_binding_size {
        return Err(Error::LimitExceeded {
            what: "the block table and bitmaps of the mask".into(),
            limit: "max_storage_buffer_binding_size",
            needed: aux_bytes,
            available: ctx.limits().max_storage_buffer_binding_size,
        });
    }
    let aux = ctx.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("attention aux"),
        contents: bytemuck::cast_slice(&aux),
        usage: wgpu::BufferUsages::STORAGE,
    });

    // partial states for split key ranges, sized for the largest chunk
    let ns = plan.n_splits as u64;
    let partial = if ns > 1 {
        let max_rows = plan.chunks.iter().map(|c| rows.count(c)).max().unwrap_or(1);
        let o_bytes = DType::F32.bytes(max_rows * ns * p.head_dim as u64);
        check_buffer_size(ctx, "partial-output buffer", o_bytes)?;
        let make = |label, size| {
            ctx.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        Some((make("partial O", o_bytes), make("partial LSE", DType::F32.bytes(max_rows * ns))))
    } else {
        None
    };

    let (name, source) = plan.tiles.source();
    let pipeline = pipeline(ctx, name, source, &plan.tiles.params(variant))?;

    let mut dispatches = 0;
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("attention forward"),
            timestamp_writes: timing,
        });
        if let Some(t) = &attn.topk {
            dispatches += topk::encode(ctx, &mut pass, p, attn, t, (q, k), &aux, topk_offsets)?;
        }
        for c in &plan.chunks {
            let (p0, _) = rows.rows(c);
            let kh = if c.ns < plan.n_splits {
                // cut by key range: only this split's keys (clamped to Nk) are bound
                let split_keys = (plan.tiles_per_split * plan.tiles.bk) as usize;
                let k0 = (c.s0 as usize * split_keys).min(p.kv_len - 1);
                let k1 = ((c.s0 + c.ns) as usize * split_keys).min(p.kv_len);
                key_range(p.kv_shape(), k.strides, c.b0, c.kh0, k0, k1)
            } else {
                element_range(p.kv_shape(), k.strides, c.b0, c.nb, c.kh0, c.nkh)
            };
            let qw = Window::new(ctx, q, rows.range(q.strides, c));
            let kw = Window::new(ctx, k, kh);
            let vw = Window::new(ctx, v, kh);
            let ow = Window::new(ctx, o, rows.range(o.strides, c));
            let lw = Window::new(ctx, lse, rows.lse_range(c));
            let mut fp = ForwardParams {
                q_len: p.q_len as u32,
                kv_len: p.kv_len as u32,
                head_dim: p.head_dim as u32,
                group: g as u32,
                rows_per_head: rows.rph as u32,
                batch0: c.b0 as u32,
                batches: c.nb as u32,
                kv_head0: c.kh0 as u32,
                kv_heads: c.nkh as u32,
                q_tile0: c.t0 as u32,
                q_tiles: c.nt as u32,
                n_splits: c.ns,
                tiles_per_split: plan.tiles_per_split,
                split0: c.s0,
                causal: causal_code(attn),
                alibi_offset,
                scale: attn.scale_for(p.head_dim),
                softcap: attn.softcap.unwrap_or(1.0),
                q_base: qw.base,
                k_base: kw.base,
                v_base: vw.base,
                use_table: table_params[0],
                block_size: table_params[1],
                table_batch: table_params[2],
                table_heads: table_params[3],
                q_blocks: table_params[4],
                lists_offset: table_params[5],
                entries_offset: table_params[6],
                bits_offset: table_params[7],
                q_stride: strides4(q),
                k_stride: strides4(k),
                v_stride: strides4(v),
                ..Default::default()
            };
            let (o_res, lse_res);
            if let Some((po, pl)) = &partial {
                // partial states of packed row r = (b − b0, kv head − kh0, p − p0), in order:
                // O at (r·n_splits + split)·D + d, LSE at r·n_splits + split. Expressed by strides
                // over (batch, head, query, split): head h, query i is packed row (h − kh·G)·Nq + i.
                let (d, rph, nsu) = (p.head_dim as u32, rows.rph as u32, plan.n_splits);
                let (rows_per_kh, g) = ((rows.rows(c).1 - p0) as u32, g as u32);
                let row = [rows_per_kh * c.nkh as u32, rph, 1];
                let row0 = c.b0 as u32 * row[0] + (c.kh0 as u32 * g) * rph + p0 as u32;
                // (kv head stride within the chunk is rows_per_kh = G·R whenever nkh > 1)
                fp.o_stride = [row[0] * nsu * d, row[1] * nsu * d, nsu * d, d];
                fp.o_base = row0 * nsu * d;
                fp.lse_stride = [row[0] * nsu, row[1] * nsu, nsu, 1];
                fp.lse_base = row0 * nsu;
                o_res = po.as_entire_binding();
                lse_res = pl.as_entire_binding();
            } else {
                fp.o_stride = strides4(o);
                fp.o_base = ow.base;
                fp.lse_stride = [(p.q_heads * p.q_len) as u32, p.q_len as u32, 1, 0];
                fp.lse_base = lw.base;
                o_res = ow.binding(&o.buffer);
                lse_res = lw.binding(&lse.buffer);
            }
            let total = (c.nb * c.nkh * c.nt) as u64 * c.ns as u64;
            let uniform =
                |grid_x, wg_offset| bytemuck::bytes_of(&ForwardParams { grid_x, wg_offset, ..fp }).to_vec();
            // the full kernel compiles in the background on this call's own sizes (one workgroup)
            if let Some((key, source)) = background.take() {
                ctx.background.request(&key, source, uniform(1, 0));
            }
            let resources = [
                (1, qw.binding(&q.buffer)),
                (2, kw.binding(&k.buffer)),
                (3, vw.binding(&v.buffer)),
                (4, aux.as_entire_binding()),
                (5, o_res),
                (6, lse_res),
            ];
            dispatches +=
                dispatch_all(ctx, &mut pass, &pipeline, "flash forward", total, uniform, &resources);

            // merge once the chunk's rows have every split (the last key-range chunk of its rows)
            if let Some((po, pl)) = partial.as_ref().filter(|_| c.s0 + c.ns == plan.n_splits) {
                let mp = MergeParams {
                    rows: rows.count(c) as u32,
                    row0: p0 as u32,
                    rows_per_group: (rows.rows(c).1 - p0) as u32,
                    head_dim: p.head_dim as u32,
                    n_splits: plan.n_splits,
                    group: g as u32,
                    kv_heads: c.nkh as u32,
                    q_len: p.q_len as u32,
                    rows_per_head: rows.rph as u32,
                    batch0: c.b0 as u32,
                    kv_head0: c.kh0 as u32,
                    o_stride: strides4(o),
                    lse_stride_b: (p.q_heads * p.q_len) as u32,
                    lse_stride_h: p.q_len as u32,
                    ..Default::default()
                };
                let bufs =
                    MergeBuffers { part_o: po, part_lse: pl, o: (&o.buffer, ow), lse: (&lse.buffer, lw) };
                dispatches += merge::encode(ctx, &mut pass, mp, &bufs, o.dtype)?;
            }
        }
    }
    Ok(CallInfo::new(plan.tiles.family.name(), Some(plan.tiles), plan.n_splits, dispatches))
}
