//! Embeddings (`shaders/embed.wgsl`), forward and backward: the sinusoidal timestep embedding
//! and a table lookup (class labels, with a null class as one more row).

use super::ensure_f32;
use crate::error::{ensure_shape, Result};
use crate::gpu::{kernel_params, kernels, Binding};
use crate::shaders::EMBED;
use crate::tensor::{DType, Tensor};

const WG: usize = 64;

kernel_params! {
    struct Params {
        batch: u32,
        dim: u32,
        rows: u32,
        scale: f32,
        max_period: f32,
        _pad: [u32; 3],
    }
}

kernels! {
    // t or labels, the table or dy, out.
    EMBED, Params {
        TIMESTEP = timestep(Read, Unused, ReadWrite);
        TIMESTEP_BACKWARD = timestep_backward(Read, Read, ReadWrite);
        LOOKUP = lookup(Read, Read, ReadWrite);
        LOOKUP_BACKWARD = lookup_backward(Read, Read, ReadWrite);
    }
}

impl Params {
    fn lookup(batch: usize, rows: usize, dim: usize) -> Params {
        Params {
            batch: batch as u32,
            dim: dim as u32,
            rows: rows as u32,
            scale: 0.0,
            max_period: 0.0,
            _pad: [0; 3],
        }
    }

    fn timestep(batch: usize, dim: usize, scale: f32) -> Params {
        Params {
            scale,
            max_period: MAX_PERIOD,
            ..Params::lookup(batch, 0, dim)
        }
    }
}

/// Frequencies per invocation of the timestep kernel (`FREQS` in embed.wgsl).
const TIMESTEP_FREQS: usize = 8;

/// Frequencies run from 1 down to `1 / MAX_PERIOD` (as in DiT).
pub const MAX_PERIOD: f32 = 10000.0;

/// `[B] -> [B, dim]`: `cos(scale t f_i)` then `sin(scale t f_i)`, `f_i = MAX_PERIOD^(-i / half)`.
pub fn timestep_embedding(t: &Tensor, dim: usize, scale: f32) -> Result<Tensor> {
    ensure_f32("timestep_embedding", t)?;
    ensure_shape!(
        t.shape().len() == 1,
        "timestep_embedding takes t of shape [B], got {:?}",
        t.shape()
    );
    ensure_shape!(dim >= 2, "timestep_embedding needs dim >= 2, got {dim}");
    let b = t.numel();
    let gpu = t.gpu();
    let out = Tensor::uninit(gpu, &[b, dim], DType::F32)?;
    let p = Params::timestep(b, dim, scale);
    gpu.dispatch(
        &TIMESTEP,
        &[],
        &[t.binding(), Binding::Unused, out.binding()],
        &p,
        (b * (dim / 2).div_ceil(TIMESTEP_FREQS).max(1)).div_ceil(WG) as u64,
    )?;
    Ok(out)
}

/// Gradient of [`timestep_embedding`] with respect to `t`: `[B]`.
pub fn timestep_embedding_backward(t: &Tensor, dy: &Tensor, scale: f32) -> Result<Tensor> {
    ensure_f32("timestep_embedding_backward", dy)?;
    let b = t.numel();
    ensure_shape!(
        dy.shape().len() == 2 && dy.shape()[0] == b,
        "timestep_embedding_backward: dy must be [{b}, dim]"
    );
    let dim = dy.shape()[1];
    let gpu = t.gpu();
    let out = Tensor::uninit(gpu, &[b], DType::F32)?;
    let p = Params::timestep(b, dim, scale);
    gpu.dispatch(
        &TIMESTEP_BACKWARD,
        &[],
        &[t.binding(), dy.binding(), out.binding()],
        &p,
        b.div_ceil(WG) as u64,
    )?;
    Ok(out)
}

/// `table[labels]`: labels `[B]` hold row numbers as f32 (checked on upload by the caller);
/// the result is `[B, dim]`.
pub fn embedding(labels: &Tensor, table: &Tensor) -> Result<Tensor> {
    ensure_f32("embedding", table)?;
    ensure_shape!(
        labels.shape().len() == 1,
        "embedding takes labels of shape [B], got {:?}",
        labels.shape()
    );
    ensure_shape!(
        table.shape().len() == 2,
        "embedding table must be [rows, dim], got {:?}",
        table.shape()
    );
    let (b, rows, dim) = (labels.numel(), table.shape()[0], table.shape()[1]);
    let gpu = table.gpu();
    let out = Tensor::uninit(gpu, &[b, dim], DType::F32)?;
    let p = Params::lookup(b, rows, dim);
    gpu.dispatch(
        &LOOKUP,
        &[],
        &[labels.binding(), table.binding(), out.binding()],
        &p,
        (b * dim).div_ceil(WG) as u64,
    )?;
    Ok(out)
}

/// Gradient of [`embedding`], added into `dtable` (`[rows, dim]`, e.g. a view of the flat
/// gradient buffer).
pub fn embedding_backward(labels: &Tensor, dy: &Tensor, dtable: &Tensor) -> Result<()> {
    ensure_f32("embedding_backward", dtable)?;
    ensure_shape!(
        dtable.shape().len() == 2,
        "embedding_backward: dtable must be [rows, dim]"
    );
    let (b, rows, dim) = (labels.numel(), dtable.shape()[0], dtable.shape()[1]);
    ensure_shape!(
        dy.shape() == [b, dim],
        "embedding_backward: dy must be [{b}, {dim}], got {:?}",
        dy.shape()
    );
    let gpu = dtable.gpu();
    let p = Params::lookup(b, rows, dim);
    gpu.dispatch(
        &LOOKUP_BACKWARD,
        &[],
        &[labels.binding(), dy.binding(), dtable.binding()],
        &p,
        (rows * dim).div_ceil(WG) as u64,
    )
}
