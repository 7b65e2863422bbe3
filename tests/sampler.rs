//! The step-wise sampler: stepped to the end it equals one-shot sampling with the same seed
//! (every solver, guidance, shift and clamp); its noise is the documented Philox stream; a
//! guidance weight of 1 never evaluates the unconditional half; it integrates any velocity
//! field (the network, the oracle of a data set, a host closure), and integrating the oracle
//! lands on the data.

mod common;

use common::gpu;
use rectiflow::data::{self, DataSpec};
use rectiflow::flow::{Prediction, Schedule};
use rectiflow::rng::{normal, words};
use rectiflow::sample::{
    sample, time_grid, FieldInput, FnField, NetworkField, OracleField, SampleOptions, Sampler,
    Solver, VelocityField, NOISE_STREAM, T_START,
};
use rectiflow::train::{ModelKind, TrainConfig, Trainer};
use rectiflow::{Error, Tensor};
use std::sync::OnceLock;

/// A tiny class-conditional DiT on the digits, three steps in.
fn trainer() -> &'static Trainer {
    static TRAINER: OnceLock<Trainer> = OnceLock::new();
    TRAINER.get_or_init(|| {
        let digits = data::digits().unwrap();
        let mut model = ModelKind::Dit.config(&digits.shape, 10);
        (model.width, model.depth, model.heads) = (16, 1, 2);
        let config = TrainConfig {
            batch: 16,
            seed: 4,
            ..TrainConfig::new(DataSpec::Digits, model)
        };
        let mut tr = Trainer::new(gpu(), config, &digits).unwrap();
        for _ in 0..3 {
            tr.step().unwrap();
        }
        tr
    })
}

fn field(tr: &Trainer) -> NetworkField<'_> {
    NetworkField::new(
        &tr.model,
        &tr.params,
        tr.config.schedule,
        tr.config.prediction,
        tr.config.model.classes,
    )
}

#[test]
fn stepping_to_the_end_equals_one_shot_sampling() {
    let tr = trainer();
    for (solver, cfg, shift, clip_x0) in [
        (Solver::Euler, 2.0, 1.0, None),
        (Solver::Heun, 2.0, 3.0, None),
        (Solver::Euler, 1.0, 1.0, Some(0.5)),
        (Solver::Heun, 0.0, 2.0, Some(1.0)),
    ] {
        let opts = SampleOptions {
            steps: 4,
            solver,
            cfg,
            shift,
            seed: 11,
            clip_x0,
            ..SampleOptions::new(vec![0, 1, 2, 10, 9])
        };
        let one_shot = sample(&tr.model, &tr.params, &tr.flow, 64, 10, &opts)
            .unwrap()
            .to_vec()
            .unwrap();
        let mut s = Sampler::start(gpu(), field(tr), &[1, 8, 8], &opts).unwrap();
        assert_eq!((s.steps(), s.steps_taken(), s.is_done()), (4, 0, false));
        assert_eq!(s.times(), &time_grid(4, shift)[..]);
        assert_eq!(s.time(), rectiflow::flow::shift(T_START, shift));
        let mut frames = 0;
        let mut last_time = s.time();
        while s.step().unwrap() {
            frames += 1;
            assert!(s.time() < last_time, "time runs down");
            last_time = s.time();
            assert_eq!(s.current().unwrap().shape(), [5, 1, 8, 8]);
        }
        assert_eq!((frames, s.steps_taken(), s.time()), (4, 4, 0.0));
        assert!(!s.step().unwrap(), "a finished sampler takes no step");
        let stepwise = s.finish().unwrap();
        assert_eq!(stepwise.shape(), [5, 1, 8, 8]);
        assert_eq!(
            stepwise.to_vec().unwrap(),
            one_shot,
            "{solver:?} cfg {cfg} shift {shift} clip {clip_x0:?}"
        );
    }
}

