//! The optimiser (`shaders/optim.wgsl`): global gradient norm, clipping, AdamW and the EMA of
//! the weights over flat buffers, without reading anything back.

use super::ensure_f32;
use crate::error::{ensure_shape, Result};
use crate::gpu::{kernel_params, kernels};
use crate::shaders::OPTIM;
use crate::tensor::{DType, Tensor};

/// Workgroups of the first norm pass. Each of its invocations sums a grid-stride share, and the
/// second pass sums their partial sums.
const PARTS: usize = 64;
/// Invocations per workgroup of the norm passes: `WG` in optim.wgsl.
const NORM_WG: usize = 256;

kernel_params! {
    struct Params {
        n: u32,
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        bc1: f32,
        bc2: f32,
        ema_decay: f32,
        max_norm: f32,
        parts: u32,
        _pad: u32,
    }
}

kernels! {
    OPTIM, Params {
        NORM_PARTIAL = norm_partial(Read, ReadWrite);
        NORM_FINISH = norm_finish(Read, ReadWrite);
        ADAMW = adamw(Read, Read, ReadWrite, ReadWrite, ReadWrite, ReadWrite);
    }
}

/// AdamW hyper-parameters for one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    /// Learning rate for this step (after warm-up).
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Clip the global gradient norm to this (0 or less: no clipping).
    pub max_norm: f32,
    /// EMA decay (0: no EMA update).
    pub ema_decay: f32,
    /// 1-based step number, for the bias corrections.
    pub step: u64,
}

/// Global norm of `grad`, written to `stats[0]`, and the clip factor `min(1, max_norm / norm)`
/// to `stats[1]` (1 when `max_norm <= 0`). `stats` is a 2-element tensor.
pub fn grad_norm(grad: &Tensor, max_norm: f32, stats: &Tensor) -> Result<()> {
    ensure_f32("grad_norm", grad)?;
    ensure_shape!(stats.numel() == 2, "grad_norm: stats must have 2 elements");
    let gpu = grad.gpu();
    let partial = Tensor::uninit(gpu, &[PARTS * NORM_WG], DType::F32)?;
    let p = Params {
        n: grad.numel() as u32,
        max_norm,
        parts: (PARTS * NORM_WG) as u32,
        ..Default::default()
    };
    gpu.dispatch(
        &NORM_PARTIAL,
        &[],
        &[grad.binding(), partial.binding()],
        &p,
        PARTS as u64,
    )?;
    gpu.dispatch(
        &NORM_FINISH,
        &[],
        &[partial.binding(), stats.binding()],
        &p,
        1,
    )
}

/// One AdamW step over flat buffers (all of `param`'s shape), with the gradient scaled by the
/// clip factor in `stats[1]` (see [`grad_norm`]) and, when `ema_decay > 0`, the EMA updated from
/// the new weights. One dispatch.
pub fn adamw(
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    ema: &Tensor,
    stats: &Tensor,
    s: &AdamWStep,
) -> Result<()> {
    for t in [param, grad, m, v, ema] {
        ensure_f32("adamw", t)?;
        ensure_shape!(
            t.numel() == param.numel(),
            "adamw: every buffer must hold {} elements",
            param.numel()
        );
    }
    ensure_shape!(s.step >= 1, "adamw: steps count from 1");
    let p = Params {
        n: param.numel() as u32,
        lr: s.lr,
        beta1: s.beta1,
        beta2: s.beta2,
        eps: s.eps,
        weight_decay: s.weight_decay,
        bc1: 1.0 - (s.beta1 as f64).powi(s.step.min(i32::MAX as u64) as i32) as f32,
        bc2: 1.0 - (s.beta2 as f64).powi(s.step.min(i32::MAX as u64) as i32) as f32,
        ema_decay: s.ema_decay,
        max_norm: s.max_norm,
        parts: PARTS as u32,
        _pad: 0,
    };
    let bindings = [
        grad.binding(),
        stats.binding(),
        param.binding(),
        m.binding(),
        v.binding(),
        ema.binding(),
    ];
    param.gpu().dispatch(
        &ADAMW,
        &[],
        &bindings,
        &p,
        param.numel().div_ceil(256 * 4) as u64,
    )
}
