//! `rectiflow study`: SD3's formulation study (its Table 1) in miniature. Every formulation
//! (schedule x prediction x time sampler, [`Formulation`]) is trained with the same budget on
//! the same data for each of several seeds, everything else equal; each run's EMA weights are
//! then sampled at every sampler setting ([`Setting`]: Euler or Heun steps, with and without
//! guidance) and measured against the data ([`crate::eval::Reference`]); [`report`] ranks the
//! formulations per setting (ties within the seeds' spread, [`rank`]) and averages the ranks.
//!
//! A study lives in one directory: `plan.json` (what it trains and measures), one run directory
//! per formulation and seed under `runs/` (an ordinary training run, with its `result.json`, the
//! metrics of each setting), and the report (`study.md`, `study.csv`, `study.png`). Everything is
//! written atomically, so an interrupted study (kill -9 included) picks up what it has: finished
//! measurements are kept, a run with a checkpoint resumes from it, and only what is missing is
//! computed. Runs are named by formulation and seed, so changing the list of formulations reuses
//! the runs that match. The runs can be spread over several processes or machines sharing the
//! directory ([`Shard`]), each run's own lock keeping two from training the same one.
#![warn(missing_docs)]

pub mod rank;
pub mod report;

use crate::data::{DataSpec, Dataset};
use crate::error::{Error, Result};
use crate::eval::{Metric, Reference};
use crate::flow::{Preconditioning, Prediction, Schedule, TimeSampler};
use crate::limits::Budget;
use crate::output::write_atomically;
use crate::pipeline::{Pipeline, Weights};
use crate::sample::{Solver, GUIDANCE};
use crate::train::run::{changes, holds_run, CHECKPOINT_FILE};
use crate::train::{Event, ModelKind, Run, RunEnd, RunOptions, TrainConfig};
use crate::Gpu;
use serde::{Deserialize, Serialize};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The formulations a study trains unless told otherwise (the list, after SD3's Table 1).
pub const DEFAULT_FORMULATIONS: [&str; 8] = [
    "rf/uniform",
    "rf/lognorm(0,1)",
    "rf/lognorm(0.5,0.6)",
    "rf/mode(1.29)",
    "rf/cosmap",
    "eps/ldm-linear",
    "v/cosine",
    "edm(-1.2,1.2)",
];

/// Euler steps of the default sampler settings.
pub const DEFAULT_SAMPLE_STEPS: [usize; 6] = [1, 2, 5, 10, 25, 50];

/// Most seeds a study trains per formulation.
pub const MAX_SEEDS: u64 = 1000;

/// Settings with at most this many steps are the "few-step" ones of the average ranks.
pub const FEW_STEPS: usize = 5;

/// The plan file in a study's directory.
pub const PLAN_FILE: &str = "plan.json";
/// A run's measurements, in its directory.
pub const RESULT_FILE: &str = "result.json";

/// One formulation: a schedule, what the network predicts (with EDM's preconditioning for
/// `edm`), and how training draws `t`. Written `rf/SAMPLER` (velocity prediction on the `rf`
/// schedule, e.g. `rf/lognorm(0,1)`, `rf/mode(1.29)`, `rf/cosmap`, `rf/uniform`),
/// `PRED/SCHEDULE[/SAMPLER]` (e.g. `eps/ldm-linear`, `v/cosine`; uniform `t` unless a sampler
/// is given; `linear` and `cos` are SD3's names for `ldm-linear` and `cosine`), or
/// `edm(PM,PS)` (EDM: x0 prediction with its preconditioning, uniform `t` through `PhiInv`).
#[derive(Clone, Debug, PartialEq)]
pub struct Formulation {
    /// The name as written.
    pub name: String,
    /// The forward process.
    pub schedule: Schedule,
    /// What the network predicts.
    pub prediction: Prediction,
    /// EDM's or none.
    pub preconditioning: Preconditioning,
    /// How training draws `t`.
    pub t_sampler: TimeSampler,
}

/// `name(a,b)` to the flow module's `name:a,b`.
fn call_to_colon(text: &str) -> String {
    match text.split_once('(') {
        Some((head, args)) => format!("{head}:{}", args.trim_end_matches(')')),
        None => text.to_string(),
    }
}

impl Formulation {
    /// Parse a formulation's name (see [`Formulation`]).
    pub fn parse(name: &str) -> Result<Formulation> {
        let bad = |why: String| {
            Error::Config(format!(
                "formulation {name:?}: {why}. Write rf/SAMPLER (rf/uniform, rf/lognorm(0,1), \
                 rf/mode(1.29), rf/cosmap), PRED/SCHEDULE[/SAMPLER] (eps/ldm-linear, v/cosine) or \
                 edm(PM,PS)"
            ))
        };
        let text = name.trim().replace(' ', "");
        if text == "edm" || text.starts_with("edm(") {
            let schedule =
                Schedule::parse(&call_to_colon(&text)).map_err(|e| bad(format!("{e}")))?;
            return Ok(Formulation {
                name: name.trim().to_string(),
                schedule,
                prediction: Prediction::X0,
                preconditioning: Preconditioning::Edm,
                t_sampler: TimeSampler::Uniform,
            });
        }
        let parts: Vec<&str> = text.split('/').collect();
        let sampler =
            |s: &str| TimeSampler::parse(&call_to_colon(s)).map_err(|e| bad(format!("{e}")));
        let (schedule, prediction, t_sampler) = match parts.as_slice() {
            ["rf", s] => (Schedule::RectifiedFlow, Prediction::Velocity, sampler(s)?),
            [pred, sched, rest @ ..] if rest.len() <= 1 => {
                let prediction = Prediction::parse(pred).map_err(|e| bad(format!("{e}")))?;
                let sched = match *sched {
                    "linear" => "ldm-linear".to_string(),
                    "cos" => "cosine".to_string(),
                    s => call_to_colon(s),
                };
                let schedule = Schedule::parse(&sched).map_err(|e| bad(format!("{e}")))?;
                let t_sampler = match rest {
                    [s] => sampler(s)?,
                    _ => TimeSampler::Uniform,
                };
                (schedule, prediction, t_sampler)
            }
            _ => return Err(bad("not a formulation".into())),
        };
        Ok(Formulation {
            name: name.trim().to_string(),
            schedule,
            prediction,
            preconditioning: Preconditioning::default_for(&schedule, prediction),
            t_sampler,
        })
    }

    /// The name of its run directories: the parts spelled out, with only `[a-z0-9._-]`.
    pub fn slug(&self) -> String {
        let raw = format!(
            "{}-{}-{}-{}",
            self.prediction.name(),
            self.schedule.name(),
            self.t_sampler.name(),
            self.preconditioning.name()
        );
        raw.chars()
            .map(|c| match c {
                'a'..='z' | '0'..='9' | '.' | '-' => c,
                'A'..='Z' => c.to_ascii_lowercase(),
                _ => '_',
            })
            .collect()
    }

    /// `base` trained as this formulation.
    pub fn apply(&self, base: &TrainConfig) -> TrainConfig {
        TrainConfig {
            schedule: self.schedule,
            prediction: self.prediction,
            preconditioning: self.preconditioning,
            weighting: None,
            t_sampler: self.t_sampler,
            ..base.clone()
        }
    }
}

/// One sampler setting: steps of a solver, with guidance weight `cfg` (1: none).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    /// Solver steps.
    pub steps: usize,
    /// The solver (Euler or Heun).
    pub solver: Solver,
    /// Guidance weight.
    pub cfg: f32,
}

