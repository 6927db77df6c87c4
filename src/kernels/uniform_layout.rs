//! Every kernel's `#[repr(C)]` uniform struct against the WGSL struct its shader binds as the
//! uniform: the WGSL, specialised by the template step as the kernel does, is parsed with naga,
//! and each member's name, offset, size and scalar type, and the struct's size, must match the
//! Rust field of the same name (a Rust array `pad: [u32; 3]` may stand for WGSL members `pad0`,
//! `pad1`, `pad2`). bytemuck copies the Rust bytes as they are, so a mismatch would hand the
//! shader wrong values without any error.

use naga::{AddressSpace, Scalar, ScalarKind, TypeInner};

use super::flash::{ForwardParams, TileConfig, Variant};
use super::decode::{DecodeParams, DecodeVariant};
use super::merge::{MergeParams, MergeStatesParams};
use super::repack::RepackParams;
use super::naive::{self, NaiveParams};
use super::topk::TopKParams;
use crate::mask::TOPK_MAX;
use crate::shader::{self, Params};

/// A Rust field: name, offset, size, type name.
type Field = (&'static str, usize, usize, &'static str);

/// The fields of a Rust struct value `$t`, in declaration order, and its size. The struct pattern
/// names every field, so the list cannot miss one (it does not compile then).
macro_rules! rust_fields {
    ($t:ident { $($f:ident),* $(,)? }) => {{
        let value = <$t as bytemuck::Zeroable>::zeroed();
        let $t { $($f: _),* } = value;
        let fields: Vec<Field> = vec![$((
            stringify!($f),
            std::mem::offset_of!($t, $f),
            std::mem::size_of_val(&value.$f),
            std::any::type_name_of_val(&value.$f),
        )),*];
        (std::mem::size_of::<$t>(), fields)
    }};
}

/// The WGSL file `name` of the crate specialised with `params` (as a kernel does).
fn specialised(name: &str, params: &Params) -> String {
    let (_, source) = shader::FILES.iter().find(|(n, _)| *n == name).expect("a crate WGSL file");
    shader::specialise(name, source, params).unwrap_or_else(|e| panic!("{e}"))
}

/// `u32` / `f32` / `i32`: the scalar kind of a Rust field's type (`[u32; 4]` -> `u32`).
fn rust_scalar(type_name: &str) -> &str {
    let t = type_name.trim_start_matches('[');
    t.split(';').next().unwrap_or(t).trim_end_matches(']').trim()
}

fn wgsl_scalar(s: Scalar) -> &'static str {
    match (s.kind, s.width) {
        (ScalarKind::Uint, 4) => "u32",
        (ScalarKind::Sint, 4) => "i32",
        (ScalarKind::Float, 4) => "f32",
        _ => "(not a 32-bit scalar)",
    }
}

/// Compare the struct of the one `var<uniform>` of `wgsl` (named `what` in failures) with the
/// Rust struct of `size` bytes and `fields`.
fn check(what: &str, wgsl: &str, (size, fields): (usize, Vec<Field>)) {
    let module = naga::front::wgsl::parse_str(wgsl).unwrap_or_else(|e| panic!("{what}: {e}"));
    let uniforms: Vec<_> =
        module.global_variables.iter().filter(|(_, g)| g.space == AddressSpace::Uniform).collect();
    assert_eq!(uniforms.len(), 1, "{what}: expected one var<uniform>");
    let ty = &module.types[uniforms[0].1.ty];
    let struct_name = ty.name.clone().unwrap_or_default();
    let TypeInner::Struct { members, span } = &ty.inner else {
        panic!("{what}: the uniform is not a struct");
    };
    let gctx = module.to_ctx();
    // (name, offset, size, scalar) of each WGSL member
    let wgsl: Vec<(String, usize, usize, &str)> = members
        .iter()
        .map(|m| {
            let inner = &module.types[m.ty].inner;
            let scalar = match *inner {
                TypeInner::Scalar(s) | TypeInner::Vector { scalar: s, .. } => wgsl_scalar(s),
                _ => "(not a scalar or vector)",
            };
            (m.name.clone().unwrap_or_default(), m.offset as usize, inner.size(gctx) as usize, scalar)
        })
        .collect();
    let at = |name: &str| wgsl.iter().find(|m| m.0 == name);

    let mut matched = Vec::new();
    for &(name, offset, bytes, type_name) in &fields {
        let rust_scalar = rust_scalar(type_name);
        // the member of the same name, or (a Rust array) members name0, name1, …
        let parts: Vec<_> = match at(name) {
            Some(m) => vec![(m, offset, bytes)],
            None => {
                let n = (0..).take_while(|k| at(&format!("{name}{k}")).is_some()).count();
                assert!(
                    n > 0,
                    "{what}: Rust field `{name}` has no member `{name}` (or `{name}0`, …) in WGSL `{struct_name}`"
                );
                (0..n)
                    .map(|k| (at(&format!("{name}{k}")).unwrap(), offset + k * bytes / n, bytes / n))
                    .collect()
            }
        };
        let covered: usize = parts.iter().map(|p| p.0 .2).sum();
        assert_eq!(covered, bytes, "{what}: field `{name}`: {bytes} bytes in Rust, {covered} in WGSL");
        for (m, offset, bytes) in parts {
            assert_eq!(
                (m.1, m.2),
                (offset, bytes),
                "{what}: field `{name}` (WGSL `{}`): (offset, size) in WGSL, then in Rust",
                m.0
            );
            assert_eq!(
                m.3, rust_scalar,
                "{what}: field `{name}` (WGSL `{}`): scalar type in WGSL, then in Rust",
                m.0
            );
            matched.push(m.0.clone());
        }
    }
    for m in &wgsl {
        assert!(matched.contains(&m.0), "{what}: WGSL member `{}` of `{struct_name}` has no Rust field", m.0);
    }
    assert_eq!(*span as usize, size, "{what}: size of `{struct_name}` in WGSL, then of the Rust struct");
}

