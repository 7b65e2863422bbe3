//! The engine's machinery: poisoning, the buffer pool, the pipeline cache, both parameter paths
//! (immediates and the uniform arena), f16 storage, the embedding path and error reporting.

mod common;

use common::{assert_rel, f64s, gpu, rand_vec};
use rectiflow::gpu::{Access, Gpu, GpuOptions, Kernel, Shader};
use rectiflow::ops::{self, Activation, MatmulSpec};
use rectiflow::{DType, Error, Tensor};

#[test]
fn new_tensors_are_poisoned_in_tests() {
    let t = Tensor::uninit(gpu(), &[7, 9], DType::F32).unwrap();
    assert!(t.to_vec().unwrap().iter().all(|v| v.is_nan()));
}

/// One small "step": the kinds of op a training step records, with temporaries dropped.
fn step(x: &Tensor, w: &Tensor) -> f32 {
    let h = ops::matmul_with(
        x,
        w,
        &MatmulSpec {
            trans_b: true,
            activation: Activation::Gelu,
            ..Default::default()
        },
    )
    .unwrap();
    let h2 = ops::mul(&h, &h).unwrap();
    let s = ops::sum_rows(&h2).unwrap();
    let t = ops::transpose(&h).unwrap();
    let m = ops::max_rows(&t).unwrap();
    drop((h, h2, t));
    let total = ops::add(
        &ops::sum_rows(&s.reshape(&[1, 33]).unwrap()).unwrap(),
        &ops::sum_rows(&m.reshape(&[1, 17]).unwrap()).unwrap(),
    )
    .unwrap();
    total.to_vec().unwrap()[0]
}

#[test]
fn a_repeated_step_creates_no_buffer_after_its_first_run() {
    // A private context, so other tests' allocations do not interleave with the counts.
    let g = Gpu::with_options(&GpuOptions {
        poison: true,
        ..Default::default()
    })
    .unwrap();
    let x = Tensor::from_slice(&g, &[33, 20], &rand_vec(33 * 20, 1)).unwrap();
    let w = Tensor::from_slice(&g, &[17, 20], &rand_vec(17 * 20, 2)).unwrap();
    let first = step(&x, &w);
    let after_first = g.pool_stats();
    let pipelines = g.pipeline_count();
    for _ in 0..4 {
        assert_eq!(step(&x, &w), first, "the same work gives the same result");
    }
    let after = g.pool_stats();
    assert_eq!(
        after.created, after_first.created,
        "no new buffers: {after:?}"
    );
    assert!(
        after.reused >= after_first.reused + 4 * 8,
        "buffers were reused: {after:?}"
    );
    assert_eq!(
        after.bytes_live, after_first.bytes_live,
        "nothing leaked: {after:?}"
    );
    assert_eq!(g.pipeline_count(), pipelines, "no new pipelines");
    assert!(after.peak_bytes >= after.bytes_live);
}

#[test]
fn immediates_and_uniform_arena_give_identical_results() {
    let arena = Gpu::with_options(&GpuOptions {
        no_immediates: true,
        poison: true,
        ..Default::default()
    })
    .unwrap();
    assert!(!arena.uses_immediates());
    println!(
        "default context uses immediates: {}",
        gpu().uses_immediates()
    );
    let a = rand_vec(65 * 63, 5);
    let b = rand_vec(63 * 127, 6);
    let run = |g: &Gpu| {
        let ta = Tensor::from_slice(g, &[65, 63], &a).unwrap();
        let tb = Tensor::from_slice(g, &[63, 127], &b).unwrap();
        // Many dispatches in one submission, each with its own parameters.
        let mut acc = ops::matmul(&ta, &tb).unwrap();
        for i in 0..50 {
            acc = ops::scale(&acc, 1.0 + i as f32 * 1e-3).unwrap();
        }
        let r = ops::sum_rows(&acc).unwrap();
        (acc.to_vec().unwrap(), r.to_vec().unwrap())
    };
    assert_eq!(run(gpu()), run(&arena));
}

