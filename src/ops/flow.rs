//! The flow kernels (`shaders/flow.wgsl`): the fused forward process (t, eps, the network's input
//! and time input, target and label dropout in one pass; under EDM's preconditioning the input,
//! time input and target are EDM's, `crate::flow::precondition`), the fused weighted loss (per-sample losses and the gradient with
//! respect to the network output in one pass), and the exact marginal velocity of a finite data
//! set. Each takes the settings it computes with as arguments; the training objective they make
//! up, with its defaults and checks, is `crate::train::FlowConfig`. The f64 reference is
//! `crate::flow`.

use super::ensure_f32;
use crate::error::{ensure_shape, Error, Result};
use crate::flow::schedule::ldm_log_alphabar;
use crate::flow::{Preconditioning, Prediction, Schedule, TimeSampler, Weighting};
use crate::gpu::{kernel_params, kernels, Gpu};
use crate::shaders::{self, FLOW};
use crate::tensor::{DType, Tensor};

kernel_params! {
    struct Params {
        batch: u32,
        dim: u32,
        step: u32,
        seed_lo: u32,
        seed_hi: u32,
        null_label: u32,
        /// The oracle's data rows.
        rows: u32,
        t_min: f32,
        t_max: f32,
        /// Resolution shift of training t (1: none).
        shift: f32,
        /// Label dropout probability.
        p_drop: f32,
        /// The edm schedule's (PM, PS).
        sched_pm: f32,
        sched_ps: f32,
        /// lognorm's m (mode's s), lognorm's s.
        samp_m: f32,
        samp_s: f32,
        /// The edm weighting's (PM, PS).
        w_pm: f32,
        w_ps: f32,
        /// forward_process: the global index of sample 0 in the random streams.
        first_sample: u32,
        _pad: [u32; 2],
    }
}

kernels! {
    FLOW, Params {
        // x0, labels, ldm, z, target, t, labels after dropout, the network's time input.
        FORWARD_PROCESS = forward_process(
            Read, Read, Read, ReadWrite, ReadWrite, ReadWrite, ReadWrite, ReadWrite
        );
        // output, target, ldm, t, gradient, per-sample losses.
        WEIGHTED_LOSS = weighted_loss(Read, Read, Read, Read, ReadWrite, ReadWrite);
        // z, t, ldm, data, velocity.
        ORACLE = oracle_velocity(Read, Read, Read, Read, ReadWrite);
    }
}
const WG: usize = 64;

/// How a training batch is noised: the schedule, what the network predicts (its target), how
/// `t` is drawn, and label dropout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Process {
    /// The noise schedule `(a_t, b_t)`.
    pub schedule: Schedule,
    /// What the network predicts (the regression target).
    pub prediction: Prediction,
    /// How the network's input, time input and output are scaled.
    pub preconditioning: Preconditioning,
    /// How training times are drawn.
    pub sampler: TimeSampler,
    /// `t` is clamped to `[t_min, t_max]` (conversions divide by `a` or `b`).
    pub t_min: f32,
    /// See `t_min`.
    pub t_max: f32,
    /// Resolution shift `alpha` applied to `t` (1: none).
    pub shift: f32,
    /// Probability of replacing a label by the null label (classifier-free guidance).
    pub label_dropout: f32,
    /// The null label's number.
    pub null_label: u32,
    /// The global index of the batch's first sample in the random streams of t, the noise and
    /// label dropout: 0 for a whole batch; a rank of a data-parallel run noises its slice of the
    /// global batch from its first sample on, exactly as one process would.
    pub first_sample: u32,
}

impl Process {
    /// Refuse settings the kernel cannot use: `0 <= label_dropout < 1`,
    /// `0 < t_min < t_max < 1`, `shift > 0`, a valid time sampler, and a preconditioning that
    /// fits the schedule and prediction.
    pub fn validate(&self) -> Result<()> {
        self.sampler.validate()?;
        self.preconditioning
            .check(&self.schedule, self.prediction)?;
        let valid = (0.0..1.0).contains(&self.label_dropout)
            && self.t_min > 0.0
            && self.t_min < self.t_max
            && self.t_max < 1.0
            && self.shift > 0.0;
        if !valid {
            return Err(Error::Config(format!(
                "flow config {self:?}: need 0 <= label_dropout < 1, 0 < t_min < t_max < 1 and shift > 0"
            )));
        }
        Ok(())
    }
}

