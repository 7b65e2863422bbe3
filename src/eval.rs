//! Sample quality. For 2-D data: the sliced Wasserstein-2 distance and an RBF-kernel MMD against
//! fresh target samples, each beside the same distance between two independent real samples
//! (the floor). For labelled images: a small classifier trained with the engine on the data set
//! gives the accuracy of class-conditional samples, and the Frechet distance between sample and
//! held-out real features in its last hidden layer (with the real-vs-real distance as the floor).

use crate::autograd::{functions as f, Tape};
use crate::data::Dataset;
use crate::error::Result;
use crate::ops::{self, flow::FlowConfig, flow::FlowKernels};
use crate::optim::{AdamW, AdamWConfig};
use crate::params::{Init, ParamId, Params, ParamsBuilder};
use crate::tensor::Tensor;
use crate::Gpu;
use rand::{Rng, SeedableRng};

/// Sliced Wasserstein-2 distance between two equal-size point sets `[n, dim]`, over `dirs`
/// random unit directions: `sqrt(mean_dir W2^2(projections))`.
pub fn sliced_w2(a: &[f32], b: &[f32], dim: usize, dirs: usize, seed: u64) -> f64 {
    let n = a.len().min(b.len()) / dim;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut total = 0.0;
    for _ in 0..dirs {
        let mut v: Vec<f64> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        let project = |p: &[f32]| {
            let mut out: Vec<f64> = p
                .chunks(dim)
                .take(n)
                .map(|r| r.iter().zip(&v).map(|(x, y)| *x as f64 * y).sum())
                .collect();
            out.sort_by(f64::total_cmp);
            out
        };
        let (pa, pb) = (project(a), project(b));
        total += pa
            .iter()
            .zip(&pb)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f64>()
            / n as f64;
    }
    (total / dirs as f64).sqrt()
}

/// Unbiased MMD^2 with a Gaussian kernel of bandwidth `sigma`, on at most `max_n` points each.
pub fn mmd_rbf(a: &[f32], b: &[f32], dim: usize, sigma: f64, max_n: usize) -> f64 {
    let (na, nb) = ((a.len() / dim).min(max_n), (b.len() / dim).min(max_n));
    let k = |x: &[f32], y: &[f32]| {
        let d: f64 = x
            .iter()
            .zip(y)
            .map(|(p, q)| (*p as f64 - *q as f64).powi(2))
            .sum();
        (-d / (2.0 * sigma * sigma)).exp()
    };
    fn row(p: &[f32], i: usize, dim: usize) -> &[f32] {
        &p[i * dim..(i + 1) * dim]
    }
    let mut kaa = 0.0;
    let mut kbb = 0.0;
    let mut kab = 0.0;
    for i in 0..na {
        for j in 0..na {
            if i != j {
                kaa += k(row(a, i, dim), row(a, j, dim));
            }
        }
        for j in 0..nb {
            kab += k(row(a, i, dim), row(b, j, dim));
        }
    }
    for i in 0..nb {
        for j in 0..nb {
            if i != j {
                kbb += k(row(b, i, dim), row(b, j, dim));
            }
        }
    }
    kaa / (na * (na - 1)) as f64 + kbb / (nb * (nb - 1)) as f64 - 2.0 * kab / (na * nb) as f64
}

/// Eigenvalues of a symmetric matrix (cyclic Jacobi rotations).
fn symmetric_eigenvalues(m: &[f64], n: usize) -> Vec<f64> {
    let mut a = m.to_vec();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum();
        if off < 1e-22 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
            }
        }
    }
    (0..n).map(|i| a[i * n + i]).collect()
}

fn mean_cov(x: &[f32], dim: usize) -> (Vec<f64>, Vec<f64>) {
    let n = x.len() / dim;
    let mut mu = vec![0.0; dim];
    for r in x.chunks(dim) {
        for j in 0..dim {
            mu[j] += r[j] as f64 / n as f64;
        }
    }
    let mut cov = vec![0.0; dim * dim];
    for r in x.chunks(dim) {
        for i in 0..dim {
            for j in 0..dim {
                cov[i * dim + j] += (r[i] as f64 - mu[i]) * (r[j] as f64 - mu[j]) / (n - 1) as f64;
            }
        }
    }
    (mu, cov)
}

