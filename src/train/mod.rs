//! Training. A [`Trainer`] holds a model, its optimiser and (optionally) its data on the GPU;
//! one step is one submission — a batch gathered on the GPU ([`Trainer::step`]) or brought by
//! the host ([`Trainer::step_on`]), noised by the flow kernel, the network on the tape, the
//! fused weighted loss, backward, AdamW with clipping and EMA — with nothing read back; the loss
//! stays on the GPU until someone reads it.
//!
//! A configuration ([`TrainConfig`], typed, in [`config`]) is validated and sized against the
//! device before a [`Trainer`] allocates anything, and a checkpoint is opened for use by
//! [`open_checkpoint`], which checks its configuration and tensors the same way.
//! [`Trainer::check_finite`] is the guard run before a checkpoint is written. The run loop of
//! the command line (run directory and its lock, checkpoint cadence, sample grids, NaN stop,
//! resume, signals, progress) is [`Run`], in [`mod@run`]; [`fit()`] is the plain supervised loop the
//! evaluation's classifier is trained with. Data-parallel training over several processes
//! ([`Trainer::join_ranks`], [`Run::join_ranks`], [`Run::follow`]) is in [`distributed`]: there
//! a step is two submissions with the gradient averaged across the ranks between them.
#![warn(missing_docs)]

pub mod config;
pub mod distributed;
pub mod fit;
pub mod objective;
pub mod run;

pub use config::{Footprint, ModelKind, TrainConfig, MAX_BATCH};
pub use distributed::{Collective, Ranks};
pub use fit::{fit, FitOptions};
pub use objective::{FlowConfig, Objective};
pub use run::{Change, Event, Resumable, Run, RunEnd, RunOptions, StopHandle, Summary};

use crate::autograd::Tape;
use crate::checkpoint::{join_flat, split_flat, Checkpoint};
use crate::data::{Dataset, GpuDataset};
use crate::error::{Error, Result};
use crate::limits::Budget;
use crate::nn::Model;
use crate::optim::AdamW;
use crate::params::{Params, ParamsBuilder};
use crate::tensor::{DType, Tensor};
use crate::Gpu;
use std::collections::HashMap;
use std::path::Path;

/// An MM-DiT checkpoint written before the last block's context stream became pre-only (SD3's
/// layout) carries that stream's output projection, MLP and four more adaLN chunks: drop them
/// (they reached no output) and keep the shift and scale rows, in the weights, their EMA and
/// the AdamW moments alike, so that the checkpoint loads as the same network.
fn upgrade_mmdit(ck: &mut Checkpoint, model: &crate::nn::ModelConfig) {
    use crate::nn::mmdit::{Mmdit, Upgrade};
    let names: Vec<String> = ck.params.keys().cloned().collect();
    for name in names {
        match Mmdit::upgrade(model, &name) {
            Upgrade::Keep => {}
            Upgrade::Drop => {
                ck.params.remove(&name);
                ck.ema.remove(&name);
                ck.adam_m.remove(&name);
                ck.adam_v.remove(&name);
            }
            Upgrade::FirstRows(rows) => {
                let Some((shape, values)) = ck.params.get_mut(&name) else {
                    continue;
                };
                if shape.first().is_none_or(|&r| r <= rows) {
                    continue; // already today's layout
                }
                let per_row: usize = shape[1..].iter().product();
                let keep = rows * per_row;
                shape[0] = rows;
                values.truncate(keep);
                for map in [&mut ck.ema, &mut ck.adam_m, &mut ck.adam_v] {
                    if let Some(v) = map.get_mut(&name) {
                        v.truncate(keep);
                    }
                }
            }
        }
    }
}

