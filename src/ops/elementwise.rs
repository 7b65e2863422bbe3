//! Elementwise ops (`shaders/elementwise.wgsl`): add, sub, mul, scale, axpy, fill, GELU (tanh),
//! SiLU. Binary ops take tensors of equal shape.

use super::{ensure_f32, groups};
use crate::error::{ensure_shape, Result};
use crate::gpu::{Access, Kernel};
use crate::shaders::ELEMENTWISE;
use crate::tensor::{DType, Tensor};

const ACCESS: &[Access] = &[Access::Read, Access::Read, Access::ReadWrite];
static UNARY: Kernel = Kernel {
    shader: &ELEMENTWISE,
    entry: "unary",
    access: ACCESS,
};
static BINARY: Kernel = Kernel {
    shader: &ELEMENTWISE,
    entry: "binary",
    access: ACCESS,
};
static AXPY: Kernel = Kernel {
    shader: &ELEMENTWISE,
    entry: "axpy",
    access: ACCESS,
};
static FILL: Kernel = Kernel {
    shader: &ELEMENTWISE,
    entry: "fill",
    access: ACCESS,
};
/// Elements per workgroup: 256 invocations x 8 vec4s each (as in the shader).
const PER_GROUP: usize = 256 * 8 * 4;

// Op codes, as in the shader.
const OP_GELU: f64 = 0.0;
const OP_SILU: f64 = 1.0;
const OP_SCALE: f64 = 2.0;
const OP_CLAMP: f64 = 3.0;
const OP_ADD: f64 = 10.0;
const OP_SUB: f64 = 11.0;
const OP_MUL: f64 = 12.0;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    alpha: f32,
    _pad: [u32; 2],
}

fn params(n: usize, alpha: f32) -> Params {
    Params {
        n: n as u32,
        alpha,
        _pad: [0; 2],
    }
}

fn unary(name: &str, x: &Tensor, op: f64, alpha: f32) -> Result<Tensor> {
    ensure_f32(name, x)?;
    let gpu = x.gpu();
    let out = Tensor::uninit(gpu, x.shape(), DType::F32)?;
    let d = gpu.dummy();
    gpu.dispatch(
        &UNARY,
        &[("OP", op)],
        &[x.binding(), (d, 0, 4), out.binding()],
        &params(x.numel(), alpha),
        groups(x.numel(), PER_GROUP),
    )?;
    Ok(out)
}

fn binary(name: &str, x: &Tensor, y: &Tensor, op: f64) -> Result<Tensor> {
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
        &[("OP", op)],
        &[x.binding(), y.binding(), out.binding()],
        &params(x.numel(), 0.0),
        groups(x.numel(), PER_GROUP),
    )?;
    Ok(out)
}

/// `x + y`.
pub fn add(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    binary("add", x, y, OP_ADD)
}
/// `x - y`.
pub fn sub(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    binary("sub", x, y, OP_SUB)
}
/// `x * y`, elementwise.
pub fn mul(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    binary("mul", x, y, OP_MUL)
}
/// `alpha * x`.
pub fn scale(x: &Tensor, alpha: f32) -> Result<Tensor> {
    unary("scale", x, OP_SCALE, alpha)
}
/// `x` clamped to `[-bound, bound]`.
pub fn clamp(x: &Tensor, bound: f32) -> Result<Tensor> {
    unary("clamp", x, OP_CLAMP, bound)
}
/// GELU with the tanh approximation: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    unary("gelu", x, OP_GELU, 0.0)
}
/// SiLU: `x * sigmoid(x)`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    unary("silu", x, OP_SILU, 0.0)
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
        &[x.binding(), (gpu.dummy(), 0, 4), y.binding()],
        &params(x.numel(), alpha),
        groups(x.numel(), PER_GROUP),
    )
}

/// Set every element to `value`, in place.
pub fn fill(t: &Tensor, value: f32) -> Result<()> {
    ensure_f32("fill", t)?;
    let gpu = t.gpu();
    let d = gpu.dummy();
    gpu.dispatch(
        &FILL,
        &[],
        &[(d, 0, 4), (d, 0, 4), t.binding()],
        &params(t.numel(), value),
        groups(t.numel(), PER_GROUP),
    )
}

const OP_GELU_BACKWARD: f64 = 13.0;
const OP_SILU_BACKWARD: f64 = 14.0;
const OP_SCALE_BY: f64 = 15.0;

/// Gradient of [`gelu`]: `dy * gelu'(x)`, where `x` is the forward input.
pub fn gelu_backward(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    binary("gelu_backward", x, dy, OP_GELU_BACKWARD)
}

/// Gradient of [`silu`]: `dy * silu'(x)`.
pub fn silu_backward(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    binary("silu_backward", x, dy, OP_SILU_BACKWARD)
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
        &[("OP", OP_SCALE_BY)],
        &[x.binding(), s.binding(), out.binding()],
        &params(x.numel(), alpha),
        groups(x.numel(), PER_GROUP),
    )?;
    Ok(out)
}
