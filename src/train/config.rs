//! The training run's typed configuration: [`TrainConfig`], the one the command line builds from
//! its flags and a program builds in code, stored as JSON in `config.json` and in every
//! checkpoint. The objective's settings are the flow math's own enums ([`Schedule`],
//! [`Prediction`], [`Preconditioning`], [`Weighting`], [`TimeSampler`]) and the data a
//! [`DataSpec`]; each is written to JSON in its text form (`"rf"`, `"edm:-1.2,1.2"`,
//! `"lognorm:0,1"`, `"toy:moons"`), which is also what the flags take, so configurations written
//! before these types existed load unchanged, and a value that does not parse is refused when
//! the JSON is read, naming it. The preconditioning is written only when there is one
//! (`"preconditioning": "edm"`); a configuration without the field, as every one written before
//! it existed, trained and samples without.
//! [`TrainConfig::validate`] checks the numbers' ranges and [`TrainConfig::check_fits`] sizes
//! the model against a device before anything is allocated.
#![warn(missing_docs)]

use super::objective::FlowConfig;
use crate::data::{DataSpec, Dataset};
use crate::error::{Error, Result};
use crate::flow::{Preconditioning, Prediction, Schedule, TimeSampler, Weighting};
use crate::limits::Budget;
use crate::nn::ModelConfig;
use crate::optim::AdamWConfig;
use crate::sample::{DEFAULT_STEPS, GUIDANCE};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The text form of a [`Weighting`] (what `--weighting` takes).
pub fn weighting_name(w: &Weighting) -> String {
    match w {
        Weighting::Velocity => "velocity".into(),
        Weighting::Eps => "eps".into(),
        Weighting::V => "v".into(),
        Weighting::X0 => "x0".into(),
        Weighting::Edm { pm, ps } => format!("edm:{pm},{ps}"),
    }
}

/// The message of an error without its kind's prefix (for serde, which adds its own context).
fn bare(e: Error) -> String {
    e.to_string()
        .trim_start_matches("invalid setting: ")
        .to_string()
}

/// Serialise a flow-math enum as its text form and parse it back, validating it.
macro_rules! serde_as_text {
    ($ty:ty, $to_text:expr, $parse:expr) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                let to_text: fn(&$ty) -> String = $to_text;
                s.serialize_str(&to_text(self))
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<$ty, D::Error> {
                let text = String::deserialize(d)?;
                let parse: fn(&str) -> Result<$ty> = $parse;
                parse(&text).map_err(|e| serde::de::Error::custom(bare(e)))
            }
        }
    };
}

serde_as_text!(Schedule, |s| s.name(), Schedule::parse);
serde_as_text!(Prediction, |p| p.name().to_string(), Prediction::parse);
serde_as_text!(Weighting, weighting_name, Weighting::parse);
serde_as_text!(TimeSampler, |t| t.name(), TimeSampler::parse);
serde_as_text!(
    Preconditioning,
    |p| p.name().to_string(),
    Preconditioning::parse
);

/// Which velocity network. Its text form (`mlp`, `dit`, `mmdit`) is what `--model` takes and
/// what [`ModelConfig::kind`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// A residual MLP for points (`[D]` examples).
    Mlp,
    /// A diffusion transformer with adaLN-Zero for images.
    Dit,
    /// SD3's two-stream MM-DiT for images.
    Mmdit,
}

