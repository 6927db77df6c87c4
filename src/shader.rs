//! The one small templating step WGSL needs. A kernel's `.wgsl` file is valid WGSL on its own (it is
//! validated as written by the test suite); specialising it does two textual things:
//!
//! 1. `const NAME: u32 = 16u; // @param ...` lines get the value chosen for this pipeline. WGSL's
//!    `override` cannot size private arrays, and the unroller needs constant bounds, so these stay
//!    `const`.
//! 2. A loop written `for (var i = 0u; i < BOUND; i++) {` on the line after a `// @unroll` comment is
//!    replaced by BOUND copies of its body, each in its own block opening with `const i = <k>u;`.
//! 3. A line `// @include NAME` is replaced by the crate's WGSL file NAME (shared code of a family),
//!    whose own `@include`s are resolved in turn; each file is included once (later lines naming
//!    it again are dropped), so shared files may include shared files.
//! 4. Lines between `// @if NAME` and `// @else` / `// @endif` stay when the @param NAME is non-zero
//!    (e.g. subgroup builtins, which adapters without subgroups must never see); `// @if NAME == 2`
//!    tests for one value (e.g. a tensor's element type).
//!
//! A file is checked as written by specialising it with its own `@param` values ([`defaults`]).
//!    Lavapipe (llvmpipe) stops every invocation after 65,535 loop iterations in total, silently, so
//!    the kernels keep run-time loops to the one over key tiles and unroll the rest.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// Parameters of a specialisation: `@param` name -> value.
pub type Params = BTreeMap<&'static str, u32>;

/// 64-bit FNV-1a: a hash that is the same in every process and Rust release (std's is not
/// promised to be).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Every WGSL file of the crate, by name, for `// @include NAME` lines.
pub const FILES: &[(&str, &str)] = &[
    ("attention_common.wgsl", include_str!("../shaders/attention_common.wgsl")),
    ("decode.wgsl", include_str!("../shaders/decode.wgsl")),
    ("decode_common.wgsl", include_str!("../shaders/decode_common.wgsl")),
    ("decode_split_d.wgsl", include_str!("../shaders/decode_split_d.wgsl")),
    ("flash_forward.wgsl", include_str!("../shaders/flash_forward.wgsl")),
    ("flash_register.wgsl", include_str!("../shaders/flash_register.wgsl")),
    ("gemm.wgsl", include_str!("../shaders/gemm.wgsl")),
    ("half.wgsl", include_str!("../shaders/half.wgsl")),
    ("merge.wgsl", include_str!("../shaders/merge.wgsl")),
    ("merge_states.wgsl", include_str!("../shaders/merge_states.wgsl")),
    ("naive.wgsl", include_str!("../shaders/naive.wgsl")),
    ("paged_append.wgsl", include_str!("../shaders/paged_append.wgsl")),
    ("qkv_loads.wgsl", include_str!("../shaders/qkv_loads.wgsl")),
    ("repack.wgsl", include_str!("../shaders/repack.wgsl")),
    ("rope.wgsl", include_str!("../shaders/rope.wgsl")),
    ("score_terms.wgsl", include_str!("../shaders/score_terms.wgsl")),
    ("topk.wgsl", include_str!("../shaders/topk.wgsl")),
];

/// `source` with every `// @include NAME` line replaced by the file NAME, its own includes
/// resolved in turn; a file is included once (a later `@include` of it is dropped).
pub fn resolve_includes(name: &str, source: &str) -> Result<String> {
    let mut out = String::with_capacity(source.len());
    include_into(name, source, &mut Vec::new(), &mut out)?;
    Ok(out)
}