#[test]
fn f16_storage_round_trips_through_half() {
    let g = gpu();
    if !g.has_f16() {
        println!("skipped: {} has no SHADER_F16", g.adapter_info().name);
        return;
    }
    let x: Vec<f32> = rand_vec(257, 9).iter().map(|v| v * 100.0).collect();
    let rounded: Vec<f32> = x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
    // Host conversion on upload and download.
    let h = Tensor::from_slice_f16(g, &[257], &x).unwrap();
    assert_eq!(h.dtype(), DType::F16);
    assert_eq!(h.to_vec().unwrap(), rounded);
    // GPU conversion both ways: f32 -> f16 rounds to nearest even, as `half` does.
    let f = Tensor::from_slice(g, &[257], &x).unwrap();
    let h2 = ops::to_f16(&f).unwrap();
    assert_eq!(h2.to_vec().unwrap(), rounded);
    assert_eq!(ops::to_f32(&h2).unwrap().to_vec().unwrap(), rounded);
    // Compute kernels refuse f16 with a clear error.
    let err = ops::gelu(&h2).unwrap_err();
    assert!(err.to_string().contains("to_f32"), "{err}");

    // In place, into views of a larger f16 buffer (the f16 weights' refresh): 4 values per
    // invocation where the length allows, one otherwise; the elements around stay as they were.
    for (n, at) in [(4 * 300, 128), (257, 256), (1, 512)] {
        let x: Vec<f32> = rand_vec(n, 10 + n as u64)
            .iter()
            .map(|v| v * 50.0)
            .collect();
        let rounded: Vec<f32> = x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        let around = vec![7.0f32; at + n + 128];
        let dst = Tensor::from_slice_f16(g, &[around.len()], &around).unwrap();
        let view = dst.view(at, &[n]).unwrap();
        ops::cast_into(&Tensor::from_slice(g, &[n], &x).unwrap(), &view).unwrap();
        let got = dst.to_vec().unwrap();
        assert_eq!(&got[at..at + n], &rounded[..], "cast_into of {n} values");
        assert!(
            got[..at].iter().chain(&got[at + n..]).all(|&v| v == 7.0),
            "cast_into of {n} values wrote outside its view"
        );
    }
    // Refused, naming the problem: the wrong dtypes, shapes that differ.
    let src = Tensor::from_slice(g, &[8], &[1.0; 8]).unwrap();
    let half8 = Tensor::from_slice_f16(g, &[8], &[0.0; 8]).unwrap();
    let half42 = Tensor::from_slice_f16(g, &[4, 2], &[0.0; 8]).unwrap();
    let f32_out = Tensor::zeros(g, &[8]).unwrap();
    for (what, x, out, says) in [
        ("an f16 input", &half8, &half42, "got F16 to F16"),
        ("an f32 output", &src, &f32_out, "got F32 to F32"),
        ("another shape", &src, &half42, "input's shape [8]"),
    ] {
        let err = ops::cast_into(x, out).expect_err(what).to_string();
        assert!(err.contains(says), "cast_into with {what}: {err}");
    }
}

#[test]
fn an_embedding_application_can_hand_over_its_own_device() {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .expect("an adapter");
    let (device, queue) =
        pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default())).unwrap();
    let g = Gpu::from_device(device, queue).unwrap();
    assert!(
        !g.uses_immediates(),
        "a default device has no IMMEDIATES feature"
    );
    let a = rand_vec(7 * 5, 11);
    let b = rand_vec(5 * 3, 12);
    let ta = Tensor::from_slice(&g, &[7, 5], &a).unwrap();
    let tb = Tensor::from_slice(&g, &[5, 3], &b).unwrap();
    let got = ops::matmul(&ta, &tb).unwrap().to_vec().unwrap();
    let (ad, bd) = (f64s(&a), f64s(&b));
    let want: Vec<f64> = (0..21)
        .map(|i| {
            (0..5)
                .map(|p| ad[(i / 3) * 5 + p] * bd[p * 3 + i % 3])
                .sum()
        })
        .collect();
    assert_rel("matmul on a host device", &got, &want, 1e-5, 1e-6);
}

