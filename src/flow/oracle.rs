//! The exact marginal velocity: the minimiser of the flow-matching loss for a known data
//! distribution, as an oracle for tests and evaluation.
//!
//! For data from a mixture of isotropic Gaussians `sum_k pi_k N(mu_k, sigma_k^2 I)` (a finite data
//! set is the case `sigma_k = 0`, `pi_k = 1/K`), `z_t | k ~ N(a mu_k, (a^2 sigma_k^2 + b^2) I)`, and
//!
//! `v*(z, t) = sum_k r_k(z) (a' E[x0 | z, k] + b' E[eps | z, k])`
//!
//! with responsibilities `r_k` (a softmax over components), `E[x0 | z, k] = mu_k + a sigma_k^2 /
//! s_k^2 (z - a mu_k)` and `E[eps | z, k] = b / s_k^2 (z - a mu_k)`, `s_k^2 = a^2 sigma_k^2 + b^2`. For
//! `rf` and a finite set this is the spec's `(z - E[x0 | z]) / t`.

use super::schedule::Schedule;

/// A mixture of isotropic Gaussians in `dim` dimensions.
#[derive(Clone, Debug, PartialEq)]
pub struct Mixture {
    pub dim: usize,
    /// `[K * dim]`, component means.
    pub means: Vec<f64>,
    /// Per-component standard deviation (0 for a data point).
    pub sigmas: Vec<f64>,
    /// Per-component weight, summing to 1.
    pub weights: Vec<f64>,
}

impl Mixture {
    /// The empirical distribution of a finite data set (`[K * dim]`).
    pub fn points(dim: usize, data: &[f64]) -> Mixture {
        let k = data.len() / dim;
        Mixture {
            dim,
            means: data.to_vec(),
            sigmas: vec![0.0; k],
            weights: vec![1.0 / k as f64; k],
        }
    }

    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// Log-responsibilities (unnormalised) and per-component variances of `z_t` at `z`.
    fn log_resp(&self, a: f64, b: f64, z: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let d = self.dim;
        let var: Vec<f64> = self.sigmas.iter().map(|s| a * a * s * s + b * b).collect();
        let logr = (0..self.len())
            .map(|k| {
                let sq: f64 = (0..d)
                    .map(|j| (z[j] - a * self.means[k * d + j]).powi(2))
                    .sum();
                self.weights[k].ln() - sq / (2.0 * var[k]) - 0.5 * d as f64 * var[k].ln()
            })
            .collect();
        (logr, var)
    }

    /// The marginal velocity `v*(z, t)`.
    pub fn velocity(&self, s: &Schedule, z: &[f64], t: f64) -> Vec<f64> {
        let (a, b, da, db) = s.coefficients(t);
        let d = self.dim;
        let (logr, var) = self.log_resp(a, b, z);
        let m = logr.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = logr.iter().map(|l| (l - m).exp()).collect();
        let total: f64 = w.iter().sum();
        let mut v = vec![0.0; d];
        for k in 0..self.len() {
            let r = w[k] / total;
            let sig2 = self.sigmas[k].powi(2);
            for j in 0..d {
                let mu = self.means[k * d + j];
                let resid = z[j] - a * mu;
                let x0 = mu + a * sig2 / var[k] * resid;
                let eps = b / var[k] * resid;
                v[j] += r * (da * x0 + db * eps);
            }
        }
        v
    }

    /// The density of `z_t` at `z`.
    pub fn density(&self, s: &Schedule, z: &[f64], t: f64) -> f64 {
        let (a, b, _, _) = s.coefficients(t);
        let (logr, _) = self.log_resp(a, b, z);
        let norm = (2.0 * std::f64::consts::PI).powf(-0.5 * self.dim as f64);
        norm * logr.iter().map(|l| l.exp()).sum::<f64>()
    }
}
