//! `rectiflow study`: flags into a study [`Plan`], the study run with one overall progress bar,
//! then the report ([`rectiflow::study`]).

use super::RunEnd;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rectiflow::data::DataSpec;
use rectiflow::sample::{Solver, GUIDANCE};
use rectiflow::study::report::write_report;
use rectiflow::study::{
    default_plan, is_complete, load_data, run_study, settings, Plan, Progress, Shard, StudyEnd,
    DEFAULT_SAMPLE_STEPS,
};
use rectiflow::train::ModelKind;
use rectiflow::{Error, Gpu, Result};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct StudyArgs {
    /// toy:NAME or digits (or idx:IMAGES,LABELS) [default: toy:checkerboard]
    #[arg(long)]
    data: Option<String>,
    /// mlp | dit | mmdit (default: mlp for points, dit for images)
    #[arg(long)]
    model: Option<String>,
    /// Comma-separated formulations: rf/SAMPLER (rf/uniform, rf/lognorm(0,1), rf/mode(1.29),
    /// rf/cosmap), PRED/SCHEDULE[/SAMPLER] (eps/ldm-linear, v/cosine), edm(PM,PS)
    /// [default: rf/uniform, rf/lognorm(0,1), rf/lognorm(0.5,0.6), rf/mode(1.29), rf/cosmap,
    /// eps/ldm-linear, v/cosine, edm(-1.2,1.2)]
    #[arg(long)]
    formulations: Option<String>,
    /// Training seeds per formulation [default: 3]
    #[arg(long)]
    seeds: Option<u64>,
    /// Training steps of every run (default: 1000 for points, 400 for images).
    #[arg(long)]
    steps: Option<u64>,
    /// Batch size of every run (default: the train command's).
    #[arg(long)]
    batch: Option<usize>,
    /// Model width (default: 128 for the MLP, else the train command's).
    #[arg(long)]
    width: Option<usize>,
    /// Blocks or hidden layers (default: the train command's).
    #[arg(long)]
    depth: Option<usize>,
    /// Comma-separated sampling step counts [default: 1,2,5,10,25,50]
    #[arg(long)]
    sample_steps: Option<String>,
    /// euler | heun [default: euler]
    #[arg(long)]
    solver: Option<String>,
    /// Guidance weight of the guided settings of labelled data (each step count is measured
    /// with and without it); 1: no guided settings [default: 2]
    #[arg(long, allow_negative_numbers = true)]
    cfg: Option<f32>,
    /// The metric ranked: mmd or sliced-w2 (points); fd, fd-pixels, accuracy, precision,
    /// recall or coverage (images) (default: mmd for points, fd for images).
    #[arg(long)]
    rank_by: Option<String>,
    /// Samples per measurement (default: 2000 points, 300 images).
    #[arg(long)]
    n: Option<usize>,
    /// The study's directory (default: studies/DATA-MODEL).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Take every N-th run from the I-th (I/N, from 0/N): the runs of one study spread over
    /// several processes or machines sharing --out. The last to finish writes the report.
    #[arg(long)]
    shard: Option<String>,
    /// Only write the report from the measurements in --out (after the shards finished).
    #[arg(long)]
    report: bool,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Split a list at the commas outside brackets (`rf/lognorm(0,1),rf/cosmap`).
fn split_list(text: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut depth = 0i32;
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if c == ',' && depth == 0 {
            out.push(String::new());
        } else {
            out.last_mut().expect("never empty").push(c);
        }
    }
    out.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

pub fn study(a: StudyArgs) -> Result<RunEnd> {
    let shard = a.shard.as_deref().map(Shard::parse).transpose()?;
    let spec = DataSpec::parse(a.data.as_deref().unwrap_or("toy:checkerboard"))?;
    let image = spec.is_image().unwrap_or(true);
    let kind = match &a.model {
        Some(m) => ModelKind::parse(m)?,
        None => ModelKind::default_for(image),
    };
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("studies").join(format!("{}-{kind}", spec.dir_name())));
    if a.report {
        let given = [
            a.data.is_some(),
            a.model.is_some(),
            a.formulations.is_some(),
            a.seeds.is_some(),
            a.steps.is_some(),
            a.sample_steps.is_some(),
            a.shard.is_some(),
            a.batch.is_some(),
            a.width.is_some(),
            a.depth.is_some(),
            a.solver.is_some(),
            a.cfg.is_some(),
            a.n.is_some(),
        ];
        if given.iter().any(|&g| g) {
            return Err(Error::Config(
                "--report reads the plan kept in --out; give only --out (and --rank-by) with it"
                    .into(),
            ));
        }
        let mut plan = Plan::load(&out)?.ok_or_else(|| {
            Error::Config(format!(
                "{} holds no study (no plan.json); run rectiflow study --out {} first",
                out.display(),
                out.display()
            ))
        })?;
        if let Some(r) = &a.rank_by {
            // Ranked again by another metric; the plan on disk keeps its own.
            plan.rank_by = r.clone();
        }
        return report(&out, &plan);
    }
    let steps = match &a.sample_steps {
        Some(text) => text
            .split(',')
            .map(|s| {
                s.trim().parse::<usize>().map_err(|_| {
                    Error::Config(format!(
                        "--sample-steps {text:?}: write step counts separated by commas, e.g. 1,2,5,10"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?,
        None => DEFAULT_SAMPLE_STEPS.to_vec(),
    };
    let solver = match a.solver.as_deref() {
        None => Solver::Euler,
        Some(s) => Solver::parse(s)?,
    };
    if a.steps == Some(0) {
        return Err(Error::Config("--steps 0: train at least 1 step".into()));
    }
    let cfg = a.cfg.unwrap_or(GUIDANCE);
    if !cfg.is_finite() {
        return Err(Error::Config(format!("--cfg {cfg}: give a finite weight")));
    }
    let gpu = Gpu::new()?;
    let data = load_data(&gpu, &spec, 0)?;
    eprintln!("data {}", data.describe());
    let mut plan = default_plan(&data, kind)?;
    if let Some(f) = &a.formulations {
        plan.formulations = split_list(f);
    }
    plan.seeds = a.seeds.unwrap_or(plan.seeds);
    plan.base.steps = a.steps.unwrap_or(if image { 400 } else { 1000 });
    plan.base.batch = a.batch.unwrap_or(plan.base.batch);
    // The MLP at half the train command's width learns the checkerboard in 1000 steps at a
    // third of the cost, so 24 runs fit in about 10 minutes on 2 CPU cores.
    let default_width = if image { plan.base.model.width } else { 128 };
    plan.base.model.width = a.width.unwrap_or(default_width);
    plan.base.model.depth = a.depth.unwrap_or(plan.base.model.depth);
    plan.settings = settings(&steps, solver, data.classes > 0 && cfg != 1.0);
    for s in plan.settings.iter_mut().filter(|s| s.cfg != 1.0) {
        s.cfg = cfg;
    }
    plan.samples = a.n.unwrap_or(plan.samples);
    if let Some(r) = &a.rank_by {
        plan.rank_by = r.clone();
    }
    let runs = plan.runs(&out)?;
    let shard = shard.unwrap_or(Shard::ALL);

    // One bar for the shard: training steps still to take, plus each run's measurements
    // weighed as the training steps they cost about (an evaluation of n samples costs about a
    // third of a training step of as many).
    let per_eval: u64 = plan
        .settings
        .iter()
        .map(|s| (s.nfe() * plan.samples) as u64 / (3 * plan.base.batch as u64).max(1))
        .sum::<u64>()
        .max(1);
    let per_run = plan.base.steps + per_eval;
    let mine = runs
        .iter()
        .enumerate()
        .filter(|(k, _)| shard.takes(*k))
        .count() as u64;
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(mine * per_run)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} runs {msg} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let mut done_runs = 0u64;
    let mut current = String::new();
    let mut measured = 0u64;
    let end = run_study(&gpu, &out, &plan, &data, shard, true, |p| match p {
        Progress::RunStarts { run, index, of } => {
            current = format!("{} seed {}", run.formulation.name, run.seed);
            measured = 0;
            bar.set_message(format!("{}/{of} done; {current}", index - 1));
        }
        Progress::Resumed { step } => {
            bar.suspend(|| eprintln!("{current}: resuming from its checkpoint at step {step}"));
        }
        Progress::Step { step } => {
            bar.set_position(done_runs * per_run + step);
        }
        Progress::Measured { .. } => {
            measured += 1;
            let share = per_eval * measured / plan.settings.len() as u64;
            bar.set_position(done_runs * per_run + plan.base.steps + share);
            bar.set_message(format!("{}/{} done; {current}: measuring", done_runs, mine));
        }
        Progress::Skipped { why } => {
            bar.suspend(|| eprintln!("{current}: left to another process ({why})"));
        }
        Progress::RunDone => {
            done_runs += 1;
            bar.set_position(done_runs * per_run);
        }
    });
    let end = match end {
        Err(e) => {
            bar.abandon();
            return Err(e);
        }
        Ok(end) => end,
    };
    match end {
        StudyEnd::Stopped(signal) => {
            bar.abandon_with_message("interrupted");
            eprintln!(
                "interrupted after {:.0} s: rerun the same command to continue the study",
                start.elapsed().as_secs_f64()
            );
            Ok(RunEnd::Interrupted(signal.unwrap_or(0)))
        }
        StudyEnd::Done => {
            bar.finish_and_clear();
            eprintln!(
                "this process's {mine} runs are trained and measured ({:.0} s)",
                start.elapsed().as_secs_f64()
            );
            let complete = runs
                .iter()
                .map(|r| is_complete(&plan, r))
                .collect::<Result<Vec<bool>>>()?;
            let missing = complete.iter().filter(|&&c| !c).count();
            if missing > 0 {
                eprintln!(
                    "{missing} of the study's {} runs are other shards' and not finished yet; \
                     the last shard to finish writes the report (or: rectiflow study --out {} --report)",
                    runs.len(),
                    out.display()
                );
                return Ok(RunEnd::Finished);
            }
            report(&out, &plan)
        }
    }
}

fn report(out: &std::path::Path, plan: &Plan) -> Result<RunEnd> {
    let report = write_report(out, plan)?;
    let md = std::fs::read_to_string(out.join(rectiflow::study::report::REPORT_MD))
        .map_err(|e| Error::Io(format!("cannot read the report back: {e}")))?;
    // The ranking table; the other metrics' tables are in the file.
    println!("{}", md.split("\n## ").next().unwrap_or(&md).trim_end());
    for f in &report.files {
        eprintln!("wrote {}", f.display());
    }
    if !report.ranking.missing.is_empty() {
        eprintln!(
            "warning: {} measurements are missing (listed at the end of the report)",
            report.ranking.missing.len()
        );
    }
    Ok(RunEnd::Finished)
}
