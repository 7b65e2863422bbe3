//! `rectiflow sample` and `rectiflow eval`: a [`Pipeline`] loaded from a checkpoint, the
//! sampling flags into [`SampleOptions`], and the results written or printed.

use clap::Args;
use rectiflow::data::DataSpec;
use rectiflow::eval::{default_count, evaluate, load_data};
use rectiflow::flow::TimeGrid;
use rectiflow::limits::Budget;
use rectiflow::sample::check_sample_count;
use rectiflow::{
    output, Error, Gpu, Pipeline, Result, SampleOptions, Solver, TrainConfig, Weights,
};
use std::path::{Path, PathBuf};

/// How samples are drawn (shared by `sample` and `eval`).
#[derive(Args, Debug)]
pub struct SamplingArgs {
    /// A checkpoint written by `rectiflow train` (RUN/checkpoint.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Sampling steps (default: 20; K for a model distilled for K steps).
    #[arg(long)]
    steps: Option<usize>,
    /// euler | heun | rk45 (adaptive Dormand-Prince 5(4); --steps is not used)
    #[arg(long, default_value = "euler")]
    solver: String,
    /// rk45's relative tolerance.
    #[arg(long, default_value_t = rectiflow::rk45::DEFAULT_RTOL, allow_negative_numbers = true)]
    rtol: f64,
    /// rk45's absolute tolerance.
    #[arg(long, default_value_t = rectiflow::rk45::DEFAULT_ATOL, allow_negative_numbers = true)]
    atol: f64,
    /// Classifier-free guidance weight (1: none; default: 2 for a class-conditional model
    /// trained with label dropout, else 1).
    #[arg(long, allow_negative_numbers = true)]
    cfg: Option<f32>,
    /// Time-grid shift alpha (1: none).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    shift: f64,
    /// Time grid: uniform | karras (Karras et al.'s rho = 7 spacing of sigma). Default: karras
    /// for the edm schedule, uniform for the others.
    #[arg(long)]
    grid: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use the EMA weights.
    #[arg(long)]
    ema: bool,
    /// f16 weights: the linear layers read f16 copies of the weights (f32 sums; needs an
    /// adapter with SHADER_F16). A run trained with --f16 samples so wherever it can.
    #[arg(long)]
    f16: bool,
    /// Clamp the predicted x0 to [-V, V] at each step (0: never). Default: the data range for
    /// eps-prediction, whose x0 = (z - b eps) / a is ill-conditioned near t = 1; off otherwise.
    #[arg(long, allow_negative_numbers = true)]
    clip_x0: Option<f32>,
}

impl SamplingArgs {
    fn options(&self, labels: Vec<u32>, config: &TrainConfig) -> Result<SampleOptions> {
        let opts = SampleOptions {
            steps: self.steps.unwrap_or_else(|| config.default_sample_steps()),
            solver: Solver::parse(&self.solver)?,
            cfg: self.cfg.unwrap_or_else(|| config.default_guidance()),
            shift: self.shift,
            labels,
            seed: self.seed,
            clip_x0: match self.clip_x0 {
                Some(0.0) => None,
                Some(v) => Some(v),
                None => config.default_clip_x0(),
            },
            grid: self.grid.as_deref().map(TimeGrid::parse).transpose()?,
            rtol: self.rtol,
            atol: self.atol,
        };
        opts.validate()?;
        Ok(opts)
    }

    /// Check the flags before anything is loaded (the checkpoint's own settings come later).
    fn check(&self) -> Result<()> {
        SampleOptions {
            steps: self.steps.unwrap_or(rectiflow::sample::DEFAULT_STEPS),
            solver: Solver::parse(&self.solver)?,
            cfg: self.cfg.unwrap_or(1.0),
            shift: self.shift,
            labels: vec![0],
            seed: self.seed,
            clip_x0: self.clip_x0.filter(|&v| v != 0.0),
            grid: self.grid.as_deref().map(TimeGrid::parse).transpose()?,
            rtol: self.rtol,
            atol: self.atol,
        }
        .validate()
    }

    /// The checkpoint's network with the chosen weights, f16 where asked.
    fn load(&self, gpu: &Gpu) -> Result<Pipeline> {
        let mut pipe = Pipeline::load(gpu, &self.checkpoint, self.weights())?;
        if self.f16 {
            pipe.store_f16()?;
        }
        Ok(pipe)
    }

