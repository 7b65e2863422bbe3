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
