//! Every `.wgsl` file validates with naga as written, and every specialisation the planner can
//! choose (head dims 1..=256 under the lavapipe and WebGPU-default limits) validates too.

use wgpu_attention::kernels::flash::TileConfig;
use wgpu_attention::shader;

#[test]
fn every_wgsl_file_validates_as_written() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wgsl") {
            let text = std::fs::read_to_string(&path).unwrap();
            shader::validate(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"));
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
    for limits in [wgpu::Limits::default(), lavapipe_like] {
        for d in 1..=256 {
            let cfg = TileConfig::choose(d, &limits).unwrap();
            assert!(cfg.workgroup_bytes() <= limits.max_compute_workgroup_storage_size);
            if seen.insert(cfg) {
                cfg.specialised_source().unwrap_or_else(|e| panic!("{cfg:?}: {e}"));
            }
        }
    }
    assert!(seen.len() > 8);
}
