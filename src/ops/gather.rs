//! A training batch drawn on the GPU (`shaders/gather.wgsl`): rows of a data set already in GPU
//! memory, uniformly with replacement, with the counter-based generator's batch stream
//! (`shaders::stream::BATCH`) of (seed, step).

use super::ensure_f32;
use crate::error::{ensure_shape, Result};
use crate::gpu::{kernel_params, kernels};
use crate::shaders::GATHER;
use crate::tensor::{DType, Tensor};

kernel_params! {
    struct Params {
        batch: u32,
        dim: u32,
        /// Examples in the data set.
        rows: u32,
        step: u32,
        seed_lo: u32,
        seed_hi: u32,
        /// The global index of sample 0 in the batch stream (a rank's slice of a global batch).
        first_sample: u32,
        _pad: u32,
    }
}

kernels! {
    GATHER, Params {
        // data, labels, the batch, its labels.
        GATHER_BATCH = gather_batch(Read, Read, ReadWrite, ReadWrite);
    }
}
const WG: usize = 64;

/// A batch of `batch` rows of `data` `[N, D]` (and of `labels` `[N]`), drawn uniformly with
/// replacement on the GPU from the batch stream of (seed, step): example `b` takes row
/// `floor(u N)`, `u` the uniform of counter `(b, step, stream::BATCH, 0)`.
pub fn gather_batch(
    data: &Tensor,
    labels: &Tensor,
    batch: usize,
    seed: u64,
    step: u32,
) -> Result<(Tensor, Tensor)> {
    gather_batch_slice(data, labels, batch, 0, seed, step)
}

/// Samples `first_sample..first_sample + batch` of the batch [`gather_batch`] would draw from
/// (seed, step) with a batch that large: the slice of a global batch that one rank of a
/// data-parallel run trains on. The rows are those one process would draw, bit for bit.
pub fn gather_batch_slice(
    data: &Tensor,
    labels: &Tensor,
    batch: usize,
    first_sample: usize,
    seed: u64,
    step: u32,
) -> Result<(Tensor, Tensor)> {
    ensure_f32("gather_batch", data)?;
    ensure_shape!(
        data.shape().len() == 2 && data.shape()[0] > 0,
        "gather_batch takes data [N, D], got {:?}",
        data.shape()
    );
    let (n, d) = (data.shape()[0], data.shape()[1]);
    ensure_shape!(
        labels.shape() == [n],
        "gather_batch: labels must be [{n}], got {:?}",
        labels.shape()
    );
    let gpu = data.gpu();
    let x = Tensor::uninit(gpu, &[batch, d], DType::F32)?;
    let l = Tensor::uninit(gpu, &[batch], DType::F32)?;
    let p = Params {
        batch: batch as u32,
        dim: d as u32,
        rows: n as u32,
        step,
        seed_lo: seed as u32,
        seed_hi: (seed >> 32) as u32,
        first_sample: first_sample as u32,
        _pad: 0,
    };
    gpu.dispatch(
        &GATHER_BATCH,
        &[],
        &[data.binding(), labels.binding(), x.binding(), l.binding()],
        &p,
        (batch * d).div_ceil(WG) as u64,
    )?;
    Ok((x, l))
}
