//! The adaptive solver (`--solver rk45`, `rectiflow::rk45`) and the path straightness: its
//! kernels against CPU f64 references; on a linear field it agrees with an f64 Dormand-Prince
//! (tests/common/reference.rs) and with the closed form; guidance and the x0 clamp are part of
//! its velocity; on the exact velocity of a data set it lands on the data, and Euler and Heun
//! converge to its result at first and second order; the number of evaluations is counted for
//! every solver and grows as the tolerance tightens; bad tolerances are refused by name; the
//! straightness is ~0 for straight paths, clearly positive for curved ones, and matches the
//! same quadrature in f64.

mod common;

use common::reference::dopri5;
use common::{gpu, rand_vec};
use rectiflow::flow::oracle::Mixture;
use rectiflow::flow::{shift, Prediction, Schedule};
use rectiflow::ops;
use rectiflow::rk45::{DEFAULT_ATOL, DEFAULT_RTOL, T_END};
use rectiflow::sample::{
    FieldInput, FnField, OracleField, SampleOptions, Sampler, Solver, T_START,
};
use rectiflow::{Error, Tensor};

fn rk45(labels: Vec<u32>, rtol: f64, atol: f64) -> SampleOptions {
    SampleOptions {
        solver: Solver::Rk45,
        rtol,
        atol,
        seed: 3,
        ..SampleOptions::new(labels)
    }
}

#[test]
fn the_solver_kernels_match_f64_references() {
    for n in [1usize, 7, 63, 65, 127, 257, 5000] {
        let inputs: Vec<Vec<f32>> = (0..7).map(|i| rand_vec(n, 40 + i as u64)).collect();
        let t: Vec<Tensor> = inputs
            .iter()
            .map(|v| Tensor::from_slice(gpu(), &[n], v).unwrap())
            .collect();
        let c = [0.5f32, -1.25, 2.0, 0.125, -0.75, 3.0];
        for terms in 0..=6 {
            for beta in [0.0f32, 1.0, -0.5] {
                if terms == 0 && beta == 0.0 {
                    continue;
                }
                let list: Vec<(f32, &Tensor)> = (0..terms).map(|j| (c[j], &t[j + 1])).collect();
                let base = (beta != 0.0).then_some((beta, &t[0]));
                let got = ops::linear_combination(base, &list)
                    .unwrap()
                    .to_vec()
                    .unwrap();
                for (e, g) in got.iter().enumerate() {
                    let want = beta as f64 * inputs[0][e] as f64
                        + (0..terms)
                            .map(|j| c[j] as f64 * inputs[j + 1][e] as f64)
                            .sum::<f64>();
                    let scale = beta.abs() as f64 * (inputs[0][e] as f64).abs()
                        + (0..terms)
                            .map(|j| (c[j] as f64 * inputs[j + 1][e] as f64).abs())
                            .sum::<f64>();
                    assert!(
                        (*g as f64 - want).abs() <= 8.0 * f32::EPSILON as f64 * scale + 1e-30,
                        "n {n}, {terms} terms, base {beta}, element {e}: {g} vs {want}"
                    );
                }
            }
        }
        let (atol, rtol) = (1e-3f32, 1e-2f32);
        let w = ops::error_weights(&t[0], &t[1], &t[2], atol, rtol)
            .unwrap()
            .to_vec()
            .unwrap();
        for e in 0..n {
            let (x, z, zn) = (
                inputs[0][e] as f64,
                inputs[1][e] as f64,
                inputs[2][e] as f64,
            );
            let want = (x / (atol as f64 + rtol as f64 * z.abs().max(zn.abs()))).powi(2);
            assert!(
                (w[e] as f64 - want).abs() <= 1e-5 * want + 1e-30,
                "error_weights n {n} element {e}: {} vs {want}",
                w[e]
            );
        }
    }
    // Misuse is an error, not a panic.
    let a = Tensor::zeros(gpu(), &[4]).unwrap();
    let b = Tensor::zeros(gpu(), &[5]).unwrap();
    assert!(ops::linear_combination(None, &[]).is_err());
    assert!(ops::linear_combination(Some((1.0, &a)), &[(1.0, &b)]).is_err());
    assert!(ops::linear_combination(None, &[(1.0, &a); 7]).is_err());
    assert!(ops::error_weights(&a, &a, &b, 1.0, 1.0).is_err());
}

