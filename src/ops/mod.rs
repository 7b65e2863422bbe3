//! Ops: one Rust file per WGSL file. Each op checks shapes, allocates its output from the pool
//! and records its dispatch; nothing here waits for the GPU.

mod cast;
mod elementwise;
mod matmul;
mod reduce;
mod transpose;

pub use cast::{to_f16, to_f32};
pub use elementwise::{add, axpy, fill, gelu, mul, scale, silu, sub};
pub use matmul::{matmul, matmul_into, matmul_with, Activation, MatmulSpec, MatmulTiling};
pub use reduce::{max_rows, mean_rows, sum_rows};
pub use transpose::transpose;

use crate::error::{ensure_shape, Result};
use crate::tensor::{DType, Tensor};

/// Fail unless the tensor holds f32 (the dtype every compute kernel works in).
pub(crate) fn ensure_f32(op: &str, t: &Tensor) -> Result<()> {
    ensure_shape!(
        t.dtype() == DType::F32,
        "{op} takes f32 tensors, got {:?} (convert with ops::to_f32)",
        t.dtype()
    );
    Ok(())
}

/// Workgroups needed to cover `n` items with `per_group` items each.
pub(crate) fn groups(n: usize, per_group: usize) -> u64 {
    n.div_ceil(per_group) as u64
}
