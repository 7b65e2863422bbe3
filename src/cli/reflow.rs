//! `rectiflow reflow` and `rectiflow distill`: pairs drawn from a checkpoint into the new run's
//! directory ([`rectiflow::reflow::generate_pairs`], resumable), then a [`Run`] on them whose
//! weights start from the checkpoint's ([`Run::create_from_weights`]), driven like `train`.

use super::train::{drive, Cadence};
use super::RunEnd;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rectiflow::data::DataSpec;
use rectiflow::flow::TimeSampler;
use rectiflow::limits::Budget;
use rectiflow::reflow::{generate_pairs, PairSettings, PAIRS_FILE};
use rectiflow::rundir::RunLock;
use rectiflow::sample::{SampleOptions, Solver};
use rectiflow::train::run::{check_new, CHECKPOINT_FILE, CONFIG_FILE};
use rectiflow::train::{Run, StartingWeights, TrainConfig};
use rectiflow::{Error, Gpu, Pipeline, Result, Weights};
use std::path::{Path, PathBuf};

/// The flags `reflow` and `distill` share.
#[derive(Args, Debug)]
pub struct ReflowArgs {
    /// The flow to straighten or distil: a checkpoint of `rectiflow train` (or of a reflow).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Run directory (default: the checkpoint's run directory with -reflow or -distill added).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Pairs to draw (default: 20000 for points, 2000 for images).
    #[arg(long)]
    pairs: Option<usize>,
    /// Pairs drawn at once, and kept in the file after each such chunk (default: 5000 for
    /// points, 500 for images); a killed generation continues at its last complete chunk.
    #[arg(long)]
    pair_chunk: Option<usize>,
    /// The solver that integrates the flow to make the pairs: euler | heun | rk45 (adaptive:
    /// accurate, but several hundred evaluations at its default tolerances).
    #[arg(long)]
    pair_solver: Option<String>,
    /// Steps of a fixed-step solver (default: 50 for points, 10 for images).
    #[arg(long)]
    pair_steps: Option<usize>,
    /// rk45's relative tolerance for the pairs [default: 1e-5]
    #[arg(long, allow_negative_numbers = true)]
    pair_rtol: Option<f64>,
    /// rk45's absolute tolerance for the pairs [default: 1e-5]
    #[arg(long, allow_negative_numbers = true)]
    pair_atol: Option<f64>,
    /// Guidance weight of the pairs (default: the checkpoint's own, 2 for a class-conditional
    /// model trained with label dropout, else 1). The new flow learns the guided flow.
    #[arg(long, allow_negative_numbers = true)]
    pair_cfg: Option<f32>,
    /// Draw the pairs from the raw weights rather than their EMA, and start from them.
    #[arg(long)]
    raw: bool,
    /// Training steps (default: half the checkpoint's).
    #[arg(long)]
    steps: Option<u64>,
    /// Batch size (default: the checkpoint's).
    #[arg(long)]
    batch: Option<usize>,
    /// Peak learning rate (default: the checkpoint's).
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f32>,
    /// Learning-rate warm-up steps (default: the checkpoint's).
    #[arg(long)]
    warmup: Option<u64>,
    /// EMA decay in [0, 1) (default: the checkpoint's).
    #[arg(long, allow_negative_numbers = true)]
    ema_decay: Option<f32>,
    /// Label dropout [default: 0: the pairs carry the guidance, and the new flow samples
    /// without it]
    #[arg(long, allow_negative_numbers = true)]
    label_dropout: Option<f32>,
    /// Seed of the pairs' noise and of the training run (default: the checkpoint's).
    #[arg(long)]
    seed: Option<u64>,
    /// Continue the training run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Replace the run in --out (and pairs there made with other settings).
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    cadence: Cadence,
}

#[derive(Args, Debug)]
pub struct ReflowCmd {
    #[command(flatten)]
    common: ReflowArgs,
    /// Time sampler of the new flow's training: uniform | lognorm:M,S | mode:S | cosmap |
    /// ushape:A [default: uniform]
    #[arg(long)]
    t_sampler: Option<String>,
}

#[derive(Args, Debug)]
pub struct DistillCmd {
    #[command(flatten)]
    common: ReflowArgs,
    /// Train a generator for K Euler steps (1: one network evaluation per sample) [default: 1]
    #[arg(long)]
    k: Option<u32>,
}

