//! Differentiable functions: each runs its forward kernels and records how to back-propagate
//! through them (the backward kernels of the same op family, side by side with the forward),
//! with [`Tape::op`]: the closure receives the output's gradient, the gradients and its inputs.

use super::{Grads, Tape, Var};
use crate::error::{ensure_shape, Error, Result};
use crate::ops::{self, Activation, MatmulAux, MatmulSpec};
use crate::tensor::{DType, Tensor};

/// `x W^T + b` over the last dimension: `x` is `[.., in]`, `w` is `[out, in]`, `b` is `[out]`.
pub fn linear(tape: &mut Tape, x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
    let spec = MatmulSpec {
        trans_b: true,
        bias: b.map(|b| b.value()),
        ..Default::default()
    };
    let y = ops::matmul_with(x.value(), w.value(), &spec)?;
    let mut inputs = vec![x, w];
    inputs.extend(b);
    Ok(tape.record(y, &inputs, linear_backward(x, w, b)))
}

/// A linear layer's backward, given the gradient `dy` of its output (of its pre-activation for
/// [`linear_act`]).
fn linear_backward(
    x: &Var,
    w: &Var,
    b: Option<&Var>,
) -> impl FnOnce(&Tensor, &mut Grads) -> Result<()> + Send + 'static {
    let (xv, wv, bv) = (x.clone(), w.clone(), b.cloned());
    move |dy, grads| {
        let (out, inp) = (wv.shape()[0], wv.shape()[1]);
        let rows = dy.numel() / out;
        if xv.requires_grad() {
            match xv.activated() {
                // x = act(pre): the gradient of pre straight from the epilogue (unless pre
                // shares a buffer with an operand: an activated parameter, say).
                Some((pre, act)) if !pre.same_buffer(dy) && !pre.same_buffer(wv.value()) => {
                    let spec = MatmulSpec {
                        activation: act,
                        aux: MatmulAux::ActGrad(pre),
                        ..Default::default()
                    };
                    grads.add_pre_from(&xv, |dx, accumulate| {
                        ops::matmul_into(dy, wv.value(), &spec, dx, accumulate)
                    })?;
                }
                // Added into a gradient the input has already (the conditioning, read by
                // every block's adaLN), else written.
                _ => grads.add_from(&xv, |dx, accumulate| {
                    ops::matmul_into(dy, wv.value(), &MatmulSpec::default(), dx, accumulate)
                })?,
            }
        }
        let dy2 = dy.reshape(&[rows, out])?;
        let bv = bv.filter(|b| b.requires_grad());
        if wv.requires_grad() {
            // dW = dY^T X, accumulated straight into the parameter's gradient when it has one;
            // the bias gradient (dY summed over tokens) in the same dispatch when both have one.
            let x2 = xv.value().reshape(&[rows, inp])?;
            let spec = MatmulSpec {
                trans_a: true,
                ..Default::default()
            };
            match (grads.target(&wv), bv.as_ref().map(|b| grads.target(b))) {
                (Some(target), Some(Some(db))) => {
                    let spec = MatmulSpec {
                        aux: MatmulAux::RowSums(db),
                        ..spec
                    };
                    ops::matmul_into(&dy2, &x2, &spec, target, true)?;
                    return Ok(());
                }
                (Some(target), _) => ops::matmul_into(&dy2, &x2, &spec, target, true)?,
                (None, _) => grads.add(&wv, ops::matmul_with(&dy2, &x2, &spec)?)?,
            }
        }
        if let Some(bv) = &bv {
            match grads.target(bv) {
                Some(target) => ops::sum_tokens_into(&dy2, target, true)?,
                None => grads.add(bv, ops::sum_tokens(&dy2)?)?,
            }
        }
        Ok(())
    }
}

/// `act(x W^T + b)` in one matmul. When recording, the epilogue saves the pre-activation
/// beside the output, which keeps its gradient with respect to it (see the tape's header): the
/// backward is a linear layer's, and the activation's derivative is applied by whichever
/// consumer's backward hands the gradient over (fused into a linear layer's).
pub fn linear_act(
    tape: &mut Tape,
    x: &Var,
    w: &Var,
    b: Option<&Var>,
    act: Activation,
) -> Result<Var> {
    if act == Activation::None {
        return linear(tape, x, w, b);
    }
    let spec = MatmulSpec {
        trans_b: true,
        bias: b.map(|b| b.value()),
        activation: act,
        ..Default::default()
    };
    // Nothing to differentiate: no pre-activation to save.
    let needed = x.requires_grad() || w.requires_grad() || b.is_some_and(Var::requires_grad);
    if !tape.is_recording() || !needed {
        return Ok(tape.constant(ops::matmul_with(x.value(), w.value(), &spec)?));
    }
    let mut shape = x.shape()[..x.shape().len() - 1].to_vec();
    shape.push(w.shape()[0]);
    let pre = Tensor::uninit(x.value().gpu(), &shape, DType::F32)?;
    let y = ops::matmul_with(
        x.value(),
        w.value(),
        &MatmulSpec {
            aux: MatmulAux::SavePre(&pre),
            ..spec
        },
    )?;
    // The linear layer's backward, given the gradient of the pre-activation.
    let inner = linear_backward(x, w, b);
    let mut inputs = vec![x, w];
    inputs.extend(b);
    Ok(tape.record_activated(y, pre, act, &inputs, inner))
}

