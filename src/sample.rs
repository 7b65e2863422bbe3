//! Sampling: integrate `dz/dt = v(z, t)` from noise at `t = 1` down to `t = 0`
//! (docs/flow-math.md, "Sampling").
//!
//! - **Time grid**: `t_i = shift(T_START (1 - i / steps), alpha)` for `i = 0..=steps`, with
//!   [`T_START`] `= 1 - 1e-5` (where every schedule's conversions are finite) and the
//!   resolution shift `shift(t, alpha) = alpha t / (1 + (alpha - 1) t)` (`alpha = 1`, the
//!   default, is no shift); or Karras et al.'s `rho = 7` spacing of `sigma` (the default for the
//!   `edm` schedule; [`SampleOptions::grid`], `crate::flow::grid`).
//! - **Start**: `z = b(t_0) eps` with `eps` standard normal (the data's share `a(t_0) x0` is
//!   negligible there). From a seed, `eps` is element `i` of Philox stream 7 at step 0 of that
//!   seed: counter `(i, 0, 7, 0)`, the 64-bit seed as key (`crate::rng`, bit-identical on CPU
//!   and GPU), element `i = sample * dim + feature`, so sample `k`'s noise does not depend on how
//!   many samples are drawn.
//! - **Step** from `t` to `s`: the field's output `y` at `(z, t)` gives
//!   `(x0_hat, eps_hat) = (p y + q z, r y + u z)` (the prediction's affine maps), and
//!   `z_s = a_s x0_hat + b_s eps_hat`, exact for every schedule's straight line (Euler for `rf`,
//!   DDIM for variance-preserving schedules). With `clip_x0`, `x0_hat` is clamped to
//!   `[-clip, clip]` first. Heun averages the velocities `v = a' x0_hat + b' eps_hat` at both
//!   ends (one more evaluation per step, none on the last); under the `edm` schedule it averages
//!   `dz/dsigma = eps_hat` over `sigma_s - sigma_t` instead (EDM's Heun: `b'` grows without
//!   bound near `t = 1`, where a trapezoid in `t` diverges).
//! - **rk45**: adaptive Dormand-Prince 5(4) on the velocity `a' x0_hat + b' eps_hat` to the
//!   tolerances `rtol`, `atol` (`crate::rk45`: the steps, the controller, the ends, the clamp);
//!   [`Sampler::nfe`] counts the evaluations of every solver.
//! - **Guidance**: `y = y_u + w (y_c - y_u)` from one doubled batch (conditional rows, then the
//!   same rows with the null label). With `w = 1`, or when every label is the null class, the
//!   unconditional half is not evaluated at all.
//!
//! A [`Sampler`] is the integration as an object the host drives: [`Sampler::start`] draws the
//! noise, each [`Sampler::step`] records one ODE step and submits it (one submission, nothing
//! read back), [`Sampler::finish`] runs what is left and hands back the samples. The velocity
//! comes from any [`VelocityField`]: the network ([`NetworkField`], with EDM's preconditioning
//! applied around it when it was trained with it), the exact marginal velocity
//! of a data set ([`OracleField`]), or a closure of the host's ([`FnField`]). [`sample`] is the
//! one-shot loop over a sampler.
#![warn(missing_docs)]

use crate::autograd::Tape;
use crate::error::{ensure_shape, Error, Result};
use crate::flow::grid::heun_frame;
use crate::flow::{Preconditioning, Prediction, Schedule, TimeGrid};
use crate::limits::Budget;
use crate::nn::{Model, ModelConfig};
use crate::ops::{self, flow::FlowKernels};
use crate::params::Params;
use crate::rk45::{self, Rk45};
use crate::tensor::{DType, Tensor};
use crate::Gpu;
use serde::{Deserialize, Serialize};

/// The ODE solver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Solver {
    /// First order: one evaluation per step.
    Euler,
    /// Second order (Heun's method): two evaluations per step, one on the last.
    Heun,
    /// Adaptive Dormand-Prince 5(4) to the tolerances `rtol` and `atol` (`crate::rk45`): six
    /// evaluations per attempted step; `steps` is not used.
    Rk45,
}

impl Solver {
    /// Parse `euler`, `heun` or `rk45`.
    pub fn parse(s: &str) -> Result<Solver> {
        match s {
            "euler" => Ok(Solver::Euler),
            "heun" => Ok(Solver::Heun),
            "rk45" => Ok(Solver::Rk45),
            _ => Err(Error::Config(format!(
                "unknown solver {s:?}: use euler, heun or rk45"
            ))),
        }
    }

