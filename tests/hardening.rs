//! Hardening (issue 12): bad flags, hostile files, diverged models, concurrent runs, signals and
//! failed writes, mostly through the binary. Each test names the case it covers.

mod common;

use common::gpu;
use rectiflow::checkpoint::Checkpoint;
use rectiflow::data::{self, DataSpec, Dataset, Toy};
use rectiflow::flow::{Prediction, Schedule, TimeSampler};
use rectiflow::nn::ModelConfig;
use rectiflow::rundir::RunLock;
use rectiflow::train::{TrainConfig, Trainer};
use rectiflow::Error;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_rectiflow");

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rectiflow-hard-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert a clean refusal: exit status 1 (not a panic's 101, not a signal) and a message that
/// contains `want`.
fn assert_refused(o: &Output, want: &str, what: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{what}: {err}");
    assert!(err.contains(want), "{what}: wanted {want:?} in {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
}

/// The flags of a tiny MLP run on the moons.
fn tiny(out: &Path, steps: &str) -> Vec<String> {
    [
        "train",
        "--data",
        "toy:moons",
        "--model",
        "mlp",
        "--width",
        "16",
        "--depth",
        "1",
        "--batch",
        "32",
        "--steps",
        steps,
        "--quiet",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.to_str().unwrap().to_string()])
    .collect()
}

fn run_owned(args: &[String]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// A finished tiny MLP run (10 steps), shared by tests that only read it.
fn mlp_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let out = temp_dir("fixture-mlp").join("run");
        let r = run_owned(&tiny(&out, "10"));
        assert!(r.status.success(), "{}", stderr(&r));
        out
    })
}

