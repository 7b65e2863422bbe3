//! rectiflow: rectified-flow transformers trained and sampled on raw wgpu with hand-written
//! WGSL kernels.
//!
//! Layers, bottom up: [`gpu`] (adapter, device, buffer pool, pipeline cache, recorder),
//! [`tensor`] (GPU tensors), [`ops`] (one Rust file per WGSL file: shape checks and dispatch).
//! Input from users and files is bounded by [`limits`] before anything is allocated.
//!
//! ```no_run
//! use rectiflow::{gpu::Gpu, ops, tensor::Tensor};
//! let gpu = Gpu::new()?;
//! let a = Tensor::from_slice(&gpu, &[2, 3], &[1., 2., 3., 4., 5., 6.])?;
//! let b = Tensor::from_slice(&gpu, &[3, 1], &[1., 1., 1.])?;
//! let c = ops::matmul(&a, &b)?; // recorded, not yet run
//! assert_eq!(c.to_vec()?, vec![6., 15.]); // submits and waits
//! # Ok::<(), rectiflow::Error>(())
//! ```

pub mod autograd;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod eval;
pub mod flow;
pub mod gpu;
pub mod limits;
pub mod nn;
pub mod npy;
pub mod ops;
pub mod optim;
pub mod output;
pub mod params;
pub mod pipeline;
pub mod rng;
pub mod rundir;
pub mod sample;
pub mod shaders;
pub mod tensor;
pub mod train;

pub use error::{Error, Result};
pub use gpu::Gpu;
pub use pipeline::{Pipeline, Weights};
pub use sample::{SampleOptions, Sampler, Solver};
pub use tensor::{DType, Tensor};
pub use train::{TrainConfig, Trainer};
/// The wgpu this crate is built on, for embedding applications that hand over their device.
pub use wgpu;
