//! The `train`, `sample` and `eval` commands: flags and their validation, run directories
//! (locked while a run writes into one), resuming, progress, signals, and the files written.
//! Every flag is checked before anything is written; sizes are checked against the device and
//! the host budget ([`rectiflow::limits`]) before anything that large is allocated.

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rectiflow::data::Dataset;
use rectiflow::limits::Budget;
use rectiflow::nn::ModelConfig;
use rectiflow::rundir::RunLock;
use rectiflow::sample::{sample as draw, SampleOptions, Solver};
use rectiflow::train::{open_checkpoint, TrainConfig, Trainer};
use rectiflow::{output, Error, Gpu, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// How a `train` run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// It trained every step.
    Finished,
    /// A signal (its number: SIGINT 2, SIGTERM 15) stopped it after a checkpoint was saved.
    Interrupted(i32),
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// digits | toy:NAME (checkerboard, moons, 8gaussians, spirals) | idx:IMAGES[,LABELS]
    /// [default: digits]
    #[arg(long)]
    data: Option<String>,
    /// dit | mmdit | mlp (default: dit for images, mlp for points)
    #[arg(long)]
    model: Option<String>,
    /// rf | cosine | ldm-linear | edm:PM,PS [default: rf]
    #[arg(long)]
    schedule: Option<String>,
    /// velocity | eps | v | x0 [default: velocity]
    #[arg(long)]
    pred: Option<String>,
    /// Loss weighting (velocity | eps | v | x0 | edm:PM,PS); default: the prediction's own.
    #[arg(long)]
    weighting: Option<String>,
    /// uniform | lognorm:M,S | mode:S | cosmap [default: lognorm:0,1]
    #[arg(long)]
    t_sampler: Option<String>,
    /// Training steps, at least 1 (default: 600 for images, 1500 for points).
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
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

/// How samples are drawn (shared by `sample` and `eval`).
#[derive(Args, Debug)]
pub struct SamplingArgs {
    /// A checkpoint written by `rectiflow train` (RUN/checkpoint.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Sampling steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// euler | heun
    #[arg(long, default_value = "euler")]
    solver: String,
    /// Classifier-free guidance weight (1: none).
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true)]
    cfg: f32,
    /// Time-grid shift alpha (1: none).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    shift: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use the EMA weights.
    #[arg(long)]
    ema: bool,
    /// Clamp the predicted x0 to [-V, V] at each step (0: never). Default: the data range for
    /// eps-prediction, whose x0 = (z - b eps) / a is ill-conditioned near t = 1; off otherwise.
    #[arg(long, allow_negative_numbers = true)]
    clip_x0: Option<f32>,
}

/// The x0 clamp a sampler uses by default: the data's range for eps-prediction (images lie in
/// [-1, 1], the toys within [-4, 4]), none for the other predictions.
fn default_clip(config: &TrainConfig) -> Option<f32> {
    let range = if config.model.shape.len() == 3 {
        1.0
    } else {
        4.0
    };
    (config.prediction == "eps").then_some(range)
}

impl SamplingArgs {
    fn options(&self, labels: Vec<u32>, config: &TrainConfig) -> Result<SampleOptions> {
        let opts = SampleOptions {
            steps: self.steps,
            solver: Solver::parse(&self.solver)?,
            cfg: self.cfg,
            shift: self.shift,
            labels,
            seed: self.seed,
            clip_x0: match self.clip_x0 {
                Some(0.0) => None,
                Some(v) => Some(v),
                None => default_clip(config),
            },
        };
        opts.validate()?;
        Ok(opts)
    }

    /// Check the flags before anything is loaded (the checkpoint's own settings come later).
    fn check(&self) -> Result<()> {
        SampleOptions {
            steps: self.steps,
            solver: Solver::parse(&self.solver)?,
            cfg: self.cfg,
            shift: self.shift,
            labels: vec![0],
            seed: self.seed,
            clip_x0: self.clip_x0.filter(|&v| v != 0.0),
        }
        .validate()
    }