    fn weights(&self) -> Weights {
        if self.ema {
            Weights::Ema
        } else {
            Weights::Raw
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

/// The refusal of samples that are not finite, naming the checkpoint.
fn diverged(why: &str, checkpoint: &Path) -> Error {
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
    let pipe = a.sampling.load(&gpu)?;
    let classes = pipe.classes();
    let image = pipe.example_shape().len() == 3;
    let n = a.n.unwrap_or(if image { 100 } else { 5000 });
    // Sized before the labels (or anything else that large) are allocated.
    check_sample_count(pipe.model_config(), n, &budget)?;
    let labels: Vec<u32> = match (&a.labels, classes) {
        (_, 0) => vec![0; n],
        (Some(text), _) => {
            let given: Vec<u32> = text
                .split(',')
                .map(|v| v.trim().parse::<u32>().ok().filter(|&l| l as usize <= classes))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    Error::Config(format!(
                        "--labels {text:?}: give comma-separated classes 0..{} ({classes} is the null class)",
                        classes - 1
                    ))
                })?;
            (0..n).map(|i| given[i % given.len()]).collect()
        }
        (None, _) => pipe.labels(n),
    };
    let opts = a.sampling.options(labels.clone(), pipe.config())?;
    let started = std::time::Instant::now();
    let mut sampler = pipe.sampler(&opts)?;
    while sampler.step()? {}
    let (steps, nfe) = (sampler.steps(), sampler.nfe());
    let z = sampler.current()?.to_vec()?;
    let seconds = started.elapsed().as_secs_f64();
    let bad = z.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        let why = format!(
            "{bad} of the {} values of the {n} samples are NaN or infinite",
            z.len()
        );
        return Err(diverged(&why, &a.sampling.checkpoint));
    }
    let ckpt_name = a.sampling.checkpoint.display();
    let title = match opts.solver {
        Solver::Rk45 => format!("{ckpt_name}: {n} samples, rk45, {nfe} evaluations"),
        solver => format!("{ckpt_name}: {n} samples, {steps} {} steps", solver.name()),
    };
    // A toy's own points, drawn faint behind the samples, show what they should look like.
    let target = match &pipe.config().data {
        DataSpec::Toy(toy) if pipe.example_shape() == [2] => Some(toy.sample(5000, 1)?.x),
        _ => None,
    };
    let picture = output::SamplePicture {
        title: &title,
        target: target.as_deref(),
    };
    output::write_samples(&a.out, pipe.example_shape(), &z, &labels, &picture)?;
    println!(
        "wrote {} samples to {} (and samples.npy, labels.npy beside it)",
        n,
        a.out.display()
    );
    println!(
        "{} {steps} steps, {nfe} network evaluations (NFE), {seconds:.2} s",
        opts.solver.name()
    );
    Ok(())
}

pub fn eval(a: EvalArgs) -> Result<()> {
    a.sampling.check()?;
    if let Some(n) = a.n.filter(|&n| n < 2) {
        return Err(Error::Config(format!(
            "--n {n}: eval needs at least 2 samples (MMD and covariances compare pairs)"
        )));
    }
    let gpu = Gpu::new()?;
    let budget = Budget::of(&gpu);
    let ckpt = &a.sampling.checkpoint;
    let pipe = a.sampling.load(&gpu)?;
    let data = load_data(&pipe, &ckpt.display().to_string())?;
    let n = a.n.unwrap_or(default_count(&data));
    check_sample_count(pipe.model_config(), n, &budget)?;
    let opts = a.sampling.options(pipe.labels(n), pipe.config())?;
    let report = evaluate(&pipe, &data, &opts).map_err(|e| match e {
        Error::NonFinite(why) => Error::NonFinite(format!("{}: {why}", ckpt.display())),
        e => e,
    })?;
    println!("{:<40} {:>12} {:>16}", "metric", "value", "real vs real");
    for m in &report.metrics {
        println!(
            "{:<40} {:>12.4} {:>16}",
            m.metric,
            m.value,
            m.real_vs_real.map_or("-".into(), |f| format!("{f:.4}"))
        );
    }
    if let Some(note) = &report.note {
        println!("({note})");
    }
    let st = &report.straightness;
    println!(
        "(path straightness: along the rk45 paths of {} samples, {} steps, {} network \
         evaluations; 0 for straight paths)",
        st.samples, st.steps, st.nfe
    );
    let json = serde_json::json!({
        "checkpoint": ckpt.display().to_string(),
        "steps": opts.steps, "solver": opts.solver.name(), "rtol": opts.rtol, "atol": opts.atol, "cfg": opts.cfg, "n": n, "ema": a.sampling.ema,
        "grid": opts.grid.unwrap_or_else(|| TimeGrid::default_for(&pipe.config().schedule)).name(),
        "metrics": report.metrics, "straightness": report.straightness,
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