    /// The text form (`euler`, `heun`, `rk45`).
    pub fn name(self) -> &'static str {
        match self {
            Solver::Euler => "euler",
            Solver::Heun => "heun",
            Solver::Rk45 => "rk45",
        }
    }
}

/// How to sample (validated when a sampler starts; see [`SampleOptions::validate`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleOptions {
    /// ODE steps (the time grid has `steps + 1` points; not used by `rk45`).
    pub steps: usize,
    /// The solver.
    pub solver: Solver,
    /// Guidance weight `w` (1: plain conditional; 0: unconditional).
    pub cfg: f32,
    /// Time-grid shift `alpha` (1: none).
    pub shift: f64,
    /// One label per sample (the null class, `classes`, for unconditional models or samples).
    pub labels: Vec<u32>,
    /// Seed of the starting noise.
    pub seed: u64,
    /// Clamp the predicted `x0_hat` to `[-clip, clip]` before each step (images live in [-1, 1]).
    /// Predictions whose `x0_hat` divides by a small `a_t` (eps on `rf` or `cosine` near `t = 1`)
    /// otherwise amplify the network's error by `b / a`.
    pub clip_x0: Option<f32>,
    /// The time grid; `None`: the one that suits the field's schedule
    /// ([`TimeGrid::default_for`]: Karras for `edm`, uniform otherwise).
    #[serde(default)]
    pub grid: Option<TimeGrid>,
    /// Relative tolerance of `rk45` (finite, > 0).
    #[serde(default = "default_rtol")]
    pub rtol: f64,
    /// Absolute tolerance of `rk45` (finite, > 0).
    #[serde(default = "default_atol")]
    pub atol: f64,
}

fn default_rtol() -> f64 {
    rk45::DEFAULT_RTOL
}

fn default_atol() -> f64 {
    rk45::DEFAULT_ATOL
}

/// Most sampling steps (the time grid is one f64 per step).
pub const MAX_STEPS: usize = 100_000;

/// The guidance weight of the command line's samples and of [`crate::Pipeline::options`] for
/// class-conditional models.
pub const GUIDANCE: f32 = 2.0;

/// Steps of the command line's samples and of [`SampleOptions::new`].
pub const DEFAULT_STEPS: usize = 20;

impl SampleOptions {
    /// [`DEFAULT_STEPS`] Euler steps without guidance, shift or clamp, from seed 0, for these
    /// labels (and the rk45 tolerances [`rk45::DEFAULT_RTOL`], [`rk45::DEFAULT_ATOL`]).
    pub fn new(labels: Vec<u32>) -> SampleOptions {
        SampleOptions {
            steps: DEFAULT_STEPS,
            solver: Solver::Euler,
            cfg: 1.0,
            shift: 1.0,
            labels,
            seed: 0,
            clip_x0: None,
            grid: None,
            rtol: rk45::DEFAULT_RTOL,
            atol: rk45::DEFAULT_ATOL,
        }
    }

    /// Check every option against its range, naming the flag: at least one sample, steps in
    /// `1..=MAX_STEPS`, a finite guidance weight, a finite positive shift, a finite positive x0
    /// clamp, and finite positive rk45 tolerances.
    pub fn validate(&self) -> Result<()> {
        let refuse = |m: String| Err(Error::Config(m));
        if self.labels.is_empty() {
            return refuse("sampling needs at least one sample (--n)".into());
        }
        if !(1..=MAX_STEPS).contains(&self.steps) {
            return refuse(format!("--steps {}: use 1..={MAX_STEPS}", self.steps));
        }
        if !self.cfg.is_finite() {
            return refuse(format!(
                "--cfg {}: the guidance weight must be a finite number (1: none)",
                self.cfg
            ));
        }
        if !(self.shift.is_finite() && self.shift > 0.0) {
            return refuse(format!(
                "--shift {}: the time shift must be a finite number > 0 (1: none)",
                self.shift
            ));
        }
        if let Some(v) = self.clip_x0 {
            if !(v.is_finite() && v > 0.0) {
                return refuse(format!(
                    "--clip-x0 {v}: the bound must be a finite number > 0 (0 on the command line: no clamp)"
                ));
            }
        }
        rk45::check_tolerance("--rtol", self.rtol)?;
        rk45::check_tolerance("--atol", self.atol)
    }
}

pub use crate::flow::grid::T_START;

