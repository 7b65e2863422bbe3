//! EDM's preconditioning (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
//! Generative Models", table 1) for the variance-exploding `edm(Pm, Ps)` schedule, where
//! `a_t = 1` and `sigma = b_t = exp(Pm + Ps PhiInv(t))`, with `sigma_data = 0.5`:
//!
//! - the network `F` sees `c_in z_t` and the time input `c_noise` instead of `(z_t, t)`;
//! - its output is turned into the denoiser `D = c_skip z_t + c_out F`, which is `x0_hat`;
//! - `c_in = 1 / sqrt(sigma^2 + sd^2)`, `c_skip = sd^2 / (sigma^2 + sd^2)`,
//!   `c_out = sigma sd / sqrt(sigma^2 + sd^2)`, `c_noise = ln(sigma) / 4`.
//!
//! In the engine's terms (docs/flow-math.md) a preconditioned network is an `x0` prediction whose
//! raw output `F` is affine in `x0_hat` given `z`: `eps_hat = (z - D) / sigma =
//! ((1 - c_skip) z - c_out F) / sigma`, so the unified loss, the conversions to a velocity and the
//! samplers all apply through these coefficients. The regression target of `F` is
//! `(x0 - c_skip z) / c_out = (sigma x0 - sd^2 eps) / (sd sqrt(sigma^2 + sd^2))` (the second form
//! has no cancellation at small sigma; the GPU computes it).
//!
//! The time input: the networks embed their time input `tau` as `TIME_SCALE tau` (1000 tau,
//! `crate::nn::TIME_SCALE`), sized for `t` in [0, 1]. Under preconditioning `tau = c_noise`, so
//! the embedding sees `250 ln(sigma)`: over the training range `t` in [1e-5, 1 - 1e-5] of
//! `edm(-1.2, 1.2)` (sigma from 0.0018 to 50) that is [-1580, 980], a span like the 1000 of
//! `1000 t`. The frequencies of the sinusoidal embedding handle negative inputs as well.

use super::loss::SIGMA_DATA;
use super::prediction::Prediction;
use super::schedule::Schedule;
use crate::error::{Error, Result};

/// How the network's input and output are scaled around the raw network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Preconditioning {
    /// The network sees `(z_t, t)` and its output is the prediction itself.
    #[default]
    None,
    /// EDM's `c_in`, `c_noise`, `c_skip`, `c_out` (needs the `edm` schedule and `x0`
    /// prediction).
    Edm,
}

/// EDM's four scalings at one noise level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EdmScaling {
    /// The network input's scale: `1 / sqrt(sigma^2 + sd^2)`.
    pub c_in: f64,
    /// The skip connection: `sd^2 / (sigma^2 + sd^2)`.
    pub c_skip: f64,
    /// The network output's scale: `sigma sd / sqrt(sigma^2 + sd^2)`.
    pub c_out: f64,
    /// The network's time input: `ln(sigma) / 4`.
    pub c_noise: f64,
}

impl EdmScaling {
    /// The scalings at noise level `sigma > 0`.
    pub fn at(sigma: f64) -> EdmScaling {
        let sd2 = SIGMA_DATA * SIGMA_DATA;
        let norm = (sigma * sigma + sd2).sqrt();
        EdmScaling {
            c_in: 1.0 / norm,
            c_skip: sd2 / (sigma * sigma + sd2),
            c_out: sigma * SIGMA_DATA / norm,
            c_noise: sigma.ln() / 4.0,
        }
    }

    /// The scalings of `schedule` at `t` (`sigma = b_t`; the schedule is variance exploding).
    pub fn of(schedule: &Schedule, t: f64) -> EdmScaling {
        EdmScaling::at(schedule.b(t))
    }

    /// The denoiser `D = c_skip z + c_out F`.
    pub fn denoise(&self, f: f64, z: f64) -> f64 {
        self.c_skip * z + self.c_out * f
    }
}

impl Preconditioning {
    /// Parse `none` or `edm`.
    pub fn parse(text: &str) -> Result<Preconditioning> {
        match text {
            "none" => Ok(Preconditioning::None),
            "edm" => Ok(Preconditioning::Edm),
            _ => Err(Error::Config(format!(
                "unknown preconditioning {text:?}: use none or edm"
            ))),
        }
    }

