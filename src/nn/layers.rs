//! Building blocks the networks share: a linear layer declared into the flat parameters, the
//! initialisers the networks use, and QK-norm over a fused QKV projection.

use crate::autograd::{functions as f, Tape, Var};
use crate::error::Result;
use crate::ops::Activation;
use crate::params::{Init, ParamId, Params, ParamsBuilder};

/// LayerNorm and RMSNorm epsilon of every network.
pub const EPS: f32 = 1e-6;

/// `x W^T + b` over the last dimension, `W` `[out, in]` (PyTorch's `nn.Linear`): the parameters
/// `NAME.weight` and `NAME.bias` (zero to begin with). The matmuls read the weight's f16 copy
/// where the parameters store one ([`Tape::weight`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    pub weight: ParamId,
    pub bias: ParamId,
}

impl Linear {
    /// Declare `NAME.weight` `[out, inp]` (initialised by `init`) and `NAME.bias` `[out]`.
    pub fn declare(b: &mut ParamsBuilder, name: &str, out: usize, inp: usize, init: Init) -> Self {
        Linear {
            weight: b.add(format!("{name}.weight"), &[out, inp], init),
            bias: b.add(format!("{name}.bias"), &[out], Init::Zeros),
        }
    }

    /// The layer applied to `x` `[.., in]`.
    pub fn forward(&self, tape: &mut Tape, p: &Params, x: &Var) -> Result<Var> {
        let (w, b) = (tape.weight(p, self.weight), tape.param(p, self.bias));
        f::linear(tape, x, &w, Some(&b))
    }

    /// `act(x W^T + b)`, one matmul with the activation in its epilogue (see
    /// [`f::linear_act`]).
    pub fn forward_act(
        &self,
        tape: &mut Tape,
        p: &Params,
        x: &Var,
        act: Activation,
    ) -> Result<Var> {
        let (w, b) = (tape.weight(p, self.weight), tape.param(p, self.bias));
        f::linear_act(tape, x, &w, Some(&b), act)
    }
}

/// Glorot/Xavier-uniform for a layer `inp -> out`.
pub fn xavier(inp: usize, out: usize) -> Init {
    Init::XavierUniform {
        fan_in: inp,
        fan_out: out,
    }
}

/// The scales of a QK-norm (RMSNorm of every head's query and key), `[D]` each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QkNorm {
    pub q: ParamId,
    pub k: ParamId,
}

impl QkNorm {
    /// Declare `{prefix}.{q_name}.weight` and `{prefix}.{k_name}.weight` `[d]`, ones.
    pub fn declare(b: &mut ParamsBuilder, prefix: &str, names: (&str, &str), d: usize) -> Self {
        QkNorm {
            q: b.add(format!("{prefix}.{}.weight", names.0), &[d], Init::Ones),
            k: b.add(format!("{prefix}.{}.weight", names.1), &[d], Init::Ones),
        }
    }

    /// QK-norm of `qkv` `[B, T, 3 W]` (values pass through).
    pub fn forward(&self, tape: &mut Tape, p: &Params, qkv: &Var, heads: usize) -> Result<Var> {
        let (gq, gk) = (tape.param(p, self.q), tape.param(p, self.k));
        f::qk_norm(tape, qkv, &gq, &gk, heads, EPS)
    }
}