    /// The checkpoint's weights, or their EMA.
    fn params(&self, tr: &Trainer) -> Result<rectiflow::params::Params> {
        if self.ema {
            tr.ema_params()
        } else {
            tr.params.with_values(tr.params.values().clone())
        }
    }
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Number of samples (default: 100 for images, 5000 for points).
    #[arg(long)]
    n: Option<usize>,
    /// Labels, comma-separated, cycled over the samples (default: 0, 1, ..., classes - 1).
    #[arg(long)]
    labels: Option<String>,
    /// The PNG to write; samples.npy and labels.npy go beside it.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Samples to measure, at least 2 (default: 500 images, 5000 points).
    #[arg(long)]
    n: Option<usize>,
    /// Where to write the JSON (default: eval.json beside the checkpoint).
    #[arg(long)]
    json: Option<PathBuf>,
}

fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io(format!("{}: {e}", path.display()))
}

/// Write samples as a PNG (grid or scatter) plus samples.npy and labels.npy beside it, the three
/// as a group ([`output::write_atomically`]: complete files or the old ones, no partial file).
pub fn write_samples(png: &Path, shape: &[usize], samples: &[f32], labels: &[u32]) -> Result<()> {
    let n = labels.len();
    if let Some(dir) = png.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    let picture = if shape.len() == 3 {
        let cols = if n.is_multiple_of(10) {
            10
        } else {
            (n as f64).sqrt().ceil() as usize
        };
        output::image_grid_png(samples, n, shape[1], shape[2], cols, 4)?
    } else {
        output::scatter_png(samples, 512, 3.0)?
    };
    let dir = png.parent().unwrap_or(Path::new("."));
    let mut full = vec![n];
    full.extend(shape);
    let values = output::npy_f32_bytes(&full, samples);
    let classes =
        output::npy_i64_bytes(&[n], &labels.iter().map(|&l| l as i64).collect::<Vec<_>>());
    let (samples_npy, labels_npy) = (dir.join("samples.npy"), dir.join("labels.npy"));
    output::write_atomically(&[
        (png, &picture),
        (&samples_npy, &values),
        (&labels_npy, &classes),
    ])
}

/// `samples` if every value is finite; otherwise how many are not, in a sentence about `what`.
fn finite_samples(samples: Vec<f32>, what: &str) -> std::result::Result<Vec<f32>, String> {
    let bad = samples.iter().filter(|v| !v.is_finite()).count();
    if bad == 0 {
        Ok(samples)
    } else {
        Err(format!(
            "{bad} of the {} values of {what} are NaN or infinite",
            samples.len()
        ))
    }
}

/// Refuse `n` samples that the device or the host budget cannot hold (checked before anything
/// of that size is allocated).
fn check_sample_count(config: &TrainConfig, n: usize, budget: &Budget) -> Result<()> {
    if n == 0 {
        return Err(Error::Config("--n 0: draw at least one sample".into()));
    }
    let m = &config.model;
    budget.check_tensor(
        &format!(
            "sampling {n} examples of shape {:?} (a batch of {} with guidance): the largest activation",
            m.shape,
            n.saturating_mul(2)
        ),
        n.checked_mul(2).and_then(|b| m.activation_elems(b)),
        "use a smaller --n",
    )?;
    // The samples read back, their .npy copy and the PNG's pixels: at most 40 bytes per value.
    let dim: u64 = m.shape.iter().map(|&d| d as u64).product();
    budget.check_host(
        &format!("{n} samples of shape {:?}", m.shape),
        (n as u64).checked_mul(dim.saturating_mul(40)),
        "use a smaller --n",
    )
}

/// Guidance weight of the sample grids a run writes (and the default of `sample` and `eval`).
const GRID_GUIDANCE: f32 = 2.0;

fn grid_labels(classes: usize, n: usize) -> Vec<u32> {
    (0..n)
        .map(|i| if classes > 0 { (i % classes) as u32 } else { 0 })
        .collect()
}

