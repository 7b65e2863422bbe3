//! Ops: one Rust file per WGSL file. Each file declares its kernels once (entry points, the
//! access of their bindings, their `Params` struct: `gpu::kernels!`, `gpu::kernel_params!`), and
//! each op checks shapes, allocates its output from the pool and records its dispatch; nothing
//! here waits for the GPU. The layer sits on tensors and the GPU context, below the tape.

mod attention;
mod cast;
mod elementwise;
mod embed;
pub mod flow;
mod gather;
mod launch;
mod layout;
mod matmul;
mod modulate;
mod norm;
mod optim;
mod random;
mod reduce;
pub mod solver;
pub mod texture;
pub mod tune;

pub use attention::{attention, attention_backward, MAX_HEAD_DIM};
pub use cast::{cast_into, to_f16, to_f32};
pub use elementwise::{
    add, axpy, clamp, fill, gelu, gelu_backward, mul, scale, scale_by, silu, silu_backward, sub,
};
pub use embed::{
    embedding, embedding_backward, timestep_embedding, timestep_embedding_backward, MAX_PERIOD,
};
pub use gather::{gather_batch, gather_batch_slice};
pub use launch::launch;
pub use layout::{
    concat_tokens, copy, copy_into, copy_tokens, patchify, split_tokens, transpose, unpatchify,
};
pub use matmul::{
    matmul, matmul_into, matmul_with, Activation, MatmulAux, MatmulDesign, MatmulSpec, MatmulTiling,
};
pub use modulate::{
    ada_gate, ada_gate_backward, gate, gate_backward, ln_modulate, ln_modulate_backward,
    ln_modulate_backward_into, modulate, modulate_backward,
};
pub use norm::{
    layer_norm, layer_norm_backward, qk_norm, qk_norm_backward, rms_norm, rms_norm_backward,
    softmax, softmax_backward,
};
pub use optim::{adamw, grad_norm, AdamWStep};
pub use random::random_normal;
pub use reduce::{
    max_rows, mean_rows, sum_rows, sum_tokens, sum_tokens_into, sum_tokens_pair_into,
};
pub use solver::{error_weights, linear_combination};

use crate::error::{ensure_shape, Result};
use crate::gpu::{Access, Binding, Gpu, Kernel};
use crate::tensor::{DType, Tensor};

/// Every kernel of the engine: the GPU context's own and each op file's (for the tests that
/// check each against its WGSL, and for tools that list them).
pub fn all_kernels() -> Vec<&'static Kernel> {
    [
        crate::gpu::KERNELS,
        attention::KERNELS,
        cast::KERNELS,
        elementwise::KERNELS,
        embed::KERNELS,
        flow::KERNELS,
        gather::KERNELS,
        layout::KERNELS,
        matmul::KERNELS,
        modulate::KERNELS,
        norm::KERNELS,
        optim::KERNELS,
        random::KERNELS,
        reduce::KERNELS,
        solver::KERNELS,
        texture::KERNELS,
    ]
    .concat()
}

/// The bindings of `kernel` from what the caller has, slot by slot: nothing where the kernel
/// uses nothing ([`Access::Unused`]), else the tensor given, or the context's absent-input
/// buffer where an optional input it reads (told so by its parameters) is not given.
pub(crate) fn bind<'a, const N: usize>(
    kernel: &Kernel,
    gpu: &'a Gpu,
    given: [Option<&'a Tensor>; N],
) -> [Binding<'a>; N] {
    debug_assert_eq!(kernel.access.len(), N, "the bindings of {}", kernel.entry);
    std::array::from_fn(|i| match (kernel.access[i], given[i]) {
        (Access::Unused, _) => Binding::Unused,
        (_, Some(t)) => t.binding(),
        (_, None) => gpu.absent(),
    })
}

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
