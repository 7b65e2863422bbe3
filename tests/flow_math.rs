//! Every formula of docs/flow-math.md against an independent check: derivatives against finite
//! differences, conversions round-tripping, each row of the loss table against its plain loss
//! (the edm row with and without EDM's preconditioning),
//! sampler histograms against their densities (chi-square), the shift and its inverse, and the
//! marginal-velocity oracle (landing on data, lower-bounding the loss, satisfying the continuity
//! equation).

use rand::{Rng, SeedableRng};
use rectiflow::flow::loss::SIGMA_DATA;
use rectiflow::flow::schedule::{normal_cdf, normal_quantile, LDM_STEPS};
use rectiflow::flow::{
    shift, unified_loss, unshift, EdmScaling, Mixture, Preconditioning, Prediction, Schedule,
    TimeSampler, Weighting,
};

const SCHEDULES: [Schedule; 4] = [
    Schedule::RectifiedFlow,
    Schedule::Cosine,
    Schedule::LdmLinear,
    Schedule::Edm { pm: -1.2, ps: 1.2 },
];
const PREDICTIONS: [Prediction; 4] = [
    Prediction::Velocity,
    Prediction::Eps,
    Prediction::V,
    Prediction::X0,
];

/// Times strictly inside [0, 1], away from the LDM table's knots (its interpolant has a kink
/// at every knot, so finite differences there see two slopes).
fn interior_times() -> Vec<f64> {
    [0.013, 0.1, 0.27, 0.5, 0.73, 0.9, 0.987]
        .iter()
        .map(|t: &f64| {
            let i = (t * (LDM_STEPS - 1) as f64).floor();
            (i + 0.5) / (LDM_STEPS - 1) as f64
        })
        .collect()
}

fn close(what: &str, got: f64, want: f64, rel: f64) {
    assert!(
        (got - want).abs() <= rel * want.abs().max(1.0),
        "{what}: {got} vs {want} (difference {:.3e})",
        (got - want).abs()
    );
}

#[test]
fn normal_quantile_inverts_the_cdf() {
    // (Upper-tail p = Phi(x) keeps only ~1e-16 / (1 - p) relative precision in 1 - p, so the
    // check uses the lower tail and the centre, where p itself is exact.)
    for &x in &[-8.0, -6.0, -3.0, -1.0, -0.1, 0.0, 0.5, 2.0] {
        close(
            &format!("PhiInv(Phi({x}))"),
            normal_quantile(normal_cdf(x)),
            x,
            1e-9,
        );
    }
    assert_eq!(normal_quantile(0.0), f64::NEG_INFINITY);
    assert_eq!(normal_quantile(1.0), f64::INFINITY);
}

#[test]
fn derivatives_match_finite_differences_for_every_schedule() {
    let h = 1e-7;
    for s in SCHEDULES {
        for t in interior_times() {
            let (_, _, da, db) = s.coefficients(t);
            close(
                &format!("{} a'({t})", s.name()),
                da,
                (s.a(t + h) - s.a(t - h)) / (2.0 * h),
                1e-5,
            );
            close(
                &format!("{} b'({t})", s.name()),
                db,
                (s.b(t + h) - s.b(t - h)) / (2.0 * h),
                1e-5,
            );
            let fd = (s.lambda(t + h) - s.lambda(t - h)) / (2.0 * h);
            close(
                &format!("{} lambda'({t})", s.name()),
                s.dlambda(t),
                fd,
                1e-5,
            );
            close(
                &format!("{} lambda({t})", s.name()),
                s.lambda(t),
                (s.a(t).powi(2) / s.b(t).powi(2)).ln(),
                1e-12,
            );
        }
    }
    // Closed forms of lambda'.
    for t in interior_times() {
        close(
            "rf lambda'",
            Schedule::RectifiedFlow.dlambda(t),
            -2.0 / (t * (1.0 - t)),
            1e-12,
        );
        let pi = std::f64::consts::PI;
        close(
            "cosine lambda'",
            Schedule::Cosine.dlambda(t),
            -2.0 * pi / (pi * t).sin(),
            1e-12,
        );
    }
}