impl Setting {
    /// `euler 5`, `heun 10 cfg 2`.
    pub fn label(&self) -> String {
        let mut s = format!("{} {}", self.solver.name(), self.steps);
        if self.cfg != 1.0 {
            s += &format!(" cfg {}", self.cfg);
        }
        s
    }

    /// Network evaluations per sample (guidance evaluates the batch twice over in one pass, so
    /// it is not counted twice).
    pub fn nfe(&self) -> usize {
        match self.solver {
            Solver::Heun => 2 * self.steps - 1,
            _ => self.steps,
        }
    }
}

/// What a study trains and measures (its `plan.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Everything a run is, but its formulation and seed.
    pub base: TrainConfig,
    /// The formulations' names.
    pub formulations: Vec<String>,
    /// Training seeds `0..seeds`.
    pub seeds: u64,
    /// The sampler settings.
    pub settings: Vec<Setting>,
    /// Samples per measurement.
    pub samples: usize,
    /// The metric ranked ([`RANKABLE`]'s short name; empty: [`default_rank_by`]).
    #[serde(default)]
    pub rank_by: String,
}

/// One training run of a study.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSpec {
    /// Its formulation.
    pub formulation: Formulation,
    /// Its seed (of the weights, the training draws, and the samples measured).
    pub seed: u64,
    /// Its configuration.
    pub config: TrainConfig,
    /// Its directory.
    pub dir: PathBuf,
}