/// Read a checkpoint for use: the file checked ([`Checkpoint::load_within`], bounded by the host
/// budget), its configuration parsed, validated and sized against `budget`, and its tensors
/// matched by name and shape to the model that configuration describes — all before anything
/// the size of the model is allocated.
pub fn open_checkpoint(path: &Path, budget: &Budget) -> Result<(Checkpoint, TrainConfig)> {
    let mut ck = Checkpoint::load_within(path, budget.host_bytes / 2)?;
    let config = TrainConfig::from_json(&ck.config).map_err(|e| {
        Error::Config(format!(
            "{}: the checkpoint's configuration: {}",
            path.display(),
            e.to_string().trim_start_matches("invalid setting: ")
        ))
    })?;
    let at = |e: Error| match e {
        Error::Config(m) => Error::Config(format!(
            "{}: the checkpoint's configuration is not usable: {m}",
            path.display()
        )),
        Error::TooLarge(m) => Error::TooLarge(format!(
            "{}: the model in the checkpoint's configuration does not fit: {m}",
            path.display()
        )),
        other => other,
    };
    config.check_fits(budget).map_err(at)?;
    if config.model.kind == "mmdit" {
        upgrade_mmdit(&mut ck, &config.model);
    }
    let layout = config.model.layout().map_err(at)?;
    let mismatch = |why: String| {
        Error::Checkpoint(format!(
            "{}: the checkpoint's tensors do not match the model its configuration describes: {why}",
            path.display()
        ))
    };
    for spec in layout.specs() {
        match ck.params.get(&spec.name) {
            Some((shape, _)) if *shape == spec.shape => {}
            Some((shape, _)) => {
                return Err(mismatch(format!(
                    "{} has shape {shape:?}, the model needs {:?}",
                    spec.name, spec.shape
                )))
            }
            None => return Err(mismatch(format!("there is no {}", spec.name))),
        }
    }
    let unknown = |names: Vec<&String>| {
        names
            .into_iter()
            .find(|n| !layout.specs().iter().any(|s| &s.name == *n))
            .cloned()
    };
    if let Some(extra) = unknown(ck.params.keys().collect()) {
        return Err(mismatch(format!("{extra} is not in the model")));
    }
    for (role, values) in [
        ("ema", &ck.ema),
        ("adam.m", &ck.adam_m),
        ("adam.v", &ck.adam_v),
    ] {
        for spec in layout.specs() {
            let want: usize = spec.shape.iter().product();
            match values.get(&spec.name) {
                Some(v) if v.len() == want => {}
                Some(v) => {
                    return Err(mismatch(format!(
                        "{role}.{} has {} values, the model needs {want}",
                        spec.name,
                        v.len()
                    )))
                }
                None => return Err(mismatch(format!("there is no {role}.{}", spec.name))),
            }
        }
        if let Some(extra) = unknown(values.keys().collect()) {
            return Err(mismatch(format!("{role}.{extra} is not in the model")));
        }
    }
    Ok((ck, config))
}

/// The model of `config` with its parameters holding the flat values of `weights` (per-name
/// values, `what` in errors about the file at `path`): uploaded once, nothing initialised at
/// random. With a gradient buffer for training (`train`), without one for inference.
pub(crate) fn model_for_loading(
    gpu: &Gpu,
    config: &TrainConfig,
    weights: &HashMap<String, Vec<f32>>,
    what: &str,
    path: &Path,
    train: bool,
) -> Result<(Model, Params)> {
    let mut builder = ParamsBuilder::new();
    let model = Model::build(&config.model, &mut builder)?;
    let flat = join_flat(&builder, weights, what, path)?;
    let params = if train {
        builder.build_with_values(gpu, &flat)?
    } else {
        builder.build_for_inference(gpu, &flat)?
    };
    Ok((model, params))
}

/// A checkpoint's raw weights by name.
pub(crate) fn raw_weights(ck: &Checkpoint) -> HashMap<String, Vec<f32>> {
    ck.params
        .iter()
        .map(|(name, (_, v))| (name.clone(), v.clone()))
        .collect()
}

/// Weights a new run starts from ([`Trainer::from_weights`]): by parameter name, as a checkpoint
/// holds them, and the checkpoint they came from (named in errors).
#[derive(Clone, Copy, Debug)]
pub struct StartingWeights<'a> {
    /// The values by parameter name.
    pub weights: &'a HashMap<String, Vec<f32>>,
    /// Where they came from.
    pub source: &'a Path,
}

