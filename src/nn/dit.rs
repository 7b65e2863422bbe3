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

use super::{ModelConfig, TIME_SCALE};
use crate::autograd::{functions as f, Tape, Var};
use crate::error::{Error, Result};
use crate::params::{Init, ParamId, Params, ParamsBuilder};
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::sync::Mutex;

pub(super) const TIME_DIM: usize = 256;
pub(super) const EPS: f32 = 1e-6;

pub(super) type Linear = (ParamId, ParamId);

struct Block {
    ada: Linear,
    qkv: Linear,
    q_norm: ParamId,
    k_norm: ParamId,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
}

pub struct Dit {
    io: ImageStream,
    y_embed: Option<ParamId>,
    blocks: Vec<Block>,
}

pub(super) fn linear(
    b: &mut ParamsBuilder,
    name: &str,
    out: usize,
    inp: usize,
    init: Init,
) -> Linear {
    (
        b.add(format!("{name}.weight"), &[out, inp], init),
        b.add(format!("{name}.bias"), &[out], Init::Zeros),
    )
}

pub(super) fn xavier(inp: usize, out: usize) -> Init {
    Init::XavierUniform {
        fan_in: inp,
        fan_out: out,
    }
}

/// DiT's 2-D sine-cosine position embedding `[gh * gw, width]`: the first half of the features
/// encode the row, the second half the column, each as `[sin(pos w_i), cos(pos w_i)]` with
/// `w_i = 10000^(-i / (width / 4))`.
pub fn position_embedding(gh: usize, gw: usize, width: usize) -> Vec<f32> {
    let quarter = width / 4;
    let mut out = vec![0f32; gh * gw * width];
    for r in 0..gh {
        for c in 0..gw {
            let row = &mut out[(r * gw + c) * width..][..width];
            for (half, pos) in [(0, r as f64), (1, c as f64)] {
                for i in 0..quarter {
                    let omega = 1.0 / 10000f64.powf(i as f64 / quarter as f64);
                    row[half * width / 2 + i] = (pos * omega).sin() as f32;
                    row[half * width / 2 + quarter + i] = (pos * omega).cos() as f32;
                }
            }
        }
    }
    out
}

/// The position embedding of a token grid, tiled over the batch: a constant, made once per
/// batch size.
pub(super) struct Positions {
    grid: (usize, usize),
    width: usize,
    tiled: Mutex<HashMap<usize, Tensor>>,
}

impl Positions {
    pub(super) fn new(gh: usize, gw: usize, width: usize) -> Positions {
        Positions {
            grid: (gh, gw),
            width,
            tiled: Mutex::new(HashMap::new()),
        }
    }

    /// `[batch, gh * gw, width]`.
    pub(super) fn tiled(&self, gpu: &crate::Gpu, batch: usize) -> Result<Tensor> {
        let mut cache = self.tiled.lock().unwrap();
        if let Some(t) = cache.get(&batch) {
            return Ok(t.clone());
        }
        let (gh, gw) = self.grid;
        let one = position_embedding(gh, gw, self.width);
        let all: Vec<f32> = (0..batch).flat_map(|_| one.iter().copied()).collect();
        let t = Tensor::from_slice(gpu, &[batch, gh * gw, self.width], &all)?;
        cache.insert(batch, t.clone());
        Ok(t)
    }
}

/// Check an image transformer's configuration; returns (channels, height, width).
pub(super) fn check_image_model(c: &ModelConfig) -> Result<(usize, usize, usize)> {
    let (w, heads, p) = (c.width, c.heads, c.patch);
    if c.shape.len() != 3 {
        return Err(Error::Config(format!(
            "{} takes images [C, H, W], the data has shape {:?} (use --model mlp for points)",
            c.kind, c.shape
        )));
    }
    let (ch, h, wd) = (c.shape[0], c.shape[1], c.shape[2]);
    if p == 0 || h % p != 0 || wd % p != 0 {
        return Err(Error::Config(format!(
            "patch size {p} must divide the image size {h}x{wd}"
        )));
    }
    if heads == 0 || w % heads != 0 || w % 4 != 0 || w / heads > crate::ops::MAX_HEAD_DIM {
        return Err(Error::Config(format!(
            "width {w} must be a multiple of 4 and of heads {heads}, with width / heads at most {}",
            crate::ops::MAX_HEAD_DIM
        )));
    }
    Ok((ch, h, wd))
}

/// `x W^T + b` with a parameter pair.
pub(super) fn lin(tape: &mut Tape, p: &Params, x: &Var, (w, b): Linear) -> Result<Var> {
    let (w, b) = (tape.param(p, w), tape.param(p, b));
    f::linear(tape, x, &w, Some(&b))
}

/// What DiT and MM-DiT share around their blocks: the patch embedding with positions, the time
/// MLP, and the final adaLN layer with un-patchify.
pub(super) struct ImageStream {
    pub(super) config: ModelConfig,
    x_embed: Linear,
    t_mlp: (Linear, Linear),
    final_ada: Linear,
    final_linear: Linear,
    pos: Positions,
}

