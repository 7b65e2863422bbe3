//! The `train` and `sample` commands: flags, run directories, progress, files on disk.

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rectiflow::checkpoint::Checkpoint;
use rectiflow::data::Dataset;
use rectiflow::nn::ModelConfig;
use rectiflow::sample::{sample as draw, SampleOptions, Solver};
use rectiflow::train::{TrainConfig, Trainer};
use rectiflow::{output, Error, Gpu, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// digits | toy:NAME (checkerboard, moons, 8gaussians, spirals) | idx:IMAGES[,LABELS]
    #[arg(long, default_value = "digits")]
    data: String,
    /// dit | mmdit | mlp (default: dit for images, mlp for points)
    #[arg(long)]
    model: Option<String>,
    /// rf | cosine | ldm-linear | edm:PM,PS
    #[arg(long, default_value = "rf")]
    schedule: String,
    /// velocity | eps | v | x0
    #[arg(long, default_value = "velocity")]
    pred: String,
    /// Loss weighting (velocity | eps | v | x0 | edm:PM,PS); default: the prediction's own.
    #[arg(long)]
    weighting: Option<String>,
    /// uniform | lognorm:M,S | mode:S | cosmap
    #[arg(long, default_value = "lognorm:0,1")]
    t_sampler: String,
    /// Training steps (default: 600 for images, 1500 for points).
    #[arg(long)]
    steps: Option<u64>,
    /// Batch size (default: 64 for images, 256 for points).
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long, default_value_t = 2e-3)]
    lr: f32,
    /// Learning-rate warm-up steps.
    #[arg(long, default_value_t = 100)]
    warmup: u64,
    #[arg(long, default_value_t = 0.999)]
    ema_decay: f32,
    /// Probability of training a sample with the null label (classifier-free guidance).
    #[arg(long, default_value_t = 0.1)]
    label_dropout: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Model width (default: 64 for dit and mmdit, 256 for mlp).
    #[arg(long)]
    width: Option<usize>,
    /// Transformer blocks or hidden layers (default: 4 for dit and mmdit, 3 for mlp).
    #[arg(long)]
    depth: Option<usize>,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    #[arg(long, default_value_t = 2)]
    patch: usize,
    /// Run directory (default: runs/DATA-MODEL).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Replace the run in --out if there is one.
    #[arg(long)]
    overwrite: bool,
    /// Read the loss (and check it is finite) every N steps.
    #[arg(long, default_value_t = 50)]
    log_every: u64,
    /// Write a checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 500)]
    checkpoint_every: u64,
    /// Write a sample grid every N steps (and at the end).
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
    #[arg(long, default_value_t = 2.0)]
    cfg: f32,
    /// Time-grid shift alpha (1: none).
    #[arg(long, default_value_t = 1.0)]
    shift: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use the EMA weights.
    #[arg(long)]
    ema: bool,
    /// Clamp the predicted x0 to [-V, V] at each step (0: never). Default: the data range for
    /// eps-prediction, whose x0 = (z - b eps) / a is ill-conditioned near t = 1; off otherwise.
    #[arg(long)]
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
        Ok(SampleOptions {
            steps: self.steps,
            solver: Solver::parse(&self.solver)?,
            cfg: self.cfg,
            shift: self.shift,
            labels,
            seed: self.seed,
            clip_x0: match self.clip_x0 {
                Some(v) if v > 0.0 => Some(v),
                Some(_) => None,
                None => default_clip(config),
            },
        })
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
    /// Samples to measure (default: 500 images, 5000 points).
    #[arg(long)]
    n: Option<usize>,
    /// Where to write the JSON (default: eval.json beside the checkpoint).
    #[arg(long)]
    json: Option<PathBuf>,
}

fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io(format!("{}: {e}", path.display()))
}

/// Write samples as a PNG (grid or scatter) plus samples.npy and labels.npy beside it.
pub fn write_samples(png: &Path, shape: &[usize], samples: &[f32], labels: &[u32]) -> Result<()> {
    let n = labels.len();
    if let Some(dir) = png.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    if shape.len() == 3 {
        let cols = if n.is_multiple_of(10) {
            10
        } else {
            (n as f64).sqrt().ceil() as usize
        };
        output::image_grid(png, samples, n, shape[1], shape[2], cols, 4)?;
    } else {
        output::scatter(png, samples, 512, 3.0)?;
    }
    let dir = png.parent().unwrap_or(Path::new("."));
    let mut full = vec![n];
    full.extend(shape);
    output::npy_f32(&dir.join("samples.npy"), &full, samples)?;
    output::npy_i64(
        &dir.join("labels.npy"),
        &[n],
        &labels.iter().map(|&l| l as i64).collect::<Vec<_>>(),
    )
}

