//! Sample one ODE step per "frame", as a host interleaves sampling with its own work.
//!
//! A [`Sampler`] is started from a seed; each frame calls [`Sampler::step`] (one submission
//! that reads nothing back) and, here, looks at the samples between frames. Stepped to the end,
//! the samples equal those of [`Pipeline::sample`] (the one-shot loop) with the same seed, to
//! the bit; the program checks it.
//!
//! ```sh
//! cargo run --release --example stepwise -- [CHECKPOINT]
//! ```
//! Without a checkpoint it first trains a tiny class-conditional DiT on the digits for a few
//! seconds (into a temporary directory).
#![allow(dead_code)] // the tests include this file for `run`

use rectiflow::data::{self, DataSpec};
use rectiflow::train::{ModelKind, TrainConfig, Trainer};
use rectiflow::{Gpu, Pipeline, Result, Sampler, Weights};
use std::path::{Path, PathBuf};

/// What to sample.
pub struct Options {
    /// A checkpoint written by `rectiflow train` (or `Trainer::save`).
    pub checkpoint: PathBuf,
    /// Samples.
    pub n: usize,
    /// ODE steps (frames).
    pub steps: usize,
    /// Seed of the starting noise.
    pub seed: u64,
}

/// What came out.
pub struct Report {
    /// Frames in which a step was taken.
    pub frames: usize,
    /// The time after each frame.
    pub times: Vec<f64>,
    /// The largest |value| of the samples after each frame (the host's own look at them).
    pub peaks: Vec<f32>,
    /// The samples stepped one frame at a time, `[n, C, H, W]` row-major.
    pub stepwise: Vec<f32>,
    /// The samples of the one-shot call with the same options.
    pub one_shot: Vec<f32>,
    /// Their shape.
    pub shape: Vec<usize>,
}

/// A tiny class-conditional DiT trained on the digits for `steps` steps, saved into `dir`.
pub fn train_tiny(gpu: &Gpu, dir: &Path, steps: u64) -> Result<PathBuf> {
    let digits = data::digits()?;
    let mut model = ModelKind::Dit.config(&digits.shape, digits.classes);
    (model.width, model.depth, model.heads) = (16, 1, 2);
    let config = TrainConfig {
        steps,
        batch: 32,
        warmup: 10,
        ema_decay: 0.9,
        lr: 3e-3,
        ..TrainConfig::new(DataSpec::Digits, model)
    };
    let mut trainer = Trainer::new(gpu, config, &digits)?;
    while trainer.step < steps {
        trainer.step()?;
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| rectiflow::Error::Io(format!("{}: {e}", dir.display())))?;
    let path = dir.join("checkpoint.safetensors");
    trainer.save(&path)?;
    Ok(path)
}

/// Sample frame by frame, then in one call, and report both.
pub fn run(gpu: &Gpu, opts: &Options) -> Result<Report> {
    let pipe = Pipeline::load(gpu, &opts.checkpoint, Weights::Ema)?;
    // The command line's settings (guidance 2 for a class-conditional model), labels i % K.
    let mut sampling = pipe.options(pipe.labels(opts.n));
    sampling.steps = opts.steps;
    sampling.seed = opts.seed;

    let mut sampler: Sampler<_> = pipe.sampler(&sampling)?;
    let (mut times, mut peaks) = (Vec::new(), Vec::new());
    let mut frames = 0;
    // The host's frame loop: one ODE step per frame, then whatever else the frame does.
    while sampler.step()? {
        frames += 1;
        times.push(sampler.time());
        let now = sampler.current()?.to_vec()?;
        peaks.push(now.iter().fold(0f32, |m, v| m.max(v.abs())));
    }
    let stepwise = sampler.finish()?;
    let shape = stepwise.shape().to_vec();
    let one_shot = pipe.sample(&sampling)?.to_vec()?;
    Ok(Report {
        frames,
        times,
        peaks,
        stepwise: stepwise.to_vec()?,
        one_shot,
        shape,
    })
}

fn main() {
    if let Err(e) = cli() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn cli() -> Result<()> {
    let gpu = Gpu::new()?;
    let checkpoint = match std::env::args().nth(1) {
        Some(path) => PathBuf::from(path),
        None => {
            let dir =
                std::env::temp_dir().join(format!("rectiflow-stepwise-{}", std::process::id()));
            println!(
                "no checkpoint given: training a tiny DiT into {}",
                dir.display()
            );
            train_tiny(&gpu, &dir, 60)?
        }
    };
    let report = run(
        &gpu,
        &Options {
            checkpoint,
            n: 10,
            steps: 20,
            seed: 0,
        },
    )?;
    for (i, (t, peak)) in report.times.iter().zip(&report.peaks).enumerate() {
        println!("frame {:>2}: t = {t:.4}, max |z| = {peak:.3}", i + 1);
    }
    let same = report.stepwise == report.one_shot;
    println!(
        "{} frames; samples {:?}; step by step {} one-shot sampling with the same seed",
        report.frames,
        report.shape,
        if same { "equals" } else { "DIFFERS FROM" }
    );
    if !same {
        std::process::exit(1);
    }
    Ok(())
}