/// The uniform time grid: `steps + 1` times from `shift(T_START, alpha)` down to 0.
pub fn time_grid(steps: usize, alpha: f64) -> Vec<f64> {
    TimeGrid::Uniform.times(&Schedule::RectifiedFlow, steps, alpha)
}

/// Labels `0, 1, ..., classes - 1, 0, 1, ...` for `n` samples (label `i % classes`: a grid
/// with `classes` columns shows one class per column); all 0 (the null class) for an
/// unconditional model (`classes = 0`).
pub fn cycle_labels(classes: usize, n: usize) -> Vec<u32> {
    (0..n)
        .map(|i| if classes > 0 { (i % classes) as u32 } else { 0 })
        .collect()
}

/// Refuse `n` samples of `model` that the device or the host budget cannot hold (checked before
/// anything of that size is allocated): the largest activation of a doubled (guided) batch, and
/// the host copies of the samples (read back, as `.npy` and as a picture).
pub fn check_sample_count(model: &ModelConfig, n: usize, budget: &Budget) -> Result<()> {
    if n == 0 {
        return Err(Error::Config("--n 0: draw at least one sample".into()));
    }
    budget.check_tensor(
        &format!(
            "sampling {n} examples of shape {:?} (a batch of {} with guidance): the largest activation",
            model.shape,
            n.saturating_mul(2)
        ),
        n.checked_mul(2).and_then(|b| model.activation_elems(b)),
        "use a smaller --n",
    )?;
    // The samples read back, their .npy copy and the PNG's pixels: at most 40 bytes per value.
    let dim: u64 = model.shape.iter().map(|&d| d as u64).product();
    budget.check_host(
        &format!("{n} samples of shape {:?}", model.shape),
        (n as u64).checked_mul(dim.saturating_mul(40)),
        "use a smaller --n",
    )
}

/// What a [`VelocityField`] is evaluated at.
pub struct FieldInput<'a> {
    /// The current samples, `[rows, dim]` (row-major examples; see [`FieldInput::examples`]).
    pub z: &'a Tensor,
    /// The time of every row, `[rows]`.
    pub t: &'a Tensor,
    /// The same time as a number.
    pub time: f64,
    /// One label per row (`classes` is the null class). With guidance the rows are the samples
    /// twice: with their labels, then with the null label.
    pub labels: &'a [u32],
    /// The same labels on the GPU as f32 class numbers, `[rows]` (the form `Model::forward`
    /// takes).
    pub label_values: &'a Tensor,
    /// The shape of one example (`[C, H, W]` or `[D]`).
    pub example_shape: &'a [usize],
}

impl FieldInput<'_> {
    /// Rows evaluated.
    pub fn rows(&self) -> usize {
        self.z.shape()[0]
    }

    /// The samples as examples, `[rows, C, H, W]` or `[rows, D]` (a view, no copy).
    pub fn examples(&self) -> Result<Tensor> {
        let mut shape = vec![self.rows()];
        shape.extend(self.example_shape);
        self.z.reshape(&shape)
    }
}

/// Anything a [`Sampler`] can integrate: a function of `(z, t, labels)` whose output is a
/// prediction (velocity, eps, v or x0) under a schedule.
pub trait VelocityField {
    /// The forward process the output refers to (its coefficients convert the output and move
    /// the samples).
    fn schedule(&self) -> Schedule;
    /// What the output is.
    fn prediction(&self) -> Prediction;
    /// Number of classes (labels `0..classes`; `classes` is the null class); 0: unconditional.
    fn classes(&self) -> usize;
    /// The output at `input`, `[rows, dim]` (any shape with as many f32 elements is taken),
    /// recorded on the GPU (nothing needs to be read back).
    fn evaluate(&mut self, input: &FieldInput) -> Result<Tensor>;
}

impl<T: VelocityField + ?Sized> VelocityField for &mut T {
    fn schedule(&self) -> Schedule {
        (**self).schedule()
    }
    fn prediction(&self) -> Prediction {
        (**self).prediction()
    }
    fn classes(&self) -> usize {
        (**self).classes()
    }
    fn evaluate(&mut self, input: &FieldInput) -> Result<Tensor> {
        (**self).evaluate(input)
    }
}

impl<T: VelocityField + ?Sized> VelocityField for Box<T> {
    fn schedule(&self) -> Schedule {
        (**self).schedule()
    }
    fn prediction(&self) -> Prediction {
        (**self).prediction()
    }
    fn classes(&self) -> usize {
        (**self).classes()
    }
    fn evaluate(&mut self, input: &FieldInput) -> Result<Tensor> {
        (**self).evaluate(input)
    }
}

