//! The mask flags of `wgattn run`: `--window`, `--doc-ids`, `--prefix`, `--mask`, `--block-mask`,
//! `--block-size` and `--pattern`.
//!
//! The string flags are parsed by clap (so a bad `--pattern` is a usage error); the files are read
//! once the problem's sizes are known, and every shape is checked here so the error names the file.
//! All masks are AND-ed into the [`Attention`] (and so with `--causal` and `--kv-lens`).

use std::path::Path;
use std::sync::Arc;

use wgpu_attention::mask::BLOCK_SIZES;
use wgpu_attention::{Attention, Mask, Problem};

use crate::npy::{self, NpyError};
use crate::{CliError, RunArgs};

/// Block edge of bigbird's random blocks when `--block-size` is not given (the library's
/// lowering default).
const DEFAULT_BLOCK_SIZE: usize = 64;

/// The largest window, stride, count, ... the string flags accept. The library's predicates work
/// in i64 (and multiply window by dilation); beyond this they would wrap or overflow, and no
/// sequence is this long anyway.
const MAX_VALUE: u64 = i32::MAX as u64;

/// A size or count no larger than [`MAX_VALUE`].
fn parse_size(x: &str) -> Result<usize, String> {
    match x.parse::<u64>() {
        Ok(n) if n <= MAX_VALUE => Ok(n as usize),
        Ok(_) => Err(format!("`{x}` exceeds {MAX_VALUE}")),
        Err(_) => Err(format!("`{x}` is not a non-negative integer")),
    }
}

/// `--window L,R`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Keys visible before the query position.
    pub left: usize,
    /// Keys visible after it.
    pub right: usize,
}

/// Parse `L,R` (two non-negative integers).
pub fn parse_window(s: &str) -> Result<Window, String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let [l, r] = parts[..] else {
        return Err(format!("expected L,R (keys before and after each query), e.g. 64,0; got `{s}`"));
    };
    let num = |x: &str, what: &str| parse_size(x).map_err(|e| format!("{what}: {e}"));
    Ok(Window { left: num(l, "L")?, right: num(r, "R")? })
}

/// Parse `--block-size`: one of the library's block sizes.
pub fn parse_block_size(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if BLOCK_SIZES.contains(&n) => Ok(n),
        _ => Err(format!("expected one of {BLOCK_SIZES:?}")),
    }
}

/// `--pattern`: a named sparse-attention pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// `longformer:window=W,global=G`.
    Longformer { window: usize, global: usize },
    /// `bigbird:window=W,global=G,random=R,seed=S`.
    BigBird { window: usize, global: usize, random: usize, seed: u64 },
    /// `strided:stride=S`.
    Strided { stride: usize },
    /// `fixed:stride=S,c=C`.
    Fixed { stride: usize, c: usize },
    /// `dilated:window=W,dilation=D`.
    Dilated { window: usize, dilation: usize },
}

/// The pattern names and their keys, in the order the help lists them.
const PATTERNS: [(&str, &[&str]); 5] = [
    ("longformer", &["window", "global"]),
    ("bigbird", &["window", "global", "random", "seed"]),
    ("strided", &["stride"]),
    ("fixed", &["stride", "c"]),
    ("dilated", &["window", "dilation"]),
];