/// Draw a run's sample grid into `png` (with samples.npy and labels.npy beside it); samples that
/// are not finite are refused (as the sentence in the `Err`) and nothing is written.
fn sample_to(
    tr: &Trainer,
    png: &Path,
    n: usize,
    seed: u64,
) -> Result<std::result::Result<(), String>> {
    let shape = tr.config.model.shape.clone();
    let dim: usize = shape.iter().product();
    let classes = tr.config.model.classes;
    let labels = if classes > 0 {
        grid_labels(classes, n)
    } else {
        vec![0; n]
    };
    let opts = SampleOptions {
        steps: 20,
        solver: Solver::Euler,
        cfg: if classes > 0 { GRID_GUIDANCE } else { 1.0 },
        shift: 1.0,
        labels: labels.clone(),
        seed,
        clip_x0: default_clip(&tr.config),
    };
    let params = tr.ema_params()?;
    let z = draw(&tr.model, &params, &tr.flow, dim, classes as u32, &opts)?;
    match finite_samples(
        z.to_vec()?,
        &format!("the {n} samples drawn at step {}", tr.step),
    ) {
        Ok(z) => write_samples(png, &shape, &z, &labels).map(Ok),
        Err(why) => Ok(Err(why)),
    }
}

/// Whether a periodic action with period `every` (0: never) is due at step `s`.
fn due(s: u64, every: u64) -> bool {
    every > 0 && s.is_multiple_of(every)
}

/// The default network for images (a DiT) or points (the MLP).
fn default_kind(image: bool) -> &'static str {
    if image {
        "dit"
    } else {
        "mlp"
    }
}

/// The data set's name in a default run directory: `--data` without an IDX file's labels.
fn data_name(spec: &str) -> String {
    match spec.strip_prefix("idx:") {
        Some(paths) => format!("idx:{}", paths.split(',').next().unwrap_or(paths)),
        None => spec.to_string(),
    }
}

/// The run settings that differ between two configurations: (flag, old, new).
fn differences(old: &TrainConfig, new: &TrainConfig) -> Vec<(String, String, String)> {
    let flatten = |c: &TrainConfig| {
        let mut out = Vec::new();
        // Through the JSON text, where an f32 prints as itself (0.002, not 0.0020000000949949026).
        let value = serde_json::from_str(&c.to_json()).unwrap_or_default();
        if let serde_json::Value::Object(top) = value {
            for (k, v) in top {
                match v {
                    serde_json::Value::Object(inner) => {
                        out.extend(inner.into_iter().map(|(ik, iv)| (ik, iv.to_string())))
                    }
                    v => out.push((k, v.to_string())),
                }
            }
        }
        out
    };
    let before = flatten(old);
    let flag = |k: &str| match k {
        "prediction" => "--pred".to_string(),
        "kind" => "--model".to_string(),
        k => format!("--{}", k.replace('_', "-")),
    };
    flatten(new)
        .into_iter()
        .filter_map(|(k, v)| {
            let was = before
                .iter()
                .find(|(bk, _)| *bk == k)
                .map(|(_, bv)| bv.clone());
            (was.as_ref() != Some(&v)).then(|| (flag(&k), was.unwrap_or_default(), v))
        })
        .collect()
}

/// Catch SIGINT and SIGTERM: the first sets the returned number to the signal's (the training
/// loop then saves a checkpoint and stops); a second one exits at once with 128 + its number.
fn catch_interrupts() -> Result<Arc<AtomicUsize>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use signal_hook::flag;
    let which = Arc::new(AtomicUsize::new(0));
    let armed = Arc::new(AtomicBool::new(false));
    let failed = |e: std::io::Error| Error::Io(format!("cannot install a signal handler: {e}"));
    for signal in [SIGINT, SIGTERM] {
        // In this order: the exit is armed only by an earlier signal.
        flag::register_conditional_shutdown(signal, 128 + signal, armed.clone()).map_err(failed)?;
        flag::register(signal, armed.clone()).map_err(failed)?;
        flag::register_usize(signal, which.clone(), signal as usize).map_err(failed)?;
    }
    Ok(which)
}