#[test]
fn no_matching_adapter_is_a_clear_error() {
    let err = Gpu::with_options(&GpuOptions {
        adapter: Some("no-such-adapter-xyz".into()),
        ..Default::default()
    })
    .err()
    .expect("no adapter matches");
    let msg = err.to_string();
    assert!(matches!(err, Error::NoAdapter { .. }));
    assert!(msg.contains("no-such-adapter-xyz"), "{msg}");
    assert!(msg.contains("Adapters found:"), "{msg}");
    assert!(msg.contains("mesa-vulkan-drivers"), "{msg}");
    // The listing names the adapter that does exist.
    assert!(msg.contains(&gpu().adapter_info().name), "{msg}");

    let err = Gpu::with_options(&GpuOptions {
        backend: Some("glide".into()),
        ..Default::default()
    })
    .err()
    .unwrap();
    assert!(
        matches!(err, Error::Config(_)) && err.to_string().contains("vulkan"),
        "{err}"
    );
}

#[test]
fn bad_uploads_and_oversized_tensors_are_refused() {
    let g = gpu();
    let err = Tensor::from_slice(g, &[2, 3], &[1.0; 5]).unwrap_err();
    assert!(
        matches!(err, Error::Shape(_)) && err.to_string().contains("[2, 3]"),
        "{err}"
    );
    let err = Tensor::uninit(g, &[1 << 20, 1 << 20], DType::F32).unwrap_err();
    assert!(
        matches!(err, Error::TooLarge(_))
            && err.to_string().contains("max_storage_buffer_binding_size"),
        "{err}"
    );
    let t = Tensor::zeros(g, &[10]).unwrap();
    assert!(matches!(t.reshape(&[3, 3]), Err(Error::Shape(_))));
    assert!(matches!(t.view(8, &[4]), Err(Error::Shape(_))));
}

static BROKEN: Shader = Shader::new(
    "broken_test_shader",
    "struct Params { n: u32 }\n@group(1) @binding(0) var<uniform> params: Params;\n\
     @compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }",
);
static BROKEN_KERNEL: Kernel = Kernel::new(&BROKEN, "main", &[]);

static NO_PARAMS: Shader = Shader::new(
    "no_params_test_shader",
    "@compute @workgroup_size(1) fn main() {}",
);
static NO_PARAMS_KERNEL: Kernel = Kernel::new(&NO_PARAMS, "main", &[]);

static SQUARE: Shader = Shader::new(
    "square_test_shader",
    "struct Params { n: u32 }\n@group(1) @binding(0) var<uniform> params: Params;\n\
     @group(0) @binding(0) var<storage, read> x: array<f32>;\n\
     @group(0) @binding(1) var<storage, read_write> y: array<f32>;\n\
     @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3<u32>) {\n\
       if (id.x < params.n) { y[id.x] = x[id.x] * x[id.x]; } }",
);
static SQUARE_KERNEL: Kernel = Kernel::new(&SQUARE, "main", &[Access::Read, Access::ReadWrite]);

#[test]
fn kernel_errors_name_the_kernel_and_user_kernels_run() {
    let g = gpu();
    let err = ops::launch(g, &BROKEN_KERNEL, &[], &[], &[0u32; 4], 1).unwrap_err();
    assert!(
        matches!(&err, Error::Kernel { kernel, .. } if kernel == "broken_test_shader"),
        "{err}"
    );
    let err = ops::launch(g, &NO_PARAMS_KERNEL, &[], &[], &[0u32; 4], 1).unwrap_err();
    assert!(err.to_string().contains("var<uniform> params"), "{err}");

    let x = Tensor::from_slice(g, &[100], &rand_vec(100, 3)).unwrap();
    let y = Tensor::uninit(g, &[100], DType::F32).unwrap();
    let err = ops::launch(g, &SQUARE_KERNEL, &[], &[&x], &[100u32, 0, 0, 0], 2).unwrap_err();
    assert!(matches!(err, Error::Shape(_)), "{err}");
    ops::launch(g, &SQUARE_KERNEL, &[], &[&x, &y], &[100u32, 0, 0, 0], 2).unwrap();
    let want: Vec<f64> = f64s(&x.to_vec().unwrap()).iter().map(|v| v * v).collect();
    assert_rel("user kernel", &y.to_vec().unwrap(), &want, 1e-7, 0.0);
}