/// Frechet distance between Gaussians fitted to two feature sets `[n, dim]`:
/// `|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)`.
pub fn frechet_distance(a: &[f32], b: &[f32], dim: usize) -> f64 {
    let (ma, sa) = mean_cov(a, dim);
    let (mb, sb) = mean_cov(b, dim);
    // tr sqrt(S_a S_b) = sum sqrt(eig(S_a^1/2 S_b S_a^1/2)); S_a^1/2 from its eigen-decomposition
    // is avoided: the eigenvalues of S_a S_b are those of the symmetric S_b^1/2 S_a S_b^1/2, and
    // for positive semi-definite matrices equal those of (L^T S_b L) with S_a = L L^T (Cholesky).
    let n = dim;
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            if i == j {
                l[i * n + i] = (sa[i * n + i] - s).max(1e-12).sqrt();
            } else {
                l[i * n + j] = (sa[i * n + j] - s) / l[j * n + j];
            }
        }
    }
    // M = L^T S_b L
    let mut tmp = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            tmp[i * n + j] = (0..n).map(|k| sb[i * n + k] * l[k * n + j]).sum();
        }
    }
    let mut m = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            m[i * n + j] = (0..n).map(|k| l[k * n + i] * tmp[k * n + j]).sum();
        }
    }
    let tr_sqrt: f64 = symmetric_eigenvalues(&m, n)
        .iter()
        .map(|e| e.max(0.0).sqrt())
        .sum();
    let mean_term: f64 = ma.iter().zip(&mb).map(|(x, y)| (x - y).powi(2)).sum();
    let tr: f64 = (0..n).map(|i| sa[i * n + i] + sb[i * n + i]).sum();
    mean_term + tr - 2.0 * tr_sqrt
}

/// A small MLP classifier trained with the engine (one-hot regression), whose last hidden layer
/// gives the features for the Frechet distance.
pub struct Classifier {
    params: Params,
    layers: [(ParamId, ParamId); 3],
    classes: usize,
}

const HIDDEN: usize = 128;

impl Classifier {
    /// Train on `data` (labelled) for `steps` steps.
    pub fn train(gpu: &Gpu, data: &Dataset, steps: usize, seed: u64) -> Result<Classifier> {
        let (dim, classes) = (data.dim(), data.classes);
        let mut b = ParamsBuilder::new();
        let mut layer = |name: &str, out: usize, inp: usize| {
            (
                b.add(
                    format!("{name}.weight"),
                    &[out, inp],
                    Init::XavierUniform {
                        fan_in: inp,
                        fan_out: out,
                    },
                ),
                b.add(format!("{name}.bias"), &[out], Init::Zeros),
            )
        };
        let layers = [
            layer("fc1", HIDDEN, dim),
            layer("fc2", HIDDEN, HIDDEN),
            layer("out", classes, HIDDEN),
        ];
        let params = b.build(gpu, seed)?;
        let c = Classifier {
            params,
            layers,
            classes,
        };
        let mut opt = AdamW::new(
            &c.params,
            AdamWConfig {
                lr: 2e-3,
                ema_decay: 0.0,
                weight_decay: 1e-4,
                ..Default::default()
            },
        )?;
        let x = Tensor::from_slice(gpu, &[data.len(), dim], &data.x)?;
        let labels: Vec<f32> = data
            .labels
            .as_ref()
            .expect("a labelled data set")
            .iter()
            .map(|&l| l as f32)
            .collect();
        let l = Tensor::from_slice(gpu, &[data.len()], &labels)?;
        let eye: Vec<f32> = (0..classes * classes)
            .map(|i| if i % (classes + 1) == 0 { 1.0 } else { 0.0 })
            .collect();
        let eye = Tensor::from_slice(gpu, &[classes, classes], &eye)?;
        let kernels = FlowKernels::new(gpu, FlowConfig::default())?;
        for step in 0..steps {
            c.params.zero_grads()?;
            let (xb, lb) = kernels.gather_batch(&x, &l, 128, seed ^ 0xC1A55, step as u32)?;
            let onehot = ops::embedding(&lb, &eye)?;
            let mut tape = Tape::new();
            let xv = tape.constant(xb);
            let (logits, _) = c.forward(&mut tape, &xv)?;
            let tv = tape.constant(onehot);
            let loss = f::mse(&mut tape, &logits, &tv)?;
            tape.backward(&loss)?;
            opt.step(&c.params)?;
            gpu.flush()?;
        }
        Ok(c)
    }

    fn forward(
        &self,
        tape: &mut Tape,
        x: &crate::autograd::Var,
    ) -> Result<(crate::autograd::Var, crate::autograd::Var)> {
        let p = &self.params;
        let mut h = x.clone();
        let mut feat = x.clone();
        for (i, &(w, b)) in self.layers.iter().enumerate() {
            let (w, b) = (tape.param(p, w), tape.param(p, b));
            h = f::linear(tape, &h, &w, Some(&b))?;
            if i < 2 {
                h = f::gelu(tape, &h)?;
                feat = h.clone();
            }
        }
        Ok((h, feat))
    }

    /// Predicted classes and features `[n, HIDDEN]` of `x` `[n, dim]`.
    pub fn classify(&self, gpu: &Gpu, x: &[f32], dim: usize) -> Result<(Vec<u32>, Vec<f32>)> {
        let n = x.len() / dim;
        let mut tape = Tape::no_grad();
        let xv = tape.constant(Tensor::from_slice(gpu, &[n, dim], x)?);
        let (logits, feat) = self.forward(&mut tape, &xv)?;
        let logits = logits.value().to_vec()?;
        let pred = logits
            .chunks(self.classes)
            .map(|r| {
                r.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(i, _)| i as u32)
                    .unwrap()
            })
            .collect();
        Ok((pred, feat.value().to_vec()?))
    }

    pub fn feature_dim(&self) -> usize {
        HIDDEN
    }
}
