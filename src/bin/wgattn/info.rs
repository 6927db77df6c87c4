//! `wgattn info`: the adapter the library picks, the optional features it enabled, and the limits
//! that decide the kernels' tile sizes and how a problem is split into dispatches.

use wgpu_attention::Context;

use crate::CliError;

/// Open the default context and describe it on stdout.
pub fn info() -> Result<(), CliError> {
    let ctx = Context::new()?;
    print!("{}", describe(&ctx));
    Ok(())
}

/// The report, as text.
fn describe(ctx: &Context) -> String {
    let a = ctx.adapter();
    let i = &a.info;
    let mut out = String::new();
    let mut line = |key: &str, value: String| out.push_str(&format!("{key:<16}{value}\n"));
    line("adapter:", i.name.clone());
    line("backend:", format!("{:?}", i.backend));
    line("device type:", format!("{:?}", i.device_type));
    line("vendor/device:", format!("{:#06x} / {:#06x}", i.vendor, i.device));
    line("driver:", non_empty(&i.driver));
    line("driver info:", non_empty(&i.driver_info));
    line("subgroup size:", format!("min {} / max {}", i.subgroup_min_size, i.subgroup_max_size));

    out.push_str("features enabled:\n");
    for (name, feature) in [
        ("SUBGROUP", wgpu::Features::SUBGROUP),
        ("SHADER_F16", wgpu::Features::SHADER_F16),
        ("TIMESTAMP_QUERY", wgpu::Features::TIMESTAMP_QUERY),
    ] {
        let yes = if a.features.contains(feature) { "yes" } else { "no" };
        out.push_str(&format!("  {name:<40}{yes}\n"));
    }

    let l = &a.limits;
    out.push_str("limits:\n");
    let limits: [(&str, u64, bool); 9] = [
        ("max_compute_workgroup_storage_size", l.max_compute_workgroup_storage_size.into(), true),
        ("max_compute_invocations_per_workgroup", l.max_compute_invocations_per_workgroup.into(), false),
        ("max_compute_workgroups_per_dimension", l.max_compute_workgroups_per_dimension.into(), false),
        ("max_storage_buffer_binding_size", l.max_storage_buffer_binding_size, true),
        ("max_buffer_size", l.max_buffer_size, true),
        ("max_uniform_buffer_binding_size", l.max_uniform_buffer_binding_size, true),
        ("max_texture_dimension_2d", l.max_texture_dimension_2d.into(), false),
        ("min_storage_buffer_offset_alignment", l.min_storage_buffer_offset_alignment.into(), true),
        ("max_storage_buffers_per_shader_stage", l.max_storage_buffers_per_shader_stage.into(), false),
    ];
    for (name, value, is_bytes) in limits {
        let human = if is_bytes { bytes(value) } else { String::new() };
        out.push_str(&format!("  {name:<40}{value}{human}\n"));
    }
    out
}

fn non_empty(s: &str) -> String {
    if s.is_empty() {
        "(not reported)".into()
    } else {
        s.into()
    }
}

/// ` (48 KiB)` for sizes of at least 1 KiB, else nothing.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return String::new();
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    let v = if v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v:.1}") };
    format!(" ({v} {})", UNITS[unit])
}
