//! SD3's multimodal diffusion transformer (MM-DiT, Esser et al. 2024): two token streams with
//! their own weights, the image patches and a context sequence, meeting in one joint attention
//! over their concatenation; adaLN-Zero conditioning from the pooled vector
//! `c = mlp_t(temb(1000 t)) + E_pool[y]`. The context is either [`CONTEXT_TOKENS`] learned tokens
//! per class, `E_ctx[y]` reshaped to `[B, Tc, W]` (the null class has its own), or, when the model
//! is built with `context_dim > 0`, a given embedding sequence `[B, Tc, context_dim]` projected to
//! the width by `context_embedder.proj` ([`Mmdit::forward_with_context`]; Tc is free).
//!
//! ```text
//! per joint block, for each stream s in (context, image) with its own weights:
//!   (sh1, sc1, g1, sh2, sc2, g2)_s = Linear_s,ada(SiLU(c))          (zero-init)
//!   qkv_s = QKNorm(Linear_s,qkv(LN(x_s) (1 + sc1_s) + sh1_s))
//! a = attention(concat_tokens(qkv_context, qkv_image))               (joint, context first)
//! for each stream: x_s = x_s + g1_s Linear_s,proj(a_s)
//!                  x_s = x_s + g2_s MLP_s(LN(x_s) (1 + sc2_s) + sh2_s)
//! ```
//!
//! The image stream starts as in DiT (patch embedding plus 2-D sin-cos positions) and ends with
//! DiT's final adaLN layer and un-patchify. Parameter names follow SD3's reference:
//! `joint_blocks.i.x_block.*` (image) and `joint_blocks.i.context_block.*`, with
//! `attn.ln_q` / `attn.ln_k` the QK RMSNorm scales.

use super::dit::{lin, linear, qk_norm, xavier, ImageStream, Linear, EPS};
use super::ModelConfig;
use crate::autograd::{functions as f, Tape, Var};
use crate::error::{Error, Result};
use crate::params::{Init, ParamId, Params, ParamsBuilder};
use crate::tensor::Tensor;

/// Context tokens per class label.
pub const CONTEXT_TOKENS: usize = 4;

struct Stream {
    ada: Linear,
    qkv: Linear,
    ln_q: ParamId,
    ln_k: ParamId,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
}

impl Stream {
    fn build(b: &mut ParamsBuilder, prefix: &str, w: usize, d: usize) -> Stream {
        Stream {
            ada: linear(
                b,
                &format!("{prefix}.adaLN_modulation.1"),
                6 * w,
                w,
                Init::Zeros,
            ),
            qkv: linear(b, &format!("{prefix}.attn.qkv"), 3 * w, w, xavier(w, 3 * w)),
            ln_q: b.add(format!("{prefix}.attn.ln_q.weight"), &[d], Init::Ones),
            ln_k: b.add(format!("{prefix}.attn.ln_k.weight"), &[d], Init::Ones),
            proj: linear(b, &format!("{prefix}.attn.proj"), w, w, xavier(w, w)),
            fc1: linear(b, &format!("{prefix}.mlp.fc1"), 4 * w, w, xavier(w, 4 * w)),
            fc2: linear(b, &format!("{prefix}.mlp.fc2"), w, 4 * w, xavier(4 * w, w)),
        }
    }
}

pub struct Mmdit {
    io: ImageStream,
    y_pool: ParamId,
    context: Context,
    blocks: Vec<(Stream, Stream)>,
}

/// Where the context stream comes from.
enum Context {
    /// A table of `CONTEXT_TOKENS` tokens per class.
    Labels(ParamId),
    /// A projection of a given sequence.
    Sequence(Linear),
}

impl Mmdit {
    pub fn build(c: &ModelConfig, b: &mut ParamsBuilder) -> Result<Mmdit> {
        let io = ImageStream::build(c, b)?;
        let (w, d, rows) = (c.width, c.width / c.heads, c.classes + 1);
        Ok(Mmdit {
            io,
            y_pool: b.add(
                "y_embedder.embedding_table.weight",
                &[rows, w],
                Init::Normal { std: 0.02 },
            ),
            context: if c.context_dim > 0 {
                Context::Sequence(linear(
                    b,
                    "context_embedder.proj",
                    w,
                    c.context_dim,
                    xavier(c.context_dim, w),
                ))
            } else {
                Context::Labels(b.add(
                    "context_embedder.embedding_table.weight",
                    &[rows, CONTEXT_TOKENS * w],
                    Init::Normal { std: 0.02 },
                ))
            },
            blocks: (0..c.depth)
                .map(|i| {
                    (
                        Stream::build(b, &format!("joint_blocks.{i}.context_block"), w, d),
                        Stream::build(b, &format!("joint_blocks.{i}.x_block"), w, d),
                    )
                })
                .collect(),
        })
    }

