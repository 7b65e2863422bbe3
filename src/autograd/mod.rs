//! The tape: reverse-mode automatic differentiation, small enough to read in one sitting.
//!
//! Each differentiable function (see [`functions`]) computes its output with forward kernels and,
//! when recording, pushes onto the tape a closure that turns the gradient of its output into the
//! gradients of its inputs, holding whatever it saved from the forward pass. [`Tape::backward`]
//! runs the closures in reverse order; a gradient reaching a tensor twice is summed, and each
//! closure is dropped once it has run, which frees the activations it saved. A parameter's
//! gradient accumulates straight into its view of the flat gradient buffer ([`Params::grads`]).
//! A tape made with [`Tape::no_grad`] records nothing (sampling).
//!
//! An activation's output ([`functions::gelu`], [`functions::silu`], [`functions::linear_act`])
//! keeps its gradient with respect to the pre-activation instead of its own value: a linear
//! layer that consumes it then computes that gradient in its input-gradient matmul's epilogue
//! (`Grads::add_pre`), and no separate activation-backward pass runs for it; any other
//! consumer's gradient goes through [`Grads::add`], which applies the derivative on the way in
//! (what kernels add in place is converted when the activation's node runs).

pub mod functions;

use crate::error::{ensure_shape, Result};
use crate::ops::{self, Activation};
use crate::params::{ParamId, Params};
use crate::tensor::{DType, Tensor};
use std::collections::HashMap;

/// A value on the tape: a tensor and what its gradient is for.
#[derive(Clone, Debug)]
pub struct Var {
    id: usize,
    value: Tensor,
    requires_grad: bool,
    /// For parameters: where the gradient accumulates.
    grad_into: Option<Tensor>,
    /// For an activation's output `act(pre)`: `pre` and `act`; its gradient is kept with
    /// respect to `pre` (see the module's header).
    activated: Option<(Tensor, Activation)>,
}

impl Var {
    pub fn value(&self) -> &Tensor {
        &self.value
    }
    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }
    pub fn requires_grad(&self) -> bool {
        self.requires_grad
    }
    /// `(pre, act)` when this value is `act(pre)` and keeps its gradient with respect to `pre`.
    pub(crate) fn activated(&self) -> Option<(&Tensor, Activation)> {
        self.activated.as_ref().map(|(p, a)| (p, *a))
    }
}

type Backward = Box<dyn FnOnce(&Tensor, &mut Grads) -> Result<()> + Send>;

/// The record of one forward pass.
pub struct Tape {
    nodes: Vec<(usize, Backward)>,
    next_id: usize,
    recording: bool,
}

impl Default for Tape {
    fn default() -> Self {
        Tape::new()
    }
}

impl Tape {
    /// A tape that records.
    pub fn new() -> Tape {
        Tape {
            nodes: Vec::new(),
            next_id: 0,
            recording: true,
        }
    }