#[test]
fn a_host_device_short_of_a_limit_is_refused_naming_it() {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .expect("an adapter");
    // A device made with fewer storage buffers per stage than qk_norm_backward binds.
    let desc = wgpu::DeviceDescriptor {
        required_limits: wgpu::Limits {
            max_storage_buffers_per_shader_stage: 4,
            ..wgpu::Limits::downlevel_defaults()
        },
        ..Default::default()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&desc)).unwrap();
    let err = Gpu::from_device(device, queue).err().expect("refused");
    let msg = err.to_string();
    assert!(matches!(err, Error::Device(_)), "{msg}");
    assert!(
        msg.contains("max_storage_buffers_per_shader_stage is 4") && msg.contains("at least 8"),
        "{msg}"
    );
}

#[test]
fn a_host_buffer_is_a_tensor_without_a_copy() {
    // A context of its own, so its pool's counters are this test's alone.
    let g = &Gpu::with_options(&GpuOptions {
        poison: true,
        ..Default::default()
    })
    .unwrap();
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let host = g.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("host"),
        size: 1024,
        usage,
        mapped_at_creation: false,
    });
    let values = rand_vec(10, 21);
    g.queue()
        .write_buffer(&host, 256, bytemuck::cast_slice(&values));
    let before = g.pool_stats();
    let t = Tensor::from_buffer(g, &host, 256, &[10]).unwrap();
    assert_eq!(
        t.to_vec().unwrap(),
        values,
        "the host's bytes, read in place"
    );
    assert_eq!(t.byte_offset(), 256);
    assert!(t.buffer() == &host, "the host's own buffer");
    // Kernels write into the host's buffer: y += 2 x in place.
    let x = Tensor::from_slice(g, &[10], &[1.0; 10]).unwrap();
    ops::axpy(2.0, &x, &t).unwrap();
    let again = Tensor::from_buffer(g, &host, 256, &[10]).unwrap();
    let want: Vec<f32> = values.iter().map(|v| v + 2.0).collect();
    assert_eq!(again.to_vec().unwrap(), want);
    // Wrapping and dropping it hands nothing to the pool: what the pool holds live afterwards
    // is only x (one 256-byte class).
    drop((t, again));
    let after = g.pool_stats();
    assert_eq!(
        after.bytes_live,
        before.bytes_live + 256,
        "{before:?} {after:?}"
    );
    drop(x);
    // Refusals: usage, alignment, size, and a read-back the usage does not allow.
    let plain = |usage, size| {
        g.device().create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage,
            mapped_at_creation: false,
        })
    };
    let e = Tensor::from_buffer(g, &plain(wgpu::BufferUsages::COPY_SRC, 64), 0, &[4]).unwrap_err();
    assert!(
        matches!(e, Error::Config(_)) && e.to_string().contains("STORAGE"),
        "{e}"
    );
    let e = Tensor::from_buffer(g, &host, 4, &[4]).unwrap_err();
    assert!(
        matches!(e, Error::Shape(_)) && e.to_string().contains("alignment"),
        "{e}"
    );
    let e = Tensor::from_buffer(g, &host, 0, &[300]).unwrap_err();
    assert!(
        matches!(e, Error::Shape(_)) && e.to_string().contains("1024 bytes"),
        "{e}"
    );
    // 10 values need 48 bytes once rounded to whole vec4s.
    assert!(Tensor::from_buffer(g, &plain(usage, 40), 0, &[10]).is_err());
    assert!(Tensor::from_buffer(g, &host, 0, &[1 << 40, 1 << 40]).is_err());
    let storage_only = plain(wgpu::BufferUsages::STORAGE, 64);
    let t = Tensor::from_buffer(g, &storage_only, 0, &[4]).unwrap();
    let e = t.to_vec().unwrap_err();
    assert!(
        matches!(e, Error::Config(_)) && e.to_string().contains("COPY_SRC"),
        "{e}"
    );
    let e = t.write(&[1.0; 4]).unwrap_err();
    assert!(e.to_string().contains("COPY_DST"), "{e}");
}
