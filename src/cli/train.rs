//! `rectiflow train`: flags into a [`TrainConfig`] (a flag given, else the resumed run's own
//! setting, else the default), then a [`Run`] driven with a progress bar.

use super::RunEnd;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rectiflow::data::DataSpec;
use rectiflow::flow::{Preconditioning, Prediction, Schedule, TimeSampler, Weighting};
use rectiflow::limits::Budget;
use rectiflow::train::run::check_new;
use rectiflow::train::{Event, ModelKind, Run, RunOptions, TrainConfig};
use rectiflow::{Gpu, Result};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// digits | toy:NAME (checkerboard, moons, 8gaussians, spirals) | idx:IMAGES[,LABELS]
    /// [default: digits]
    #[arg(long)]
    data: Option<String>,
    /// dit | mmdit | mlp (default: dit for images, mlp for points)
    #[arg(long)]
    model: Option<String>,
    /// rf | cosine | ldm-linear | edm:PM,PS | edm (= edm:-1.2,1.2) [default: rf]
    #[arg(long)]
    schedule: Option<String>,
    /// velocity | eps | v | x0 [default: velocity]
    #[arg(long)]
    pred: Option<String>,
    /// none | edm: EDM's c_in, c_noise, c_skip, c_out around the network (edm schedule and x0
    /// prediction only). Default: edm for --schedule edm with --pred x0, none otherwise.
    #[arg(long)]
    preconditioning: Option<String>,
    /// Loss weighting (velocity | eps | v | x0 | edm:PM,PS); default: the prediction's own.
    #[arg(long)]
    weighting: Option<String>,
    /// uniform | lognorm:M,S | mode:S | cosmap. Default: lognorm:0,1; uniform for the edm
    /// schedule (whose PhiInv(t) then draws EDM's log-normal sigma).
    #[arg(long)]
    t_sampler: Option<String>,
    /// Training steps, at least 1 (default: 1600 for images, 1500 for points).
    #[arg(long)]
    steps: Option<u64>,
    /// Batch size (default: 64 for images, 256 for points).
    #[arg(long)]
    batch: Option<usize>,
    /// Peak learning rate, finite and > 0 [default: 2e-3]
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f32>,
    /// Learning-rate warm-up steps [default: 100]
    #[arg(long)]
    warmup: Option<u64>,
    /// EMA decay in [0, 1) [default: 0.999]
    #[arg(long, allow_negative_numbers = true)]
    ema_decay: Option<f32>,
    /// Probability of training a sample with the null label (classifier-free guidance), in
    /// [0, 1] [default: 0.1]
    #[arg(long, allow_negative_numbers = true)]
    label_dropout: Option<f32>,
    /// [default: 0]
    #[arg(long)]
    seed: Option<u64>,
    /// f16 weights: the linear layers read f16 copies of the weights (f32 sums, f32 master
    /// weights; needs an adapter with SHADER_F16). A run trained so keeps it when resumed;
    /// --f16=false (with --allow-changes) resumes it in f32.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    f16: Option<bool>,
    /// Model width (default: 64 for dit and mmdit, 256 for mlp).
    #[arg(long)]
    width: Option<usize>,
    /// Transformer blocks or hidden layers (default: 4 for dit and mmdit, 3 for mlp).
    #[arg(long)]
    depth: Option<usize>,
    /// Attention heads [default: 4]
    #[arg(long)]
    heads: Option<usize>,
    /// Patch size [default: 2]
    #[arg(long)]
    patch: Option<usize>,
    /// Number of classes of labelled data: every label must be below it (default: the largest
    /// label + 1).
    #[arg(long)]
    classes: Option<usize>,
    /// Run directory (default: runs/DATA-MODEL).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint, with its own settings.
    #[arg(long)]
    resume: bool,
    /// With --resume: accept flags that change the run's settings (listed, and recorded in
    /// config.json). Without it such flags are refused; a larger --steps needs no consent.
    #[arg(long)]
    allow_changes: bool,
    /// Replace the run in --out if there is one.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    pub(super) cadence: Cadence,
}

/// How often a training run reads its loss, saves and draws samples, and whether it shows a
/// progress bar (the flags `train`, `reflow` and `distill` share).
#[derive(Args, Debug)]
pub(super) struct Cadence {
    /// Read the loss (and check it is finite) every N steps; 0: only at checkpoints and at the
    /// end.
    #[arg(long, default_value_t = 50)]
    log_every: u64,
    /// Write a checkpoint every N steps (and at the end); 0: only at the end and when
    /// interrupted.
    #[arg(long, default_value_t = 500)]
    checkpoint_every: u64,
    /// Write a sample grid every N steps (and at the end); 0: only the final one.
    #[arg(long, default_value_t = 1000)]
    sample_every: u64,
    /// Hide the progress bars.
    #[arg(long)]
    pub(super) quiet: bool,
}

