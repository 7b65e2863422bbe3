//! The GPU flow kernels against the f64 reference (`rectiflow::flow`) and the CPU Philox
//! (`rectiflow::rng`): the forward process for every schedule and prediction, the time samplers'
//! histograms, the RNG's statistics and shape independence, the fused weighted loss and its
//! gradient for matched and mismatched weightings, and the oracle.

mod common;

use common::{assert_rel, f64s, gpu, rand_vec, upload};
use rectiflow::flow::{Mixture, Prediction, Schedule, TimeSampler, Weighting};
use rectiflow::ops;
use rectiflow::rng::{normal, uniform, words};
use rectiflow::shaders::stream::{EPS as STREAM_EPS, T as STREAM_T};
use rectiflow::train::{FlowConfig, Objective};

const SEED: u64 = 0x1234_5678_9abc_def0;

fn kernels(config: FlowConfig) -> Objective {
    Objective::new(gpu(), config).unwrap()
}

#[test]
fn forward_process_matches_the_reference_for_every_schedule_and_prediction() {
    let (b, d) = (37, 5);
    let x0 = rand_vec(b * d, 1);
    let labels: Vec<f32> = (0..b).map(|i| (i % 10) as f32).collect();
    let (tx, tl) = (upload(gpu(), &[b, d], &x0), upload(gpu(), &[b], &labels));
    let schedules = [
        Schedule::RectifiedFlow,
        Schedule::Cosine,
        Schedule::LdmLinear,
        Schedule::Edm { pm: -1.2, ps: 1.2 },
    ];
    for schedule in schedules {
        for prediction in [
            Prediction::Velocity,
            Prediction::Eps,
            Prediction::V,
            Prediction::X0,
        ] {
            let config = FlowConfig {
                schedule,
                prediction,
                weighting: Weighting::natural(prediction),
                sampler: TimeSampler::Uniform,
                t_min: 0.01,
                t_max: 0.99,
                label_dropout: 0.3,
                ..Default::default()
            };
            let out = kernels(config)
                .forward_process(&tx, Some(&tl), SEED, 17)
                .unwrap();
            let (z, target, t, lab) = (
                out.z.to_vec().unwrap(),
                out.target.to_vec().unwrap(),
                out.t.to_vec().unwrap(),
                out.labels.to_vec().unwrap(),
            );
            let (mut want_z, mut want_target) = (vec![0.0; b * d], vec![0.0; b * d]);
            for s in 0..b {
                let w = words(SEED, 17, STREAM_T, s as u32);
                // The uniform sampler's t is exact in f32: bit-identical Philox on both sides.
                let want_t = uniform(w[0]).clamp(0.01, 0.99);
                assert_eq!(t[s], want_t, "t of sample {s}");
                let want_label = if uniform(w[3]) < 0.3 { 10.0 } else { labels[s] };
                assert_eq!(lab[s], want_label, "label of sample {s}");
                let (a, bb, _, _) = schedule.coefficients(t[s] as f64);
                for j in 0..d {
                    let e = s * d + j;
                    let we = words(SEED, 17, STREAM_EPS, e as u32);
                    let eps = normal(we[0], we[1]) as f64;
                    want_z[e] = a * x0[e] as f64 + bb * eps;
                    want_target[e] = prediction.target(&schedule, x0[e] as f64, eps, t[s] as f64);
                }
            }
            let what = format!("{} {}", schedule.name(), prediction.name());
            assert_rel(&format!("z_t {what}"), &z, &want_z, 2e-5, 2e-5);
            // EDM's b' = b ps / pdf(PhiInv(t)) amplifies f32 rounding of the quantile near the ends.
            let rel = if matches!(schedule, Schedule::Edm { .. }) {
                2e-4
            } else {
                2e-5
            };
            assert_rel(&format!("target {what}"), &target, &want_target, rel, 2e-5);
        }
    }
}

#[test]
fn random_numbers_do_not_depend_on_the_dispatch_shape() {
    let k = kernels(FlowConfig {
        sampler: TimeSampler::LogNormal { m: 0.0, s: 1.0 },
        ..Default::default()
    });
    let (b, d) = (64, 3);
    let x0 = rand_vec(b * d, 2);
    let full = k
        .forward_process(&upload(gpu(), &[b, d], &x0), None, 9, 3)
        .unwrap();
    let half = k
        .forward_process(&upload(gpu(), &[b / 2, d], &x0[..b / 2 * d]), None, 9, 3)
        .unwrap();
    assert_eq!(
        &full.z.to_vec().unwrap()[..b / 2 * d],
        &half.z.to_vec().unwrap()[..]
    );
    assert_eq!(
        &full.t.to_vec().unwrap()[..b / 2],
        &half.t.to_vec().unwrap()[..]
    );
    let again = k
        .forward_process(&upload(gpu(), &[b, d], &x0), None, 9, 3)
        .unwrap();
    assert_eq!(
        full.z.to_vec().unwrap(),
        again.z.to_vec().unwrap(),
        "same (seed, step): same numbers"
    );
    let next = k
        .forward_process(&upload(gpu(), &[b, d], &x0), None, 9, 4)
        .unwrap();
    assert_ne!(
        full.z.to_vec().unwrap(),
        next.z.to_vec().unwrap(),
        "another step: other numbers"
    );
    // Without labels every label is the null label.
    assert!(full.labels.to_vec().unwrap().iter().all(|&l| l == 10.0));
}