    /// A tape that records nothing: functions only run their forward kernels.
    pub fn no_grad() -> Tape {
        Tape {
            recording: false,
            ..Tape::new()
        }
    }

    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// Number of recorded backward steps not yet run.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn var(&mut self, value: Tensor, requires_grad: bool, grad_into: Option<Tensor>) -> Var {
        self.next_id += 1;
        Var {
            id: self.next_id,
            value,
            requires_grad: requires_grad && self.recording,
            grad_into,
            activated: None,
        }
    }

    /// A value that needs no gradient (data, noise, time).
    pub fn constant(&mut self, value: Tensor) -> Var {
        self.var(value, false, None)
    }

    /// A value whose gradient [`Tape::backward`] returns in its [`Grads`].
    pub fn input(&mut self, value: Tensor) -> Var {
        self.var(value, true, None)
    }

    /// A parameter: its value is a view of the flat buffer and its gradient accumulates into the
    /// matching view of the flat gradient buffer (parameters built for inference have none:
    /// their gradient comes back in the [`Grads`], like an input's).
    pub fn param(&mut self, params: &Params, id: ParamId) -> Var {
        self.param_as(params, id, params.value(id))
    }

    /// A linear layer's weight: [`Tape::param`], whose value is the f16 copy where the
    /// parameters store f16 weights ([`Params::store_f16`]; only matmuls read it, and the
    /// gradient still accumulates in f32).
    pub fn weight(&mut self, params: &Params, id: ParamId) -> Var {
        self.param_as(params, id, params.matmul_weight(id))
    }

    /// Parameter `id` seen as `value`, its gradient into the flat gradient buffer.
    fn param_as(&mut self, params: &Params, id: ParamId, value: Tensor) -> Var {
        let grad = self.recording.then(|| params.grad(id).ok()).flatten();
        self.var(value, true, grad)
    }

    /// Record the output of a function of `inputs`, with the closure that back-propagates
    /// through it. Nothing is recorded when no input needs a gradient.
    pub fn record(
        &mut self,
        value: Tensor,
        inputs: &[&Var],
        backward: impl FnOnce(&Tensor, &mut Grads) -> Result<()> + Send + 'static,
    ) -> Var {
        let needed = self.recording && inputs.iter().any(|v| v.requires_grad);
        let out = self.var(value, needed, None);
        if needed {
            self.nodes.push((out.id, Box::new(backward)));
        }
        out
    }

    /// Record `act(pre)` (`value`), a function of `inputs`, whose backward closure is given the
    /// gradient with respect to `pre` (see the module's header).
    pub(crate) fn record_activated(
        &mut self,
        value: Tensor,
        pre: Tensor,
        act: Activation,
        inputs: &[&Var],
        backward: impl FnOnce(&Tensor, &mut Grads) -> Result<()> + Send + 'static,
    ) -> Var {
        let mut out = self.record(value, inputs, backward);
        if act != Activation::None && out.requires_grad {
            out.activated = Some((pre, act));
        }
        out
    }

    /// Record `value`, the output of a function of `inputs`, with its backward: a closure
    /// given the output's gradient, the gradients gathered so far, and the inputs (clones
    /// taken here, in order). The usual way to record; [`Tape::record`] is the form for a
    /// varying number of inputs.
    pub fn op<const N: usize>(
        &mut self,
        value: Tensor,
        inputs: [&Var; N],
        backward: impl FnOnce(&Tensor, &mut Grads, &[Var; N]) -> Result<()> + Send + 'static,
    ) -> Var {
        let saved = inputs.map(Var::clone);
        self.record(value, &inputs, move |dy, grads| backward(dy, grads, &saved))
    }

    /// Back-propagate from `loss` (seeded with ones). Runs and drops every recorded closure;
    /// returns the gradients of the [`Tape::input`]s (parameters' gradients are in their flat
    /// buffer). The tape is empty afterwards.
    pub fn backward(&mut self, loss: &Var) -> Result<Grads> {
        let ones = Tensor::full(loss.value.gpu(), loss.shape(), 1.0)?;
        self.backward_with(loss, ones)
    }

    /// Back-propagate from `output` given the gradient of the loss with respect to it (a fused
    /// loss kernel computes that gradient itself).
    pub fn backward_with(&mut self, output: &Var, grad: Tensor) -> Result<Grads> {
        ensure_shape!(
            output.requires_grad,
            "backward from a value that depends on nothing recorded"
        );
        ensure_shape!(
            grad.shape() == output.shape(),
            "backward: gradient {:?} for an output of shape {:?}",
            grad.shape(),
            output.shape()
        );
        let mut grads = Grads {
            map: HashMap::new(),
            pending: HashMap::new(),
        };
        grads.add(output, grad)?;
        while let Some((id, backward)) = self.nodes.pop() {
            // A node's output gradient is complete once every later node has run.
            grads.settle(id)?;
            if let Some((g, _)) = grads.map.remove(&id) {
                backward(&g, &mut grads)?;
            }
        }
        Ok(grads)
    }
}