/// One term `x W^T + b` of [`linear_sum_act`]: input `[.., in]`, weight `[out, in]`, bias.
pub type LinearTerm<'a> = (&'a Var, &'a Var, Option<&'a Var>);

/// `act(sum_i (x_i W_i^T + b_i) + base)`: several linear layers (and an optional `base` of the
/// output's shape) summed into one pre-activation and activated once, as in the MLP's first
/// layer (its input, time and class terms). One matmul per term and no elementwise pass: the
/// first product writes the sum (or adds onto a copy of `base`, a buffer copy), the next ones
/// add, and the last also saves the pre-activation and applies the activation in its epilogue.
/// The output keeps its gradient with respect to the pre-activation (as [`linear_act`]'s), which
/// the backward hands to every term's linear-layer backward and to `base`.
pub fn linear_sum_act(
    tape: &mut Tape,
    terms: &[LinearTerm],
    base: Option<&Var>,
    act: Activation,
) -> Result<Var> {
    let Some(&(x0, w0, _)) = terms.first() else {
        return Err(Error::Shape(
            "linear_sum_act needs at least one term".into(),
        ));
    };
    // Every term checked before anything is dispatched: [.., in] inputs of one batch shape,
    // [out, in] weights of one `out`.
    let lead = |x: &Var| x.shape()[..x.shape().len().saturating_sub(1)].to_vec();
    let width = w0.shape().first().copied().unwrap_or(0);
    for (x, w, _) in terms {
        ensure_shape!(
            w.shape().len() == 2
                && x.shape().len() >= 2
                && x.shape().last() == Some(&w.shape()[1])
                && lead(x) == lead(x0)
                && w.shape()[0] == width,
            "linear_sum_act: every term must be an input [.., in] with a weight [out, in] of one \
             batch shape and out ({:?}, {width}), got input {:?} with weight {:?}",
            lead(x0),
            x.shape(),
            w.shape()
        );
    }
    let mut shape = lead(x0);
    shape.push(width);
    if let Some(b) = base {
        ensure_shape!(
            b.shape() == shape.as_slice(),
            "linear_sum_act: base {:?} must have the output's shape {shape:?}",
            b.shape()
        );
    }
    let gpu = x0.value().gpu();
    let out = match base {
        Some(b) => ops::copy(b.value())?,
        None => Tensor::uninit(gpu, &shape, DType::F32)?,
    };
    // The pre-activation (scratch when nothing is differentiated: the activation of a sum
    // needs it all the same).
    let pre = (act != Activation::None)
        .then(|| Tensor::uninit(gpu, &shape, DType::F32))
        .transpose()?;
    let last = terms.len() - 1;
    for (i, &(x, w, b)) in terms.iter().enumerate() {
        let mut spec = MatmulSpec {
            trans_b: true,
            bias: b.map(|b| b.value()),
            ..Default::default()
        };
        if let (true, Some(pre)) = (i == last, &pre) {
            spec.activation = act;
            spec.aux = MatmulAux::SavePre(pre);
        }
        ops::matmul_into(x.value(), w.value(), &spec, &out, i > 0 || base.is_some())?;
    }
    let needed = base.is_some_and(Var::requires_grad)
        || terms.iter().any(|&(x, w, b)| {
            x.requires_grad() || w.requires_grad() || b.is_some_and(Var::requires_grad)
        });
    if !tape.is_recording() || !needed {
        return Ok(tape.constant(out));
    }
    let backwards: Vec<_> = terms
        .iter()
        .map(|&(x, w, b)| linear_backward(x, w, b))
        .collect();
    let mut inputs: Vec<&Var> = Vec::new();
    for &(x, w, b) in terms {
        inputs.extend([x, w]);
        inputs.extend(b);
    }
    inputs.extend(base);
    let base = base.cloned();
    let backward = move |dpre: &Tensor, grads: &mut Grads| {
        for back in backwards {
            back(dpre, grads)?;
        }
        match &base {
            Some(b) => grads.add(b, dpre.clone()),
            None => Ok(()),
        }
    };
    Ok(match pre {
        Some(pre) => tape.record_activated(out, pre, act, &inputs, backward),
        None => tape.record(out, &inputs, backward),
    })
}

