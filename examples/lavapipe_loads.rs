//! What one vec4 load costs on the adapter: from a storage buffer (`array<vec4<f32>>`) against an
//! rgba32float texture (`textureLoad`), the two ways a kernel could read K and V rows.
//!
//!     cargo run --release --example lavapipe_loads
//!
//! 64 workgroups of as many invocations as the adapter's subgroup has lanes (at least 8: 8 on
//! lavapipe at 256 bits, 16 at 512, so every SIMD lane works); each invocation reads 2048 rows of
//! 16 vec4s (a D = 64 row each), the rows of its lane spread over a 4 MiB table, and sums them
//! (so nothing is optimised away). Prints the best of 4 wall times per dispatch and the time per
//! vec4 load per invocation.
//! Measured figures: docs/LAVAPIPE.md.

use wgpu_attention::Context;

/// The shared kernel; `LOAD(t)` is replaced by the read of texel / vec4 number `t`.
const KERNEL: &str = r#"
@group(0) @binding(1) var<storage, read_write> sums: array<vec4<f32>>;

@compute @workgroup_size(LANES)
fn main(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    var acc = vec4<f32>(0.0);
    for (var b = 0u; b < 2048u; b++) {
        let row = ((wg.x * 2048u + b) * LANESu + lane) % 65536u;
        BODY
    }
    sums[wg.x * LANESu + lane] = acc;
}
"#;

const WORKGROUPS: u32 = 64;
const TEXELS: u32 = 65536 * 16;
const WIDTH: u32 = 4096;

fn main() {
    let ctx = Context::new().expect("an adapter (apt-get install mesa-vulkan-drivers)");
    println!("adapter: {}", ctx.adapter().info.name);
    let lanes = ctx.adapter().info.subgroup_min_size.max(8);
    println!("workgroups of {lanes} invocations");
    let buffer_ms = time(&ctx, false, lanes);
    let texture_ms = time(&ctx, true, lanes);
    let loads = (WORKGROUPS * lanes * 2048 * 16) as f64;
    for (what, ms) in [("storage buffer", buffer_ms), ("rgba32float texture", texture_ms)] {
        println!("{what:<20} {ms:7.1} ms  {:.2} ns per vec4 load per invocation", ms * 1e6 / loads);
    }
}

/// Best wall time of 4 dispatches of workgroups of `lanes` invocations reading through a texture
/// (`texture`) or a storage buffer.
fn time(ctx: &Context, texture: bool, lanes: u32) -> f64 {
    let device = ctx.device();
    let body: String = (0..16)
        .map(|dv| {
            let t = format!("row * 16u + {dv}u");
            if texture {
                format!("{{ let t = {t}; acc += textureLoad(table, vec2<u32>(t % {WIDTH}u, t / {WIDTH}u), 0); }}\n")
            } else {
                format!("acc += table[{t}];\n")
            }
        })
        .collect();
    let binding = if texture {
        "@group(0) @binding(0) var table: texture_2d<f32>;"
    } else {
        "@group(0) @binding(0) var<storage, read> table: array<vec4<f32>>;"
    };
    let source = format!("{binding}\n{}", KERNEL.replace("BODY", &body).replace("LANES", &lanes.to_string()));

    // the table, as a buffer and copied into a texture of WIDTH texels per row
    let values: Vec<f32> = (0..TEXELS * 4).map(|i| (i % 97) as f32).collect();
    let table = wgpu::util::DeviceExt::create_buffer_init(
        device,
        &wgpu::util::BufferInitDescriptor {
            label: Some("table"),
            contents: bytemuck::cast_slice(&values),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        },
    );
    let size = wgpu::Extent3d { width: WIDTH, height: TEXELS / WIDTH, depth_or_array_layers: 1 };
    let table_texture = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("table texture"),
        size,
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba32Float,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_texture(
        wgpu::TexelCopyBufferInfo {
            buffer: &table,
            layout: wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(WIDTH * 16),
                rows_per_image: None,
            },
        },
        table_texture.as_image_copy(),
        size,
    );
    ctx.queue().submit([encoder.finish()]);
    let view = table_texture.create_view(&Default::default());
    let sums = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("sums"),
        size: (WORKGROUPS * lanes * 16) as u64,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });

    // an explicit layout: rgba32float is not filterable, which a derived layout would assume
    let table_entry = if texture {
        wgpu::BindingType::Texture {
            sample_type: wgpu::TextureSampleType::Float { filterable: false },
            view_dimension: wgpu::TextureViewDimension::D2,
            multisampled: false,
        }
    } else {
        wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only: true },
            has_dynamic_offset: false,
            min_binding_size: None,
        }
    };
    let storage = |binding, ty| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty,
        count: None,
    };
    let sums_entry = wgpu::BindingType::Buffer {
        ty: wgpu::BufferBindingType::Storage { read_only: false },
        has_dynamic_offset: false,
        min_binding_size: None,
    };
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: None,
        entries: &[storage(0, table_entry), storage(1, sums_entry)],
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: None,
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("loads"),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("loads"),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let table_resource =
        if texture { wgpu::BindingResource::TextureView(&view) } else { table.as_entire_binding() };
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &layout,
        entries: &[
            wgpu::BindGroupEntry { binding: 0, resource: table_resource },
            wgpu::BindGroupEntry { binding: 1, resource: sums.as_entire_binding() },
        ],
    });

    // the first dispatch also compiles the shader: best of 4
    (0..4)
        .map(|_| {
            let start = std::time::Instant::now();
            let mut encoder = device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                pass.dispatch_workgroups(WORKGROUPS, 1, 1);
            }
            ctx.queue().submit([encoder.finish()]);
            device.poll(wgpu::PollType::wait_indefinitely()).expect("poll");
            start.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}