/// Parse `NAME:KEY=V,...`; every key of the pattern must be given exactly once.
pub fn parse_pattern(s: &str) -> Result<Pattern, String> {
    let (name, rest) = s.split_once(':').unwrap_or((s, ""));
    let name = name.trim();
    let Some(&(name, keys)) = PATTERNS.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) else {
        let names: Vec<&str> = PATTERNS.iter().map(|(n, _)| *n).collect();
        return Err(format!("unknown pattern `{name}`: expected one of {}", names.join(", ")));
    };
    let form = || format!("{name}:{}", keys.iter().map(|k| format!("{k}=N")).collect::<Vec<_>>().join(","));
    let mut values: Vec<Option<u64>> = vec![None; keys.len()];
    for item in rest.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((key, value)) = item.split_once('=') else {
            return Err(format!("`{item}` is not KEY=VALUE (expected {})", form()));
        };
        let (key, value) = (key.trim(), value.trim());
        let Some(at) = keys.iter().position(|k| k.eq_ignore_ascii_case(key)) else {
            return Err(format!("{name} has no key `{key}` (expected {})", form()));
        };
        if values[at].is_some() {
            return Err(format!("{name}: `{}` is given twice", keys[at]));
        }
        // The seed is any u64; every other value is a size or a count.
        let n = if keys[at] == "seed" {
            value.parse::<u64>().map_err(|_| format!("`{value}` is not a non-negative integer"))
        } else {
            parse_size(value).map(|n| n as u64)
        }
        .map_err(|e| format!("{name}: {}: {e}", keys[at]))?;
        values[at] = Some(n);
    }
    let missing: Vec<&str> = keys.iter().zip(&values).filter(|(_, v)| v.is_none()).map(|(k, _)| *k).collect();
    if !missing.is_empty() {
        return Err(format!("{name} needs {} (expected {})", missing.join(", "), form()));
    }
    let v = |k: usize| values[k].unwrap_or_default();
    let u = |k: usize| v(k) as usize; // at most MAX_VALUE
    Ok(match name {
        "longformer" => Pattern::Longformer { window: u(0), global: u(1) },
        "bigbird" => Pattern::BigBird { window: u(0), global: u(1), random: u(2), seed: v(3) },
        "strided" => Pattern::Strided { stride: u(0) },
        "fixed" => Pattern::Fixed { stride: u(0), c: u(1) },
        _ => Pattern::Dilated { window: u(0), dilation: u(1) },
    })
}

impl Pattern {
    /// The library mask; `block_size` is bigbird's random-block edge.
    pub fn mask(self, block_size: usize) -> Mask {
        match self {
            Pattern::Longformer { window, global } => Mask::longformer(window, global),
            Pattern::BigBird { window, global, random, seed } => {
                Mask::bigbird(window, global, random, block_size, seed)
            }
            Pattern::Strided { stride } => Mask::Strided { stride },
            Pattern::Fixed { stride, c } => Mask::Fixed { stride, c },
            Pattern::Dilated { window, dilation } => Mask::Dilated { window, dilation },
        }
    }
}

/// AND the masks of the command line into `attn`, reading the mask files with the sizes of `p`
/// (already validated without them). Sets the lowering block size from `--block-size`.
pub fn apply(mut attn: Attention, args: &RunArgs, p: &Problem) -> Result<Attention, CliError> {
    if let Some(Window { left, right }) = args.window {
        attn = attn.mask(Mask::window(left, right));
    }
    if let Some(path) = &args.doc_ids {
        attn = attn.mask(documents(path, p)?);
    }
    if let Some(prefix) = args.prefix {
        if attn.causal.is_some() {
            log::warn!("--prefix with --causal: the causal mask hides the prefix's later keys");
        }
        attn = attn.mask(Mask::Prefix(prefix));
    }
    if let Some(path) = &args.mask {
        let (data, batch, heads) = bool_mask(path, p, None)?;
        attn = attn.mask(Mask::Dense { data, batch, heads });
    }
    if let Some(path) = &args.block_mask {
        // clap requires --block-size with --block-mask.
        let size = args.block_size.unwrap_or(DEFAULT_BLOCK_SIZE);
        let (data, batch, heads) = bool_mask(path, p, Some(size))?;
        attn = attn.mask(Mask::Blocks { data, batch, heads, size });
    }
    if let Some(pattern) = args.pattern {
        attn = attn.mask(pattern.mask(args.block_size.unwrap_or(DEFAULT_BLOCK_SIZE)));
    }
    if let Some(size) = args.block_size {
        attn = attn.block_size(size);
    }
    if let Some(k) = args.topk {
        let block_size = args.topk_block.unwrap_or(DEFAULT_BLOCK_SIZE);
        attn.topk = Some(wgpu_attention::mask::TopK { k, block_size, sink: args.topk_sink });
    }
    Ok(attn)
}

/// `--doc-ids`: int32/int64 `[B, N]` with N = Nq = Nk.
fn documents(path: &Path, p: &Problem) -> Result<Mask, CliError> {
    if p.q_len != p.kv_len {
        return Err(CliError::Usage(format!(
            "--doc-ids {}: one id per token needs Nq = Nk, but Q has Nq = {} and K has Nk = {}",
            path.display(),
            p.q_len,
            p.kv_len
        )));
    }
    let ids = npy::read_i32(path, 2)?;
    if ids.shape != [p.batch, p.q_len] {
        return Err(NpyError::Shape {
            path: path.into(),
            shape: ids.shape,
            expected: format!("[B, N] = [{}, {}]", p.batch, p.q_len),
        }
        .into());
    }
    Ok(Mask::documents(ids.data))
}