/// GELU (tanh approximation). Its output keeps its gradient with respect to `x`.
pub fn gelu(tape: &mut Tape, x: &Var) -> Result<Var> {
    let y = ops::gelu(x.value())?;
    activation(tape, x, y, Activation::Gelu)
}

/// SiLU. Its output keeps its gradient with respect to `x`.
pub fn silu(tape: &mut Tape, x: &Var) -> Result<Var> {
    let y = ops::silu(x.value())?;
    activation(tape, x, y, Activation::Silu)
}

/// Record `y = act(x)`: the gradient it is handed is already that of `x`.
fn activation(tape: &mut Tape, x: &Var, y: Tensor, act: Activation) -> Result<Var> {
    let xv = x.clone();
    Ok(
        tape.record_activated(y, x.value().clone(), act, &[x], move |dx, grads| {
            grads.add(&xv, dx.clone())
        }),
    )
}

/// `a + b` (the residual connection).
pub fn add(tape: &mut Tape, a: &Var, b: &Var) -> Result<Var> {
    let y = ops::add(a.value(), b.value())?;
    Ok(tape.op(y, [a, b], |dy, grads, [a, b]| {
        grads.add(a, dy.clone())?;
        grads.add(b, dy.clone())
    }))
}

/// `alpha * x`.
pub fn scale(tape: &mut Tape, x: &Var, alpha: f32) -> Result<Var> {
    let y = ops::scale(x.value(), alpha)?;
    Ok(tape.op(y, [x], move |dy, grads, [x]| {
        grads.add(x, ops::scale(dy, alpha)?)
    }))
}

/// The same values under another shape.
pub fn reshape(tape: &mut Tape, x: &Var, shape: &[usize]) -> Result<Var> {
    let y = x.value().reshape(shape)?;
    Ok(tape.op(y, [x], |dy, grads, [x]| {
        grads.add(x, dy.reshape(x.shape())?)
    }))
}

/// LayerNorm over the last dimension, with `(gamma, beta)` when affine.
pub fn layer_norm(tape: &mut Tape, x: &Var, affine: Option<(&Var, &Var)>, eps: f32) -> Result<Var> {
    let (y, stats) = ops::layer_norm(x.value(), affine.map(|(g, b)| (g.value(), b.value())), eps)?;
    let xv = x.clone();
    let aff = affine.map(|(g, b)| (g.clone(), b.clone()));
    let mut inputs = vec![x];
    if let Some((g, b)) = affine {
        inputs.extend([g, b]);
    }
    Ok(tape.record(y, &inputs, move |dy, grads| {
        let gamma = aff.as_ref().map(|(g, _)| g.value());
        let (dx, daff) = ops::layer_norm_backward(xv.value(), &stats, gamma, dy)?;
        grads.add(&xv, dx)?;
        if let (Some((g, b)), Some((dg, db))) = (&aff, daff) {
            grads.add(g, dg)?;
            grads.add(b, db)?;
        }
        Ok(())
    }))
}

/// RMSNorm over the last dimension with a learnable scale (QK-norm).
pub fn rms_norm(tape: &mut Tape, x: &Var, gamma: &Var, eps: f32) -> Result<Var> {
    let (y, stats) = ops::rms_norm(x.value(), gamma.value(), eps)?;
    Ok(tape.op(y, [x, gamma], move |dy, grads, [x, gamma]| {
        let (dx, dg) = ops::rms_norm_backward(x.value(), &stats, gamma.value(), dy)?;
        grads.add(x, dx)?;
        grads.add(gamma, dg)
    }))
}

/// Softmax over the last dimension.
pub fn softmax(tape: &mut Tape, x: &Var) -> Result<Var> {
    let y = ops::softmax(x.value())?;
    let saved = y.clone();
    Ok(tape.op(y, [x], move |dy, grads, [x]| {
        grads.add(x, ops::softmax_backward(&saved, dy)?)
    }))
}

/// adaLN: `x * (1 + scale) + shift`, `x` `[B, T, C]`, `scale` and `shift` `[B, C]`.
pub fn modulate(tape: &mut Tape, x: &Var, scale: &Var, shift: &Var) -> Result<Var> {
    let y = ops::modulate(x.value(), scale.value(), shift.value())?;
    Ok(
        tape.op(y, [x, scale, shift], |dy, grads, [x, scale, shift]| {
            let (dx, ds, dsh) = ops::modulate_backward(x.value(), scale.value(), dy)?;
            grads.add(x, dx)?;
            grads.add(scale, ds)?;
            grads.add(shift, dsh)
        }),
    )
}