/// The measurements of one setting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SettingResult {
    /// The setting.
    pub setting: Setting,
    /// Samples measured.
    pub samples: usize,
    /// The run diverged (in training, or its samples at this setting were not finite): no
    /// metrics, ranked last.
    #[serde(default)]
    pub diverged: bool,
    /// The metrics, each with its real-vs-real floor.
    pub metrics: Vec<MetricValue>,
}

/// A metric's value and floor (as [`Metric`], but readable back from JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricValue {
    /// What is measured.
    pub metric: String,
    /// Its value.
    pub value: f64,
    /// The same between real data.
    pub floor: Option<f64>,
}

impl From<Metric> for MetricValue {
    fn from(m: Metric) -> Self {
        MetricValue {
            metric: m.metric,
            value: m.value,
            floor: m.real_vs_real,
        }
    }
}

/// A run's `result.json`: its measurements so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The formulation's name.
    pub formulation: String,
    /// The run's seed.
    pub seed: u64,
    /// Seconds the training took, summed over the segments that ran to their end (a segment
    /// cut by a signal or kill -9 is not counted).
    pub train_seconds: Option<f64>,
    /// Why the run stopped training, when it diverged (its settings are then all diverged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diverged: Option<String>,
    /// One entry per measured setting.
    pub settings: Vec<SettingResult>,
}

impl RunResult {
    /// The measurements of `setting` on `samples` samples, if taken.
    pub fn get(&self, setting: &Setting, samples: usize) -> Option<&SettingResult> {
        self.settings
            .iter()
            .find(|r| r.setting == *setting && r.samples == samples)
    }
}

/// Which runs this process takes: `i/n` takes every `n`-th run from the `i`-th (0-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This shard, `0..count`.
    pub index: usize,
    /// Shards in all.
    pub count: usize,
}

impl Shard {
    /// All the runs.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parse `I/N` with `I < N`.
    pub fn parse(text: &str) -> Result<Shard> {
        let bad = || {
            Error::Config(format!(
                "--shard {text:?}: write I/N with 0 <= I < N, e.g. 0/2 and 1/2 for two processes"
            ))
        };
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// Whether the `k`-th run is this shard's.
    pub fn takes(&self, k: usize) -> bool {
        k % self.count == self.index
    }
}

/// The metrics a study can rank by: short name (`--rank-by`), the name the measurements carry,
/// and whether lower is better.
pub const RANKABLE: [(&str, &str, bool); 8] = [
    ("mmd", "MMD^2 (RBF, sigma 0.25)", true),
    ("sliced-w2", "sliced W2", true),
    ("fd", "Frechet distance (classifier features)", true),
    ("fd-pixels", "Frechet distance (pixels)", true),
    ("accuracy", "class-conditional accuracy", false),
    ("precision", "precision (pixels, 3-NN)", false),
    ("recall", "recall (pixels, 3-NN)", false),
    ("coverage", "coverage (pixels, 3-NN)", false),
];

/// The metric ranked unless told: for 2-D data the MMD (sliced W2 compares 1-D projections, in
/// which a structureless blob over the checkerboard's square looks almost like the checkerboard:
/// measured, a model whose samples show no squares at all scored 0.10 against a floor of 0.07,
/// where its MMD was 600x the floor), for images the Frechet distance in the classifier's
/// features.
pub fn default_rank_by(image: bool) -> &'static str {
    if image {
        "fd"
    } else {
        "mmd"
    }
}

/// The measured name and direction (`lower_is_better`) of the metric `short` names.
pub fn rankable(short: &str) -> Result<(&'static str, bool)> {
    RANKABLE
        .iter()
        .find(|(s, _, _)| *s == short)
        .map(|(_, name, lower)| (*name, *lower))
        .ok_or_else(|| {
            Error::Config(format!(
                "--rank-by {short:?}: use one of {}",
                RANKABLE.map(|(s, _, _)| s).join(", ")
            ))
        })
}