#[test]
fn the_noise_is_philox_stream_7_and_host_noise_is_taken_as_given() {
    let tr = trainer();
    let opts = SampleOptions {
        steps: 3,
        seed: 0x1234_5678_9abc,
        ..SampleOptions::new(vec![3, 1, 4])
    };
    let s = Sampler::start(gpu(), field(tr), &[1, 8, 8], &opts).unwrap();
    // Before the first step z = b(t_0) eps, eps element i from counter (i, 0, 7, 0).
    let b0 = Schedule::RectifiedFlow.b(T_START) as f32;
    let z0 = s.current().unwrap().to_vec().unwrap();
    for i in [0usize, 1, 63, 64, 191] {
        let w = words(opts.seed, 0, NOISE_STREAM, i as u32);
        let want = b0 * normal(w[0], w[1]);
        assert!(
            (z0[i] - want).abs() < 1e-5,
            "element {i}: {} vs {want}",
            z0[i]
        );
    }
    // The same noise handed over by the host gives the same samples, to the bit.
    let eps = rectiflow::ops::random_normal(gpu(), 3 * 64, opts.seed, 0, NOISE_STREAM)
        .unwrap()
        .reshape(&[3, 1, 8, 8])
        .unwrap();
    let seeded = s.finish().unwrap().to_vec().unwrap();
    let before = eps.to_vec().unwrap();
    let given = Sampler::start_from_noise(field(tr), &eps, &opts)
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!(given.to_vec().unwrap(), seeded);
    assert_eq!(
        eps.to_vec().unwrap(),
        before,
        "the host's noise is not modified"
    );
    // Noise that does not match the labels is refused.
    let e = Sampler::start_from_noise(field(tr), &eps.reshape(&[192]).unwrap(), &opts)
        .err()
        .unwrap();
    assert!(matches!(e, Error::Shape(_)), "{e}");
    let two = SampleOptions::new(vec![0, 1]);
    assert!(Sampler::start_from_noise(field(tr), &eps, &two).is_err());
}

/// Wraps a field and records the rows and labels of every evaluation.
struct Counting<F> {
    inner: F,
    calls: Vec<(usize, Vec<u32>)>,
}

impl<F: VelocityField> VelocityField for Counting<F> {
    fn schedule(&self) -> Schedule {
        self.inner.schedule()
    }
    fn prediction(&self) -> Prediction {
        self.inner.prediction()
    }
    fn classes(&self) -> usize {
        self.inner.classes()
    }
    fn evaluate(&mut self, input: &FieldInput) -> rectiflow::Result<Tensor> {
        assert_eq!(input.t.shape(), [input.rows()]);
        assert_eq!(input.examples().unwrap().shape(), [input.rows(), 1, 8, 8]);
        self.calls.push((input.rows(), input.labels.to_vec()));
        self.inner.evaluate(input)
    }
}

#[test]
fn guidance_weight_one_skips_the_unconditional_pass() {
    let tr = trainer();
    let run = |cfg: f32, labels: Vec<u32>, solver: Solver| {
        let opts = SampleOptions {
            cfg,
            steps: 3,
            solver,
            ..SampleOptions::new(labels)
        };
        let mut counting = Counting {
            inner: field(tr),
            calls: Vec::new(),
        };
        let s = Sampler::start(gpu(), &mut counting, &[1, 8, 8], &opts).unwrap();
        let guided = s.is_guided();
        s.finish().unwrap();
        (guided, counting.calls)
    };
    // Weight 1: one pass of the samples per evaluation.
    let (guided, calls) = run(1.0, vec![0, 1, 2], Solver::Euler);
    assert!(!guided);
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|(rows, l)| *rows == 3 && l == &[0, 1, 2]));
    // Weight 2: the doubled batch, conditional rows then the null label (10).
    let (guided, calls) = run(2.0, vec![0, 1, 2], Solver::Euler);
    assert!(guided);
    assert!(calls
        .iter()
        .all(|(rows, l)| *rows == 6 && l == &[0, 1, 2, 10, 10, 10]));
    // Heun evaluates twice per step but once on the last.
    let (_, calls) = run(2.0, vec![0, 1, 2], Solver::Heun);
    assert_eq!(calls.len(), 5);
    // Every label the null class: nothing to guide.
    let (guided, calls) = run(2.0, vec![10, 10], Solver::Euler);
    assert!(!guided && calls.iter().all(|(rows, _)| *rows == 2));
}

#[test]
fn labels_the_model_does_not_have_are_refused() {
    let tr = trainer();
    for (labels, want) in [(vec![0, 11], "label 11"), (vec![12], "10 classes")] {
        let opts = SampleOptions::new(labels);
        let e = Sampler::start(gpu(), field(tr), &[1, 8, 8], &opts)
            .err()
            .unwrap();
        assert!(e.to_string().contains(want), "{e}");
    }
    let data = Tensor::from_slice(gpu(), &[2, 2], &[1.0, 0.0, -1.0, 0.0]).unwrap();
    let oracle = OracleField::new(Schedule::RectifiedFlow, &data).unwrap();
    let e = Sampler::start(gpu(), oracle, &[2], &SampleOptions::new(vec![1]))
        .err()
        .unwrap();
    assert!(e.to_string().contains("unconditional"), "{e}");
    // Options out of range.
    let bad = SampleOptions {
        steps: 0,
        ..SampleOptions::new(vec![0])
    };
    assert!(Sampler::start(gpu(), field(tr), &[1, 8, 8], &bad).is_err());
    assert!(Sampler::start(gpu(), field(tr), &[0, 8], &SampleOptions::new(vec![0])).is_err());
}