/// Gated residual: `x + gate * h`, `gate` `[B, C]`.
pub fn gate(tape: &mut Tape, x: &Var, h: &Var, gate: &Var) -> Result<Var> {
    let y = ops::gate(x.value(), h.value(), gate.value())?;
    Ok(tape.op(y, [x, h, gate], |dy, grads, [x, h, gate]| {
        let (dh, dg) = ops::gate_backward(h.value(), gate.value(), dy)?;
        grads.add(x, dy.clone())?;
        grads.add(h, dh)?;
        grads.add(gate, dg)
    }))
}

/// Multi-head attention over `qkv` `[B, T, 3 H D]`, output `[B, T, H D]`.
pub fn attention(tape: &mut Tape, qkv: &Var, heads: usize) -> Result<Var> {
    let (o, lse) = ops::attention(qkv.value(), heads)?;
    let saved = o.clone();
    Ok(tape.op(o, [qkv], move |dy, grads, [qkv]| {
        let dqkv = ops::attention_backward(qkv.value(), &saved, &lse, dy, heads)?;
        grads.add(qkv, dqkv)
    }))
}

/// `[B, T1, C] ++ [B, T2, C] -> [B, T1 + T2, C]` (joint attention over two streams).
pub fn concat_tokens(tape: &mut Tape, a: &Var, b: &Var) -> Result<Var> {
    let y = ops::concat_tokens(a.value(), b.value())?;
    Ok(tape.op(y, [a, b], |dy, grads, [a, b]| {
        let (da, db) = ops::split_tokens(dy, a.shape()[1])?;
        grads.add(a, da)?;
        grads.add(b, db)
    }))
}

/// Token rows `start .. start + len` of `x` `[B, T, C]`.
pub fn slice_tokens(tape: &mut Tape, x: &Var, start: usize, len: usize) -> Result<Var> {
    let s = x.shape();
    ensure_shape!(
        s.len() == 3 && start + len <= s[1],
        "slice_tokens: rows {start}..+{len} of {s:?}"
    );
    let y = Tensor::uninit(x.value().gpu(), &[s[0], len, s[2]], crate::DType::F32)?;
    ops::copy_tokens(x.value(), start, &y, 0, len)?;
    Ok(tape.op(y, [x], move |dy, grads, [x]| {
        let dx = Tensor::zeros(dy.gpu(), x.shape())?;
        ops::copy_tokens(dy, 0, &dx, start, len)?;
        grads.add(x, dx)
    }))
}

/// Split `[B, T, C]` into the first `first` tokens and the rest.
pub fn split_tokens(tape: &mut Tape, x: &Var, first: usize) -> Result<(Var, Var)> {
    let t = x.shape().get(1).copied().unwrap_or(0);
    ensure_shape!(first <= t, "split_tokens at {first} of {t} tokens");
    Ok((
        slice_tokens(tape, x, 0, first)?,
        slice_tokens(tape, x, first, t - first)?,
    ))
}

/// Sinusoidal embedding of `t` `[B]` into `[B, dim]` (see `ops::timestep_embedding`).
pub fn timestep_embedding(tape: &mut Tape, t: &Var, dim: usize, scale: f32) -> Result<Var> {
    let y = ops::timestep_embedding(t.value(), dim, scale)?;
    Ok(tape.op(y, [t], move |dy, grads, [t]| {
        grads.add(t, ops::timestep_embedding_backward(t.value(), dy, scale)?)
    }))
}

/// Rows of `table` `[rows, dim]` picked by `labels` `[B]` (f32 row numbers).
pub fn embedding(tape: &mut Tape, labels: &Tensor, table: &Var) -> Result<Var> {
    let y = ops::embedding(labels, table.value())?;
    let labels = labels.clone();
    Ok(tape.op(y, [table], move |dy, grads, [table]| {
        match grads.target(table) {
            Some(target) => ops::embedding_backward(&labels, dy, target),
            None => {
                let d = Tensor::zeros(dy.gpu(), table.shape())?;
                ops::embedding_backward(&labels, dy, &d)?;
                grads.add(table, d)
            }
        }
    }))
}

/// Images `[B, C, H, W]` to patch tokens `[B, (H/p)(W/p), C p p]`.
pub fn patchify(tape: &mut Tape, x: &Var, p: usize) -> Result<Var> {
    let y = ops::patchify(x.value(), p)?;
    Ok(tape.op(y, [x], move |dy, grads, [x]| {
        let s = x.shape();
        grads.add(x, ops::unpatchify(dy, s[1], s[2], s[3], p)?)
    }))
}