/// `dz/dt = (ALPHA + BETA t) z`: `z(0) = z(t0) exp(-(ALPHA t0 + BETA t0^2 / 2))`.
const ALPHA: f64 = 1.5;
const BETA: f64 = -2.0;

#[test]
fn rk45_on_a_linear_field_agrees_with_f64_dormand_prince_and_the_closed_form() {
    let n = 16;
    for (rtol, atol) in [(1e-5, 1e-5), (1e-3, 1e-4)] {
        let field = FnField::velocity(|input: &FieldInput| {
            ops::scale(input.z, (ALPHA + BETA * input.time) as f32)
        });
        let opts = SampleOptions {
            shift: 3.0,
            ..rk45(vec![0; n], rtol, atol)
        };
        let mut s = Sampler::start(gpu(), field, &[3], &opts).unwrap();
        let t0 = shift(T_START, 3.0);
        assert_eq!(
            (s.time(), s.times(), s.steps(), s.is_done()),
            (t0, &[t0][..], 0, false)
        );
        let start: Vec<f64> = s
            .current()
            .unwrap()
            .to_vec()
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect();
        while s.step().unwrap() {
            // The stepwise view: accepted steps so far, their times strictly decreasing.
            assert_eq!(s.steps(), s.times().len() - 1);
            assert_eq!(s.steps_taken(), s.steps());
            assert_eq!(s.time(), *s.times().last().unwrap());
            assert!(s.times().windows(2).all(|w| w[1] < w[0]));
        }
        assert!(!s.step().unwrap(), "a finished sampler does nothing");
        let times = s.times().to_vec();
        assert_eq!(times[times.len() - 2..], [T_END, 0.0]);
        let got = s.current().unwrap().to_vec().unwrap();
        let reference = dopri5(
            |z, t| z.iter().map(|v| (ALPHA + BETA * t) * v).collect(),
            &start,
            t0,
            T_END,
            rtol,
            atol,
        );
        // The same steps as the f64 reference: its error norms differ from the GPU's f32 ones
        // by rounding (the error estimate is a difference of nearly equal sums), which moves
        // the step sizes a little.
        assert_eq!(
            times.len(),
            reference.times.len(),
            "{rtol}: {times:?}\n{:?}",
            reference.times
        );
        for (a, b) in times.iter().zip(&reference.times) {
            assert!((a - b).abs() <= 1e-3 * b, "{rtol}: {a} vs {b}");
        }
        assert_eq!(s.nfe(), reference.nfe);
        assert_eq!(s.rejected_steps(), reference.rejected);
        assert_eq!(s.nfe(), 1 + 6 * (s.steps() - 1 + s.rejected_steps()));
        let growth = (-(ALPHA * t0 + BETA * t0 * t0 / 2.0)).exp();
        let mut worst_ref: f64 = 0.0;
        let mut worst_exact: f64 = 0.0;
        for i in 0..got.len() {
            let exact = start[i] * growth;
            let scale = atol + rtol * exact.abs();
            worst_ref = worst_ref.max((got[i] as f64 - reference.z[i]).abs() / scale);
            worst_exact = worst_exact.max((got[i] as f64 - exact).abs() / scale);
            // The f64 reference itself is within the tolerance scale of the closed form.
            assert!(
                (reference.z[i] - exact).abs() <= 10.0 * scale,
                "{rtol}: {} vs {exact}",
                reference.z[i]
            );
        }
        eprintln!(
            "rtol {rtol}: {} steps, GPU vs f64 {worst_ref}, vs exact {worst_exact} tolerance scales",
            s.steps()
        );
        assert!(
            worst_ref <= 1.0,
            "rtol {rtol}: GPU vs f64 Dormand-Prince: {worst_ref}"
        );
        assert!(
            worst_exact <= 10.0,
            "rtol {rtol}: GPU vs the closed form: {worst_exact} tolerance scales"
        );
    }
}

