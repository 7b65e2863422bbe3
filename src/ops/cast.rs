//! Conversions between f32 and f16 storage (`shaders/cast.wgsl`; needs `SHADER_F16`).

use super::groups;
use crate::error::{ensure_shape, Result};
use crate::gpu::{kernel_params, kernels, Kernel};
use crate::shaders::CAST;
use crate::tensor::{DType, Tensor};

kernel_params! {
    struct Params {
        n: u32,
        _pad: [u32; 3],
    }
}

kernels! {
    CAST, Params {
        TO_F16 = f32_to_f16(Read, ReadWrite);
        TO_F32 = f16_to_f32(Read, ReadWrite);
    }
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