/// [`resolve_includes`] appending to `out`; `seen`: the files included so far.
fn include_into(name: &str, source: &str, seen: &mut Vec<&'static str>, out: &mut String) -> Result<()> {
    for line in source.lines() {
        match line.trim().strip_prefix("// @include ") {
            Some(file) => {
                let (file, text) = FILES.iter().find(|(n, _)| *n == file.trim()).ok_or_else(|| {
                    Error::Shader { name: name.to_string(), message: format!("unknown include `{file}`") }
                })?;
                if !seen.contains(file) {
                    seen.push(file);
                    include_into(name, text, seen, out)?;
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    Ok(())
}

/// Specialise `source` (named `name` in errors) with `params`, unroll, and validate with naga.
pub fn specialise(name: &str, source: &str, params: &Params) -> Result<String> {
    let text = expand(name, source, params)?;
    validate(name, &text)?;
    Ok(text)
}

/// A specialised shader, parsed and validated once: its WGSL, its naga module and the bind
/// group layout entries of one entry point.
pub struct Specialised {
    /// The WGSL text.
    pub text: String,
    /// The parsed, validated module (what native pipelines are created from: wgpu then skips
    /// parsing the WGSL again, which for a large unrolled kernel takes seconds).
    pub module: naga::Module,
    /// Every buffer binding of group 0 the entry point uses, uniform or storage, read only
    /// unless the shader writes it.
    pub entries: Vec<wgpu::BindGroupLayoutEntry>,
}

/// [`specialise`] for a pipeline of entry point `entry`, from one naga parse and validation.
pub fn specialise_for(name: &str, source: &str, params: &Params, entry: &str) -> Result<Specialised> {
    specialise_with(name, source, params, entry, |text| parse_valid(name, text))
}

/// [`specialise_for`] with the WGSL text turned into a validated module by `parse` (which may
/// take it from a cache: [`crate::Context`] does).
pub(crate) fn specialise_with(
    name: &str,
    source: &str,
    params: &Params,
    entry: &str,
    parse: impl FnOnce(&str) -> Result<(naga::Module, naga::valid::ModuleInfo)>,
) -> Result<Specialised> {
    let text = expand(name, source, params)?;
    let (module, info) = parse(&text)?;
    let entries = bindings(name, &module, &info, entry)?;
    Ok(Specialised { text, module, entries })
}

/// The template steps (includes, params, conditionals, unrolling), without validation.
fn expand(name: &str, source: &str, params: &Params) -> Result<String> {
    let err = |message: String| Error::Shader { name: name.to_string(), message };
    let source = resolve_includes(name, source)?;
    let mut lines: Vec<String> = Vec::new();
    let mut seen = 0;
    for line in source.lines() {
        match param_line(line) {
            Some((pname, rest)) => {
                let value =
                    params.get(pname).ok_or_else(|| err(format!("no value given for @param {pname}")))?;
                seen += 1;
                lines.push(format!("const {pname}: u32 = {value}u; // {rest}"));
            }
            None => lines.push(line.to_string()),
        }
    }
    if seen != params.len() {
        return Err(err(format!("{} params given but the shader declares {seen}", params.len())));
    }
    let lines = conditionals(&lines, params).map_err(err)?;
    let out = unroll(&lines, params).map_err(err)?;
    Ok(out.join("\n"))
}

/// The `@param` values written in `source` itself (its defaults).
pub fn defaults(source: &str) -> Params {
    let mut params = Params::new();
    for line in source.lines() {
        if let Some((name, _)) = param_line(line) {
            let value = line.split('=').nth(1).and_then(|v| v.split(';').next()).map(str::trim);
            if let Some(v) = value.and_then(|v| v.trim_end_matches('u').parse().ok()) {
                // names live as long as the program: leak the few parameter names once
                params.insert(&*Box::leak(name.to_string().into_boxed_str()), v);
            }
        }
    }
    params
}

/// Keep the lines between `// @if NAME` and `// @else` / `// @endif` when the @param NAME is
/// non-zero, the lines after `// @else` otherwise; conditionals nest.
fn conditionals(lines: &[String], params: &Params) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(lines.len());
    // one entry per open `@if`: (its condition, whether its lines are kept now)
    let mut open: Vec<(bool, bool)> = Vec::new();
    let outer = |open: &[(bool, bool)]| open.last().is_none_or(|&(_, keep)| keep);
    for line in lines {
        let t = line.trim();
        if let Some(cond) = t.strip_prefix("// @if ") {
            // `NAME` (non-zero) or `NAME == VALUE`
            let (name, want) = match cond.split_once("==") {
                Some((n, v)) => {
                    let v = v.trim().trim_end_matches('u');
                    (n.trim(), Some(v.parse::<u32>().map_err(|_| format!("`// @if {cond}`: not a number"))?))
                }
                None => (cond.trim(), None),
            };
            let v = *params.get(name).ok_or_else(|| format!("`// @if {cond}`: no such @param"))?;
            let holds = want.map_or(v != 0, |w| v == w);
            let keep = outer(&open) && holds;
            open.push((holds, keep));
        } else if t == "// @else" {
            let (cond, _) = open.pop().ok_or("`// @else` without `// @if`")?;
            let keep = outer(&open) && !cond;
            open.push((!cond, keep));
        } else if t == "// @endif" {
            open.pop().ok_or("`// @endif` without `// @if`")?;
        } else if outer(&open) {
            out.push(line.clone());
        }
    }
    if !open.is_empty() {
        return Err("`// @if` without `// @endif`".into());
    }
    Ok(out)
}

/// `const NAME: u32 = ...; // @param rest` -> (NAME, "@param rest").
fn param_line(line: &str) -> Option<(&str, &str)> {
    let (code, comment) = line.split_once("//")?;
    let comment = comment.trim();
    if !comment.starts_with("@param") {
        return None;
    }
    let name = code.trim().strip_prefix("const ")?.split(':').next()?.trim();
    Some((name, comment))
}

fn code_part(line: &str) -> &str {
    line.split_once("//").map_or(line, |(c, _)| c)
}

/// Parse `for (var i = 0u; i < BOUND; i++) {` into (i, BOUND).
fn parse_for(line: &str) -> Option<(String, String)> {
    let l = code_part(line).trim();
    let inner = l.strip_prefix("for (var ")?.strip_suffix(") {")?;
    let mut parts = inner.split(';').map(str::trim);
    let (var, init) = parts.next()?.split_once('=')?;
    let var = var.trim().to_string();
    if init.trim() != "0u" {
        return None;
    }
    let (cmp_var, bound) = parts.next()?.split_once('<')?;
    if cmp_var.trim() != var || parts.next()? != format!("{var}++") {
        return None;
    }
    Some((var, bound.trim().to_string()))
}

fn unroll(lines: &[String], params: &Params) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "// @unroll" {
            out.push(lines[i].clone());
            i += 1;
            continue;
        }
        let header = lines.get(i + 1).ok_or("`// @unroll` at the end of the file")?;
        let (var, bound) =
            parse_for(header).ok_or_else(|| format!("`// @unroll` before `{}`", header.trim()))?;
        let count = match params.get(bound.as_str()) {
            Some(v) => *v,
            None => bound
                .trim_end_matches('u')
                .parse::<u32>()
                .map_err(|_| format!("unroll bound `{bound}` is neither a @param nor a literal"))?,
        };
        // Find the loop's closing brace.
        let mut depth = 0i32;
        let mut end = None;
        for (j, line) in lines.iter().enumerate().skip(i + 1) {
            let code = code_part(line);
            depth += code.matches('{').count() as i32 - code.matches('}').count() as i32;
            if depth == 0 {
                end = Some(j);
                break;
            }
        }
        let end = end.ok_or_else(|| format!("unbalanced braces after `{}`", header.trim()))?;
        let body = unroll(&lines[i + 2..end], params)?;
        let indent: String = header.chars().take_while(|c| c.is_whitespace()).collect();
        for k in 0..count {
            // `const`, so that the index is a const-expression (subgroupBroadcast needs one)
            out.push(format!("{indent}{{ const {var} = {k}u;"));
            out.extend(body.iter().cloned());
            out.push(format!("{indent}}}"));
        }
        i = end + 1;
    }
    Ok(out)
}

/// Parse and validate WGSL with naga (the same front end wgpu uses).
pub fn validate(name: &str, source: &str) -> Result<()> {
    parse_valid(name, source).map(drop)
}

/// The naga module of `source` and its validation info.
pub(crate) fn parse_valid(name: &str, source: &str) -> Result<(naga::Module, naga::valid::ModuleInfo)> {
    let err = |message: String| Error::Shader { name: name.to_string(), message };
    let module = naga::front::wgsl::parse_str(source).map_err(|e| err(e.emit_to_string(source)))?;
    let info = validate_module(name, source, &module)?;
    Ok((module, info))
}

/// Validate `module`, parsed from `source` (which error messages quote).
pub(crate) fn validate_module(name: &str, source: &str, module: &naga::Module) -> Result<naga::valid::ModuleInfo> {
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
        .validate(module)
        .map_err(|e| Error::Shader { name: name.to_string(), message: e.emit_to_string(source) })
}

/// The bind group layout entries of entry point `entry` of a validated module, as naga reflects
/// them: every buffer binding of group 0 the entry point uses, uniform or storage (read only
/// unless the shader writes it), visible to compute. Kernels build their pipeline layouts from
/// these, so a layout can never disagree with its shader.
fn bindings(
    name: &str,
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    entry: &str,
) -> Result<Vec<wgpu::BindGroupLayoutEntry>> {
    let err = |message: String| Error::Shader { name: name.to_string(), message };
    let index = module
        .entry_points
        .iter()
        .position(|e| e.name == entry)
        .ok_or_else(|| err(format!("no entry point `{entry}`")))?;
    let used = info.get_entry_point(index);
    let mut entries = Vec::new();
    for (handle, var) in module.global_variables.iter() {
        let Some(binding) = &var.binding else { continue };
        if used[handle].is_empty() {
            continue;
        }
        if binding.group != 0 {
            return Err(err(format!("binding {binding:?}: the kernels use group 0 only")));
        }
        let ty = match var.space {
            naga::AddressSpace::Uniform => wgpu::BufferBindingType::Uniform,
            naga::AddressSpace::Storage { access } => {
                wgpu::BufferBindingType::Storage { read_only: !access.contains(naga::StorageAccess::STORE) }
            }
            other => return Err(err(format!("binding {}: address space {other:?}", binding.binding))),
        };
        entries.push(wgpu::BindGroupLayoutEntry {
            binding: binding.binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None },
            count: None,
        });
    }
    entries.sort_by_key(|e| e.binding);
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unrolls_nested_loops_with_params() {
        let src = "const N: u32 = 2u; // @param\nfn f() -> u32 {\n    var s = 0u;\n    // @unroll\n    for (var i = 0u; i < N; i++) {\n        // @unroll\n        for (var j = 0u; j < 3u; j++) {\n            s += i * j;\n        }\n    }\n    return s;\n}\n";
        let mut p = Params::new();
        p.insert("N", 4);
        let out = specialise("t", src, &p).unwrap();
        assert!(out.contains("const N: u32 = 4u;"));
        assert_eq!(out.matches("const i = ").count(), 4);
        assert_eq!(out.matches("const j = ").count(), 12);
        assert!(!out.contains("for ("));
    }

    #[test]
    fn nested_includes_resolve_once() {
        // attention_common.wgsl includes score_terms.wgsl; naming it again adds nothing
        let src = "// @include attention_common.wgsl\n// @include score_terms.wgsl\n";
        let out = resolve_includes("t", src).unwrap();
        assert_eq!(out.matches("fn soft_cap(").count(), 1);
        assert_eq!(out.matches("struct Params {").count(), 1);
        assert!(!out.lines().any(|l| l.trim().starts_with("// @include ")));
        assert!(matches!(resolve_includes("t", "// @include nope.wgsl\n"), Err(Error::Shader { .. })));
    }

    #[test]
    fn conditionals_nest() {
        let src = "const A: u32 = 1u; // @param\nconst B: u32 = 1u; // @param\n// @if A\n// @if B\nab\n// @else\na_not_b\n// @endif\na\n// @else\nnot_a\n// @if B\nnot_a_b\n// @endif\n// @endif\n";
        let kept = |a: u32, b: u32| {
            let lines: Vec<String> = src.lines().map(String::from).collect();
            let out = conditionals(&lines, &Params::from([("A", a), ("B", b)])).unwrap();
            out.into_iter().filter(|l| !l.starts_with("const")).collect::<Vec<_>>().join(" ")
        };
        assert_eq!(kept(1, 1), "ab a");
        assert_eq!(kept(1, 0), "a_not_b a");
        assert_eq!(kept(0, 1), "not_a not_a_b");
        assert_eq!(kept(0, 0), "not_a");
        let lines: Vec<String> = "// @if T == 2\nbf16\n// @else\nother\n// @endif".lines().map(String::from).collect();
        assert_eq!(conditionals(&lines, &Params::from([("T", 2)])).unwrap(), ["bf16"]);
        assert_eq!(conditionals(&lines, &Params::from([("T", 1)])).unwrap(), ["other"]);
        let unbalanced: Vec<String> = vec!["// @if A".into()];
        assert!(conditionals(&unbalanced, &Params::from([("A", 1)])).is_err());
    }

    #[test]
    fn missing_param_is_an_error() {
        let src = "const N: u32 = 2u; // @param\n";
        assert!(matches!(specialise("t", src, &Params::new()), Err(Error::Shader { .. })));
    }
}
