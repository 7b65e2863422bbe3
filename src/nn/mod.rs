//! Velocity networks: an MLP for 2-D data, a diffusion transformer (DiT) and SD3's two-stream
//! MM-DiT for images. A model
//! declares its parameters (with stable dotted names, the checkpoint keys) into a
//! [`ParamsBuilder`] and computes the network output from `z_t`, `t` and labels on a tape.

pub mod dit;
pub mod mlp;
pub mod mmdit;

use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::params::{Params, ParamsBuilder};
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Which network and its size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// `mlp`, `dit` or `mmdit`.
    pub kind: String,
    /// Hidden width (the transformer's model dimension).
    pub width: usize,
    /// Hidden layers (MLP) or transformer blocks (DiT).
    pub depth: usize,
    /// Attention heads (DiT).
    pub heads: usize,
    /// Patch size (DiT).
    pub patch: usize,
    /// Shape of one example: `[C, H, W]` or `[2]`.
    pub shape: Vec<usize>,
    /// Number of classes; the label `classes` is the null class. 0: unconditional.
    pub classes: usize,
    /// MM-DiT only: the width of an external context sequence `[B, Tc, context_dim]` (given to
    /// `Mmdit::forward_with_context`); 0: the context comes from the class label.
    #[serde(default)]
    pub context_dim: usize,
}

/// A built network.
pub enum Model {
    Mlp(mlp::Mlp),
    Dit(dit::Dit),
    Mmdit(mmdit::Mmdit),
}

impl Model {
    /// Declare the parameters of `config` into `builder`.
    pub fn build(config: &ModelConfig, builder: &mut ParamsBuilder) -> Result<Model> {
        match config.kind.as_str() {
            "mlp" => Ok(Model::Mlp(mlp::Mlp::build(config, builder)?)),
            "dit" => Ok(Model::Dit(dit::Dit::build(config, builder)?)),
            "mmdit" => Ok(Model::Mmdit(mmdit::Mmdit::build(config, builder)?)),
            other => Err(Error::Config(format!(
                "unknown model {other:?}: use dit, mmdit or mlp"
            ))),
        }
    }

    /// The network output `[B, dim]` for `z` `[B, dim]`, `t` `[B]` and labels `[B]` (f32 class
    /// numbers; the null class for unconditional).
    pub fn forward(
        &self,
        tape: &mut Tape,
        params: &Params,
        z: &Var,
        t: &Var,
        labels: &Tensor,
    ) -> Result<Var> {
        match self {
            Model::Mlp(m) => m.forward(tape, params, z, t, labels),
            Model::Dit(m) => m.forward(tape, params, z, t, labels),
            Model::Mmdit(m) => m.forward(tape, params, z, t, labels),
        }
    }
}

/// The time embedding's input scale: `t` in [0, 1] is embedded as `1000 t`, the range DiT's
/// frequencies were designed for.
pub const TIME_SCALE: f32 = 1000.0;
