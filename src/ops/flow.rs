//! The flow kernels (`shaders/flow.wgsl`): Philox normals, the fused forward process (t, eps,
//! `z_t`, target and label dropout in one pass), the fused weighted loss (loss, gradient with
//! respect to the network output and per-sample losses in one pass), and the exact marginal
//! velocity of a finite data set. The f64 reference is `crate::flow`; the RNG's is `crate::rng`.

use super::ensure_f32;
use crate::error::{ensure_shape, Error, Result};
use crate::flow::schedule::ldm_log_alphabar;
use crate::flow::{Prediction, Schedule, TimeSampler, Weighting};
use crate::gpu::{Access, Kernel};
use crate::shaders::FLOW;
use crate::tensor::{DType, Tensor};
use crate::Gpu;

const OUTPUTS: &[Access] = &[
    Access::Read,
    Access::Read,
    Access::Read,
    Access::ReadWrite,
    Access::ReadWrite,
    Access::ReadWrite,
    Access::ReadWrite,
];
static RANDOM_NORMAL: Kernel = Kernel {
    shader: &FLOW,
    entry: "random_normal",
    access: OUTPUTS,
};
static FORWARD_PROCESS: Kernel = Kernel {
    shader: &FLOW,
    entry: "forward_process",
    access: OUTPUTS,
};
static WEIGHTED_LOSS: Kernel = Kernel {
    shader: &FLOW,
    entry: "weighted_loss",
    access: OUTPUTS,
};
static GATHER: Kernel = Kernel {
    shader: &FLOW,
    entry: "gather_batch",
    access: OUTPUTS,
};
static ORACLE: Kernel = Kernel {
    shader: &FLOW,
    entry: "oracle_velocity",
    access: &[
        Access::Read,
        Access::Read,
        Access::Read,
        Access::ReadWrite,
        Access::Read,
    ],
};
const WG: usize = 64;

/// Random-number streams (the counter's third word).
pub const STREAM_T: u32 = 0;
pub const STREAM_EPS: u32 = 1;
pub const STREAM_BATCH: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    dim: u32,
    step: u32,
    stream: u32,
    seed_lo: u32,
    seed_hi: u32,
    null_label: u32,
    rows: u32,
    t_min: f32,
    t_max: f32,
    shift: f32,
    p_drop: f32,
    sched_pm: f32,
    sched_ps: f32,
    samp_m: f32,
    samp_s: f32,
    w_pm: f32,
    w_ps: f32,
    _pad: [u32; 2],
}

/// Everything that defines a training objective.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlowConfig {
    pub schedule: Schedule,
    pub prediction: Prediction,
    pub weighting: Weighting,
    pub sampler: TimeSampler,
    /// Training `t` is clamped to `[t_min, t_max]` (conversions divide by `a` or `b`).
    pub t_min: f32,
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

/// The outputs of [`FlowKernels::forward_process`].
pub struct Noised {
    /// `z_t = a_t x0 + b_t eps`, `[B, D]`.
    pub z: Tensor,
    /// What the network should output, `[B, D]`.
    pub target: Tensor,
    /// `t` per sample, `[B]`.
    pub t: Tensor,
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

/// The flow kernels for one configuration.
pub struct FlowKernels {
    pub config: FlowConfig,
    /// `log alphabar` of the LDM schedule, uploaded once.
    ldm: Tensor,
}

fn code_schedule(s: &Schedule) -> f64 {
    match s {
        Schedule::RectifiedFlow => 0.0,
        Schedule::Cosine => 1.0,
        Schedule::LdmLinear => 2.0,
        Schedule::Edm { .. } => 3.0,
    }
}

/// Placeholders for the read-write slots a kernel leaves unwritten (writable bindings must not
/// alias, so each needs a buffer of its own; the pool makes them free after the first step).
fn unused_outputs(gpu: &Gpu) -> Result<[Tensor; 3]> {
    let one = || Tensor::uninit(gpu, &[1], DType::F32);
    Ok([one()?, one()?, one()?])
}

impl FlowKernels {
    pub fn new(gpu: &Gpu, config: FlowConfig) -> Result<FlowKernels> {
        config.sampler.validate()?;
        let valid = (0.0..1.0).contains(&config.label_dropout)
            && config.t_min > 0.0
            && config.t_min < config.t_max
            && config.t_max < 1.0
            && config.shift > 0.0;
        if !valid {
            return Err(Error::Config(format!(
                "flow config {config:?}: need 0 <= label_dropout < 1, 0 < t_min < t_max < 1 and shift > 0"
            )));
        }
        let table: Vec<f32> = ldm_log_alphabar().iter().map(|&v| v as f32).collect();
        let ldm = Tensor::from_slice(gpu, &[table.len()], &table)?;
        Ok(FlowKernels { config, ldm })
    }

