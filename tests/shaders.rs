//! Every kernel `.wgsl` file validates with naga as written (includes resolved; shared code as part
//! of the kernels that include it), every file is known to the include table, and every specialisation the planner can choose (head dims 1..=256 under the
//! lavapipe and WebGPU-default limits) validates too.

use wgpu_attention::kernels::flash::{TileConfig, Variant};
use wgpu_attention::shader;

#[test]
fn every_wgsl_file_validates_as_written() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wgsl") {
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                shader::FILES.iter().any(|(n, t)| *n == name && *t == text),
                "{name} is missing from shader::FILES"
            );
            if !text.contains("@compute") {
                // shared code (attention_common.wgsl) takes its @params from the kernels that
                // include it, and is validated as part of each
                let line = format!("// @include {name}");
                assert!(
                    shader::FILES.iter().any(|(_, t)| t.lines().any(|l| l.trim() == line)),
                    "{name} has no entry point and no kernel includes it"
                );
                continue;
            }
            // as written: with its own @param values (which also resolves includes, @if, @unroll)
            let defaults = shader::defaults(&shader::resolve_includes(&name, &text).unwrap());
            shader::specialise(&name, &text, &defaults).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 2, "expected the kernel files in {}", dir.display());
}

#[test]
fn every_specialisation_validates() {
    let lavapipe_like = wgpu::Limits {
        max_compute_workgroup_storage_size: 32 << 10,
        max_compute_invocations_per_workgroup: 1024,
        max_compute_workgroup_size_x: 1024,
        ..wgpu::Limits::default()
    };
    let mut seen = std::collections::HashSet::new();
    // (family, compiled head dim) pairs whose variants with every term have been validated
    let mut terms_seen = std::collections::HashSet::new();
    for limits in [wgpu::Limits::default(), lavapipe_like] {
        for d in 1..=256 {
            let cfg = TileConfig::choose(d, &limits).unwrap();
            assert!(cfg.workgroup_bytes() <= limits.max_compute_workgroup_storage_size);
            if seen.insert(cfg) {
                validate(cfg, terms_seen.insert((cfg.family, cfg.d_pad)));
            }
        }
    }
    assert!(seen.len() > 8);
    // the register family for every subgroup size from 4 to 128, and without subgroups
    for d in [1, 3, 8, 40, 59, 64, 96, 111, 128, 160, 255, 256] {
        for sg in [Some(4), Some(8), Some(16), Some(32), Some(64), Some(128), None] {
            for (table, wide) in
                [None, Some(32), Some(64), Some(128)].into_iter().flat_map(|t| [(t, false), (t, true)])
            {
                let cfg = TileConfig::register(d, sg, table, wide);
                assert!(cfg.bk <= sg.unwrap_or(8), "{cfg:?}: key block wider than the subgroup");
                assert!(
                    table.is_none_or(|s| s % cfg.bq as usize == 0),
                    "{cfg:?}: query tile must divide the block size"
                );
                if seen.insert(cfg) {
                    validate(cfg, terms_seen.insert((cfg.family, cfg.d_pad)));
                }
                // FirstCall::Quick's stand-in: smaller, and as valid for this adapter and table
                if let Some(quick) = cfg.quick() {
                    assert!(quick.tpr < cfg.tpr || quick.bk < cfg.bk, "{quick:?} is no smaller than {cfg:?}");
                    assert!(
                        quick.bk <= sg.unwrap_or(8)
                            && cfg.bk.is_multiple_of(quick.bk)
                            && quick.bk.is_multiple_of(quick.kp)
                    );
                    assert!(table.is_none_or(|s| s % quick.bq as usize == 0 && s % quick.bk as usize == 0));
                    if seen.insert(quick) {
                        validate(quick, false);
                    }
                }
            }
        }
    }
}

/// `cfg` in the variants its calls compile: the aligned call of its compiled head dim (vec4
/// accesses, no optional term), and with `terms` (the first shape of its family and compiled head
/// dim) every optional term at once (softcap, ALiBi, bitmaps) with vec4 accesses (what
/// repacked calls run) and with scalar accesses (adapters with a binding alignment under 16
/// bytes). The terms' `@if` blocks depend neither on each other nor on the tile shape, so every
/// template line is validated without every combination of every shape (`cargo test --test
/// shaders` on a 2-core Xeon: 396 s with more combinations, 154 s so).
fn validate(cfg: TileConfig, terms: bool) {
    let mut variants = vec![Variant { vec4: true, ..Variant::default() }];
    if terms {
        variants.push(Variant {
            vec4: true,
            softcap: true,
            alibi: true,
            bitmaps: true,
            ..Variant::default()
        });
        variants.push(Variant {
            vec4: false,
            softcap: true,
            alibi: true,
            bitmaps: true,
            ..Variant::default()
        });
    }
    for variant in variants {
        cfg.specialised_source(variant).unwrap_or_else(|e| panic!("{cfg:?} {variant:?}: {e}"));
    }
}

