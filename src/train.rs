//! Training: one step is one submission — gather a batch on the GPU, noise it (flow kernel),
//! run the network on the tape, the fused weighted loss, backward, AdamW with clipping and EMA —
//! with nothing read back; the loss stays on the GPU until someone reads it.

use crate::autograd::Tape;
use crate::checkpoint::{join_flat, split_flat, Checkpoint};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::flow::{Prediction, Schedule, TimeSampler, Weighting};
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
    /// A fresh model for `config` on `data` (uploaded once).
    pub fn new(gpu: &Gpu, config: TrainConfig, data: &Dataset) -> Result<Trainer> {
        let flow = FlowKernels::new(gpu, config.flow()?)?;
        let mut builder = ParamsBuilder::new();
        let model = Model::build(&config.model, &mut builder)?;
        let params = builder.build(gpu, config.seed)?;
        let opt = AdamW::new(&params, config.adamw())?;
        if data.shape != config.model.shape {
            return Err(Error::Config(format!(
                "the data's examples are {:?}, the model expects {:?}",
                data.shape, config.model.shape
            )));
        }
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