/// The outputs of [`FlowKernels::forward_process`].
pub struct Noised {
    /// The network's input, `[B, D]`: `z_t = a_t x0 + b_t eps` (`c_in z_t` under EDM's
    /// preconditioning).
    pub z: Tensor,
    /// What the network should output, `[B, D]`.
    pub target: Tensor,
    /// `t` per sample, `[B]`.
    pub t: Tensor,
    /// The network's time input per sample, `[B]`: `t` (`c_noise` under EDM's
    /// preconditioning).
    pub time_input: Tensor,
    /// Labels after dropout to the null label, `[B]`.
    pub labels: Tensor,
}

/// The outputs of [`FlowKernels::loss`].
pub struct WeightedLoss {
    /// `mean_b loss_b`, `[1]`.
    pub loss: Tensor,
    /// Gradient of `loss` with respect to the network output, `[B, D]`.
    pub grad: Tensor,
    /// `loss_b = W_t / D ||output - target||^2`, `[B]` (for logging by t-bin).
    pub per_sample: Tensor,
}

/// The flow kernels on one context: they share the LDM schedule's table, uploaded once.
pub struct FlowKernels {
    /// `log alphabar` of the LDM schedule.
    ldm: Tensor,
}

fn schedule_code(s: &Schedule) -> u32 {
    match s {
        Schedule::RectifiedFlow => shaders::schedule::RF,
        Schedule::Cosine => shaders::schedule::COSINE,
        Schedule::LdmLinear => shaders::schedule::LDM_LINEAR,
        Schedule::Edm { .. } => shaders::schedule::EDM,
    }
}

fn sampler_code(s: &TimeSampler) -> u32 {
    match s {
        TimeSampler::Uniform => shaders::time_sampler::UNIFORM,
        TimeSampler::LogNormal { .. } => shaders::time_sampler::LOGNORM,
        TimeSampler::Mode { .. } => shaders::time_sampler::MODE,
        TimeSampler::CosMap => shaders::time_sampler::COSMAP,
        TimeSampler::UShape { .. } => shaders::time_sampler::USHAPE,
        TimeSampler::Grid { .. } => shaders::time_sampler::GRID,
    }
}

fn prediction_code(p: &Prediction) -> u32 {
    match p {
        Prediction::Velocity => shaders::prediction::VELOCITY,
        Prediction::Eps => shaders::prediction::EPS,
        Prediction::V => shaders::prediction::V,
        Prediction::X0 => shaders::prediction::X0,
    }
}

fn precondition_code(p: &Preconditioning) -> u32 {
    match p {
        Preconditioning::None => shaders::precondition::NONE,
        Preconditioning::Edm => shaders::precondition::EDM,
    }
}

fn weighting_code(w: &Weighting) -> u32 {
    match w {
        Weighting::Velocity => shaders::weighting::VELOCITY,
        Weighting::Eps => shaders::weighting::EPS,
        Weighting::V => shaders::weighting::V,
        Weighting::X0 => shaders::weighting::X0,
        Weighting::Edm { .. } => shaders::weighting::EDM,
    }
}

/// The settings a dispatch computes with; what a kernel does not read stays at its default.
#[derive(Clone, Copy)]
struct Settings {
    schedule: Schedule,
    prediction: Prediction,
    preconditioning: Preconditioning,
    weighting: Weighting,
    sampler: TimeSampler,
}

impl Settings {
    fn of_schedule(schedule: Schedule) -> Settings {
        Settings {
            schedule,
            prediction: Prediction::Velocity,
            preconditioning: Preconditioning::None,
            weighting: Weighting::Velocity,
            sampler: TimeSampler::Uniform,
        }
    }