/// A model in training, with its data on the GPU (if it has a data set of its own).
pub struct Trainer {
    /// The run's configuration.
    pub config: TrainConfig,
    /// The network.
    pub model: Model,
    /// Its weights and gradients (one flat buffer each).
    pub params: Params,
    /// AdamW's state: moments and the EMA of the weights.
    pub opt: AdamW,
    /// The objective: its configuration and kernels (forward process, weighted loss).
    pub flow: Objective,
    data: Option<GpuDataset>,
    /// Steps taken.
    pub step: u64,
    /// The last step's mean loss `[1]`, per-sample losses and times `[B]`, on the GPU (this
    /// rank's slice on one rank of a job).
    pub last: Option<(Tensor, Tensor, Tensor)>,
    /// The data-parallel job this trainer is one rank of ([`Trainer::join_ranks`]).
    ranks: Option<Ranks>,
}

impl Trainer {
    /// A fresh model for `config` on `data` (uploaded once). The configuration is validated and
    /// sized against the device first, and the data checked against it.
    pub fn new(gpu: &Gpu, config: TrainConfig, data: &Dataset) -> Result<Trainer> {
        config.check_fits(&Budget::of(gpu))?;
        check_data(&config, data)?;
        let mut tr = Trainer::fresh(gpu, config)?;
        tr.attach(gpu, data)?;
        Ok(tr)
    }

    /// A fresh model for `config` with no data set of its own: it trains on the batches the
    /// program brings ([`Trainer::step_on`]).
    pub fn without_data(gpu: &Gpu, config: TrainConfig) -> Result<Trainer> {
        config.check_fits(&Budget::of(gpu))?;
        Trainer::fresh(gpu, config)
    }

    fn fresh(gpu: &Gpu, config: TrainConfig) -> Result<Trainer> {
        let flow = Objective::new(gpu, config.flow())?;
        let mut builder = ParamsBuilder::new();
        let model = Model::build(&config.model, &mut builder)?;
        let params = builder.build(gpu, config.seed)?;
        Trainer::assemble(config, model, params, flow)
    }

    pub(crate) fn assemble(
        config: TrainConfig,
        model: Model,
        mut params: Params,
        flow: Objective,
    ) -> Result<Trainer> {
        if config.f16 {
            params.store_f16()?;
        }
        let opt = AdamW::new(&params, config.adamw())?;
        Ok(Trainer {
            config,
            model,
            params,
            opt,
            flow,
            data: None,
            step: 0,
            last: None,
            ranks: None,
        })
    }

    /// A new run of `config` on `data` whose weights start from `start` (a checkpoint's
    /// weights by name), with fresh optimiser state and the EMA starting at them: a reflow or a
    /// distillation starts from the flow that made its pairs. The names and shapes must be those
    /// of the model `config` describes.
    pub fn from_weights(
        gpu: &Gpu,
        config: TrainConfig,
        data: &Dataset,
        start: StartingWeights,
    ) -> Result<Trainer> {
        config.check_fits(&Budget::of(gpu))?;
        check_data(&config, data)?;
        let flow = Objective::new(gpu, config.flow())?;
        let (model, params) =
            model_for_loading(gpu, &config, start.weights, "values", start.source, true)?;
        let mut tr = Trainer::assemble(config, model, params, flow)?;
        tr.attach(gpu, data)?;
        Ok(tr)
    }

    /// Continue the run of the checkpoint at `path` (weights, EMA, moments and step restored,
    /// nothing initialised at random), on `data` if given (it must match the configuration)
    /// or on the batches the program brings.
    pub fn from_checkpoint(gpu: &Gpu, path: &Path, data: Option<&Dataset>) -> Result<Trainer> {
        let (ck, config) = open_checkpoint(path, &Budget::of(gpu))?;
        if let Some(data) = data {
            check_data(&config, data)?;
        }
        let mut tr = Trainer::loaded(gpu, config, &ck, path)?;
        if let Some(data) = data {
            tr.attach(gpu, data)?;
        }
        Ok(tr)
    }

