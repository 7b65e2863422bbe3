//! adaLN modulation and the gated residual (`shaders/modulate.wgsl`), forward and backward.
//! Activations are `[B, T, C]`; the per-sample vectors are `[B, C]`, broadcast over tokens.

use super::{ensure_f32, groups, reduce::sum_tokens};
use crate::error::{ensure_shape, Result};
use crate::gpu::{Access, Kernel};
use crate::shaders::MODULATE;
use crate::tensor::{DType, Tensor};

static MODULATE_KERNEL: Kernel = Kernel {
    shader: &MODULATE,
    entry: "modulate",
    access: &[
        Access::Read,
        Access::Read,
        Access::Read,
        Access::Read,
        Access::ReadWrite,
        Access::ReadWrite,
    ],
};
const PER_GROUP: usize = 256 * 4;

// Bindings of the in-place entries: x, ada, aux (h or stats), dy, out, out2 (stats or d_ada).
static LN_MODULATE: Kernel = Kernel {
    shader: &MODULATE,
    entry: "ln_modulate",
    access: &[
        Access::Read,
        Access::Read,
        Access::Unused,
        Access::Unused,
        Access::ReadWrite,
        Access::ReadWrite,
    ],
};
static LN_MODULATE_BACKWARD_ROWS: Kernel = Kernel {
    shader: &MODULATE,
    entry: "ln_modulate_backward_rows",
    access: &[
        Access::Read,
        Access::Read,
        Access::Read,
        Access::Read,
        Access::ReadWrite,
        Access::Unused,
    ],
};
static LN_MODULATE_BACKWARD_COLS: Kernel = Kernel {
    shader: &MODULATE,
    entry: "ln_modulate_backward_cols",
    access: &[
        Access::Read,
        Access::Unused,
        Access::Read,
        Access::Read,
        Access::Unused,
        Access::ReadWrite,
    ],
};
static ADA_GATE: Kernel = Kernel {
    shader: &MODULATE,
    entry: "ada_gate",
    access: &[
        Access::Read,
        Access::Read,
        Access::Read,
        Access::Unused,
        Access::ReadWrite,
        Access::Unused,
    ],
};
static ADA_GATE_BACKWARD: Kernel = Kernel {
    shader: &MODULATE,
    entry: "ada_gate_backward",
    access: &[
        Access::Read,
        Access::Read,
        Access::Unused,
        Access::Read,
        Access::ReadWrite,
        Access::ReadWrite,
    ],
};
/// Rows (or (sample, column) pairs) per workgroup of the in-place entries.
const ROWS_PER_GROUP: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    tokens: u32,
    cols: u32,
    chunks: u32,
    chunk_a: u32,
    chunk_b: u32,
    eps: f32,
    _pad: u32,
}

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

/// Runs one mode; returns the output and (backward modes) the product to sum over tokens.
fn run(
    mode: f64,
    x: &Tensor,
    h: Option<&Tensor>,
    s: &Tensor,
    shift: Option<&Tensor>,
    (b, t, c): (usize, usize, usize),
) -> Result<(Tensor, Option<Tensor>)> {
    let gpu = x.gpu();
    let out = Tensor::uninit(gpu, x.shape(), DType::F32)?;
    let backward = mode == 1.0 || mode == 3.0;
    let prod = Tensor::uninit(gpu, if backward { x.shape() } else { &[1] }, DType::F32)?;
    let dummy = (gpu.dummy(), 0, 4);
    let p = Params {
        batch: b as u32,
        tokens: t as u32,
        cols: c as u32,
        ..Params::default()
    };
    gpu.dispatch(
        &MODULATE_KERNEL,
        &[("MODE", mode)],
        &[
            x.binding(),
            h.map_or(dummy, |h| h.binding()),
            s.binding(),
            shift.map_or(dummy, |v| v.binding()),
            out.binding(),
            prod.binding(),
        ],
        &p,
        groups(x.numel(), PER_GROUP),
    )?;
    Ok((out, backward.then_some(prod)))
}

