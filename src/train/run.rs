//! A training run in a run directory, as `rectiflow train` runs it — the command line only
//! chooses the settings and shows the progress:
//!
//! - the directory: `config.json`, `checkpoint.safetensors`, sample grids (`samples_STEP.png`,
//!   the final `samples.png` with `samples.npy` and `labels.npy`), `metrics.json` and the loss
//!   curve `loss.png`; a new run
//!   never writes into a directory that holds another unless told to overwrite it, and one
//!   writer at a time holds the directory's lock ([`RunLock`]) from before it writes anything;
//! - the cadence: the loss read every `log_every` steps, a checkpoint every `checkpoint_every`
//!   steps and at the end, a sample grid every `sample_every` steps and at the end (0: never);
//! - the guards: a loss that is not finite stops the run at once; weights that are not finite,
//!   or samples that are not finite, stop it before the checkpoint of that step is written, so
//!   the last checkpoint written is always a good one;
//! - resuming ([`Run::open`], [`Resumable::resume`]): the run's own settings, a changed setting
//!   only with consent, continued bit for bit;
//! - stopping: [`StopHandle::stop`] from another thread, or (with `catch_signals`) SIGINT and
//!   SIGTERM, save a checkpoint at the end of the current step and end the run
//!   ([`RunEnd::Stopped`]); a second signal exits the process at once with 128 + its number;
//! - progress: [`Event`]s to a callback;
//! - several ranks ([`super::distributed`]): rank 0's run joins the job ([`Run::join_ranks`]), the
//!   other ranks run the same loop writing nothing ([`Run::follow`]); every rank takes the same
//!   steps, reads the loss at the same steps and stops, fails or finishes at the same step.
#![warn(missing_docs)]

use super::{open_checkpoint, StartingWeights, TrainConfig, Trainer};
use crate::checkpoint::Checkpoint;
use crate::data::{DataSpec, Dataset};
use crate::error::{Error, Result};
use crate::limits::Budget;
use crate::output::{write_atomically, write_samples, SamplePicture};
use crate::plot::{loss_curve_png, LossPoint};
use crate::rundir::RunLock;
use crate::sample::{check_sample_count, cycle_labels, sample, SampleOptions};
use crate::Gpu;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The run's configuration file in its directory.
pub const CONFIG_FILE: &str = "config.json";
/// The run's checkpoint file in its directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The final sample grid in the run's directory (with `samples.npy` and `labels.npy`).
pub const SAMPLES_FILE: &str = "samples.png";
/// The run's metrics in its directory.
pub const METRICS_FILE: &str = "metrics.json";
/// The run's loss curve in its directory ([`crate::plot::loss_curve_png`]), written with
/// [`METRICS_FILE`] when the run finishes, if at least two losses were logged.
pub const LOSS_CURVE_FILE: &str = "loss.png";

/// How a run reports and saves.
#[derive(Clone, Debug, PartialEq)]
pub struct RunOptions {
    /// Read the loss (and check it is finite) every N steps; 0: only at checkpoints and at the
    /// end.
    pub log_every: u64,
    /// Write a checkpoint every N steps (and at the end); 0: only at the end and when stopped.
    pub checkpoint_every: u64,
    /// Write a sample grid every N steps (and at the end); 0: only the final one.
    pub sample_every: u64,
    /// Samples in each grid; `None`: 100 images or 5000 points.
    pub grid_samples: Option<usize>,
    /// Catch SIGINT and SIGTERM while the run lives (see the module's notes). Off by default: a
    /// library does not take a process's signals unless asked.
    pub catch_signals: bool,
}

impl Default for RunOptions {
    /// The command line's defaults: the loss every 50 steps, a checkpoint every 500, a grid
    /// every 1000, signals left alone.
    fn default() -> Self {
        RunOptions {
            log_every: 50,
            checkpoint_every: 500,
            sample_every: 1000,
            grid_samples: None,
            catch_signals: false,
        }
    }
}

impl RunOptions {
    fn grid_samples(&self, config: &TrainConfig) -> usize {
        self.grid_samples
            .unwrap_or(if config.model.shape.len() == 3 {
                100
            } else {
                5000
            })
    }
}

