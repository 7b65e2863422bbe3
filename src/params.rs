//! Parameters: every weight of a model in one flat GPU buffer (as in llm.c), so that the
//! optimiser, the gradient norm and the EMA are each one pass over one buffer. Each parameter is
//! a named view at an offset aligned to 512 bytes (twice the largest storage-offset alignment a
//! device may require, so the layout is the same everywhere and an f16 copy's views are aligned
//! too); the gradient buffer mirrors the layout. With f16 weights ([`Params::store_f16`]) an f16
//! copy of the values, in the same layout, is what the linear layers' matmuls read.
//! The names are the checkpoint keys. Values start from initialisers ([`ParamsBuilder::build`])
//! or from given values ([`ParamsBuilder::build_with_values`], uploaded once), with a gradient
//! buffer for training or without one for inference ([`ParamsBuilder::build_for_inference`]).
//! (Each parameter is padded to a multiple of 128 values: at most 508 bytes of padding each.)

use crate::error::{Error, Result};
use crate::tensor::{numel, DType, Tensor};
use crate::Gpu;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

/// Alignment of every parameter in the flat buffer, in elements: 512 bytes of f32, so that the
/// f16 copy's views (256 bytes) meet the largest storage-offset alignment too.
pub const ALIGN: usize = 128;

/// How a parameter starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// Normal with mean 0 and this standard deviation.
    Normal {
        std: f32,
    },
    /// Uniform in `[-limit, limit]`.
    Uniform {
        limit: f32,
    },
    /// Glorot/Xavier uniform: limit `sqrt(6 / (fan_in + fan_out))`.
    XavierUniform {
        fan_in: usize,
        fan_out: usize,
    },
}

impl Init {
    fn fill(&self, out: &mut [f32], rng: &mut rand::rngs::StdRng) {
        match *self {
            Init::Zeros => out.fill(0.0),
            Init::Ones => out.fill(1.0),
            Init::Uniform { limit } => out
                .iter_mut()
                .for_each(|v| *v = rng.random_range(-limit..=limit)),
            Init::XavierUniform { fan_in, fan_out } => {
                let limit = (6.0 / (fan_in + fan_out) as f32).sqrt();
                out.iter_mut()
                    .for_each(|v| *v = rng.random_range(-limit..=limit));
            }
            Init::Normal { std } => {
                // Box-Muller: two uniforms give two independent standard normals.
                for pair in out.chunks_mut(2) {
                    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
                    let u2: f64 = rng.random();
                    let r = (-2.0 * u1.ln()).sqrt();
                    let th = 2.0 * std::f64::consts::PI * u2;
                    pair[0] = std * (r * th.cos()) as f32;
                    if pair.len() > 1 {
                        pair[1] = std * (r * th.sin()) as f32;
                    }
                }
            }
        }
    }
}

/// One parameter: its name, shape and place in the flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// Offset in f32 elements, a multiple of [`ALIGN`].
    pub offset: usize,
    pub init: Init,
}

/// Handle to a parameter of a [`Params`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(pub(crate) usize);

/// Collects parameter declarations, then allocates and initialises them all at once. Declaring
/// allocates nothing the size of a parameter, so a model can be laid out (and its size checked
/// against the device) before anything is allocated.
pub struct ParamsBuilder {
    specs: Vec<ParamSpec>,
    /// Length of the flat buffer so far; `None` once a size overflowed.
    len: Option<usize>,
}

impl Default for ParamsBuilder {
    fn default() -> Self {
        ParamsBuilder {
            specs: Vec::new(),
            len: Some(0),
        }
    }
}

