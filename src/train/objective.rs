//! The training objective: its configuration ([`FlowConfig`]: schedule, prediction,
//! preconditioning, loss weighting, time sampler, label dropout; SD3's choices by default) and [`Objective`], that
//! configuration with the flow kernels it runs (`ops::flow`): the forward process that noises a
//! batch, and the weighted loss with its gradient.

use crate::error::Result;
use crate::flow::{Preconditioning, Prediction, Schedule, TimeSampler, Weighting};
use crate::ops::flow::{FlowKernels, Noised, Process, WeightedLoss};
use crate::sample::Trained;
use crate::tensor::Tensor;
use crate::Gpu;

/// Everything that defines a training objective.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlowConfig {
    /// The noise schedule.
    pub schedule: Schedule,
    /// What the network predicts.
    pub prediction: Prediction,
    /// How the network's input, time input and output are scaled (EDM's for `edm` + `x0`).
    pub preconditioning: Preconditioning,
    /// The loss weighting over time.
    pub weighting: Weighting,
    /// How training times are drawn.
    pub sampler: TimeSampler,
    /// Training `t` is clamped to `[t_min, t_max]` (conversions divide by `a` or `b`).
    pub t_min: f32,
    /// See `t_min`.
    pub t_max: f32,
    /// Resolution shift `alpha` applied to training `t` (1: none).
    pub shift: f32,
    /// Probability of replacing a label by the null label (classifier-free guidance).
    pub label_dropout: f32,
    /// The null label's number.
    pub null_label: u32,
}

impl Default for FlowConfig {
    /// SD3's best: rectified flow, velocity prediction, logit-normal(0, 1) times.
    fn default() -> Self {
        FlowConfig {
            schedule: Schedule::RectifiedFlow,
            prediction: Prediction::Velocity,
            preconditioning: Preconditioning::None,
            weighting: Weighting::Velocity,
            sampler: TimeSampler::LogNormal { m: 0.0, s: 1.0 },
            t_min: 1e-5,
            t_max: 1.0 - 1e-5,
            shift: 1.0,
            label_dropout: 0.1,
            null_label: 10,
        }
    }
}

impl FlowConfig {
    /// How a batch is noised under this objective (the forward process kernel's settings).
    pub fn process(&self) -> Process {
        Process {
            schedule: self.schedule,
            prediction: self.prediction,
            preconditioning: self.preconditioning,
            sampler: self.sampler,
            t_min: self.t_min,
            t_max: self.t_max,
            shift: self.shift,
            label_dropout: self.label_dropout,
            null_label: self.null_label,
            first_sample: 0,
        }
    }

    /// Refuse what cannot be trained: `0 <= label_dropout < 1`, `0 < t_min < t_max < 1`,
    /// `shift > 0`, a valid time sampler, and preconditioning only where it applies.
    pub fn validate(&self) -> Result<()> {
        self.process().validate()
    }
}

/// A training objective on a context: its configuration and the kernels it runs.
pub struct Objective {
    /// The configuration (checked when the objective was made).
    pub config: FlowConfig,
    kernels: FlowKernels,
}

impl Objective {
    /// The objective `config` on `gpu` (refused if it cannot be trained).
    pub fn new(gpu: &Gpu, config: FlowConfig) -> Result<Objective> {
        config.validate()?;
        Ok(Objective {
            config,
            kernels: FlowKernels::new(gpu)?,
        })
    }

    /// Noise a batch `x0` `[B, D]` at step `step`: draws t and eps from the run's streams, and
    /// returns the network's input and time input, the target, `t` and the labels after dropout (`labels` `[B]`, f32 numbers;
    /// without labels, the null label throughout).
    pub fn forward_process(
        &self,
        x0: &Tensor,
        labels: Option<&Tensor>,
        seed: u64,
        step: u32,
    ) -> Result<Noised> {
        self.kernels
            .forward_process(x0, labels, &self.config.process(), seed, step)
    }

    /// [`Objective::forward_process`] on reflow pairs `[B, 2, D]` (each row an example and its
    /// own noise: t is drawn, eps is the pair's).
    pub fn forward_process_pairs(
        &self,
        pairs: &Tensor,
        labels: Option<&Tensor>,
        seed: u64,
        step: u32,
    ) -> Result<Noised> {
        self.kernels
            .forward_process_pairs(pairs, labels, &self.config.process(), seed, step)
    }

    /// [`Objective::forward_process`] (or, for pairs `[B, 2, D]`, [`Objective::forward_process_pairs`])
    /// on samples `first_sample..first_sample + B` of a step's global batch: t, the noise and label
    /// dropout drawn as one process drawing the whole batch would draw them for those samples
    /// (a rank's slice in data-parallel training).
    pub fn forward_process_slice(
        &self,
        x0: &Tensor,
        labels: Option<&Tensor>,
        seed: u64,
        step: u32,
        first_sample: usize,
    ) -> Result<Noised> {
        let process = Process {
            first_sample: first_sample as u32,
            ..self.config.process()
        };
        if x0.shape().len() == 3 {
            self.kernels
                .forward_process_pairs(x0, labels, &process, seed, step)
        } else {
            self.kernels
                .forward_process(x0, labels, &process, seed, step)
        }
    }

    /// The weighted loss of a network output against the target at times `t`, its gradient with
    /// respect to the output, and the per-sample losses, in one pass (plus the batch mean).
    pub fn loss(&self, output: &Tensor, target: &Tensor, t: &Tensor) -> Result<WeightedLoss> {
        let c = &self.config;
        self.kernels.loss(
            output,
            target,
            t,
            c.schedule,
            c.prediction,
            c.preconditioning,
            c.weighting,
        )
    }

    /// The exact marginal velocity of the data set `data` `[K, D]` at `z` `[B, D]`, `t` `[B]`,
    /// under this objective's schedule.
    pub fn oracle_velocity(&self, z: &Tensor, t: &Tensor, data: &Tensor) -> Result<Tensor> {
        self.kernels
            .oracle_velocity(z, t, data, self.config.schedule)
    }
}

impl Trained for Objective {
    fn schedule(&self) -> Schedule {
        self.config.schedule
    }
    fn prediction(&self) -> Prediction {
        self.config.prediction
    }
    fn preconditioning(&self) -> Preconditioning {
        self.config.preconditioning
    }
}

impl Trained for FlowConfig {
    fn schedule(&self) -> Schedule {
        self.schedule
    }
    fn prediction(&self) -> Prediction {
        self.prediction
    }
    fn preconditioning(&self) -> Preconditioning {
        self.preconditioning
    }
}