#[test]
fn rk45_applies_guidance_and_the_x0_clamp() {
    // Label l moves z at rate g_l z (g of the null label 2: 0.5); guided with weight w the rate
    // is w g_c + (1 - w) g_u, so the end is the start times exp(-rate t0).
    let g = [1.0f64, -0.5, 0.5];
    let field = FnField::new(
        Schedule::RectifiedFlow,
        Prediction::Velocity,
        2,
        |input: &FieldInput| {
            let dim = input.z.shape()[1];
            let rates: Vec<f32> = input
                .labels
                .iter()
                .flat_map(|&l| std::iter::repeat_n(g[l as usize] as f32, dim))
                .collect();
            ops::mul(
                input.z,
                &Tensor::from_slice(gpu(), input.z.shape(), &rates)?,
            )
        },
    );
    let w = 3.0;
    let opts = SampleOptions {
        cfg: w as f32,
        ..rk45(vec![0, 1, 2, 0], 1e-6, 1e-6)
    };
    let mut s = Sampler::start(gpu(), field, &[2], &opts).unwrap();
    assert!(s.is_guided());
    let start = s.current().unwrap().to_vec().unwrap();
    while s.step().unwrap() {}
    let end = s.current().unwrap().to_vec().unwrap();
    let t0 = T_START;
    for (i, (&z0, &z)) in start.iter().zip(&end).enumerate() {
        let label = [0, 1, 2, 0][i / 2];
        let rate = w * g[label] + (1.0 - w) * g[2];
        let want = z0 as f64 * (-rate * t0).exp();
        assert!(
            (z as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
            "sample {}: {z} vs {want}",
            i / 2
        );
    }
    // The clamp: data at +-2 and x0_hat clamped to [-1, 1] land on +-1.
    let data = Tensor::from_slice(gpu(), &[2, 1], &[2.0, -2.0]).unwrap();
    let oracle = OracleField::new(Schedule::RectifiedFlow, &data).unwrap();
    let opts = SampleOptions {
        clip_x0: Some(1.0),
        ..rk45(vec![0; 32], DEFAULT_RTOL, DEFAULT_ATOL)
    };
    let end = Sampler::start(gpu(), oracle, &[1], &opts)
        .unwrap()
        .finish()
        .unwrap()
        .to_vec()
        .unwrap();
    for z in end {
        assert!((z.abs() - 1.0).abs() < 1e-3, "{z} should be on +-1");
    }
}

/// Five points of a 2-D data set.
fn points() -> Vec<f32> {
    vec![1.5, 0.0, -1.0, 1.0, -1.0, -1.0, 0.3, 0.8, 0.0, -1.6]
}

fn oracle(data: &[f32]) -> OracleField {
    let t = Tensor::from_slice(gpu(), &[data.len() / 2, 2], data).unwrap();
    OracleField::new(Schedule::RectifiedFlow, &t).unwrap()
}

/// RMS distance between two sets of points.
fn rms(a: &[f32], b: &[f32]) -> f64 {
    let sq: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    (sq / (a.len() / 2) as f64).sqrt()
}

#[test]
fn on_the_oracle_rk45_lands_on_the_data_and_euler_and_heun_converge_to_it_at_their_orders() {
    let data = points();
    let n = 64;
    let mut s = Sampler::start(gpu(), oracle(&data), &[2], &rk45(vec![0; n], 1e-6, 1e-6)).unwrap();
    while s.step().unwrap() {}
    let exact = s.current().unwrap().to_vec().unwrap();
    let mut hit = [false; 5];
    for p in exact.chunks(2) {
        let (k, d) = data
            .chunks(2)
            .map(|q| ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt())
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        assert!(
            d < 2e-4,
            "rk45 sample {p:?} is {d} from the nearest data point"
        );
        hit[k] = true;
    }
    assert!(hit.iter().all(|&h| h), "data points reached: {hit:?}");
    // Euler and Heun land on the same points. (Their errors on this field say nothing of their
    // order: it contracts every error made before its posterior settles on one point, so Euler
    // is off by 0.16, 7e-8 and 6e-14 at 8, 16 and 32 steps. The orders are measured below on a
    // smooth field.)
    for solver in [Solver::Euler, Solver::Heun] {
        let opts = SampleOptions {
            steps: 64,
            solver,
            ..rk45(vec![0; n], DEFAULT_RTOL, DEFAULT_ATOL)
        };
        let z = Sampler::start(gpu(), oracle(&data), &[2], &opts)
            .unwrap()
            .finish()
            .unwrap();
        let e = rms(&z.to_vec().unwrap(), &exact);
        assert!(e < 1e-4, "{solver:?} 64 steps: {e} from rk45");
    }
}

/// A smooth nonlinear velocity: `3 (1 + t) silu(z)`.
fn smooth() -> FnField<impl FnMut(&FieldInput) -> rectiflow::Result<Tensor>> {
    FnField::velocity(|input: &FieldInput| {
        ops::scale(&ops::silu(input.z)?, (3.0 + 3.0 * input.time) as f32)
    })
}

#[test]
fn euler_and_heun_converge_to_rk45_at_first_and_second_order() {
    let n = 64;
    let mut s = Sampler::start(gpu(), smooth(), &[2], &rk45(vec![0; n], 1e-6, 1e-6)).unwrap();
    while s.step().unwrap() {}
    let exact = s.current().unwrap().to_vec().unwrap();
    for (solver, order) in [(Solver::Euler, 1.0), (Solver::Heun, 2.0)] {
        let errors: Vec<f64> = [8, 16, 32, 64]
            .iter()
            .map(|&steps| {
                let opts = SampleOptions {
                    steps,
                    solver,
                    ..rk45(vec![0; n], DEFAULT_RTOL, DEFAULT_ATOL)
                };
                let z = Sampler::start(gpu(), smooth(), &[2], &opts)
                    .unwrap()
                    .finish()
                    .unwrap();
                rms(&z.to_vec().unwrap(), &exact)
            })
            .collect();
        eprintln!("{solver:?}: {errors:?}");
        for pair in errors.windows(2) {
            let observed = (pair[0] / pair[1]).log2();
            assert!(
                (observed - order).abs() < 0.25,
                "{solver:?}: errors {errors:?} shrink at order {observed}, not {order}"
            );
        }
    }
}

#[test]
fn nfe_is_counted_for_every_solver_and_grows_as_the_tolerance_tightens() {
    let data = points();
    for (solver, steps, nfe) in [(Solver::Euler, 7, 7), (Solver::Heun, 7, 13)] {
        let opts = SampleOptions {
            steps,
            solver,
            ..SampleOptions::new(vec![0; 4])
        };
        let mut s = Sampler::start(gpu(), oracle(&data), &[2], &opts).unwrap();
        assert_eq!(s.nfe(), 0);
        while s.step().unwrap() {}
        assert_eq!(s.nfe(), nfe, "{solver:?}");
    }
    // A guided evaluation of the doubled batch counts once.
    let mut calls = 0;
    let field = FnField::new(
        Schedule::RectifiedFlow,
        Prediction::Velocity,
        3,
        |input: &FieldInput| {
            calls += 1;
            ops::scale(input.z, -1.0)
        },
    );
    let opts = SampleOptions {
        cfg: 2.0,
        ..rk45(vec![0, 1, 2], 1e-4, 1e-4)
    };
    let mut s = Sampler::start(gpu(), field, &[2], &opts).unwrap();
    while s.step().unwrap() {}
    let nfe = s.nfe();
    drop(s);
    assert_eq!(nfe, calls);
    let mut last = 0;
    for tol in [1e-3, 1e-4, 1e-5, 1e-6] {
        let mut s = Sampler::start(gpu(), smooth(), &[2], &rk45(vec![0; 64], tol, tol)).unwrap();
        while s.step().unwrap() {}
        assert_eq!(s.nfe(), 1 + 6 * (s.steps() - 1 + s.rejected_steps()));
        assert!(
            s.nfe() > last,
            "tolerance {tol}: {} evaluations, not more than {last}",
            s.nfe()
        );
        eprintln!("smooth field, tolerance {tol}: NFE {}", s.nfe());
        last = s.nfe();
    }
    // The oracle's step count at loose tolerances is set by its stiffness near t = 0 (its
    // Lipschitz constant is 1 / t): it grows too, but not at every tenfold.
    let nfe = |tol: f64| {
        let opts = rk45(vec![0; 64], tol, tol);
        let mut s = Sampler::start(gpu(), oracle(&data), &[2], &opts).unwrap();
        while s.step().unwrap() {}
        s.nfe()
    };
    let (loose, tight) = (nfe(1e-2), nfe(1e-6));
    eprintln!("oracle: NFE {loose} at 1e-2, {tight} at 1e-6");
    assert!(
        tight > loose + 60,
        "oracle: NFE {loose} at 1e-2, {tight} at 1e-6"
    );
}

#[test]
fn bad_tolerances_are_refused_by_name() {
    assert_eq!(Solver::parse("rk45").unwrap(), Solver::Rk45);
    assert_eq!(Solver::Rk45.name(), "rk45");
    let e = Solver::parse("rk4").unwrap_err().to_string();
    assert!(e.contains("euler, heun or rk45"), "{e}");
    for bad in [0.0, -1e-5, f64::NAN, f64::INFINITY] {
        for (flag, opts) in [
            ("--rtol", rk45(vec![0], bad, 1e-5)),
            ("--atol", rk45(vec![0], 1e-5, bad)),
        ] {
            let e = opts.validate().unwrap_err();
            assert!(
                matches!(e, Error::Config(_)) && e.to_string().contains(flag),
                "{e}"
            );
            assert!(Sampler::start(gpu(), oracle(&points()), &[2], &opts).is_err());
        }
    }
    // Older serialised options (without tolerances) load with the defaults.
    let mut json = serde_json::to_value(SampleOptions::new(vec![0])).unwrap();
    json.as_object_mut().unwrap().remove("rtol");
    json.as_object_mut().unwrap().remove("atol");
    let back: SampleOptions = serde_json::from_value(json).unwrap();
    assert_eq!((back.rtol, back.atol), (DEFAULT_RTOL, DEFAULT_ATOL));
}

/// The straightness of rk45 trajectories over the oracle of `data` (2-D), with the f64
/// reference's value for the same starting points.
fn straightness(data: &[f32], n: usize, tol: f64) -> (f64, f64) {
    let opts = rk45(vec![0; n], tol, tol);
    let mut s = Sampler::start(gpu(), oracle(data), &[2], &opts).unwrap();
    s.record_straightness().unwrap();
    let start: Vec<f64> = s
        .current()
        .unwrap()
        .to_vec()
        .unwrap()
        .iter()
        .map(|&v| v as f64)
        .collect();
    assert!(s.straightness().is_err(), "not finished yet");
    while s.step().unwrap() {}
    let gpu_value = s.straightness().unwrap();
    let mixture = Mixture::points(2, &data.iter().map(|&v| v as f64).collect::<Vec<_>>());
    // One state of every sample, as on the GPU (whose error norm is over all of them).
    let reference = dopri5(
        |z, t| {
            z.chunks(2)
                .flat_map(|p| mixture.velocity(&Schedule::RectifiedFlow, p, t))
                .collect()
        },
        &start,
        T_START,
        T_END,
        tol,
        tol,
    );
    eprintln!(
        "straightness of {} points at {tol}: GPU {gpu_value}, f64 {}",
        data.len() / 2,
        reference.straightness
    );
    (gpu_value, reference.straightness)
}

#[test]
fn straightness_is_zero_for_straight_paths_and_matches_f64() {
    // One data point: every path is a straight line at constant speed.
    // (At looser tolerances the oracle's velocity near t = 0, (z - x) / t, magnifies the f32
    // trajectory's error by 1 / t: S is 4e-5 at 1e-5 and 0.1 at 1e-3 for this one point,
    // where the f64 reference gives 1e-11. A network's velocity has no such singularity.)
    let (one, one_ref) = straightness(&[0.7, -0.3], 64, 1e-6);
    assert!(one.abs() < 1e-7, "one point: S = {one}");
    assert!(one_ref.abs() < 1e-9, "one point, f64: S = {one_ref}");
    // Two points: paths bend towards one of them.
    let (two, two_ref) = straightness(&[1.0, 1.0, -1.0, -1.0], 64, 1e-6);
    assert!(two > 0.05, "two points: S = {two}");
    assert!(
        (two - two_ref).abs() <= 1e-3 * two_ref,
        "two points: GPU {two} vs f64 {two_ref}"
    );
    // Only rk45 records it, and only from the start.
    let opts = SampleOptions::new(vec![0; 4]);
    let mut s = Sampler::start(gpu(), oracle(&points()), &[2], &opts).unwrap();
    assert!(s
        .record_straightness()
        .unwrap_err()
        .to_string()
        .contains("rk45"));
    let mut s2 = Sampler::start(
        gpu(),
        oracle(&points()),
        &[2],
        &rk45(vec![0; 4], 1e-3, 1e-3),
    )
    .unwrap();
    s2.step().unwrap();
    assert!(s2.record_straightness().is_err());
    assert!(s.step().unwrap());
}

#[test]
fn eval_measures_the_straightness_of_a_network_along_rk45_paths() {
    use rectiflow::data::Toy;
    use rectiflow::eval::path_straightness;
    use rectiflow::{Pipeline, Trainer, Weights};
    let data = Toy::Moons.sample(2000, 1).unwrap();
    let mut tr = Trainer::new(gpu(), common::tiny::config(&data, "mlp", 32), &data).unwrap();
    for _ in 0..20 {
        tr.step().unwrap();
    }
    let pipe = Pipeline::from_trainer(&tr, Weights::Raw).unwrap();
    // Asked with Euler options: the paths are integrated with rk45 all the same.
    let opts = SampleOptions {
        rtol: 1e-4,
        atol: 1e-4,
        ..pipe.options(pipe.labels(50))
    };
    let st = path_straightness(&pipe, &opts, 12).unwrap();
    let mut s = pipe
        .sampler(&SampleOptions {
            solver: Solver::Rk45,
            rtol: 1e-4,
            atol: 1e-4,
            ..pipe.options(pipe.labels(12))
        })
        .unwrap();
    s.record_straightness().unwrap();
    while s.step().unwrap() {}
    assert_eq!(
        (st.value, st.samples, st.nfe, st.steps),
        (s.straightness().unwrap(), 12, s.nfe(), s.steps())
    );
    // A barely trained network's field is nearly uniform, so its paths are nearly (not
    // exactly) straight: S came out 9.6e-4.
    assert!(st.value > 1e-5 && st.value < 0.1, "{st:?}");
    // Fewer samples than asked for: all of them.
    assert_eq!(path_straightness(&pipe, &opts, 500).unwrap().samples, 50);
}