impl ParamsBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declare a parameter. Names must be unique (they are checkpoint keys).
    pub fn add(&mut self, name: impl Into<String>, shape: &[usize], init: Init) -> ParamId {
        let name = name.into();
        assert!(
            !self.specs.iter().any(|s| s.name == name),
            "parameter {name:?} declared twice"
        );
        // Sizes come from configurations that may be corrupt: an overflow is remembered and
        // reported by `len` and `build`, never wrapped.
        let offset = self.len.unwrap_or(usize::MAX);
        let elems = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        self.len = self
            .len
            .zip(elems)
            .and_then(|(len, n)| len.checked_add(n))
            .and_then(|end| end.checked_next_multiple_of(ALIGN));
        self.specs.push(ParamSpec {
            name,
            shape: shape.to_vec(),
            offset,
            init,
        });
        ParamId(self.specs.len() - 1)
    }

    /// The parameters declared so far.
    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    /// Elements of the flat buffer `build` would allocate (padding included); `None` when the
    /// declared sizes overflow.
    pub fn len(&self) -> Option<usize> {
        self.len.map(|l| l.max(ALIGN))
    }

    /// Whether nothing has been declared.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Elements of the flat buffer, checked against the device before anything is allocated.
    fn checked_len(&self, gpu: &Gpu) -> Result<usize> {
        let len = self.len().ok_or_else(|| {
            Error::TooLarge("the parameters' sizes overflow the address space".into())
        })?;
        crate::limits::Budget::of(gpu).check_tensor(
            &format!("the flat parameter buffer ({len} values)"),
            Some(len as u64),
            "declare fewer or smaller parameters",
        )?;
        Ok(len)
    }

    /// Allocate the flat value and gradient buffers and initialise the values from `seed`
    /// (each parameter from its own stream, so adding one does not change the others).
    pub fn build(self, gpu: &Gpu, seed: u64) -> Result<Params> {
        let len = self.checked_len(gpu)?;
        let mut host = vec![0f32; len];
        for (i, s) in self.specs.iter().enumerate() {
            let mut rng = rand::rngs::StdRng::seed_from_u64(
                seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i as u64 + 1)),
            );
            s.init
                .fill(&mut host[s.offset..s.offset + numel(&s.shape)], &mut rng);
        }
        self.upload(gpu, &host, true)
    }

    /// Allocate the flat buffers with the values of `values`, the whole flat buffer as laid
    /// out here (`len` elements, padding included: see [`crate::checkpoint::join_flat`]),
    /// uploaded once; no initialiser runs. The gradient buffer starts at zero.
    pub fn build_with_values(self, gpu: &Gpu, values: &[f32]) -> Result<Params> {
        self.upload(gpu, values, true)
    }

    /// Like [`ParamsBuilder::build_with_values`], without a gradient buffer: for sampling and
    /// evaluation, where nothing is trained (a recording tape gives such parameters their
    /// gradients in its `Grads`, like inputs).
    pub fn build_for_inference(self, gpu: &Gpu, values: &[f32]) -> Result<Params> {
        self.upload(gpu, values, false)
    }

    fn upload(self, gpu: &Gpu, host: &[f32], grads: bool) -> Result<Params> {
        let len = self.checked_len(gpu)?;
        if host.len() != len {
            return Err(Error::Shape(format!(
                "{} values for a flat parameter buffer of {len}",
                host.len()
            )));
        }
        let values = Tensor::from_slice(gpu, &[len], host)?;
        let grads = grads.then(|| Tensor::zeros(gpu, &[len])).transpose()?;
        let by_name = self
            .specs
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        Ok(Params {
            specs: self.specs,
            values,
            grads,
            by_name,
            f16: None,
            f16_stale: AtomicBool::new(true),
        })
    }
}

/// A flat layout: named parameters at offsets in a buffer of `flat_len` elements (declared, or
/// allocated), for moving per-name values in and out of flat buffers.
pub trait FlatLayout {
    /// The parameters, in declaration order.
    fn specs(&self) -> &[ParamSpec];
    /// Elements of the flat buffer, padding included.
    fn flat_len(&self) -> usize;
}

impl FlatLayout for ParamsBuilder {
    fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }
    fn flat_len(&self) -> usize {
        self.len().unwrap_or(0)
    }
}

impl FlatLayout for Params {
    fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }
    fn flat_len(&self) -> usize {
        self.values.numel()
    }
}

/// All parameters of a model: flat value and gradient buffers and the named views into them.
pub struct Params {
    specs: Vec<ParamSpec>,
    values: Tensor,
    /// `None`: built for inference.
    grads: Option<Tensor>,
    by_name: HashMap<String, usize>,
    /// The f16 copy of `values` the matmuls read their weights from, where the parameters
    /// store f16 weights ([`Params::store_f16`]).
    f16: Option<Tensor>,
    /// Whether the values may have changed since the f16 copy was made: set by every handle
    /// to the flat values ([`Params::values`], [`Params::set`]), cleared by a refresh.
    f16_stale: AtomicBool,
}