    fn overrides(&self) -> [(&'static str, f64); 5] {
        [
            ("SCHEDULE", schedule_code(&self.schedule) as f64),
            ("SAMPLER", sampler_code(&self.sampler) as f64),
            ("PRED", prediction_code(&self.prediction) as f64),
            ("WEIGHTING", weighting_code(&self.weighting) as f64),
            ("PRECOND", precondition_code(&self.preconditioning) as f64),
        ]
    }

    fn params(&self, batch: usize, dim: usize) -> Params {
        let (sched_pm, sched_ps) = match self.schedule {
            Schedule::Edm { pm, ps } => (pm as f32, ps as f32),
            _ => (0.0, 1.0),
        };
        let (samp_m, samp_s) = match self.sampler {
            TimeSampler::LogNormal { m, s } => (m as f32, s as f32),
            TimeSampler::Mode { s } => (s as f32, 0.0),
            TimeSampler::UShape { a } => (a as f32, 0.0),
            TimeSampler::Grid { k } => (k as f32, 0.0),
            _ => (0.0, 0.0),
        };
        let (w_pm, w_ps) = match self.weighting {
            Weighting::Edm { pm, ps } => (pm as f32, ps as f32),
            _ => (0.0, 1.0),
        };
        Params {
            batch: batch as u32,
            dim: dim as u32,
            sched_pm,
            sched_ps,
            samp_m,
            samp_s,
            w_pm,
            w_ps,
            ..Params::default()
        }
    }
}

impl FlowKernels {
    /// The kernels on `gpu` (uploads the LDM table).
    pub fn new(gpu: &Gpu) -> Result<FlowKernels> {
        let table: Vec<f32> = ldm_log_alphabar().iter().map(|&v| v as f32).collect();
        let ldm = Tensor::from_slice(gpu, &[table.len()], &table)?;
        Ok(FlowKernels { ldm })
    }

    /// Noise a batch `x0` `[B, D]` at step `step`: draws t (stream `T`) and eps (stream
    /// `EPS`), and returns the network's input (`z_t`, or EDM's `c_in z_t`), the target, `t`, the
    /// network's time input and the labels after dropout (`labels` `[B]`, f32 numbers; without
    /// labels, the null label throughout).
    pub fn forward_process(
        &self,
        x0: &Tensor,
        labels: Option<&Tensor>,
        process: &Process,
        seed: u64,
        step: u32,
    ) -> Result<Noised> {
        ensure_f32("forward_process", x0)?;
        ensure_shape!(
            x0.shape().len() == 2,
            "forward_process takes x0 [B, D], got {:?}",
            x0.shape()
        );
        self.noise(x0, x0.shape()[1], labels, process, seed, step, false)
    }