#[test]
fn schedules_at_the_endpoints() {
    let rf = Schedule::RectifiedFlow;
    assert_eq!(rf.coefficients(0.0), (1.0, 0.0, -1.0, 1.0));
    assert_eq!(rf.lambda(0.0), f64::INFINITY);
    assert_eq!(rf.lambda(1.0), f64::NEG_INFINITY);
    let c = Schedule::Cosine.coefficients(1.0);
    assert!(c.0.abs() < 1e-15 && (c.1 - 1.0).abs() < 1e-15);
    // LDM: alphabar_0 = 1 - beta_0 = 1 - 0.00085; alphabar_999 about 0.0047.
    close(
        "ldm a(0)^2",
        Schedule::LdmLinear.a(0.0).powi(2),
        1.0 - 0.00085,
        1e-12,
    );
    let ab_end = Schedule::LdmLinear.a(1.0).powi(2);
    assert!((0.004..0.006).contains(&ab_end), "alphabar_T = {ab_end}");
    // Variance preserving schedules.
    for s in [Schedule::Cosine, Schedule::LdmLinear] {
        for t in interior_times() {
            close("a^2 + b^2", s.a(t).powi(2) + s.b(t).powi(2), 1.0, 1e-12);
        }
    }
    // EDM: t ~ U(0,1) makes log b ~ N(pm, ps^2); b at the median t = 1/2 is exp(pm).
    let e = Schedule::Edm { pm: -1.2, ps: 1.2 };
    close("edm b(1/2)", e.b(0.5), (-1.2f64).exp(), 1e-12);
}

#[test]
fn conditional_velocity_is_the_time_derivative_of_z() {
    let h = 1e-7;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for s in SCHEDULES {
        for t in interior_times() {
            let (x0, eps): (f64, f64) = (rng.random_range(-2.0..2.0), rng.random_range(-2.0..2.0));
            let z = |t: f64| s.a(t) * x0 + s.b(t) * eps;
            let fd = (z(t + h) - z(t - h)) / (2.0 * h);
            let u = s.conditional_velocity(z(t), eps, t);
            close(&format!("{} u({t})", s.name()), u, fd, 1e-5);
            // The spec's warning: the misprinted second term (b / a)(lambda'/2) eps is wrong.
            let (a, b, da, _) = s.coefficients(t);
            let misprint = (da / a) * z(t) - (b / a) * 0.5 * s.dlambda(t) * eps;
            if a < 0.9 {
                // The misprint is off by a factor 1 / a (so it coincides where a = 1, as for EDM).
                assert!(
                    (misprint - fd).abs() > 1e-3 * fd.abs().max(1e-3),
                    "{}: the misprint should differ",
                    s.name()
                );
            }
        }
    }
    // For rectified flow it reduces to eps - x0.
    let rf = Schedule::RectifiedFlow;
    let (x0, eps, t) = (0.3, -1.1, 0.4);
    close(
        "rf u = eps - x0",
        rf.conditional_velocity((1.0 - t) * x0 + t * eps, eps, t),
        eps - x0,
        1e-14,
    );
}

