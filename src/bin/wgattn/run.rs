//! `wgattn run`: attention on `.npy` files.
//!
//! Q, K and V are 4-D float32 or float16 files in the `--layout` order (`[B, H, N, D]` for bhsd,
//! `[B, N, H, D]` for bshd), stored on the device as `--dtype` (converted on upload, rounding to
//! nearest). O is written in Q's shape and layout (float16 with `--dtype f16`, float32
//! otherwise), LSE as float32 `[B, Hq, Nq]`. With `--device cpu` the oracle computes on the inputs
//! rounded to `--dtype`, so both devices answer the same question. The
//! problem is validated before any adapter is opened, so bad input fails fast with the library's
//! message, and `--device cpu` never touches the GPU. Masks (see [`crate::masks`]) are read once
//! Q, K and V have been checked, since their shapes depend on the problem's sizes.

use std::path::Path;

use wgpu_attention::cpu::reference;
use wgpu_attention::paged::{PagedKvCache, PagedKvConfig};
use wgpu_attention::{Attention, Context, DType, HostTensor, Layout, Recorder, Shape, Tensor};

use crate::{masks, npy};
use crate::{CliError, DeviceArg, RunArgs};

/// Read the inputs, compute O (and LSE), write the outputs.
pub fn run(args: &RunArgs) -> Result<(), CliError> {
    let layout = Layout::from(args.layout);
    let (q, q_dims) = load(&args.q, layout)?;
    let (k, _) = load(&args.k, layout)?;
    let (v, _) = load(&args.v, layout)?;
    let attn = options(args)?;
    let p = attn.validate(q.shape, k.shape, v.shape)?;
    let attn = masks::apply(attn, args, &p)?;
    attn.validate(q.shape, k.shape, v.shape)?;

    let (o, lse, _ctx) = match args.device {
        DeviceArg::Gpu => {
            let ctx = Context::new()?;
            log::info!("running on {}", ctx.adapter().info.name);
            let (o, lse, info) = match args.page_size {
                Some(page_size) => {
                    paged(&ctx, (&q, &k, &v), &attn, args.dtype.into(), page_size, args.page_seed)?
                }
                None => {
                    let out = wgpu_attention::attention_as(&ctx, &q, &k, &v, &attn, args.dtype.into())?;
                    (out.o.data, out.lse, out.info)
                }
            };
            if let Some(info) = info {
                eprintln!("wgattn: ran {} ({} key parts merged)", kernel_name(&info), info.n_splits);
            }
            if ctx.background_compiles().pending > 0 {
                // the context waits for it when dropped, after the outputs are written
                eprintln!(
                    "wgattn: compiling the full kernel in the background for the next run (Ctrl-C skips it)"
                );
            }
            (o, lse, Some(ctx))
        }
        DeviceArg::Cpu => {
            if attn.launch.num_splits.is_some() {
                log::warn!("--num-splits only affects the GPU path; ignored with --device cpu");
            }
            let dtype = DType::from(args.dtype);
            let r = reference::attention(&q.rounded(dtype), &k.rounded(dtype), &v.rounded(dtype), &attn)?;
            let narrow = |x: Vec<f64>| x.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
            (narrow(r.o), narrow(r.lse), None)
        }
    };

    if DType::from(args.dtype) == DType::F16 {
        npy::write_f16(&args.out, &q_dims, &o)?;
    } else {
        npy::write_f32(&args.out, &q_dims, &o)?;
    }
    if let Some(path) = &args.lse {
        npy::write_f32(path, &[p.batch, p.q_heads, p.q_len], &lse)?;
    }
    Ok(())
}

/// O (in Q's layout), LSE and what ran.
type Computed = (Vec<f32>, Vec<f32>, Option<wgpu_attention::CallInfo>);

