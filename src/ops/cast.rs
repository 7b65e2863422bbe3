//! Conversions between f32 and f16 storage (`shaders/cast.wgsl`; needs `SHADER_F16`).

use super::groups;
use crate::error::{ensure_shape, Result};
use crate::gpu::{Access, Kernel};
use crate::shaders::CAST;
use crate::tensor::{DType, Tensor};

const ACCESS: &[Access] = &[Access::Read, Access::ReadWrite];
static TO_F16: Kernel = Kernel {
    shader: &CAST,
    entry: "f32_to_f16",
    access: ACCESS,
};
static TO_F32: Kernel = Kernel {
    shader: &CAST,
    entry: "f16_to_f32",
    access: ACCESS,
};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    _pad: [u32; 3],
}

fn cast(x: &Tensor, from: DType, to: DType, kernel: &Kernel) -> Result<Tensor> {
    ensure_shape!(
        x.dtype() == from,
        "{} takes a {from:?} tensor, got {:?}",
        kernel.entry,
        x.dtype()
    );
    let gpu = x.gpu();
    let out = Tensor::uninit(gpu, x.shape(), to)?;
    let p = Params {
        n: x.numel() as u32,
        _pad: [0; 3],
    };
    gpu.dispatch(
        kernel,
        &[],
        &[x.binding(), out.binding()],
        &p,
        groups(x.numel(), 256),
    )?;
    Ok(out)
}

/// An f16 copy of an f32 tensor (round to nearest even).
pub fn to_f16(x: &Tensor) -> Result<Tensor> {
    cast(x, DType::F32, DType::F16, &TO_F16)
}

/// An f32 copy of an f16 tensor (exact).
pub fn to_f32(x: &Tensor) -> Result<Tensor> {
    cast(x, DType::F16, DType::F32, &TO_F32)
}
