//! The optimiser: AdamW with learning-rate warm-up, global gradient-norm clipping and an EMA of
//! the weights, over the flat parameter buffer. A step records three dispatches (two for the
//! norm, one for everything else) and reads nothing back; the norm of the last step stays on the
//! GPU for whoever wants to log it.

use crate::error::{Error, Result};
use crate::ops::{self, AdamWStep};
use crate::params::Params;
use crate::tensor::Tensor;

/// AdamW settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Peak learning rate, reached after `warmup_steps`.
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled weight decay (applied to every parameter).
    pub weight_decay: f32,
    /// Clip the global gradient norm to this; 0 turns clipping off.
    pub max_grad_norm: f32,
    /// Linear warm-up from `lr / warmup_steps` to `lr`.
    pub warmup_steps: u64,
    /// EMA decay; 0 turns the EMA off. It warms up as `min(ema_decay, (1 + t) / (10 + t))` at
    /// step `t`, so that the average forgets the initial weights early in training.
    pub ema_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            warmup_steps: 0,
            ema_decay: 0.999,
        }
    }
}

/// AdamW state: first and second moments, the EMA weights, and the step count.
pub struct AdamW {
    pub config: AdamWConfig,
    m: Tensor,
    v: Tensor,
    ema: Tensor,
    /// `[norm, clip factor]` of the last step.
    stats: Tensor,
    step: u64,
}

impl AdamW {
    /// Fresh state for `params`: zero moments, EMA equal to the current weights.
    pub fn new(params: &Params, config: AdamWConfig) -> Result<AdamW> {
        let in_unit = |x: f32| (0.0..1.0).contains(&x);
        let valid = config.lr > 0.0
            && in_unit(config.beta1)
            && in_unit(config.beta2)
            && in_unit(config.ema_decay)
            && config.eps > 0.0;
        if !valid {
            return Err(Error::Config(format!(
                "AdamW needs lr > 0, eps > 0 and beta1, beta2 and ema_decay in [0, 1); got {config:?}"
            )));
        }
        let gpu = params.values().gpu();
        let n = params.values().numel();
        Ok(AdamW {
            config,
            m: Tensor::zeros(gpu, &[n])?,
            v: Tensor::zeros(gpu, &[n])?,
            ema: ops::copy(params.values())?,
            stats: Tensor::zeros(gpu, &[2])?,
            step: 0,
        })
    }

    /// The learning rate at 1-based step `step` (linear warm-up, then constant).
    pub fn lr_at(&self, step: u64) -> f32 {
        let w = self.config.warmup_steps;
        if w == 0 || step >= w {
            self.config.lr
        } else {
            self.config.lr * step as f32 / w as f32
        }
    }

    /// One step from the gradients in `params.grads()`: norm, clip, AdamW, EMA.
    pub fn step(&mut self, params: &Params) -> Result<()> {
        self.step += 1;
        let c = &self.config;
        ops::grad_norm(params.grads()?, c.max_grad_norm, &self.stats)?;
        let s = AdamWStep {
            lr: self.lr_at(self.step),
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            max_norm: c.max_grad_norm,
            ema_decay: self.ema_decay_at(self.step),
            step: self.step,
        };
        ops::adamw(
            params.values(),
            params.grads()?,
            &self.m,
            &self.v,
            &self.ema,
            &self.stats,
            &s,
        )
    }

    /// The EMA decay at 1-based step `step` (warmed up; 0 when the EMA is off).
    pub fn ema_decay_at(&self, step: u64) -> f32 {
        let warm = (1.0 + step as f64) / (10.0 + step as f64);
        (self.config.ema_decay as f64).min(warm) as f32
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }
    /// `[gradient norm before clipping, clip factor]` of the last step, on the GPU.
    pub fn stats(&self) -> &Tensor {
        &self.stats
    }
    /// The EMA of the weights (same layout as the parameters).
    pub fn ema(&self) -> &Tensor {
        &self.ema
    }
    /// First and second moments (same layout as the parameters).
    pub fn moments(&self) -> (&Tensor, &Tensor) {
        (&self.m, &self.v)
    }
    /// Restore a saved state (a checkpoint's moments, EMA and step count).
    pub fn restore(&mut self, m: &[f32], v: &[f32], ema: &[f32], step: u64) -> Result<()> {
        self.m.write(m)?;
        self.v.write(v)?;
        self.ema.write(ema)?;
        self.step = step;
        Ok(())
    }
}