pub fn train(a: TrainArgs) -> Result<RunEnd> {
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
    let spec_given = a.data.clone().unwrap_or_else(|| "digits".into());
    let out = a.out.clone().unwrap_or_else(|| {
        let kind = a
            .model
            .clone()
            .unwrap_or_else(|| default_kind(!spec_given.starts_with("toy:")).into());
        PathBuf::from("runs").join(format!(
            "{}-{kind}",
            data_name(&spec_given).replace([':', '/', '\\', ','], "_")
        ))
    });
    let ckpt_path = out.join("checkpoint.safetensors");
    let config_path = out.join("config.json");
    let holds_run = || config_path.exists() || ckpt_path.exists();
    let occupied = || {
        Error::Config(format!(
            "{} already holds a run; pass --resume to continue it, --overwrite to replace it, or --out DIR for a new one",
            out.display()
        ))
    };
    if holds_run() && !a.resume && !a.overwrite {
        return Err(occupied());
    }
    // A resumed run is locked before its checkpoint is looked at, so that no other writer moves
    // it on meanwhile.
    let mut lock = None;
    if a.resume {
        if !out.is_dir() {
            return Err(Error::Config(format!(
                "--resume: there is no run directory {}",
                out.display()
            )));
        }
        lock = Some(RunLock::acquire(&out)?);
        if !ckpt_path.exists() {
            return Err(Error::Config(format!(
                "--resume: there is no checkpoint at {}",
                ckpt_path.display()
            )));
        }
    }
    let gpu = Gpu::new()?;
    let budget = Budget::of(&gpu);
    let saved = if a.resume {
        Some(open_checkpoint(&ckpt_path, &budget)?)
    } else {
        None
    };
    let base = saved.as_ref().map(|(_, c)| c);

    // Settings: a flag given, else the resumed run's own, else the default.
    let spec = a
        .data
        .clone()
        .or_else(|| base.map(|b| b.data.clone()))
        .unwrap_or(spec_given);
    let seed = a.seed.or(base.map(|b| b.seed)).unwrap_or(0);
    let mut data =
        Dataset::from_spec_within(&spec, seed, budget.tensor_bytes.min(budget.host_bytes))?;
    match (a.classes, base) {
        (Some(k), _) => data.set_classes(k)?,
        (None, Some(b)) if data.labels.is_some() && b.model.classes > data.classes => {
            data.set_classes(b.model.classes)?
        }
        _ => {}
    }
    eprintln!("data {}", data.describe());
    let image = data.is_image();
    let kind = a
        .model
        .clone()
        .or_else(|| base.map(|b| b.model.kind.clone()))
        .unwrap_or_else(|| default_kind(image).into());
    let mlp = kind == "mlp";
    let pick = |given: Option<usize>, saved: Option<usize>, default: usize| {
        given.or(saved).unwrap_or(default)
    };
    let config = TrainConfig {
        data: spec,
        model: ModelConfig {
            width: pick(
                a.width,
                base.map(|b| b.model.width),
                if mlp { 256 } else { 64 },
            ),
            depth: pick(
                a.depth,
                base.map(|b| b.model.depth),
                if mlp { 3 } else { 4 },
            ),
            heads: pick(a.heads, base.map(|b| b.model.heads), 4),
            patch: pick(a.patch, base.map(|b| b.model.patch), 2),
            shape: data.shape.clone(),
            classes: data.classes,
            context_dim: 0,
            kind,
        },
        schedule: a
            .schedule
            .clone()
            .or_else(|| base.map(|b| b.schedule.clone()))
            .unwrap_or_else(|| "rf".into()),
        prediction: a
            .pred
            .clone()
            .or_else(|| base.map(|b| b.prediction.clone()))
            .unwrap_or_else(|| "velocity".into()),
        weighting: a
            .weighting
            .clone()
            .or_else(|| base.and_then(|b| b.weighting.clone())),
        t_sampler: a
            .t_sampler
            .clone()
            .or_else(|| base.map(|b| b.t_sampler.clone()))
            .unwrap_or_else(|| "lognorm:0,1".into()),
        steps: a
            .steps
            .or(base.map(|b| b.steps))
            .unwrap_or(if image { 600 } else { 1500 }),
        batch: pick(a.batch, base.map(|b| b.batch), if image { 64 } else { 256 }),
        lr: a.lr.or(base.map(|b| b.lr)).unwrap_or(2e-3),
        warmup: a.warmup.or(base.map(|b| b.warmup)).unwrap_or(100),
        ema_decay: a.ema_decay.or(base.map(|b| b.ema_decay)).unwrap_or(0.999),
        max_grad_norm: base.map_or(1.0, |b| b.max_grad_norm),
        label_dropout: a
            .label_dropout
            .or(base.map(|b| b.label_dropout))
            .unwrap_or(0.1),
        seed,
    };
    // Every setting and size is checked before anything is written (the sample grids too).
    config.check_fits(&budget)?;
    let grid_n = if image { 100 } else { 5000 };
    check_sample_count(&config, grid_n, &budget)?;
    if let Some((ck, saved)) = &saved {
        if saved.model != config.model || saved.data != config.data {
            return Err(Error::Config(format!(
                "--resume: {} was trained with data {} and model {:?}; these flags give {} and {:?}",
                ckpt_path.display(), saved.data, saved.model, config.data, config.model
            )));
        }
        if config.steps <= ck.step {
            return Err(Error::Config(format!(
                "--steps {}: the run in {} is already at step {}; give a larger --steps to continue it",
                config.steps,
                out.display(),
                ck.step
            )));
        }
        let changes = differences(saved, &config);
        let consent_needed: Vec<String> = changes
            .iter()
            .filter(|(flag, _, _)| !(flag == "--steps" && config.steps > saved.steps))
            .map(|(flag, old, new)| format!("{flag} {old} -> {new}"))
            .collect();
        if !consent_needed.is_empty() && !a.allow_changes {
            return Err(Error::Config(format!(
                "--resume: these flags change the run's settings: {}; pass --allow-changes to \
                 continue with them (they are recorded in config.json), or leave them out to keep \
                 the run's own",
                consent_needed.join(", ")
            )));
        }
        for (flag, old, new) in &changes {
            eprintln!("resuming with {flag} {new} (the run had {old})");
        }
    }
    let mut tr = Trainer::new(&gpu, config.clone(), &data)?;
    drop(data);
    if let Some((ck, _)) = &saved {
        tr.restore(ck, &ckpt_path)?;
    }
    let _lock = match lock {
        Some(lock) => lock,
        None => {
            std::fs::create_dir_all(&out).map_err(|e| io(&out, e))?;
            let lock = RunLock::acquire(&out)?;
            // Decided again under the lock: another run may have started here since the first
            // look.
            if holds_run() && !a.overwrite {
                return Err(occupied());
            }
            lock
        }
    };
    // Installed before config.json appears, so a signal from then on saves the run.
    let interrupted = catch_interrupts()?;
    output::write_atomically(&[(&config_path, tr.config.to_json().as_bytes())])?;

    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(tr.config.steps)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} loss {msg} {per_sec} eta {eta}")
            .unwrap(),
    );
    bar.set_position(tr.step);
    let start = Instant::now();
    let first = tr.step;
    let mut last_saved = saved.as_ref().map(|(ck, _)| ck.step);
    let kept = |last: Option<u64>| match last {
        Some(step) => format!(
            "the last checkpoint written, from step {step}, is kept at {}",
            ckpt_path.display()
        ),
        None => "no checkpoint was written".into(),
    };
    let mut smoothed: Option<f32> = None;
    let mut log: Vec<serde_json::Value> = Vec::new();
    let final_png = out.join("samples.png");
    while tr.step < tr.config.steps {
        tr.step()?;
        let s = tr.step;
        let end = s == tr.config.steps;
        let signal = interrupted.load(Ordering::SeqCst) as i32;
        let save_now = due(s, a.checkpoint_every) || end || signal != 0;
        if due(s, a.log_every) || save_now {
            let loss = tr.read_loss()?;
            if !loss.is_finite() {
                bar.abandon();
                return Err(Error::NonFinite(format!(
                    "the loss became {loss} at step {s}; stopped without saving ({}). Try a lower --lr (this run: {})",
                    kept(last_saved),
                    tr.config.lr
                )));
            }
            let sm = smoothed.map_or(loss, |v| 0.9 * v + 0.1 * loss);
            smoothed = Some(sm);
            bar.set_message(format!("{sm:.4}"));
            let (_, per, t) = tr.last.as_ref().expect("a step was taken");
            log.push(serde_json::json!({ "step": s, "loss": loss, "t_bins": t_bins(&per.to_vec()?, &t.to_vec()?) }));
        }
        // The final grid is drawn before the final checkpoint: a model whose samples are not
        // finite does not replace the last checkpoint.
        let grid = if end {
            Some(final_png.clone())
        } else if due(s, a.sample_every) && signal == 0 {
            Some(out.join(format!("samples_{s:06}.png")))
        } else {
            None
        };
        if let Some(png) = grid {
            if let Err(why) = sample_to(&tr, &png, grid_n, 0)? {
                bar.abandon();
                return Err(Error::NonFinite(format!(
                    "{why}, though the loss is finite: the model diverges when sampled. Stopped \
                     without writing them or a checkpoint ({}). Try a lower --lr (this run: {})",
                    kept(last_saved),
                    tr.config.lr
                )));
            }
            if end && due(s, a.sample_every) {
                let step_png = out.join(format!("samples_{s:06}.png"));
                let png = std::fs::read(&final_png).map_err(|e| io(&final_png, e))?;
                output::write_atomically(&[(&step_png, &png)])?;
            }
        }
        if save_now {
            if let Err(e) = tr.check_finite() {
                bar.abandon();
                return Err(Error::NonFinite(format!(
                    "{}; stopped without saving ({}). Try a lower --lr (this run: {})",
                    e.to_string().trim_start_matches("not finite: "),
                    kept(last_saved),
                    tr.config.lr
                )));
            }
            tr.checkpoint()?.save(&ckpt_path)?;
            last_saved = Some(s);
        }
        bar.set_position(s);
        if signal != 0 && !end {
            bar.abandon_with_message("interrupted");
            eprintln!(
                "interrupted by signal {signal} at step {s}: checkpoint saved to {}; continue with --resume",
                ckpt_path.display()
            );
            return Ok(RunEnd::Interrupted(signal));
        }
    }
    bar.finish();
    let secs = start.elapsed().as_secs_f64();
    let steps = (tr.step - first) as f64;
    let metrics = serde_json::json!({
        "steps": tr.step,
        "seconds": secs,
        "steps_per_second": steps / secs,
        "samples_per_second": steps * tr.config.batch as f64 / secs,
        "adapter": gpu.adapter_info().name,
        "log": log,
    });
    let mpath = out.join("metrics.json");
    let text = serde_json::to_string_pretty(&metrics).expect("metrics serialise");
    output::write_atomically(&[(&mpath, text.as_bytes())])?;
    println!(
        "trained {} steps in {secs:.1} s ({:.2} steps/s); samples: {}; checkpoint: {}",
        tr.step,
        steps / secs,
        final_png.display(),
        ckpt_path.display()
    );
    Ok(RunEnd::Finished)
}

