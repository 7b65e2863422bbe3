//! Velocity networks: an MLP for 2-D data, a diffusion transformer (DiT) and SD3's two-stream
//! MM-DiT for images. A model
//! declares its parameters (with stable dotted names, the checkpoint keys) into a
//! [`ParamsBuilder`] and computes the network output from `z_t`, `t` and labels on a tape.
//! A [`ModelConfig`] is checked ([`ModelConfig::validate`]) and sized
//! ([`ModelConfig::layout`], [`ModelConfig::activation_elems`]) before anything is allocated.

pub mod dit;
pub mod image;
pub mod layers;
pub mod mlp;
pub mod mmdit;

use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::limits::checked_product;
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

/// Bounds on a model's configuration. The device's limits usually bind first; these keep every
/// size computed from a (possibly corrupt) configuration small enough to count, and refuse
/// nonsense before it is laid out.
pub const MAX_WIDTH: usize = 1 << 16;
/// Most hidden layers or transformer blocks.
pub const MAX_DEPTH: usize = 1024;
/// Most classes.
pub const MAX_CLASSES: usize = 1 << 20;
/// Largest image side, and largest point dimension.
pub const MAX_SIDE: usize = 1 << 14;
/// Most image channels.
pub const MAX_CHANNELS: usize = 256;

impl ModelConfig {
    /// Check every number against its range (names the flag and the range).
    pub fn validate(&self) -> Result<()> {
        let refuse = |m: String| Err(Error::Config(m));
        if !["mlp", "dit", "mmdit"].contains(&self.kind.as_str()) {
            return refuse(format!(
                "unknown model {:?}: use dit, mmdit or mlp",
                self.kind
            ));
        }
        if !(1..=MAX_WIDTH).contains(&self.width) {
            return refuse(format!(
                "--width {}: use 1..={MAX_WIDTH} (a multiple of 4 and of --heads for dit and mmdit)",
                self.width
            ));
        }
        if self.depth > MAX_DEPTH {
            return refuse(format!("--depth {}: use 0..={MAX_DEPTH}", self.depth));
        }
        if self.classes > MAX_CLASSES {
            return refuse(format!(
                "{} classes: at most {MAX_CLASSES} are supported",
                self.classes
            ));
        }
        if self.context_dim > MAX_WIDTH {
            return refuse(format!(
                "context width {}: use 0..={MAX_WIDTH}",
                self.context_dim
            ));
        }
        let side = |v: usize| (1..=MAX_SIDE).contains(&v);
        let shape_ok = match self.shape[..] {
            [d] => side(d),
            [c, h, w] => (1..=MAX_CHANNELS).contains(&c) && side(h) && side(w),
            _ => false,
        };
        if !shape_ok {
            return refuse(format!(
                "examples of shape {:?}: use [D] (points) or [C, H, W] (images) with C in \
                 1..={MAX_CHANNELS} and every other size in 1..={MAX_SIDE}",
                self.shape
            ));
        }
        if self.kind != "mlp" {
            if !(1..=self.width).contains(&self.heads) {
                return refuse(format!(
                    "--heads {}: use 1..={} (at most the width)",
                    self.heads, self.width
                ));
            }
            image::check_image_model(self)?;
        }
        Ok(())
    }

    /// The model's parameters declared into a builder without allocating them: its `specs()`
    /// and `len()` (the flat buffer's elements) size the model before it is built.
    pub fn layout(&self) -> Result<ParamsBuilder> {
        self.validate()?;
        let mut builder = ParamsBuilder::new();
        Model::build(self, &mut builder)?;
        Ok(builder)
    }

    /// Elements of the largest activation of a forward or backward pass over `batch` examples
    /// (attention is fused, so no `T x T` matrix exists); `None` on overflow. An upper bound: the
    /// widest per-token tensor (the MLP's `4 W` hidden layer, the fused `3 W` QKV, the patch
    /// features) over every token, the context tokens of MM-DiT included.
    pub fn activation_elems(&self, batch: usize) -> Option<u64> {
        let batch = batch as u64;
        let dim = checked_product(self.shape.iter().map(|&d| d as u64))?;
        let width = self.width as u64;
        match self.shape[..] {
            [c, h, w] if self.kind != "mlp" && self.patch > 0 => {
                let p = self.patch as u64;
                let tokens = (h as u64 / p)
                    .checked_mul(w as u64 / p)?
                    .checked_add(mmdit::CONTEXT_TOKENS as u64)?;
                let features = (4 * width)
                    .max(c as u64 * p * p)
                    .max(image::TIME_DIM as u64);
                checked_product([batch, tokens, features]).map(|a| a.max(batch.saturating_mul(dim)))
            }
            _ => batch.checked_mul(width.max(dim).max(64)),
        }
    }
}

/// A velocity network: computes its output (the configured prediction) from `z` `[B, dim]`, `t`
/// `[B]` and labels `[B]` (f32 class numbers; the null class for unconditional) on a tape, with
/// its parameters' values in `params` (the model holds only their ids, so one model serves the
/// raw weights and their EMA alike). Where the parameters store f16 weights, a forward pass
/// first brings their copy up to date ([`Params::refresh_f16`]).
pub trait VelocityModel {
    fn forward(
        &self,
        tape: &mut Tape,
        params: &Params,
        z: &Var,
        t: &Var,
        labels: &Tensor,
    ) -> Result<Var>;
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

    /// The network as a [`VelocityModel`].
    pub fn network(&self) -> &dyn VelocityModel {
        match self {
            Model::Mlp(m) => m,
            Model::Dit(m) => m,
            Model::Mmdit(m) => m,
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
        self.network().forward(tape, params, z, t, labels)
    }
}

/// The time embedding's input scale: `t` in [0, 1] is embedded as `1000 t`, the range DiT's
/// frequencies were designed for.
pub const TIME_SCALE: f32 = 1000.0;