#[test]
fn gpu_normals_match_the_cpu_generator_and_have_the_right_statistics() {
    let n = 200_000;
    let z = f64s(
        &ops::random_normal(gpu(), n, SEED, 5, 7)
            .unwrap()
            .to_vec()
            .unwrap(),
    );
    for i in [0usize, 1, 1000, n - 1] {
        let w = words(SEED, 5, 7, i as u32);
        assert!(
            (z[i] - normal(w[0], w[1]) as f64).abs() < 1e-5,
            "normal {i}: {} vs {}",
            z[i],
            normal(w[0], w[1])
        );
    }
    let mean = z.iter().sum::<f64>() / n as f64;
    let var = z.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let lag = z
        .windows(2)
        .map(|w| (w[0] - mean) * (w[1] - mean))
        .sum::<f64>()
        / (n - 1) as f64
        / var;
    // 5 standard errors: 2.2e-3 (mean), 3.2e-3 (variance), 2.2e-3 (lag-1 correlation).
    assert!(
        mean.abs() < 0.011 && (var - 1.0).abs() < 0.016 && lag.abs() < 0.011,
        "mean {mean} var {var} lag {lag}"
    );
}

#[test]
fn gpu_time_samplers_match_their_densities() {
    let n = 100_000;
    let x0 = upload(gpu(), &[n, 1], &vec![0.0; n]);
    for sampler in [
        TimeSampler::Uniform,
        TimeSampler::LogNormal { m: 0.0, s: 1.0 },
        TimeSampler::Mode { s: 1.29 },
        TimeSampler::CosMap,
        TimeSampler::UShape { a: 4.0 },
        TimeSampler::UShape { a: 50.0 },
    ] {
        let k = kernels(FlowConfig {
            sampler,
            ..Default::default()
        });
        let t = f64s(
            &k.forward_process(&x0, None, 11, 0)
                .unwrap()
                .t
                .to_vec()
                .unwrap(),
        );
        let bins = 40;
        let mut counts = vec![0usize; bins];
        for &v in &t {
            counts[((v * bins as f64) as usize).min(bins - 1)] += 1;
        }
        let chi2: f64 = (0..bins)
            .map(|i| {
                let expect = n as f64
                    * (sampler.cdf((i + 1) as f64 / bins as f64)
                        - sampler.cdf(i as f64 / bins as f64));
                (counts[i] as f64 - expect).powi(2) / expect
            })
            .sum();
        // 39 degrees of freedom, significance 0.001: 72.05.
        assert!(chi2 < 72.05, "{}: chi-square {chi2:.1}", sampler.name());
    }
}

#[test]
fn weighted_loss_and_gradient_match_the_reference() {
    let (b, d) = (23, 7);
    let out = rand_vec(b * d, 3);
    let target = rand_vec(b * d, 4);
    let t: Vec<f32> = rand_vec(b, 5).iter().map(|v| 0.5 + 0.45 * v).collect();
    let (to, tt, ttime) = (
        upload(gpu(), &[b, d], &out),
        upload(gpu(), &[b, d], &target),
        upload(gpu(), &[b], &t),
    );
    let cases = [
        (
            Schedule::RectifiedFlow,
            Prediction::Velocity,
            Weighting::Velocity,
        ),
        (
            Schedule::RectifiedFlow,
            Prediction::Eps,
            Weighting::Velocity,
        ),
        (
            Schedule::RectifiedFlow,
            Prediction::Velocity,
            Weighting::Eps,
        ),
        (Schedule::Cosine, Prediction::V, Weighting::Eps),
        (Schedule::LdmLinear, Prediction::Eps, Weighting::Eps),
        (Schedule::Cosine, Prediction::X0, Weighting::V),
        (
            Schedule::Edm { pm: -1.2, ps: 1.2 },
            Prediction::X0,
            Weighting::Edm { pm: -1.2, ps: 1.2 },
        ),
    ];
    for (schedule, prediction, weighting) in cases {
        let k = kernels(FlowConfig {
            schedule,
            prediction,
            weighting,
            ..Default::default()
        });
        let r = k.loss(&to, &tt, &ttime).unwrap();
        let (loss, grad, per) = (
            r.loss.to_vec().unwrap()[0] as f64,
            r.grad.to_vec().unwrap(),
            r.per_sample.to_vec().unwrap(),
        );
        let (mut want_grad, mut want_per) = (vec![0.0; b * d], vec![0.0; b]);
        for s in 0..b {
            let w = weighting.output_weight(&schedule, prediction, t[s] as f64);
            for j in 0..d {
                let e = s * d + j;
                let diff = out[e] as f64 - target[e] as f64;
                want_per[s] += w * diff * diff / d as f64;
                want_grad[e] = 2.0 * w * diff / (b * d) as f64;
            }
        }
        let what = format!("{} {} {:?}", schedule.name(), prediction.name(), weighting);
        // W_t in f32 from the schedule's formulas: a few ulps times the conditioning of lambda'.
        assert_rel(
            &format!("per-sample loss {what}"),
            &per,
            &want_per,
            1e-4,
            1e-7,
        );
        assert_rel(&format!("gradient {what}"), &grad, &want_grad, 1e-4, 1e-9);
        let want_loss = want_per.iter().sum::<f64>() / b as f64;
        assert!(
            (loss - want_loss).abs() < 1e-4 * want_loss,
            "loss {what}: {loss} vs {want_loss}"
        );
    }
}