    /// The trainer of an opened checkpoint (`open_checkpoint`): the weights uploaded once into
    /// the model `config` describes, then the EMA, the moments and the step restored.
    pub(crate) fn loaded(
        gpu: &Gpu,
        config: TrainConfig,
        ck: &Checkpoint,
        path: &Path,
    ) -> Result<Trainer> {
        let flow = Objective::new(gpu, config.flow())?;
        let weights = raw_weights(ck);
        let (model, params) = model_for_loading(gpu, &config, &weights, "values", path, true)?;
        let mut tr = Trainer::assemble(config, model, params, flow)?;
        tr.check_names(ck, path)?;
        tr.restore_state(ck, path)?;
        Ok(tr)
    }

    /// Upload `data` (already checked against the configuration) as the trainer's own.
    pub(crate) fn attach(&mut self, gpu: &Gpu, data: &Dataset) -> Result<()> {
        let null = self.config.model.classes as u32;
        self.data = Some(GpuDataset::upload(gpu, data, null)?);
        Ok(())
    }

    /// The context the model lives on.
    pub fn gpu(&self) -> &Gpu {
        self.params.values().gpu()
    }

    /// Record one training step on a batch drawn from the trainer's data set and submit it
    /// (without waiting). One rank of a data-parallel job ([`Trainer::join_ranks`]) draws its
    /// slice of the global batch and waits for the other ranks' gradients.
    pub fn step(&mut self) -> Result<()> {
        let batch = match &self.data {
            None => Err(Error::Config(
                "this trainer has no data set of its own (made with Trainer::without_data): \
                 bring each batch with Trainer::step_on"
                    .into(),
            )),
            Some(data) => {
                let (seed, step) = (self.config.seed, self.step as u32);
                match &self.ranks {
                    None => data.batch(self.config.batch, seed, step),
                    Some(ranks) => ranks
                        .slice(self.config.batch)
                        .and_then(|(first, n)| data.batch_slice(n, first, seed, step)),
                }
            }
        };
        self.step_with(batch.map(|(x0, labels)| (x0, Some(labels))))
    }

    /// Whether the trainer's data set holds reflow pairs (each example with its own noise).
    pub fn trains_on_pairs(&self) -> bool {
        self.data.as_ref().is_some_and(GpuDataset::is_paired)
    }

    /// A step whose batch the program could not bring (`e`): the error, after — on one rank of
    /// a job — taking part in the step's reduction, so that every rank stops with it.
    pub(crate) fn step_failed(&mut self, e: Error) -> Result<()> {
        match self.ranks {
            None => Err(e),
            Some(_) => self.step_with(Err(e)),
        }
    }

    /// Record one training step on a batch the program brings and submit it (without waiting):
    /// `batch` `[B, C, H, W]` for images or `[B, D]` for points (f32, any `B` the device holds;
    /// `[B, C * H * W]` is taken too), and one label per example (`0..classes`, or `classes`
    /// itself for an example without a class), or `None` for unlabelled examples. Label dropout,
    /// the time and the noise are drawn as for [`Trainer::step`], from the run's seed and the
    /// step number. On one rank of a data-parallel job each rank brings its own slice, of one
    /// size on every rank, and rank r's samples are numbered from `r B` in the random streams.
    pub fn step_on(&mut self, batch: &Tensor, labels: Option<&[u32]>) -> Result<()> {
        let checked = self.check_batch(batch, labels);
        self.step_with(checked)
    }