/// Samples per measurement unless told: 2000 points or 300 images.
pub fn default_samples(image: bool) -> usize {
    if image {
        300
    } else {
        2000
    }
}

/// The default plan on `data` with `model`: the default run's configuration,
/// [`DEFAULT_FORMULATIONS`], 3 seeds, [`DEFAULT_SAMPLE_STEPS`] Euler steps, with
/// and without guidance for labelled data.
pub fn default_plan(data: &Dataset, kind: ModelKind) -> Result<Plan> {
    let base = TrainConfig::for_data(data, kind)?;
    let guided = data.classes > 0;
    Ok(Plan {
        formulations: DEFAULT_FORMULATIONS.iter().map(|s| s.to_string()).collect(),
        seeds: 3,
        settings: settings(&DEFAULT_SAMPLE_STEPS, Solver::Euler, guided),
        samples: default_samples(data.is_image()),
        rank_by: default_rank_by(data.is_image()).into(),
        base,
    })
}

/// Every count of `steps` with `solver`, unguided, and when `guided` also with guidance
/// [`GUIDANCE`].
pub fn settings(steps: &[usize], solver: Solver, guided: bool) -> Vec<Setting> {
    let mut out: Vec<Setting> = steps
        .iter()
        .map(|&steps| Setting {
            steps,
            solver,
            cfg: 1.0,
        })
        .collect();
    if guided {
        out.extend(steps.iter().map(|&steps| Setting {
            steps,
            solver,
            cfg: GUIDANCE,
        }));
    }
    out
}

impl Plan {
    /// Check the plan: formulations parse and are not repeated, seeds and settings exist,
    /// samples at least 2, and the base configuration trains.
    pub fn validate(&self) -> Result<Vec<Formulation>> {
        if self.formulations.is_empty() {
            return Err(Error::Config("--formulations: name at least one".into()));
        }
        let formulations = self
            .formulations
            .iter()
            .map(|f| Formulation::parse(f))
            .collect::<Result<Vec<_>>>()?;
        for (i, f) in formulations.iter().enumerate() {
            if let Some(g) = formulations[..i].iter().find(|g| g.slug() == f.slug()) {
                return Err(Error::Config(format!(
                    "--formulations names the same formulation twice ({} and {})",
                    g.name, f.name
                )));
            }
            f.apply(&self.base).validate()?;
        }
        if self.seeds == 0 || self.seeds > MAX_SEEDS {
            return Err(Error::Config(format!(
                "--seeds {}: give 1 to {MAX_SEEDS}",
                self.seeds
            )));
        }
        if self.settings.is_empty() {
            return Err(Error::Config("--sample-steps: give at least one".into()));
        }
        for s in &self.settings {
            if s.steps == 0 || s.steps > crate::sample::MAX_STEPS {
                return Err(Error::Config(format!(
                    "--sample-steps {}: each in 1..={}",
                    s.steps,
                    crate::sample::MAX_STEPS
                )));
            }
            if !matches!(s.solver, Solver::Euler | Solver::Heun) {
                return Err(Error::Config(
                    "--solver: a study samples with euler or heun (fixed steps)".into(),
                ));
            }
        }
        let (metric, _) = self.ranked_metric()?;
        let image = self.base.model.shape.len() == 3;
        if image != (!metric.contains("W2") && !metric.contains("MMD")) {
            return Err(Error::Config(format!(
                "--rank-by {}: {} is not measured on {}",
                self.rank_by,
                metric,
                if image { "images" } else { "points" }
            )));
        }
        if self.samples < 2 {
            return Err(Error::Config(format!(
                "--n {}: measuring needs at least 2 samples",
                self.samples
            )));
        }
        Ok(formulations)
    }

    /// The ranked metric's measured name and whether lower is better.
    pub fn ranked_metric(&self) -> Result<(&'static str, bool)> {
        if self.rank_by.is_empty() {
            rankable(default_rank_by(self.base.model.shape.len() == 3))
        } else {
            rankable(&self.rank_by)
        }
    }

