//! What the network predicts, and the conversions between predictions (docs/flow-math.md,
//! "Network outputs and conversions"). Every prediction is affine in the network output given
//! `z_t`, so each converts to `(x0_hat, eps_hat)` and on to a velocity.

use super::schedule::Schedule;
use crate::error::{Error, Result};

/// The network's output parameterisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    /// The velocity `dz/dt` (rectified flow's and SD3's choice).
    Velocity,
    /// The noise `eps`.
    Eps,
    /// Salimans and Ho's `v = a eps - b x0`.
    V,
    /// The data `x0`.
    X0,
}

impl Prediction {
    pub fn parse(s: &str) -> Result<Prediction> {
        Ok(match s {
            "velocity" => Prediction::Velocity,
            "eps" => Prediction::Eps,
            "v" => Prediction::V,
            "x0" => Prediction::X0,
            _ => {
                return Err(Error::Config(format!(
                    "unknown prediction {s:?}: use velocity, eps, v or x0"
                )))
            }
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Prediction::Velocity => "velocity",
            Prediction::Eps => "eps",
            Prediction::V => "v",
            Prediction::X0 => "x0",
        }
    }

    /// `eps_hat = c_out * output + c_z * z`: the affine map from this prediction to the noise
    /// estimate at `t`.
    ///
    /// - velocity: `eps_hat = -2 / (lambda' b) (v - (a'/a) z)` (SD3's reparameterisation)
    /// - eps: `eps_hat = output`
    /// - v: `eps_hat = (b z + a v) / (a^2 + b^2)` (`b z + a v` when variance preserving)
    /// - x0: `eps_hat = (z - a x0_hat) / b`
    pub fn eps_coefficients(&self, s: &Schedule, t: f64) -> (f64, f64) {
        let (a, b, da, _) = s.coefficients(t);
        match self {
            Prediction::Velocity => {
                let k = -2.0 / (s.dlambda(t) * b);
                (k, -k * da / a)
            }
            Prediction::Eps => (1.0, 0.0),
            Prediction::V => {
                let n = a * a + b * b;
                (a / n, b / n)
            }
            Prediction::X0 => (-a / b, 1.0 / b),
        }
    }

    /// `(x0_hat, eps_hat)` from a network output `y` at `z`, `t`.
    pub fn to_x0_eps(&self, s: &Schedule, y: f64, z: f64, t: f64) -> (f64, f64) {
        let (a, b, _, _) = s.coefficients(t);
        match self {
            // x0 directly, where the eps form would divide by a small b.
            Prediction::X0 => (y, (z - a * y) / b),
            Prediction::V => {
                let n = a * a + b * b;
                ((a * z - b * y) / n, (b * z + a * y) / n)
            }
            _ => {
                let (c_out, c_z) = self.eps_coefficients(s, t);
                let eps = c_out * y + c_z * z;
                ((z - b * eps) / a, eps)
            }
        }
    }

    /// The velocity `a' x0_hat + b' eps_hat` from a network output.
    pub fn to_velocity(&self, s: &Schedule, y: f64, z: f64, t: f64) -> f64 {
        if *self == Prediction::Velocity {
            return y;
        }
        let (_, _, da, db) = s.coefficients(t);
        let (x0, eps) = self.to_x0_eps(s, y, z, t);
        da * x0 + db * eps
    }

    /// The output that is exactly right for data `x0` and noise `eps`: the regression target.
    pub fn target(&self, s: &Schedule, x0: f64, eps: f64, t: f64) -> f64 {
        let (a, b, da, db) = s.coefficients(t);
        match self {
            Prediction::Velocity => da * x0 + db * eps,
            Prediction::Eps => eps,
            Prediction::V => a * eps - b * x0,
            Prediction::X0 => x0,
        }
    }
}
