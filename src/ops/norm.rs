//! Row-wise normalisations over the last dimension (`shaders/norm.wgsl`), forward and backward:
//! LayerNorm (with or without affine scale and shift), RMSNorm with a learnable scale (QK-norm),
//! and softmax. Forward returns the per-row statistics the backward needs (`[rows, 2]`).

use super::{
    bind, ensure_f32,
    reduce::{sum_tokens, sum_tokens_into, sum_tokens_pair_into},
};
use crate::error::{ensure_shape, Result};
use crate::gpu::{kernel_params, kernels, Access, Kernel};
use crate::shaders::NORM;
use crate::tensor::{DType, Tensor};

kernel_params! {
    struct Params {
        rows: u32,
        cols: u32,
        eps: f32,
        /// 1: LayerNorm has gamma and beta.
        affine: u32,
        /// QK-norm: heads per row.
        heads: u32,
        _pad: [u32; 3],
    }
}

kernels! {
    NORM, Params {
        // Forward: x, gamma, beta, y, stats.
        LAYER_NORM = layer_norm(Read, Read, Read, ReadWrite, ReadWrite);
        RMS_NORM = rms_norm(Read, Read, Unused, ReadWrite, ReadWrite);
        SOFTMAX = softmax(Read, Unused, Unused, ReadWrite, ReadWrite);
        // Backward: x, dy, gamma, stats, dx, dy * xhat.
        LAYER_NORM_BACKWARD = layer_norm_backward(Read, Read, Unused, Read, ReadWrite, Unused);
        LAYER_NORM_BACKWARD_AFFINE =
            layer_norm_backward_affine(Read, Read, Read, Read, ReadWrite, ReadWrite);
        RMS_NORM_BACKWARD = rms_norm_backward(Read, Read, Read, Read, ReadWrite, ReadWrite);
        SOFTMAX_BACKWARD = softmax_backward(Read, Read, Unused, Unused, ReadWrite, Unused);
        // QK-norm: qkv, gq, gk, y, stats; backward: qkv, dy, gq, gk, stats, dx, and the
        // products of queries and of keys.
        QK_NORM = qk_norm(Read, Read, Read, ReadWrite, ReadWrite);
        QK_NORM_BACKWARD =
            qk_norm_backward(Read, Read, Read, Read, Read, ReadWrite, ReadWrite, ReadWrite);
    }
}
const WG: usize = 64;

/// (rows, cols) of a tensor normalised over its last dimension.
fn rows_cols(op: &str, x: &Tensor) -> Result<(usize, usize)> {
    ensure_f32(op, x)?;
    ensure_shape!(
        !x.shape().is_empty() && x.last_dim() > 0,
        "{op} needs a non-empty last dimension, got {:?}",
        x.shape()
    );
    Ok((x.numel() / x.last_dim(), x.last_dim()))
}

fn check_vector(op: &str, what: &str, v: &Tensor, cols: usize) -> Result<()> {
    ensure_f32(op, v)?;
    ensure_shape!(
        v.shape() == [cols],
        "{op}: {what} must have shape [{cols}], got {:?}",
        v.shape()
    );
    Ok(())
}

fn forward(
    kernel: &Kernel,
    x: &Tensor,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    let (rows, cols) = rows_cols(kernel.entry, x)?;
    let gpu = x.gpu();
    let y = Tensor::uninit(gpu, x.shape(), DType::F32)?;
    let stats = Tensor::uninit(gpu, &[rows, 2], DType::F32)?;
    let p = Params {
        rows: rows as u32,
        cols: cols as u32,
        eps,
        affine: gamma.is_some() as u32,
        ..Params::default()
    };
    let given = [Some(x), gamma, beta, Some(&y), Some(&stats)];
    gpu.dispatch(
        kernel,
        &[],
        &bind(kernel, gpu, given),
        &p,
        rows.div_ceil(WG) as u64,
    )?;
    Ok((y, stats))
}

