//! A diffusion transformer (DiT, Peebles and Xie) with adaLN-Zero conditioning and QK RMSNorm.
//! With `x` the image `[B, C, H, W]`, `p` the patch size, `W` the width and `D = W / heads`:
//!
//! ```text
//! tokens  = patchify(x) W_x^T + b_x + pos               [B, T, W], T = (H/p)(W/p), pos: 2-D sin-cos
//! c       = mlp_t(temb(1000 t)) + E[y]                  [B, W], mlp_t = Linear, SiLU, Linear
//! block:  (sh1, sc1, g1, sh2, sc2, g2) = Linear(SiLU(c)) (6 W outputs, in this order, zero-init)
//!         h = LN(x) (1 + sc1) + sh1
//!         q, k, v = split(h W_qkv^T + b_qkv); q = RMSNorm(q) per head, k likewise (scales [D])
//!         x = x + g1 (attention(q, k, v) W_o^T + b_o)
//!         h = LN(x) (1 + sc2) + sh2
//!         x = x + g2 (GELU(h W_1^T + b_1) W_2^T + b_2)     (hidden width 4 W)
//! final:  (sh, sc) = Linear(SiLU(c)) (zero-init); out = (LN(x) (1 + sc) + sh) W_f^T + b_f (zero-init)
//! output  = unpatchify(out)                             [B, C H W]
//! ```
//!
//! LayerNorms have no affine parameters (eps 1e-6); RMSNorm eps 1e-6. Parameter names follow
//! the reference DiT implementation (`blocks.0.attn.qkv.weight`, ...), so the weights map onto it;
//! `x_embedder.proj.weight` is `[W, C p p]`, the reference's `[W, C, p, p]` convolution flattened.

use super::image::ImageStream;
use super::layers::{xavier, Linear, QkNorm, EPS};
use super::{ModelConfig, VelocityModel};
use crate::autograd::{functions as f, Tape, Var};
use crate::error::Result;
use crate::ops::Activation;
use crate::params::{Init, ParamId, Params, ParamsBuilder};
use crate::tensor::Tensor;

struct Block {
    ada: Linear,
    qkv: Linear,
    qk_norm: QkNorm,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
}

pub struct Dit {
    io: ImageStream,
    y_embed: Option<ParamId>,
    blocks: Vec<Block>,
}

impl Dit {
    pub fn build(c: &ModelConfig, b: &mut ParamsBuilder) -> Result<Dit> {
        let io = ImageStream::build(c, b)?;
        let (w, d) = (c.width, c.width / c.heads);
        let y_embed = (c.classes > 0).then(|| {
            b.add(
                "y_embedder.embedding_table.weight",
                &[c.classes + 1, w],
                Init::Normal { std: 0.02 },
            )
        });
        let blocks = (0..c.depth)
            .map(|i| {
                let name = |s: &str| format!("blocks.{i}.{s}");
                Block {
                    ada: Linear::declare(b, &name("adaLN_modulation.1"), 6 * w, w, Init::Zeros),
                    qkv: Linear::declare(b, &name("attn.qkv"), 3 * w, w, xavier(w, 3 * w)),
                    qk_norm: QkNorm::declare(b, &name("attn"), ("q_norm", "k_norm"), d),
                    proj: Linear::declare(b, &name("attn.proj"), w, w, xavier(w, w)),
                    fc1: Linear::declare(b, &name("mlp.fc1"), 4 * w, w, xavier(w, 4 * w)),
                    fc2: Linear::declare(b, &name("mlp.fc2"), w, 4 * w, xavier(4 * w, w)),
                }
            })
            .collect();
        Ok(Dit {
            io,
            y_embed,
            blocks,
        })
    }
}

impl VelocityModel for Dit {
    fn forward(
        &self,
        tape: &mut Tape,
        p: &Params,
        z: &Var,
        t: &Var,
        labels: &Tensor,
    ) -> Result<Var> {
        p.refresh_f16()?;
        let heads = self.io.config.heads;
        let mut cond = self.io.time(tape, p, t)?;
        if let Some(table) = self.y_embed {
            let table = tape.param(p, table);
            let y = f::embedding(tape, labels, &table)?;
            cond = f::add(tape, &cond, &y)?;
        }
        let cond = f::silu(tape, &cond)?;
        let mut x = self.io.tokens(tape, p, z)?;
        for blk in &self.blocks {
            x = block(tape, p, &x, &cond, blk, heads)?;
        }
        self.io.output(tape, p, &x, &cond)
    }
}

/// One adaLN-Zero block on tokens `x` `[B, T, W]` conditioned on `cond` (through SiLU). The six
/// modulation vectors stay in one tensor `[B, 6 W]` (shift, scale, gate of the attention, then
/// of the MLP) that the fused kernels read in place.
fn block(
    tape: &mut Tape,
    p: &Params,
    x: &Var,
    cond: &Var,
    blk: &Block,
    heads: usize,
) -> Result<Var> {
    let ada = blk.ada.forward(tape, p, cond)?;
    let hm = f::ln_modulate(tape, x, &ada, 0, 1, EPS)?;
    let qkv = blk.qkv.forward(tape, p, &hm)?;
    let qkv = blk.qk_norm.forward(tape, p, &qkv, heads)?;
    let a = f::attention(tape, &qkv, heads)?;
    let o = blk.proj.forward(tape, p, &a)?;
    let x = f::ada_gate(tape, x, &o, &ada, 2)?;
    let hm = f::ln_modulate(tape, &x, &ada, 3, 4, EPS)?;
    let f1 = blk.fc1.forward_act(tape, p, &hm, Activation::Gelu)?;
    let f2 = blk.fc2.forward(tape, p, &f1)?;
    f::ada_gate(tape, &x, &f2, &ada, 5)
}