/// Mean per-sample loss in ten bins of t.
fn t_bins(per: &[f32], t: &[f32]) -> Vec<Option<f32>> {
    let mut sums = [(0f32, 0usize); 10];
    for (l, tv) in per.iter().zip(t) {
        let b = ((tv * 10.0) as usize).min(9);
        sums[b].0 += l;
        sums[b].1 += 1;
    }
    sums.iter()
        .map(|&(s, n)| (n > 0).then(|| s / n as f32))
        .collect()
}

/// The model of a checkpoint, restored (its configuration and tensors checked first).
fn load_trainer(gpu: &Gpu, path: &Path, budget: &Budget) -> Result<Trainer> {
    let (ck, config) = open_checkpoint(path, budget)?;
    // The trainer builds the model; a stand-in data set of one example of the right shape is
    // enough (the shape was sized by open_checkpoint).
    let stand_in = Dataset {
        name: config.data.clone(),
        shape: config.model.shape.clone(),
        x: vec![0.0; config.model.shape.iter().product()],
        labels: None,
        classes: config.model.classes,
    };
    let mut tr = Trainer::new(gpu, config, &stand_in)?;
    tr.restore(&ck, path)?;
    Ok(tr)
}

/// The refusal of samples that are not finite, naming the checkpoint.
fn diverged(why: String, checkpoint: &Path) -> Error {
    Error::NonFinite(format!(
        "{why}: the model in {} diverges when sampled (was it trained with too high a learning \
         rate?); nothing was written",
        checkpoint.display()
    ))
}