/// Gradients gathered by [`Tape::backward`].
pub struct Grads {
    /// The gradient of each value, and whether this map owns its buffer (made here, so it may
    /// be added into in place) or shares it with whoever handed it over.
    map: HashMap<usize, (Tensor, bool)>,
    /// Gradients of activations' outputs that kernels added into in place, with respect to the
    /// output's value: converted (the derivative applied) and added to `map` when the node
    /// that made the output runs ([`Grads::settle`]).
    pending: HashMap<usize, (Var, Tensor)>,
}

impl Grads {
    /// The gradient of an input, if anything reached it.
    pub fn get(&self, v: &Var) -> Option<&Tensor> {
        self.map.get(&v.id).map(|(g, _)| g)
    }

    /// Add `g`, a gradient with respect to `v`'s value, to the gradient of `v` (nothing if `v`
    /// needs none). For an activation's output the derivative is applied first.
    pub fn add(&mut self, v: &Var, g: Tensor) -> Result<()> {
        match v.activated() {
            Some((pre, act)) if v.requires_grad => {
                let g = match act {
                    Activation::Gelu => ops::gelu_backward(pre, &g)?,
                    Activation::Silu => ops::silu_backward(pre, &g)?,
                    Activation::None => g,
                };
                self.add_pre(v, g)
            }
            _ => self.add_pre(v, g),
        }
    }

    /// Add `g` to the gradient of `v` as it is kept: with respect to the pre-activation for an
    /// activation's output (a linear layer's fused input gradient), else as [`Grads::add`].
    pub(crate) fn add_pre(&mut self, v: &Var, g: Tensor) -> Result<()> {
        if !v.requires_grad {
            return Ok(());
        }
        ensure_shape!(
            g.shape() == v.shape(),
            "gradient of shape {:?} for a value of shape {:?}",
            g.shape(),
            v.shape()
        );
        if let Some(into) = &v.grad_into {
            return ops::axpy(1.0, &g, into);
        }
        match self.map.get(&v.id) {
            // A buffer made here is ours: add in place.
            Some((existing, true)) => ops::axpy(1.0, &g, existing),
            // A handed-over gradient may be shared (a closure may give the same tensor to two
            // inputs) and must never change: a new sum, which this map then owns.
            Some((existing, false)) => {
                let sum = ops::add(existing, &g)?;
                self.map.insert(v.id, (sum, true));
                Ok(())
            }
            None => {
                self.map.insert(v.id, (g, false));
                Ok(())
            }
        }
    }

    /// Add what kernels accumulated in place for the value `id` (an activation's output) through
    /// [`Grads::add`], which applies the derivative.
    fn settle(&mut self, id: usize) -> Result<()> {
        match self.pending.remove(&id) {
            Some((v, g)) => self.add(&v, g),
            None => Ok(()),
        }
    }