/// Whether `dir` holds a run (a configuration or a checkpoint).
pub fn holds_run(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).exists() || dir.join(CHECKPOINT_FILE).exists()
}

/// Refuse to start a new run in `dir` if it holds one, unless `overwrite`. Cheap: a program
/// can call it before loading anything ([`Run::create`] checks again under the lock).
pub fn check_new(dir: &Path, overwrite: bool) -> Result<()> {
    if holds_run(dir) && !overwrite {
        return Err(Error::Config(format!(
            "{} already holds a run; pass --resume to continue it, --overwrite to replace it, or --out DIR for a new one",
            dir.display()
        )));
    }
    Ok(())
}

/// A setting that differs from the run's own when resuming, named by its command-line flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The flag (`--lr`, `--steps`, `--pred`, ...).
    pub flag: String,
    /// The run's value (as JSON text).
    pub old: String,
    /// The new value.
    pub new: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.flag, self.old, self.new)
    }
}

/// The settings that differ between two configurations.
pub fn changes(old: &TrainConfig, new: &TrainConfig) -> Vec<Change> {
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
    let after = flatten(new);
    // A setting at its default may be absent from the JSON (`f16`, `preconditioning`): one
    // side having it is a change too, shown as "unset" on the other.
    let value = |side: &[(String, String)], k: &str| {
        side.iter()
            .find(|(sk, _)| sk == k)
            .map_or_else(|| "unset".to_string(), |(_, v)| v.clone())
    };
    let mut keys: Vec<&String> = after.iter().map(|(k, _)| k).collect();
    keys.extend(
        before
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !after.iter().any(|(a, _)| a == *k)),
    );
    keys.into_iter()
        .filter_map(|k| {
            let (old, new) = (value(&before, k), value(&after, k));
            (old != new).then(|| Change {
                flag: flag(k),
                old,
                new,
            })
        })
        .collect()
}

/// Asks a run to stop at the end of its current step, after saving a checkpoint. Cheap to
/// clone and to send to another thread.
#[derive(Clone, Debug, Default)]
pub struct StopHandle(Arc<AtomicUsize>);

/// The stop flag's value for a stop that is not a signal.
const STOP_REQUESTED: usize = usize::MAX;

impl StopHandle {
    /// Ask the run to stop.
    pub fn stop(&self) {
        let _ = self
            .0
            .compare_exchange(0, STOP_REQUESTED, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Whether a stop was asked for, and by which signal (`Some(None)`: by [`StopHandle::stop`]).
    pub fn requested(&self) -> Option<Option<i32>> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            STOP_REQUESTED => Some(None),
            signal => Some(Some(signal as i32)),
        }
    }
}

/// Progress, as a run reports it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Event<'a> {
    /// A step was taken (submitted; nothing was read back).
    Step {
        /// Steps taken.
        step: u64,
        /// Steps in all.
        steps: u64,
    },
    /// The loss was read.
    Loss {
        /// The step it is from.
        step: u64,
        /// The step's mean loss.
        loss: f32,
        /// An exponential moving average of the losses read (weight 0.1 on the newest).
        smoothed: f32,
    },
    /// A sample grid was written (with `samples.npy` and `labels.npy` for the final one).
    Samples {
        /// The step it is from.
        step: u64,
        /// The PNG.
        path: &'a Path,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// The step it is from.
        step: u64,
        /// The file.
        path: &'a Path,
    },
}

/// What a finished run did.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// The step the run ended at.
    pub steps: u64,
    /// Steps taken by this process (fewer than `steps` when resumed).
    pub steps_taken: u64,
    /// Seconds the loop took.
    pub seconds: f64,
    /// `steps_taken / seconds`.
    pub steps_per_second: f64,
    /// The final sample grid.
    pub samples: PathBuf,
    /// The final checkpoint.
    pub checkpoint: PathBuf,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RunEnd {
    /// It trained every step.
    Finished(Summary),
    /// It was asked to stop and saved a checkpoint first.
    Stopped {
        /// The signal that stopped it (SIGINT 2, SIGTERM 15), or `None` for
        /// [`StopHandle::stop`].
        signal: Option<i32>,
        /// The step it stopped at (the checkpoint's).
        step: u64,
        /// The checkpoint it saved.
        checkpoint: PathBuf,
    },
}