/// A velocity network with its weights.
pub struct NetworkField<'a> {
    model: &'a Model,
    params: &'a Params,
    schedule: Schedule,
    prediction: Prediction,
    preconditioning: Preconditioning,
    classes: usize,
}

impl<'a> NetworkField<'a> {
    /// `model` with weights `params`, trained under `schedule` to predict `prediction`, with
    /// `classes` classes (0: unconditional).
    pub fn new(
        model: &'a Model,
        params: &'a Params,
        schedule: Schedule,
        prediction: Prediction,
        classes: usize,
    ) -> NetworkField<'a> {
        NetworkField {
            model,
            params,
            schedule,
            prediction,
            preconditioning: Preconditioning::None,
            classes,
        }
    }

    /// The same network trained with `preconditioning`: under EDM's it sees `c_in z` and
    /// `c_noise`, and the field's output is the denoiser `D = c_skip z + c_out F` (an `x0`
    /// prediction). The scalings are those of the step's time ([`FieldInput::time`]).
    pub fn with_preconditioning(self, preconditioning: Preconditioning) -> NetworkField<'a> {
        NetworkField {
            preconditioning,
            ..self
        }
    }
}

impl VelocityField for NetworkField<'_> {
    fn schedule(&self) -> Schedule {
        self.schedule
    }
    fn prediction(&self) -> Prediction {
        self.prediction
    }
    fn classes(&self) -> usize {
        self.classes
    }
    fn evaluate(&mut self, input: &FieldInput) -> Result<Tensor> {
        let mut tape = Tape::no_grad();
        if self.preconditioning == Preconditioning::Edm {
            self.preconditioning
                .check(&self.schedule, self.prediction)?;
            let c = crate::flow::EdmScaling::of(&self.schedule, input.time);
            let t = tape.constant(Tensor::full(
                input.z.gpu(),
                &[input.rows()],
                c.c_noise as f32,
            )?);
            let z = tape.constant(ops::scale(input.z, c.c_in as f32)?);
            let f = self
                .model
                .forward(&mut tape, self.params, &z, &t, input.label_values)?;
            return combine(c.c_out, f.value(), c.c_skip, input.z);
        }
        let t = tape.constant(input.t.clone());
        let z = tape.constant(input.z.clone());
        Ok(self
            .model
            .forward(&mut tape, self.params, &z, &t, input.label_values)?
            .value()
            .clone())
    }
}

/// The exact marginal velocity of a data set (the Gaussian-mixture oracle with zero variance,
/// `FlowKernels::oracle_velocity`): the minimiser of the flow-matching loss, so integrating it
/// carries noise onto the data points. Unconditional.
pub struct OracleField {
    kernels: FlowKernels,
    schedule: Schedule,
    data: Tensor,
}

impl OracleField {
    /// The oracle of `data` (`[K, ...]`: `K` examples, equal weights) under `schedule`.
    pub fn new(schedule: Schedule, data: &Tensor) -> Result<OracleField> {
        let k = data.shape().first().copied().unwrap_or(0);
        ensure_shape!(
            k > 0 && data.shape().len() >= 2,
            "the oracle takes data [K, ...] with K >= 1 examples, got {:?}",
            data.shape()
        );
        let dim = data.numel() / k;
        Ok(OracleField {
            kernels: FlowKernels::new(data.gpu())?,
            schedule,
            data: data.reshape(&[k, dim])?,
        })
    }
}

impl VelocityField for OracleField {
    fn schedule(&self) -> Schedule {
        self.schedule
    }
    fn prediction(&self) -> Prediction {
        Prediction::Velocity
    }
    fn classes(&self) -> usize {
        0
    }
    fn evaluate(&mut self, input: &FieldInput) -> Result<Tensor> {
        self.kernels
            .oracle_velocity(input.z, input.t, &self.data, self.schedule)
    }
}

/// A field computed by a closure of the host's: any function of the [`FieldInput`] that records
/// its output on the GPU (its own kernels, a network of its own, a mix of fields).
pub struct FnField<F> {
    schedule: Schedule,
    prediction: Prediction,
    classes: usize,
    f: F,
}

impl<F: FnMut(&FieldInput) -> Result<Tensor>> FnField<F> {
    /// A closure whose output is `prediction` under `schedule`, for `classes` classes.
    pub fn new(schedule: Schedule, prediction: Prediction, classes: usize, f: F) -> FnField<F> {
        FnField {
            schedule,
            prediction,
            classes,
            f,
        }
    }

