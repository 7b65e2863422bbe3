//! A trained model ready to sample: [`Pipeline::load`] reads a checkpoint in one call (its
//! configuration rebuilds the network, the chosen weights — raw or EMA — are uploaded, nothing is
//! initialised at random), and [`Pipeline::sample`], [`Pipeline::sampler`] and
//! [`Pipeline::field`] draw from it. Samples are `[n, C, H, W]` (images) or `[n, D]` (points),
//! labels are class numbers. [`Pipeline::save`] writes the chosen weights back as a checkpoint
//! in the training format.
#![warn(missing_docs)]

use crate::checkpoint::{split_flat, Checkpoint};
use crate::error::{Error, Result};
use crate::limits::Budget;
use crate::nn::{Model, ModelConfig};
use crate::params::{Params, ParamsBuilder};
use crate::sample::{check_sample_count, cycle_labels, NetworkField, SampleOptions, Sampler};
use crate::tensor::Tensor;
use crate::train::{model_for_loading, open_checkpoint, raw_weights, TrainConfig, Trainer};
use crate::Gpu;
use std::collections::HashMap;
use std::path::Path;

/// Which of a run's weights to use (`"ema"` or `"raw"` in serde's form).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weights {
    /// The exponential moving average of the weights (usually the better sampler).
    Ema,
    /// The weights as the optimiser left them.
    Raw,
}

/// A network with one set of weights on the GPU, and the configuration it was trained with.
pub struct Pipeline {
    config: TrainConfig,
    model: Model,
    params: Params,
    step: u64,
    weights: Weights,
}

impl Pipeline {
    /// Load the checkpoint at `path` with the chosen weights. The file, its configuration and
    /// its tensors are checked (and the model sized against the device) before anything the
    /// size of the model is allocated; see [`open_checkpoint`].
    pub fn load(gpu: &Gpu, path: impl AsRef<Path>, weights: Weights) -> Result<Pipeline> {
        let path = path.as_ref();
        let (ck, config) = open_checkpoint(path, &Budget::of(gpu))?;
        let (model, mut params) = match weights {
            Weights::Raw => {
                let values = raw_weights(&ck);
                model_for_loading(gpu, &config, &values, "values", path, false)?
            }
            Weights::Ema => model_for_loading(gpu, &config, &ck.ema, "EMA", path, false)?,
        };
        // A run trained with f16 weights samples with them where the device can; elsewhere it
        // samples with the f32 master weights.
        if config.f16 && gpu.has_f16() {
            params.store_f16()?;
        }
        Ok(Pipeline {
            config,
            model,
            params,
            step: ck.step,
            weights,
        })
    }

    /// A pipeline with a copy (on the GPU) of a trainer's current weights or their EMA.
    pub fn from_trainer(trainer: &Trainer, weights: Weights) -> Result<Pipeline> {
        let mut builder = ParamsBuilder::new();
        let model = Model::build(&trainer.config.model, &mut builder)?;
        let source = match weights {
            Weights::Raw => trainer.params.values(),
            Weights::Ema => trainer.opt.ema(),
        };
        let params = trainer.params.with_values(crate::ops::copy(source)?)?;
        Ok(Pipeline {
            config: trainer.config.clone(),
            model,
            params,
            step: trainer.step,
            weights,
        })
    }

    /// Sample with f16 weights: the linear layers read an f16 copy of the weights (half the
    /// bytes per weight, f32 sums; see [`Params::store_f16`]). Refused where the device has no
    /// `SHADER_F16`.
    pub fn store_f16(&mut self) -> Result<()> {
        self.params.store_f16()
    }

    /// Whether the linear layers read f16 weights.
    pub fn stores_f16(&self) -> bool {
        self.params.stores_f16()
    }