/// A training run that owns its directory (it holds the lock until dropped), or, on a rank other
/// than 0 of a data-parallel job ([`Run::follow`]), the same loop writing nothing.
pub struct Run {
    trainer: Trainer,
    dir: PathBuf,
    opts: RunOptions,
    /// `None` on a rank that writes nothing.
    _lock: Option<RunLock>,
    stop: StopHandle,
    signals: Vec<signal_hook::SigId>,
    last_saved: Option<u64>,
    changes: Vec<Change>,
    grid_n: usize,
}

impl Run {
    /// Start a new run of `config` in `dir` (created if need be), on `data` ([`Run::run`]), or
    /// without a data set on the batches the program brings ([`Run::run_on`]). Refused, before
    /// anything is written, when `dir` holds a run (unless `overwrite`), when another writer
    /// holds it, or when the configuration, the data or the sample grids do not fit the device.
    /// Writes `config.json`.
    pub fn create(
        gpu: &Gpu,
        dir: &Path,
        config: TrainConfig,
        data: Option<&Dataset>,
        overwrite: bool,
        opts: RunOptions,
    ) -> Result<Run> {
        Run::create_with(gpu, dir, config, overwrite, opts, |config| match data {
            Some(data) => Trainer::new(gpu, config, data),
            None => Trainer::without_data(gpu, config),
        })
    }

    /// [`Run::create`] on `data` for a model whose weights start from `start` with fresh
    /// optimiser state: the run of a reflow or a distillation ([`crate::reflow`]).
    pub fn create_from_weights(
        gpu: &Gpu,
        dir: &Path,
        config: TrainConfig,
        data: &Dataset,
        start: StartingWeights,
        overwrite: bool,
        opts: RunOptions,
    ) -> Result<Run> {
        Run::create_with(gpu, dir, config, overwrite, opts, |config| {
            Trainer::from_weights(gpu, config, data, start)
        })
    }