#[test]
fn every_prediction_converts_and_round_trips() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    for s in SCHEDULES {
        for p in PREDICTIONS {
            for t in interior_times() {
                let (x0, eps): (f64, f64) =
                    (rng.random_range(-2.0..2.0), rng.random_range(-2.0..2.0));
                let (a, b, da, db) = s.coefficients(t);
                let z = a * x0 + b * eps;
                let y = p.target(&s, x0, eps, t);
                let (xh, eh) = p.to_x0_eps(&s, y, z, t);
                let what = format!("{} {} t={t}", s.name(), p.name());
                close(&format!("x0 from {what}"), xh, x0, 1e-8);
                close(&format!("eps from {what}"), eh, eps, 1e-8);
                close(
                    &format!("velocity from {what}"),
                    p.to_velocity(&s, y, z, t),
                    da * x0 + db * eps,
                    1e-8,
                );
                let (c_out, c_z) = p.eps_coefficients(&s, t);
                close(
                    &format!("eps coefficients of {what}"),
                    c_out * y + c_z * z,
                    eps,
                    1e-8,
                );
            }
        }
    }
    // Salimans-Ho on a VP schedule: eps = b z + a v, x0 = a z - b v.
    let (s, t, x0, eps) = (Schedule::Cosine, 0.3, 0.7, -0.4);
    let (a, b, _, _) = s.coefficients(t);
    let (z, v) = (a * x0 + b * eps, a * eps - b * x0);
    close("VP eps", b * z + a * v, eps, 1e-12);
    close("VP x0", a * z - b * v, x0, 1e-12);
}