pub fn sample(a: SampleArgs) -> Result<()> {
    a.sampling.check()?;
    let gpu = Gpu::new()?;
    let budget = Budget::of(&gpu);
    let tr = load_trainer(&gpu, &a.sampling.checkpoint, &budget)?;
    let config = tr.config.clone();
    let classes = config.model.classes;
    let image = config.model.shape.len() == 3;
    let n = a.n.unwrap_or(if image { 100 } else { 5000 });
    check_sample_count(&config, n, &budget)?;
    let labels: Vec<u32> = match (&a.labels, classes) {
        (_, 0) => vec![0; n],
        (Some(text), _) => {
            let given: Vec<u32> = text
                .split(',')
                .map(|v| v.trim().parse::<u32>().ok().filter(|&l| l as usize <= classes))
                .collect::<Option<_>>()
                .ok_or_else(|| Error::Config(format!("--labels {text:?}: give comma-separated classes 0..{} ({} is the null class)", classes - 1, classes)))?;
            (0..n).map(|i| given[i % given.len()]).collect()
        }
        (None, _) => grid_labels(classes, n),
    };
    let opts = a.sampling.options(labels.clone(), &config)?;
    let params = a.sampling.params(&tr)?;
    let dim: usize = config.model.shape.iter().product();
    let z = draw(&tr.model, &params, &tr.flow, dim, classes as u32, &opts)?;
    let z = finite_samples(z.to_vec()?, &format!("the {n} samples"))
        .map_err(|why| diverged(why, &a.sampling.checkpoint))?;
    write_samples(&a.out, &config.model.shape, &z, &labels)?;
    println!(
        "wrote {} samples to {} (and samples.npy, labels.npy beside it)",
        n,
        a.out.display()
    );
    Ok(())
}