    /// The text form (`none`, `edm`).
    pub fn name(&self) -> &'static str {
        match self {
            Preconditioning::None => "none",
            Preconditioning::Edm => "edm",
        }
    }

    /// Whether this is [`Preconditioning::None`].
    pub fn is_none(&self) -> bool {
        *self == Preconditioning::None
    }

    /// The preconditioning a network trained under `schedule` to predict `prediction` gets
    /// unless told otherwise: EDM's for the `edm` schedule with `x0` prediction, none otherwise.
    pub fn default_for(schedule: &Schedule, prediction: Prediction) -> Preconditioning {
        match (schedule, prediction) {
            (Schedule::Edm { .. }, Prediction::X0) => Preconditioning::Edm,
            _ => Preconditioning::None,
        }
    }

    /// Refuse a combination that has no meaning: EDM's preconditioning scales by the
    /// variance-exploding `sigma` and its output is a denoiser, so it needs the `edm` schedule
    /// and `x0` prediction. (EDM's `F` is, up to sign, Salimans and Ho's `v` of the normalised
    /// process `c_in z`, so a separate `v` form would be the same network.)
    pub fn check(&self, schedule: &Schedule, prediction: Prediction) -> Result<()> {
        if *self == Preconditioning::None {
            return Ok(());
        }
        if !matches!(schedule, Schedule::Edm { .. }) {
            return Err(Error::Config(format!(
                "preconditioning edm needs the variance-exploding edm schedule (--schedule edm or \
                 edm:PM,PS), not {}; use --preconditioning none",
                schedule.name()
            )));
        }
        if prediction != Prediction::X0 {
            return Err(Error::Config(format!(
                "preconditioning edm parameterises the denoiser D = x0_hat: use --pred x0 (EDM's F \
                 is already v-prediction of the normalised process, up to sign), or \
                 --preconditioning none to train {} without it",
                prediction.name()
            )));
        }
        Ok(())
    }

    /// The network's input scale and time input at `t`: `(1, t)` without preconditioning,
    /// `(c_in, c_noise)` with EDM's.
    pub fn network_input(&self, schedule: &Schedule, t: f64) -> (f64, f64) {
        match self {
            Preconditioning::None => (1.0, t),
            Preconditioning::Edm => {
                let c = EdmScaling::of(schedule, t);
                (c.c_in, c.c_noise)
            }
        }
    }

    /// `(x0_hat, eps_hat)` from the raw network output `y` at `z`, `t`.
    pub fn to_x0_eps(
        &self,
        schedule: &Schedule,
        p: Prediction,
        y: f64,
        z: f64,
        t: f64,
    ) -> (f64, f64) {
        match self {
            Preconditioning::None => p.to_x0_eps(schedule, y, z, t),
            Preconditioning::Edm => {
                let (a, b, _, _) = schedule.coefficients(t);
                let d = EdmScaling::at(b).denoise(y, z);
                (d, (z - a * d) / b)
            }
        }
    }

    /// The velocity `a' x0_hat + b' eps_hat` from the raw network output.
    pub fn to_velocity(&self, schedule: &Schedule, p: Prediction, y: f64, z: f64, t: f64) -> f64 {
        let (_, _, da, db) = schedule.coefficients(t);
        let (x0, eps) = self.to_x0_eps(schedule, p, y, z, t);
        da * x0 + db * eps
    }

    /// `eps_hat = k y + c z`: `(k, c)`, the affine map from the raw output to the noise
    /// estimate (under EDM's, `k = -c_out / sigma`, `c = (1 - c_skip) / sigma`).
    pub fn eps_coefficients(&self, schedule: &Schedule, p: Prediction, t: f64) -> (f64, f64) {
        match self {
            Preconditioning::None => p.eps_coefficients(schedule, t),
            Preconditioning::Edm => {
                let b = schedule.b(t);
                let c = EdmScaling::at(b);
                (-c.c_out / b, (1.0 - c.c_skip) / b)
            }
        }
    }

    /// The raw output that is exactly right for data `x0` and noise `eps`: the regression
    /// target (under EDM's, `(x0 - c_skip z) / c_out`).
    pub fn target(&self, schedule: &Schedule, p: Prediction, x0: f64, eps: f64, t: f64) -> f64 {
        match self {
            Preconditioning::None => p.target(schedule, x0, eps, t),
            Preconditioning::Edm => {
                let (a, b, _, _) = schedule.coefficients(t);
                let c = EdmScaling::at(b);
                (x0 - c.c_skip * (a * x0 + b * eps)) / c.c_out
            }
        }
    }
}
