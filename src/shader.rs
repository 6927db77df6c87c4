//! The one small templating step WGSL needs. A kernel's `.wgsl` file is valid WGSL on its own (it is
//! validated as written by the test suite); specialising it does two textual things:
//!
//! 1. `const NAME: u32 = 16u; // @param ...` lines get the value chosen for this pipeline. WGSL's
//!    `override` cannot size private arrays, and the unroller needs constant bounds, so these stay
//!    `const`.
//! 2. A loop written `for (var i = 0u; i < BOUND; i++) {` on the line after a `// @unroll` comment is
//!    replaced by BOUND copies of its body, each in its own block opening with `let i = <k>u;`.
//!    Lavapipe (llvmpipe) stops every invocation after 65,535 loop iterations in total, silently, so
//!    the kernels keep run-time loops to the one over key tiles and unroll the rest.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// Parameters of a specialisation: `@param` name -> value.
pub type Params = BTreeMap<&'static str, u32>;

/// Specialise `source` (named `name` in errors) with `params`, unroll, and validate with naga.
pub fn specialise(name: &str, source: &str, params: &Params) -> Result<String> {
    let err = |message: String| Error::Shader { name: name.to_string(), message };
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
    let out = unroll(&lines, params).map_err(err)?;
    let text = out.join("\n");
    validate(name, &text)?;
    Ok(text)
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
            out.push(format!("{indent}{{ let {var} = {k}u;"));
            out.extend(body.iter().cloned());
            out.push(format!("{indent}}}"));
        }
        i = end + 1;
    }
    Ok(out)
}

/// Parse and validate WGSL with naga (the same front end wgpu uses).
pub fn validate(name: &str, source: &str) -> Result<()> {
    let err = |message: String| Error::Shader { name: name.to_string(), message };
    let module = naga::front::wgsl::parse_str(source).map_err(|e| err(e.emit_to_string(source)))?;
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
        .validate(&module)
        .map_err(|e| err(e.emit_to_string(source)))?;
    Ok(())
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
        assert_eq!(out.matches("let i = ").count(), 4);
        assert_eq!(out.matches("let j = ").count(), 12);
        assert!(!out.contains("for ("));
    }

    #[test]
    fn missing_param_is_an_error() {
        let src = "const N: u32 = 2u; // @param\n";
        assert!(matches!(specialise("t", src, &Params::new()), Err(Error::Shader { .. })));
    }
}