/// Runs a backward kernel; returns dx and, where the kernel writes them, the per-row products
/// `dy * xhat`.
fn backward(
    kernel: &Kernel,
    x: &Tensor,
    dy: &Tensor,
    gamma: Option<&Tensor>,
    stats: Option<&Tensor>,
) -> Result<(Tensor, Option<Tensor>)> {
    let (rows, cols) = rows_cols(kernel.entry, x)?;
    ensure_f32(kernel.entry, dy)?;
    ensure_shape!(
        dy.shape() == x.shape(),
        "{}: gradient shape {:?} differs from the input's {:?}",
        kernel.entry,
        dy.shape(),
        x.shape()
    );
    if let Some(s) = stats {
        ensure_shape!(
            s.shape() == [rows, 2],
            "{}: stats must be [{rows}, 2]",
            kernel.entry
        );
    }
    let gpu = x.gpu();
    let dx = Tensor::uninit(gpu, x.shape(), DType::F32)?;
    let dy_xhat = (kernel.access[5] != Access::Unused)
        .then(|| Tensor::uninit(gpu, x.shape(), DType::F32))
        .transpose()?;
    let p = Params {
        rows: rows as u32,
        cols: cols as u32,
        ..Params::default()
    };
    let given = [Some(x), Some(dy), gamma, stats, Some(&dx), dy_xhat.as_ref()];
    gpu.dispatch(
        kernel,
        &[],
        &bind(kernel, gpu, given),
        &p,
        rows.div_ceil(WG) as u64,
    )?;
    Ok((dx, dy_xhat))
}

