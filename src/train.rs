//! Training: one step is one submission — gather a batch on the GPU, noise it (flow kernel),
//! run the network on the tape, the fused weighted loss, backward, AdamW with clipping and EMA —
//! with nothing read back; the loss stays on the GPU until someone reads it.
//!
//! A configuration is validated and sized against the device ([`TrainConfig::validate`],
//! [`TrainConfig::check_fits`]) before a [`Trainer`] allocates anything, and a checkpoint is
//! opened for use by [`open_checkpoint`], which checks its configuration and tensors the same
//! way. [`Trainer::check_finite`] is the guard run before a checkpoint is written.

use crate::autograd::Tape;
use crate::checkpoint::{join_flat, split_flat, Checkpoint};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::flow::{Prediction, Schedule, TimeSampler, Weighting};
use crate::limits::Budget;
use crate::nn::{Model, ModelConfig};
use crate::ops::flow::{FlowConfig, FlowKernels};
use crate::optim::{AdamW, AdamWConfig};
use crate::params::{Params, ParamsBuilder};
use crate::tensor::Tensor;
use crate::Gpu;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Everything a run is made of (stored as JSON beside it and in every checkpoint).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// `digits`, `toy:NAME` or `idx:IMAGES[,LABELS]`.
    pub data: String,
    pub model: ModelConfig,
    /// `rf`, `cosine`, `ldm-linear` or `edm:PM,PS`.
    pub schedule: String,
    /// `velocity`, `eps`, `v` or `x0`.
    pub prediction: String,
    /// The loss weighting; `None`: the prediction's own (its plain MSE).
    pub weighting: Option<String>,
    /// `uniform`, `lognorm:M,S`, `mode:S` or `cosmap`.
    pub t_sampler: String,
    pub steps: u64,
    pub batch: usize,
    pub lr: f32,
    pub warmup: u64,
    pub ema_decay: f32,
    pub max_grad_norm: f32,
    pub label_dropout: f32,
    pub seed: u64,
}

impl TrainConfig {
    /// The flow kernels' configuration, parsed and checked.
    pub fn flow(&self) -> Result<FlowConfig> {
        let prediction = Prediction::parse(&self.prediction)?;
        let weighting = match &self.weighting {
            Some(w) => Weighting::parse(w)?,
            None => Weighting::natural(prediction),
        };
        Ok(FlowConfig {
            schedule: Schedule::parse(&self.schedule)?,
            prediction,
            weighting,
            sampler: TimeSampler::parse(&self.t_sampler)?,
            label_dropout: if self.model.classes > 0 {
                self.label_dropout
            } else {
                0.0
            },
            null_label: self.model.classes as u32,
            ..FlowConfig::default()
        })
    }

    /// Check every setting against its range (a flag's name and its range in each message).
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.flow()?;
        let refuse = |m: String| Err(Error::Config(m));
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return refuse(format!("--batch {}: use 1..={MAX_BATCH}", self.batch));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return refuse(format!(
                "--lr {}: the learning rate must be a finite number > 0",
                self.lr
            ));
        }
        if !(self.ema_decay.is_finite() && (0.0..1.0).contains(&self.ema_decay)) {
            return refuse(format!("--ema-decay {}: use [0, 1)", self.ema_decay));
        }
        if !(self.label_dropout.is_finite() && (0.0..=1.0).contains(&self.label_dropout)) {
            return refuse(format!(
                "--label-dropout {}: a probability, use [0, 1]",
                self.label_dropout
            ));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return refuse(format!(
                "max_grad_norm {}: use a finite number >= 0 (0: no clipping)",
                self.max_grad_norm
            ));
        }
        Ok(())
    }

    /// Size the model, one batch's activations and the host copies a checkpoint makes, and
    /// refuse what `budget` cannot hold. Allocates nothing the size of the model.
    pub fn check_fits(&self, budget: &Budget) -> Result<Footprint> {
        self.validate()?;
        let layout = self.model.layout()?;
        let params = layout.len().map(|n| n as u64);
        let m = &self.model;
        let size = format!(
            "the {} model (width {}, depth {}{})",
            m.kind,
            m.width,
            m.depth,
            if m.classes > 0 {
                format!(" and {} classes", m.classes)
            } else {
                String::new()
            }
        );
        budget.check_tensor(
            &format!("{size}: its parameters"),
            params,
            "use a smaller --width or --depth",
        )?;
        let activations = m.activation_elems(self.batch);
        budget.check_tensor(
            &format!(
                "{size} on a batch of {} examples of shape {:?}: its largest activation",
                self.batch, m.shape
            ),
            activations,
            "use a smaller --batch or --width, or a larger --patch",
        )?;
        // A checkpoint reads back four buffers (weights, EMA, two moments) and serialises them.
        budget.check_host(
            &format!("{size}: writing a checkpoint"),
            params.and_then(|p| p.checked_mul(4 * 4 * 2)),
            "use a smaller --width or --depth",
        )?;
        Ok(Footprint {
            param_elems: params.unwrap_or(0),
            activation_elems: activations.unwrap_or(0),
        })
    }

    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            lr: self.lr,
            warmup_steps: self.warmup,
            ema_decay: self.ema_decay,
            max_grad_norm: self.max_grad_norm,
            ..AdamWConfig::default()
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the config serialises")
    }

    pub fn from_json(s: &str) -> Result<TrainConfig> {
        serde_json::from_str(s)
            .map_err(|e| Error::Config(format!("the run configuration does not parse: {e}")))
    }
}