#[test]
fn every_row_of_the_loss_table_equals_its_plain_loss() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let dim = 5;
    for s in SCHEDULES {
        for t in interior_times() {
            let x0: Vec<f64> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
            let eps: Vec<f64> = (0..dim).map(|_| rng.random_range(-2.0..2.0)).collect();
            let (a, b, da, db) = s.coefficients(t);
            let z: Vec<f64> = (0..dim).map(|j| a * x0[j] + b * eps[j]).collect();
            // Any network output, converted to each prediction's form and to eps_hat.
            let y: Vec<f64> = (0..dim).map(|_| rng.random_range(-2.0..2.0)).collect();
            let sq =
                |u: &[f64], v: &[f64]| u.iter().zip(v).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
            let mut rows = vec![
                (Prediction::Velocity, Weighting::Velocity),
                (Prediction::Eps, Weighting::Eps),
                (Prediction::X0, Weighting::X0),
            ];
            if s.is_variance_preserving() {
                rows.push((Prediction::V, Weighting::V));
            }
            for (p, w) in rows {
                let eps_hat: Vec<f64> =
                    (0..dim).map(|j| p.to_x0_eps(&s, y[j], z[j], t).1).collect();
                let weighted = unified_loss(&s, w, &eps_hat, &eps, t);
                let target: Vec<f64> = (0..dim).map(|j| p.target(&s, x0[j], eps[j], t)).collect();
                let plain = sq(&y, &target);
                close(
                    &format!("{} {} row at t={t}", s.name(), p.name()),
                    weighted,
                    plain,
                    1e-8,
                );
                close(
                    &format!("{} {} output weight", s.name(), p.name()),
                    w.output_weight(&s, p, t),
                    1.0,
                    1e-8,
                );
            }
            // The velocity row written out: || v_theta - (a' x0 + b' eps) ||^2.
            let eps_hat: Vec<f64> = (0..dim)
                .map(|j| Prediction::Velocity.to_x0_eps(&s, y[j], z[j], t).1)
                .collect();
            let u: Vec<f64> = (0..dim).map(|j| da * x0[j] + db * eps[j]).collect();
            close(
                "velocity MSE",
                unified_loss(&s, Weighting::Velocity, &eps_hat, &eps, t),
                sq(&y, &u),
                1e-8,
            );
        }
    }
    // EDM: with the EDM schedule, the weighted objective is EDM's F-prediction loss
    // lambda(sigma) ||D - x0||^2, lambda = (sigma^2 + sd^2) / (sigma sd)^2, times sd^2 / 2.
    let (pm, ps) = (-1.2, 1.2);
    let s = Schedule::Edm { pm, ps };
    for t in interior_times() {
        let (x0, eps, y) = (0.4, -0.9, 0.25);
        let (a, b, _, _) = s.coefficients(t);
        let z = a * x0 + b * eps;
        let (d, eps_hat) = Prediction::X0.to_x0_eps(&s, y, z, t);
        let weighted = unified_loss(&s, Weighting::Edm { pm, ps }, &[eps_hat], &[eps], t);
        let sigma = b;
        let edm =
            (sigma.powi(2) + SIGMA_DATA.powi(2)) / (sigma * SIGMA_DATA).powi(2) * (d - x0).powi(2);
        close(
            &format!("edm row at t={t}"),
            weighted,
            edm * SIGMA_DATA.powi(2) / 2.0,
            1e-8,
        );
    }
    // EDM with its preconditioning: the raw output F, D = c_skip z + c_out F. The edm row equals
    // EDM's loss lambda(sigma) ||D - x0||^2 = ||F - (x0 - c_skip z) / c_out||^2, times sd^2 / 2:
    // the factor W_t of the F-MSE is that constant at every t (the density of lambda under
    // uniform t cancels lambda'), and under the x0 weighting it is c_out^2 (||D - x0||^2).
    let pre = Preconditioning::Edm;
    for t in interior_times() {
        let (x0, eps, f) = (0.4, -0.9, 0.25);
        let (a, b, _, _) = s.coefficients(t);
        let z = a * x0 + b * eps;
        let (d, eps_hat) = pre.to_x0_eps(&s, Prediction::X0, f, z, t);
        let weighted = unified_loss(&s, Weighting::Edm { pm, ps }, &[eps_hat], &[eps], t);
        let sigma = b;
        let lambda = (sigma.powi(2) + SIGMA_DATA.powi(2)) / (sigma * SIGMA_DATA).powi(2);
        let edm = lambda * (d - x0).powi(2);
        let target = pre.target(&s, Prediction::X0, x0, eps, t);
        let c = EdmScaling::at(sigma);
        close(
            "D = c_skip z + c_out F",
            d,
            c.c_skip * z + c.c_out * f,
            1e-12,
        );
        close("lambda c_out^2 = 1", lambda * c.c_out.powi(2), 1.0, 1e-12);
        close("EDM loss is the F-MSE", edm, (f - target).powi(2), 1e-10);
        let what = format!("preconditioned edm row at t={t}");
        close(&what, weighted, edm * SIGMA_DATA.powi(2) / 2.0, 1e-8);
        close(
            "preconditioned edm output weight",
            Weighting::Edm { pm, ps }.preconditioned_output_weight(&s, Prediction::X0, pre, t),
            SIGMA_DATA.powi(2) / 2.0,
            1e-8,
        );
        close(
            "preconditioned x0 output weight",
            Weighting::X0.preconditioned_output_weight(&s, Prediction::X0, pre, t),
            c.c_out.powi(2),
            1e-8,
        );
    }
    // Closed forms of the table: t / (1 - t) for rf velocity; sech(lambda / 2) and
    // exp(-lambda / 2) up to constants for cosine eps and v.
    let pi = std::f64::consts::PI;
    for t in interior_times() {
        close(
            "rf velocity weight",
            Weighting::Velocity.weight(&Schedule::RectifiedFlow, t),
            t / (1.0 - t),
            1e-10,
        );
        let l = Schedule::Cosine.lambda(t);
        close(
            "cosine eps weight",
            Weighting::Eps.weight(&Schedule::Cosine, t),
            1.0 / (l / 2.0).cosh() / pi,
            1e-10,
        );
        close(
            "cosine v weight",
            Weighting::V.weight(&Schedule::Cosine, t),
            2.0 / pi * (-l / 2.0).exp(),
            1e-10,
        );
    }
}

/// Chi-square statistic of `n` draws against the sampler's CDF over `bins` equal bins.
fn chi_square(sampler: TimeSampler, draws: &[f64], bins: usize) -> f64 {
    let mut counts = vec![0usize; bins];
    for &t in draws {
        counts[((t * bins as f64) as usize).min(bins - 1)] += 1;
    }
    let n = draws.len() as f64;
    (0..bins)
        .map(|i| {
            let expect = n
                * (sampler.cdf((i + 1) as f64 / bins as f64) - sampler.cdf(i as f64 / bins as f64));
            (counts[i] as f64 - expect).powi(2) / expect
        })
        .sum()
}

