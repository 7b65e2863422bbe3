//! Plain supervised fitting: minimise a loss the caller writes on the tape over batches drawn
//! on the GPU from a [`GpuDataset`], with AdamW. The evaluation's classifier is trained this way;
//! a host can fit its own small networks (a classifier, a feature extractor) the same way.
#![warn(missing_docs)]

use crate::autograd::{Tape, Var};
use crate::data::GpuDataset;
use crate::error::{Error, Result};
use crate::optim::{AdamW, AdamWConfig};
use crate::params::Params;
use crate::tensor::Tensor;

/// How to fit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FitOptions {
    /// Optimiser steps.
    pub steps: usize,
    /// Examples per step.
    pub batch: usize,
    /// Seed of the batches (step `i` draws batch `i` of this seed).
    pub seed: u64,
    /// AdamW's learning rate (constant: no warm-up).
    pub lr: f32,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f32,
}

/// Fit `params` for `opts.steps` steps: each step draws a batch `x` `[batch, dim]` with labels
/// `[batch]` (f32 class numbers) from `data`, records `loss(tape, x, labels)` (a scalar on the
/// tape), backpropagates it and takes an AdamW step (gradients clipped at norm 1, no EMA); one
/// submission per step, nothing read back.
pub fn fit(
    params: &Params,
    data: &GpuDataset,
    opts: &FitOptions,
    mut loss: impl FnMut(&mut Tape, &Tensor, &Tensor) -> Result<Var>,
) -> Result<()> {
    if opts.batch == 0 {
        return Err(Error::Config("fit: a batch of 0 examples".into()));
    }
    let gpu = params.values().gpu().clone();
    let config = AdamWConfig {
        lr: opts.lr,
        weight_decay: opts.weight_decay,
        ema_decay: 0.0,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(params, config)?;
    for step in 0..opts.steps {
        params.zero_grads()?;
        let (x, labels) = data.batch(opts.batch, opts.seed, step as u32)?;
        let mut tape = Tape::new();
        let l = loss(&mut tape, &x, &labels)?;
        tape.backward(&l)?;
        opt.step(params)?;
        gpu.flush()?;
    }
    Ok(())
}
