//! A user's own kernels on tensors, through the engine's pipeline cache, pools and submission.

use crate::error::{Error, Result};
use crate::gpu::{Access, Cost, Gpu, Kernel};
use crate::tensor::Tensor;

/// Record a dispatch of your own kernel on tensors (bound at `@group(0)`, bindings `0..n` in
/// order, one per entry of the kernel's access list). `params` is the kernel's `Params` struct
/// (at most 128 bytes, declared in WGSL as `@group(1) @binding(0) var<uniform> params: Params;`);
/// `workgroups` is a linear count, split over x, y and z where it exceeds the device limit, so
/// the kernel must fold `workgroup_id` back into `wid.x + wid.y * nwg.x + wid.z * nwg.x * nwg.y`.
pub fn launch<P: bytemuck::Pod>(
    gpu: &Gpu,
    kernel: &Kernel,
    overrides: &[(&'static str, f64)],
    tensors: &[&Tensor],
    params: &P,
    workgroups: u64,
) -> Result<()> {
    if let Some(a) = kernel
        .access
        .iter()
        .find(|a| !matches!(a, Access::Read | Access::ReadWrite))
    {
        return Err(Error::Config(format!(
            "kernel `{}`: launch binds a tensor to every binding; {a:?} is not a tensor's",
            kernel.entry
        )));
    }
    if tensors.len() != kernel.access.len() {
        return Err(Error::Shape(format!(
            "kernel `{}` binds {} buffers, {} tensors were given",
            kernel.entry,
            kernel.access.len(),
            tensors.len()
        )));
    }
    let bytes = bytemuck::bytes_of(params);
    if bytes.len() > 128 {
        return Err(Error::Shape(format!(
            "kernel `{}`: parameters of {} bytes, more than 128",
            kernel.entry,
            bytes.len()
        )));
    }
    let bindings: Vec<_> = tensors.iter().map(|t| t.binding()).collect();
    let cost = Cost {
        bytes: tensors.iter().map(|t| t.byte_len() as f64).sum(),
        ..Cost::default()
    };
    if let Some(t) = tensors.iter().find(|t| !t.gpu().same_context(gpu)) {
        return Err(Error::Config(format!(
            "kernel `{}`: a tensor {:?} lives on another context",
            kernel.entry,
            t.shape()
        )));
    }
    gpu.record(kernel, overrides, &bindings, bytes, workgroups, cost)
}