/// Largest batch (one batch's activations must also fit the device; see
/// [`TrainConfig::check_fits`]).
pub const MAX_BATCH: usize = 1 << 20;

/// What a configuration needs on the device, in f32 elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// The flat parameter buffer (padding included); the gradient, EMA and moments are as large.
    pub param_elems: u64,
    /// The largest activation of one training step.
    pub activation_elems: u64,
}

/// Read a checkpoint for use: the file checked ([`Checkpoint::load_within`], bounded by the host
/// budget), its configuration parsed, validated and sized against `budget`, and its tensors
/// matched by name and shape to the model that configuration describes — all before anything
/// the size of the model is allocated.
pub fn open_checkpoint(path: &Path, budget: &Budget) -> Result<(Checkpoint, TrainConfig)> {
    let ck = Checkpoint::load_within(path, budget.host_bytes / 2)?;
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
    let layout = config.model.layout().map_err(at)?;
    let mismatch = |why: String| {
        Error::Io(format!(
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

/// A model in training, with its data on the GPU.
pub struct Trainer {
    pub config: TrainConfig,
    pub model: Model,
    pub params: Params,
    pub opt: AdamW,
    pub flow: FlowKernels,
    data_x: Tensor,
    data_labels: Tensor,
    /// Steps taken.
    pub step: u64,
    /// The last step's mean loss `[1]`, per-sample losses and times `[B]`, on the GPU.
    pub last: Option<(Tensor, Tensor, Tensor)>,
}

impl Trainer {
    /// A fresh model for `config` on `data` (uploaded once). The configuration is validated and
    /// sized against the device first, and the data checked against it.
    pub fn new(gpu: &Gpu, config: TrainConfig, data: &Dataset) -> Result<Trainer> {
        config.check_fits(&Budget::of(gpu))?;
        if data.shape != config.model.shape {
            return Err(Error::Config(format!(
                "the data's examples are {:?}, the model expects {:?}",
                data.shape, config.model.shape
            )));
        }
        if data.is_empty() {
            return Err(Error::Config(format!("{} holds no examples", data.name)));
        }
        // A label beyond the class table would index past it on the GPU.
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
        let flow = FlowKernels::new(gpu, config.flow()?)?;
        let mut builder = ParamsBuilder::new();
        let model = Model::build(&config.model, &mut builder)?;
        let params = builder.build(gpu, config.seed)?;
        let opt = AdamW::new(&params, config.adamw())?;
        let labels: Vec<f32> = match &data.labels {
            Some(l) => l.iter().map(|&v| v as f32).collect(),
            None => vec![config.model.classes as f32; data.len()],
        };
        Ok(Trainer {
            data_x: Tensor::from_slice(gpu, &[data.len(), data.dim()], &data.x)?,
            data_labels: Tensor::from_slice(gpu, &[data.len()], &labels)?,
            config,
            model,
            params,
            opt,
            flow,
            step: 0,
            last: None,
        })
    }

    /// Record one training step and submit it (without waiting).
    pub fn step(&mut self) -> Result<()> {
        let (seed, step) = (self.config.seed, self.step as u32);
        self.params.zero_grads()?;
        let (x0, labels) = self.flow.gather_batch(
            &self.data_x,
            &self.data_labels,
            self.config.batch,
            seed,
            step,
        )?;
        let noised = self.flow.forward_process(&x0, Some(&labels), seed, step)?;
        let mut tape = Tape::new();
        let z = tape.constant(noised.z);
        let t = tape.constant(noised.t.clone());
        let out = self
            .model
            .forward(&mut tape, &self.params, &z, &t, &noised.labels)?;
        let loss = self.flow.loss(out.value(), &noised.target, &noised.t)?;
        tape.backward_with(&out, loss.grad)?;
        self.opt.step(&self.params)?;
        self.last = Some((loss.loss, loss.per_sample, noised.t));
        self.step += 1;
        self.params.values().gpu().flush()
    }

    /// The last step's mean loss (waits for the GPU).
    pub fn read_loss(&self) -> Result<f32> {
        match &self.last {
            Some((loss, _, _)) => Ok(loss.to_vec()?[0]),
            None => Err(Error::Config("no step taken yet".into())),
        }
    }

    /// The parameters with the EMA weights as values.
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

    /// Restore a checkpoint's weights, EMA, moments and step (the model must match).
    pub fn restore(&mut self, ck: &Checkpoint, path: &Path) -> Result<()> {
        let values: std::collections::HashMap<String, Vec<f32>> = ck
            .params
            .iter()
            .map(|(n, (_, v))| (n.clone(), v.clone()))
            .collect();
        for (name, (shape, _)) in &ck.params {
            match self.params.id(name) {
                Some(id) if self.params.spec(id).shape == *shape => {}
                Some(id) => {
                    return Err(Error::Io(format!(
                        "{}: parameter {name} has shape {shape:?}, the model needs {:?}",
                        path.display(),
                        self.params.spec(id).shape
                    )))
                }
                None => {
                    return Err(Error::Io(format!(
                        "{}: the checkpoint's parameter {name} is not in this model",
                        path.display()
                    )))
                }
            }
        }
        self.params
            .values()
            .write(&join_flat(&self.params, &values, "values", path)?)?;
        let ema = join_flat(&self.params, &ck.ema, "EMA", path)?;
        let m = join_flat(&self.params, &ck.adam_m, "AdamW first moment", path)?;
        let v = join_flat(&self.params, &ck.adam_v, "AdamW second moment", path)?;
        self.opt.restore(&m, &v, &ema, ck.step)?;
        self.step = ck.step;
        Ok(())
    }
}