pub fn reflow(a: ReflowCmd) -> Result<RunEnd> {
    let sampler = match &a.t_sampler {
        Some(text) => TimeSampler::parse(text)?,
        None => TimeSampler::Uniform,
    };
    run(a.common, sampler, a.t_sampler.is_some(), "reflow")
}

pub fn distill(a: DistillCmd) -> Result<RunEnd> {
    let sampler = TimeSampler::Grid {
        k: a.k.unwrap_or(1),
    };
    sampler.validate()?;
    run(a.common, sampler, a.k.is_some(), "distill")
}

fn run(a: ReflowArgs, t_sampler: TimeSampler, t_sampler_given: bool, what: &str) -> Result<RunEnd> {
    if a.resume && a.overwrite {
        return Err(Error::Config(
            "--resume continues the run in --out and --overwrite replaces it: choose one".into(),
        ));
    }
    if a.steps == Some(0) {
        return Err(Error::Config("--steps 0: train at least 1 step".into()));
    }
    if a.pairs == Some(0) {
        return Err(Error::Config("--pairs 0: draw at least 1 pair".into()));
    }
    let pair_solver = Solver::parse(a.pair_solver.as_deref().unwrap_or("heun"))?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| default_out(&a.checkpoint, what));
    if !a.resume {
        check_new(&out, a.overwrite)?;
    }
    let opts = a.cadence.options();
    if a.resume {
        let given: Vec<&str> = [
            ("--pairs", a.pairs.is_some()),
            ("--pair-chunk", a.pair_chunk.is_some()),
            ("--pair-solver", a.pair_solver.is_some()),
            ("--pair-steps", a.pair_steps.is_some()),
            ("--pair-rtol", a.pair_rtol.is_some()),
            ("--pair-atol", a.pair_atol.is_some()),
            ("--pair-cfg", a.pair_cfg.is_some()),
            ("--raw", a.raw),
            ("--batch", a.batch.is_some()),
            ("--lr", a.lr.is_some()),
            ("--warmup", a.warmup.is_some()),
            ("--ema-decay", a.ema_decay.is_some()),
            ("--label-dropout", a.label_dropout.is_some()),
            ("--seed", a.seed.is_some()),
            ("--t-sampler or --k", t_sampler_given),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect();
        if !given.is_empty() {
            return Err(Error::Config(format!(
                "--resume continues the training run in {} with its own settings; only --steps \
                 may be given with it, not {}",
                out.display(),
                given.join(", ")
            )));
        }
        if out.join(PAIRS_FILE).exists() && !out.join(CHECKPOINT_FILE).exists() {
            return Err(Error::Config(format!(
                "{} holds pairs but no checkpoint yet: the pairs were still being drawn, or \
                 training had not saved; run the same command without --resume to continue",
                out.display()
            )));
        }
    }
    let gpu = Gpu::new()?;
    if a.resume {
        let resumable = Run::open(&gpu, &out)?;
        let mut config = resumable.config().clone();
        if let Some(steps) = a.steps {
            config.steps = steps;
        }
        let data = config.data.load(config.seed)?;
        let mut run = resumable.resume(&gpu, config, Some(&data), false, opts)?;
        drop(data);
        return drive(&mut run, a.cadence.quiet);
    }

    // The source: checked, and its configuration read, before anything is written.
    let checkpoint = std::fs::canonicalize(&a.checkpoint).map_err(|e| {
        Error::Io(format!(
            "cannot read checkpoint {}: {e}",
            a.checkpoint.display()
        ))
    })?;
    if out.exists() && checkpoint.parent() == std::fs::canonicalize(&out).ok().as_deref() {
        return Err(Error::Config(format!(
            "--out {} is the directory of the checkpoint being reflowed: give another --out",
            out.display()
        )));
    }
    let weights = if a.raw { Weights::Raw } else { Weights::Ema };
    let source = Pipeline::load(&gpu, &a.checkpoint, weights)?;
    let base = source.config().clone();
    let image = base.model.shape.len() == 3;
    let seed = a.seed.unwrap_or(base.seed);
    let settings = PairSettings {
        source: checkpoint.display().to_string(),
        source_step: source.step(),
        source_config: base.to_json(),
        weights,
        pairs: a.pairs.unwrap_or(if image { 2000 } else { 20000 }),
        chunk: a.pair_chunk.unwrap_or(if image { 500 } else { 5000 }),
        sample: SampleOptions {
            steps: a.pair_steps.unwrap_or(if image { 10 } else { 50 }),
            solver: pair_solver,
            rtol: a.pair_rtol.unwrap_or(rectiflow::rk45::DEFAULT_RTOL),
            atol: a.pair_atol.unwrap_or(rectiflow::rk45::DEFAULT_ATOL),
            cfg: a.pair_cfg.unwrap_or_else(|| base.default_guidance()),
            seed,
            clip_x0: base.default_clip_x0(),
            ..SampleOptions::new(Vec::new())
        },
    };
    settings.validate()?;
    settings.check_fits(&base.model, &Budget::of(&gpu))?;
    SampleOptions {
        labels: vec![0],
        ..settings.sample.clone()
    }
    .validate()?;
    std::fs::create_dir_all(&out)
        .map_err(|e| Error::Io(format!("cannot create {}: {e}", out.display())))?;
    // Absolute, so that the run's data and the chain of pairs resolve from anywhere.
    let out = std::fs::canonicalize(&out)
        .map_err(|e| Error::Io(format!("cannot resolve {}: {e}", out.display())))?;
    let pairs_path = out.join(PAIRS_FILE);
    let config = TrainConfig {
        data: DataSpec::Pairs(pairs_path.clone()),
        t_sampler,
        steps: a.steps.unwrap_or((base.steps / 2).max(1)),
        batch: a.batch.unwrap_or(base.batch),
        lr: a.lr.unwrap_or(base.lr),
        warmup: a.warmup.unwrap_or(base.warmup),
        ema_decay: a.ema_decay.unwrap_or(base.ema_decay),
        label_dropout: a.label_dropout.unwrap_or(0.0),
        seed,
        ..base.clone()
    };
    // Everything the run will check, checked before the pairs are drawn.
    config.check_fits(&Budget::of(&gpu))?;
    if config.f16 {
        rectiflow::params::Params::check_f16(&gpu)?;
    }
    config.flow().validate()?;

    let lock = RunLock::acquire(&out)?;
    // Decided again under the lock: another run may have started here since the first look.
    check_new(&out, a.overwrite)?;
    if a.overwrite && pairs_path.exists() {
        let keep = rectiflow::pairs::Pairs::load(&pairs_path)
            .is_ok_and(|p| settings.continues(&p.settings));
        if !keep {
            // The run being replaced trained on these pairs: it goes with them, so that no
            // checkpoint is left pointing at pairs it was not trained on.
            for f in [CONFIG_FILE, CHECKPOINT_FILE, PAIRS_FILE] {
                let path = out.join(f);
                if path.exists() {
                    std::fs::remove_file(&path)
                        .map_err(|e| Error::Io(format!("cannot remove {}: {e}", path.display())))?;
                }
            }
        }
    }
    let bar = if a.cadence.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(settings.pairs as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("pairs {bar:30} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = std::time::Instant::now();
    let pairs = generate_pairs(&source, &settings, &pairs_path, |done, _| {
        bar.set_position(done as u64)
    });
    let pairs = match pairs {
        Ok(p) => p,
        Err(e) => {
            bar.abandon();
            return Err(e);
        }
    };
    bar.finish_and_clear();
    let how = match settings.sample.solver {
        Solver::Rk45 => format!(
            "rk45 at rtol {} atol {}",
            settings.sample.rtol, settings.sample.atol
        ),
        other => format!("{} {} steps", other.name(), settings.sample.steps),
    };
    eprintln!(
        "{} pairs in {} ({:.1} s this time; {how}, guidance {})",
        pairs.len(),
        pairs_path.display(),
        start.elapsed().as_secs_f64(),
        settings.sample.cfg
    );
    let data = pairs.to_dataset(&config.data.to_string());
    drop(pairs);
    let start_weights = source.weights_by_name()?;
    drop(source);
    drop(lock);
    let mut run = Run::create_from_weights(
        &gpu,
        &out,
        config,
        &data,
        StartingWeights {
            weights: &start_weights,
            source: &checkpoint,
        },
        a.overwrite,
        opts,
    )?;
    drop(data);
    drive(&mut run, a.cadence.quiet)
}

/// `runs/NAME-reflow` beside the checkpoint's run directory `runs/NAME`.
fn default_out(checkpoint: &Path, what: &str) -> PathBuf {
    let dir = checkpoint.parent().unwrap_or(Path::new("."));
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    dir.with_file_name(format!("{name}-{what}"))
}