/// Chi-square critical value for 39 degrees of freedom at significance 0.001.
const CHI2_39_AT_0001: f64 = 72.05;

pub fn draw(sampler: TimeSampler, n: usize, seed: u64) -> Vec<f64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let u: f64 = rng.random();
            let (u1, u2): (f64, f64) = (rng.random_range(f64::MIN_POSITIVE..1.0), rng.random());
            let normal = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            sampler.map(u, normal)
        })
        .collect()
}

#[test]
fn time_samplers_match_their_densities() {
    let samplers = [
        TimeSampler::Uniform,
        TimeSampler::LogNormal { m: 0.0, s: 1.0 },
        TimeSampler::LogNormal { m: 0.5, s: 0.6 },
        TimeSampler::Mode { s: 1.29 },
        TimeSampler::Mode { s: -0.5 },
        TimeSampler::CosMap,
        TimeSampler::UShape { a: 4.0 },
        TimeSampler::UShape { a: 0.5 },
    ];
    for sampler in samplers {
        // Goodness of fit: 100k draws at a fixed seed, 40 bins, significance 0.001.
        let draws = draw(sampler, 100_000, 7);
        assert!(
            draws.iter().all(|t| (0.0..=1.0).contains(t)),
            "{}: t outside [0, 1]",
            sampler.name()
        );
        let chi2 = chi_square(sampler, &draws, 40);
        assert!(
            chi2 < CHI2_39_AT_0001,
            "{}: chi-square {chi2:.1} over {CHI2_39_AT_0001}",
            sampler.name()
        );
        // The density is the CDF's derivative and integrates to 1.
        let h = 1e-6;
        let mut integral = 0.0;
        let steps = 20_000;
        for i in 0..steps {
            let t = (i as f64 + 0.5) / steps as f64;
            integral += sampler.density(t) / steps as f64;
            if i % 1000 == 500 {
                let fd = (sampler.cdf(t + h) - sampler.cdf(t - h)) / (2.0 * h);
                close(
                    &format!("{} density at {t}", sampler.name()),
                    sampler.density(t),
                    fd,
                    1e-5,
                );
            }
        }
        close(&format!("{} integral", sampler.name()), integral, 1.0, 1e-3);
    }
    // A wrong sampler fails the same test (the test can fail).
    let draws = draw(TimeSampler::LogNormal { m: 0.0, s: 1.0 }, 100_000, 7);
    assert!(chi_square(TimeSampler::LogNormal { m: 0.1, s: 1.0 }, &draws, 40) > CHI2_39_AT_0001);
}

#[test]
fn invalid_sampler_parameters_are_rejected_with_the_valid_range() {
    for bad in [
        "mode:1.8",
        "mode:-1.5",
        "lognorm:0,0",
        "lognorm:0,-1",
        "lognorm:x",
        "beta:2",
        "ushape:0",
        "ushape:-2",
        "ushape:nan",
        "grid:0",
        "grid:1001",
        "grid:1.5",
    ] {
        let err = TimeSampler::parse(bad).unwrap_err().to_string();
        assert!(err.contains(bad.split(':').next().unwrap()), "{bad}: {err}");
    }
    assert!(TimeSampler::parse("mode:1.8")
        .unwrap_err()
        .to_string()
        .contains("1.7519"));
    assert_eq!(
        TimeSampler::parse("mode:1.29").unwrap(),
        TimeSampler::Mode { s: 1.29 }
    );
    assert_eq!(
        TimeSampler::parse("lognorm:0,1").unwrap(),
        TimeSampler::LogNormal { m: 0.0, s: 1.0 }
    );
    assert_eq!(
        TimeSampler::parse("ushape:4").unwrap(),
        TimeSampler::UShape { a: 4.0 }
    );
    assert_eq!(
        TimeSampler::parse("grid:4").unwrap(),
        TimeSampler::Grid { k: 4 }
    );
    assert!(Schedule::parse("edm:-1.2,0").is_err() && Schedule::parse("linear").is_err());
    assert_eq!(
        Schedule::parse("edm:-1.2,1.2").unwrap(),
        Schedule::Edm { pm: -1.2, ps: 1.2 }
    );
    assert!(Prediction::parse("noise").is_err());
}