/// Patch tokens back to images `[B, channels, height, width]`.
pub fn unpatchify(
    tape: &mut Tape,
    x: &Var,
    channels: usize,
    height: usize,
    width: usize,
    p: usize,
) -> Result<Var> {
    let y = ops::unpatchify(x.value(), channels, height, width, p)?;
    Ok(tape.op(y, [x], move |dy, grads, [x]| {
        grads.add(x, ops::patchify(dy, p)?)
    }))
}

/// Mean squared error `mean((a - b)^2)`, shape `[1]`.
pub fn mse(tape: &mut Tape, a: &Var, b: &Var) -> Result<Var> {
    ensure_shape!(
        a.shape() == b.shape(),
        "mse of {:?} and {:?}",
        a.shape(),
        b.shape()
    );
    let n = a.value().numel();
    let diff = ops::sub(a.value(), b.value())?;
    let sq = ops::mul(&diff, &diff)?;
    let loss = ops::mean_rows(&sq.reshape(&[1, n])?)?;
    Ok(tape.op(loss, [a, b], move |dy, grads, [a, b]| {
        // d/da = 2 (a - b) / n, scaled by the incoming gradient (a GPU scalar).
        let da = ops::scale_by(&diff, dy, 2.0 / n as f32)?;
        if b.requires_grad() {
            grads.add(b, ops::scale(&da, -1.0)?)?;
        }
        grads.add(a, da)
    }))
}

/// adaLN in one pass: `LN(x) (1 + scale) + shift` (LayerNorm without affine parameters), with
/// `shift` and `scale` chunks of the conditioning `ada` `[B, K C]` read in place.
pub fn ln_modulate(
    tape: &mut Tape,
    x: &Var,
    ada: &Var,
    shift: usize,
    scale: usize,
    eps: f32,
) -> Result<Var> {
    let (y, stats) = ops::ln_modulate(x.value(), ada.value(), shift, scale, eps)?;
    Ok(tape.op(y, [x, ada], move |dy, grads, [x, ada]| {
        // The conditioning's gradient gathers all its chunks in one buffer.
        let d_ada = grads.sink(ada)?;
        let (xv, a) = (x.value(), ada.value());
        if !x.requires_grad() {
            ops::ln_modulate_backward(xv, &stats, a, shift, scale, dy, &d_ada)?;
            return Ok(());
        }
        // The residual stream's gradient is summed in the kernel (the gated residual's backward
        // handed one over already).
        grads.add_from(x, |dx, accumulate| {
            ops::ln_modulate_backward_into(xv, &stats, a, shift, scale, dy, &d_ada, dx, accumulate)
        })
    }))
}

/// The gated residual `x + gate h`, `gate` chunk `chunk` of the conditioning `ada` `[B, K C]`.
pub fn ada_gate(tape: &mut Tape, x: &Var, h: &Var, ada: &Var, chunk: usize) -> Result<Var> {
    let y = ops::ada_gate(x.value(), h.value(), ada.value(), chunk)?;
    Ok(tape.op(y, [x, h, ada], move |dy, grads, [x, h, ada]| {
        // The last chunk of a block's conditioning to be reached (the first backward) begins
        // its gradient: written whole, no fill.
        let (d_ada, fresh) = grads.sink_or_fresh(ada)?;
        let dh = ops::ada_gate_backward(h.value(), ada.value(), chunk, dy, &d_ada, fresh)?;
        grads.add(x, dy.clone())?;
        grads.add(h, dh)
    }))
}

/// QK-norm: RMSNorm of every head's query and key in `qkv` `[.., 3 H D]` with scales `gq`,
/// `gk` `[D]`; values pass through. One kernel each way.
pub fn qk_norm(
    tape: &mut Tape,
    qkv: &Var,
    gq: &Var,
    gk: &Var,
    heads: usize,
    eps: f32,
) -> Result<Var> {
    let (y, stats) = ops::qk_norm(qkv.value(), heads, gq.value(), gk.value(), eps)?;
    Ok(tape.op(y, [qkv, gq, gk], move |dy, grads, [qkv, gq, gk]| {
        let (d_gq, d_gk) = (grads.sink(gq)?, grads.sink(gk)?);
        let dx = ops::qk_norm_backward(
            qkv.value(),
            &stats,
            heads,
            gq.value(),
            gk.value(),
            dy,
            &d_gq,
            &d_gk,
        )?;
        grads.add(qkv, dx)
    }))
}