    /// [`FlowKernels::forward_process`] on coupled pairs (reflow): each row of `pairs`
    /// `[B, 2, D]` holds an example and the noise it is paired with, `[x0_hat | eps]`; t is
    /// drawn as usual, eps is the pair's own.
    pub fn forward_process_pairs(
        &self,
        pairs: &Tensor,
        labels: Option<&Tensor>,
        process: &Process,
        seed: u64,
        step: u32,
    ) -> Result<Noised> {
        ensure_f32("forward_process_pairs", pairs)?;
        ensure_shape!(
            pairs.shape().len() == 3 && pairs.shape()[1] == 2,
            "forward_process_pairs takes pairs [B, 2, D], got {:?}",
            pairs.shape()
        );
        self.noise(pairs, pairs.shape()[2], labels, process, seed, step, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn noise(
        &self,
        x0: &Tensor,
        d: usize,
        labels: Option<&Tensor>,
        process: &Process,
        seed: u64,
        step: u32,
        paired: bool,
    ) -> Result<Noised> {
        process.validate()?;
        let b = x0.shape()[0];
        if let Some(l) = labels {
            ensure_shape!(
                l.shape() == [b],
                "forward_process: labels must be [{b}], got {:?}",
                l.shape()
            );
        }
        let gpu = x0.gpu();
        let none = (labels.is_none())
            .then(|| Tensor::full(gpu, &[b], process.null_label as f32))
            .transpose()?;
        let labels = labels.or(none.as_ref()).expect("labels or the null label");
        let out = Noised {
            z: Tensor::uninit(gpu, &[b, d], DType::F32)?,
            target: Tensor::uninit(gpu, &[b, d], DType::F32)?,
            t: Tensor::uninit(gpu, &[b], DType::F32)?,
            time_input: Tensor::uninit(gpu, &[b], DType::F32)?,
            labels: Tensor::uninit(gpu, &[b], DType::F32)?,
        };
        let settings = Settings {
            prediction: process.prediction,
            preconditioning: process.preconditioning,
            sampler: process.sampler,
            ..Settings::of_schedule(process.schedule)
        };
        let p = Params {
            step,
            seed_lo: seed as u32,
            seed_hi: (seed >> 32) as u32,
            null_label: process.null_label,
            t_min: process.t_min,
            t_max: process.t_max,
            shift: process.shift,
            p_drop: process.label_dropout,
            first_sample: process.first_sample,
            ..settings.params(b, d)
        };
        let mut overrides = settings.overrides().to_vec();
        overrides.push(("PAIRED", paired as u32 as f64));
        gpu.dispatch(
            &FORWARD_PROCESS,
            &overrides,
            &[
                x0.binding(),
                labels.binding(),
                self.ldm.binding(),
                out.z.binding(),
                out.target.binding(),
                out.t.binding(),
                out.labels.binding(),
                out.time_input.binding(),
            ],
            &p,
            (b * d).div_ceil(WG) as u64,
        )?;
        Ok(out)
    }

    /// The weighted loss of a network output against the target at times `t` under
    /// (schedule, prediction, preconditioning, weighting), its gradient with respect to the
    /// output, and the per-sample losses, in one pass (plus the batch mean).
    #[allow(clippy::too_many_arguments)]
    pub fn loss(
        &self,
        output: &Tensor,
        target: &Tensor,
        t: &Tensor,
        schedule: Schedule,
        prediction: Prediction,
        preconditioning: Preconditioning,
        weighting: Weighting,
    ) -> Result<WeightedLoss> {
        preconditioning.check(&schedule, prediction)?;
        ensure_f32("flow loss", output)?;
        ensure_shape!(
            output.shape() == target.shape() && output.shape().len() == 2,
            "flow loss: output {:?} and target {:?} must both be [B, D]",
            output.shape(),
            target.shape()
        );
        let (b, d) = (output.shape()[0], output.shape()[1]);
        ensure_shape!(
            t.shape() == [b],
            "flow loss: t must be [{b}], got {:?}",
            t.shape()
        );
        let gpu = output.gpu();
        let grad = Tensor::uninit(gpu, &[b, d], DType::F32)?;
        let per_sample = Tensor::uninit(gpu, &[b], DType::F32)?;
        let settings = Settings {
            prediction,
            preconditioning,
            weighting,
            ..Settings::of_schedule(schedule)
        };
        gpu.dispatch(
            &WEIGHTED_LOSS,
            &settings.overrides(),
            &[
                output.binding(),
                target.binding(),
                self.ldm.binding(),
                t.binding(),
                grad.binding(),
                per_sample.binding(),
            ],
            &settings.params(b, d),
            b.div_ceil(WG) as u64,
        )?;
        let loss = super::mean_rows(&per_sample.reshape(&[1, b])?)?;
        Ok(WeightedLoss {
            loss,
            grad,
            per_sample,
        })
    }

    /// The exact marginal velocity of the data set `data` `[K, D]` (equal weights) at `z`
    /// `[B, D]`, `t` `[B]`, under `schedule`.
    pub fn oracle_velocity(
        &self,
        z: &Tensor,
        t: &Tensor,
        data: &Tensor,
        schedule: Schedule,
    ) -> Result<Tensor> {
        ensure_f32("oracle_velocity", z)?;
        ensure_shape!(
            z.shape().len() == 2 && data.shape().len() == 2 && z.shape()[1] == data.shape()[1],
            "oracle_velocity: z [B, D] and data [K, D] must share D, got {:?} and {:?}",
            z.shape(),
            data.shape()
        );
        let (b, d, k) = (z.shape()[0], z.shape()[1], data.shape()[0]);
        ensure_shape!(t.shape() == [b], "oracle_velocity: t must be [{b}]");
        let gpu = z.gpu();
        let v = Tensor::uninit(gpu, &[b, d], DType::F32)?;
        let settings = Settings::of_schedule(schedule);
        let p = Params {
            rows: k as u32,
            ..settings.params(b, d)
        };
        gpu.dispatch(
            &ORACLE,
            &settings.overrides(),
            &[
                z.binding(),
                t.binding(),
                self.ldm.binding(),
                data.binding(),
                v.binding(),
            ],
            &p,
            b.div_ceil(WG) as u64,
        )?;
        Ok(v)
    }
}
