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
//!
//! As in SD3, the last block's context stream is "pre-only": nothing reads the context after the
//! last joint attention, so that stream has only what feeds the attention (its adaLN gives
//! shift and scale, `[2 W, W]`, then QKV and the QK-norm) and no output projection or MLP.
//! Checkpoints written before that change (a full last context block) load through
//! [`Mmdit::upgrade`], which keeps the rows of shift and scale and drops the rest:
//! the same network, since the dropped weights reached no output.

use super::image::ImageStream;
use super::layers::{xavier, Linear, QkNorm, EPS};
use super::{ModelConfig, VelocityModel};
use crate::autograd::{functions as f, Tape, Var};
use crate::error::{Error, Result};
use crate::ops::Activation;
use crate::params::{Init, ParamId, Params, ParamsBuilder};
use crate::tensor::Tensor;

/// Context tokens per class label.
pub const CONTEXT_TOKENS: usize = 4;

/// One stream of a joint block. `finish` (output projection and MLP) is absent in the last
/// block's pre-only context stream.
struct Stream {
    ada: Linear,
    qkv: Linear,
    qk_norm: QkNorm,
    finish: Option<Finish>,
}

struct Finish {
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
}

impl Stream {
    /// A full stream (adaLN with 6 chunks), or a pre-only one (2 chunks: shift, scale).
    fn build(b: &mut ParamsBuilder, prefix: &str, w: usize, d: usize, pre_only: bool) -> Stream {
        let name = |s: &str| format!("{prefix}.{s}");
        let chunks = if pre_only { 2 } else { 6 };
        Stream {
            ada: Linear::declare(b, &name("adaLN_modulation.1"), chunks * w, w, Init::Zeros),
            qkv: Linear::declare(b, &name("attn.qkv"), 3 * w, w, xavier(w, 3 * w)),
            qk_norm: QkNorm::declare(b, &name("attn"), ("ln_q", "ln_k"), d),
            finish: (!pre_only).then(|| Finish {
                proj: Linear::declare(b, &name("attn.proj"), w, w, xavier(w, w)),
                fc1: Linear::declare(b, &name("mlp.fc1"), 4 * w, w, xavier(w, 4 * w)),
                fc2: Linear::declare(b, &name("mlp.fc2"), w, 4 * w, xavier(4 * w, w)),
            }),
        }
    }

    /// The stream's adaLN output `[B, 6 W]` (or `[B, 2 W]`) and its normalised QKV.
    fn qkv(
        &self,
        tape: &mut Tape,
        p: &Params,
        x: &Var,
        cond: &Var,
        heads: usize,
    ) -> Result<(Var, Var)> {
        let ada = self.ada.forward(tape, p, cond)?;
        let hm = f::ln_modulate(tape, x, &ada, 0, 1, EPS)?;
        let qkv = self.qkv.forward(tape, p, &hm)?;
        Ok((self.qk_norm.forward(tape, p, &qkv, heads)?, ada))
    }

    /// After the joint attention: gated residuals of the projection and the MLP.
    fn finish(&self, tape: &mut Tape, p: &Params, x: &Var, a: &Var, ada: &Var) -> Result<Var> {
        let Some(fin) = &self.finish else {
            return Ok(x.clone());
        };
        let o = fin.proj.forward(tape, p, a)?;
        let x = f::ada_gate(tape, x, &o, ada, 2)?;
        let hm = f::ln_modulate(tape, &x, ada, 3, 4, EPS)?;
        let f1 = fin.fc1.forward_act(tape, p, &hm, Activation::Gelu)?;
        let f2 = fin.fc2.forward(tape, p, &f1)?;
        f::ada_gate(tape, &x, &f2, ada, 5)
    }
}

/// What to do with a tensor of an older checkpoint ([`Mmdit::upgrade`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upgrade {
    Keep,
    /// Keep the first rows, this many.
    FirstRows(usize),
    Drop,
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
                Context::Sequence(Linear::declare(
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
                    let last = i + 1 == c.depth;
                    let prefix = format!("joint_blocks.{i}");
                    (
                        Stream::build(b, &format!("{prefix}.context_block"), w, d, last),
                        Stream::build(b, &format!("{prefix}.x_block"), w, d, false),
                    )
                })
                .collect(),
        })
    }

    /// How a tensor of a checkpoint written before the last block's context stream became
    /// pre-only maps onto this model (`name` without the `params.`/`ema.`/... prefix).
    pub fn upgrade(config: &ModelConfig, name: &str) -> Upgrade {
        let Some(last) = config.depth.checked_sub(1) else {
            return Upgrade::Keep;
        };
        let prefix = format!("joint_blocks.{last}.context_block.");
        let Some(rest) = name.strip_prefix(&prefix) else {
            return Upgrade::Keep;
        };
        match rest {
            // Shift and scale are the first two of the six chunks.
            "adaLN_modulation.1.weight" | "adaLN_modulation.1.bias" => {
                Upgrade::FirstRows(2 * config.width)
            }
            r if r.starts_with("attn.proj.") || r.starts_with("mlp.") => Upgrade::Drop,
            _ => Upgrade::Keep,
        }
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
        p.refresh_f16()?;
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
        p.refresh_f16()?;
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
        let ctx = proj.forward(tape, p, context)?;
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
            // Each stream's modulation vectors stay in one tensor the fused ops read in place.
            let (qc, ada_c) = cs.qkv(tape, p, &ctx, &cond, heads)?;
            let (qx, ada_x) = xs.qkv(tape, p, &x, &cond, heads)?;
            let joint = f::concat_tokens(tape, &qc, &qx)?;
            let a = f::attention(tape, &joint, heads)?;
            if cs.finish.is_some() {
                let (ac, ax) = f::split_tokens(tape, &a, context_tokens)?;
                ctx = cs.finish(tape, p, &ctx, &ac, &ada_c)?;
                x = xs.finish(tape, p, &x, &ax, &ada_x)?;
            } else {
                // The pre-only context stream ends here: only the image tokens go on.
                let image_tokens = a.shape()[1] - context_tokens;
                let ax = f::slice_tokens(tape, &a, context_tokens, image_tokens)?;
                x = xs.finish(tape, p, &x, &ax, &ada_x)?;
            }
        }
        self.io.output(tape, p, &x, &cond)
    }
}

impl VelocityModel for Mmdit {
    /// The label-context form ([`Mmdit::forward`]).
    fn forward(
        &self,
        tape: &mut Tape,
        p: &Params,
        z: &Var,
        t: &Var,
        labels: &Tensor,
    ) -> Result<Var> {
        Mmdit::forward(self, tape, p, z, t, labels)
    }
}