/// `[.., C] -> [rows, C]` for column sums.
fn as_rows(t: &Tensor) -> Result<Tensor> {
    t.reshape(&[t.numel() / t.last_dim(), t.last_dim()])
}

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps)`, then `* gamma + beta` when
/// `affine` is given. Returns the output and the statistics for [`layer_norm_backward`].
pub fn layer_norm(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    if let Some((g, b)) = affine {
        check_vector("layer_norm", "gamma", g, x.last_dim())?;
        check_vector("layer_norm", "beta", b, x.last_dim())?;
    }
    forward(
        &LAYER_NORM,
        x,
        affine.map(|a| a.0),
        affine.map(|a| a.1),
        eps,
    )
}

/// Gradients of [`layer_norm`]: `dx`, and `(dgamma, dbeta)` when it was affine.
pub fn layer_norm_backward(
    x: &Tensor,
    stats: &Tensor,
    gamma: Option<&Tensor>,
    dy: &Tensor,
) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
    if let Some(g) = gamma {
        check_vector("layer_norm_backward", "gamma", g, x.last_dim())?;
    }
    let kernel = match gamma {
        Some(_) => &LAYER_NORM_BACKWARD_AFFINE,
        None => &LAYER_NORM_BACKWARD,
    };
    let (dx, dy_xhat) = backward(kernel, x, dy, gamma, Some(stats))?;
    let affine = match dy_xhat {
        Some(dy_xhat) => Some((sum_tokens(&as_rows(&dy_xhat)?)?, sum_tokens(&as_rows(dy)?)?)),
        None => None,
    };
    Ok((dx, affine))
}

/// RMSNorm with a learnable scale: `x / sqrt(mean(x^2) + eps) * gamma`.
pub fn rms_norm(x: &Tensor, gamma: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    check_vector("rms_norm", "gamma", gamma, x.last_dim())?;
    forward(&RMS_NORM, x, Some(gamma), None, eps)
}

/// Gradients of [`rms_norm`]: `(dx, dgamma)`.
pub fn rms_norm_backward(
    x: &Tensor,
    stats: &Tensor,
    gamma: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor)> {
    check_vector("rms_norm_backward", "gamma", gamma, x.last_dim())?;
    let (dx, dy_xhat) = backward(&RMS_NORM_BACKWARD, x, dy, Some(gamma), Some(stats))?;
    let dy_xhat = dy_xhat.expect("rms_norm_backward writes dy * xhat");
    Ok((dx, sum_tokens(&as_rows(&dy_xhat)?)?))
}

/// Softmax over the last dimension.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    Ok(forward(&SOFTMAX, x, None, None, 0.0)?.0)
}

/// Gradient of [`softmax`] from its output `y`: `y * (dy - sum(dy * y))`.
pub fn softmax_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    Ok(backward(&SOFTMAX_BACKWARD, y, dy, None, None)?.0)
}

/// (rows, head dimension) of a qkv tensor `[.., 3 H D]` with `heads` heads and scales `[D]`.
fn qk_dims(
    op: &str,
    qkv: &Tensor,
    heads: usize,
    gq: &Tensor,
    gk: &Tensor,
) -> Result<(usize, usize)> {
    ensure_f32(op, qkv)?;
    let w3 = qkv.last_dim();
    ensure_shape!(
        !qkv.shape().is_empty() && heads > 0 && w3 > 0 && w3.is_multiple_of(3 * heads),
        "{op} takes qkv [.., 3 * heads * head_dim] with {heads} heads, got {:?}",
        qkv.shape()
    );
    let d = w3 / (3 * heads);
    check_vector(op, "the query scale", gq, d)?;
    check_vector(op, "the key scale", gk, d)?;
    Ok((qkv.numel() / w3, d))
}

/// QK-norm in place of a slice: RMSNorm (scale `gq`, `gk` `[D]`) of every head's query and key
/// in `qkv` `[.., 3 H D]` (per row: all queries, all keys, all values), values passed on. One
/// dispatch; returns the normalised qkv (same layout) and `[rows H, 2]` statistics.
pub fn qk_norm(
    qkv: &Tensor,
    heads: usize,
    gq: &Tensor,
    gk: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    let (rows, d) = qk_dims("qk_norm", qkv, heads, gq, gk)?;
    let gpu = qkv.gpu();
    let y = Tensor::uninit(gpu, qkv.shape(), DType::F32)?;
    let stats = Tensor::uninit(gpu, &[rows * heads, 2], DType::F32)?;
    let p = Params {
        rows: rows as u32,
        cols: d as u32,
        eps,
        heads: heads as u32,
        ..Params::default()
    };
    gpu.dispatch(
        &QK_NORM,
        &[],
        &[
            qkv.binding(),
            gq.binding(),
            gk.binding(),
            y.binding(),
            stats.binding(),
        ],
        &p,
        (rows * heads).div_ceil(WG) as u64,
    )?;
    Ok((y, stats))
}

/// Gradients of [`qk_norm`]: returns `d qkv` and adds the gradients of the scales into `d_gq`
/// and `d_gk` (`[D]` each; a parameter's gradient, or zeros).
#[allow(clippy::too_many_arguments)]
pub fn qk_norm_backward(
    qkv: &Tensor,
    stats: &Tensor,
    heads: usize,
    gq: &Tensor,
    gk: &Tensor,
    dy: &Tensor,
    d_gq: &Tensor,
    d_gk: &Tensor,
) -> Result<Tensor> {
    let (rows, d) = qk_dims("qk_norm_backward", qkv, heads, gq, gk)?;
    ensure_shape!(
        dy.shape() == qkv.shape() && stats.shape() == [rows * heads, 2],
        "qk_norm_backward: dy {:?} must match qkv {:?}, stats {:?} be [{}, 2]",
        dy.shape(),
        qkv.shape(),
        stats.shape(),
        rows * heads
    );
    let gpu = qkv.gpu();
    let dx = Tensor::uninit(gpu, qkv.shape(), DType::F32)?;
    let prod_q = Tensor::uninit(gpu, &[rows * heads, d], DType::F32)?;
    let prod_k = Tensor::uninit(gpu, &[rows * heads, d], DType::F32)?;
    let p = Params {
        rows: rows as u32,
        cols: d as u32,
        heads: heads as u32,
        ..Params::default()
    };
    gpu.dispatch(
        &QK_NORM_BACKWARD,
        &[],
        &[
            qkv.binding(),
            dy.binding(),
            gq.binding(),
            gk.binding(),
            stats.binding(),
            dx.binding(),
            prod_q.binding(),
            prod_k.binding(),
        ],
        &p,
        (rows * heads).div_ceil(WG) as u64,
    )?;
    if d_gq.overlaps(d_gk) {
        // One scale for queries and keys (a caller's tied parameters): two sums into it.
        sum_tokens_into(&prod_q, d_gq, true)?;
        sum_tokens_into(&prod_k, d_gk, true)?;
    } else {
        sum_tokens_pair_into(&prod_q, &prod_k, d_gq, d_gk, true)?;
    }
    Ok(dx)
}
