//! adaLN modulation and the gated residual (`shaders/modulate.wgsl`), forward and backward.
//! Activations are `[B, T, C]`; the per-sample vectors are `[B, C]`, broadcast over tokens.

use super::{bind, ensure_f32, groups, reduce::sum_tokens};
use crate::error::{ensure_shape, Result};
use crate::gpu::{kernel_params, kernels, Binding};
use crate::shaders::{modulate_mode as mode, MODULATE};
use crate::tensor::{DType, Tensor};

kernel_params! {
    struct Params {
        batch: u32,
        tokens: u32,
        cols: u32,
        /// The in-place entries: K, chunks per sample in `ada`.
        chunks: u32,
        /// Shift (ln_modulate) or gate (ada_gate) chunk.
        chunk_a: u32,
        /// Scale chunk (ln_modulate).
        chunk_b: u32,
        eps: f32,
        _pad: u32,
    }
}

kernels! {
    MODULATE, Params {
        // The broadcast entries: x (or dy), h (or the saved input), the per-sample vector, shift,
        // out, and the product to sum over tokens (backward only).
        MODULATE_FORWARD = modulate(Read, Read, Read, Read, ReadWrite, Unused);
        MODULATE_BACKWARD = modulate_backward(Read, Read, Read, Unused, ReadWrite, ReadWrite);
        // The in-place entries: x, ada, aux (h or stats), dy, out, out2 (stats or d_ada).
        LN_MODULATE = ln_modulate(Read, Read, Unused, Unused, ReadWrite, ReadWrite);
        LN_MODULATE_BACKWARD =
            ln_modulate_backward(Read, Read, Read, Read, ReadWrite, ReadWrite);
        ADA_GATE = ada_gate(Read, Read, Read, Unused, ReadWrite, Unused);
        ADA_GATE_BACKWARD = ada_gate_backward(Read, Read, Unused, Read, ReadWrite, ReadWrite);
    }
}
const PER_GROUP: usize = 256 * 4;
/// Rows (or (sample, column) pairs) per workgroup of the in-place entries.
const ROWS_PER_GROUP: usize = 64;

fn check(op: &str, x: &Tensor, vectors: &[&Tensor]) -> Result<(usize, usize, usize)> {
    ensure_f32(op, x)?;
    let s = x.shape();
    ensure_shape!(s.len() == 3, "{op} takes activations [B, T, C], got {s:?}");
    for v in vectors {
        ensure_f32(op, v)?;
        ensure_shape!(
            v.shape() == [s[0], s[2]],
            "{op}: per-sample vectors must be [{}, {}], got {:?}",
            s[0],
            s[2],
            v.shape()
        );
    }
    Ok((s[0], s[1], s[2]))
}

/// Runs one mode of the broadcast entries; returns the output and (backward modes) the product
/// to sum over tokens.
fn run(
    mode: u32,
    x: &Tensor,
    h: Option<&Tensor>,
    s: &Tensor,
    shift: Option<&Tensor>,
    (b, t, c): (usize, usize, usize),
) -> Result<(Tensor, Option<Tensor>)> {
    let gpu = x.gpu();
    let out = Tensor::uninit(gpu, x.shape(), DType::F32)?;
    let backward = mode == mode::MODULATE_BACKWARD || mode == mode::GATE_BACKWARD;
    let p = Params {
        batch: b as u32,
        tokens: t as u32,
        cols: c as u32,
        ..Params::default()
    };
    let h = h.map_or(gpu.absent(), |h| h.binding());
    let groups = groups(x.numel(), PER_GROUP);
    let overrides = [("MODE", mode as f64)];
    if backward {
        let prod = Tensor::uninit(gpu, x.shape(), DType::F32)?;
        let bindings = [
            x.binding(),
            h,
            s.binding(),
            Binding::Unused,
            out.binding(),
            prod.binding(),
        ];
        gpu.dispatch(&MODULATE_BACKWARD, &overrides, &bindings, &p, groups)?;
        return Ok((out, Some(prod)));
    }
    let shift = shift.map_or(gpu.absent(), |v| v.binding());
    let bindings = [
        x.binding(),
        h,
        s.binding(),
        shift,
        out.binding(),
        Binding::Unused,
    ];
    gpu.dispatch(&MODULATE_FORWARD, &overrides, &bindings, &p, groups)?;
    Ok((out, None))
}

/// adaLN: `x * (1 + scale) + shift`, `scale` and `shift` per sample.
pub fn modulate(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    let dims = check("modulate", x, &[scale, shift])?;
    Ok(run(mode::MODULATE, x, None, scale, Some(shift), dims)?.0)
}