fn forward_fields() -> (usize, Vec<Field>) {
    rust_fields!(ForwardParams {
        q_len,
        kv_len,
        head_dim,
        group,
        rows_per_head,
        batch0,
        batches,
        kv_head0,
        kv_heads,
        q_tile0,
        q_tiles,
        n_splits,
        tiles_per_split,
        grid_x,
        causal,
        alibi_offset,
        scale,
        softcap,
        q_base,
        k_base,
        v_base,
        o_base,
        lse_base,
        wg_offset,
        use_table,
        block_size,
        table_batch,
        table_heads,
        q_blocks,
        lists_offset,
        entries_offset,
        bits_offset,
        split0,
        pad,
        q_stride,
        k_stride,
        v_stride,
        o_stride,
        lse_stride,
    })
}

#[test]
fn forward_params_match_attention_common() {
    let variant = Variant { vec4: true, softcap: true, alibi: true, bitmaps: true, ..Variant::default() };
    let tiled = TileConfig::choose(64, &wgpu::Limits::default()).unwrap();
    let register = TileConfig::register(64, Some(8), None, false);
    for cfg in [tiled, register] {
        let wgsl = cfg.specialised_source(variant).unwrap();
        check(&format!("ForwardParams ({:?})", cfg.family), &wgsl, forward_fields());
    }
}

#[test]
fn naive_params_match_naive_wgsl() {
    let fields = rust_fields!(NaiveParams {
        rows,
        q_len,
        kv_len,
        head_dim,
        q_heads,
        group,
        causal,
        use_alibi,
        alibi_offset,
        use_softcap,
        scale,
        softcap,
        grid_x,
        wg_offset,
        total,
        key0,
        key_count,
        accumulate,
        q_tiles,
        k_tiles,
        d_tiles,
        _pad,
        q_stride,
        k_stride,
        v_stride,
        o_stride,
    });
    check("NaiveParams", &naive::specialised_source(64).unwrap(), fields);
}

#[test]
fn merge_params_match_merge_wgsl() {
    let fields = rust_fields!(MergeParams {
        rows,
        row0,
        rows_per_group,
        head_dim,
        n_splits,
        grid_x,
        group,
        kv_heads,
        q_len,
        rows_per_head,
        batch0,
        kv_head0,
        wg_offset,
        _pad,
        o_stride,
        o_base,
        lse_base,
        lse_stride_b,
        lse_stride_h,
    });
    check("MergeParams", &specialised("merge.wgsl", &Params::from([("O_TYPE", 0)])), fields);
}