    fn create_with(
        gpu: &Gpu,
        dir: &Path,
        config: TrainConfig,
        overwrite: bool,
        opts: RunOptions,
        make: impl FnOnce(TrainConfig) -> Result<Trainer>,
    ) -> Result<Run> {
        check_new(dir, overwrite)?;
        let budget = Budget::of(gpu);
        config.check_fits(&budget)?;
        let grid_n = opts.grid_samples(&config);
        check_sample_count(&config.model, grid_n, &budget)?;
        let trainer = make(config)?;
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Io(format!("cannot create {}: {e}", dir.display())))?;
        let lock = RunLock::acquire(dir)?;
        // Decided again under the lock: another run may have started here since the first look.
        check_new(dir, overwrite)?;
        Run::begin(trainer, dir, Some(lock), opts, Vec::new(), None, grid_n)
    }

    /// The run loop on rank `r > 0` of a data-parallel job, whose rank 0 owns the run directory:
    /// `trainer` has joined the job ([`Trainer::join_ranks`]) with rank 0's state; this run takes
    /// the same steps, reads the loss at the same steps and stops, fails or finishes at the same
    /// step as rank 0, and writes nothing. `dir` is rank 0's run directory (named in messages,
    /// so that every rank's say the same). Signals are caught as `opts` says (the ranks agree
    /// on a stop at each step).
    pub fn follow(trainer: Trainer, dir: &Path, opts: RunOptions) -> Result<Run> {
        if trainer.ranks().is_none_or(|r| r.is_root()) {
            return Err(Error::Config(
                "Run::follow is for a rank other than 0 of a data-parallel job: join the \
                 trainer to the job first (Trainer::join_ranks); rank 0 runs Run::create or \
                 Run::open"
                    .into(),
            ));
        }
        let grid_n = opts.grid_samples(&trainer.config);
        // Rank 0's checkpoint is at the step the ranks start from, if it is past 0 (a resume).
        let last_saved = (trainer.step > 0).then_some(trainer.step);
        Run::begin(trainer, dir, None, opts, Vec::new(), last_saved, grid_n)
    }

    /// Make this run rank 0 of a data-parallel job (every rank calls [`Trainer::join_ranks`] at
    /// the same point; the others then [`Run::follow`]): its state is broadcast to the other
    /// ranks, and its signals now set the stop the ranks agree over at each step. The error
    /// after the collective part (installing the signal handlers) is this rank's alone: agree
    /// on it ([`super::Ranks::agree`]).
    pub fn join_ranks(&mut self, ranks: super::Ranks) -> Result<()> {
        self.trainer.join_ranks(ranks.clone())?;
        self.stop = ranks.stop_handle();
        if self.opts.catch_signals {
            for id in self.signals.drain(..) {
                signal_hook::low_level::unregister(id);
            }
            self.signals = catch_signals(&self.stop)?;
        }
        Ok(())
    }

    /// Whether this process writes the run directory (one process, or rank 0 of a job).
    fn writes(&self) -> bool {
        self._lock.is_some()
    }

    /// Open the run in `dir` to resume it: the directory is locked before its checkpoint is
    /// read (so no other writer moves it on meanwhile), and the checkpoint is checked and sized
    /// against `gpu` ([`open_checkpoint`]).
    pub fn open(gpu: &Gpu, dir: &Path) -> Result<Resumable> {
        if !dir.is_dir() {
            return Err(Error::Config(format!(
                "--resume: there is no run directory {}",
                dir.display()
            )));
        }
        let lock = RunLock::acquire(dir)?;
        let path = dir.join(CHECKPOINT_FILE);
        if !path.exists() {
            return Err(Error::Config(format!(
                "--resume: there is no checkpoint at {}",
                path.display()
            )));
        }
        let (checkpoint, config) = open_checkpoint(&path, &Budget::of(gpu))?;
        Ok(Resumable {
            dir: dir.to_path_buf(),
            lock,
            checkpoint,
            config,
        })
    }

    fn begin(
        trainer: Trainer,
        dir: &Path,
        lock: Option<RunLock>,
        opts: RunOptions,
        changes: Vec<Change>,
        last_saved: Option<u64>,
        grid_n: usize,
    ) -> Result<Run> {
        // On a rank of a job the stop the ranks agree over is the one the signals set.
        let stop = trainer
            .ranks()
            .map_or_else(StopHandle::default, |r| r.stop_handle());
        let writes = lock.is_some();
        let mut run = Run {
            trainer,
            dir: dir.to_path_buf(),
            opts,
            _lock: lock,
            stop,
            signals: Vec::new(),
            last_saved,
            changes,
            grid_n,
        };
        // Installed before config.json appears, so a signal from then on saves the run.
        if run.opts.catch_signals {
            run.signals = catch_signals(&run.stop)?;
        }
        if writes {
            let config = run.trainer.config.to_json();
            write_atomically(&[(&dir.join(CONFIG_FILE), config.as_bytes())])?;
        }
        Ok(run)
    }

    /// The model in training.
    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }
    /// The run's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The run's checkpoint file.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.dir.join(CHECKPOINT_FILE)
    }
    /// The settings that differ from the resumed run's own (empty for a new run).
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }
    /// A handle to stop the run from elsewhere (another thread, a UI).
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Train on the run's data set to the configured number of steps (or until stopped),
    /// reporting progress to `on_event`. On an error the last checkpoint written stays, and the
    /// error says which.
    pub fn run(&mut self, on_event: impl FnMut(Event)) -> Result<RunEnd> {
        self.run_loop(&mut |tr: &mut Trainer| tr.step(), on_event)
    }

    /// [`Run::run`] on the batches the program brings: before each step `batch(step)` returns
    /// the examples `[B, C, H, W]` (or `[B, D]`) and their labels, as [`Trainer::step_on`] takes
    /// them, for the step about to be taken (0-based, continuing after a resume).
    pub fn run_on(
        &mut self,
        mut batch: impl FnMut(u64) -> Result<(crate::Tensor, Option<Vec<u32>>)>,
        on_event: impl FnMut(Event),
    ) -> Result<RunEnd> {
        self.run_loop(
            &mut |tr: &mut Trainer| match batch(tr.step) {
                Ok((examples, labels)) => tr.step_on(&examples, labels.as_deref()),
                Err(e) => tr.step_failed(e),
            },
            on_event,
        )
    }

    /// The loop. On one rank of a job every rank runs it with the same steps, reads and
    /// decisions: the stop is the one the ranks agreed at the step's reduction, an error met
    /// by one rank outside a reduction (rank 0 writing) is carried to the next reduction or to
    /// the final [`Ranks::settle`](super::Ranks::settle), and an error the ranks agreed on
    /// ends the loop on every rank.
    fn run_loop(
        &mut self,
        take_step: &mut dyn FnMut(&mut Trainer) -> Result<()>,
        mut on_event: impl FnMut(Event),
    ) -> Result<RunEnd> {
        let ranks = self.trainer.ranks().cloned();
        let start = Instant::now();
        let first = self.trainer.step;
        let mut logged = Logged::default();
        let mut ended = None;
        while self.trainer.step < self.trainer.config.steps {
            take_step(&mut self.trainer)?;
            let stop = match &ranks {
                Some(r) => r.agreed_stop(),
                None => self.stop.requested(),
            };
            match self.after_step(stop, &mut logged, &mut on_event) {
                Ok(None) => {}
                Ok(Some(end)) => {
                    ended = Some(end);
                    break;
                }
                Err(e) => match &ranks {
                    Some(r) if !r.failed() => r.carry(e),
                    _ => return Err(e),
                },
            }
        }
        let end = match ended {
            Some(end) => Ok(end),
            None => self.finish(start, first, logged),
        };
        let Some(r) = &ranks else { return end };
        match end {
            Ok(end) => r.settle().map(|()| end),
            Err(e) => {
                r.carry(e);
                Err(r.settle().err().unwrap_or_else(|| {
                    Error::Ranks("a carried error passed the final agreement".into())
                }))
            }
        }
    }

    /// What a run does after step `s` is taken (`stop`: whether it was asked to stop, and
    /// how): read the loss when due, draw a sample grid, write a checkpoint (rank 0 alone, on
    /// a job), report; `Some` when the run stops here.
    fn after_step(
        &mut self,
        stop: Option<Option<i32>>,
        logged: &mut Logged,
        on_event: &mut impl FnMut(Event),
    ) -> Result<Option<RunEnd>> {
        let ckpt_path = self.checkpoint_path();
        let final_png = self.dir.join(SAMPLES_FILE);
        let last_saved = self.last_saved;
        let kept = || match last_saved {
            Some(step) => format!(
                "the last checkpoint written, from step {step}, is kept at {}",
                ckpt_path.display()
            ),
            None => "no checkpoint was written".into(),
        };
        let (log_every, checkpoint_every, sample_every) = (
            self.opts.log_every,
            self.opts.checkpoint_every,
            self.opts.sample_every,
        );
        let writes = self.writes();
        let tr = &self.trainer;
        let s = tr.step;
        let end = s == tr.config.steps;
        let save_now = due(s, checkpoint_every) || end || stop.is_some();
        if due(s, log_every) || save_now {
            let (loss, per, t) = tr.read_logged()?;
            if !loss.is_finite() {
                return Err(Error::NonFinite(format!(
                    "the loss became {loss} at step {s}; stopped without saving ({}). Try a lower --lr (this run: {})",
                    kept(),
                    tr.config.lr
                )));
            }
            let sm = logged.smoothed.map_or(loss, |v| 0.9 * v + 0.1 * loss);
            logged.smoothed = Some(sm);
            on_event(Event::Loss {
                step: s,
                loss,
                smoothed: sm,
            });
            let bins = t_bins(&per, &t);
            logged.losses.push(LossPoint {
                step: s,
                loss: f64::from(loss),
                t_bins: bins.iter().map(|b| b.map(f64::from)).collect(),
            });
            logged
                .log
                .push(serde_json::json!({ "step": s, "loss": loss, "t_bins": bins }));
        }
        // The final grid is drawn before the final checkpoint: a model whose samples are not
        // finite does not replace the last checkpoint.
        let grid = if !writes {
            None
        } else if end {
            Some(final_png.clone())
        } else if due(s, sample_every) && stop.is_none() {
            Some(self.dir.join(format!("samples_{s:06}.png")))
        } else {
            None
        };
        if let Some(png) = grid {
            if let Err(why) = sample_grid(&self.trainer, &png, self.grid_n, 0)? {
                return Err(Error::NonFinite(format!(
                    "{why}, though the loss is finite: the model diverges when sampled. Stopped \
                     without writing them or a checkpoint ({}). Try a lower --lr (this run: {})",
                    kept(),
                    self.trainer.config.lr
                )));
            }
            on_event(Event::Samples {
                step: s,
                path: &png,
            });
            if end && due(s, sample_every) {
                let step_png = self.dir.join(format!("samples_{s:06}.png"));
                let bytes = std::fs::read(&final_png)
                    .map_err(|e| Error::Io(format!("cannot read {}: {e}", final_png.display())))?;
                write_atomically(&[(&step_png, &bytes)])?;
            }
        }
        if save_now && writes {
            if let Err(e) = self.trainer.check_finite() {
                return Err(Error::NonFinite(format!(
                    "{}; stopped without saving ({}). Try a lower --lr (this run: {})",
                    e.to_string().trim_start_matches("not finite: "),
                    kept(),
                    self.trainer.config.lr
                )));
            }
            self.trainer.checkpoint()?.save(&ckpt_path)?;
            on_event(Event::Checkpoint {
                step: s,
                path: &ckpt_path,
            });
        }
        if save_now {
            // On a rank that writes nothing, rank 0 saved (had it failed, the ranks would stop
            // at the next reduction), so that the ranks' messages name the same checkpoint.
            self.last_saved = Some(s);
        }
        on_event(Event::Step {
            step: s,
            steps: self.trainer.config.steps,
        });
        Ok(match (stop, end) {
            (Some(signal), false) => Some(RunEnd::Stopped {
                signal,
                step: s,
                checkpoint: ckpt_path,
            }),
            _ => None,
        })
    }

    /// The end of a run that trained every step: `metrics.json` (by the process that writes),
    /// and the summary.
    fn finish(&self, start: Instant, first: u64, logged: Logged) -> Result<RunEnd> {
        let secs = start.elapsed().as_secs_f64();
        let taken = self.trainer.step - first;
        let steps = taken as f64;
        if self.writes() {
            let mpath = self.dir.join(METRICS_FILE);
            // The losses of earlier segments of a resumed run (from the metrics.json about to be
            // replaced) are kept as `earlier_log`, so the loss curve covers the whole run.
            let earlier = earlier_losses(&mpath, first);
            let ranks = self.trainer.ranks().map_or(1, |r| r.size());
            let mut metrics = serde_json::json!({
                "steps": self.trainer.step,
                "seconds": secs,
                "steps_per_second": steps / secs,
                "samples_per_second": steps * self.trainer.config.batch as f64 / secs,
                "adapter": self.trainer.gpu().adapter_info().name,
                "ranks": ranks,
                "log": logged.log,
            });
            if !earlier.is_empty() {
                let entries: Vec<serde_json::Value> = earlier
                    .iter()
                    .map(|p| serde_json::json!({ "step": p.step, "loss": p.loss, "t_bins": p.t_bins }))
                    .collect();
                metrics["earlier_log"] = entries.into();
            }
            let text = serde_json::to_string_pretty(&metrics).expect("metrics serialise");
            let mut curve = earlier;
            curve.extend(logged.losses);
            let config = &self.trainer.config;
            let title = format!("{}, {}: training loss", config.data, config.model.kind);
            let curve_path = self.dir.join(LOSS_CURVE_FILE);
            // Fewer than two losses make no curve; then only metrics.json is written.
            match (curve.len() >= 2)
                .then(|| loss_curve_png(&curve, &title, 900, 540))
                .transpose()
            {
                Ok(Some(png)) => {
                    write_atomically(&[(&mpath, text.as_bytes()), (&curve_path, &png)])?;
                }
                Ok(None) => write_atomically(&[(&mpath, text.as_bytes())])?,
                Err(e) => {
                    // The metrics are kept even when their picture cannot be drawn.
                    write_atomically(&[(&mpath, text.as_bytes())])?;
                    return Err(e);
                }
            }
        }
        Ok(RunEnd::Finished(Summary {
            steps: self.trainer.step,
            steps_taken: taken,
            seconds: secs,
            steps_per_second: steps / secs,
            samples: self.dir.join(SAMPLES_FILE),
            checkpoint: self.checkpoint_path(),
        }))
    }
}