/// Gradients of [`modulate`]: `(dx, dscale, dshift)`.
pub fn modulate_backward(
    x: &Tensor,
    scale: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dims = check("modulate_backward", x, &[scale])?;
    ensure_shape!(
        dy.shape() == x.shape(),
        "modulate_backward: dy must match x"
    );
    let (dx, prod) = run(mode::MODULATE_BACKWARD, dy, Some(x), scale, None, dims)?;
    Ok((
        dx,
        sum_tokens(&prod.expect("backward product"))?,
        sum_tokens(dy)?,
    ))
}

/// Gated residual: `x + gate * h`, `gate` per sample.
pub fn gate(x: &Tensor, h: &Tensor, gate: &Tensor) -> Result<Tensor> {
    let dims = check("gate", x, &[gate])?;
    ensure_shape!(
        h.shape() == x.shape(),
        "gate: h {:?} must match x {:?}",
        h.shape(),
        x.shape()
    );
    Ok(run(mode::GATE, x, Some(h), gate, None, dims)?.0)
}

/// Gradients of [`gate`] with respect to `h` and `gate` (that of `x` is `dy` itself):
/// `(dh, dgate)`.
pub fn gate_backward(h: &Tensor, gate: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let dims = check("gate_backward", h, &[gate])?;
    ensure_shape!(dy.shape() == h.shape(), "gate_backward: dy must match h");
    let (dh, prod) = run(mode::GATE_BACKWARD, dy, Some(h), gate, None, dims)?;
    Ok((dh, sum_tokens(&prod.expect("backward product"))?))
}

// ---- adaLN with the conditioning read in place ----
//
// A DiT block computes its six conditioning vectors as one tensor `ada` `[B, K C]` (K chunks of
// C per sample). These ops read chunk `j` of it in place (no copy of each chunk), and their
// backward adds each chunk's gradient into the same columns of `d_ada` (zeros to begin with),
// so one tensor collects the gradient of all six.

/// Checks `x` `[B, T, C]` against `ada` `[B, K C]` and the chunk numbers; returns the params.
fn ada_params(op: &str, x: &Tensor, ada: &Tensor, chunks: &[usize]) -> Result<Params> {
    ensure_f32(op, x)?;
    ensure_f32(op, ada)?;
    let s = x.shape();
    ensure_shape!(
        s.len() == 3 && s[2] > 0,
        "{op} takes activations [B, T, C], got {s:?}"
    );
    let (b, t, c) = (s[0], s[1], s[2]);
    let a = ada.shape();
    ensure_shape!(
        a.len() == 2 && a[0] == b && a[1].is_multiple_of(c),
        "{op}: the conditioning must be [{b}, K * {c}] (K chunks of {c}), got {a:?}"
    );
    let k = a[1] / c;
    ensure_shape!(
        chunks.iter().all(|&j| j < k),
        "{op}: chunks {chunks:?} of a conditioning with {k} chunks"
    );
    Ok(Params {
        batch: b as u32,
        tokens: t as u32,
        cols: c as u32,
        chunks: k as u32,
        chunk_a: chunks[0] as u32,
        chunk_b: chunks.get(1).copied().unwrap_or(0) as u32,
        ..Params::default()
    })
}

/// `LN(x) (1 + scale) + shift` in one pass, LayerNorm without affine parameters; `shift` and
/// `scale` are chunks of `ada` `[B, K C]`. Returns the output and the row statistics
/// `[B T, 2]` (mean, 1/std) for the backward.
pub fn ln_modulate(
    x: &Tensor,
    ada: &Tensor,
    shift: usize,
    scale: usize,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    let mut p = ada_params("ln_modulate", x, ada, &[shift, scale])?;
    p.eps = eps;
    let gpu = x.gpu();
    let rows = x.numel() / x.last_dim();
    let y = Tensor::uninit(gpu, x.shape(), DType::F32)?;
    let stats = Tensor::uninit(gpu, &[rows, 2], DType::F32)?;
    gpu.dispatch(
        &LN_MODULATE,
        &[],
        &bind(
            &LN_MODULATE,
            gpu,
            [Some(x), Some(ada), None, None, Some(&y), Some(&stats)],
        ),
        &p,
        groups(rows, ROWS_PER_GROUP),
    )?;
    Ok((y, stats))
}

/// Gradient of [`ln_modulate`]: returns `dx` and adds the gradients of the `shift` and `scale`
/// chunks into `d_ada` (shaped like `ada`).
#[allow(clippy::too_many_arguments)]
pub fn ln_modulate_backward(
    x: &Tensor,
    stats: &Tensor,
    ada: &Tensor,
    shift: usize,
    scale: usize,
    dy: &Tensor,
    d_ada: &Tensor,
) -> Result<Tensor> {
    let dx = Tensor::uninit(x.gpu(), x.shape(), DType::F32)?;
    ln_modulate_backward_into(x, stats, ada, shift, scale, dy, d_ada, &dx, false)?;
    Ok(dx)
}