/// A copy of the shared run's checkpoint at `path`, with its configuration JSON edited.
fn forged_checkpoint(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut ck = Checkpoint::load(&mlp_run().join("checkpoint.safetensors")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&ck.config).unwrap();
    edit(&mut config);
    ck.config = config.to_string();
    ck.save(path).unwrap();
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn assert_no_temp_files(dir: &Path) {
    let names = files_in(dir);
    assert!(
        !names.iter().any(|n| n.ends_with(".tmp")),
        "temporary files left in {}: {names:?}",
        dir.display()
    );
}

/// Case 1: an interval of 0 means "never" (documented), and the run finishes.
#[test]
fn zero_intervals_mean_never() {
    let dir = temp_dir("zero-intervals");
    let out = dir.join("run");
    let mut args = tiny(&out, "6");
    args.extend(
        [
            "--log-every",
            "0",
            "--checkpoint-every",
            "0",
            "--sample-every",
            "0",
        ]
        .map(String::from),
    );
    let r = run_owned(&args);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(
        Checkpoint::load(&out.join("checkpoint.safetensors"))
            .unwrap()
            .step,
        6,
        "the checkpoint at the end is written"
    );
    let names = files_in(&out);
    assert!(
        !names.iter().any(|n| n.starts_with("samples_")),
        "no intermediate grids: {names:?}"
    );
    assert!(names.contains(&"samples.png".to_string()), "{names:?}");
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    let log = metrics["log"].as_array().unwrap();
    assert_eq!(log.len(), 1, "the loss is read once, at the end: {log:?}");
    assert_eq!(log[0]["step"], 6);
}

/// Cases 1, 2, 7 and 8 (train): every bad flag is refused, naming it, before anything is written.
#[test]
fn bad_train_flags_are_refused_before_anything_is_written() {
    let dir = temp_dir("bad-train-flags");
    let out = dir.join("never");
    let moons = ["--data", "toy:moons", "--model", "mlp"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--steps", "0"], "--steps 0"),
        ([&moons[..], &["--width", "0"]].concat(), "--width 0"),
        (vec!["--model", "dit", "--width", "0"], "--width 0"),
        (vec!["--batch", "0"], "--batch 0"),
        (vec!["--heads", "0"], "--heads 0"),
        (vec!["--patch", "0"], "patch size 0"),
        (vec!["--patch", "3"], "patch size 3 must divide"),
        (vec!["--depth", "5000"], "--depth 5000"),
        (vec!["--lr", "inf"], "--lr inf"),
        (vec!["--lr", "nan"], "--lr NaN"),
        (vec!["--lr", "-1"], "--lr -1"),
        (vec!["--lr", "0"], "--lr 0"),
        (vec!["--ema-decay", "1"], "--ema-decay 1"),
        (vec!["--ema-decay", "nan"], "--ema-decay NaN"),
        (vec!["--label-dropout", "inf"], "--label-dropout inf"),
        (vec!["--label-dropout", "-0.5"], "--label-dropout -0.5"),
        (vec!["--classes", "0"], "--classes 0"),
        (vec!["--classes", "5"], "label"),
        ([&moons[..], &["--classes", "3"]].concat(), "has no labels"),
        (vec!["--schedule", "edm:0,inf"], "edm:0,inf"),
        (vec!["--weighting", "edm:nan,1"], "edm:NaN,1"),
        (vec!["--t-sampler", "lognorm:0,inf"], "lognorm:0,inf"),
        (vec!["--preconditioning", "karras"], "none or edm"),
        (vec!["--preconditioning", "edm"], "edm schedule"),
        (
            vec![
                "--schedule",
                "edm",
                "--pred",
                "v",
                "--preconditioning",
                "edm",
            ],
            "--pred x0",
        ),
        (vec!["--resume", "--overwrite"], "choose one"),
        (vec!["--allow-changes"], "--resume only"),
        // Sizes no device holds: refused from the configuration, before allocating.
        (
            [&moons[..], &["--width", "100000"]].concat(),
            "--width 100000",
        ),
        (
            [&moons[..], &["--width", "60000"]].concat(),
            "its parameters",
        ),
        (
            [
                &moons[..],
                &["--width", "4096", "--depth", "1", "--batch", "1000000"],
            ]
            .concat(),
            "largest activation",
        ),
        (vec!["--batch", "1000000"], "largest activation"),
    ];
    for (flags, want) in cases {
        let mut args = vec!["train", "--quiet", "--out", out.to_str().unwrap()];
        args.extend(&flags);
        let r = run(&args);
        assert_refused(&r, want, &format!("{flags:?}"));
        assert!(!out.exists(), "{flags:?} created {}", out.display());
    }
}

/// Case 7 (sample and eval) and case 9 (eval --n 1): every sampling flag is checked.
#[test]
fn bad_sampling_flags_are_refused() {
    let ckpt = mlp_run().join("checkpoint.safetensors");
    let dir = temp_dir("bad-sample-flags");
    let png = dir.join("s").join("x.png");
    let cases: [(&[&str], &str); 17] = [
        (&["--cfg", "nan"], "--cfg NaN"),
        (&["--cfg", "inf"], "--cfg inf"),
        (&["--shift", "0"], "--shift 0"),
        (&["--shift", "nan"], "--shift NaN"),
        (&["--shift", "inf"], "--shift inf"),
        (&["--shift", "-1"], "--shift -1"),
        (&["--clip-x0", "nan"], "--clip-x0 NaN"),
        (&["--clip-x0", "-1"], "--clip-x0 -1"),
        (&["--steps", "0"], "--steps 0"),
        (&["--steps", "1000000000000"], "--steps 1000000000000"),
        (&["--n", "0"], "--n 0"),
        (&["--grid", "linear"], "uniform or karras"),
        (&["--solver", "rk4"], "euler, heun or rk45"),
        (&["--solver", "rk45", "--rtol", "0"], "--rtol 0"),
        (&["--rtol", "-1"], "--rtol -1"),
        (&["--atol", "nan"], "--atol NaN"),
        (&["--solver", "rk45", "--atol", "inf"], "--atol inf"),
    ];
    for (flags, want) in cases {
        let mut args = vec![
            "sample",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--out",
            png.to_str().unwrap(),
        ];
        args.extend(flags);
        assert_refused(&run(&args), want, &format!("sample {flags:?}"));
        assert!(!dir.join("s").exists(), "sample {flags:?} wrote something");
    }
    for (flags, want) in [
        (&["--n", "1"][..], "--n 1"),
        (&["--cfg", "inf"][..], "--cfg inf"),
        (&["--shift", "-1"][..], "--shift -1"),
        (&["--rtol", "0"][..], "--rtol 0"),
    ] {
        let json = dir.join("eval.json");
        let mut args = vec![
            "eval",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ];
        args.extend(flags);
        assert_refused(&run(&args), want, &format!("eval {flags:?}"));
        assert!(!json.exists());
    }
    // A huge --n is sized before anything that large is allocated.
    let r = run(&[
        "sample",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--n",
        "1000000000000",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert_refused(&r, "use a smaller --n", "sample --n 1e12");
}

fn write_idx(path: &Path, magic: u32, dims: &[u32], data: &[u8]) {
    let mut b = magic.to_be_bytes().to_vec();
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend(data);
    std::fs::write(path, b).unwrap();
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, bytes).unwrap();
    enc.finish().unwrap()
}

/// Cases 3 and 4 (data): IDX headers with a zero or a huge dimension, files shorter than their
/// header claims, and gzip bodies that inflate beyond it are refused before allocating.
#[test]
fn idx_sizes_are_checked_before_allocating() {
    let dir = temp_dir("idx-sizes");
    let err = |path: &Path, max: u64| data::idx_within(path, None, max).unwrap_err();

    let zero = dir.join("zero.idx");
    write_idx(&zero, 2051, &[5, 0, 28], &[]);
    let e = err(&zero, 1 << 30);
    assert!(
        matches!(e, Error::Data(_)) && e.to_string().contains("zero"),
        "{e}"
    );

    // [2^31, 2^31, 4] wraps a 32-bit product to 0; here it is counted and refused.
    let wraps = dir.join("wraps.idx");
    write_idx(&wraps, 2051, &[1 << 31, 1 << 31, 4], &[]);
    let e = err(&wraps, 1 << 30);
    assert!(matches!(e, Error::TooLarge(_)), "{e}");
    // Within the budget, a header that promises more than the file holds is refused by length.
    let long = dir.join("long.idx");
    write_idx(&long, 2051, &[1000, 28, 28], &[0; 100]);
    let e = err(&long, 1 << 30);
    assert!(e.to_string().contains("truncated"), "{e}");

    // 2048x2048 images (4 MB) where the budget allows 8 MB of f32: refused before reading.
    let big = dir.join("big.idx");
    write_idx(&big, 2051, &[1, 2048, 2048], &vec![0; 2048 * 2048]);
    let e = err(&big, 8 << 20);
    assert!(
        matches!(e, Error::TooLarge(_)) && e.to_string().contains("big.idx"),
        "{e}"
    );
    assert_eq!(data::idx_within(&big, None, 64 << 20).unwrap().len(), 1);

    // A gzip body longer than its header promises is refused at the promised length + 1.
    let mut bomb = 2051u32.to_be_bytes().to_vec();
    for d in [1u32, 8, 8] {
        bomb.extend(d.to_be_bytes());
    }
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, &bomb).unwrap();
    for _ in 0..256 {
        std::io::Write::write_all(&mut enc, &[0u8; 1 << 16]).unwrap();
    }
    let gz = dir.join("bomb.idx.gz");
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    let e = err(&gz, 1 << 30);
    assert!(e.to_string().contains("more"), "{e}");
    // A gzip header promising 1 GB is refused by the budget before inflating.
    let mut claim = 2051u32.to_be_bytes().to_vec();
    for d in [1u32, 1 << 15, 1 << 15] {
        claim.extend(d.to_be_bytes());
    }
    let gz = dir.join("claim.idx.gz");
    std::fs::write(&gz, gzip(&claim)).unwrap();
    let e = err(&gz, 128 << 20);
    assert!(matches!(e, Error::TooLarge(_)), "{e}");

    // Through the binary: a clean refusal, not a panic.
    let r = run(&[
        "train",
        "--data",
        &format!("idx:{}", zero.display()),
        "--out",
        dir.join("run").to_str().unwrap(),
    ]);
    assert_refused(&r, "zero", "train on an IDX file with a zero dimension");
    assert!(!dir.join("run").exists());
}

/// Peak resident memory of a command in kB, when `/usr/bin/time` is there to measure it.
fn peak_kb(args: &[&str]) -> (Output, Option<u64>) {
    let time = Path::new("/usr/bin/time");
    if !time.exists() {
        eprintln!("(no /usr/bin/time: peak memory not measured)");
        return (run(args), None);
    }
    let report = temp_dir("peak").join(format!("{:?}", std::thread::current().id()));
    let o = Command::new(time)
        .args(["-f", "%M", "-o", report.to_str().unwrap(), BIN])
        .args(args)
        .output()
        .unwrap();
    let kb = std::fs::read_to_string(&report)
        .ok()
        .and_then(|s| s.lines().last().and_then(|l| l.trim().parse().ok()));
    (o, kb)
}

/// Memory a refusal may use beyond the cheapest refusal made after the GPU context exists (the
/// driver's own share differs between machines): the input's own bytes, far below the
/// gigabytes the claimed sizes would take.
const REFUSAL_EXTRA_KB: u64 = 200 << 10;

/// Case 4: a checkpoint whose configuration claims a huge model, and data sets that are larger
/// than they look, are refused from their sizes before the memory is allocated.
#[test]
fn forged_sizes_are_refused_before_allocating() {
    let dir = temp_dir("forged-sizes");
    let png = dir.join("s").join("x.png");
    type Edit = fn(&mut serde_json::Value);
    // The first is the baseline: refused by a range check once the GPU context exists.
    let edits: [(&str, Edit, &str); 6] = [
        ("batch", |c| c["batch"] = 0.into(), "--batch 0"),
        (
            "width",
            |c| c["model"]["width"] = 100_000.into(),
            "--width 100000",
        ),
        (
            "width20000",
            |c| c["model"]["width"] = 20_000.into(),
            "too large",
        ),
        (
            "depth",
            |c| c["model"]["depth"] = 1_000_000_000u64.into(),
            "--depth",
        ),
        (
            "classes",
            |c| c["model"]["classes"] = 1_000_000_000u64.into(),
            "classes",
        ),
        (
            "shape",
            |c| c["model"]["shape"] = serde_json::json!([1u64 << 40]),
            "shape",
        ),
    ];
    let mut baseline_kb = None;
    for (name, edit, want) in edits {
        let path = dir.join(format!("{name}.safetensors"));
        forged_checkpoint(&path, edit);
        assert!(std::fs::metadata(&path).unwrap().len() < 100_000);
        let (r, kb) = peak_kb(&[
            "sample",
            "--checkpoint",
            path.to_str().unwrap(),
            "--out",
            png.to_str().unwrap(),
        ]);
        assert_refused(&r, want, name);
        assert!(
            stderr(&r).contains(&format!("{name}.safetensors")),
            "{}",
            stderr(&r)
        );
        if let (Some(kb), Some(base)) = (kb, *baseline_kb.get_or_insert(kb)) {
            assert!(
                kb < base + REFUSAL_EXTRA_KB,
                "{name}: peak {kb} kB, baseline {base} kB"
            );
        }
    }
    assert!(!png.exists());
    let within = |what: &str, kb: Option<u64>| {
        if let (Some(kb), Some(Some(base))) = (kb, baseline_kb) {
            assert!(
                kb < base + REFUSAL_EXTRA_KB,
                "{what}: peak {kb} kB, baseline {base} kB"
            );
        }
    };

    // 16 MB of 4096x4096 images: the DiT's activations at batch 64 are sized and refused.
    let big = dir.join("big.idx");
    write_idx(&big, 2051, &[1, 4096, 4096], &vec![0; 4096 * 4096]);
    let (r, kb) = peak_kb(&[
        "train",
        "--data",
        &format!("idx:{}", big.display()),
        "--out",
        dir.join("big").to_str().unwrap(),
    ]);
    assert_refused(&r, "largest activation", "4096x4096 images");
    within("4096x4096 images", kb);
    // A small gzip whose header promises 16 images of 16384x16384 (4 GiB, 16 GiB as f32):
    // refused from the header, before inflating.
    let gz = dir.join("inflates.idx.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut header = 2051u32.to_be_bytes().to_vec();
    for d in [16u32, 1 << 14, 1 << 14] {
        header.extend(d.to_be_bytes());
    }
    std::io::Write::write_all(&mut enc, &header).unwrap();
    for _ in 0..(1 << 10) {
        std::io::Write::write_all(&mut enc, &[0u8; 1 << 16]).unwrap();
    }
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    let (r, kb) = peak_kb(&[
        "train",
        "--data",
        &format!("idx:{}", gz.display()),
        "--out",
        dir.join("gz").to_str().unwrap(),
    ]);
    assert_refused(&r, "inflates.idx.gz", "a gzip promising 4 GiB");
    assert!(stderr(&r).contains("too large"), "{}", stderr(&r));
    within("a gzip promising 4 GiB", kb);
}

/// Case 5: anything but a regular checkpoint file of a sane size is refused before it is read.
#[test]
fn devices_and_lying_headers_are_not_read() {
    let dir = temp_dir("not-regular");
    let png = dir.join("x.png");
    let start = Instant::now();
    for (path, want) in [
        ("/dev/zero", "not a regular file"),
        (dir.to_str().unwrap(), "not a regular file"),
    ] {
        let r = run(&[
            "sample",
            "--checkpoint",
            path,
            "--out",
            png.to_str().unwrap(),
        ]);
        assert_refused(&r, want, path);
    }
    assert!(start.elapsed() < Duration::from_secs(60));
    // A header length beyond the file.
    let good = std::fs::read(mlp_run().join("checkpoint.safetensors")).unwrap();
    for claim in [u64::MAX, 1 << 40, good.len() as u64] {
        let mut bytes = good.clone();
        bytes[..8].copy_from_slice(&claim.to_le_bytes());
        let path = dir.join("lying.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let e = Checkpoint::load(&path).unwrap_err();
        assert!(e.to_string().contains("header length"), "{e}");
    }
    // A checkpoint larger than the budget it is read within.
    let e = Checkpoint::load_within(&mlp_run().join("checkpoint.safetensors"), 1000).unwrap_err();
    assert!(matches!(e, Error::TooLarge(_)), "{e}");
}

fn toy_config(width: usize) -> TrainConfig {
    TrainConfig {
        data: DataSpec::Toy(Toy::Moons),
        model: ModelConfig {
            kind: "mlp".into(),
            width,
            depth: 1,
            heads: 1,
            patch: 1,
            shape: vec![2],
            classes: 0,
            context_dim: 0,
        },
        schedule: Schedule::RectifiedFlow,
        prediction: Prediction::Velocity,
        preconditioning: Default::default(),
        weighting: None,
        t_sampler: TimeSampler::Uniform,
        steps: 10,
        batch: 16,
        lr: 1e-3,
        warmup: 0,
        ema_decay: 0.9,
        max_grad_norm: 1.0,
        label_dropout: 0.0,
        seed: 1,
        f16: false,
    }
}

/// Case 6: the guard before each checkpoint finds non-finite weights and EMA weights on the GPU,
/// and a checkpoint holding non-finite values is refused when read.
#[test]
fn non_finite_weights_are_found_before_saving() {
    let toy = data::toy("moons", 256, 1).unwrap();
    let mut tr = Trainer::new(gpu(), toy_config(16), &toy).unwrap();
    tr.step().unwrap();
    tr.check_finite().unwrap();
    let n = tr.params.values().numel();
    let good = tr.params.values().to_vec().unwrap();

    let mut bad = good.clone();
    bad[n / 2] = f32::INFINITY;
    tr.params.values().write(&bad).unwrap();
    let e = tr.check_finite().unwrap_err();
    assert!(
        matches!(e, Error::NonFinite(_)) && e.to_string().contains("the weights"),
        "{e}"
    );
    tr.params.values().write(&good).unwrap();

    let (m, v) = tr.opt.moments();
    let (m, v) = (m.to_vec().unwrap(), v.to_vec().unwrap());
    let mut ema = tr.opt.ema().to_vec().unwrap();
    ema[3] = f32::NAN;
    tr.opt.restore(&m, &v, &ema, 1).unwrap();
    let e = tr.check_finite().unwrap_err();
    assert!(e.to_string().contains("EMA"), "{e}");
    // Finite weights so large that their squared norm overflows are refused too.
    ema[3] = 1e30;
    tr.opt.restore(&m, &v, &ema, 1).unwrap();
    assert!(tr.check_finite().is_err());

    // A checkpoint with a NaN in it is refused when read.
    let dir = temp_dir("nan-checkpoint");
    let path = dir.join("nan.safetensors");
    let mut ck = Checkpoint::load(&mlp_run().join("checkpoint.safetensors")).unwrap();
    ck.ema.get_mut("output.weight").unwrap()[0] = f32::NAN;
    ck.save(&path).unwrap();
    let e = Checkpoint::load(&path).unwrap_err();
    assert!(
        e.to_string().contains("non-finite") && e.to_string().contains("ema.output.weight"),
        "{e}"
    );
}

/// Case 6: a run whose loss stays finite but whose samples are NaN stops with a non-zero exit and
/// writes neither the samples nor a checkpoint; `sample` and `eval` refuse a model with finite
/// weights whose samples are not finite.
#[test]
fn diverged_models_are_refused_not_reported() {
    let dir = temp_dir("diverged");
    let out = dir.join("run");
    let r = run(&[
        "train",
        "--data",
        "toy:moons",
        "--model",
        "mlp",
        "--width",
        "64",
        "--depth",
        "2",
        "--batch",
        "32",
        "--lr",
        "100",
        "--warmup",
        "0",
        "--steps",
        "50",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = stderr(&r);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not finite") && err.contains("no checkpoint was written"),
        "{err}"
    );
    for f in [
        "checkpoint.safetensors",
        "samples.png",
        "samples.npy",
        "labels.npy",
        "metrics.json",
    ] {
        assert!(!out.join(f).exists(), "{f} was written");
    }
    assert_no_temp_files(&out);

    // Finite weights, scaled until the network's output overflows when sampled.
    let path = dir.join("blown.safetensors");
    let mut ck = Checkpoint::load(&mlp_run().join("checkpoint.safetensors")).unwrap();
    for (_, v) in ck.params.values_mut() {
        v.iter_mut().for_each(|x| *x = x.signum() * 1e8);
    }
    ck.save(&path).unwrap();
    let png = dir.join("s").join("x.png");
    let r = run(&[
        "sample",
        "--checkpoint",
        path.to_str().unwrap(),
        "--steps",
        "3",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert_refused(&r, "NaN or infinite", "sample from a blown-up model");
    assert!(stderr(&r).contains("blown.safetensors"));
    assert!(!png.exists() && !dir.join("s").join("samples.npy").exists());
    let json = dir.join("eval.json");
    let r = run(&[
        "eval",
        "--checkpoint",
        path.to_str().unwrap(),
        "--steps",
        "3",
        "--n",
        "100",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_refused(&r, "NaN or infinite", "eval of a blown-up model");
    assert!(!json.exists());
}

/// Case 8: a run never claims a checkpoint it did not write; `--steps` must move a run forward.
/// Case 11: resuming with changed settings is refused unless consented to, then reported.
#[test]
fn resuming_refuses_silent_changes() {
    let dir = temp_dir("resume-changes");
    let out = dir.join("run");
    let r = run_owned(&tiny(&out, "6"));
    assert!(r.status.success(), "{}", stderr(&r));
    let config_path = out.join("config.json");
    let before = std::fs::read(&config_path).unwrap();
    let resume = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "train",
            "--resume",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        run_owned(&args)
    };
    // No steps to take: refused, naming the step the run is at.
    let r = resume(&["--steps", "6"]);
    assert_refused(&r, "already at step 6", "--steps 6");
    let r = resume(&["--steps", "3"]);
    assert_refused(&r, "already at step 6", "--steps 3");
    // A different learning rate (or a smaller target) needs consent.
    let r = resume(&["--steps", "8", "--lr", "0.01"]);
    assert_refused(&r, "--lr 0.002 -> 0.01", "--lr without consent");
    assert!(stderr(&r).contains("--allow-changes"));
    assert_eq!(
        std::fs::read(&config_path).unwrap(),
        before,
        "config.json untouched"
    );
    // With consent, the change is reported and recorded.
    let r = resume(&["--steps", "8", "--lr", "0.01", "--allow-changes"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(
        stderr(&r).contains("resuming with --lr 0.01 (the run had 0.002)"),
        "{}",
        stderr(&r)
    );
    let saved = TrainConfig::from_json(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    assert_eq!((saved.lr, saved.steps), (0.01, 8));
    // A bare --resume keeps the run's own settings (not the defaults); a larger --steps is
    // reported without consent.
    let r = resume(&["--steps", "10"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(
        stderr(&r).contains("--steps 10 (the run had 8)"),
        "{}",
        stderr(&r)
    );
    let saved = TrainConfig::from_json(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    assert_eq!((saved.lr, saved.steps, saved.model.width), (0.01, 10, 16));
    let ck = Checkpoint::load(&out.join("checkpoint.safetensors")).unwrap();
    assert_eq!(ck.step, 10);
    assert_eq!(TrainConfig::from_json(&ck.config).unwrap(), saved);
    // A smaller target than the configuration's, still ahead of the checkpoint (a run stopped
    // early): consent needed.
    let mut ck = ck;
    let mut config: serde_json::Value = serde_json::from_str(&ck.config).unwrap();
    config["steps"] = 20.into();
    ck.config = config.to_string();
    ck.save(&out.join("checkpoint.safetensors")).unwrap();
    let r = resume(&["--steps", "15"]);
    assert_refused(&r, "--steps 20 -> 15", "smaller --steps");
    let r = resume(&["--steps", "12", "--allow-changes"]);
    assert!(r.status.success(), "{}", stderr(&r));
}

/// Case 10: labels beyond 9 are reported as classes found; `--classes` bounds them.
#[test]
fn idx_classes_are_reported_and_bounded() {
    let dir = temp_dir("idx-classes");
    let (img, lab) = (dir.join("img.idx"), dir.join("lab.idx"));
    write_idx(&img, 2051, &[4, 4, 4], &[7; 64]);
    write_idx(&lab, 2049, &[4], &[0, 3, 250, 1]);
    let spec = format!("idx:{},{}", img.display(), lab.display());
    let ds = Dataset::from_spec(&spec, 0).unwrap();
    assert_eq!(ds.classes, 251);
    assert!(
        ds.describe().contains("251 classes (4 of them present)"),
        "{}",
        ds.describe()
    );
    let train = |extra: &[&str], out: &str| {
        let mut args = vec![
            "train", "--data", &spec, "--model", "mlp", "--width", "8", "--depth", "1", "--batch",
            "4", "--steps", "2", "--quiet", "--out",
        ];
        let out = dir.join(out);
        let out = out.to_str().unwrap().to_string();
        args.push(&out);
        args.extend(extra);
        run(&args)
    };
    let r = train(&[], "plain");
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(
        stderr(&r).contains("labels 0..=250: 251 classes (4 of them present)"),
        "{}",
        stderr(&r)
    );
    let r = train(&["--classes", "10"], "bounded");
    assert_refused(&r, "label 250", "--classes 10");
    assert!(!dir.join("bounded").exists());
    let r = train(&["--classes", "300"], "wide");
    assert!(r.status.success(), "{}", stderr(&r));
    let saved = std::fs::read_to_string(dir.join("wide").join("config.json")).unwrap();
    assert_eq!(TrainConfig::from_json(&saved).unwrap().model.classes, 300);
}

/// Case 9: eval refuses a checkpoint whose configured data does not match its weights.
#[test]
fn eval_refuses_a_configuration_that_does_not_match_the_weights() {
    let dir = temp_dir("eval-mismatch");
    let out = dir.join("dit");
    let r = run(&[
        "train",
        "--model",
        "dit",
        "--width",
        "8",
        "--heads",
        "2",
        "--depth",
        "1",
        "--batch",
        "8",
        "--steps",
        "2",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let path = dir.join("forged.safetensors");
    let mut ck = Checkpoint::load(&out.join("checkpoint.safetensors")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&ck.config).unwrap();
    config["data"] = "toy:moons".into();
    ck.config = config.to_string();
    ck.save(&path).unwrap();
    let json = dir.join("eval.json");
    let r = run(&[
        "eval",
        "--checkpoint",
        path.to_str().unwrap(),
        "--steps",
        "2",
        "--n",
        "20",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_refused(&r, "does not match its weights", "DiT weights, toy config");
    assert!(!json.exists());
}

fn wait_for(path: &Path, child: &mut std::process::Child) {
    let start = Instant::now();
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the run ended early ({status}) before {} appeared",
                path.display()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &std::process::Child, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name}");
}

/// Case 12: one writer per run directory. Case 13: SIGTERM and SIGINT save and exit with
/// 128 + the signal's number.
#[test]
fn one_writer_per_directory_and_signals_save() {
    let dir = temp_dir("lock-signals");
    // In one process: a second lock on a locked directory is refused, and freed with the first.
    let first = RunLock::acquire(&dir).unwrap();
    let e = RunLock::acquire(&dir).unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    drop(first);
    drop(RunLock::acquire(&dir).unwrap());

    // Two runs started together into one empty directory: one runs, the other is refused, and
    // the directory holds one run's files only.
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let start_run = |seed: &str| {
        let mut args = tiny(&shared, "20");
        args.extend(["--seed".to_string(), seed.to_string()]);
        Command::new(BIN)
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (start_run("1"), start_run("2"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let ok = [&a, &b].iter().filter(|o| o.status.success()).count();
    assert_eq!(ok, 1, "exactly one run: {} / {}", stderr(&a), stderr(&b));
    let loser = if a.status.success() { &b } else { &a };
    let err = stderr(loser);
    assert!(
        err.contains("in use") || err.contains("already holds a run"),
        "{err}"
    );
    let config =
        TrainConfig::from_json(&std::fs::read_to_string(shared.join("config.json")).unwrap())
            .unwrap();
    let ck = Checkpoint::load(&shared.join("checkpoint.safetensors")).unwrap();
    assert_eq!(
        TrainConfig::from_json(&ck.config).unwrap(),
        config,
        "one run's files"
    );

    // A live run: a second writer (even with --overwrite or --resume) is refused.
    for (sig, code) in [("TERM", 143), ("INT", 130)] {
        let out = dir.join(format!("live-{sig}"));
        let mut args = tiny(&out, "1000000000");
        args.extend(["--checkpoint-every", "0", "--log-every", "0"].map(String::from));
        let mut live = Command::new(BIN)
            .args(&args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_for(&out.join("config.json"), &mut live);
        for extra in [&["--overwrite"][..], &["--resume"][..]] {
            let mut second = tiny(&out, "10");
            second.extend(extra.iter().map(|s| s.to_string()));
            let r = run_owned(&second);
            assert_refused(&r, "in use", &format!("{extra:?} into a live run"));
        }
        signal(&live, sig);
        let done = live.wait_with_output().unwrap();
        let err = stderr(&done);
        assert_eq!(done.status.code(), Some(code), "SIG{sig}: {err}");
        assert!(err.contains("checkpoint saved"), "{err}");
        let ck = Checkpoint::load(&out.join("checkpoint.safetensors")).unwrap();
        assert!(ck.step >= 1);
        assert_no_temp_files(&out);
        // The lock went with the process: the run can be resumed.
        let mut more = tiny(&out, &(ck.step + 2).to_string());
        more.extend(["--resume", "--allow-changes"].map(String::from));
        let r = run_owned(&more);
        assert!(r.status.success(), "resume after SIG{sig}: {}", stderr(&r));
    }
}

/// Make `path` a link to `/dev/full`, where every write fails with "No space left on device": a
/// full disk for the one file written through it.
fn full_disk_at(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("/dev/full", path).unwrap();
}

/// Case 14: a write that fails (disk full) leaves no temporary file, no partial file, and the
/// files that were there before untouched.
#[test]
fn failed_writes_leave_no_partial_files() {
    let dir = temp_dir("failed-writes");
    // The checkpoint's temporary file lands on a full disk: the run fails naming it, leaves no
    // temporary file and no checkpoint.
    let out = dir.join("run");
    full_disk_at(&out.join("checkpoint.safetensors.tmp"));
    let mut args = tiny(&out, "4");
    args.extend(["--checkpoint-every", "2"].map(String::from));
    let r = run_owned(&args);
    assert_refused(&r, "No space left on device", "checkpoint on a full disk");
    assert!(
        stderr(&r).contains("checkpoint.safetensors"),
        "{}",
        stderr(&r)
    );
    assert!(!out.join("checkpoint.safetensors").exists());
    assert_no_temp_files(&out);

    // Samples: a first set is written; writing a second one fails at samples.npy, and the first
    // set (PNG, samples.npy, labels.npy) is left as it was.
    let ckpt = mlp_run().join("checkpoint.safetensors");
    let s = dir.join("s");
    let png = s.join("grid.png");
    let sample = |n: &str, seed: &str| -> Vec<String> {
        [
            "sample",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--steps",
            "2",
            "--n",
            n,
            "--seed",
            seed,
            "--out",
            png.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let r = run_owned(&sample("10", "1"));
    assert!(r.status.success(), "{}", stderr(&r));
    let names = ["grid.png", "samples.npy", "labels.npy"];
    let before: Vec<Vec<u8>> = names
        .iter()
        .map(|f| std::fs::read(s.join(f)).unwrap())
        .collect();
    full_disk_at(&s.join("samples.npy.tmp"));
    let r = run_owned(&sample("20", "2"));
    assert_refused(&r, "No space left on device", "samples on a full disk");
    assert!(stderr(&r).contains("samples.npy"), "{}", stderr(&r));
    for (f, old) in names.iter().zip(&before) {
        assert_eq!(&std::fs::read(s.join(f)).unwrap(), old, "{f} changed");
    }
    assert_no_temp_files(&s);

    // A rename that fails (the target is a directory) removes the temporary file.
    let target = dir.join("taken.safetensors");
    std::fs::create_dir_all(target.join("inside")).unwrap();
    let ck = Checkpoint::load(&ckpt).unwrap();
    let e = ck.save(&target).unwrap_err();
    assert!(e.to_string().contains("taken.safetensors"), "{e}");
    assert_no_temp_files(&dir);
}