impl Cadence {
    /// The run's options (signals caught: an interrupted run saves).
    pub(super) fn options(&self) -> RunOptions {
        RunOptions {
            log_every: self.log_every,
            checkpoint_every: self.checkpoint_every,
            sample_every: self.sample_every,
            grid_samples: None,
            catch_signals: true,
        }
    }
}

/// Parse an optional flag with the library's parser.
fn parsed<T>(text: &Option<String>, parse: fn(&str) -> Result<T>) -> Result<Option<T>> {
    text.as_deref().map(parse).transpose()
}

pub fn train(a: TrainArgs) -> Result<RunEnd> {
    check_flags(&a)?;
    // Under an MPI launcher with more than one rank: the data-parallel run (src/cli/ranks.rs).
    #[cfg(feature = "mpi")]
    if let Some(world) = rectiflow::mpi::World::launched()? {
        use rectiflow::train::Collective;
        if world.size() > 1 {
            return super::ranks::train(a, world);
        }
    }
    let gpu = Gpu::new()?;
    let mut run = open_run(&a, &gpu)?;
    drive(&mut run, a.cadence.quiet)
}

/// Refuse flags that contradict each other (before anything is opened).
fn check_flags(a: &TrainArgs) -> Result<()> {
    use rectiflow::Error;
    if a.resume && a.overwrite {
        return Err(Error::Config(
            "--resume continues the run in --out and --overwrite replaces it: choose one".into(),
        ));
    }
    if a.allow_changes && !a.resume {
        return Err(Error::Config(
            "--allow-changes applies to --resume only".into(),
        ));
    }
    if a.steps == Some(0) {
        return Err(Error::Config("--steps 0: train at least 1 step".into()));
    }
    // Every flag with a value of its own is parsed (and so checked) before anything happens.
    parsed(&a.data, DataSpec::parse)?;
    parsed(&a.model, ModelKind::parse)?;
    parsed(&a.schedule, Schedule::parse)?;
    parsed(&a.pred, Prediction::parse)?;
    parsed(&a.weighting, Weighting::parse)?;
    parsed(&a.t_sampler, TimeSampler::parse)?;
    parsed(&a.preconditioning, Preconditioning::parse)?;
    Ok(())
}