/// `--mask` (`block: None`, `[B|1, Hq|1, Nq, Nk]`) or `--block-mask` (`block: Some(S)`,
/// `[B|1, Hq|1, ceil(Nq/S), ceil(Nk/S)]`): the data and its batch and head counts.
fn bool_mask(
    path: &Path,
    p: &Problem,
    block: Option<usize>,
) -> Result<(Arc<Vec<bool>>, usize, usize), CliError> {
    let m = npy::read_bool(path, 4)?;
    let (rows, cols, names) = match block {
        None => (p.q_len, p.kv_len, "Nq, Nk".to_string()),
        Some(s) => (p.q_len.div_ceil(s), p.kv_len.div_ceil(s), format!("ceil(Nq/{s}), ceil(Nk/{s})")),
    };
    let d = &m.shape;
    let fits = |n: usize, want: usize| n == 1 || n == want;
    if !(fits(d[0], p.batch) && fits(d[1], p.q_heads) && d[2] == rows && d[3] == cols) {
        let alt = |n: usize| if n == 1 { "1".to_string() } else { format!("1 or {n}") };
        return Err(NpyError::Shape {
            path: path.into(),
            shape: m.shape,
            expected: format!(
                "[B|1, Hq|1, {names}] = [{}, {}, {rows}, {cols}]",
                alt(p.batch),
                alt(p.q_heads)
            ),
        }
        .into());
    }
    Ok((Arc::new(m.data), d[0], d[1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        assert_eq!(parse_window("16,0"), Ok(Window { left: 16, right: 0 }));
        assert_eq!(parse_window(" 3 , 4 "), Ok(Window { left: 3, right: 4 }));
        assert!(parse_window("16").is_err());
        assert!(parse_window("1,2,3").is_err());
        assert!(parse_window("-1,2").unwrap_err().contains("`-1`"));
        assert_eq!(parse_window("2147483647,0"), Ok(Window { left: 2147483647, right: 0 }));
        assert!(parse_window("0,2147483648").unwrap_err().contains("exceeds 2147483647"));
    }

    #[test]
    fn block_sizes() {
        assert_eq!(parse_block_size("32"), Ok(32));
        assert_eq!(parse_block_size("128"), Ok(128));
        assert!(parse_block_size("48").is_err());
        assert!(parse_block_size("0").is_err());
    }

    #[test]
    fn patterns() {
        assert_eq!(
            parse_pattern("longformer:window=8,global=2"),
            Ok(Pattern::Longformer { window: 8, global: 2 })
        );
        assert_eq!(
            parse_pattern("bigbird:seed=7,window=3,global=1,random=2"),
            Ok(Pattern::BigBird { window: 3, global: 1, random: 2, seed: 7 })
        );
        assert_eq!(parse_pattern("strided:stride=5"), Ok(Pattern::Strided { stride: 5 }));
        assert_eq!(parse_pattern("Fixed: stride=8, c=2"), Ok(Pattern::Fixed { stride: 8, c: 2 }));
        assert_eq!(
            parse_pattern("dilated:window=4,dilation=3"),
            Ok(Pattern::Dilated { window: 4, dilation: 3 })
        );
        let err = |s: &str| parse_pattern(s).unwrap_err();
        assert!(err("sparse:stride=2").contains("unknown pattern `sparse`"));
        assert!(err("strided").contains("needs stride"));
        assert!(err("strided:").contains("needs stride"));
        assert!(err("fixed:stride=8").contains("needs c"));
        assert!(err("strided:stride=2,width=3").contains("no key `width`"));
        assert!(err("strided:stride=x").contains("stride: `x` is not a non-negative integer"));
        assert!(err("dilated:window=4294967296,dilation=2").contains("window: `4294967296` exceeds"));
        assert!(err("bigbird:window=1,global=1,random=1,seed=x").contains("seed: `x` is not"));
        assert_eq!(
            parse_pattern("bigbird:window=1,global=0,random=1,seed=18446744073709551615"),
            Ok(Pattern::BigBird { window: 1, global: 0, random: 1, seed: u64::MAX })
        );
        assert!(err("strided:stride=-2").contains("`-2`"));
        assert!(err("strided:stride").contains("not KEY=VALUE"));
        assert!(err("strided:stride=2,stride=3").contains("twice"));
    }
}
