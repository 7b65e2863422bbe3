//! Ops: one Rust file per WGSL file. Each op checks shapes, allocates its output from the pool
//! and records its dispatch; nothing here waits for the GPU.

mod attention;
mod cast;
mod elementwise;
mod embed;
pub mod flow;
mod layout;
mod matmul;
mod modulate;
mod norm;
mod optim;
mod reduce;
pub mod texture;

pub use attention::{attention, attention_backward, MAX_HEAD_DIM};
pub use cast::{to_f16, to_f32};
pub use elementwise::{
    add, axpy, clamp, fill, gelu, gelu_backward, mul, scale, scale_by, silu, silu_backward, sub,
};
pub use embed::{
    embedding, embedding_backward, timestep_embedding, timestep_embedding_backward, MAX_PERIOD,
};
pub use layout::{
    concat_tokens, copy, copy_into, copy_tokens, patchify, split_tokens, transpose, unpatchify,
};
pub use matmul::{
    matmul, matmul_into, matmul_with, Activation, MatmulDesign, MatmulSpec, MatmulTiling,
};
pub use modulate::{
    ada_gate, ada_gate_backward, gate, gate_backward, ln_modulate, ln_modulate_backward, modulate,
    modulate_backward,
};
pub use norm::{
    layer_norm, layer_norm_backward, qk_norm, qk_norm_backward, rms_norm, rms_norm_backward,
    softmax, softmax_backward,
};
pub use optim::{adamw, grad_norm, AdamWStep};
pub use reduce::{max_rows, mean_rows, sum_rows, sum_tokens, sum_tokens_into};

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
