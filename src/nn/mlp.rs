//! A velocity MLP for low-dimensional data:
//!
//! `h = silu(W_in z + W_t temb(t) + E[y])`, then `depth` layers `h = silu(W_i h + b_i)`, and
//! `out = W_out h + b_out` (zero-initialised), where `temb` is the 64-dimensional sinusoidal
//! embedding of `1000 t` and `E` the class table (when labelled).

use super::dit::lin;
use super::{ModelConfig, TIME_SCALE};
use crate::autograd::{functions as f, Tape, Var};
use crate::error::Result;
use crate::params::{Init, ParamId, Params, ParamsBuilder};
use crate::tensor::Tensor;

const TIME_DIM: usize = 64;

pub struct Mlp {
    input: (ParamId, ParamId),
    time: (ParamId, ParamId),
    classes: Option<ParamId>,
    hidden: Vec<(ParamId, ParamId)>,
    output: (ParamId, ParamId),
}

fn linear(
    b: &mut ParamsBuilder,
    name: &str,
    out: usize,
    inp: usize,
    zero: bool,
) -> (ParamId, ParamId) {
    let init = if zero {
        Init::Zeros
    } else {
        Init::XavierUniform {
            fan_in: inp,
            fan_out: out,
        }
    };
    (
        b.add(format!("{name}.weight"), &[out, inp], init),
        b.add(format!("{name}.bias"), &[out], Init::Zeros),
    )
}

impl Mlp {
    pub fn build(c: &ModelConfig, b: &mut ParamsBuilder) -> Result<Mlp> {
        let dim: usize = c.shape.iter().product();
        let w = c.width;
        Ok(Mlp {
            input: linear(b, "input", w, dim, false),
            time: linear(b, "time", w, TIME_DIM, false),
            classes: (c.classes > 0).then(|| {
                b.add(
                    "class_embedding.weight",
                    &[c.classes + 1, w],
                    Init::Normal { std: 0.02 },
                )
            }),
            hidden: (0..c.depth)
                .map(|i| linear(b, &format!("hidden.{i}"), w, w, false))
                .collect(),
            output: linear(b, "output", dim, w, true),
        })
    }

    pub fn forward(
        &self,
        tape: &mut Tape,
        p: &Params,
        z: &Var,
        t: &Var,
        labels: &Tensor,
    ) -> Result<Var> {
        let temb = f::timestep_embedding(tape, t, TIME_DIM, TIME_SCALE)?;
        let hz = lin(tape, p, z, self.input)?;
        let ht = lin(tape, p, &temb, self.time)?;
        let mut h = f::add(tape, &hz, &ht)?;
        if let Some(table) = self.classes {
            let table = tape.param(p, table);
            let hy = f::embedding(tape, labels, &table)?;
            h = f::add(tape, &h, &hy)?;
        }
        h = f::silu(tape, &h)?;
        for &layer in &self.hidden {
            let x = lin(tape, p, &h, layer)?;
            h = f::silu(tape, &x)?;
        }
        lin(tape, p, &h, self.output)
    }
}
