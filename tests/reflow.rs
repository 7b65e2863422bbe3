//! Reflow and distillation: the paired forward process against its reference, the grid time
//! sampler, the pairs file (round trip, damaged files refused), pair generation resumed where it
//! stopped, a distilled flow sampling in one step, and `reflow`/`distill` on the command line
//! (kill -9 during pair generation included).

mod common;

use common::tiny::{config, temp_dir};
use common::{assert_rel, gpu, rand_vec, upload};
use rectiflow::data::{DataSpec, Toy};
use rectiflow::eval::sliced_w2;
use rectiflow::flow::{Prediction, Schedule, TimeSampler, Weighting};
use rectiflow::pairs::Pairs;
use rectiflow::reflow::{generate_pairs, original_config, PairSettings};
use rectiflow::rng::{uniform, words};
use rectiflow::sample::{SampleOptions, Solver};
use rectiflow::shaders::stream::T as STREAM_T;
use rectiflow::train::{FlowConfig, Objective, StartingWeights, TrainConfig, Trainer};
use rectiflow::{Pipeline, Weights};
use std::path::Path;

const SEED: u64 = 0x0bad_cafe;

#[test]
fn the_paired_forward_process_uses_each_pairs_own_noise() {
    let (b, d) = (29, 6);
    let rows = rand_vec(b * 2 * d, 5);
    let pairs = upload(gpu(), &[b, 2, d], &rows);
    for prediction in [Prediction::Velocity, Prediction::Eps, Prediction::X0] {
        let flow = Objective::new(
            gpu(),
            FlowConfig {
                prediction,
                weighting: Weighting::natural(prediction),
                sampler: TimeSampler::Uniform,
                label_dropout: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        let out = flow.forward_process_pairs(&pairs, None, SEED, 3).unwrap();
        let (z, target, t) = (
            out.z.to_vec().unwrap(),
            out.target.to_vec().unwrap(),
            out.t.to_vec().unwrap(),
        );
        let (mut want_z, mut want_target) = (vec![0.0; b * d], vec![0.0; b * d]);
        for s in 0..b {
            let w = words(SEED, 3, STREAM_T, s as u32);
            assert_eq!(t[s], uniform(w[0]).clamp(1e-5, 1.0 - 1e-5), "t of pair {s}");
            let tt = t[s] as f64;
            for j in 0..d {
                let x = rows[s * 2 * d + j] as f64;
                let eps = rows[s * 2 * d + d + j] as f64;
                want_z[s * d + j] = (1.0 - tt) * x + tt * eps;
                want_target[s * d + j] = prediction.target(&Schedule::RectifiedFlow, x, eps, tt);
            }
        }
        let what = prediction.name();
        assert_rel(&format!("z_t {what}"), &z, &want_z, 2e-5, 2e-5);
        assert_rel(&format!("target {what}"), &target, &want_target, 2e-5, 2e-5);
    }
    // The shape is checked.
    let flow = Objective::new(gpu(), FlowConfig::default()).unwrap();
    let flat = upload(gpu(), &[b, 2 * d], &rows);
    let e = flow
        .forward_process_pairs(&flat, None, SEED, 0)
        .err()
        .expect("pairs of the wrong shape are refused");
    assert!(e.to_string().contains("[B, 2, D]"), "{e}");
}

#[test]
fn edm_is_distilled_for_one_step_only() {
    let data = Toy::Moons.sample(100, 1).unwrap();
    let mut c = config(&data, "mlp", 16);
    c.schedule = Schedule::Edm { pm: -1.2, ps: 1.2 };
    c.t_sampler = TimeSampler::Grid { k: 2 };
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("grid:2") && e.contains("Karras"), "{e}");
    c.t_sampler = TimeSampler::Grid { k: 1 };
    c.validate().unwrap();
}

#[test]
fn grid_times_are_the_starting_times_of_a_k_step_grid() {
    let n = 40_000;
    let x0 = upload(gpu(), &[n, 1], &vec![0.0; n]);
    for k in [1u32, 4] {
        let flow = Objective::new(
            gpu(),
            FlowConfig {
                sampler: TimeSampler::Grid { k },
                ..Default::default()
            },
        )
        .unwrap();
        let t = flow
            .forward_process(&x0, None, SEED, 0)
            .unwrap()
            .t
            .to_vec()
            .unwrap();
        let mut counts = vec![0usize; k as usize];
        for &v in &t {
            // 1 - i/k, the first clamped to t_max.
            let i = ((1.0 - v as f64) * k as f64).round() as usize;
            let want = if i == 0 {
                1.0 - 1e-5
            } else {
                1.0 - i as f64 / k as f64
            };
            assert!(
                i < k as usize && (v as f64 - want).abs() < 1e-6,
                "grid:{k} drew {v}"
            );
            counts[i] += 1;
        }
        // Each point with probability 1/k: within 5 standard deviations.
        let p = 1.0 / k as f64;
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        for (i, &c) in counts.iter().enumerate() {
            assert!(
                (c as f64 - n as f64 * p).abs() <= 5.0 * sd + 1e-9,
                "grid:{k}: point {i} drawn {c} times of {n}"
            );
        }
        // The CPU map agrees.
        let sampler = TimeSampler::Grid { k };
        assert_eq!(sampler.map(0.0, 0.0), 1.0);
        assert!((sampler.map(0.999, 0.0) - 1.0 / k as f64).abs() < 1e-12);
    }
}

fn settings(source: &str, pairs: usize, chunk: usize, seed: u64) -> PairSettings {
    PairSettings {
        source: source.into(),
        source_step: 0,
        source_config: "{}".into(),
        weights: Weights::Ema,
        pairs,
        chunk,
        sample: SampleOptions {
            steps: 6,
            solver: Solver::Heun,
            seed,
            ..SampleOptions::new(Vec::new())
        },
    }
}

/// A small untrained flow on the moons (any velocity field makes valid pairs).
fn moons_pipeline(steps: u64) -> (Pipeline, TrainConfig) {
    let data = Toy::Moons.sample(2000, 1).unwrap();
    let mut c = config(&data, "mlp", 32);
    c.steps = steps;
    let mut tr = Trainer::new(gpu(), c.clone(), &data).unwrap();
    for _ in 0..steps {
        tr.step().unwrap();
    }
    (Pipeline::from_trainer(&tr, Weights::Ema).unwrap(), c)
}

#[test]
fn pairs_files_round_trip_and_damaged_ones_are_refused() {
    fn tensor<'a>(shape: Vec<usize>, data: &'a [f32]) -> safetensors::tensor::TensorView<'a> {
        safetensors::tensor::TensorView::new(
            safetensors::tensor::Dtype::F32,
            shape,
            bytemuck::cast_slice(data),
        )
        .unwrap()
    }
    let dir = temp_dir("pairs-file");
    let path = dir.join("pairs.safetensors");
    let (n, d) = (7, 3);
    let pairs = Pairs {
        settings: "{\"made\": \"by a test\"}".into(),
        shape: vec![d],
        classes: 4,
        noise: rand_vec(n * d, 1),
        samples: rand_vec(n * d, 2),
        labels: (0..n as u32).map(|i| i % 5).collect(),
    };
    pairs.save(&path).unwrap();
    assert_eq!(Pairs::load(&path).unwrap(), pairs);
    let data = pairs.to_dataset("pairs:x");
    assert_eq!(data.noise.as_deref(), Some(&pairs.noise[..]));
    assert_eq!(data.x, pairs.samples);
    assert_eq!(data.labels.as_deref(), Some(&pairs.labels[..]));

    let bytes = std::fs::read(&path).unwrap();
    let refused = |name: &str, content: &[u8], want: &str| {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        let e = Pairs::load(&p).unwrap_err().to_string();
        assert!(e.contains(want), "{name}: {e}");
    };
    refused("truncated", &bytes[..bytes.len() - 5], "pairs");
    refused("tiny", &bytes[..4], "fewer than the 8-byte header");
    let mut checkpoint = dir.join("not-pairs");
    checkpoint.set_extension("safetensors");
    // A label beyond the classes.
    let bad_label = Pairs {
        labels: vec![9; n],
        ..pairs.clone()
    };
    bad_label.save(&checkpoint).unwrap();
    let e = Pairs::load(&checkpoint).unwrap_err().to_string();
    assert!(e.contains("label 9"), "{e}");
    // Noise and samples that do not pair up (a file written by hand).
    let labels: Vec<f32> = pairs.labels.iter().map(|&l| l as f32).collect();
    let bytes = safetensors::serialize(
        [
            ("noise", tensor(vec![n, d], &pairs.noise)),
            (
                "samples",
                tensor(vec![n - 1, d], &pairs.samples[..(n - 1) * d]),
            ),
            ("labels", tensor(vec![n], &labels)),
        ],
        Some(std::collections::HashMap::from([
            ("format".to_string(), "rectiflow-pairs-1".to_string()),
            ("settings".to_string(), "{}".to_string()),
            ("classes".to_string(), "4".to_string()),
        ])),
    )
    .unwrap();
    std::fs::write(&checkpoint, bytes).unwrap();
    let e = Pairs::load(&checkpoint).unwrap_err().to_string();
    assert!(e.contains("do not pair up"), "{e}");

    // A checkpoint is not a pairs file.
    let (pipe, _) = moons_pipeline(1);
    let ck = dir.join("checkpoint.safetensors");
    pipe.save(&ck).unwrap();
    let e = Pairs::load(&ck).unwrap_err().to_string();
    assert!(e.contains("rectiflow-pairs-1"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pair_generation_resumes_where_it_stopped_and_makes_the_same_pairs() {
    let dir = temp_dir("pairs-resume");
    let (pipe, _) = moons_pipeline(20);
    let whole = dir.join("whole.safetensors");
    let all = generate_pairs(&pipe, &settings("a", 700, 200, 4), &whole, |_, _| {}).unwrap();
    assert_eq!(all.len(), 700);
    assert!(all.noise.iter().chain(&all.samples).all(|v| v.is_finite()));

    // Stopped after one and a half chunks (a partial last chunk), then continued.
    let parts = dir.join("parts.safetensors");
    let first = generate_pairs(&pipe, &settings("a", 300, 200, 4), &parts, |_, _| {}).unwrap();
    assert_eq!(first.len(), 300);
    let mut seen = Vec::new();
    let rest = generate_pairs(&pipe, &settings("a", 700, 200, 4), &parts, |done, _| {
        seen.push(done)
    })
    .unwrap();
    // The partial chunk is drawn again, whole: progress restarts at 200.
    assert_eq!(seen, vec![200, 400, 600, 700]);
    assert_eq!(rest.noise, all.noise);
    assert_eq!(rest.labels, all.labels);
    let far = rest
        .samples
        .iter()
        .zip(&all.samples)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(far < 1e-5, "resumed samples differ by {far}");
    // The noise is standard normal.
    let mean = all.noise.iter().map(|&v| v as f64).sum::<f64>() / all.noise.len() as f64;
    let var = all
        .noise
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / all.noise.len() as f64;
    assert!(
        mean.abs() < 0.1 && (var - 1.0).abs() < 0.1,
        "mean {mean} var {var}"
    );

    // Pairs made otherwise are never continued, and stay as they were.
    let before = std::fs::read(&parts).unwrap();
    for other in [
        settings("b", 900, 200, 4),
        settings("a", 900, 100, 4),
        settings("a", 900, 200, 5),
    ] {
        let e = generate_pairs(&pipe, &other, &parts, |_, _| {})
            .unwrap_err()
            .to_string();
        // The message names what differs.
        let named = [
            "source: \"a\" -> \"b\"",
            "chunk: 200 -> 100",
            "sample.seed: 4 -> 5",
        ];
        assert!(
            e.contains("other settings") && named.iter().any(|n| e.contains(n)),
            "{e}"
        );
    }
    assert_eq!(std::fs::read(&parts).unwrap(), before);
    // Pairs made with the adaptive solver: a tighter tolerance moves them little.
    let with = |rtol: f64| PairSettings {
        sample: SampleOptions {
            solver: Solver::Rk45,
            rtol,
            atol: rtol,
            ..settings("a", 100, 100, 4).sample
        },
        ..settings("a", 100, 100, 4)
    };
    let loose = generate_pairs(&pipe, &with(1e-5), &dir.join("rk45-5"), |_, _| {}).unwrap();
    let tight = generate_pairs(&pipe, &with(1e-7), &dir.join("rk45-7"), |_, _| {}).unwrap();
    assert_eq!(loose.noise, tight.noise);
    // rk45 controls the root mean square of its local error per step; the global error of this
    // flow at 1e-5 was measured at 1.5e-3 against 1e-7 (a trained checkerboard flow: 2e-3 at
    // 1e-5, 1.5e-4 at 1e-6), so a bound of 5e-3.
    let rms = (loose
        .samples
        .iter()
        .zip(&tight.samples)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        / loose.samples.len() as f64)
        .sqrt();
    assert!(
        rms < 5e-3,
        "rk45 pairs at rtol 1e-5 and 1e-7: rms difference {rms}"
    );
    // Bad counts are refused.
    for (n, chunk) in [(0, 10), (10, 0)] {
        assert!(generate_pairs(
            &pipe,
            &settings("a", n, chunk, 4),
            &dir.join("x"),
            |_, _| {}
        )
        .is_err());
    }
    assert!(!dir.join("x").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `n` one-step samples' sliced W2 to the data.
fn one_step_w2(pipe: &Pipeline, data: &[f32]) -> f64 {
    let opts = SampleOptions {
        steps: 1,
        ..pipe.options(pipe.labels(2000))
    };
    let z = pipe.sample(&opts).unwrap().to_vec().unwrap();
    sliced_w2(&z, data, 2, 128, 3)
}

#[test]
fn a_distilled_flow_samples_in_one_step() {
    let dir = temp_dir("distill");
    let data = Toy::EightGaussians.sample(4000, 1).unwrap();
    let mut c = config(&data, "mlp", 64);
    c.model.depth = 2;
    c.steps = 300;
    c.batch = 256;
    let mut tr = Trainer::new(gpu(), c.clone(), &data).unwrap();
    for _ in 0..c.steps {
        tr.step().unwrap();
    }
    let flow = Pipeline::from_trainer(&tr, Weights::Ema).unwrap();
    let fresh = Toy::EightGaussians.sample(2000, 9).unwrap();
    let before = one_step_w2(&flow, &fresh.x);

    let path = dir.join("pairs.safetensors");
    let pairs = generate_pairs(&flow, &settings("flow", 3000, 3000, 2), &path, |_, _| {}).unwrap();
    let distilled_config = TrainConfig {
        data: DataSpec::Pairs(path.clone()),
        t_sampler: TimeSampler::Grid { k: 1 },
        steps: 300,
        label_dropout: 0.0,
        ..c.clone()
    };
    let pair_data = pairs.to_dataset(&distilled_config.data.to_string());
    let weights = flow.weights_by_name().unwrap();
    let mut student = Trainer::from_weights(
        gpu(),
        distilled_config.clone(),
        &pair_data,
        StartingWeights {
            weights: &weights,
            source: Path::new("flow"),
        },
    )
    .unwrap();
    assert!(student.trains_on_pairs());
    for _ in 0..distilled_config.steps {
        student.step().unwrap();
    }
    let student = Pipeline::from_trainer(&student, Weights::Ema).unwrap();
    assert_eq!(
        student.options(vec![0]).steps,
        1,
        "a grid:1 model samples in one step"
    );
    let after = one_step_w2(&student, &fresh.x);
    // One step of the flow lands near the data's mean; one step of the distilled flow on the
    // data (the pairs' own one-step error is the floor here).
    assert!(
        after < 0.5 * before,
        "one-step sliced W2: flow {before:.3}, distilled {after:.3}"
    );
    // What the distilled flow models is the data at the root of its pairs. The pairs' source
    // configuration here is a placeholder, so the chain ends in an error naming it.
    assert!(original_config(&distilled_config).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

fn run<S: AsRef<std::ffi::OsStr>>(bin: &str, args: &[S]) -> std::process::Output {
    std::process::Command::new(bin).args(args).output().unwrap()
}

fn ok(r: &std::process::Output) {
    assert!(
        r.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
}

fn err(r: &std::process::Output, want: &str) {
    let text = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && text.contains(want),
        "wanted {want:?}: {text}"
    );
}

#[test]
fn reflow_and_distill_run_from_the_command_line_and_resume() {
    let bin = env!("CARGO_BIN_EXE_rectiflow");
    let dir = temp_dir("reflow-cli");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let base = dir.join("base");
    let tiny = ["--batch", "32", "--width", "16", "--depth", "1", "--quiet"];
    let mut args = vec!["train", "--data", "toy:moons", "--steps", "20"];
    args.extend(tiny);
    let base_s = s(&base);
    args.extend(["--out", &base_s]);
    ok(&run(bin, &args));
    let ck = s(&base.join("checkpoint.safetensors"));

    // Bad input is refused before anything is written.
    let out = dir.join("r");
    let out_s = s(&out);
    let reflow = |extra: &[&str]| {
        let mut a = vec![
            "reflow",
            "--checkpoint",
            &ck,
            "--out",
            &out_s,
            "--pair-chunk",
            "100",
            "--steps",
            "10",
            "--quiet",
        ];
        if !extra.contains(&"--pair-steps") {
            a.extend(["--pair-steps", "3"]);
        }
        if !extra.contains(&"--pairs") {
            a.extend(["--pairs", "300"]);
        }
        a.extend(extra);
        run(bin, &a)
    };
    err(&reflow(&["--pairs", "0"]), "--pairs 0");
    err(
        &reflow(&["--pairs", "900000000", "--pair-chunk", "900000000"]),
        "--pair-chunk",
    );
    err(&reflow(&["--pair-solver", "rk99"]), "rk99");
    err(
        &reflow(&["--pair-solver", "rk45", "--pair-rtol", "0"]),
        "--rtol 0",
    );
    err(&reflow(&["--t-sampler", "ushape:-1"]), "ushape");
    err(
        &run(bin, &["reflow", "--checkpoint", &s(&dir.join("none"))]),
        "none",
    );
    assert!(!out.exists(), "a refused reflow wrote {}", out.display());

    ok(&reflow(&[]));
    for f in [
        "pairs.safetensors",
        "checkpoint.safetensors",
        "samples.png",
        "config.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let config =
        TrainConfig::from_json(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config.data, DataSpec::Pairs(out.join("pairs.safetensors")));
    assert_eq!(config.t_sampler, TimeSampler::Uniform);
    assert_eq!(
        original_config(&config).unwrap().data,
        DataSpec::Toy(Toy::Moons)
    );
    // The run is protected, and resumes.
    let before = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
    err(&reflow(&[]), "--resume");
    assert_eq!(
        std::fs::read(out.join("checkpoint.safetensors")).unwrap(),
        before
    );
    err(
        &run(
            bin,
            &[
                "reflow",
                "--checkpoint",
                &ck,
                "--out",
                &out_s,
                "--resume",
                "--lr",
                "1e-3",
            ],
        ),
        "only --steps",
    );
    err(
        &run(
            bin,
            &[
                "reflow",
                "--checkpoint",
                &ck,
                "--out",
                &base_s,
                "--overwrite",
            ],
        ),
        "directory of the checkpoint",
    );
    ok(&run(
        bin,
        &[
            "reflow",
            "--checkpoint",
            &ck,
            "--out",
            &out_s,
            "--resume",
            "--steps",
            "15",
            "--quiet",
        ],
    ));
    let step = rectiflow::checkpoint::Checkpoint::load(&out.join("checkpoint.safetensors"))
        .unwrap()
        .step;
    assert_eq!(step, 15);

    // Distil the reflow; it samples in one step by default and is measured against the moons.
    let dist = dir.join("d");
    let dist_s = s(&dist);
    let rck = s(&out.join("checkpoint.safetensors"));
    ok(&run(
        bin,
        &[
            "distill",
            "--checkpoint",
            &rck,
            "--out",
            &dist_s,
            "--pairs",
            "200",
            "--pair-steps",
            "3",
            "--steps",
            "10",
            "--quiet",
        ],
    ));
    let dck = s(&dist.join("checkpoint.safetensors"));
    // A distillation of a reflow: two pairs files lead back to the moons.
    let dconfig =
        TrainConfig::from_json(&std::fs::read_to_string(dist.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(dconfig.t_sampler, TimeSampler::Grid { k: 1 });
    assert_eq!(
        dconfig.data,
        DataSpec::Pairs(dist.join("pairs.safetensors"))
    );
    assert_eq!(
        original_config(&dconfig).unwrap().data,
        DataSpec::Toy(Toy::Moons)
    );
    let r = run(
        bin,
        &[
            "eval",
            "--checkpoint",
            &dck,
            "--n",
            "200",
            "--json",
            &s(&dir.join("e.json")),
        ],
    );
    ok(&r);
    let report = std::fs::read_to_string(dir.join("e.json")).unwrap();
    assert!(
        report.contains("\"steps\": 1") && report.contains("sliced W2"),
        "{report}"
    );

    // --overwrite with other pair settings replaces the pairs and the run trained on them.
    ok(&reflow(&["--overwrite", "--pair-steps", "4"]));
    let pairs = Pairs::load(&out.join("pairs.safetensors")).unwrap();
    assert!(pairs.settings.contains("\"steps\":4"), "{}", pairs.settings);
    let step = rectiflow::checkpoint::Checkpoint::load(&out.join("checkpoint.safetensors"))
        .unwrap()
        .step;
    assert_eq!(step, 10);

    // kill -9 during pair generation loses no complete chunk, and the same command continues.
    let killed = dir.join("k");
    let killed_s = s(&killed);
    let long = |o: &str| {
        vec![
            "reflow".to_string(),
            "--checkpoint".into(),
            ck.clone(),
            "--out".into(),
            o.into(),
            "--pairs".into(),
            "3000".into(),
            "--pair-chunk".into(),
            "100".into(),
            "--pair-steps".into(),
            "20".into(),
            "--steps".into(),
            "5".into(),
            "--quiet".into(),
        ]
    };
    let mut child = std::process::Command::new(bin)
        .args(long(&killed_s))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pairs_file = killed.join("pairs.safetensors");
    let t0 = std::time::Instant::now();
    while !pairs_file.exists() && t0.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = Pairs::load(&pairs_file).unwrap();
    assert!(
        partial.len() < 3000 && partial.len().is_multiple_of(100),
        "{} pairs",
        partial.len()
    );
    ok(&run(bin, &long(&killed_s)));
    let whole = dir.join("w");
    ok(&run(bin, &long(&s(&whole))));
    let (a, b) = (
        Pairs::load(&pairs_file).unwrap(),
        Pairs::load(&whole.join("pairs.safetensors")).unwrap(),
    );
    assert_eq!(
        (a.len(), a.noise == b.noise, a.labels == b.labels),
        (3000, true, true)
    );
    let far = a
        .samples
        .iter()
        .zip(&b.samples)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(far < 1e-5, "{far}");
    let _ = std::fs::remove_dir_all(&dir);
}
