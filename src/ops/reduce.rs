//! Row reductions over the last dimension (`shaders/reduce.wgsl`): sum, mean, max.
//! A tensor of shape `[.., n]` reduces to `[..]` (a `[n]` vector reduces to `[1]`).

use super::ensure_f32;
use crate::error::{ensure_shape, Result};
use crate::gpu::{kernel_params, kernels, KernelProfile};
use crate::shaders::{reduce_op, REDUCE};
use crate::tensor::{DType, Tensor};

kernel_params! {
    struct Params {
        rows: u32,
        cols: u32,
        tokens: u32,
        _pad: u32,
    }
}

kernels! {
    REDUCE, Params {
        REDUCE_ROWS = reduce_rows(Read, ReadWrite);
        REDUCE_ROWS_SERIAL = reduce_rows_serial(Read, ReadWrite);
        SUM_TOKENS = sum_tokens(Read, ReadWrite);
        SUM_TOKENS_VEC4 = sum_tokens_vec4(Read, ReadWrite);
        SUM_TOKENS_PAIR = sum_tokens_pair(Read, ReadWrite, Read, ReadWrite);
        SUM_TOKENS_PAIR_VEC4 = sum_tokens_pair_vec4(Read, ReadWrite, Read, ReadWrite);
    }
}

fn reduce(name: &str, x: &Tensor, op: u32) -> Result<Tensor> {
    ensure_f32(name, x)?;
    ensure_shape!(!x.shape().is_empty(), "{name} needs at least one dimension");
    let cols = x.last_dim();
    ensure_shape!(cols > 0, "{name} over an empty last dimension");
    let rows = x.numel() / cols;
    let out_shape = if x.shape().len() == 1 {
        vec![1]
    } else {
        x.shape()[..x.shape().len() - 1].to_vec()
    };
    let gpu = x.gpu();
    let out = Tensor::uninit(gpu, &out_shape, DType::F32)?;
    let p = Params {
        rows: rows as u32,
        cols: cols as u32,
        tokens: 0,
        _pad: 0,
    };
    // A workgroup per row pays off for long rows on a GPU; otherwise one row per invocation
    // (no barriers) is faster.
    if gpu.profile() == KernelProfile::Cpu || cols <= 64 {
        let groups = rows.div_ceil(64) as u64;
        gpu.dispatch(
            &REDUCE_ROWS_SERIAL,
            &[("OP", op as f64)],
            &[x.binding(), out.binding()],
            &p,
            groups,
        )?;
    } else {
        gpu.dispatch(
            &REDUCE_ROWS,
            &[("OP", op as f64)],
            &[x.binding(), out.binding()],
            &p,
            rows as u64,
        )?;
    }
    Ok(out)
}

/// Sum over the last dimension.
pub fn sum_rows(x: &Tensor) -> Result<Tensor> {
    reduce("sum_rows", x, reduce_op::SUM)
}
/// Mean over the last dimension.
pub fn mean_rows(x: &Tensor) -> Result<Tensor> {
    reduce("mean_rows", x, reduce_op::MEAN)
}
/// Maximum over the last dimension.
pub fn max_rows(x: &Tensor) -> Result<Tensor> {
    reduce("max_rows", x, reduce_op::MAX)
}

/// Sum over the middle axis: `[B, T, C] -> [B, C]` (a `[T, C]` matrix sums to `[C]`: column
/// sums, the gradient of a bias).
pub fn sum_tokens(x: &Tensor) -> Result<Tensor> {
    let (b, _, c, out_shape) = token_dims(x)?;
    let out = Tensor::uninit(x.gpu(), &out_shape, DType::F32)?;
    debug_assert_eq!(out.numel(), b * c);
    sum_tokens_into(x, &out, false)?;
    Ok(out)
}