    /// The runs, formulation by formulation, seed by seed, each in `dir/runs/SLUG-seedS`.
    pub fn runs(&self, dir: &Path) -> Result<Vec<RunSpec>> {
        let formulations = self.validate()?;
        let mut runs = Vec::new();
        for f in formulations {
            for seed in 0..self.seeds {
                let config = TrainConfig {
                    seed,
                    ..f.apply(&self.base)
                };
                runs.push(RunSpec {
                    dir: dir.join("runs").join(format!("{}-seed{seed}", f.slug())),
                    formulation: f.clone(),
                    seed,
                    config,
                });
            }
        }
        Ok(runs)
    }

    /// The plan kept in `dir`, if any.
    pub fn load(dir: &Path) -> Result<Option<Plan>> {
        let path = dir.join(PLAN_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                Error::Config(format!(
                    "{} is not a study plan ({e}); if it was damaged, delete it and rerun the same \
                     command (the runs and their measurements are kept), else give another --out",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io(format!("cannot read {}: {e}", path.display()))),
        }
    }

    /// Write the plan into `dir`, after checking that it trains what a plan already there
    /// trained: the same data, model and training settings. Alone (`strict` false), the
    /// formulations, seeds, sampler settings and sample count may change (runs and measurements
    /// that match are reused); one shard of several (`strict`) must agree with the plan in every
    /// respect, since the shards split the same list of runs. Processes sharing `dir` take turns
    /// (a lock on `dir/.plan.lock`), and an unchanged plan is not rewritten.
    pub fn store(&self, dir: &Path, strict: bool) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Io(format!("cannot create {}: {e}", dir.display())))?;
        let lock_path = dir.join(".plan.lock");
        let lock = crate::rundir::lock_exclusive(&lock_path)?;
        if let Some(old) = Plan::load(dir)? {
            if old == *self {
                drop(lock);
                return Ok(());
            }
            let diff = changes(&old.base, &self.base);
            if old.base.data != self.base.data
                || old.base.model != self.base.model
                || !diff.is_empty()
            {
                let listed: Vec<String> = diff.iter().map(|c| c.to_string()).collect();
                return Err(Error::Config(format!(
                    "{} holds a study of {} with model {:?}{}; these flags give {} with {:?}. \
                     Give another --out for a new study, or the same flags to continue this one",
                    dir.display(),
                    old.base.data,
                    old.base.model,
                    if listed.is_empty() {
                        String::new()
                    } else {
                        format!(" (differing: {})", listed.join(", "))
                    },
                    self.base.data,
                    self.base.model
                )));
            }
            if strict {
                return Err(Error::Config(format!(
                    "--shard: {} holds a plan with other formulations, seeds, sampler settings, \
                     --n or --rank-by than these flags give; every shard of a study needs the same \
                     flags (see {})",
                    dir.display(),
                    dir.join(PLAN_FILE).display()
                )));
            }
        }
        let text = serde_json::to_string_pretty(self).expect("a plan serialises");
        write_atomically(&[(&dir.join(PLAN_FILE), text.as_bytes())])?;
        drop(lock);
        Ok(())
    }
}

/// A run's measurements so far (empty if none).
pub fn load_result(dir: &Path) -> Result<RunResult> {
    let path = dir.join(RESULT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| {
            Error::Config(format!(
                "{} is damaged ({e}); delete it and rerun to measure the run again",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RunResult::default()),
        Err(e) => Err(Error::Io(format!("cannot read {}: {e}", path.display()))),
    }
}

/// Whether `run` has every measurement `plan` asks for.
pub fn is_complete(plan: &Plan, run: &RunSpec) -> Result<bool> {
    let result = load_result(&run.dir)?;
    Ok(plan
        .settings
        .iter()
        .all(|s| result.get(s, plan.samples).is_some()))
}

/// What [`run_study`] reports as it goes.
#[derive(Clone, Debug)]
pub enum Progress<'a> {
    /// A run starts (or resumes, or is measured): its place among the shard's runs.
    RunStarts {
        /// The run.
        run: &'a RunSpec,
        /// Its place, from 1.
        index: usize,
        /// The shard's runs.
        of: usize,
    },
    /// The current run continues from its checkpoint at `step` (a study interrupted before).
    Resumed {
        /// The checkpoint's step.
        step: u64,
    },
    /// A training step of the current run.
    Step {
        /// The run's step.
        step: u64,
    },
    /// A setting of the current run was measured.
    Measured {
        /// The setting.
        setting: Setting,
    },
    /// A run is complete.
    RunDone,
    /// A run is left to the process that holds it.
    Skipped {
        /// The holder's message.
        why: String,
    },
}

/// How a study's share of runs ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StudyEnd {
    /// Every run of the shard is trained and measured.
    Done,
    /// A signal stopped a run after its checkpoint was saved.
    Stopped(Option<i32>),
}

