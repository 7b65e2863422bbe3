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

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    tokens: u32,
    cols: u32,
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
        _pad: 0,
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