/// adaLN: `x * (1 + scale) + shift`, `scale` and `shift` per sample.
pub fn modulate(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    let dims = check("modulate", x, &[scale, shift])?;
    Ok(run(0.0, x, None, scale, Some(shift), dims)?.0)
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
    let (dx, prod) = run(1.0, dy, Some(x), scale, None, dims)?;
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
    Ok(run(2.0, x, Some(h), gate, None, dims)?.0)
}

/// Gradients of [`gate`] with respect to `h` and `gate` (that of `x` is `dy` itself):
/// `(dh, dgate)`.
pub fn gate_backward(h: &Tensor, gate: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let dims = check("gate_backward", h, &[gate])?;
    ensure_shape!(dy.shape() == h.shape(), "gate_backward: dy must match h");
    let (dh, prod) = run(3.0, dy, Some(h), gate, None, dims)?;
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
    let dummy = (gpu.dummy(), 0, 4);
    gpu.dispatch(
        &LN_MODULATE,
        &[],
        &[
            x.binding(),
            ada.binding(),
            dummy,
            dummy,
            y.binding(),
            stats.binding(),
        ],
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
    let p = ada_params("ln_modulate_backward", x, ada, &[shift, scale])?;
    let rows = x.numel() / x.last_dim();
    ensure_shape!(
        dy.shape() == x.shape() && d_ada.shape() == ada.shape() && stats.shape() == [rows, 2],
        "ln_modulate_backward: dy {:?} must match x {:?}, d_ada {:?} ada {:?}, stats {:?} [{rows}, 2]",
        dy.shape(),
        x.shape(),
        d_ada.shape(),
        ada.shape(),
        stats.shape()
    );
    let gpu = x.gpu();
    let dx = Tensor::uninit(gpu, x.shape(), DType::F32)?;
    let dummy = (gpu.dummy(), 0, 4);
    gpu.dispatch(
        &LN_MODULATE_BACKWARD_ROWS,
        &[],
        &[
            x.binding(),
            ada.binding(),
            stats.binding(),
            dy.binding(),
            dx.binding(),
            dummy,
        ],
        &p,
        groups(rows, ROWS_PER_GROUP),
    )?;
    gpu.dispatch(
        &LN_MODULATE_BACKWARD_COLS,
        &[],
        &[
            x.binding(),
            ada.binding(),
            stats.binding(),
            dy.binding(),
            dummy,
            d_ada.binding(),
        ],
        &p,
        groups(ada.shape()[0] * x.last_dim(), ROWS_PER_GROUP),
    )?;
    Ok(dx)
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
    let dummy = (gpu.dummy(), 0, 4);
    gpu.dispatch(
        &ADA_GATE,
        &[],
        &[
            x.binding(),
            ada.binding(),
            h.binding(),
            dummy,
            y.binding(),
            dummy,
        ],
        &p,
        groups(x.numel() / x.last_dim(), ROWS_PER_GROUP),
    )?;
    Ok(y)
}

/// Gradient of [`ada_gate`] with respect to `h` (that of `x` is `dy` itself); adds the gate's
/// gradient into chunk `chunk` of `d_ada`.
pub fn ada_gate_backward(
    h: &Tensor,
    ada: &Tensor,
    chunk: usize,
    dy: &Tensor,
    d_ada: &Tensor,
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
    let dummy = (gpu.dummy(), 0, 4);
    gpu.dispatch(
        &ADA_GATE_BACKWARD,
        &[],
        &[
            h.binding(),
            ada.binding(),
            dummy,
            dy.binding(),
            dh.binding(),
            d_ada.binding(),
        ],
        &p,
        groups(ada.shape()[0] * h.last_dim(), ROWS_PER_GROUP),
    )?;
    Ok(dh)
}
