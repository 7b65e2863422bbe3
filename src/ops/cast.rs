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
        TO_F16_VEC4 = f32_to_f16_vec4(Read, ReadWrite);
        TO_F32 = f16_to_f32(Read, ReadWrite);
    }
}

fn cast(x: &Tensor, from: DType, to: DType, kernel: &Kernel) -> Result<Tensor> {
    let out = Tensor::uninit(x.gpu(), x.shape(), to)?;
    cast_to(x, from, &out, to, kernel)?;
    Ok(out)
}

fn cast_to(x: &Tensor, from: DType, out: &Tensor, to: DType, kernel: &Kernel) -> Result<()> {
    ensure_shape!(
        x.dtype() == from && out.dtype() == to,
        "{} takes a {from:?} tensor to a {to:?} one, got {:?} to {:?}",
        kernel.entry,
        x.dtype(),
        out.dtype()
    );
    ensure_shape!(
        x.shape() == out.shape(),
        "a conversion's output must have the input's shape {:?}, got {:?}",
        x.shape(),
        out.shape()
    );
    ensure_shape!(
        !x.overlaps(out),
        "a conversion's output must not overlap its input"
    );
    // Four values per invocation where both offsets allow vec4 access (16 bytes of f32, 8 of f16).
    let n = x.numel();
    let (kernel, per_item) = match to {
        DType::F16
            if n.is_multiple_of(4) && x.vec4_aligned() && out.byte_offset().is_multiple_of(8) =>
        {
            (&TO_F16_VEC4, 4)
        }
        _ => (kernel, 1),
    };
    let p = Params {
        n: (n / per_item) as u32,
        _pad: [0; 3],
    };
    x.gpu().dispatch(
        kernel,
        &[],
        &[x.binding(), out.binding()],
        &p,
        groups(n / per_item, 256),
    )
}

/// Convert `x` (f32) into `out`, an f16 tensor of its shape (round to nearest even): one
/// dispatch, nothing allocated (the f16 weights refreshed every step: `Params::refresh_f16`).
pub fn cast_into(x: &Tensor, out: &Tensor) -> Result<()> {
    cast_to(x, DType::F32, out, DType::F16, &TO_F16)
}

/// An f16 copy of an f32 tensor (round to nearest even).
pub fn to_f16(x: &Tensor) -> Result<Tensor> {
    cast(x, DType::F32, DType::F16, &TO_F16)
}

/// An f32 copy of an f16 tensor (exact).
pub fn to_f32(x: &Tensor) -> Result<Tensor> {
    cast(x, DType::F16, DType::F32, &TO_F32)
}