/// The 16-bit forms of every kernel: the fused families with Q, K, V in f16 and bf16 and O in
/// either or f32, vec4 and scalar accesses, every optional term; the LSE merge, top-k selection and
/// naive baseline with every element type. (The head-dim sweep above is f32: the dtype `@if`s do
/// not depend on the tile shape.)
#[test]
fn sixteen_bit_specialisations_validate() {
    use wgpu_attention::DType;
    let configs = [
        TileConfig::choose(64, &wgpu::Limits::default()).unwrap(),
        TileConfig::register(59, Some(8), None, false),
        TileConfig::register(40, None, Some(64), true),
    ];
    for cfg in configs {
        for qkv in [DType::F16, DType::BF16] {
            for o in [qkv, DType::F32] {
                for vec4 in [true, false] {
                    let variant = Variant { vec4, softcap: true, alibi: true, bitmaps: true, qkv, o };
                    cfg.specialised_source(variant).unwrap_or_else(|e| panic!("{cfg:?} {variant:?}: {e}"));
                }
            }
        }
    }
    let file = |name: &str| shader::FILES.iter().find(|(n, _)| *n == name).unwrap().1;
    for (name, param) in [
        ("merge.wgsl", "O_TYPE"),
        ("merge_states.wgsl", "O_TYPE"),
        ("paged_append.wgsl", "TYPE"),
        ("topk.wgsl", "QKV_TYPE"),
        ("naive.wgsl", "QKV_TYPE"),
        ("repack.wgsl", "HALF"),
    ] {
        let text = file(name);
        for code in if param == "HALF" { [1, 1] } else { [1, 2] } {
            let mut params = shader::defaults(&shader::resolve_includes(name, text).unwrap());
            params.insert(param, code);
            if name == "naive.wgsl" {
                params.insert("O_TYPE", 3 - code);
            }
            shader::specialise(name, text, &params).unwrap_or_else(|e| panic!("{name} {param}={code}: {e}"));
        }
    }
}

/// Every decode specialisation the launch can choose validates: rows per invocation 1, 2, 4,
/// compiled head dims 32..256, vec4 and scalar accesses, every optional term, every dtype.
#[test]
fn decode_specialisations_validate() {
    use wgpu_attention::kernels::decode::DecodeVariant;
    use wgpu_attention::DType;
    for rows in [1, 2, 4] {
        for d_pad in (32..=256).step_by(32) {
            for qkv in [DType::F32, DType::F16, DType::BF16] {
                for (vec4, softcap, alibi) in [(true, false, false), (false, true, true), (true, true, false)]
                {
                    let v = DecodeVariant { lanes: 0, rows, d_pad, vec4, softcap, alibi, qkv };
                    v.specialised_source().unwrap_or_else(|e| panic!("{v:?}: {e}"));
                }
            }
        }
    }
}

/// Every split-D decode specialisation the launch can choose validates: 1 to 32 lanes (the
/// adapter's smallest subgroup, at most 32), rows per workgroup 1 to 16, compiled head dims
/// 32..256; every optional term and dtype once per lane count.
#[test]
fn split_d_decode_specialisations_validate() {
    use wgpu_attention::kernels::decode::DecodeVariant;
    use wgpu_attention::DType;
    let bare = |lanes, rows, d_pad| DecodeVariant {
        lanes,
        rows,
        d_pad,
        vec4: true,
        softcap: false,
        alibi: false,
        qkv: DType::F32,
    };
    for lanes in [1, 2, 4, 8, 16, 32] {
        for rows in [1, 2, 4, 8, 16] {
            for d_pad in (32..=256).step_by(32) {
                let v = bare(lanes, rows, d_pad);
                v.specialised_source().unwrap_or_else(|e| panic!("{v:?}: {e}"));
            }
        }
        for qkv in [DType::F32, DType::F16, DType::BF16] {
            for vec4 in [true, false] {
                let v = DecodeVariant { vec4, softcap: true, alibi: true, qkv, ..bare(lanes, 4, 128) };
                v.specialised_source().unwrap_or_else(|e| panic!("{v:?}: {e}"));
            }
        }
    }
}

/// The GEMM kernel of the attention layer (shaders/gemm.wgsl; not yet launched by the library,
/// issue 17) validates over its tile shapes, with and without subgroups, vec4 and scalar loads,
/// the bias, and every input and output dtype.
#[test]
fn gemm_specialisations_validate() {
    const SOURCE: &str = include_str!("../shaders/gemm.wgsl");
    let mut n = 0;
    for (xr, sl, c, ku, wg) in
        [(1, 8, 2, 4, 8), (2, 16, 4, 2, 16), (1, 4, 1, 1, 64), (4, 1, 2, 1, 8), (1, 32, 2, 2, 64)]
    {
        for subgroups in [0, 1] {
            for vec4 in [0, 1] {
                for (in_type, out_type, bias) in [(0, 0, 0), (0, 0, 1), (1, 1, 1), (2, 0, 1), (2, 2, 0)] {
                    let params = shader::Params::from([
                        ("XR", xr),
                        ("SL", sl),
                        ("C", c),
                        ("KU", ku),
                        ("WG", wg),
                        ("MB", xr * sl),
                        ("SUBGROUPS", subgroups),
                        ("VEC4", vec4),
                        ("BIAS", bias),
                        ("IN_TYPE", in_type),
                        ("OUT_TYPE", out_type),
                    ]);
                    shader::specialise("gemm.wgsl", SOURCE, &params)
                        .unwrap_or_else(|e| panic!("{params:?}: {e}"));
                    n += 1;
                }
            }
        }
    }
    assert_eq!(n, 100);
    // MB is derived (XR·SL): a specialisation that disagrees is refused, not miscomputed
    let wrong = shader::Params::from([("XR", 2), ("SL", 8), ("MB", 8)]);
    assert!(shader::specialise("gemm.wgsl", SOURCE, &wrong).is_err());
}