    fn params(&self, batch: usize, dim: usize, seed: u64, step: u32) -> Params {
        let c = &self.config;
        let (sched_pm, sched_ps) = match c.schedule {
            Schedule::Edm { pm, ps } => (pm as f32, ps as f32),
            _ => (0.0, 1.0),
        };
        let (samp_m, samp_s) = match c.sampler {
            TimeSampler::LogNormal { m, s } => (m as f32, s as f32),
            TimeSampler::Mode { s } => (s as f32, 0.0),
            _ => (0.0, 0.0),
        };
        let (w_pm, w_ps) = match c.weighting {
            Weighting::Edm { pm, ps } => (pm as f32, ps as f32),
            _ => (0.0, 1.0),
        };
        Params {
            batch: batch as u32,
            dim: dim as u32,
            step,
            seed_lo: seed as u32,
            seed_hi: (seed >> 32) as u32,
            null_label: c.null_label,
            t_min: c.t_min,
            t_max: c.t_max,
            shift: c.shift,
            p_drop: c.label_dropout,
            sched_pm,
            sched_ps,
            samp_m,
            samp_s,
            w_pm,
            w_ps,
            ..Default::default()
        }
    }

    fn overrides(&self) -> [(&'static str, f64); 4] {
        let c = &self.config;
        let sampler = match c.sampler {
            TimeSampler::Uniform => 0.0,
            TimeSampler::LogNormal { .. } => 1.0,
            TimeSampler::Mode { .. } => 2.0,
            TimeSampler::CosMap => 3.0,
        };
        let pred = match c.prediction {
            Prediction::Velocity => 0.0,
            Prediction::Eps => 1.0,
            Prediction::V => 2.0,
            Prediction::X0 => 3.0,
        };
        let weighting = match c.weighting {
            Weighting::Velocity => 0.0,
            Weighting::Eps => 1.0,
            Weighting::V => 2.0,
            Weighting::X0 => 3.0,
            Weighting::Edm { .. } => 4.0,
        };
        [
            ("SCHEDULE", code_schedule(&c.schedule)),
            ("SAMPLER", sampler),
            ("PRED", pred),
            ("WEIGHTING", weighting),
        ]
    }

    /// Standard normals `[n]` from stream `stream` of (seed, step): element `i` uses counter
    /// `(i, step, stream, 0)`.
    pub fn random_normal(
        &self,
        gpu: &Gpu,
        n: usize,
        seed: u64,
        step: u32,
        stream: u32,
    ) -> Result<Tensor> {
        let out = Tensor::uninit(gpu, &[n], DType::F32)?;
        let mut p = self.params(1, n, seed, step);
        p.stream = stream;
        let d = (gpu.dummy(), 0, 4);
        let [s1, s2, s3] = unused_outputs(gpu)?;
        gpu.dispatch(
            &RANDOM_NORMAL,
            &self.overrides(),
            &[
                d,
                d,
                self.ldm.binding(),
                out.binding(),
                s1.binding(),
                s2.binding(),
                s3.binding(),
            ],
            &p,
            n.div_ceil(WG) as u64,
        )?;
        Ok(out)
    }

    /// A batch of `batch` rows of `data` `[N, D]` (and of `labels` `[N]`), drawn uniformly with
    /// replacement on the GPU from stream 2 of (seed, step).
    pub fn gather_batch(
        &self,
        data: &Tensor,
        labels: &Tensor,
        batch: usize,
        seed: u64,
        step: u32,
    ) -> Result<(Tensor, Tensor)> {
        ensure_f32("gather_batch", data)?;
        ensure_shape!(
            data.shape().len() == 2 && data.shape()[0] > 0,
            "gather_batch takes data [N, D], got {:?}",
            data.shape()
        );
        let (n, d) = (data.shape()[0], data.shape()[1]);
        ensure_shape!(
            labels.shape() == [n],
            "gather_batch: labels must be [{n}], got {:?}",
            labels.shape()
        );
        let gpu = data.gpu();
        let x = Tensor::uninit(gpu, &[batch, d], DType::F32)?;
        let l = Tensor::uninit(gpu, &[batch], DType::F32)?;
        let [s1, s2, _] = unused_outputs(gpu)?;
        let mut p = self.params(batch, d, seed, step);
        p.rows = n as u32;
        gpu.dispatch(
            &GATHER,
            &self.overrides(),
            &[
                data.binding(),
                labels.binding(),
                self.ldm.binding(),
                x.binding(),
                l.binding(),
                s1.binding(),
                s2.binding(),
            ],
            &p,
            (batch * d).div_ceil(WG) as u64,
        )?;
        Ok((x, l))
    }

    /// Noise a batch `x0` `[B, D]` at step `step`: draws t (stream 0) and eps (stream 1), and
    /// returns `z_t`, the target, `t` and the labels after dropout (`labels` `[B]`, f32 numbers;
    /// without labels, the null label throughout).
    pub fn forward_process(
        &self,
        x0: &Tensor,
        labels: Option<&Tensor>,
        seed: u64,
        step: u32,
    ) -> Result<Noised> {
        ensure_f32("forward_process", x0)?;
        ensure_shape!(
            x0.shape().len() == 2,
            "forward_process takes x0 [B, D], got {:?}",
            x0.shape()
        );
        let (b, d) = (x0.shape()[0], x0.shape()[1]);
        if let Some(l) = labels {
            ensure_shape!(
                l.shape() == [b],
                "forward_process: labels must be [{b}], got {:?}",
                l.shape()
            );
        }
        let gpu = x0.gpu();
        let none = (labels.is_none())
            .then(|| Tensor::full(gpu, &[b], self.config.null_label as f32))
            .transpose()?;
        let labels = labels.or(none.as_ref()).expect("labels or the null label");
        let out = Noised {
            z: Tensor::uninit(gpu, &[b, d], DType::F32)?,
            target: Tensor::uninit(gpu, &[b, d], DType::F32)?,
            t: Tensor::uninit(gpu, &[b], DType::F32)?,
            labels: Tensor::uninit(gpu, &[b], DType::F32)?,
        };
        let p = self.params(b, d, seed, step);
        gpu.dispatch(
            &FORWARD_PROCESS,
            &self.overrides(),
            &[
                x0.binding(),
                labels.binding(),
                self.ldm.binding(),
                out.z.binding(),
                out.target.binding(),
                out.t.binding(),
                out.labels.binding(),
            ],
            &p,
            (b * d).div_ceil(WG) as u64,
        )?;
        Ok(out)
    }

    /// The weighted loss of a network output against the target at times `t`, its gradient with
    /// respect to the output, and the per-sample losses, in one pass (plus the batch mean).
    pub fn loss(&self, output: &Tensor, target: &Tensor, t: &Tensor) -> Result<WeightedLoss> {
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
        // t takes the read-write slot the forward process writes it through (only read here).
        let [labels_unused, _, _] = unused_outputs(gpu)?;
        let p = self.params(b, d, 0, 0);
        gpu.dispatch(
            &WEIGHTED_LOSS,
            &self.overrides(),
            &[
                output.binding(),
                target.binding(),
                self.ldm.binding(),
                grad.binding(),
                per_sample.binding(),
                t.binding(),
                labels_unused.binding(),
            ],
            &p,
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
    /// `[B, D]`, `t` `[B]`, under this configuration's schedule.
    pub fn oracle_velocity(&self, z: &Tensor, t: &Tensor, data: &Tensor) -> Result<Tensor> {
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
        let mut p = self.params(b, d, 0, 0);
        p.rows = k as u32;
        gpu.dispatch(
            &ORACLE,
            &self.overrides(),
            &[
                z.binding(),
                t.binding(),
                self.ldm.binding(),
                v.binding(),
                data.binding(),
            ],
            &p,
            b.div_ceil(WG) as u64,
        )?;
        Ok(v)
    }
}