    /// An unconditional closure returning the velocity `dz/dt` of rectified flow
    /// (`z_t = (1 - t) x0 + t eps`).
    pub fn velocity(f: F) -> FnField<F> {
        FnField::new(Schedule::RectifiedFlow, Prediction::Velocity, 0, f)
    }
}

impl<F: FnMut(&FieldInput) -> Result<Tensor>> VelocityField for FnField<F> {
    fn schedule(&self) -> Schedule {
        self.schedule
    }
    fn prediction(&self) -> Prediction {
        self.prediction
    }
    fn classes(&self) -> usize {
        self.classes
    }
    fn evaluate(&mut self, input: &FieldInput) -> Result<Tensor> {
        (self.f)(input)
    }
}

/// The affine maps of a prediction at `t`: `(x0_hat, eps_hat) = (p y + q z, r y + u z)`.
fn affine(pred: Prediction, s: &Schedule, t: f64) -> [f64; 4] {
    let (p, r) = pred.to_x0_eps(s, 1.0, 0.0, t);
    let (q, u) = pred.to_x0_eps(s, 0.0, 1.0, t);
    [p, q, r, u]
}

/// `alpha y + beta z`, a new tensor.
fn combine(alpha: f64, y: &Tensor, beta: f64, z: &Tensor) -> Result<Tensor> {
    let out = ops::scale(z, beta as f32)?;
    ops::axpy(alpha as f32, y, &out)?;
    Ok(out)
}

/// Philox stream of the starting noise.
pub const NOISE_STREAM: u32 = 7;

/// The integration of a [`VelocityField`] from noise to samples, one ODE step at a time: the
/// host calls [`Sampler::step`] once per frame (each is one submission that reads nothing back)
/// and looks at [`Sampler::current`] whenever it likes. Stepping to the end gives exactly the
/// samples [`sample`] (the one-shot loop over this object) gives for the same options.
pub struct Sampler<F> {
    field: F,
    gpu: Gpu,
    schedule: Schedule,
    prediction: Prediction,
    example_shape: Vec<usize>,
    n: usize,
    dim: usize,
    /// Labels of the evaluated rows (with guidance: conditional, then null).
    labels: Vec<u32>,
    label_values: Tensor,
    guided: bool,
    cfg: f32,
    solver: Solver,
    clip_x0: Option<f32>,
    /// The time grid; for rk45 the accepted times so far.
    times: Vec<f64>,
    /// Steps taken.
    taken: usize,
    z: Tensor,
    /// Evaluations of the field so far (a guided doubled batch counts once).
    nfe: usize,
    /// The adaptive solver's state (rk45 only).
    rk45: Option<Rk45>,
}

impl<F: VelocityField> Sampler<F> {
    /// Start from noise drawn from `opts.seed` (see the module's notes): `opts.labels.len()`
    /// samples of `example_shape` (`[C, H, W]` or `[D]`) on `gpu`.
    pub fn start(
        gpu: &Gpu,
        field: F,
        example_shape: &[usize],
        opts: &SampleOptions,
    ) -> Result<Sampler<F>> {
        opts.validate()?;
        let dim = example_dim(example_shape)?;
        let n = opts.labels.len();
        let elems = n
            .checked_mul(dim)
            .ok_or_else(|| Error::TooLarge(format!("{n} samples of shape {example_shape:?}")))?;
        let eps = ops::random_normal(gpu, elems, opts.seed, 0, NOISE_STREAM)?.reshape(&[n, dim])?;
        Sampler::begin(gpu, field, example_shape, dim, &eps, opts)
    }

    /// Start from the host's standard-normal noise `[n, ...example_shape]` (or `[n, dim]`), one
    /// row per label; `opts.seed` is not used. The noise tensor is not modified.
    pub fn start_from_noise(field: F, noise: &Tensor, opts: &SampleOptions) -> Result<Sampler<F>> {
        opts.validate()?;
        let n = opts.labels.len();
        let rows = noise.shape().first().copied().unwrap_or(0);
        ensure_shape!(
            noise.dtype() == DType::F32 && noise.shape().len() >= 2 && rows == n,
            "the starting noise must be f32 [n, ...] with one row per label ({n}), got {:?} {:?}",
            noise.dtype(),
            noise.shape()
        );
        let example_shape = noise.shape()[1..].to_vec();
        let dim = example_dim(&example_shape)?;
        let eps = noise.reshape(&[n, dim])?;
        let gpu = noise.gpu().clone();
        Sampler::begin(&gpu, field, &example_shape, dim, &eps, opts)
    }