    /// Write the weights as a checkpoint at `path` (atomically), in the training format: the
    /// weights as both `params.NAME` and `ema.NAME`, the optimiser's moments zero. It loads like
    /// any checkpoint; training resumed from it restarts AdamW's moments. Weights that are not
    /// finite are refused.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let values = self.params.values().to_vec()?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite(format!(
                "the weights hold {} at element {i}; nothing was written",
                values[i]
            )));
        }
        let p = &self.params;
        let weights = split_flat(p, &values);
        let zeros: HashMap<String, Vec<f32>> = weights
            .iter()
            .map(|(n, v)| (n.clone(), vec![0.0; v.len()]))
            .collect();
        let ck = Checkpoint {
            step: self.step,
            config: self.config.to_json(),
            params: p
                .specs()
                .iter()
                .map(|s| (s.name.clone(), (s.shape.clone(), weights[&s.name].clone())))
                .collect(),
            ema: weights,
            adam_m: zeros.clone(),
            adam_v: zeros,
        };
        ck.save(path.as_ref())
    }

    /// The weights on the host by parameter name (as a checkpoint holds them).
    pub fn weights_by_name(&self) -> Result<HashMap<String, Vec<f32>>> {
        Ok(split_flat(&self.params, &self.params.values().to_vec()?))
    }

    /// The configuration the model was trained with.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }
    /// The network's configuration.
    pub fn model_config(&self) -> &ModelConfig {
        &self.config.model
    }
    /// The network.
    pub fn model(&self) -> &Model {
        &self.model
    }
    /// The weights (one flat buffer; see [`Params`]).
    pub fn params(&self) -> &Params {
        &self.params
    }
    /// The training step the weights are from.
    pub fn step(&self) -> u64 {
        self.step
    }
    /// Which weights these are.
    pub fn weights(&self) -> Weights {
        self.weights
    }
    /// The context the weights live on.
    pub fn gpu(&self) -> &Gpu {
        self.params.values().gpu()
    }
    /// The shape of one example: `[C, H, W]` or `[D]`.
    pub fn example_shape(&self) -> &[usize] {
        &self.config.model.shape
    }
    /// Number of classes (labels `0..classes`, `classes` is the null class); 0: unconditional.
    pub fn classes(&self) -> usize {
        self.config.model.classes
    }

    /// The network as a velocity field (for a [`Sampler`] of one's own, or to evaluate it).
    pub fn field(&self) -> NetworkField<'_> {
        NetworkField::new(
            &self.model,
            &self.params,
            self.config.schedule,
            self.config.prediction,
            self.classes(),
        )
        .with_preconditioning(self.config.preconditioning)
    }

    /// Labels `i % classes` for `n` samples (all 0 for an unconditional model).
    pub fn labels(&self, n: usize) -> Vec<u32> {
        cycle_labels(self.classes(), n)
    }

    /// The command line's sampling settings for these labels: Euler steps and guidance as the
    /// configuration suggests ([`TrainConfig::default_sample_steps`]: 20, or `k` for a model
    /// distilled for `k` steps; [`TrainConfig::default_guidance`]: [`crate::sample::GUIDANCE`] for a
    /// class-conditional model trained with label dropout, else 1), no shift, seed 0, and the
    /// x0 clamp of eps-prediction ([`TrainConfig::default_clip_x0`]).
    pub fn options(&self, labels: Vec<u32>) -> SampleOptions {
        SampleOptions {
            steps: self.config.default_sample_steps(),
            cfg: self.config.default_guidance(),
            clip_x0: self.config.default_clip_x0(),
            ..SampleOptions::new(labels)
        }
    }

    /// A step-wise sampler over the network, from the noise of `opts.seed`.
    pub fn sampler(&self, opts: &SampleOptions) -> Result<Sampler<NetworkField<'_>>> {
        self.check_count(opts.labels.len())?;
        Sampler::start(self.gpu(), self.field(), self.example_shape(), opts)
    }

    /// A step-wise sampler over the network, from the host's standard-normal noise
    /// `[n, ...example_shape]`.
    pub fn sampler_from_noise(
        &self,
        noise: &Tensor,
        opts: &SampleOptions,
    ) -> Result<Sampler<NetworkField<'_>>> {
        self.check_count(opts.labels.len())?;
        let want: Vec<usize> = std::iter::once(opts.labels.len())
            .chain(self.example_shape().iter().copied())
            .collect();
        if noise.shape() != want {
            return Err(Error::Shape(format!(
                "noise of shape {:?} for this model: give {want:?}",
                noise.shape()
            )));
        }
        Sampler::start_from_noise(self.field(), noise, opts)
    }

    /// Draw `opts.labels.len()` samples, `[n, ...example_shape]`, recorded on the GPU (read them
    /// with `to_vec`, or draw them into a texture with [`crate::ops::texture::ImageWriter`]).
    pub fn sample(&self, opts: &SampleOptions) -> Result<Tensor> {
        self.sampler(opts)?.finish()
    }

    fn check_count(&self, n: usize) -> Result<()> {
        check_sample_count(&self.config.model, n, &Budget::of(self.gpu()))
    }
}
