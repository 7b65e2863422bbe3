//! The flow math of docs/flow-math.md: forward processes (schedules), network predictions and
//! their conversions, SD3's unified weighted loss, training time samplers and the resolution
//! shift, the exact marginal velocity as an oracle, EDM's preconditioning (precondition.rs) and
//! the sampling time grids (grid.rs: uniform, Karras). Conventions: `t = 0` is data, `t = 1`
//! noise, `z_t = a_t x0 + b_t eps`, sampling integrates `dz/dt = v` from 1 down to 0.
//!
//! This is the f64 reference; the GPU kernels of `shaders/flow.wgsl` implement the same
//! formulas in f32 and are tested against it.

pub mod grid;
pub mod loss;
pub mod oracle;
pub mod precondition;
pub mod prediction;
pub mod sampler;
pub mod schedule;

pub use grid::TimeGrid;
pub use loss::{unified_loss, Weighting};
pub use oracle::Mixture;
pub use precondition::{EdmScaling, Preconditioning};
pub use prediction::Prediction;
pub use sampler::{shift, unshift, TimeSampler};
pub use schedule::Schedule;