    fn begin(
        gpu: &Gpu,
        field: F,
        example_shape: &[usize],
        dim: usize,
        eps: &Tensor,
        opts: &SampleOptions,
    ) -> Result<Sampler<F>> {
        let n = opts.labels.len();
        let null = field.classes();
        if let Some((i, &l)) = opts
            .labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize > null)
        {
            return Err(Error::Config(if null == 0 {
                format!(
                    "label {l} for sample {i}: the model is unconditional (every label must be 0)"
                )
            } else {
                format!(
                    "label {l} for sample {i}: the model has {null} classes (labels 0..{}, {null} \
                     for the null class)",
                    null - 1
                )
            }));
        }
        let null = null as u32;
        let guided = opts.cfg != 1.0 && opts.labels.iter().any(|&l| l != null);
        let mut labels = opts.labels.clone();
        if guided {
            labels.extend(std::iter::repeat_n(null, n));
        }
        let values: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
        let label_values = Tensor::from_slice(gpu, &[values.len()], &values)?;
        let schedule = field.schedule();
        let grid = opts
            .grid
            .unwrap_or_else(|| TimeGrid::default_for(&schedule));
        let mut times = grid.times(&schedule, opts.steps, opts.shift);
        let rk45 = (opts.solver == Solver::Rk45).then(|| {
            // An adaptive solver makes its own grid: only the (shifted) start is kept.
            times.truncate(1);
            Rk45::new(times[0], opts.rtol, opts.atol)
        });
        let z = ops::scale(eps, schedule.b(times[0]) as f32)?;
        Ok(Sampler {
            prediction: field.prediction(),
            field,
            gpu: gpu.clone(),
            schedule,
            example_shape: example_shape.to_vec(),
            n,
            dim,
            labels,
            label_values,
            guided,
            cfg: opts.cfg,
            solver: opts.solver,
            clip_x0: opts.clip_x0,
            times,
            taken: 0,
            z,
            nfe: 0,
            rk45,
        })
    }

    /// Record the next ODE step and submit it (without waiting). Returns `false`, doing
    /// nothing, once every step has been taken.
    pub fn step(&mut self) -> Result<bool> {
        if self.is_done() {
            return Ok(false);
        }
        if self.rk45.is_some() {
            return self.rk45_step();
        }
        let (t, s) = (self.times[self.taken], self.times[self.taken + 1]);
        let last = self.taken + 2 == self.times.len();
        let (schedule, pred) = (self.schedule, self.prediction);
        let z = self.z.clone();
        let y = self.output(&z, t)?;
        let [p, q, r, u] = affine(pred, &schedule, t);
        let (a_s, b_s, _, _) = schedule.coefficients(s);
        let euler = match self.clip_x0 {
            None => combine(a_s * p + b_s * r, &y, a_s * q + b_s * u, &z)?,
            Some(bound) => {
                // z_s = a_s clamp(x0_hat) + b_s eps_hat
                let x0 = ops::clamp(&combine(p, &y, q, &z)?, bound)?;
                let next = combine(r, &y, u, &z)?;
                let scaled = ops::scale(&next, b_s as f32)?;
                ops::axpy(a_s as f32, &x0, &scaled)?;
                scaled
            }
        };
        self.z = if self.solver == Solver::Heun && !last {
            // Derivatives at both ends, in Heun's variable (`flow::grid::heun_frame`):
            // dz/dt = a' x0_hat + b' eps_hat, or dz/dsigma = eps_hat under edm.
            let (clock_t, da, db) = heun_frame(&schedule, t);
            let v_t = combine(da * p + db * r, &y, da * q + db * u, &z)?;
            let y2 = self.output(&euler, s)?;
            let [p2, q2, r2, u2] = affine(pred, &schedule, s);
            let (clock_s, da2, db2) = heun_frame(&schedule, s);
            let v_s = combine(da2 * p2 + db2 * r2, &y2, da2 * q2 + db2 * u2, &euler)?;
            let next = ops::copy(&z)?;
            ops::axpy(0.5 * (clock_s - clock_t) as f32, &v_t, &next)?;
            ops::axpy(0.5 * (clock_s - clock_t) as f32, &v_s, &next)?;
            next
        } else {
            euler
        };
        self.taken += 1;
        self.gpu.flush()?;
        Ok(true)
    }

    /// The field's output at `(z, t)`, guided.
    fn output(&mut self, z: &Tensor, t: f64) -> Result<Tensor> {
        let (n, dim) = (self.n, self.dim);
        let zz = if self.guided {
            let z3 = z.reshape(&[1, n, dim])?;
            ops::concat_tokens(&z3, &z3)?.reshape(&[2 * n, dim])?
        } else {
            z.clone()
        };
        let rows = zz.shape()[0];
        let tv = Tensor::full(&self.gpu, &[rows], t as f32)?;
        let input = FieldInput {
            z: &zz,
            t: &tv,
            time: t,
            labels: &self.labels,
            label_values: &self.label_values,
            example_shape: &self.example_shape,
        };
        let y = self.field.evaluate(&input)?;
        self.nfe += 1;
        ensure_shape!(
            y.dtype() == DType::F32 && y.numel() == rows * dim,
            "the velocity field returned {:?} {:?} for {rows} rows of {dim} values",
            y.dtype(),
            y.shape()
        );
        let y = y.reshape(&[rows, dim])?;
        if !self.guided {
            return Ok(y);
        }
        let (yc, yu) = ops::split_tokens(&y.reshape(&[1, 2 * n, dim])?, n)?;
        let (yc, yu) = (yc.reshape(&[n, dim])?, yu.reshape(&[n, dim])?);
        // y = y_u + w (y_c - y_u) = w y_c + (1 - w) y_u
        let out = ops::scale(&yc, self.cfg)?;
        ops::axpy(1.0 - self.cfg, &yu, &out)?;
        Ok(out)
    }

    /// One accepted rk45 step (rejected attempts included), submitted.
    fn rk45_step(&mut self) -> Result<bool> {
        if self.taken >= MAX_STEPS {
            return Err(Error::Config(format!(
                "rk45 took {MAX_STEPS} steps and is at t = {}: loosen --rtol / --atol",
                self.time()
            )));
        }
        let mut solver = self.rk45.take().expect("an rk45 sampler");
        let (z, t) = (self.z.clone(), self.time());
        let result = solver.step(&mut |z, t| self.velocity(z, t), &z, t);
        self.rk45 = Some(solver);
        let (z, t) = result?;
        self.z = z;
        self.times.push(t);
        self.taken += 1;
        self.gpu.flush()?;
        Ok(true)
    }

    /// The velocity `dz/dt = a' x0_hat + b' eps_hat` at `(z, t)`, guided. With the x0 clamp it
    /// is the velocity of the straight path from `clamp(x0_hat)` through `z`, i.e. `eps_hat =
    /// (z - a clamp(x0_hat)) / b`: where nothing is clamped this is the plain velocity, and like
    /// the fixed-step update it lands on `clamp(x0_hat)` at `t = 0`.
    fn velocity(&mut self, z: &Tensor, t: f64) -> Result<Tensor> {
        let y = self.output(z, t)?;
        let [p, q, r, u] = affine(self.prediction, &self.schedule, t);
        let (a, b, da, db) = self.schedule.coefficients(t);
        match self.clip_x0 {
            None => {
                let (cy, cz) = (da * p + db * r, da * q + db * u);
                if cy == 1.0 && cz == 0.0 {
                    return Ok(y); // velocity prediction on rf
                }
                ops::linear_combination(None, &[(cy as f32, &y), (cz as f32, z)])
            }
            Some(bound) => {
                let x0 = ops::clamp(&combine(p, &y, q, z)?, bound)?;
                let terms = [((da - db * a / b) as f32, &x0), ((db / b) as f32, z)];
                ops::linear_combination(None, &terms)
            }
        }
    }

    /// Steps taken so far (rk45: accepted steps).
    pub fn steps_taken(&self) -> usize {
        self.taken
    }

    /// Steps in all. An adaptive solver (rk45) does not know them in advance: its accepted
    /// steps so far, which are all of them once [`Sampler::is_done`].
    pub fn steps(&self) -> usize {
        self.times.len() - 1
    }

    /// Whether every step has been taken (rk45: whether it has reached `t = 0`).
    pub fn is_done(&self) -> bool {
        match self.rk45 {
            Some(_) => self.time() == 0.0,
            None => self.taken + 1 >= self.times.len(),
        }
    }

    /// The time the samples are at now (`t_0` before the first step, 0 at the end).
    pub fn time(&self) -> f64 {
        self.times[self.taken]
    }

    /// The time grid, `steps + 1` times from the start down to 0; for rk45 the times it has
    /// reached so far (the accepted steps' ends), from the start down to where it is now.
    pub fn times(&self) -> &[f64] {
        &self.times
    }

    /// Evaluations of the field so far (the number of function evaluations, NFE): one per
    /// Euler step, two per Heun step but the last, for rk45 one at the start and six per
    /// attempted step. A guided evaluation of the doubled batch counts once.
    pub fn nfe(&self) -> usize {
        self.nfe
    }

    /// Steps rk45 has rejected so far (0 for the fixed-step solvers).
    pub fn rejected_steps(&self) -> usize {
        self.rk45.as_ref().map_or(0, Rk45::rejected)
    }

    /// Record the path-straightness sums along the trajectory (rk45 only; call before the first
    /// step). See [`Sampler::straightness`].
    pub fn record_straightness(&mut self) -> Result<()> {
        let t = self.time();
        match &mut self.rk45 {
            Some(solver) if self.taken == 0 => solver.record_straightness(&self.z, t),
            Some(_) => Err(Error::Config(
                "record_straightness: call it before the first step".into(),
            )),
            None => Err(Error::Config(
                "path straightness is measured along rk45 trajectories: sample with --solver rk45"
                    .into(),
            )),
        }
    }

    /// The path straightness of the finished trajectories (see `crate::rk45`): the mean over
    /// every element and the trajectory's time of `(v(z_t, t) - (z_start - z_0) / t_start)^2`,
    /// 0 for straight paths. Reads the samples and the sums back.
    pub fn straightness(&self) -> Result<f64> {
        let recorded = self.rk45.as_ref().filter(|s| s.records_straightness());
        match recorded {
            Some(solver) if self.is_done() => {
                Ok(solver.straightness(&self.z)?.expect("recorded sums"))
            }
            Some(_) => Err(Error::Config(
                "straightness: step the sampler to the end first".into(),
            )),
            None => Err(Error::Config(
                "straightness: call record_straightness before the first rk45 step".into(),
            )),
        }
    }

    /// The samples as they are now, `[n, ...example_shape]` (shares the sampler's buffer until
    /// the next step replaces it).
    pub fn current(&self) -> Result<Tensor> {
        let mut shape = vec![self.n];
        shape.extend(&self.example_shape);
        self.z.reshape(&shape)
    }

    /// Whether the unconditional half of a doubled batch is evaluated (guidance weight other
    /// than 1 and some label not the null class).
    pub fn is_guided(&self) -> bool {
        self.guided
    }

    /// The field being integrated.
    pub fn field(&self) -> &F {
        &self.field
    }

    /// Take every step left and return the samples `[n, ...example_shape]`.
    pub fn finish(mut self) -> Result<Tensor> {
        while self.step()? {}
        self.current()
    }
}

