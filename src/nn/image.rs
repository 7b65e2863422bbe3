//! What the image transformers (DiT and MM-DiT) share around their blocks: the configuration
//! check, the patch embedding with 2-D sin-cos positions, the time MLP, and the final adaLN
//! layer with un-patchify.

use super::layers::{xavier, Linear, EPS};
use super::{ModelConfig, TIME_SCALE};
use crate::autograd::{functions as f, Tape, Var};
use crate::error::{Error, Result};
use crate::ops::Activation;
use crate::params::{Init, Params, ParamsBuilder};
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::sync::Mutex;

/// Width of the sinusoidal time embedding fed to the time MLP.
pub const TIME_DIM: usize = 256;

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
struct Positions {
    grid: (usize, usize),
    width: usize,
    tiled: Mutex<HashMap<usize, Tensor>>,
}

impl Positions {
    fn new(gh: usize, gw: usize, width: usize) -> Positions {
        Positions {
            grid: (gh, gw),
            width,
            tiled: Mutex::new(HashMap::new()),
        }
    }

    /// `[batch, gh * gw, width]`.
    fn tiled(&self, gpu: &crate::Gpu, batch: usize) -> Result<Tensor> {
        let mut cache = self.tiled.lock().unwrap_or_else(|e| e.into_inner());
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
pub fn check_image_model(c: &ModelConfig) -> Result<(usize, usize, usize)> {
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

/// The patch embedding, time MLP and final layer of an image transformer.
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
        let normal = Init::Normal { std: 0.02 };
        Ok(ImageStream {
            config: c.clone(),
            x_embed: Linear::declare(b, "x_embedder.proj", w, patch_dim, xavier(patch_dim, w)),
            t_mlp: (
                Linear::declare(b, "t_embedder.mlp.0", w, TIME_DIM, normal),
                Linear::declare(b, "t_embedder.mlp.2", w, w, normal),
            ),
            final_ada: Linear::declare(b, "final_layer.adaLN_modulation.1", 2 * w, w, Init::Zeros),
            final_linear: Linear::declare(b, "final_layer.linear", patch_dim, w, Init::Zeros),
            pos: Positions::new(h / p, wd / p, w),
        })
    }

    /// `mlp_t(temb(1000 t))`, `[B, W]`.
    pub(super) fn time(&self, tape: &mut Tape, p: &Params, t: &Var) -> Result<Var> {
        let temb = f::timestep_embedding(tape, t, TIME_DIM, TIME_SCALE)?;
        let h = self.t_mlp.0.forward_act(tape, p, &temb, Activation::Silu)?;
        self.t_mlp.1.forward(tape, p, &h)
    }

    /// Patch tokens plus positions, `[B, T, W]`, from `z` `[B, C H W]`.
    pub(super) fn tokens(&self, tape: &mut Tape, p: &Params, z: &Var) -> Result<Var> {
        let c = &self.config;
        let b = z.shape()[0];
        let img = f::reshape(tape, z, &[b, c.shape[0], c.shape[1], c.shape[2]])?;
        let patches = f::patchify(tape, &img, c.patch)?;
        let x = self.x_embed.forward(tape, p, &patches)?;
        let pos = tape.constant(self.pos.tiled(z.value().gpu(), b)?);
        f::add(tape, &x, &pos)
    }

    /// The final adaLN layer and un-patchify: tokens `[B, T, W]` to the output `[B, C H W]`,
    /// conditioned on `cond` (already through SiLU).
    pub(super) fn output(&self, tape: &mut Tape, p: &Params, x: &Var, cond: &Var) -> Result<Var> {
        let c = &self.config;
        let (ch, h, wd) = (c.shape[0], c.shape[1], c.shape[2]);
        // (shift, scale) = chunks 0 and 1 of the final adaLN output.
        let ada = self.final_ada.forward(tape, p, cond)?;
        let hm = f::ln_modulate(tape, x, &ada, 0, 1, EPS)?;
        let out = self.final_linear.forward(tape, p, &hm)?;
        let img = f::unpatchify(tape, &out, ch, h, wd, c.patch)?;
        f::reshape(tape, &img, &[x.shape()[0], ch * h * wd])
    }
}