    /// The output for `z`, `t` and labels, the context taken from the labels.
    pub fn forward(
        &self,
        tape: &mut Tape,
        p: &Params,
        z: &Var,
        t: &Var,
        labels: &Tensor,
    ) -> Result<Var> {
        let Context::Labels(table) = self.context else {
            return Err(Error::Config(
                "this MM-DiT was built to take a context sequence: call Mmdit::forward_with_context".into(),
            ));
        };
        let (b, w) = (z.shape()[0], self.io.config.width);
        let table = tape.param(p, table);
        let ctx = f::embedding(tape, labels, &table)?;
        let ctx = f::reshape(tape, &ctx, &[b, CONTEXT_TOKENS, w])?;
        self.joint(tape, p, z, t, labels, ctx)
    }

    /// The output for `z`, `t`, labels (for the pooled vector) and a context sequence
    /// `[B, Tc, context_dim]` (for a model built with `context_dim > 0`).
    pub fn forward_with_context(
        &self,
        tape: &mut Tape,
        p: &Params,
        z: &Var,
        t: &Var,
        labels: &Tensor,
        context: &Var,
    ) -> Result<Var> {
        let Context::Sequence(proj) = self.context else {
            return Err(Error::Config(
                "this MM-DiT takes its context from the labels (context_dim 0): call forward"
                    .into(),
            ));
        };
        let (b, dim) = (z.shape()[0], self.io.config.context_dim);
        let s = context.shape();
        if s.len() != 3 || s[0] != b || s[2] != dim || s[1] == 0 {
            return Err(Error::Shape(format!(
                "the context must be [{b}, Tc, {dim}], got {s:?}"
            )));
        }
        let ctx = lin(tape, p, context, proj)?;
        self.joint(tape, p, z, t, labels, ctx)
    }

    /// The joint blocks and the output layer, from the context stream's input `ctx` `[B, Tc, W]`.
    fn joint(
        &self,
        tape: &mut Tape,
        p: &Params,
        z: &Var,
        t: &Var,
        labels: &Tensor,
        mut ctx: Var,
    ) -> Result<Var> {
        let heads = self.io.config.heads;
        let context_tokens = ctx.shape()[1];
        // Pooled conditioning.
        let cond = self.io.time(tape, p, t)?;
        let pool_table = tape.param(p, self.y_pool);
        let pooled = f::embedding(tape, labels, &pool_table)?;
        let cond = f::add(tape, &cond, &pooled)?;
        let cond = f::silu(tape, &cond)?;
        let mut x = self.io.tokens(tape, p, z)?;
        for (cs, xs) in &self.blocks {
            // Each stream's six modulation vectors, [B, 6 W], read in place by the fused ops.
            let ada_c = lin(tape, p, &cond, cs.ada)?;
            let ada_x = lin(tape, p, &cond, xs.ada)?;
            let qkv = |tape: &mut Tape, s: &Stream, x: &Var, ada: &Var| -> Result<Var> {
                let hm = f::ln_modulate(tape, x, ada, 0, 1, EPS)?;
                let q = lin(tape, p, &hm, s.qkv)?;
                qk_norm(tape, p, &q, s.ln_q, s.ln_k, heads)
            };
            let qc = qkv(tape, cs, &ctx, &ada_c)?;
            let qx = qkv(tape, xs, &x, &ada_x)?;
            let joint = f::concat_tokens(tape, &qc, &qx)?;
            let a = f::attention(tape, &joint, heads)?;
            let (ac, ax) = f::split_tokens(tape, &a, context_tokens)?;
            let finish =
                |tape: &mut Tape, s: &Stream, x: &Var, a: &Var, ada: &Var| -> Result<Var> {
                    let o = lin(tape, p, a, s.proj)?;
                    let x = f::ada_gate(tape, x, &o, ada, 2)?;
                    let hm = f::ln_modulate(tape, &x, ada, 3, 4, EPS)?;
                    let f1 = lin(tape, p, &hm, s.fc1)?;
                    let f1 = f::gelu(tape, &f1)?;
                    let f2 = lin(tape, p, &f1, s.fc2)?;
                    f::ada_gate(tape, &x, &f2, ada, 5)
                };
            ctx = finish(tape, cs, &ctx, &ac, &ada_c)?;
            x = finish(tape, xs, &x, &ax, &ada_x)?;
        }
        self.io.output(tape, p, &x, &cond)
    }
}