/// Train and measure `shard`'s runs of `plan` in `dir` (after storing the plan), reusing every
/// run and measurement already there; `data` is the plan's data set. A run that diverges in
/// training is recorded as diverged at every setting (ranked last) and the study goes on; a run
/// another process holds is left to it. With `catch_signals`, SIGINT and SIGTERM stop the study
/// at the next safe point (a run saves its checkpoint; a measurement in progress is finished).
pub fn run_study(
    gpu: &Gpu,
    dir: &Path,
    plan: &Plan,
    data: &Dataset,
    shard: Shard,
    catch_signals: bool,
    mut on_progress: impl FnMut(Progress),
) -> Result<StudyEnd> {
    plan.validate()?;
    Reference::check(data, &plan.base.data)?;
    // The samples of one measurement, and the toy's reference draws of as many, must fit.
    crate::sample::check_sample_count(&plan.base.model, plan.samples, &Budget::of(gpu))?;
    plan.store(dir, shard.count > 1)?;
    let runs = plan.runs(dir)?;
    let mine: Vec<&RunSpec> = runs
        .iter()
        .enumerate()
        .filter(|(k, _)| shard.takes(*k))
        .map(|(_, r)| r)
        .collect();
    // The study's own stop flag: a run catches signals only while it trains (and leaves the
    // process's handlers in place when it ends), so the measurements between runs need this.
    let signal = Arc::new(AtomicUsize::new(0));
    let mut hooks = Vec::new();
    if catch_signals {
        for sig in [SIGINT, SIGTERM] {
            let id = signal_hook::flag::register_usize(sig, Arc::clone(&signal), sig as usize)
                .map_err(|e| Error::Io(format!("cannot catch signal {sig}: {e}")))?;
            hooks.push(id);
        }
    }
    let stopped = || match signal.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(StudyEnd::Stopped(Some(sig as i32))),
    };
    let result = (|| {
        let mut reference: Option<Reference> = None;
        for (i, run) in mine.iter().enumerate() {
            if let Some(end) = stopped() {
                return Ok(end);
            }
            on_progress(Progress::RunStarts {
                run,
                index: i + 1,
                of: mine.len(),
            });
            let mut result = load_result(&run.dir)?;
            let wanted = |r: &RunResult| {
                plan.settings
                    .iter()
                    .filter(|s| r.get(s, plan.samples).is_none())
                    .copied()
                    .collect::<Vec<Setting>>()
            };
            if wanted(&result).is_empty() {
                on_progress(Progress::RunDone);
                continue;
            }
            if result.diverged.is_none() {
                match train_run(
                    gpu,
                    plan,
                    run,
                    data,
                    catch_signals,
                    &mut on_progress,
                    &mut result,
                ) {
                    Ok(Trained::Yes) => {}
                    Ok(Trained::Stopped(end)) => return Ok(end),
                    Ok(Trained::Busy(why)) => {
                        on_progress(Progress::Skipped { why });
                        continue;
                    }
                    Err(Error::NonFinite(why)) => result.diverged = Some(why),
                    Err(e) => return Err(e),
                }
                save_result(run, &mut result)?;
            }
            if result.diverged.is_some() {
                for setting in wanted(&result) {
                    result.settings.push(SettingResult {
                        setting,
                        samples: plan.samples,
                        diverged: true,
                        metrics: Vec::new(),
                    });
                }
                save_result(run, &mut result)?;
                on_progress(Progress::RunDone);
                continue;
            }
            let pipeline = Pipeline::load(gpu, run.dir.join(CHECKPOINT_FILE), Weights::Ema)?;
            if reference.is_none() {
                reference = Some(Reference::new(gpu, data, &plan.base.data, plan.samples, 0)?);
            }
            let reference = reference.as_ref().expect("prepared above");
            for setting in wanted(&result) {
                if let Some(end) = stopped() {
                    return Ok(end);
                }
                let mut opts = pipeline.options(pipeline.labels(plan.samples));
                opts.steps = setting.steps;
                opts.solver = setting.solver;
                opts.cfg = if pipeline.classes() > 0 {
                    setting.cfg
                } else {
                    1.0
                };
                opts.seed = run.seed;
                let samples = pipeline.sample(&opts)?.to_vec()?;
                let diverged = samples.iter().any(|v| !v.is_finite());
                let metrics = if diverged {
                    Vec::new()
                } else {
                    let (metrics, _) = reference.measure(gpu, &samples, &opts.labels)?;
                    metrics.into_iter().map(MetricValue::from).collect()
                };
                result.settings.push(SettingResult {
                    setting,
                    samples: plan.samples,
                    diverged,
                    metrics,
                });
                save_result(run, &mut result)?;
                on_progress(Progress::Measured { setting });
            }
            on_progress(Progress::RunDone);
        }
        Ok(stopped().unwrap_or(StudyEnd::Done))
    })();
    for id in hooks {
        signal_hook::low_level::unregister(id);
    }
    result
}