#[test]
fn topk_params_match_topk_wgsl() {
    let fields = rust_fields!(TopKParams {
        batch,
        q_heads,
        kv_heads,
        group,
        q_len,
        kv_len,
        head_dim,
        block,
        q_blocks,
        k_blocks,
        k,
        sink,
        causal,
        scale,
        grid_x,
        lists_offset,
        entries_offset,
        pooled_k_offset,
        _pad,
        q_stride,
        k_stride,
    });
    let wgsl = specialised("topk.wgsl", &Params::from([("K_MAX", TOPK_MAX as u32), ("QKV_TYPE", 0)]));
    check("TopKParams", &wgsl, fields);
}

#[test]
fn repack_params_match_repack_wgsl() {
    let fields = rust_fields!(RepackParams {
        batch,
        heads,
        seq,
        head_dim,
        packed_dim,
        grid_x,
        wg_offset,
        view_base,
        stride,
    });
    check("RepackParams", &specialised("repack.wgsl", &Params::from([("HALF", 0)])), fields);
}

#[test]
fn decode_params_match_decode_wgsl() {
    let variant = DecodeVariant { lanes: 0, rows: 4, d_pad: 64, vec4: true, softcap: true, alibi: true, qkv: crate::DType::F32 };
    let fields = rust_fields!(DecodeParams {
        q_len, head_dim, group, rows_per_group, batch0, batches, kv_head0, kv_heads, row_chunks,
        part_groups, keys_per_part, part0, parts, n_parts, part_batch0, part_kv_heads, grid_x,
        wg_offset, page_size, table_stride, table_offset, _pad, resume, key_lo, key_hi,
        causal, window_left, window_right, alibi_offset, scale, softcap, q_base, k_base, v_base,
        list_offset, q_stride, k_stride, v_stride,
    });
    check("DecodeParams", &variant.specialised_source().unwrap(), fields.clone());
    let split_d = DecodeVariant { lanes: 8, ..variant };
    check("DecodeParams", &split_d.specialised_source().unwrap(), fields);
}

#[test]
fn merge_states_params_match_merge_states_wgsl() {
    let fields = rust_fields!(MergeStatesParams {
        rows, head_dim, heads, seq, batch0, grid_x, wg_offset, o1_base, o2_base, o_base, lse1_base,
        lse2_base, lse_base, _pad, o1_stride, o2_stride, o_stride,
    });
    check("MergeStatesParams", &specialised("merge_states.wgsl", &Params::from([("O_TYPE", 1)])), fields);
}

#[test]
fn append_params_match_paged_append_wgsl() {
    use crate::paged::AppendParams;
    let fields = rust_fields!(AppendParams {
        elements, heads, tokens, head_dim, batch0, page_size, table_stride, lens_offset, page_lo,
        page_hi, grid_x, wg_offset, src_base, head0, token0, heads_here, tokens_here, _pad, src_stride,
    });
    check("AppendParams", &specialised("paged_append.wgsl", &Params::from([("TYPE", 2)])), fields);
}

/// The check itself fails, naming the field, where the two sides disagree.
#[test]
fn a_mismatch_names_the_field() {
    let wgsl = "struct P { a: u32, b: f32, pad0: u32, pad1: u32, s: vec4<u32> }\n\
                @group(0) @binding(0) var<uniform> params: P;\n";
    let ok =
        || vec![("a", 0, 4, "u32"), ("b", 4, 4, "f32"), ("pad", 8, 8, "[u32; 2]"), ("s", 16, 16, "[u32; 4]")];
    check("P", wgsl, (32, ok()));
    let fails = |fields: Vec<Field>, size: usize| {
        std::panic::catch_unwind(|| check("P", wgsl, (size, fields)))
            .err()
            .map(|e| e.downcast_ref::<String>().cloned().unwrap_or_default())
    };
    // a and b swapped in Rust
    let mut swapped = ok();
    swapped[0].1 = 4;
    swapped[1].1 = 0;
    assert!(fails(swapped, 32).is_some_and(|m| m.contains("field `a`")));
    // b an integer in Rust
    let mut retyped = ok();
    retyped[1].3 = "u32";
    assert!(fails(retyped, 32).is_some_and(|m| m.contains("field `b`")));
    // a field missing in WGSL, a member missing in Rust, the struct sizes
    let mut renamed = ok();
    renamed[0].0 = "x";
    assert!(fails(renamed, 32).is_some_and(|m| m.contains("`x`")));
    assert!(fails(ok()[1..].to_vec(), 32).is_some_and(|m| m.contains("`a`")));
    assert!(fails(ok(), 48).is_some_and(|m| m.contains("size")));
}
