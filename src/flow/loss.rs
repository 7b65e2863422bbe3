//! SD3's unified objective (docs/flow-math.md, "One loss for all of them"):
//!
//! `L_w(x0) = -1/2 E_{t, eps}[ w_t lambda'_t || eps_theta(z_t, t) - eps ||^2 ]`
//!
//! with the weights of the spec's table, so any (schedule, prediction, weighting) is a
//! configuration. Since every prediction is affine in the network output, with
//! `eps_hat - eps = c_out (output - target)`, the loss of a sample is
//! `W_t || output - target ||^2` with `W_t = -1/2 w_t lambda'_t c_out^2`: for a prediction trained
//! with its own weighting `W_t = 1`, the plain regression loss.

use super::precondition::Preconditioning;
use super::prediction::Prediction;
use super::schedule::Schedule;
use crate::error::{Error, Result};

/// The weighting `w_t` of the unified objective.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Weighting {
    /// `-lambda' b^2 / 2`: velocity MSE (`t / (1 - t)` for rf).
    Velocity,
    /// `-2 / lambda'`: eps MSE.
    Eps,
    /// `-2 / (lambda' a^2)`: v MSE (for variance-preserving schedules).
    V,
    /// `-2 (b / a)^2 / lambda'`: x0 MSE (`||x0_hat - x0||^2 = (b/a)^2 ||eps_hat - eps||^2`).
    X0,
    /// `N(lambda; -2 pm, (2 ps)^2) (exp(-lambda) + 0.5^2)`: EDM's weighting.
    Edm { pm: f64, ps: f64 },
}

/// EDM's data standard deviation.
pub const SIGMA_DATA: f64 = 0.5;

impl Weighting {
    /// The weighting under which `prediction` is trained by its own plain MSE.
    pub fn natural(prediction: Prediction) -> Weighting {
        match prediction {
            Prediction::Velocity => Weighting::Velocity,
            Prediction::Eps => Weighting::Eps,
            Prediction::V => Weighting::V,
            Prediction::X0 => Weighting::X0,
        }
    }

    pub fn parse(s: &str) -> Result<Weighting> {
        let bad = || {
            Error::Config(format!(
                "unknown weighting {s:?}: use velocity, eps, v, x0 or edm:PM,PS"
            ))
        };
        Ok(match s {
            "velocity" => Weighting::Velocity,
            "eps" => Weighting::Eps,
            "v" => Weighting::V,
            "x0" => Weighting::X0,
            _ => {
                let (pm, ps) = s
                    .strip_prefix("edm:")
                    .and_then(|a| a.split_once(','))
                    .ok_or_else(bad)?;
                let pm: f64 = pm.trim().parse().map_err(|_| bad())?;
                let ps: f64 = ps.trim().parse().map_err(|_| bad())?;
                if !(ps.is_finite() && ps > 0.0 && pm.is_finite()) {
                    return Err(Error::Config(format!(
                        "weighting edm:{pm},{ps}: PM must be finite and PS finite and positive"
                    )));
                }
                Weighting::Edm { pm, ps }
            }
        })
    }

    /// `w_t`.
    pub fn weight(&self, s: &Schedule, t: f64) -> f64 {
        let (a, b, _, _) = s.coefficients(t);
        let dl = s.dlambda(t);
        match *self {
            Weighting::Velocity => -dl * b * b / 2.0,
            Weighting::Eps => -2.0 / dl,
            Weighting::V => -2.0 / (dl * a * a),
            Weighting::X0 => -2.0 / dl * (b / a).powi(2),
            Weighting::Edm { pm, ps } => {
                let l = s.lambda(t);
                let sd = 2.0 * ps;
                let density = (-(l + 2.0 * pm).powi(2) / (2.0 * sd * sd)).exp()
                    / (sd * (2.0 * std::f64::consts::PI).sqrt());
                density * ((-l).exp() + SIGMA_DATA * SIGMA_DATA)
            }
        }
    }

    /// The per-sample factor `W_t = -1/2 w_t lambda'_t c_out^2` of `||output - target||^2`.
    pub fn output_weight(&self, s: &Schedule, p: Prediction, t: f64) -> f64 {
        self.preconditioned_output_weight(s, p, Preconditioning::None, t)
    }

    /// `W_t` of the raw output of a network with preconditioning `pre` (`c_out` is then the
    /// raw output's share of `eps_hat`: `-c_out / sigma` under EDM's).
    pub fn preconditioned_output_weight(
        &self,
        s: &Schedule,
        p: Prediction,
        pre: Preconditioning,
        t: f64,
    ) -> f64 {
        let (c_out, _) = pre.eps_coefficients(s, p, t);
        -0.5 * self.weight(s, t) * s.dlambda(t) * c_out * c_out
    }
}

/// The unified loss of one sample in its eps form: `-1/2 w lambda' ||eps_hat - eps||^2`.
pub fn unified_loss(s: &Schedule, w: Weighting, eps_hat: &[f64], eps: &[f64], t: f64) -> f64 {
    let sq: f64 = eps_hat.iter().zip(eps).map(|(a, b)| (a - b).powi(2)).sum();
    -0.5 * w.weight(s, t) * s.dlambda(t) * sq
}