/// The losses a run has read: their moving average, the metrics log and the loss curve's points.
#[derive(Default)]
struct Logged {
    smoothed: Option<f32>,
    log: Vec<serde_json::Value>,
    losses: Vec<LossPoint>,
}
impl Drop for Run {
    fn drop(&mut self) {
        for id in self.signals.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// A run opened to be resumed ([`Run::open`]): locked, its checkpoint read and checked.
pub struct Resumable {
    dir: PathBuf,
    lock: RunLock,
    checkpoint: Checkpoint,
    config: TrainConfig,
}

impl Resumable {
    /// The run's own configuration (from its checkpoint).
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The step its checkpoint is at.
    pub fn step(&self) -> u64 {
        self.checkpoint.step
    }

    /// The run's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Continue the run with `config` on `data` (or on the program's batches, `None`): refused,
    /// before anything is written, when the model or the data differ from the run's, when
    /// `config.steps` is not beyond the checkpoint's step, or when another setting differs and
    /// `allow_changes` is false (a larger `steps` needs no consent). The changes are in
    /// [`Run::changes`] and `config.json`.
    pub fn resume(
        self,
        gpu: &Gpu,
        config: TrainConfig,
        data: Option<&Dataset>,
        allow_changes: bool,
        opts: RunOptions,
    ) -> Result<Run> {
        let budget = Budget::of(gpu);
        config.check_fits(&budget)?;
        let grid_n = opts.grid_samples(&config);
        check_sample_count(&config.model, grid_n, &budget)?;
        let (saved, ck) = (&self.config, &self.checkpoint);
        let path = self.dir.join(CHECKPOINT_FILE);
        if saved.model != config.model || saved.data != config.data {
            return Err(Error::Config(format!(
                "--resume: {} was trained with data {} and model {:?}; these flags give {} and {:?}",
                path.display(),
                saved.data,
                saved.model,
                config.data,
                config.model
            )));
        }
        if config.steps <= ck.step {
            return Err(Error::Config(format!(
                "--steps {}: the run in {} is already at step {}; give a larger --steps to continue it",
                config.steps,
                self.dir.display(),
                ck.step
            )));
        }
        let changes = changes(saved, &config);
        let consent_needed: Vec<String> = changes
            .iter()
            .filter(|c| !(c.flag == "--steps" && config.steps > saved.steps))
            .map(|c| c.to_string())
            .collect();
        if !consent_needed.is_empty() && !allow_changes {
            return Err(Error::Config(format!(
                "--resume: these flags change the run's settings: {}; pass --allow-changes to \
                 continue with them (they are recorded in config.json), or leave them out to keep \
                 the run's own",
                consent_needed.join(", ")
            )));
        }
        if let Some(data) = data {
            super::check_data(&config, data)?;
        }
        let mut trainer = Trainer::loaded(gpu, config, ck, &path)?;
        if let Some(data) = data {
            trainer.attach(gpu, data)?;
        }
        let last = Some(ck.step);
        Run::begin(
            trainer,
            &self.dir,
            Some(self.lock),
            opts,
            changes,
            last,
            grid_n,
        )
    }
}

/// Install the handlers of SIGINT and SIGTERM: the first sets `stop` to the signal's number;
/// a second one exits at once with 128 + its number.
fn catch_signals(stop: &StopHandle) -> Result<Vec<signal_hook::SigId>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use signal_hook::flag;
    let armed = Arc::new(AtomicBool::new(false));
    let failed = |e: std::io::Error| Error::Io(format!("cannot install a signal handler: {e}"));
    let mut ids = Vec::new();
    for signal in [SIGINT, SIGTERM] {
        // In this order: the exit is armed only by an earlier signal.
        ids.push(
            flag::register_conditional_shutdown(signal, 128 + signal, armed.clone())
                .map_err(failed)?,
        );
        ids.push(flag::register(signal, armed.clone()).map_err(failed)?);
        ids.push(flag::register_usize(signal, stop.0.clone(), signal as usize).map_err(failed)?);
    }
    Ok(ids)
}

/// Whether a periodic action with period `every` (0: never) is due at step `s`.
fn due(s: u64, every: u64) -> bool {
    every > 0 && s.is_multiple_of(every)
}

/// Draw a run's sample grid into `png` (with samples.npy and labels.npy beside it): `n`
/// samples of the EMA weights, Euler steps and guidance as the configuration suggests
/// ([`TrainConfig::default_sample_steps`], [`TrainConfig::default_guidance`]), labels
/// `i % classes`. Samples that are not finite are refused (as the sentence in the
/// inner `Err`) and nothing is written.
fn sample_grid(
    tr: &Trainer,
    png: &Path,
    n: usize,
    seed: u64,
) -> Result<std::result::Result<(), String>> {
    let shape = tr.config.model.shape.clone();
    let dim: usize = shape.iter().product();
    let classes = tr.config.model.classes;
    let labels = cycle_labels(classes, n);
    let opts = SampleOptions {
        steps: tr.config.default_sample_steps(),
        cfg: tr.config.default_guidance(),
        seed,
        clip_x0: tr.config.default_clip_x0(),
        ..SampleOptions::new(labels.clone())
    };
    let params = tr.ema_params()?;
    let z = sample(&tr.model, &params, &tr.flow, dim, classes as u32, &opts)?.to_vec()?;
    let bad = z.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        return Ok(Err(format!(
            "{bad} of the {} values of the {n} samples drawn at step {} are NaN or infinite",
            z.len(),
            tr.step
        )));
    }
    let mut title = format!(
        "{}, {}, step {}: {n} samples, {} Euler steps",
        tr.config.data, tr.config.model.kind, tr.step, opts.steps
    );
    if opts.cfg != 1.0 {
        title += &format!(", guidance {}", opts.cfg);
    }
    // A toy's own points, drawn faint behind the samples, show what they should look like.
    let target = match &tr.config.data {
        DataSpec::Toy(toy) if shape == [2] => Some(toy.sample(TARGET_POINTS, 1)?.x),
        _ => None,
    };
    let picture = SamplePicture {
        title: &title,
        target: target.as_deref(),
    };
    write_samples(png, &shape, &z, &labels, &picture).map(Ok)
}

/// Points of a toy data set drawn behind a run's 2-D samples.
const TARGET_POINTS: usize = 5000;

/// The losses earlier segments of this run logged in the `metrics.json` at `path` (its
/// `earlier_log`, then its `log`), up to step `before` (where this segment starts); none when
/// there is no such file or it cannot be read, since the curve is a convenience and a gap in
/// it harms nothing.
fn earlier_losses(path: &Path, before: u64) -> Vec<LossPoint> {
    let Some(metrics) = std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
    else {
        return Vec::new();
    };
    let entries = |key: &str| metrics[key].as_array().map_or(&[][..], Vec::as_slice);
    entries("earlier_log")
        .iter()
        .chain(entries("log"))
        .map_while(|e| {
            let bins = e["t_bins"].as_array()?;
            Some(LossPoint {
                step: e["step"].as_u64()?,
                loss: e["loss"].as_f64()?,
                t_bins: bins.iter().map(serde_json::Value::as_f64).collect(),
            })
        })
        .filter(|p| p.step <= before)
        .collect()
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
