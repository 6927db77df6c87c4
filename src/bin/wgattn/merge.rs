//! `wgattn merge`: combine two attention states computed over disjoint key sets (the O and LSE
//! files `wgattn run --out … --lse …` writes) into the state over their union.
//!
//! O₁ and O₂ are 4-D float32 or float16 files of one shape (`[B, H, N, D]` for bhsd, `[B, N, H, D]`
//! for bshd), LSE₁ and LSE₂ float32 `[B, H, N]`. O is written in their shape and layout (float16
//! when both inputs are float16), LSE as float32 `[B, H, N]`. With `--device cpu` the f64 oracle
//! merges.

use wgpu_attention::cpu::reference;
use wgpu_attention::{Context, DType, HostTensor, Layout, Recorder, Shape, Tensor};

use crate::npy;
use crate::{CliError, DeviceArg, MergeArgs};

/// Read both states, merge, write O and LSE.
pub fn merge(args: &MergeArgs) -> Result<(), CliError> {
    let layout = Layout::from(args.layout);
    let read_o = |path: &std::path::Path| -> Result<(HostTensor, Vec<usize>, bool), CliError> {
        let a = npy::read_float(path, 4)?;
        let half = npy::is_f16(path)?;
        let d = &a.shape;
        let shape = match layout {
            Layout::Bhsd => Shape::new(d[0], d[1], d[2], d[3]),
            Layout::Bshd => Shape::new(d[0], d[2], d[1], d[3]),
        };
        let dims = a.shape.clone();
        Ok((HostTensor::new(a.data, shape, layout)?, dims, half))
    };
    let (o1, dims, half1) = read_o(&args.o1)?;
    let (o2, dims2, half2) = read_o(&args.o2)?;
    if dims != dims2 {
        return Err(CliError::Usage(format!("--o1 is {dims:?} but --o2 is {dims2:?}: they must be equal")));
    }
    let s = o1.shape;
    let lse_dims = [s.batch, s.heads, s.seq];
    let read_lse = |path: &std::path::Path, flag: &str| -> Result<Vec<f32>, CliError> {
        let a = npy::read_f32(path, 3)?;
        if a.shape != lse_dims {
            return Err(CliError::Usage(format!(
                "{flag} is {:?} but must be {lse_dims:?} for O {dims:?}",
                a.shape
            )));
        }
        Ok(a.data)
    };
    let (l1, l2) = (read_lse(&args.lse1, "--lse1")?, read_lse(&args.lse2, "--lse2")?);
    let half = half1 && half2;

    let (o, lse) = match args.device {
        DeviceArg::Gpu => {
            let ctx = Context::new()?;
            let dtype = if half { DType::F16 } else { DType::F32 };
            let lse_shape = Shape::new(s.batch, s.heads, s.seq, 1);
            let up = |o: &HostTensor, l: &[f32]| -> Result<(Tensor, Tensor), CliError> {
                Ok((
                    Tensor::upload_as(&ctx, o, dtype)?,
                    Tensor::upload(&ctx, &HostTensor::new(l.to_vec(), lse_shape, Layout::Bhsd)?)?,
                ))
            };
            let (a, b) = (up(&o1, &l1)?, up(&o2, &l2)?);
            // O in the files' layout, so it comes back in their order
            let o = Tensor::zeros_as(&ctx, s, layout, dtype)?;
            let lse = Tensor::zeros(&ctx, lse_shape, Layout::Bhsd)?;
            let mut rec = Recorder::new(&ctx);
            rec.merge_states_into((&a.0, &a.1), (&b.0, &b.1), (&o, &lse))?;
            rec.submit()?;
            (o.to_host(&ctx)?.data, lse.to_host(&ctx)?.data)
        }
        DeviceArg::Cpu => {
            let r = reference::merge_states(&o1, &l1, &o2, &l2)?;
            let narrow = |x: Vec<f64>| x.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
            (narrow(r.o), narrow(r.lse))
        }
    };
    if half {
        npy::write_f16(&args.out, &dims, &o)?;
    } else {
        npy::write_f32(&args.out, &dims, &o)?;
    }
    npy::write_f32(&args.lse_out, &lse_dims, &lse)?;
    Ok(())
}