#[test]
fn shift_and_its_inverse() {
    for alpha in [0.5, 1.0, 3.0] {
        assert_eq!(shift(0.0, alpha), 0.0);
        assert_eq!(shift(1.0, alpha), 1.0);
        for t in interior_times() {
            close(
                "unshift(shift(t))",
                unshift(shift(t, alpha), alpha),
                t,
                1e-12,
            );
            close(
                "shift(unshift(t))",
                shift(unshift(t, alpha), alpha),
                t,
                1e-12,
            );
            // For rf the log-SNR moves by -2 log alpha.
            let rf = Schedule::RectifiedFlow;
            close(
                "lambda shift",
                rf.lambda(shift(t, alpha)),
                rf.lambda(t) - 2.0 * alpha.ln(),
                1e-10,
            );
        }
    }
    assert!(shift(0.5, 3.0) > 0.5, "alpha > 1 moves t towards noise");
}

#[test]
fn the_oracle_is_the_conditional_mean_and_lands_on_data() {
    let data = [0.5, 0.5, -0.7, 0.2, 0.1, -0.9, 0.9, -0.4, -0.3, -0.3];
    let mix = Mixture::points(2, &data);
    // rf: v* = (z - E[x0 | z]) / t with E[x0|z] = sum softmax(-|z - (1-t) x0_k|^2 / (2 t^2)) x0_k.
    let rf = Schedule::RectifiedFlow;
    let (z, t) = ([0.3, -0.2], 0.6);
    let logits: Vec<f64> = data
        .chunks(2)
        .map(|x| {
            -((z[0] - (1.0 - t) * x[0]).powi(2) + (z[1] - (1.0 - t) * x[1]).powi(2)) / (2.0 * t * t)
        })
        .collect();
    let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
    let sw: f64 = w.iter().sum();
    let v = mix.velocity(&rf, &z, t);
    for j in 0..2 {
        let ex0: f64 = data.chunks(2).zip(&w).map(|(x, w)| x[j] * w / sw).sum();
        close("oracle = (z - E[x0|z]) / t", v[j], (z[j] - ex0) / t, 1e-12);
    }
    // Integrating v* from noise (Heun, 2000 uniform steps from t = 0.999 to 1e-3) lands on a data
    // point, for every schedule. (EDM's noise level diverges as t -> 1: b(0.999) = 12 already.)
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    for s in SCHEDULES {
        for _ in 0..5 {
            let t_start = 0.999;
            let b1 = s.b(t_start);
            let mut z = vec![
                b1 * rng.random_range(-2.0..2.0),
                b1 * rng.random_range(-2.0..2.0),
            ];
            let steps = 2000;
            let times: Vec<f64> = (0..=steps)
                .map(|i| t_start - (t_start - 1e-3) * i as f64 / steps as f64)
                .collect();
            for w in times.windows(2) {
                let (t0, t1) = (w[0], w[1]);
                let v0 = mix.velocity(&s, &z, t0);
                let zp: Vec<f64> = (0..2).map(|j| z[j] + (t1 - t0) * v0[j]).collect();
                let v1 = mix.velocity(&s, &zp, t1);
                z = (0..2)
                    .map(|j| z[j] + 0.5 * (t1 - t0) * (v0[j] + v1[j]))
                    .collect();
            }
            // z = a x0 + b eps at the end: within a few b / a of a data point (the LDM schedule
            // keeps b = 0.03 at t = 0; the others reach 1e-3 to 7e-3).
            let (a, b) = (s.a(1e-3), s.b(1e-3));
            let nearest = data
                .chunks(2)
                .map(|x| ((z[0] / a - x[0]).powi(2) + (z[1] / a - x[1]).powi(2)).sqrt())
                .fold(f64::INFINITY, f64::min);
            assert!(
                nearest < 4.0 * b / a + 1e-3,
                "{}: landed {nearest} from the nearest data point (b/a = {})",
                s.name(),
                b / a
            );
        }
    }
}