    /// Where a parameter's gradient accumulates, for ops that can add into it directly (a
    /// matmul with accumulation) instead of producing a tensor to add.
    pub(crate) fn target<'v>(&self, v: &'v Var) -> Option<&'v Tensor> {
        v.grad_into.as_ref().filter(|_| v.requires_grad)
    }

    /// Where a kernel that adds into a gradient in place (several writing parts of it) puts
    /// `v`'s: [`Grads::accumulator`], or scratch zeros shaped like `v` that nobody reads when
    /// `v` needs no gradient (the kernel writes it all the same).
    pub(crate) fn sink(&mut self, v: &Var) -> Result<Tensor> {
        match self.accumulator(v)? {
            Some(d) => Ok(d),
            None => Tensor::zeros(v.value.gpu(), v.shape()),
        }
    }

    /// As [`Grads::sink`], for a kernel that can also write `v`'s whole gradient: `(g, true)`
    /// when nothing has reached it yet (nor will it be read before that kernel runs): a new
    /// buffer, uninitialised, which the kernel must write in full and which then is `v`'s
    /// gradient, added into in place by later kernels (no fill pass); else `(sink, false)`.
    pub(crate) fn sink_or_fresh(&mut self, v: &Var) -> Result<(Tensor, bool)> {
        let untouched =
            v.activated.is_none() && v.grad_into.is_none() && !self.map.contains_key(&v.id);
        if !v.requires_grad || !untouched {
            return Ok((self.sink(v)?, false));
        }
        let g = Tensor::uninit(v.value.gpu(), v.shape(), DType::F32)?;
        self.map.insert(v.id, (g.clone(), true));
        Ok((g, true))
    }

    /// Add a gradient of `v` that an op can either write or add in place, `f(out, accumulate)`:
    /// added into the gradient `v` has already (no separate sum; a handed-over one is copied
    /// first), else written into a new tensor handed over as by [`Grads::add`]. For an
    /// activation's output (whose gradient is kept with respect to its pre-activation) the
    /// contribution is always written and handed over by [`Grads::add`], which applies the
    /// derivative on the way in.
    /// Nothing runs if `v` needs no gradient.
    pub(crate) fn add_from(
        &mut self,
        v: &Var,
        f: impl FnOnce(&Tensor, bool) -> Result<()>,
    ) -> Result<()> {
        if v.activated.is_none() {
            // Value and pre-activation are one: the same in-place rules.
            return self.add_pre_from(v, f);
        }
        if !v.requires_grad {
            return Ok(());
        }
        let g = Tensor::uninit(v.value.gpu(), v.shape(), DType::F32)?;
        f(&g, false)?;
        self.add(v, g)
    }

    /// As [`Grads::add_from`] for a gradient with respect to the pre-activation of an
    /// activation's output (as [`Grads::add_pre`] takes it): added in place into the one kept
    /// with respect to it (or the parameter's gradient view), if there is one.
    pub(crate) fn add_pre_from(
        &mut self,
        v: &Var,
        f: impl FnOnce(&Tensor, bool) -> Result<()>,
    ) -> Result<()> {
        if !v.requires_grad {
            return Ok(());
        }
        if let Some(into) = &v.grad_into {
            return f(into, true);
        }
        let owned = match self.map.get(&v.id) {
            Some((g, true)) => g.clone(),
            Some((g, false)) => ops::copy(g)?,
            None => {
                let g = Tensor::uninit(v.value.gpu(), v.shape(), DType::F32)?;
                f(&g, false)?;
                return self.add_pre(v, g);
            }
        };
        f(&owned, true)?;
        self.map.insert(v.id, (owned, true));
        Ok(())
    }

    /// A buffer that kernels may add `v`'s gradient into in place (several ops writing parts of
    /// it, say): the parameter's gradient view, or one owned by this map, zero to begin with
    /// (a gradient handed over before is copied into it); for an activation's output, one with
    /// respect to its value, whose derivative is applied once every consumer has added in.
    /// `None` if `v` needs no gradient.
    pub(crate) fn accumulator(&mut self, v: &Var) -> Result<Option<Tensor>> {
        if !v.requires_grad {
            return Ok(None);
        }
        if v.activated.is_some() {
            // In place means with respect to the value: a buffer of its own, settled later.
            if let Some((_, g)) = self.pending.get(&v.id) {
                return Ok(Some(g.clone()));
            }
            let g = Tensor::zeros(v.value.gpu(), v.shape())?;
            self.pending.insert(v.id, (v.clone(), g.clone()));
            return Ok(Some(g));
        }
        if let Some(into) = &v.grad_into {
            return Ok(Some(into.clone()));
        }
        let owned = match self.map.get(&v.id) {
            Some((g, true)) => return Ok(Some(g.clone())),
            Some((g, false)) => ops::copy(g)?,
            None => Tensor::zeros(v.value.gpu(), v.shape())?,
        };
        self.map.insert(v.id, (owned.clone(), true));
        Ok(Some(owned))
    }
}
