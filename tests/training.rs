//! Training, checkpoints, sampling, data loading and the command line, on tiny models.

mod common;

use common::gpu;
use rectiflow::checkpoint::Checkpoint;
use rectiflow::data::{self, DataSpec, Dataset};
use rectiflow::flow::{Prediction, Schedule, TimeSampler};
use rectiflow::nn::ModelConfig;
use rectiflow::output::npy_header;
use rectiflow::sample::{sample, SampleOptions, Solver};
use rectiflow::train::{TrainConfig, Trainer};
use std::path::PathBuf;

fn config(data: &Dataset, kind: &str, width: usize) -> TrainConfig {
    TrainConfig {
        data: DataSpec::parse(&data.name).unwrap(),
        model: ModelConfig {
            kind: kind.into(),
            width,
            depth: 1,
            heads: 2,
            patch: 2,
            shape: data.shape.clone(),
            classes: data.classes,
            context_dim: 0,
        },
        schedule: Schedule::RectifiedFlow,
        prediction: Prediction::Velocity,
        weighting: None,
        t_sampler: TimeSampler::Uniform,
        steps: 100,
        batch: 64,
        lr: 3e-3,
        warmup: 10,
        ema_decay: 0.9,
        max_grad_norm: 1.0,
        label_dropout: 0.1,
        seed: 3,
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rectiflow-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn mean_loss(tr: &mut Trainer, steps: usize) -> f32 {
    (0..steps)
        .map(|_| {
            tr.step().unwrap();
            tr.read_loss().unwrap()
        })
        .sum::<f32>()
        / steps as f32
}

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
fn checkpoints_round_trip_and_resume_continues_bit_for_bit() {
    let digits = data::digits().unwrap();
    let cfg = config(&digits, "dit", 16);
    let dir = temp_dir("resume");
    let path = dir.join("checkpoint.safetensors");

    let mut a = Trainer::new(gpu(), cfg.clone(), &digits).unwrap();
    for _ in 0..6 {
        a.step().unwrap();
    }
    a.checkpoint().unwrap().save(&path).unwrap();
    assert!(
        !dir.join("checkpoint.safetensors.tmp").exists(),
        "the temporary file was renamed"
    );
    for _ in 0..6 {
        a.step().unwrap();
    }

    let loaded = Checkpoint::load(&path).unwrap();
    assert_eq!(loaded.step, 6);
    assert_eq!(TrainConfig::from_json(&loaded.config).unwrap(), cfg);
    let mut b = Trainer::new(gpu(), cfg.clone(), &digits).unwrap();
    b.restore(&loaded, &path).unwrap();
    // Saving what was restored gives the same checkpoint.
    assert_eq!(b.checkpoint().unwrap(), loaded);
    for _ in 0..6 {
        b.step().unwrap();
    }
    assert_eq!(
        a.params.values().to_vec().unwrap(),
        b.params.values().to_vec().unwrap(),
        "weights after resuming"
    );
    assert_eq!(
        a.opt.ema().to_vec().unwrap(),
        b.opt.ema().to_vec().unwrap(),
        "EMA after resuming"
    );
    assert_eq!(a.read_loss().unwrap(), b.read_loss().unwrap());
}

#[test]
fn corrupt_or_mismatched_checkpoints_are_refused_clearly() {
    let digits = data::digits().unwrap();
    let dir = temp_dir("corrupt");
    let good = dir.join("good.safetensors");
    let tr = Trainer::new(gpu(), config(&digits, "dit", 16), &digits).unwrap();
    tr.checkpoint().unwrap().save(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();

    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = Checkpoint::load(&truncated).unwrap_err().to_string();
    assert!(
        err.contains("truncated.safetensors") && err.contains("not a usable"),
        "{err}"
    );

    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a checkpoint at all").unwrap();
    assert!(Checkpoint::load(&garbage)
        .unwrap_err()
        .to_string()
        .contains("not a usable"));

    let missing = dir.join("missing.safetensors");
    assert!(Checkpoint::load(&missing)
        .unwrap_err()
        .to_string()
        .contains("cannot read checkpoint"));

    // A checkpoint of another model size is refused by name and shape.
    let ck = Checkpoint::load(&good).unwrap();
    let mut wider = Trainer::new(gpu(), config(&digits, "dit", 32), &digits).unwrap();
    let err = wider.restore(&ck, &good).unwrap_err().to_string();
    assert!(
        err.contains("shape") && err.contains("good.safetensors"),
        "{err}"
    );
    // And one that lacks a parameter.
    let mut partial = ck.clone();
    partial.params.remove("final_layer.linear.weight");
    let mut same = Trainer::new(gpu(), config(&digits, "dit", 16), &digits).unwrap();
    let err = same.restore(&partial, &good).unwrap_err().to_string();
    assert!(err.contains("final_layer.linear.weight"), "{err}");
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
            labels: vec![0, 1, 2, 3, 10],
            seed,
            clip_x0: None,
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
        labels: vec![0, 1, 2, 3, 10],
        seed: 5,
        clip_x0: Some(0.1),
    };
    let clipped = sample(&tr.model, &tr.params, &tr.flow, 64, 10, &opts)
        .unwrap()
        .to_vec()
        .unwrap();
    assert!(clipped.iter().all(|v| v.is_finite()));
    assert_ne!(clipped, run(5, Solver::Euler, 2.0));
}

#[test]
fn npy_headers_follow_numpy_format_1_0() {
    for shape in [vec![100, 1, 8, 8], vec![5000, 2], vec![7]] {
        let h = npy_header("<f4", &shape);
        assert_eq!(&h[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([h[8], h[9]]) as usize;
        assert_eq!(h.len(), 10 + len);
        assert_eq!(h.len() % 64, 0, "data starts 64-byte aligned");
        let dict = std::str::from_utf8(&h[10..]).unwrap();
        assert!(dict.ends_with('\n'));
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let want = if shape.len() == 1 {
            format!("({},)", dims[0])
        } else {
            format!("({})", dims.join(", "))
        };
        assert!(
            dict.starts_with(&format!(
                "{{'descr': '<f4', 'fortran_order': False, 'shape': {want}, }}"
            )),
            "{dict}"
        );
    }
}

fn write_idx(path: &std::path::Path, magic: u32, dims: &[u32], data: &[u8]) {
    let mut b = magic.to_be_bytes().to_vec();
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend(data);
    std::fs::write(path, b).unwrap();
}

#[test]
fn data_sets_load_and_bad_files_get_clear_errors() {
    let d = data::digits().unwrap();
    assert_eq!((d.len(), d.dim(), d.classes), (1797, 64, 10));
    assert!(d.x.iter().all(|v| (-1.0..=1.0).contains(v)));
    assert_eq!(&d.labels.as_ref().unwrap()[..5], &[0, 1, 2, 3, 4]);
    for toy in data::TOYS {
        let t = data::toy(toy, 1000, 0).unwrap();
        assert_eq!(t.len(), 1000);
        assert!(t.x.iter().all(|v| v.is_finite() && v.abs() < 4.0), "{toy}");
    }
    assert!(data::toy("circles", 10, 0)
        .unwrap_err()
        .to_string()
        .contains("checkerboard"));

    let dir = temp_dir("idx");
    let (img, lab) = (dir.join("img.idx"), dir.join("lab.idx"));
    write_idx(
        &img,
        2051,
        &[3, 2, 2],
        &[0, 255, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100],
    );
    write_idx(&lab, 2049, &[3], &[7, 2, 1]);
    let spec = format!("idx:{},{}", img.display(), lab.display());
    let ds = Dataset::from_spec(&spec, 0).unwrap();
    assert_eq!(
        (ds.len(), ds.shape.clone(), ds.classes),
        (3, vec![1, 2, 2], 8)
    );
    assert_eq!(ds.x[1], 1.0);
    // gzipped works too
    let gz = dir.join("img.idx.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, &std::fs::read(&img).unwrap()).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    assert_eq!(
        Dataset::from_spec(&format!("idx:{}", gz.display()), 0)
            .unwrap()
            .x,
        ds.x
    );

    let err = Dataset::from_spec(&format!("idx:{}", dir.join("nope").display()), 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read") && err.contains("nope"), "{err}");
    let err = Dataset::from_spec(&format!("idx:{}", lab.display()), 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("magic") && err.contains("2051"), "{err}");
    let short = dir.join("short.idx");
    write_idx(&short, 2051, &[3, 2, 2], &[1, 2, 3]);
    let err = Dataset::from_spec(&format!("idx:{}", short.display()), 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("truncated"), "{err}");
    let lab2 = dir.join("lab2.idx");
    write_idx(&lab2, 2049, &[2], &[1, 2]);
    let err = Dataset::from_spec(&format!("idx:{},{}", img.display(), lab2.display()), 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 labels for 3 images"), "{err}");
}

#[test]
fn the_command_line_trains_samples_and_protects_existing_runs() {
    let bin = env!("CARGO_BIN_EXE_rectiflow");
    let dir = temp_dir("cli");
    let out = dir.join("run");
    let train = |extra: &[&str]| {
        let steps = if extra.contains(&"--resume") {
            "30"
        } else {
            "20"
        };
        let mut args = vec![
            "train",
            "--data",
            "toy:moons",
            "--model",
            "mlp",
            "--steps",
            steps,
            "--batch",
            "32",
            "--width",
            "16",
            "--depth",
            "1",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        std::process::Command::new(bin)
            .args(&args)
            .output()
            .unwrap()
    };
    let r = train(&[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for f in [
        "config.json",
        "checkpoint.safetensors",
        "metrics.json",
        "samples.png",
        "samples.npy",
        "labels.npy",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let before = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
    // A second run into the same directory is refused and leaves it untouched.
    let r = train(&[]);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("--resume"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(
        std::fs::read(out.join("checkpoint.safetensors")).unwrap(),
        before
    );
    // Resume to more steps.
    let r = train(&["--resume"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        Checkpoint::load(&out.join("checkpoint.safetensors"))
            .unwrap()
            .step,
        30
    );
    // Bad settings fail before anything is written.
    let r = std::process::Command::new(bin)
        .args([
            "train",
            "--t-sampler",
            "mode:5",
            "--out",
            dir.join("bad").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stderr).contains("mode:5"));
    assert!(!dir.join("bad").exists());
    // A diverging run stops with the step named and writes no checkpoint.
    let blown = dir.join("blown");
    let r = std::process::Command::new(bin)
        .args([
            "train",
            "--data",
            "toy:moons",
            "--model",
            "mlp",
            "--width",
            "16",
            "--depth",
            "1",
            "--steps",
            "40",
            "--batch",
            "32",
            "--lr",
            "1e30",
            "--warmup",
            "0",
            "--log-every",
            "5",
            "--quiet",
            "--out",
            blown.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("the loss became") && err.contains("at step"),
        "{err}"
    );
    assert!(!blown.join("checkpoint.safetensors").exists());
    // Sample from the checkpoint.
    let png = dir.join("s").join("grid.png");
    let r = std::process::Command::new(bin)
        .args([
            "sample",
            "--checkpoint",
            out.join("checkpoint.safetensors").to_str().unwrap(),
            "--n",
            "50",
            "--steps",
            "3",
            "--out",
            png.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let npy = std::fs::read(dir.join("s").join("samples.npy")).unwrap();
    assert_eq!(npy.len(), npy_header("<f4", &[50, 2]).len() + 50 * 2 * 4);
}

/// Gradients of every parameter tensor of a tiny MM-DiT (and of its context input, when it takes
/// one) against central finite differences of its own forward pass, in f32 with step 1e-2.
/// Every parameter tensor's gradient (one element each) of a whole transformer against central
/// differences of its forward pass; for the MM-DiT with `context_dim > 0` also the gradient of
/// the given context sequence.
fn transformer_gradient_check(kind: &str, context_dim: usize) {
    use rectiflow::autograd::{functions as f, Tape};
    use rectiflow::nn::Model;
    use rectiflow::params::ParamsBuilder;
    let digits = data::digits().unwrap();
    let mut cfg = config(&digits, kind, 8).model;
    cfg.context_dim = context_dim;
    let mut builder = ParamsBuilder::new();
    let model = Model::build(&cfg, &mut builder).unwrap();
    let p = builder.build(gpu(), 5).unwrap();
    // Random weights everywhere, so that no zero-initialised gate hides a path.
    let n = p.values().numel();
    p.values()
        .write(
            &common::rand_vec(n, 40)
                .iter()
                .map(|v| 0.3 * v)
                .collect::<Vec<_>>(),
        )
        .unwrap();
    let b = 3;
    let z = common::upload(gpu(), &[b, 64], &common::rand_vec(b * 64, 41));
    let t = common::upload(gpu(), &[b], &[0.2, 0.5, 0.9]);
    let labels = common::upload(gpu(), &[b], &[1.0, 7.0, 10.0]);
    let target = common::upload(gpu(), &[b, 64], &common::rand_vec(b * 64, 42));
    let tc = 3; // context tokens, when given
    let mut context_host = common::rand_vec(b * tc * context_dim.max(1), 43);
    let loss_of = |ctx: &[f32], record: bool| {
        let mut tape = if record { Tape::new() } else { Tape::no_grad() };
        let (zv, tv, yv) = (
            tape.constant(z.clone()),
            tape.constant(t.clone()),
            tape.constant(target.clone()),
        );
        let cv = tape.input(common::upload(gpu(), &[b, tc, context_dim.max(1)], ctx));
        let out = match &model {
            Model::Mmdit(m) if context_dim > 0 => m
                .forward_with_context(&mut tape, &p, &zv, &tv, &labels, &cv)
                .unwrap(),
            _ => model.forward(&mut tape, &p, &zv, &tv, &labels).unwrap(),
        };
        let loss = f::mse(&mut tape, &out, &yv).unwrap();
        let value = loss.value().to_vec().unwrap()[0] as f64;
        let grad = record.then(|| {
            p.zero_grads().unwrap();
            let grads = tape.backward(&loss).unwrap();
            grads.get(&cv).map(|g| g.to_vec().unwrap())
        });
        (value, grad.flatten())
    };
    let (_, context_grad) = loss_of(&context_host, true);
    let grads = p.grads().unwrap().to_vec().unwrap();
    let values = p.values().to_vec().unwrap();
    let h = 1e-2f32;
    let close = |what: &str, g: f64, fd: f64| {
        assert!(
            (g - fd).abs() <= 0.03 * fd.abs() + 2e-4,
            "{what}: backward {g}, finite differences {fd}"
        );
    };
    for (i, spec) in p.specs().iter().enumerate() {
        let k = spec.offset + (i * 7) % spec.shape.iter().product::<usize>();
        let mut v = values.clone();
        v[k] = values[k] + h;
        p.values().write(&v).unwrap();
        let up = loss_of(&context_host, false).0;
        v[k] = values[k] - h;
        p.values().write(&v).unwrap();
        let down = loss_of(&context_host, false).0;
        close(
            &format!("{} element {k}", spec.name),
            grads[k] as f64,
            (up - down) / (2.0 * h as f64),
        );
    }
    p.values().write(&values).unwrap();
    assert!(p.specs().len() >= if kind == "mmdit" { 30 } else { 20 });
    if context_dim > 0 {
        let cg = context_grad.expect("the context input has a gradient");
        for k in [0, 7, b * tc * context_dim - 1] {
            let orig = context_host[k];
            context_host[k] = orig + h;
            let up = loss_of(&context_host, false).0;
            context_host[k] = orig - h;
            let down = loss_of(&context_host, false).0;
            context_host[k] = orig;
            close(
                &format!("context element {k}"),
                cg[k] as f64,
                (up - down) / (2.0 * h as f64),
            );
        }
        // The wrong entry point is refused.
        let mut tape = Tape::no_grad();
        let (zv, tv) = (tape.constant(z.clone()), tape.constant(t.clone()));
        assert!(model.forward(&mut tape, &p, &zv, &tv, &labels).is_err());
    }
}

#[test]
fn dit_gradients_match_finite_differences() {
    transformer_gradient_check("dit", 0);
}

#[test]
fn mmdit_gradients_match_finite_differences_with_label_context() {
    transformer_gradient_check("mmdit", 0);
}

#[test]
fn mmdit_gradients_match_finite_differences_with_a_given_context_sequence() {
    transformer_gradient_check("mmdit", 5);
}
