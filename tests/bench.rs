//! The benchmark module behind `rectiflow bench` and `cargo bench`, on small workloads.

use rectiflow::bench::{self, Options, Suite, Workload};
use rectiflow::Gpu;

#[test]
fn a_step_report_counts_dispatches_and_buffers_and_profiles_every_kernel() {
    let gpu = Gpu::new().unwrap();
    let tiny = Workload {
        name: "tiny-dit",
        description: "a tiny DiT",
        kind: "dit",
        width: 16,
        depth: 1,
        patch: 2,
        batch: 4,
    };
    let quick = Options {
        quick: true,
        sweep: None,
        f16: false,
    };
    let r = bench::step(&gpu, tiny, &quick).unwrap();
    assert!(r.ms_per_step > 0.0 && r.samples_per_second > 0.0);
    assert!(
        r.dispatches_per_step > 20,
        "{} dispatches",
        r.dispatches_per_step
    );
    // After the first steps a step takes every buffer from the pool.
    assert_eq!(r.buffers_created_per_step, 0.0);
    let dispatches: usize = r.kernels.iter().map(|k| k.dispatches).sum();
    assert_eq!(dispatches as u64, r.dispatches_per_step);
    let share: f64 = r.kernels.iter().map(|k| k.share).sum();
    assert!((share - 1.0).abs() < 1e-9, "shares sum to {share}");
    assert!(r
        .kernels
        .iter()
        .any(|k| k.kernel.contains("matmul") && k.gflops.is_some()));
    assert!(r.kernels.iter().any(|k| k.kernel.contains("attention")));
    let md = bench::format_kernels(&r.kernels);
    assert!(md.lines().count() == r.kernels.len() + 2);
}

#[test]
fn suites_and_workloads_are_named_or_refused() {
    assert!(matches!(Suite::parse("kernels", None), Ok(Suite::Kernels)));
    assert!(matches!(
        Suite::parse("step", Some("dit-default")),
        Ok(Suite::Step(Some(w))) if w.name == "dit-default"
    ));
    let e = Suite::parse("step", Some("resnet"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("mlp, dit-default, dit-digits"), "{e}");
    let e = Suite::parse("speed", None).unwrap_err().to_string();
    assert!(e.contains("kernels, step, sample or all"), "{e}");
}

/// Both ways of timing dispatches (device timestamps where the adapter has them, the host clock
/// otherwise) time every dispatch, by kernel, and leave the results as they would be.
#[test]
fn profiles_time_every_dispatch_by_either_method() {
    use rectiflow::gpu::ProfileMethod;
    use rectiflow::{ops, Tensor};
    let gpu = Gpu::new().unwrap();
    let methods: Vec<ProfileMethod> = if gpu
        .features()
        .contains(rectiflow::wgpu::Features::TIMESTAMP_QUERY)
    {
        vec![ProfileMethod::Timestamps, ProfileMethod::WallClock]
    } else {
        vec![ProfileMethod::WallClock]
    };
    let a = Tensor::from_slice(&gpu, &[64, 64], &vec![0.5; 64 * 64]).unwrap();
    for method in methods {
        gpu.start_profile_using(method).unwrap();
        let c = ops::matmul(&a, &a).unwrap();
        let d = ops::add(&c, &c).unwrap();
        let got = d.to_vec().unwrap();
        let p = gpu.finish_profile().unwrap().expect("profiling was on");
        assert_eq!(p.method, method);
        assert!(
            got.iter().all(|&v| v == 32.0),
            "{method:?} changed the results"
        );
        let kernels: Vec<&str> = p.dispatches.iter().map(|d| d.kernel.as_str()).collect();
        assert_eq!(kernels.len(), 2, "{kernels:?}");
        assert!(kernels[0].starts_with("matmul") && kernels[1] == "elementwise::binary");
        assert!(p
            .dispatches
            .iter()
            .all(|d| d.seconds >= 0.0 && d.seconds.is_finite()));
        assert_eq!(p.dispatches[0].cost.flops, 2.0 * 64.0 * 64.0 * 64.0);
        assert!(gpu.finish_profile().unwrap().is_none(), "profiling stops");
    }
}