fn example_dim(shape: &[usize]) -> Result<usize> {
    let dim = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    match dim {
        Some(d) if d > 0 && !shape.is_empty() => Ok(d),
        _ => Err(Error::Shape(format!(
            "examples of shape {shape:?}: give [C, H, W] or [D] with every size at least 1"
        ))),
    }
}

/// How a network was trained, as far as sampling from it goes: the schedule it was trained
/// under and what it predicts (the training objective, `crate::train::Objective`, says so).
pub trait Trained {
    /// The noise schedule.
    fn schedule(&self) -> Schedule;
    /// What the network predicts.
    fn prediction(&self) -> Prediction;
    /// How its input and output are scaled (none unless said).
    fn preconditioning(&self) -> Preconditioning {
        Preconditioning::None
    }
}

/// Draw samples `[n, dim]` from `model` with parameter values `params`, trained as `flow` says
/// (its schedule and prediction), whose null label is `null_label` (its number of classes): a
/// [`Sampler`] over a [`NetworkField`], stepped to the end.
pub fn sample(
    model: &Model,
    params: &Params,
    flow: &impl Trained,
    dim: usize,
    null_label: u32,
    opts: &SampleOptions,
) -> Result<Tensor> {
    let field = NetworkField::new(
        model,
        params,
        flow.schedule(),
        flow.prediction(),
        null_label as usize,
    )
    .with_preconditioning(flow.preconditioning());
    let gpu = params.values().gpu();
    let z = Sampler::start(gpu, field, &[dim], opts)?.finish()?;
    z.reshape(&[opts.labels.len(), dim])
}