/// Attention through a paged KV cache: K and V (their first `kv_lens[b]` tokens per sequence)
/// appended into pages of `page_size` tokens in the shuffled order of `seed`.
fn paged(
    ctx: &Context,
    (q, k, v): (&HostTensor, &HostTensor, &HostTensor),
    attn: &Attention,
    dtype: DType,
    page_size: usize,
    seed: u64,
) -> Result<Computed, CliError> {
    let s = k.shape;
    let lens: Vec<usize> = match &attn.kv_lens {
        Some(l) => l.iter().map(|&x| x as usize).collect(),
        None => vec![s.seq; s.batch],
    };
    let pages = lens.iter().map(|l| l.div_ceil(page_size)).sum::<usize>().max(1);
    let config = PagedKvConfig { pages, page_size, kv_heads: s.heads, head_dim: s.head_dim, dtype };
    let mut cache = PagedKvCache::new(ctx, config)?;
    cache.shuffle_free_pages(seed);
    let (qd, kd, vd) = (
        Tensor::upload_as(ctx, q, dtype)?,
        Tensor::upload_as(ctx, k, dtype)?,
        Tensor::upload_as(ctx, v, dtype)?,
    );
    let ids: Vec<_> = (0..s.batch).map(|_| cache.add_sequence()).collect();
    let mut rec = Recorder::new(ctx);
    for (b, (&id, &len)) in ids.iter().zip(&lens).enumerate() {
        if len > 0 {
            let part = |t: &Tensor| t.narrow(0, b, 1).and_then(|t| t.narrow(2, 0, len));
            cache.append(&mut rec, &[id], &part(&kd)?, &part(&vd)?)?;
        }
    }
    let mut attn = attn.clone();
    attn.kv_lens = None; // the cache holds each sequence's length
    let out = cache.attention(&mut rec, &qd, &ids, &attn)?;
    rec.submit()?;
    log::info!("pages of {page_size} tokens, {} in the pool, {} slab(s)", pages, cache.slabs());
    // O is allocated in Q's layout, the files' order
    Ok((out.o.to_host(ctx)?.data, out.lse.to_host(ctx)?.data, Some(out.info)))
}

/// "decode", or the fused forward's family and tiles ("fused-register 64x16").
fn kernel_name(info: &wgpu_attention::CallInfo) -> String {
    match info.tiles {
        Some(t) => format!("fused-{} {}x{}", t.family.name(), t.bq, t.bk),
        None => info.kernel.to_string(),
    }
}

/// A 4-D float32 or float16 file as a tensor in `layout`, with the file's own dimensions.
fn load(path: &Path, layout: Layout) -> Result<(HostTensor, Vec<usize>), CliError> {
    let a = npy::read_float(path, 4)?;
    let d = &a.shape;
    let shape = match layout {
        Layout::Bhsd => Shape::new(d[0], d[1], d[2], d[3]),
        Layout::Bshd => Shape::new(d[0], d[2], d[1], d[3]),
    };
    let dims = a.shape.clone();
    Ok((HostTensor::new(a.data, shape, layout)?, dims))
}

/// The [`Attention`] options of the command line.
fn options(args: &RunArgs) -> Result<Attention, CliError> {
    let mut attn = Attention::new();
    if let Some(scale) = args.scale {
        attn = attn.scale(scale);
    }
    if let Some(causal) = args.causal {
        attn = attn.causal(causal.into());
    }
    if let Some(lens) = &args.kv_lens {
        attn = attn.kv_lens(lens.clone());
    }
    if let Some(path) = &args.alibi_slopes {
        let slopes = npy::read_f32(path, 1)?;
        attn = attn.alibi_slopes(slopes.data);
    }
    if let Some(cap) = args.softcap {
        attn = attn.softcap(cap);
    }
    if let Some(k) = args.decode_kernel {
        attn = attn.decode_kernel(k.into());
    }
    if let Some(n) = args.num_splits {
        attn = attn.num_splits(n);
    }
    Ok(attn)
}
