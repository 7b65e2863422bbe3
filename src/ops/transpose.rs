//! Transpose of the last two dimensions (`shaders/transpose.wgsl`): `[.., r, c] -> [.., c, r]`.

use super::ensure_f32;
use crate::error::{ensure_shape, Result};
use crate::gpu::{Access, Kernel, KernelProfile};
use crate::shaders::TRANSPOSE;
use crate::tensor::{DType, Tensor};

static TRANSPOSE_KERNEL: Kernel = Kernel {
    shader: &TRANSPOSE,
    entry: "transpose",
    access: &[Access::Read, Access::ReadWrite],
};
static TRANSPOSE_DIRECT: Kernel = Kernel {
    shader: &TRANSPOSE,
    entry: "transpose_direct",
    access: &[Access::Read, Access::ReadWrite],
};
const TILE: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    rows: u32,
    cols: u32,
    tiles_c: u32,
    tiles_r: u32,
    _pad: [u32; 3],
}

/// Swap the last two dimensions.
pub fn transpose(x: &Tensor) -> Result<Tensor> {
    ensure_f32("transpose", x)?;
    let s = x.shape();
    ensure_shape!(
        s.len() >= 2,
        "transpose needs at least two dimensions, got {s:?}"
    );
    let (rows, cols) = (s[s.len() - 2], s[s.len() - 1]);
    let batch = x.numel() / (rows * cols).max(1);
    let mut out_shape = s.to_vec();
    out_shape.swap(s.len() - 2, s.len() - 1);
    let gpu = x.gpu();
    let out = Tensor::uninit(gpu, &out_shape, DType::F32)?;
    let p = Params {
        batch: batch as u32,
        rows: rows as u32,
        cols: cols as u32,
        tiles_c: cols.div_ceil(TILE) as u32,
        tiles_r: rows.div_ceil(TILE) as u32,
        _pad: [0; 3],
    };
    // CPU drivers: no tile, no barrier (their caches serve the strided reads).
    if gpu.profile() == KernelProfile::Cpu {
        let groups = x.numel().div_ceil(256 * 8) as u64;
        gpu.dispatch(
            &TRANSPOSE_DIRECT,
            &[],
            &[x.binding(), out.binding()],
            &p,
            groups,
        )?;
    } else {
        let groups = (batch * rows.div_ceil(TILE) * cols.div_ceil(TILE)) as u64;
        gpu.dispatch(
            &TRANSPOSE_KERNEL,
            &[],
            &[x.binding(), out.binding()],
            &p,
            groups,
        )?;
    }
    Ok(out)
}