/// [`ln_modulate_backward`] writing `dx` into `dx_out` (shaped like `x`), or adding it to what
/// `dx_out` holds with `accumulate` (the residual stream's gradient, summed in place).
#[allow(clippy::too_many_arguments)]
pub fn ln_modulate_backward_into(
    x: &Tensor,
    stats: &Tensor,
    ada: &Tensor,
    shift: usize,
    scale: usize,
    dy: &Tensor,
    d_ada: &Tensor,
    dx_out: &Tensor,
    accumulate: bool,
) -> Result<()> {
    let p = ada_params("ln_modulate_backward", x, ada, &[shift, scale])?;
    let rows = x.numel() / x.last_dim();
    ensure_shape!(
        dy.shape() == x.shape()
            && dx_out.shape() == x.shape()
            && d_ada.shape() == ada.shape()
            && stats.shape() == [rows, 2],
        "ln_modulate_backward: dy {:?} and dx {:?} must match x {:?}, d_ada {:?} ada {:?}, stats \
         {:?} [{rows}, 2]",
        dy.shape(),
        dx_out.shape(),
        x.shape(),
        d_ada.shape(),
        ada.shape(),
        stats.shape()
    );
    ensure_f32("ln_modulate_backward dx", dx_out)?;
    for t in [x, stats, ada, dy] {
        ensure_shape!(
            !t.same_buffer(dx_out),
            "ln_modulate_backward: dx must not share a buffer with an input"
        );
    }
    ensure_shape!(
        !d_ada.overlaps(dx_out),
        "ln_modulate_backward: dx and d_ada must not overlap"
    );
    let gpu = x.gpu();
    // One workgroup per sample: the rows' dx and the columns' sums over tokens.
    gpu.dispatch(
        &LN_MODULATE_BACKWARD,
        &[("ACCUMULATE", accumulate as u32 as f64)],
        &bind(
            &LN_MODULATE_BACKWARD,
            gpu,
            [
                Some(x),
                Some(ada),
                Some(stats),
                Some(dy),
                Some(dx_out),
                Some(d_ada),
            ],
        ),
        &p,
        ada.shape()[0] as u64,
    )?;
    Ok(())
}

/// The gated residual `x + gate h`, `gate` chunk `chunk` of `ada` `[B, K C]`.
pub fn ada_gate(x: &Tensor, h: &Tensor, ada: &Tensor, chunk: usize) -> Result<Tensor> {
    let p = ada_params("ada_gate", x, ada, &[chunk])?;
    ensure_shape!(
        h.shape() == x.shape(),
        "ada_gate: h {:?} must match x {:?}",
        h.shape(),
        x.shape()
    );
    let gpu = x.gpu();
    let y = Tensor::uninit(gpu, x.shape(), DType::F32)?;
    gpu.dispatch(
        &ADA_GATE,
        &[],
        &bind(
            &ADA_GATE,
            gpu,
            [Some(x), Some(ada), Some(h), None, Some(&y), None],
        ),
        &p,
        groups(x.numel() / x.last_dim(), ROWS_PER_GROUP),
    )?;
    Ok(y)
}

/// Gradient of [`ada_gate`] with respect to `h` (that of `x` is `dy` itself); adds the gate's
/// gradient into chunk `chunk` of `d_ada`, or with `begin_d_ada` writes `d_ada` whole: the
/// gate's gradient in its chunk, zeros in the others (a conditioning's gradient that nothing has
/// reached yet, begun without a fill pass).
pub fn ada_gate_backward(
    h: &Tensor,
    ada: &Tensor,
    chunk: usize,
    dy: &Tensor,
    d_ada: &Tensor,
    begin_d_ada: bool,
) -> Result<Tensor> {
    let p = ada_params("ada_gate_backward", h, ada, &[chunk])?;
    ensure_shape!(
        dy.shape() == h.shape() && d_ada.shape() == ada.shape(),
        "ada_gate_backward: dy {:?} must match h {:?} and d_ada {:?} ada {:?}",
        dy.shape(),
        h.shape(),
        d_ada.shape(),
        ada.shape()
    );
    let gpu = h.gpu();
    let dh = Tensor::uninit(gpu, h.shape(), DType::F32)?;
    gpu.dispatch(
        &ADA_GATE_BACKWARD,
        &[("BEGIN_D_ADA", begin_d_ada as u32 as f64)],
        &bind(
            &ADA_GATE_BACKWARD,
            gpu,
            [Some(h), Some(ada), None, Some(dy), Some(&dh), Some(d_ada)],
        ),
        &p,
        groups(ada.shape()[0] * h.last_dim(), ROWS_PER_GROUP),
    )?;
    Ok(dh)
}
