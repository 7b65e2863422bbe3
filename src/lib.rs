//! rectiflow: rectified-flow transformers (the method of Stable Diffusion 3) trained and sampled
//! on raw wgpu with hand-written WGSL kernels, as a library a host application embeds; the
//! `rectiflow` command line is a thin client of it.
//!
//! # Where to start
//!
//! - **Sample from a trained model**: [`Pipeline::load`] reads a checkpoint in one call (the
//!   network its configuration describes, the raw or EMA weights, nothing initialised at
//!   random); [`Pipeline::sample`] returns images `[n, C, H, W]` (or points `[n, D]`) for
//!   integer labels.
//! - **Sample a step per frame**: a [`Sampler`] ([`Pipeline::sampler`], or
//!   [`Sampler::start`] over any [`sample::VelocityField`]: the network, the exact velocity
//!   of a data set, a closure of the host's) advances one ODE step per [`Sampler::step`], one
//!   submission each; stepped to the end it equals one-shot sampling.
//! - **Draw into the host's texture**: [`ops::texture::ImageWriter`] writes samples into a
//!   host-owned `rgba8unorm` or `rgba32float` storage texture, or packed RGBA8 into a buffer,
//!   on the GPU; [`Tensor::buffer`], [`Tensor::copy_to_buffer`] and
//!   [`Tensor::copy_from_buffer`] exchange data with the host's buffers.
//! - **Use the host's device**: [`Gpu::from_device`] adopts the host's `wgpu::Device` and
//!   `Queue` ([`wgpu`] is re-exported, so the versions match); [`Gpu::new`] picks an adapter on
//!   its own.
//! - **Train**: a typed [`TrainConfig`] (the one the command line builds from its flags), a
//!   [`Trainer`] on a data set ([`Trainer::step`]) or on the batches the program brings
//!   ([`Trainer::step_on`]), and the command line's run loop as [`train::Run`] (run directory,
//!   checkpoints, sample grids, NaN stop, resume, progress events).
//! - **Several GPUs**: [`train::distributed`] trains one run on N ranks, data parallel, one
//!   gradient all-reduce per step over a [`train::Collective`]; with the `mpi` feature the
//!   `mpi` module is that transport on MPI (`mpirun -np N rectiflow train`).
//! - **Few steps**: [`reflow::generate_pairs`] draws (noise, sample) pairs from a trained flow
//!   and [`train::Run::create_from_weights`] trains a straighter flow (or, with the time
//!   sampler `grid:K`, a `K`-step generator) on them; `--solver rk45` ([`rk45`]) integrates
//!   any flow accurately.
//! - **Files**: checkpoints ([`checkpoint`], read defensively), `.npy` arrays ([`npy`]), PNG
//!   grids ([`output`]), charts ([`plot`]: line charts, loss curves, scatter plots), data sets
//!   ([`data`]).
//! - **Errors**: every failure is an [`Error`] whose variant says what kind it is and whose
//!   message names the problem and what to do; no input makes the library panic.
//!
//! # Layers
//!
//! Bottom up, each importing only the layers below it: [`flow`] (the flow math in f64, no GPU)
//! and [`error`]; [`shaders`] (the WGSL sources and the numbers they share with Rust); [`gpu`]
//! (adapter, device limits, buffer pool, pipeline cache, recorder: buffers and kernels, no
//! tensors); [`tensor`]; [`ops`] (one Rust file per WGSL file: its kernels declared once, shape
//! checks and dispatch); [`params`], [`autograd`] (the tape), [`optim`]; [`nn`] (the MLP, the
//! DiT, the MM-DiT); then the library's runs: [`data`] (with the reflow pairs file, [`pairs`]),
//! [`checkpoint`], [`sample`] (with the adaptive solver, [`rk45`]), [`train`], [`pipeline`],
//! [`eval`], [`reflow`]. Input from users and files is bounded by [`limits`] before anything is
//! allocated.
//!
//! # Examples
//!
//! The engine: tensors and ops, recorded and submitted together when a result is read.
//!
//! ```
//! use rectiflow::{gpu::Gpu, ops, tensor::Tensor};
//! let gpu = Gpu::new()?;
//! let a = Tensor::from_slice(&gpu, &[2, 3], &[1., 2., 3., 4., 5., 6.])?;
//! let b = Tensor::from_slice(&gpu, &[3, 1], &[1., 1., 1.])?;
//! let c = ops::matmul(&a, &b)?; // recorded, not yet run
//! assert_eq!(c.to_vec()?, vec![6., 15.]); // submits and waits
//! # Ok::<(), rectiflow::Error>(())
//! ```
//!
//! A sampler over a velocity field of the host's: here the exact marginal velocity of two
//! points, integrated from noise, lands on them.
//!
//! ```
//! use rectiflow::flow::Schedule;
//! use rectiflow::sample::{FieldInput, FnField, OracleField, VelocityField};
//! use rectiflow::{Gpu, SampleOptions, Sampler, Tensor};
//!
//! let gpu = Gpu::new()?;
//! let data = Tensor::from_slice(&gpu, &[2, 2], &[1.0, 1.0, -1.0, -1.0])?;
//! let mut oracle = OracleField::new(Schedule::RectifiedFlow, &data)?;
//! // Any closure that records a velocity on the GPU is a field; this one asks the oracle.
//! let field = FnField::velocity(|input: &FieldInput| oracle.evaluate(input));
//! let opts = SampleOptions { steps: 100, ..SampleOptions::new(vec![0; 6]) };
//! let mut sampler = Sampler::start(&gpu, field, &[2], &opts)?;
//! while sampler.step()? {} // one ODE step per call, one submission each
//! for p in sampler.finish()?.to_vec()?.chunks(2) {
//!     assert!((p[0].abs() - 1.0).abs() < 0.01 && (p[0] - p[1]).abs() < 0.01, "{p:?}");
//! }
//! # Ok::<(), rectiflow::Error>(())
//! ```
//!
//! Loading a checkpoint and drawing digits into a texture of the host's is
//! `examples/embed_texture.rs`; training from code, `examples/train_toy.rs`; the README's
//! "Use it as a library" has more.

pub mod autograd;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod eval;
pub mod flow;
pub mod gpu;
pub mod limits;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod nn;
pub mod npy;
pub mod ops;
pub mod optim;
pub mod output;
pub mod pairs;
pub mod params;
pub mod pipeline;
pub mod plot;
pub mod reflow;
pub mod rk45;
pub mod rng;
pub mod rundir;
pub mod sample;
pub mod shaders;
pub mod study;
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

// The README's Rust snippets are compiled (and most run) as doctests, so they keep matching
// the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