    /// A program's batch and labels checked and made ready for [`Trainer::step_with`].
    fn check_batch(
        &self,
        batch: &Tensor,
        labels: Option<&[u32]>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let shape = &self.config.model.shape;
        let dim: usize = shape.iter().product();
        let b = batch.shape().first().copied().unwrap_or(0);
        let images = batch.shape().len() == shape.len() + 1 && batch.shape()[1..] == shape[..];
        let flat = batch.shape() == [b, dim];
        if batch.dtype() != DType::F32 || b == 0 || !(images || flat) {
            return Err(Error::Shape(format!(
                "step_on takes a batch of f32 examples [B, {}] with B >= 1, got {:?} {:?}",
                shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                batch.dtype(),
                batch.shape()
            )));
        }
        if b > MAX_BATCH {
            return Err(Error::Config(format!(
                "a batch of {b} examples: use at most {MAX_BATCH}"
            )));
        }
        Budget::of(self.gpu()).check_tensor(
            &format!("a batch of {b} examples: the model's largest activation"),
            self.config.model.activation_elems(b),
            "bring smaller batches",
        )?;
        let classes = self.config.model.classes;
        let labels = match labels {
            None => None,
            Some(l) => {
                if l.len() != b {
                    return Err(Error::Shape(format!(
                        "step_on: {} labels for a batch of {b} examples",
                        l.len()
                    )));
                }
                if let Some((i, &bad)) = l.iter().enumerate().find(|(_, &v)| v as usize > classes) {
                    return Err(Error::Data(format!(
                        "step_on: example {i} has label {bad}, but the model has {classes} \
                         classes (labels 0..{classes}, {classes} for an example without a class)"
                    )));
                }
                let values: Vec<f32> = l.iter().map(|&v| v as f32).collect();
                Some(Tensor::from_slice(self.gpu(), &[b], &values)?)
            }
        };
        Ok((batch.reshape(&[b, dim])?, labels))
    }

    /// One step on `x0` `[B, dim]` (or reflow pairs `[B, 2, dim]`) with labels `[B]` (f32 class
    /// numbers; `None`: the null class), or on a batch that could not be made (on one rank of
    /// a job, every rank must take part in the step's reduction, even one that failed).
    ///
    /// One process: forward, backward and AdamW in one submission, nothing read back. One rank
    /// of a job: forward and backward in one submission, the gradient read back, summed across
    /// ranks with every rank's health and stop request (`distributed`), scaled by 1/N and
    /// uploaded, then AdamW in a second submission.
    fn step_with(&mut self, batch: Result<(Tensor, Option<Tensor>)>) -> Result<()> {
        let Some(ranks) = self.ranks.clone() else {
            let (x0, labels) = batch?;
            self.record_forward_backward(&x0, labels.as_ref(), 0)?;
            return self.record_update();
        };
        let n = self.params.values().numel();
        let local = batch.and_then(|(x0, labels)| {
            let first = ranks.rank() * x0.shape()[0];
            self.record_forward_backward(&x0, labels.as_ref(), first)?;
            self.params.grads()?.to_vec()
        });
        let mut grads = ranks.sum_checked(local, n)?;
        let scale = 1.0 / ranks.size() as f32;
        grads.iter_mut().for_each(|g| *g *= scale);
        let next = self.step + 1;
        let applied = self
            .params
            .grads()
            .and_then(|g| g.write(&grads))
            .and_then(|()| self.record_update());
        if let Err(e) = applied {
            // Reported at the next reduction, where every rank learns of it.
            self.step = next;
            ranks.carry(e);
        }
        Ok(())
    }

    /// Record the noising, the network, the loss and backward for a batch whose first sample
    /// is sample `first_sample` of the step's global batch (0 on one process).
    fn record_forward_backward(
        &mut self,
        x0: &Tensor,
        labels: Option<&Tensor>,
        first_sample: usize,
    ) -> Result<()> {
        let (seed, step) = (self.config.seed, self.step as u32);
        self.params.zero_grads()?;
        let noised = self
            .flow
            .forward_process_slice(x0, labels, seed, step, first_sample)?;
        let mut tape = Tape::new();
        let z = tape.constant(noised.z);
        // The network's time input: t, or EDM's c_noise (the loss weighs by t itself).
        let t = tape.constant(noised.time_input);
        let out = self
            .model
            .forward(&mut tape, &self.params, &z, &t, &noised.labels)?;
        let loss = self.flow.loss(out.value(), &noised.target, &noised.t)?;
        tape.backward_with(&out, loss.grad)?;
        self.last = Some((loss.loss, loss.per_sample, noised.t));
        Ok(())
    }

    /// Record AdamW on the gradients in place and submit everything recorded.
    fn record_update(&mut self) -> Result<()> {
        self.opt.step(&self.params)?;
        self.step += 1;
        self.params.values().gpu().flush()
    }