impl ModelKind {
    /// The text form.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Mlp => "mlp",
            ModelKind::Dit => "dit",
            ModelKind::Mmdit => "mmdit",
        }
    }

    /// Parse `mlp`, `dit` or `mmdit`.
    pub fn parse(text: &str) -> Result<ModelKind> {
        match text {
            "mlp" => Ok(ModelKind::Mlp),
            "dit" => Ok(ModelKind::Dit),
            "mmdit" => Ok(ModelKind::Mmdit),
            other => Err(Error::Config(format!(
                "unknown model {other:?}: use dit, mmdit or mlp"
            ))),
        }
    }

    /// The default network for images (a DiT) or points (the MLP).
    pub fn default_for(image: bool) -> ModelKind {
        if image {
            ModelKind::Dit
        } else {
            ModelKind::Mlp
        }
    }

    /// This network at its default size for examples of `shape` with `classes` classes (0:
    /// unconditional): width 256 and 3 hidden layers for the MLP; width 64, 4 blocks, 4 heads
    /// and patch 2 for the transformers.
    pub fn config(self, shape: &[usize], classes: usize) -> ModelConfig {
        let mlp = self == ModelKind::Mlp;
        ModelConfig {
            kind: self.name().into(),
            width: if mlp { 256 } else { 64 },
            depth: if mlp { 3 } else { 4 },
            heads: 4,
            patch: 2,
            shape: shape.to_vec(),
            classes,
            context_dim: 0,
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything a run is made of (stored as JSON beside it and in every checkpoint).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The data set (`digits`, `toy:NAME`, `idx:IMAGES[,LABELS]`, `host:NAME`).
    pub data: DataSpec,
    /// The network and its size.
    pub model: ModelConfig,
    /// The forward process `z_t = a_t x0 + b_t eps`.
    pub schedule: Schedule,
    /// What the network predicts.
    pub prediction: Prediction,
    /// How the network's input, time input and output are scaled: EDM's (`edm` schedule, `x0`
    /// prediction) or none. Absent from the JSON when none (configurations older than the
    /// field trained without).
    #[serde(default, skip_serializing_if = "Preconditioning::is_none")]
    pub preconditioning: Preconditioning,
    /// The loss weighting; `None`: the prediction's own (its plain MSE), or under EDM's
    /// preconditioning the schedule's `edm:PM,PS` weighting (EDM's F-prediction loss).
    pub weighting: Option<Weighting>,
    /// How training draws `t`.
    pub t_sampler: TimeSampler,
    /// Training steps in all.
    pub steps: u64,
    /// Examples per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Steps of linear learning-rate warm-up.
    pub warmup: u64,
    /// EMA decay of the weights (warmed up as `min(decay, (1 + t) / (10 + t))`).
    pub ema_decay: f32,
    /// Gradient clipping norm (0: none).
    pub max_grad_norm: f32,
    /// Probability of training an example with the null label (classifier-free guidance).
    pub label_dropout: f32,
    /// Seed of the initial weights and of every random number of the run.
    pub seed: u64,
    /// f16 weights: the linear layers' matmuls read an f16 copy of the weights, refreshed from
    /// the f32 master weights at every forward pass, and sum in f32 (`--f16`; needs
    /// `SHADER_F16`). Absent from the JSON when off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub f16: bool,
}

impl TrainConfig {
    /// The default run on `data` with `model`: rectified flow, velocity prediction with its own
    /// weighting, logit-normal(0, 1) times, 1600 steps of 64 images or 1500 steps of 256 points,
    /// learning rate 2e-3 with 100 warm-up steps, EMA 0.999, clipping at norm 1, label dropout
    /// 0.1, seed 0, f32 weights.
    pub fn new(data: DataSpec, model: ModelConfig) -> TrainConfig {
        let image = model.shape.len() == 3;
        TrainConfig {
            data,
            model,
            schedule: Schedule::RectifiedFlow,
            prediction: Prediction::Velocity,
            preconditioning: Preconditioning::None,
            weighting: None,
            t_sampler: TimeSampler::LogNormal { m: 0.0, s: 1.0 },
            steps: if image { 1600 } else { 1500 },
            batch: if image { 64 } else { 256 },
            lr: 2e-3,
            warmup: 100,
            ema_decay: 0.999,
            max_grad_norm: 1.0,
            label_dropout: 0.1,
            seed: 0,
            f16: false,
        }
    }

    /// The default run of `kind` (at its default size) on a loaded data set.
    pub fn for_data(data: &Dataset, kind: ModelKind) -> Result<TrainConfig> {
        Ok(TrainConfig::new(
            DataSpec::parse(&data.name)?,
            kind.config(&data.shape, data.classes),
        ))
    }

    /// The loss weighting in effect when none is set: the prediction's own, or under EDM's
    /// preconditioning the spec's edm row with the schedule's `(Pm, Ps)`, which with uniform
    /// training times is EDM's loss `lambda(sigma) ||D - x0||^2`, i.e. `||F - F_target||^2`, times
    /// the constant `sd^2 / 2` (docs/edm.md).
    pub fn weighting(&self) -> Weighting {
        self.weighting
            .unwrap_or_else(|| match (self.preconditioning, self.schedule) {
                (Preconditioning::Edm, Schedule::Edm { pm, ps }) => Weighting::Edm { pm, ps },
                _ => Weighting::natural(self.prediction),
            })
    }

    /// The training objective.
    pub fn flow(&self) -> FlowConfig {
        FlowConfig {
            schedule: self.schedule,
            prediction: self.prediction,
            preconditioning: self.preconditioning,
            weighting: self.weighting(),
            sampler: self.t_sampler,
            label_dropout: if self.model.classes > 0 {
                self.label_dropout
            } else {
                0.0
            },
            null_label: self.model.classes as u32,
            ..FlowConfig::default()
        }
    }

    /// The x0 clamp samplers use by default: the data's range for eps-prediction (images lie
    /// in [-1, 1], the toys within [-4, 4]), whose `x0_hat = (z - b eps_hat) / a` divides by a
    /// small `a` near `t = 1`; none for the other predictions.
    pub fn default_clip_x0(&self) -> Option<f32> {
        let range = if self.model.shape.len() == 3 {
            1.0
        } else {
            4.0
        };
        (self.prediction == Prediction::Eps).then_some(range)
    }

    /// The guidance weight samplers use by default: [`GUIDANCE`] for a class-conditional model
    /// trained with label dropout (it has learned the unconditional velocity too), 1 otherwise
    /// (a reflow of guided pairs trains without dropout: the guidance is in its pairs).
    pub fn default_guidance(&self) -> f32 {
        if self.model.classes > 0 && self.label_dropout > 0.0 {
            GUIDANCE
        } else {
            1.0
        }
    }

    /// Sampling steps by default: `k` for a model distilled for `k` steps (time sampler
    /// `grid:K`), else [`DEFAULT_STEPS`].
    pub fn default_sample_steps(&self) -> usize {
        match self.t_sampler {
            TimeSampler::Grid { k } => k as usize,
            _ => DEFAULT_STEPS,
        }
    }

    /// Check every setting against its range (a flag's name and its range in each message).
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        // Values built in code skip the parsers; their text form goes through the same checks.
        Schedule::parse(&self.schedule.name())?;
        if let Some(w) = &self.weighting {
            Weighting::parse(&weighting_name(w))?;
        }
        self.t_sampler.validate()?;
        if let (TimeSampler::Grid { k }, Schedule::Edm { .. }) = (self.t_sampler, self.schedule) {
            if k > 1 {
                return Err(Error::Config(format!(
                    "--t-sampler grid:{k} trains for the times of a {k}-step uniform grid, but \
                     edm samples on the Karras grid: distil edm for one step (grid:1) only"
                )));
            }
        }
        self.preconditioning
            .check(&self.schedule, self.prediction)?;
        let refuse = |m: String| Err(Error::Config(m));
        if self.steps == 0 {
            return refuse("--steps 0: train at least 1 step".into());
        }
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

    /// The optimiser's settings.
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            lr: self.lr,
            warmup_steps: self.warmup,
            ema_decay: self.ema_decay,
            max_grad_norm: self.max_grad_norm,
            ..AdamWConfig::default()
        }
    }

    /// The JSON text (`config.json`, a checkpoint's metadata).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the config serialises")
    }

    /// Parse the JSON text; a setting that does not parse is named in the error.
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
