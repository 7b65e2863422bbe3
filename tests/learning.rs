//! Training learns, and sampling is deterministic: tiny models on the toys and the digits.

mod common;

use common::gpu;
use common::tiny::{config, mean_loss};
use rectiflow::data;
use rectiflow::sample::{sample, SampleOptions, Solver};
use rectiflow::train::Trainer;

#[test]
fn a_tiny_mlp_and_a_tiny_dit_learn() {
    // A private context: tests running beside this one allocate from the shared context's pool.
    let own = rectiflow::Gpu::with_options(&rectiflow::gpu::GpuOptions {
        poison: true,
        ..Default::default()
    })
    .unwrap();
    let toy = data::toy("8gaussians", 5000, 1).unwrap();
    let mut tr = Trainer::new(&own, config(&toy, "mlp", 64), &toy).unwrap();
    let (first, _) = (mean_loss(&mut tr, 20), mean_loss(&mut tr, 200));
    let last = mean_loss(&mut tr, 20);
    assert!(last < 0.8 * first, "mlp loss {first} -> {last}");
    // The pool creates no buffer once the step has run.
    let created = own.pool_stats().created;
    mean_loss(&mut tr, 5);
    assert_eq!(
        own.pool_stats().created,
        created,
        "a repeated step allocates nothing"
    );

    let digits = data::digits().unwrap();
    let mut tr = Trainer::new(gpu(), config(&digits, "dit", 16), &digits).unwrap();
    let first = mean_loss(&mut tr, 10);
    mean_loss(&mut tr, 50);
    let last = mean_loss(&mut tr, 10);
    assert!(last < 0.9 * first, "dit loss {first} -> {last}");
}

#[test]
fn sampling_with_a_fixed_seed_is_deterministic() {
    let digits = data::digits().unwrap();
    let mut tr = Trainer::new(gpu(), config(&digits, "dit", 16), &digits).unwrap();
    for _ in 0..3 {
        tr.step().unwrap();
    }
    let run = |seed: u64, solver: Solver, cfg: f32| {
        let opts = SampleOptions {
            steps: 4,
            solver,
            cfg,
            shift: 3.0,
            seed,
            clip_x0: None,
            ..SampleOptions::new(vec![0, 1, 2, 3, 10])
        };
        sample(&tr.model, &tr.params, &tr.flow, 64, 10, &opts)
            .unwrap()
            .to_vec()
            .unwrap()
    };
    let a = run(5, Solver::Euler, 2.0);
    assert_eq!(a.len(), 5 * 64);
    assert!(a.iter().all(|v| v.is_finite()));
    assert_eq!(a, run(5, Solver::Euler, 2.0), "same seed, same samples");
    assert_ne!(a, run(6, Solver::Euler, 2.0), "another seed, other samples");
    assert_ne!(a, run(5, Solver::Heun, 2.0));
    assert_eq!(run(5, Solver::Heun, 1.0), run(5, Solver::Heun, 1.0));
    // Clamping x0_hat changes the trajectory and keeps it finite.
    let opts = SampleOptions {
        steps: 4,
        solver: Solver::Euler,
        cfg: 2.0,
        shift: 1.0,
        seed: 5,
        clip_x0: Some(0.1),
        ..SampleOptions::new(vec![0, 1, 2, 3, 10])
    };
    let clipped = sample(&tr.model, &tr.params, &tr.flow, 64, 10, &opts)
        .unwrap()
        .to_vec()
        .unwrap();
    assert!(clipped.iter().all(|v| v.is_finite()));
    assert_ne!(clipped, run(5, Solver::Euler, 2.0));
}

/// f16 weights (`TrainConfig::f16`, `--f16`): a short run's loss curve stays within the noise of
/// the f32 run's. Both draw the same batches, times and noise (one seed); the f16 run's weights
/// are rounded to f16 in every matmul, so its trajectory drifts away from the f32 one, but its
/// mean loss over the last 100 of 300 steps must be within 3 standard errors of the f32 run's
/// (the error of a difference of two independent means of 100 losses: the bound holds even
/// once the two runs no longer share anything but their data), and both must have learned.
#[test]
fn training_with_f16_weights_follows_the_f32_loss_curve() {
    if !gpu().has_f16() {
        eprintln!("skipped: {} has no SHADER_F16", gpu().adapter_info().name);
        return;
    }
    let toy = data::toy("checkerboard", 5000, 1).unwrap();
    let losses = |f16: bool| -> (Vec<f64>, Trainer) {
        let mut c = config(&toy, "mlp", 64);
        c.f16 = f16;
        let mut tr = Trainer::new(gpu(), c, &toy).unwrap();
        assert_eq!(tr.params.stores_f16(), f16);
        let losses = (0..300)
            .map(|_| {
                tr.step().unwrap();
                tr.read_loss().unwrap() as f64
            })
            .collect();
        (losses, tr)
    };
    let ((full, _), (half, trainer)) = (losses(false), losses(true));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let var = |v: &[f64]| {
        let m = mean(v);
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64
    };
    let (a, b) = (&full[200..], &half[200..]);
    let stderr = ((var(a) + var(b)) / a.len() as f64).sqrt();
    assert!(
        (mean(a) - mean(b)).abs() <= 3.0 * stderr,
        "last 100 steps' mean loss: f32 {} and f16 {} differ by more than 3 standard errors ({stderr})",
        mean(a),
        mean(b)
    );
    for (name, l) in [("f32", &full), ("f16", &half)] {
        assert!(
            mean(&l[200..]) < 0.9 * mean(&l[..20]),
            "{name} run did not learn: {} -> {}",
            mean(&l[..20]),
            mean(&l[200..])
        );
    }
    // Its checkpoint samples with f16 weights where the adapter has SHADER_F16, and with the
    // f32 master weights on one without.
    let dir = common::tiny::temp_dir("f16-pipeline");
    let path = dir.join("checkpoint.safetensors");
    trainer.save(&path).unwrap();
    let pipe = rectiflow::Pipeline::load(gpu(), &path, rectiflow::Weights::Ema).unwrap();
    assert!(pipe.stores_f16());
    let without = rectiflow::Gpu::with_options(&rectiflow::gpu::GpuOptions {
        no_f16: true,
        ..Default::default()
    })
    .unwrap();
    let pipe = rectiflow::Pipeline::load(&without, &path, rectiflow::Weights::Ema).unwrap();
    assert!(!pipe.stores_f16());
}