/// Five points of a 2-D data set.
fn points() -> Vec<f32> {
    vec![1.5, 0.0, -1.0, 1.0, -1.0, -1.0, 0.3, 0.8, 0.0, -1.6]
}

/// Every sample within `tol` of a data point; every data point reached by some sample.
fn assert_lands_on(samples: &[f32], data: &[f32], tol: f32) {
    let mut hit = vec![false; data.len() / 2];
    for s in samples.chunks(2) {
        let (k, d) = data
            .chunks(2)
            .map(|p| ((s[0] - p[0]).powi(2) + (s[1] - p[1]).powi(2)).sqrt())
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        assert!(d < tol, "sample {s:?} is {d} from the nearest data point");
        hit[k] = true;
    }
    assert!(hit.iter().all(|&h| h), "data points reached: {hit:?}");
}

#[test]
fn integrating_the_oracle_lands_on_the_data() {
    let data = points();
    let t = Tensor::from_slice(gpu(), &[5, 2], &data).unwrap();
    for schedule in [Schedule::RectifiedFlow, Schedule::Cosine] {
        let oracle = OracleField::new(schedule, &t).unwrap();
        let opts = SampleOptions {
            steps: 200,
            seed: 5,
            ..SampleOptions::new(vec![0; 64])
        };
        let samples = Sampler::start(gpu(), oracle, &[2], &opts)
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(samples.shape(), [64, 2]);
        assert_lands_on(&samples.to_vec().unwrap(), &data, 0.02);
    }
}

#[test]
fn a_host_closure_is_a_velocity_field() {
    let data = Tensor::from_slice(gpu(), &[5, 2], &points()).unwrap();
    let opts = SampleOptions {
        steps: 50,
        seed: 9,
        ..SampleOptions::new(vec![0; 32])
    };
    let mut oracle = OracleField::new(Schedule::RectifiedFlow, &data).unwrap();
    let direct = Sampler::start(gpu(), &mut oracle, &[2], &opts)
        .unwrap()
        .finish()
        .unwrap()
        .to_vec()
        .unwrap();
    // The host's closure: the oracle's velocity, computed by the host's own call.
    let mut calls = 0;
    let closure = FnField::velocity(|input: &FieldInput| {
        calls += 1;
        oracle.evaluate(input)
    });
    let hosted = Sampler::start(gpu(), closure, &[2], &opts)
        .unwrap()
        .finish()
        .unwrap()
        .to_vec()
        .unwrap();
    assert_eq!(hosted, direct);
    assert_eq!(calls, 50);
    // The same velocity given as an x0 prediction (x0 = z - t v for rectified flow).
    let data2 = data.clone();
    let mut oracle2 = OracleField::new(Schedule::RectifiedFlow, &data2).unwrap();
    let as_x0 = FnField::new(
        Schedule::RectifiedFlow,
        Prediction::X0,
        0,
        |input: &FieldInput| {
            let v = oracle2.evaluate(input)?;
            let x0 = rectiflow::ops::copy(input.z)?;
            rectiflow::ops::axpy(-(input.time as f32), &v, &x0)?;
            Ok(x0)
        },
    );
    let via_x0 = Sampler::start(gpu(), as_x0, &[2], &opts)
        .unwrap()
        .finish()
        .unwrap()
        .to_vec()
        .unwrap();
    assert_lands_on(&via_x0, &points(), 0.05);
    // An output of the wrong size, or an error of the host's, stops the sampler cleanly.
    let wrong = FnField::velocity(|_: &FieldInput| Tensor::zeros(gpu(), &[3]));
    let mut s = Sampler::start(gpu(), wrong, &[2], &opts).unwrap();
    let e = s.step().unwrap_err();
    assert!(
        matches!(e, Error::Shape(_)) && e.to_string().contains("velocity field"),
        "{e}"
    );
    let failing = FnField::velocity(|_: &FieldInput| -> rectiflow::Result<Tensor> {
        Err(Error::Config("the host's model is not ready".into()))
    });
    let e = Sampler::start(gpu(), failing, &[2], &opts)
        .unwrap()
        .finish()
        .unwrap_err();
    assert!(e.to_string().contains("not ready"), "{e}");
}
