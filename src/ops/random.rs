//! Standard normals from the counter-based generator (`shaders/random.wgsl`): Philox4x32-10,
//! bit-identical to its CPU twin `crate::rng`; a number depends only on (seed, step, stream,
//! element), never on the dispatch. The sampler's starting noise is one of its streams.

use crate::error::Result;
use crate::gpu::{kernel_params, kernels, Gpu};
use crate::shaders::RANDOM;
use crate::tensor::{DType, Tensor};

kernel_params! {
    struct Params {
        n: u32,
        step: u32,
        stream: u32,
        seed_lo: u32,
        seed_hi: u32,
        _pad: [u32; 3],
    }
}

kernels! {
    RANDOM, Params {
        RANDOM_NORMAL = random_normal(ReadWrite);
    }
}
const WG: usize = 64;

/// Standard normals `[n]` from stream `stream` of (seed, step): element `i` uses counter
/// `(i, step, stream, 0)`.
pub fn random_normal(gpu: &Gpu, n: usize, seed: u64, step: u32, stream: u32) -> Result<Tensor> {
    let out = Tensor::uninit(gpu, &[n], DType::F32)?;
    let p = Params {
        n: n as u32,
        step,
        stream,
        seed_lo: seed as u32,
        seed_hi: (seed >> 32) as u32,
        _pad: [0; 3],
    };
    gpu.dispatch(
        &RANDOM_NORMAL,
        &[],
        &[out.binding()],
        &p,
        n.div_ceil(WG) as u64,
    )?;
    Ok(out)
}