/// How training a study's run ended.
enum Trained {
    /// It is trained (now or before).
    Yes,
    /// A signal stopped it after its checkpoint was saved.
    Stopped(StudyEnd),
    /// Another process holds it.
    Busy(String),
}

/// Train `run` to its end (from its checkpoint if it has one), adding the time to `result`
/// (saved at once, so a kill before the measurements keeps it).
fn train_run(
    gpu: &Gpu,
    plan: &Plan,
    run: &RunSpec,
    data: &Dataset,
    catch_signals: bool,
    on_progress: &mut impl FnMut(Progress),
    result: &mut RunResult,
) -> Result<Trained> {
    let opts = RunOptions {
        log_every: (run.config.steps / 20).max(1),
        checkpoint_every: (run.config.steps / 4).max(1),
        sample_every: 0,
        // The final grid is for a person to look at; the measurements draw their own.
        grid_samples: Some(plan.samples.min(1000)),
        catch_signals,
    };
    let busy = |e: Error| match e {
        Error::Io(why) if why.contains("is in use") => Ok(Trained::Busy(why)),
        e => Err(e),
    };
    let mut r = if run.dir.join(CHECKPOINT_FILE).exists() {
        let resumable = match Run::open(gpu, &run.dir) {
            Ok(r) => r,
            Err(e) => return busy(e),
        };
        let diff = changes(resumable.config(), &run.config);
        if !diff.is_empty() {
            let listed: Vec<String> = diff.iter().map(|c| c.to_string()).collect();
            return Err(Error::Config(format!(
                "{} holds a run that differs from the study's ({}); move it away or give \
                 another --out",
                run.dir.display(),
                listed.join(", ")
            )));
        }
        let step = resumable.step();
        if step >= run.config.steps {
            return Ok(Trained::Yes);
        }
        on_progress(Progress::Resumed { step });
        resumable.resume(gpu, run.config.clone(), Some(data), false, opts)?
    } else {
        // A directory with a configuration but no checkpoint learned nothing worth keeping
        // (it was stopped before its first save): start it again.
        let overwrite = holds_run(&run.dir);
        match Run::create(
            gpu,
            &run.dir,
            run.config.clone(),
            Some(data),
            overwrite,
            opts,
        ) {
            Ok(r) => r,
            Err(e) => return busy(e),
        }
    };
    let end = r.run(|event| {
        if let Event::Step { step, .. } = event {
            on_progress(Progress::Step { step })
        }
    })?;
    Ok(match end {
        RunEnd::Finished(summary) => {
            *result.train_seconds.get_or_insert(0.0) += summary.seconds;
            save_result(run, result)?;
            Trained::Yes
        }
        RunEnd::Stopped { signal, .. } => Trained::Stopped(StudyEnd::Stopped(signal)),
    })
}

fn save_result(run: &RunSpec, result: &mut RunResult) -> Result<()> {
    result.formulation = run.formulation.name.clone();
    result.seed = run.seed;
    let text = serde_json::to_string_pretty(result).expect("a result serialises");
    write_atomically(&[(&run.dir.join(RESULT_FILE), text.as_bytes())])
}

/// The data set of `plan` within the device's budget.
pub fn load_data(gpu: &Gpu, spec: &DataSpec, seed: u64) -> Result<Dataset> {
    let budget = Budget::of(gpu);
    spec.load_within(seed, budget.tensor_bytes.min(budget.host_bytes))
}