impl ImageStream {
    pub(super) fn build(c: &ModelConfig, b: &mut ParamsBuilder) -> Result<ImageStream> {
        let (ch, h, wd) = check_image_model(c)?;
        let (w, p) = (c.width, c.patch);
        let patch_dim = ch * p * p;
        Ok(ImageStream {
            config: c.clone(),
            x_embed: linear(b, "x_embedder.proj", w, patch_dim, xavier(patch_dim, w)),
            t_mlp: (
                linear(
                    b,
                    "t_embedder.mlp.0",
                    w,
                    TIME_DIM,
                    Init::Normal { std: 0.02 },
                ),
                linear(b, "t_embedder.mlp.2", w, w, Init::Normal { std: 0.02 }),
            ),
            final_ada: linear(b, "final_layer.adaLN_modulation.1", 2 * w, w, Init::Zeros),
            final_linear: linear(b, "final_layer.linear", patch_dim, w, Init::Zeros),
            pos: Positions::new(h / p, wd / p, w),
        })
    }

    /// `mlp_t(temb(1000 t))`, `[B, W]`.
    pub(super) fn time(&self, tape: &mut Tape, p: &Params, t: &Var) -> Result<Var> {
        let temb = f::timestep_embedding(tape, t, TIME_DIM, TIME_SCALE)?;
        let h = lin(tape, p, &temb, self.t_mlp.0)?;
        let h = f::silu(tape, &h)?;
        lin(tape, p, &h, self.t_mlp.1)
    }

    /// Patch tokens plus positions, `[B, T, W]`, from `z` `[B, C H W]`.
    pub(super) fn tokens(&self, tape: &mut Tape, p: &Params, z: &Var) -> Result<Var> {
        let c = &self.config;
        let b = z.shape()[0];
        let img = f::reshape(tape, z, &[b, c.shape[0], c.shape[1], c.shape[2]])?;
        let patches = f::patchify(tape, &img, c.patch)?;
        let x = lin(tape, p, &patches, self.x_embed)?;
        let pos = tape.constant(self.pos.tiled(z.value().gpu(), b)?);
        f::add(tape, &x, &pos)
    }

    /// The final adaLN layer and un-patchify: tokens `[B, T, W]` to the output `[B, C H W]`,
    /// conditioned on `cond` (already through SiLU).
    pub(super) fn output(&self, tape: &mut Tape, p: &Params, x: &Var, cond: &Var) -> Result<Var> {
        let c = &self.config;
        let (ch, h, wd) = (c.shape[0], c.shape[1], c.shape[2]);
        // (shift, scale) = chunks 0 and 1 of the final adaLN output.
        let ada = lin(tape, p, cond, self.final_ada)?;
        let hm = f::ln_modulate(tape, x, &ada, 0, 1, EPS)?;
        let out = lin(tape, p, &hm, self.final_linear)?;
        let img = f::unpatchify(tape, &out, ch, h, wd, c.patch)?;
        f::reshape(tape, &img, &[x.shape()[0], ch * h * wd])
    }
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
            .map(|i| Block {
                ada: linear(
                    b,
                    &format!("blocks.{i}.adaLN_modulation.1"),
                    6 * w,
                    w,
                    Init::Zeros,
                ),
                qkv: linear(
                    b,
                    &format!("blocks.{i}.attn.qkv"),
                    3 * w,
                    w,
                    xavier(w, 3 * w),
                ),
                q_norm: b.add(format!("blocks.{i}.attn.q_norm.weight"), &[d], Init::Ones),
                k_norm: b.add(format!("blocks.{i}.attn.k_norm.weight"), &[d], Init::Ones),
                proj: linear(b, &format!("blocks.{i}.attn.proj"), w, w, xavier(w, w)),
                fc1: linear(
                    b,
                    &format!("blocks.{i}.mlp.fc1"),
                    4 * w,
                    w,
                    xavier(w, 4 * w),
                ),
                fc2: linear(
                    b,
                    &format!("blocks.{i}.mlp.fc2"),
                    w,
                    4 * w,
                    xavier(4 * w, w),
                ),
            })
            .collect();
        Ok(Dit {
            io,
            y_embed,
            blocks,
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
    let ada = lin(tape, p, cond, blk.ada)?;
    let hm = f::ln_modulate(tape, x, &ada, 0, 1, EPS)?;
    let qkv = lin(tape, p, &hm, blk.qkv)?;
    let qkv = qk_norm(tape, p, &qkv, blk.q_norm, blk.k_norm, heads)?;
    let a = f::attention(tape, &qkv, heads)?;
    let o = lin(tape, p, &a, blk.proj)?;
    let x = f::ada_gate(tape, x, &o, &ada, 2)?;
    let hm = f::ln_modulate(tape, &x, &ada, 3, 4, EPS)?;
    let f1 = lin(tape, p, &hm, blk.fc1)?;
    let f1 = f::gelu(tape, &f1)?;
    let f2 = lin(tape, p, &f1, blk.fc2)?;
    f::ada_gate(tape, &x, &f2, &ada, 5)
}

/// RMSNorm of each head's query and key in `qkv` `[B, T, 3 W]` (learnable scales `[D]`).
pub(super) fn qk_norm(
    tape: &mut Tape,
    p: &Params,
    qkv: &Var,
    q_norm: ParamId,
    k_norm: ParamId,
    heads: usize,
) -> Result<Var> {
    let (gq, gk) = (tape.param(p, q_norm), tape.param(p, k_norm));
    f::qk_norm(tape, qkv, &gq, &gk, heads, EPS)
}
