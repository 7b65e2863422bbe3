//! Elementwise ops (`shaders/elementwise.wgsl`): add, sub, mul, scale, axpy, fill, GELU (tanh),
//! SiLU. Binary ops take tensors of equal shape.

use super::{ensure_f32, groups};
use crate::error::{ensure_shape, Result};
use crate::gpu::{kernel_params, kernels, Binding};
use crate::shaders::{elementwise_op as op, ELEMENTWISE};
use crate::tensor::{DType, Tensor};

kernel_params! {
    struct Params {
        /// Element count.
        n: u32,
        /// Scale factor (scale, axpy, scale_by) or clamp bound.
        alpha: f32,
        _pad: [u32; 2],
    }
}

kernels! {
    ELEMENTWISE, Params {
        UNARY = unary(Read, Unused, ReadWrite);
        BINARY = binary(Read, Read, ReadWrite);
        AXPY = axpy(Read, Unused, ReadWrite);
    }
}

/// Elements per workgroup: 256 invocations x 8 vec4s each (as in the shader).
const PER_GROUP: usize = 256 * 8 * 4;

fn params(n: usize, alpha: f32) -> Params {
    Params {
        n: n as u32,
        alpha,
        _pad: [0; 2],
    }
}

fn unary(name: &str, x: &Tensor, op: u32, alpha: f32) -> Result<Tensor> {
    ensure_f32(name, x)?;
    let gpu = x.gpu();
    let out = Tensor::uninit(gpu, x.shape(), DType::F32)?;
    gpu.dispatch(
        &UNARY,
        &[("OP", op as f64)],
        &[x.binding(), Binding::Unused, out.binding()],
        &params(x.numel(), alpha),
        groups(x.numel(), PER_GROUP),
    )?;
    Ok(out)
}

fn binary(name: &str, x: &Tensor, y: &Tensor, op: u32) -> Result<Tensor> {
    ensure_f32(name, x)?;
    ensure_f32(name, y)?;
    ensure_shape!(
        x.shape() == y.shape(),
        "{name} needs equal shapes, got {:?} and {:?}",
        x.shape(),
        y.shape()
    );
    let gpu = x.gpu();
    let out = Tensor::uninit(gpu, x.shape(), DType::F32)?;
    gpu.dispatch(
        &BINARY,
        &[("OP", op as f64)],
        &[x.binding(), y.binding(), out.binding()],
        &params(x.numel(), 0.0),
        groups(x.numel(), PER_GROUP),
    )?;
    Ok(out)
}

/// `x + y`.
pub fn add(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    binary("add", x, y, op::ADD)
}
/// `x - y`.
pub fn sub(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    binary("sub", x, y, op::SUB)
}
/// `x * y`, elementwise.
pub fn mul(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    binary("mul", x, y, op::MUL)
}
/// `alpha * x`.
pub fn scale(x: &Tensor, alpha: f32) -> Result<Tensor> {
    unary("scale", x, op::SCALE, alpha)
}
/// `x` clamped to `[-bound, bound]`.
pub fn clamp(x: &Tensor, bound: f32) -> Result<Tensor> {
    unary("clamp", x, op::CLAMP, bound)
}
/// GELU with the tanh approximation: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    unary("gelu", x, op::GELU, 0.0)
}
/// SiLU: `x * sigmoid(x)`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    unary("silu", x, op::SILU, 0.0)
}

/// `y += alpha * x`, in place.
pub fn axpy(alpha: f32, x: &Tensor, y: &Tensor) -> Result<()> {
    ensure_f32("axpy", x)?;
    ensure_f32("axpy", y)?;
    ensure_shape!(
        x.shape() == y.shape(),
        "axpy needs equal shapes, got {:?} and {:?}",
        x.shape(),
        y.shape()
    );
    ensure_shape!(!x.same_buffer(y), "axpy: x and y must not share a buffer");
    let gpu = x.gpu();
    gpu.dispatch(
        &AXPY,
        &[],
        &[x.binding(), Binding::Unused, y.binding()],
        &params(x.numel(), alpha),
        groups(x.numel(), PER_GROUP),
    )
}

/// Set every element to `value`, in place (the GPU context's own fill kernel).
pub fn fill(t: &Tensor, value: f32) -> Result<()> {
    ensure_f32("fill", t)?;
    t.gpu().fill(t.binding(), value.to_bits())
}

/// Gradient of [`gelu`]: `dy * gelu'(x)`, where `x` is the forward input.
pub fn gelu_backward(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    binary("gelu_backward", x, dy, op::GELU_BACKWARD)
}

/// Gradient of [`silu`]: `dy * silu'(x)`.
pub fn silu_backward(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    binary("silu_backward", x, dy, op::SILU_BACKWARD)
}

/// `alpha * x * s[0]`: scale by a one-element tensor without reading it back.
pub fn scale_by(x: &Tensor, s: &Tensor, alpha: f32) -> Result<Tensor> {
    ensure_f32("scale_by", x)?;
    ensure_f32("scale_by", s)?;
    ensure_shape!(
        s.numel() == 1,
        "scale_by takes a one-element scale, got shape {:?}",
        s.shape()
    );
    let gpu = x.gpu();
    let out = Tensor::uninit(gpu, x.shape(), DType::F32)?;
    gpu.dispatch(
        &BINARY,
        &[("OP", op::SCALE_BY as f64)],
        &[x.binding(), s.binding(), out.binding()],
        &params(x.numel(), alpha),
        groups(x.numel(), PER_GROUP),
    )?;
    Ok(out)
}
