//! Train the 2-D model from code on batches the program makes itself, then measure it.
//!
//! The program owns the data: every step it draws a fresh batch of the two moons on the host,
//! uploads it and hands it to [`Trainer::step_on`]. No data set is loaded by the library and no
//! run directory is written. At the end the EMA weights are sampled and compared with fresh
//! target points by the sliced Wasserstein-2 distance, beside the same distance between two
//! independent real samples (its floor) and the untrained model's.
//!
//! ```sh
//! cargo run --release --example train_toy -- [STEPS]
//! ```
#![allow(dead_code)] // the tests include this file for `run`

use rectiflow::data::{DataSpec, Toy};
use rectiflow::eval::sliced_w2;
use rectiflow::flow::TimeSampler;
use rectiflow::train::{ModelKind, TrainConfig, Trainer};
use rectiflow::{Gpu, Pipeline, Result, SampleOptions, Tensor, Weights};

/// What to train.
pub struct Options {
    /// Training steps.
    pub steps: u64,
    /// Points per batch.
    pub batch: usize,
    /// The MLP's width.
    pub width: usize,
    /// Samples drawn to measure the model.
    pub samples: usize,
    /// Peak learning rate.
    pub lr: f32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            steps: 1500,
            batch: 256,
            width: 256,
            samples: 2000,
            lr: 2e-3,
        }
    }
}

/// What came out.
pub struct Report {
    /// Sliced W2 of the trained model's samples against fresh target points.
    pub w2: f64,
    /// Sliced W2 between two independent real samples (the floor).
    pub floor: f64,
    /// Sliced W2 of the untrained model's samples.
    pub w2_untrained: f64,
    /// The loss every 100 steps (and at the last step).
    pub losses: Vec<(u64, f32)>,
}

/// Sliced W2 of `pipe`'s samples against `fresh` points.
fn measure(pipe: &Pipeline, fresh: &[f32], n: usize) -> Result<f64> {
    let opts = SampleOptions {
        steps: 20,
        ..SampleOptions::new(pipe.labels(n))
    };
    let samples = pipe.sample(&opts)?.to_vec()?;
    Ok(sliced_w2(&samples, fresh, 2, 256, 7))
}

/// Train and measure.
pub fn run(gpu: &Gpu, opts: &Options) -> Result<Report> {
    let toy = Toy::Moons;
    // The typed configuration the command line also uses; the data are the program's own.
    let mut model = ModelKind::Mlp.config(&[2], 0);
    model.width = opts.width;
    model.depth = 2;
    let config = TrainConfig {
        steps: opts.steps,
        batch: opts.batch,
        t_sampler: TimeSampler::Uniform,
        lr: opts.lr,
        warmup: 20,
        ema_decay: 0.99,
        ..TrainConfig::new(DataSpec::Host("moons from code".into()), model)
    };
    let mut trainer = Trainer::without_data(gpu, config)?;

    let fresh = toy.sample(opts.samples, 1000)?.x;
    let floor = sliced_w2(&toy.sample(opts.samples, 2000)?.x, &fresh, 2, 256, 7);
    let w2_untrained = measure(
        &Pipeline::from_trainer(&trainer, Weights::Raw)?,
        &fresh,
        opts.samples,
    )?;

    let mut losses = Vec::new();
    for step in 0..opts.steps {
        // A batch made by the program: `[B, 2]` points, no labels.
        let points = toy.sample(opts.batch, 10_000 + step)?;
        let batch = Tensor::from_slice(gpu, &[opts.batch, 2], &points.x)?;
        trainer.step_on(&batch, None)?;
        if trainer.step % 100 == 0 || trainer.step == opts.steps {
            losses.push((trainer.step, trainer.read_loss()?));
        }
    }
    let w2 = measure(
        &Pipeline::from_trainer(&trainer, Weights::Ema)?,
        &fresh,
        opts.samples,
    )?;
    Ok(Report {
        w2,
        floor,
        w2_untrained,
        losses,
    })
}

fn main() {
    if let Err(e) = cli() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn cli() -> Result<()> {
    let steps = match std::env::args().nth(1) {
        Some(s) => s
            .parse()
            .map_err(|_| rectiflow::Error::Config(format!("STEPS {s:?}: give a number")))?,
        None => Options::default().steps,
    };
    let gpu = Gpu::new()?;
    let report = run(
        &gpu,
        &Options {
            steps,
            ..Options::default()
        },
    )?;
    for (step, loss) in &report.losses {
        println!("step {step:>5}  loss {loss:.4}");
    }
    println!(
        "sliced W2: {:.4} (untrained {:.4}; real vs real {:.4})",
        report.w2, report.w2_untrained, report.floor
    );
    Ok(())
}