#[test]
fn no_predictor_beats_the_oracle_in_flow_matching_loss() {
    let data = [0.5, 0.5, -0.7, 0.2, 0.1, -0.9, 0.9, -0.4];
    let mix = Mixture::points(2, &data);
    let rf = Schedule::RectifiedFlow;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let n = 40_000;
    let (mut oracle, mut zero, mut shifted, mut mean_pred) = (0.0, 0.0, 0.0, 0.0);
    for _ in 0..n {
        let k = rng.random_range(0..4);
        let x0 = [data[2 * k], data[2 * k + 1]];
        let eps: Vec<f64> = (0..2)
            .map(|_| {
                let (u1, u2): (f64, f64) = (rng.random_range(f64::MIN_POSITIVE..1.0), rng.random());
                (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
            })
            .collect();
        let t: f64 = rng.random_range(0.02..0.98);
        let z: Vec<f64> = (0..2).map(|j| (1.0 - t) * x0[j] + t * eps[j]).collect();
        let u: Vec<f64> = (0..2).map(|j| eps[j] - x0[j]).collect();
        let v = mix.velocity(&rf, &z, t);
        let sq = |f: &[f64]| (0..2).map(|j| (f[j] - u[j]).powi(2)).sum::<f64>();
        oracle += sq(&v) / n as f64;
        zero += sq(&[0.0, 0.0]) / n as f64;
        shifted += sq(&[v[0] + 0.2, v[1] - 0.2]) / n as f64;
        // The velocity towards the data mean: right on average, wrong per sample.
        mean_pred += sq(&[(z[0] - 0.2) / t, (z[1] + 0.05) / t]) / n as f64;
    }
    assert!(
        oracle < zero && oracle < shifted && oracle < mean_pred,
        "oracle {oracle}, zero {zero}, shifted {shifted}, mean {mean_pred}"
    );
    // The shifted oracle pays exactly its squared offset (0.08) on average.
    close("shifted - oracle", shifted - oracle, 0.08, 0.02);
}

#[test]
fn the_marginal_velocity_satisfies_the_continuity_equation() {
    // 1-D Gaussian mixture: p_t is known exactly, so d p_t / dt + d (p_t v*) / dz = 0 can be
    // checked by finite differences on a grid.
    let mix = Mixture {
        dim: 1,
        means: vec![-1.0, 0.5, 2.0],
        sigmas: vec![0.3, 0.1, 0.5],
        weights: vec![0.2, 0.5, 0.3],
    };
    for s in SCHEDULES {
        for t in [0.2, 0.5, 0.8].map(|t: f64| {
            let i = (t * (LDM_STEPS - 1) as f64).floor();
            (i + 0.5) / (LDM_STEPS - 1) as f64
        }) {
            let (ht, hz) = (1e-6, 1e-4);
            let mut worst: f64 = 0.0;
            let mut scale: f64 = 0.0;
            for i in 0..=80 {
                let z = -4.0 + 8.0 * i as f64 / 80.0;
                let dp_dt =
                    (mix.density(&s, &[z], t + ht) - mix.density(&s, &[z], t - ht)) / (2.0 * ht);
                let flux = |z: f64| mix.density(&s, &[z], t) * mix.velocity(&s, &[z], t)[0];
                let dflux = (flux(z + hz) - flux(z - hz)) / (2.0 * hz);
                worst = worst.max((dp_dt + dflux).abs());
                scale = scale.max(dp_dt.abs());
            }
            assert!(
                worst < 1e-5 * scale.max(1.0),
                "{} t={t}: residual {worst:.3e} (scale {scale:.3e})",
                s.name()
            );
        }
    }
}