    /// The last step's mean loss (waits for the GPU). On one rank of a job, the mean over the
    /// global batch (every rank must read it at the same step).
    pub fn read_loss(&self) -> Result<f32> {
        let Some((loss, _, _)) = &self.last else {
            return Err(Error::Config("no step taken yet".into()));
        };
        match &self.ranks {
            None => Ok(loss.to_vec()?[0]),
            Some(ranks) => {
                let all = ranks.gather_checked(loss.to_vec(), 1)?;
                Ok(mean_of_ranks(&all))
            }
        }
    }

    /// The last step's mean loss, per-sample losses and times (of the global batch, in sample
    /// order, on one rank of a job: every rank must read them at the same step).
    pub fn read_logged(&self) -> Result<(f32, Vec<f32>, Vec<f32>)> {
        let Some((loss, per, t)) = &self.last else {
            return Err(Error::Config("no step taken yet".into()));
        };
        let Some(ranks) = &self.ranks else {
            return Ok((loss.to_vec()?[0], per.to_vec()?, t.to_vec()?));
        };
        let b = per.numel();
        let local = (|| {
            let mut v = loss.to_vec()?;
            v.extend(per.to_vec()?);
            v.extend(t.to_vec()?);
            Ok(v)
        })();
        let all = ranks.gather_checked(local, 1 + 2 * b)?;
        let rows: Vec<&[f32]> = all.chunks(1 + 2 * b).collect();
        let losses: Vec<f32> = rows.iter().map(|r| r[0]).collect();
        let per = rows.iter().flat_map(|r| r[1..1 + b].to_vec()).collect();
        let t = rows.iter().flat_map(|r| r[1 + b..].to_vec()).collect();
        Ok((mean_of_ranks(&losses), per, t))
    }

    /// Make this trainer rank `ranks.rank()` of a data-parallel job (every rank calls it at the
    /// same point, with the same configuration): refused on every rank when the ranks do not
    /// divide the global batch; then rank 0's weights, EMA, moments and step are broadcast, so
    /// every rank starts (or resumes) from the same state.
    pub fn join_ranks(&mut self, ranks: Ranks) -> Result<()> {
        ranks.agree(ranks.slice(self.config.batch).map(|_| ()))?;
        let (m, v) = self.opt.moments();
        let buffers = [self.params.values(), self.opt.ema(), m, v];
        let read = if ranks.is_root() {
            buffers
                .iter()
                .map(|b| b.to_vec())
                .collect::<Result<Vec<_>>>()
        } else {
            Ok(Vec::new())
        };
        let mut state = ranks.agree(read)?;
        let n = self.params.values().numel();
        state.resize(buffers.len(), Vec::new());
        for values in &mut state {
            values.resize(n, 0.0);
            ranks.broadcast_f32(values);
        }
        let step = ranks.broadcast_bytes(self.step.to_le_bytes().to_vec());
        let step = u64::from_le_bytes(step.try_into().unwrap_or([0; 8]));
        let written = if ranks.is_root() {
            Ok(())
        } else {
            self.params
                .values()
                .write(&state[0])
                .and_then(|()| self.opt.restore(&state[2], &state[3], &state[1], step))
        };
        ranks.agree(written)?;
        self.step = step;
        self.ranks = Some(ranks);
        Ok(())
    }

    /// The job this trainer is a rank of, if any ([`Trainer::join_ranks`]).
    pub fn ranks(&self) -> Option<&Ranks> {
        self.ranks.as_ref()
    }

    /// The parameters with the EMA weights as values (sharing the optimiser's EMA buffer).
    pub fn ema_params(&self) -> Result<Params> {
        self.params.with_values(self.opt.ema().clone())
    }

    /// Refuse weights or EMA weights that are not finite, or so large that their squared norm
    /// overflows f32 (no usable model has such weights). One norm reduction per buffer on the
    /// GPU; two numbers are read back. Run before every checkpoint is written.
    pub fn check_finite(&self) -> Result<()> {
        let gpu = self.params.values().gpu();
        let norms = [
            ("weights", self.params.values()),
            ("EMA weights", self.opt.ema()),
        ]
        .into_iter()
        .map(|(what, buffer)| {
            let stats = Tensor::zeros(gpu, &[2])?;
            crate::ops::grad_norm(buffer, 0.0, &stats)?;
            Ok((what, stats))
        })
        .collect::<Result<Vec<_>>>()?;
        for (what, stats) in norms {
            let norm = stats.to_vec()?[0];
            if !norm.is_finite() {
                return Err(Error::NonFinite(format!(
                    "the {what} at step {} are not finite (norm {norm})",
                    self.step
                )));
            }
        }
        Ok(())
    }