/// The run the flags describe on `gpu`, created or opened to resume (the directory checked and
/// locked, the data loaded, `config.json` written): everything `train` does before training.
pub(super) fn open_run(a: &TrainArgs, gpu: &Gpu) -> Result<Run> {
    let data_flag = parsed(&a.data, DataSpec::parse)?;
    let kind_flag = parsed(&a.model, ModelKind::parse)?;
    let schedule = parsed(&a.schedule, Schedule::parse)?;
    let prediction = parsed(&a.pred, Prediction::parse)?;
    let weighting = parsed(&a.weighting, Weighting::parse)?;
    let t_sampler = parsed(&a.t_sampler, TimeSampler::parse)?;
    let preconditioning = parsed(&a.preconditioning, Preconditioning::parse)?;

    let spec_given = data_flag.clone().unwrap_or(DataSpec::Digits);
    let out = a.out.clone().unwrap_or_else(|| {
        let kind = kind_flag
            .unwrap_or_else(|| ModelKind::default_for(spec_given.is_image().unwrap_or(true)));
        PathBuf::from("runs").join(format!("{}-{kind}", spec_given.dir_name()))
    });
    if !a.resume {
        check_new(&out, a.overwrite)?;
    }
    let budget = Budget::of(gpu);
    let resumable = if a.resume {
        Some(Run::open(gpu, &out)?)
    } else {
        None
    };
    let base = resumable.as_ref().map(|r| r.config());

    // Settings: a flag given, else the resumed run's own, else the default.
    let spec = data_flag
        .or_else(|| base.map(|b| b.data.clone()))
        .unwrap_or(spec_given);
    let seed = a.seed.or(base.map(|b| b.seed)).unwrap_or(0);
    let mut data = spec.load_within(seed, budget.tensor_bytes.min(budget.host_bytes))?;
    match (a.classes, base) {
        (Some(k), _) => data.set_classes(k)?,
        (None, Some(b)) if data.labels.is_some() && b.model.classes > data.classes => {
            data.set_classes(b.model.classes)?
        }
        _ => {}
    }
    eprintln!("data {}", data.describe());
    let kind = match (kind_flag, base) {
        (Some(k), _) => k,
        (None, Some(b)) => ModelKind::parse(&b.model.kind)?,
        (None, None) => ModelKind::default_for(data.is_image()),
    };
    let defaults = TrainConfig::new(spec, kind.config(&data.shape, data.classes));
    let m = &defaults.model;
    let pick = |given: Option<usize>, saved: Option<usize>, default: usize| {
        given.or(saved).unwrap_or(default)
    };
    let schedule = schedule
        .or(base.map(|b| b.schedule))
        .unwrap_or(defaults.schedule);
    let prediction = prediction
        .or(base.map(|b| b.prediction))
        .unwrap_or(defaults.prediction);
    // The edm schedule's own defaults: uniform t (EDM's log-normal sigma) and, for x0
    // prediction, EDM's preconditioning.
    let edm = matches!(schedule, Schedule::Edm { .. });
    let config = TrainConfig {
        model: rectiflow::nn::ModelConfig {
            width: pick(a.width, base.map(|b| b.model.width), m.width),
            depth: pick(a.depth, base.map(|b| b.model.depth), m.depth),
            heads: pick(a.heads, base.map(|b| b.model.heads), m.heads),
            patch: pick(a.patch, base.map(|b| b.model.patch), m.patch),
            ..defaults.model.clone()
        },
        schedule,
        prediction,
        preconditioning: preconditioning
            .or(base.map(|b| b.preconditioning))
            .unwrap_or_else(|| Preconditioning::default_for(&schedule, prediction)),
        weighting: weighting.or_else(|| base.and_then(|b| b.weighting)),
        t_sampler: t_sampler.or(base.map(|b| b.t_sampler)).unwrap_or(if edm {
            TimeSampler::Uniform
        } else {
            defaults.t_sampler
        }),
        steps: a.steps.or(base.map(|b| b.steps)).unwrap_or(defaults.steps),
        batch: pick(a.batch, base.map(|b| b.batch), defaults.batch),
        lr: a.lr.or(base.map(|b| b.lr)).unwrap_or(defaults.lr),
        warmup: a
            .warmup
            .or(base.map(|b| b.warmup))
            .unwrap_or(defaults.warmup),
        ema_decay: a
            .ema_decay
            .or(base.map(|b| b.ema_decay))
            .unwrap_or(defaults.ema_decay),
        max_grad_norm: base.map_or(defaults.max_grad_norm, |b| b.max_grad_norm),
        label_dropout: a
            .label_dropout
            .or(base.map(|b| b.label_dropout))
            .unwrap_or(defaults.label_dropout),
        seed,
        f16: a.f16.or(base.map(|b| b.f16)).unwrap_or(false),
        ..defaults.clone()
    };
    let opts = a.cadence.options();
    let run = match resumable {
        Some(resumable) => {
            let run = resumable.resume(gpu, config, Some(&data), a.allow_changes, opts)?;
            for c in run.changes() {
                eprintln!("resuming with {} {} (the run had {})", c.flag, c.new, c.old);
            }
            run
        }
        None => Run::create(gpu, &out, config, Some(&data), a.overwrite, opts)?,
    };
    Ok(run)
}

/// Train `run` to its end with a progress bar (hidden when `quiet`), and say how it ended.
pub(super) fn drive(run: &mut Run, quiet: bool) -> Result<RunEnd> {
    let steps = run.trainer().config.steps;
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(steps)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} loss {msg} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(run.trainer().step);
    let end = run.run(|event| match event {
        Event::Step { step, .. } => bar.set_position(step),
        Event::Loss { smoothed, .. } => bar.set_message(format!("{smoothed:.4}")),
        Event::Samples { .. } | Event::Checkpoint { .. } => {}
    });
    match end {
        Err(e) => {
            bar.abandon();
            Err(e)
        }
        Ok(rectiflow::train::RunEnd::Finished(s)) => {
            bar.finish();
            println!(
                "trained {} steps in {:.1} s ({:.2} steps/s); samples: {}; checkpoint: {}",
                s.steps,
                s.seconds,
                s.steps_per_second,
                s.samples.display(),
                s.checkpoint.display()
            );
            Ok(RunEnd::Finished)
        }
        Ok(rectiflow::train::RunEnd::Stopped {
            signal,
            step,
            checkpoint,
        }) => {
            bar.abandon_with_message("interrupted");
            let signal = signal.unwrap_or(0);
            eprintln!(
                "interrupted by signal {signal} at step {step}: checkpoint saved to {}; continue with --resume",
                checkpoint.display()
            );
            Ok(RunEnd::Interrupted(signal))
        }
    }
}