/// Labelled images eval holds out for the classifier's reference (and needs as many to train on).
const EVAL_HELD_OUT: usize = 300;

pub fn eval(a: EvalArgs) -> Result<()> {
    use rectiflow::eval::{frechet_distance, mmd_rbf, sliced_w2, Classifier};
    a.sampling.check()?;
    if let Some(n) = a.n.filter(|&n| n < 2) {
        return Err(Error::Config(format!(
            "--n {n}: eval needs at least 2 samples (MMD and covariances compare pairs)"
        )));
    }
    let gpu = Gpu::new()?;
    let budget = Budget::of(&gpu);
    let ckpt = &a.sampling.checkpoint;
    let tr = load_trainer(&gpu, ckpt, &budget)?;
    let config = tr.config.clone();
    let mut data = Dataset::from_spec_within(
        &config.data,
        config.seed,
        budget.tensor_bytes.min(budget.host_bytes),
    )?;
    let (shape, classes) = (config.model.shape.clone(), config.model.classes);
    if data.labels.is_some() && classes > data.classes {
        // Trained with --classes beyond the largest label.
        data.set_classes(classes)?;
    }
    if data.shape != shape || data.classes != classes {
        return Err(Error::Config(format!(
            "{}: its configuration names the data {} ({} examples of shape {:?}, {} classes), but \
             its model was built for examples of shape {:?} with {} classes; the checkpoint's \
             configuration does not match its weights, so no metric would mean anything",
            ckpt.display(),
            config.data,
            data.len(),
            data.shape,
            data.classes,
            shape,
            classes
        )));
    }
    let dim: usize = shape.iter().product();
    let params = a.sampling.params(&tr)?;
    let n = a.n.unwrap_or(if data.is_image() { 500 } else { 5000 });
    check_sample_count(&config, n, &budget)?;
    if data.is_image() && classes > 0 && data.len() < 2 * EVAL_HELD_OUT {
        return Err(Error::Config(format!(
            "{} has {} images; eval trains a classifier on all but {EVAL_HELD_OUT} and needs at \
             least {}",
            config.data,
            data.len(),
            2 * EVAL_HELD_OUT
        )));
    }
    let labels = if classes > 0 {
        grid_labels(classes, n)
    } else {
        vec![0; n]
    };
    let opts = a.sampling.options(labels.clone(), &config)?;
    let samples = draw(&tr.model, &params, &tr.flow, dim, classes as u32, &opts)?.to_vec()?;
    let samples =
        finite_samples(samples, &format!("the {n} samples")).map_err(|why| diverged(why, ckpt))?;
    let mut rows: Vec<(String, f64, Option<f64>)> = Vec::new();
    if !data.is_image() {
        let name = config.data.strip_prefix("toy:").unwrap_or(&config.data);
        let fresh = rectiflow::data::toy(name, n, a.sampling.seed + 1000)?;
        let other = rectiflow::data::toy(name, n, a.sampling.seed + 2000)?;
        rows.push((
            "sliced W2".into(),
            sliced_w2(&samples, &fresh.x, dim, 256, 7),
            Some(sliced_w2(&other.x, &fresh.x, dim, 256, 7)),
        ));
        rows.push((
            "MMD^2 (RBF, sigma 0.25)".into(),
            mmd_rbf(&samples, &fresh.x, dim, 0.25, 2000),
            Some(mmd_rbf(&other.x, &fresh.x, dim, 0.25, 2000)),
        ));
    } else if classes > 0 {
        let (train, held) = data.split_last(EVAL_HELD_OUT);
        let clf = Classifier::train(&gpu, &train, 1500, 1)?;
        let (pred_held, feat_held) = clf.classify(&gpu, &held.x, dim)?;
        let held_labels = held.labels.as_ref().expect("labelled data");
        let clf_acc = pred_held
            .iter()
            .zip(held_labels)
            .filter(|(p, l)| p == l)
            .count() as f64
            / held.len() as f64;
        let (pred, feat) = clf.classify(&gpu, &samples, dim)?;
        let acc = pred.iter().zip(&labels).filter(|(p, l)| p == l).count() as f64 / n as f64;
        let (_, feat_train) = clf.classify(&gpu, &train.x[..held.len() * dim], dim)?;
        let fd = frechet_distance(&feat, &feat_held, clf.feature_dim());
        let floor = frechet_distance(&feat_train, &feat_held, clf.feature_dim());
        rows.push(("class-conditional accuracy".into(), acc, Some(clf_acc)));
        rows.push((
            "Frechet distance (classifier features)".into(),
            fd,
            Some(floor),
        ));
    } else {
        return Err(Error::Config(
            "eval measures 2-D toys and labelled images; this data set has neither".into(),
        ));
    }
    for (name, v, floor) in &rows {
        if !v.is_finite() || floor.is_some_and(|f| !f.is_finite()) {
            return Err(Error::NonFinite(format!(
                "the metric {name} came out as {v} (reference {floor:?}); nothing was reported"
            )));
        }
    }
    println!("{:<40} {:>12} {:>16}", "metric", "value", "real vs real");
    for (name, v, floor) in &rows {
        println!(
            "{name:<40} {v:>12.4} {:>16}",
            floor.map_or("-".into(), |f| format!("{f:.4}"))
        );
    }
    if classes > 0 && data.is_image() {
        println!("(the accuracy's reference is the classifier's own accuracy on {EVAL_HELD_OUT} held-out real images)");
    }
    let json = serde_json::json!({
        "checkpoint": ckpt.display().to_string(),
        "steps": a.sampling.steps, "solver": a.sampling.solver, "cfg": a.sampling.cfg, "n": n, "ema": a.sampling.ema,
        "metrics": rows.iter().map(|(name, v, f)| serde_json::json!({"metric": name, "value": v, "real_vs_real": f})).collect::<Vec<_>>(),
    });
    let path = a
        .json
        .clone()
        .unwrap_or_else(|| ckpt.with_file_name("eval.json"));
    let text = serde_json::to_string_pretty(&json).expect("the report serialises");
    output::write_atomically(&[(&path, text.as_bytes())])?;
    println!("wrote {}", path.display());
    Ok(())
}