    /// Everything needed to continue exactly where this left off.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let p = &self.params;
        let shapes = p.specs().iter().map(|s| (s.name.clone(), s.shape.clone()));
        let values = split_flat(p, &p.values().to_vec()?);
        let (m, v) = self.opt.moments();
        Ok(Checkpoint {
            step: self.step,
            config: self.config.to_json(),
            params: shapes
                .map(|(n, s)| {
                    let v = values[&n].clone();
                    (n, (s, v))
                })
                .collect(),
            ema: split_flat(p, &self.opt.ema().to_vec()?),
            adam_m: split_flat(p, &m.to_vec()?),
            adam_v: split_flat(p, &v.to_vec()?),
        })
    }

    /// Check that the weights are finite ([`Trainer::check_finite`]) and write a checkpoint to
    /// `path` atomically (the file there before stays if anything fails).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.check_finite()?;
        self.checkpoint()?.save(path)
    }

    /// Restore a checkpoint's weights, EMA, moments and step (the model must match).
    pub fn restore(&mut self, ck: &Checkpoint, path: &Path) -> Result<()> {
        self.check_names(ck, path)?;
        self.params
            .values()
            .write(&join_flat(&self.params, &raw_weights(ck), "values", path)?)?;
        self.restore_state(ck, path)
    }

    /// Refuse a checkpoint with a parameter this model does not have, or of another shape.
    fn check_names(&self, ck: &Checkpoint, path: &Path) -> Result<()> {
        for (name, (shape, _)) in &ck.params {
            match self.params.id(name) {
                Some(id) if self.params.spec(id).shape == *shape => {}
                Some(id) => {
                    return Err(Error::Checkpoint(format!(
                        "{}: parameter {name} has shape {shape:?}, the model needs {:?}",
                        path.display(),
                        self.params.spec(id).shape
                    )))
                }
                None => {
                    return Err(Error::Checkpoint(format!(
                        "{}: the checkpoint's parameter {name} is not in this model",
                        path.display()
                    )))
                }
            }
        }
        Ok(())
    }

    /// The optimiser's state and the step from a checkpoint (the weights are the caller's).
    fn restore_state(&mut self, ck: &Checkpoint, path: &Path) -> Result<()> {
        let ema = join_flat(&self.params, &ck.ema, "EMA", path)?;
        let m = join_flat(&self.params, &ck.adam_m, "AdamW first moment", path)?;
        let v = join_flat(&self.params, &ck.adam_v, "AdamW second moment", path)?;
        self.opt.restore(&m, &v, &ema, ck.step)?;
        self.step = ck.step;
        Ok(())
    }
}

/// The mean of the ranks' mean losses (equal slices: the global batch's mean), summed in rank
/// order in f64, so every rank gets the same number.
fn mean_of_ranks(losses: &[f32]) -> f32 {
    (losses.iter().map(|&l| l as f64).sum::<f64>() / losses.len().max(1) as f64) as f32
}

/// Refuse a data set that does not fit the configuration: another example shape, no examples,
/// or a label beyond the class table (which would index past it on the GPU).
pub(crate) fn check_data(config: &TrainConfig, data: &Dataset) -> Result<()> {
    if data.shape != config.model.shape {
        return Err(Error::Config(format!(
            "the data's examples are {:?}, the model expects {:?}",
            data.shape, config.model.shape
        )));
    }
    if data.is_empty() {
        return Err(Error::Config(format!("{} holds no examples", data.name)));
    }
    if let Some(labels) = &data.labels {
        let classes = config.model.classes;
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= classes)
        {
            return Err(Error::Config(format!(
                "{}: example {i} has label {l}, but the model has {classes} classes (labels 0..{})",
                data.name,
                classes.saturating_sub(1)
            )));
        }
    }
    Ok(())
}