impl Params {
    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }
    pub fn spec(&self, id: ParamId) -> &ParamSpec {
        &self.specs[id.0]
    }
    /// The parameter called `name`.
    pub fn id(&self, name: &str) -> Option<ParamId> {
        self.by_name.get(name).map(|&i| ParamId(i))
    }
    /// The flat value buffer (padding between parameters included). Whoever takes it may change
    /// the values (the optimiser, a checkpoint's restore), so the f16 copy, if any, is made again
    /// before the next forward pass ([`Params::refresh_f16`]).
    pub fn values(&self) -> &Tensor {
        self.f16_stale.store(true, Ordering::Relaxed);
        &self.values
    }
    /// The flat gradient buffer, same layout (refused for parameters built for inference).
    pub fn grads(&self) -> Result<&Tensor> {
        self.grads.as_ref().ok_or_else(|| {
            Error::Config(
                "these parameters were built for inference and have no gradient buffer".into(),
            )
        })
    }
    /// Whether the parameters have a gradient buffer (not built for inference).
    pub fn has_grads(&self) -> bool {
        self.grads.is_some()
    }
    /// A view of one parameter's values, for reading (the networks); change values through
    /// [`Params::values`] or [`Params::set`], which the f16 copy follows.
    pub fn value(&self, id: ParamId) -> Tensor {
        let s = &self.specs[id.0];
        self.values
            .view(s.offset, &s.shape)
            .expect("parameter views are aligned and in range")
    }
    /// A view of one parameter's gradient (refused for parameters built for inference).
    pub fn grad(&self, id: ParamId) -> Result<Tensor> {
        let s = &self.specs[id.0];
        Ok(self
            .grads()?
            .view(s.offset, &s.shape)
            .expect("parameter views are aligned and in range"))
    }
    /// Number of parameter elements (without padding).
    pub fn count(&self) -> usize {
        self.specs.iter().map(|s| numel(&s.shape)).sum()
    }
    /// Set every gradient to zero (one dispatch), before a step's backward pass.
    pub fn zero_grads(&self) -> Result<()> {
        crate::ops::fill(self.grads()?, 0.0)
    }
    /// The same parameters with another value buffer of the same layout (the EMA weights, say).
    pub fn with_values(&self, values: Tensor) -> Result<Params> {
        if values.shape() != self.values.shape() {
            return Err(Error::Shape(format!(
                "a value buffer of shape {:?} for parameters laid out in {:?}",
                values.shape(),
                self.values.shape()
            )));
        }
        let f16 = self
            .f16
            .as_ref()
            .map(|_| Tensor::uninit(values.gpu(), values.shape(), DType::F16))
            .transpose()?;
        Ok(Params {
            specs: self.specs.clone(),
            values,
            grads: self.grads.clone(),
            by_name: self.by_name.clone(),
            f16,
            f16_stale: AtomicBool::new(true),
        })
    }

    /// Give the linear layers f16 weights: an f16 copy of the values (same layout) that their
    /// matmuls read ([`Params::matmul_weight`]), summing in f32 ("f16 storage with f32
    /// accumulation": half the bytes per weight read, on devices with `SHADER_F16`). The f32
    /// values stay the master copy that the optimiser updates and checkpoints hold; a forward
    /// pass of a network first makes the copy again where the values may have changed
    /// ([`Params::refresh_f16`]): once per training step, once for all the steps of sampling.
    pub fn store_f16(&mut self) -> Result<()> {
        let gpu = self.values.gpu();
        Params::check_f16(gpu)?;
        if self.f16.is_none() {
            self.f16 = Some(Tensor::uninit(gpu, self.values.shape(), DType::F16)?);
            self.f16_stale.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Refuse f16 weights on a device without `SHADER_F16`, saying what to do (checked before a
    /// run that will need them starts any work).
    pub fn check_f16(gpu: &Gpu) -> Result<()> {
        if gpu.has_f16() {
            return Ok(());
        }
        Err(Error::Config(format!(
            "f16 weights (--f16, or a run trained with it) need the SHADER_F16 feature, which {} \
             does not offer: use an adapter that has it (`rectiflow info` lists each adapter's \
             features), or train in f32 (a run trained with --f16 resumes in f32 with \
             --f16=false --allow-changes)",
            gpu.adapter_info().name
        )))
    }

    /// Whether the linear layers read f16 weights ([`Params::store_f16`]).
    pub fn stores_f16(&self) -> bool {
        self.f16.is_some()
    }

    /// Make the f16 weights again from the f32 values (rounded to nearest; one dispatch) where
    /// the parameters store f16 weights and the values may have changed since (someone took
    /// [`Params::values`]); nothing otherwise. Every network's forward pass calls it first, so
    /// the copy always matches the values it runs with.
    pub fn refresh_f16(&self) -> Result<()> {
        match &self.f16 {
            Some(copy) if self.f16_stale.swap(false, Ordering::Relaxed) => {
                crate::ops::cast_into(&self.values, copy).inspect_err(|_| {
                    self.f16_stale.store(true, Ordering::Relaxed);
                })
            }
            _ => Ok(()),
        }
    }

    /// The values a matmul reads for parameter `id`: its f16 copy where the parameters store
    /// f16 weights, else its f32 values.
    pub fn matmul_weight(&self, id: ParamId) -> Tensor {
        let s = &self.specs[id.0];
        self.f16
            .as_ref()
            .unwrap_or(&self.values)
            .view(s.offset, &s.shape)
            .expect("parameter views are aligned and in range")
    }

    /// Overwrite one parameter's values from the host.
    pub fn set(&self, id: ParamId, data: &[f32]) -> Result<()> {
        let s = &self.specs[id.0];
        if data.len() != numel(&s.shape) {
            return Err(Error::Shape(format!(
                "parameter {} has shape {:?} ({} values), {} were given",
                s.name,
                s.shape,
                numel(&s.shape),
                data.len()
            )));
        }
        self.f16_stale.store(true, Ordering::Relaxed);
        self.value(id).write(data)
    }
}