/// [`sum_tokens`] written into `out` (`[B, C]`, or `[C]` for a `[T, C]` input), or added to
/// what it holds with `accumulate` (a bias gradient straight into its parameter's gradient).
pub fn sum_tokens_into(x: &Tensor, out: &Tensor, accumulate: bool) -> Result<()> {
    let (b, t, c, out_shape) = token_dims(x)?;
    ensure_f32("sum_tokens", out)?;
    ensure_shape!(
        out.shape() == out_shape.as_slice(),
        "sum_tokens of {:?} goes into {out_shape:?}, got {:?}",
        x.shape(),
        out.shape()
    );
    let p = Params {
        rows: b as u32,
        cols: c as u32,
        tokens: t as u32,
        _pad: 0,
    };
    let acc = if accumulate { 1.0 } else { 0.0 };
    let gpu = x.gpu();
    if c.is_multiple_of(4) && x.vec4_aligned() && out.vec4_aligned() {
        // Four columns per invocation; on a CPU driver a workgroup is one SIMD register's worth.
        let wg = if gpu.profile() == KernelProfile::Cpu {
            8
        } else {
            64
        };
        return gpu.dispatch(
            &SUM_TOKENS_VEC4,
            &[("ACCUMULATE", acc), ("SUM_WG", wg as f64)],
            &[x.binding(), out.binding()],
            &p,
            (b * c / 4).div_ceil(wg) as u64,
        );
    }
    gpu.dispatch(
        &SUM_TOKENS,
        &[("ACCUMULATE", acc)],
        &[x.binding(), out.binding()],
        &p,
        (b * c).div_ceil(64) as u64,
    )
}

/// Two [`sum_tokens_into`] of `[T, C]` inputs into `[C]` outputs in one dispatch: `x` into
/// `out`, `x_second` into `out_second` (written, or added with `accumulate`). The outputs may be
/// views of one buffer (two parameters' gradients) that do not overlap.
pub fn sum_tokens_pair_into(
    x: &Tensor,
    x_second: &Tensor,
    out: &Tensor,
    out_second: &Tensor,
    accumulate: bool,
) -> Result<()> {
    for t in [x, x_second, out, out_second] {
        ensure_f32("sum_tokens_pair", t)?;
    }
    let s = x.shape();
    ensure_shape!(
        s.len() == 2 && x_second.shape() == s,
        "sum_tokens_pair takes two inputs [T, C] of one shape, got {s:?} and {:?}",
        x_second.shape()
    );
    let (t, c) = (s[0], s[1]);
    ensure_shape!(
        out.shape() == [c] && out_second.shape() == [c],
        "sum_tokens_pair of {s:?} goes into two [{c}], got {:?} and {:?}",
        out.shape(),
        out_second.shape()
    );
    ensure_shape!(
        !out.overlaps(out_second)
            && [x, x_second]
                .iter()
                .all(|i| !i.same_buffer(out) && !i.same_buffer(out_second)),
        "sum_tokens_pair: the outputs must not overlap each other or share a buffer with an input"
    );
    let p = Params {
        rows: 1,
        cols: c as u32,
        tokens: t as u32,
        _pad: 0,
    };
    let acc = if accumulate { 1.0 } else { 0.0 };
    let bindings = [
        x.binding(),
        out.binding(),
        x_second.binding(),
        out_second.binding(),
    ];
    let gpu = x.gpu();
    if c.is_multiple_of(4)
        && [x, x_second, out, out_second]
            .iter()
            .all(|t| t.vec4_aligned())
    {
        // As sum_tokens_into: a CPU driver's SIMD width per workgroup.
        let wg = if gpu.profile() == KernelProfile::Cpu {
            8
        } else {
            64
        };
        return gpu.dispatch(
            &SUM_TOKENS_PAIR_VEC4,
            &[("ACCUMULATE", acc), ("SUM_WG", wg as f64)],
            &bindings,
            &p,
            (2 * c / 4).div_ceil(wg) as u64,
        );
    }
    gpu.dispatch(
        &SUM_TOKENS_PAIR,
        &[("ACCUMULATE", acc)],
        &bindings,
        &p,
        (2 * c).div_ceil(64) as u64,
    )
}

/// (B, T, C, output shape) of a sum over tokens.
fn token_dims(x: &Tensor) -> Result<(usize, usize, usize, Vec<usize>)> {
    ensure_f32("sum_tokens", x)?;
    let s = x.shape();
    match s.len() {
        2 => Ok((1, s[0], s[1], vec![s[1]])),
        3 => Ok((s[0], s[1], s[2], vec![s[0], s[2]])),
        _ => Err(crate::Error::Shape(format!(
            "sum_tokens takes [T, C] or [B, T, C], got {s:?}"
        ))),
    }
}