/// Guidance weight of the sample grids a run writes (and the default of `sample` and `eval`).
const GRID_GUIDANCE: f32 = 2.0;

fn grid_labels(classes: usize, n: usize) -> Vec<u32> {
    (0..n)
        .map(|i| if classes > 0 { (i % classes) as u32 } else { 0 })
        .collect()
}

fn sample_to(tr: &Trainer, png: &Path, n: usize, seed: u64) -> Result<()> {
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
    write_samples(png, &shape, &z.to_vec()?, &labels)
}

pub fn train(a: TrainArgs) -> Result<()> {
    let data = Dataset::from_spec(&a.data, a.seed)?;
    let image = data.is_image();
    let kind = a
        .model
        .clone()
        .unwrap_or_else(|| if image { "dit".into() } else { "mlp".into() });
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!(
            "{}-{kind}",
            data.name.replace([':', '/', '\\', ','], "_")
        ))
    });
    let ckpt_path = out.join("checkpoint.safetensors");
    let config_path = out.join("config.json");
    let existing = config_path.exists() || ckpt_path.exists();
    if existing && !a.resume && !a.overwrite {
        return Err(Error::Config(format!(
            "{} already holds a run; pass --resume to continue it, --overwrite to replace it, or --out DIR for a new one",
            out.display()
        )));
    }
    if a.resume && !ckpt_path.exists() {
        return Err(Error::Config(format!(
            "--resume: there is no checkpoint at {}",
            ckpt_path.display()
        )));
    }
    let config = TrainConfig {
        data: a.data.clone(),
        model: ModelConfig {
            width: a.width.unwrap_or(if kind == "mlp" { 256 } else { 64 }),
            depth: a.depth.unwrap_or(if kind == "mlp" { 3 } else { 4 }),
            heads: a.heads,
            patch: a.patch,
            shape: data.shape.clone(),
            classes: data.classes,
            context_dim: 0,
            kind,
        },
        schedule: a.schedule.clone(),
        prediction: a.pred.clone(),
        weighting: a.weighting.clone(),
        t_sampler: a.t_sampler.clone(),
        steps: a.steps.unwrap_or(if image { 600 } else { 1500 }),
        batch: a.batch.unwrap_or(if image { 64 } else { 256 }),
        lr: a.lr,
        warmup: a.warmup,
        ema_decay: a.ema_decay,
        max_grad_norm: 1.0,
        label_dropout: a.label_dropout,
        seed: a.seed,
    };
    config.flow()?; // every setting checked before anything is written
    let gpu = Gpu::new()?;
    let mut tr = Trainer::new(&gpu, config.clone(), &data)?;
    if a.resume {
        let ck = Checkpoint::load(&ckpt_path)?;
        let saved = TrainConfig::from_json(&ck.config)?;
        if saved.model != config.model || saved.data != config.data {
            return Err(Error::Config(format!(
                "--resume: {} was trained with data {} and model {:?}; these flags give {} and {:?}",
                ckpt_path.display(), saved.data, saved.model, config.data, config.model
            )));
        }
        tr.restore(&ck, &ckpt_path)?;
        tr.config.steps = config.steps;
    }
    std::fs::create_dir_all(&out).map_err(|e| io(&out, e))?;
    std::fs::write(&config_path, tr.config.to_json()).map_err(|e| io(&config_path, e))?;

    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
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
    let mut smoothed: Option<f32> = None;
    let mut log: Vec<serde_json::Value> = Vec::new();
    let save = |tr: &Trainer| -> Result<()> { tr.checkpoint()?.save(&ckpt_path) };
    while tr.step < tr.config.steps {
        tr.step()?;
        let s = tr.step;
        let end = s == tr.config.steps;
        if s % a.log_every == 0 || s % a.checkpoint_every == 0 || end {
            let loss = tr.read_loss()?;
            if !loss.is_finite() {
                bar.abandon();
                return Err(Error::Gpu(format!(
                    "the loss became {loss} at step {s}; stopped without saving (the last good checkpoint, if any, is {})",
                    ckpt_path.display()
                )));
            }
            let sm = smoothed.map_or(loss, |v| 0.9 * v + 0.1 * loss);
            smoothed = Some(sm);
            bar.set_message(format!("{sm:.4}"));
            let (_, per, t) = tr.last.as_ref().expect("a step was taken");
            log.push(serde_json::json!({ "step": s, "loss": loss, "t_bins": t_bins(&per.to_vec()?, &t.to_vec()?) }));
        }
        if s % a.checkpoint_every == 0 || end {
            save(&tr)?;
        }
        if s % a.sample_every == 0 || end {
            sample_to(
                &tr,
                &out.join(format!("samples_{s:06}.png")),
                if image { 100 } else { 5000 },
                0,
            )?;
        }
        bar.set_position(s);
        if stop.load(Ordering::SeqCst) {
            save(&tr)?;
            bar.abandon_with_message("interrupted");
            eprintln!(
                "interrupted at step {s}: checkpoint saved to {}; continue with --resume",
                ckpt_path.display()
            );
            return Ok(());
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
    std::fs::write(&mpath, serde_json::to_string_pretty(&metrics).unwrap())
        .map_err(|e| io(&mpath, e))?;
    let final_png = out.join("samples.png");
    sample_to(&tr, &final_png, if image { 100 } else { 5000 }, 0)?;
    println!(
        "trained {} steps in {secs:.1} s ({:.2} steps/s); samples: {}; checkpoint: {}",
        tr.step,
        steps / secs,
        final_png.display(),
        ckpt_path.display()
    );
    Ok(())
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

/// The model of a checkpoint, restored.
fn load_trainer(gpu: &Gpu, path: &Path) -> Result<Trainer> {
    let ck = Checkpoint::load(path)?;
    let config = TrainConfig::from_json(&ck.config)?;
    // The trainer builds the model; a stand-in data set of the right shape is enough.
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

pub fn sample(a: SampleArgs) -> Result<()> {
    let gpu = Gpu::new()?;
    let tr = load_trainer(&gpu, &a.sampling.checkpoint)?;
    let config = tr.config.clone();
    let classes = config.model.classes;
    let image = config.model.shape.len() == 3;
    let n = a.n.unwrap_or(if image { 100 } else { 5000 });
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
    write_samples(&a.out, &config.model.shape, &z.to_vec()?, &labels)?;
    println!(
        "wrote {} samples to {} (and samples.npy, labels.npy beside it)",
        n,
        a.out.display()
    );
    Ok(())
}

pub fn eval(a: EvalArgs) -> Result<()> {
    use rectiflow::eval::{frechet_distance, mmd_rbf, sliced_w2, Classifier};
    let gpu = Gpu::new()?;
    let tr = load_trainer(&gpu, &a.sampling.checkpoint)?;
    let config = tr.config.clone();
    let data = Dataset::from_spec(&config.data, config.seed)?;
    let (shape, classes) = (config.model.shape.clone(), config.model.classes);
    let dim: usize = shape.iter().product();
    let params = a.sampling.params(&tr)?;
    let n = a.n.unwrap_or(if data.is_image() { 500 } else { 5000 });
    let labels = if classes > 0 {
        grid_labels(classes, n)
    } else {
        vec![0; n]
    };
    let opts = a.sampling.options(labels.clone(), &config)?;
    let samples = draw(&tr.model, &params, &tr.flow, dim, classes as u32, &opts)?.to_vec()?;
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
        let (train, held) = data.split_last(300);
        let clf = Classifier::train(&gpu, &train, 1500, 1)?;
        let (pred_held, feat_held) = clf.classify(&gpu, &held.x, dim)?;
        let held_labels = held.labels.as_ref().unwrap();
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
    println!("{:<40} {:>12} {:>16}", "metric", "value", "real vs real");
    for (name, v, floor) in &rows {
        println!(
            "{name:<40} {v:>12.4} {:>16}",
            floor.map_or("-".into(), |f| format!("{f:.4}"))
        );
    }
    if classes > 0 && data.is_image() {
        println!("(the accuracy's reference is the classifier's own accuracy on 300 held-out real images)");
    }
    let json = serde_json::json!({
        "checkpoint": a.sampling.checkpoint.display().to_string(),
        "steps": a.sampling.steps, "solver": a.sampling.solver, "cfg": a.sampling.cfg, "n": n, "ema": a.sampling.ema,
        "metrics": rows.iter().map(|(name, v, f)| serde_json::json!({"metric": name, "value": v, "real_vs_real": f})).collect::<Vec<_>>(),
    });
    let path = a
        .json
        .clone()
        .unwrap_or_else(|| a.sampling.checkpoint.with_file_name("eval.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap())
        .map_err(|e| io(&path, e))?;
    println!("wrote {}", path.display());
    Ok(())
}