#[test]
fn gpu_oracle_matches_the_reference() {
    let (k_rows, d, n) = (13, 6, 29);
    let data = rand_vec(k_rows * d, 6);
    let z: Vec<f32> = rand_vec(n * d, 7);
    let t: Vec<f32> = rand_vec(n, 8).iter().map(|v| 0.5 + 0.45 * v).collect();
    let mix = Mixture::points(d, &f64s(&data));
    for schedule in [
        Schedule::RectifiedFlow,
        Schedule::Cosine,
        Schedule::LdmLinear,
        Schedule::Edm { pm: -1.2, ps: 1.2 },
    ] {
        let k = kernels(FlowConfig {
            schedule,
            ..Default::default()
        });
        let v = k
            .oracle_velocity(
                &upload(gpu(), &[n, d], &z),
                &upload(gpu(), &[n], &t),
                &upload(gpu(), &[k_rows, d], &data),
            )
            .unwrap();
        let zd = f64s(&z);
        let want: Vec<f64> = (0..n)
            .flat_map(|i| mix.velocity(&schedule, &zd[i * d..(i + 1) * d], t[i] as f64))
            .collect();
        let rel = if matches!(schedule, Schedule::Edm { .. }) {
            1e-3
        } else {
            1e-4
        };
        assert_rel(
            &format!("oracle {}", schedule.name()),
            &v.to_vec().unwrap(),
            &want,
            rel,
            1e-4,
        );
    }
}

#[test]
fn bad_flow_configurations_are_refused() {
    assert!(Objective::new(
        gpu(),
        FlowConfig {
            label_dropout: 1.5,
            ..Default::default()
        }
    )
    .is_err());
    assert!(Objective::new(
        gpu(),
        FlowConfig {
            t_min: 0.0,
            ..Default::default()
        }
    )
    .is_err());
    assert!(Objective::new(
        gpu(),
        FlowConfig {
            sampler: TimeSampler::Mode { s: 3.0 },
            ..Default::default()
        }
    )
    .is_err());
}

#[test]
fn batches_are_gathered_from_the_rows_philox_names() {
    // Row of sample b = floor(uniform(words(seed, step, 2, b)[0]) * N), with its label.
    let (n, d, batch) = (37, 5, 300);
    let data = rand_vec(n * d, 50);
    let labels: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let (x, l) = ops::gather_batch(
        &upload(gpu(), &[n, d], &data),
        &upload(gpu(), &[n], &labels),
        batch,
        SEED,
        9,
    )
    .unwrap();
    let (x, l) = (x.to_vec().unwrap(), l.to_vec().unwrap());
    let mut seen = vec![false; n];
    for b in 0..batch {
        let u = uniform(words(SEED, 9, rectiflow::shaders::stream::BATCH, b as u32)[0]);
        let row = ((u * n as f32) as usize).min(n - 1);
        seen[row] = true;
        assert_eq!(
            &x[b * d..(b + 1) * d],
            &data[row * d..(row + 1) * d],
            "sample {b}"
        );
        assert_eq!(l[b], labels[row], "label of sample {b}");
    }
    assert!(
        seen.iter().filter(|&&s| s).count() > n * 3 / 4,
        "draws cover the data set"
    );
}

#[test]
fn training_times_are_shifted_on_the_gpu_as_in_the_reference() {
    let n = 200;
    let x0 = upload(gpu(), &[n, 1], &vec![0.0; n]);
    for alpha in [0.5f32, 3.0] {
        let k = kernels(FlowConfig {
            sampler: TimeSampler::Uniform,
            shift: alpha,
            t_min: 1e-6,
            t_max: 1.0 - 1e-6,
            ..Default::default()
        });
        let t = k
            .forward_process(&x0, None, SEED, 2)
            .unwrap()
            .t
            .to_vec()
            .unwrap();
        let want: Vec<f64> = (0..n)
            .map(|b| {
                rectiflow::flow::shift(
                    uniform(words(SEED, 2, STREAM_T, b as u32)[0]) as f64,
                    alpha as f64,
                )
            })
            .collect();
        assert_rel(&format!("shifted t, alpha {alpha}"), &t, &want, 1e-6, 1e-7);
    }
}
