//! A velocity MLP for low-dimensional data:
//!
//! `h = silu(W_in z + W_t temb(t) + E[y])`, then `depth` layers `h = silu(W_i h + b_i)`, and
//! `out = W_out h + b_out` (zero-initialised), where `temb` is the 64-dimensional sinusoidal
//! embedding of `1000 t` and `E` the class table (when labelled).

use super::layers::{xavier, Linear};
use super::{ModelConfig, VelocityModel, TIME_SCALE};
use crate::autograd::{functions as f, Tape, Var};
use crate::error::Result;
use crate::ops::Activation;
use crate::params::{Init, ParamId, Params, ParamsBuilder};
use crate::tensor::Tensor;

const TIME_DIM: usize = 64;

pub struct Mlp {
    input: Linear,
    time: Linear,
    classes: Option<ParamId>,
    hidden: Vec<Linear>,
    output: Linear,
}

impl Mlp {
    pub fn build(c: &ModelConfig, b: &mut ParamsBuilder) -> Result<Mlp> {
        let dim: usize = c.shape.iter().product();
        let w = c.width;
        Ok(Mlp {
            input: Linear::declare(b, "input", w, dim, xavier(dim, w)),
            time: Linear::declare(b, "time", w, TIME_DIM, xavier(TIME_DIM, w)),
            classes: (c.classes > 0).then(|| {
                b.add(
                    "class_embedding.weight",
                    &[c.classes + 1, w],
                    Init::Normal { std: 0.02 },
                )
            }),
            hidden: (0..c.depth)
                .map(|i| Linear::declare(b, &format!("hidden.{i}"), w, w, xavier(w, w)))
                .collect(),
            output: Linear::declare(b, "output", dim, w, Init::Zeros),
        })
    }
}

impl VelocityModel for Mlp {
    fn forward(
        &self,
        tape: &mut Tape,
        p: &Params,
        z: &Var,
        t: &Var,
        labels: &Tensor,
    ) -> Result<Var> {
        p.refresh_f16()?;
        let temb = f::timestep_embedding(tape, t, TIME_DIM, TIME_SCALE)?;
        let hy = match self.classes {
            Some(table) => {
                let table = tape.param(p, table);
                Some(f::embedding(tape, labels, &table)?)
            }
            None => None,
        };
        // The input, time and class terms summed and activated in the matmuls' epilogues.
        let term = |tape: &mut Tape, l: &Linear| (tape.weight(p, l.weight), tape.param(p, l.bias));
        let (wt, bt) = term(tape, &self.time);
        let (wz, bz) = term(tape, &self.input);
        let mut h = f::linear_sum_act(
            tape,
            &[(&temb, &wt, Some(&bt)), (z, &wz, Some(&bz))],
            hy.as_ref(),
            Activation::Silu,
        )?;
        for layer in &self.hidden {
            h = layer.forward_act(tape, p, &h, Activation::Silu)?;
        }
        self.output.forward(tape, p, &h)
    }
}
