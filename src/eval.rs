//! Sample quality. For 2-D data: the sliced Wasserstein-2 distance and an RBF-kernel MMD against
//! fresh target samples, each beside the same distance between two independent real samples
//! (the floor). For labelled images: a small classifier trained with the engine on the data set
//! gives the accuracy of class-conditional samples, and the Frechet distance between sample and
//! held-out real features in its last hidden layer, and between the pixels themselves, and
//! precision, recall and coverage by `k`-nearest neighbours in pixels ([`precision_recall`],
//! [`coverage`]); each with the same measure between real images as the floor.
//! Beside the samples: the path straightness of the flow ([`path_straightness`]), measured
//! along rk45 trajectories of some of the samples ([`straightness_count`]).
//! [`evaluate`] draws samples from a [`Pipeline`] and measures them the way `rectiflow eval`
//! reports them.
#![warn(missing_docs)]

use crate::autograd::{functions as f, Tape};
use crate::data::{DataSpec, Dataset, GpuDataset};
use crate::error::{Error, Result};
use crate::limits::Budget;
use crate::nn::layers::{xavier, Linear};
use crate::ops;
use crate::params::{Params, ParamsBuilder};
use crate::pipeline::Pipeline;
use crate::sample::{SampleOptions, Solver};
use crate::tensor::Tensor;
use crate::train::{fit, FitOptions};
use crate::Gpu;
use rand::{Rng, SeedableRng};
use serde::Serialize;

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

/// Precision and recall by `k`-nearest neighbours (Kynkaanniemi et al. 2019) of the samples
/// `fake` against the data `real`, both `[n, dim]`: each set's manifold is the union of balls
/// around its points whose radius is the distance to the point's `k`-th nearest neighbour in
/// its own set; precision is the share of samples inside the real manifold (are they
/// realistic?), recall the share of real points inside the samples' manifold (is every part of
/// the data produced?). Euclidean distances, O(n^2 dim).
pub fn precision_recall(real: &[f32], fake: &[f32], dim: usize, k: usize) -> (f64, f64) {
    let r: Vec<&[f32]> = real.chunks_exact(dim.max(1)).collect();
    let g: Vec<&[f32]> = fake.chunks_exact(dim.max(1)).collect();
    let covered = |queries: &[&[f32]], set: &[&[f32]], r2: &[f64]| -> f64 {
        if queries.is_empty() {
            return 0.0;
        }
        let inside = queries
            .iter()
            .filter(|q| set.iter().zip(r2).any(|(p, &r)| dist2(q, p) <= r))
            .count();
        inside as f64 / queries.len() as f64
    };
    let (real_r2, fake_r2) = (knn_radii2(&r, k), knn_radii2(&g, k));
    (covered(&g, &r, &real_r2), covered(&r, &g, &fake_r2))
}

/// Coverage by `k`-nearest neighbours (Naeem et al. 2020): the share of real points whose own
/// `k`-NN ball (in `real`) holds at least one sample of `fake`. Recall measures the real points
/// inside the *samples'* balls, which scattered, unrealistic samples make large enough to cover
/// everything (a model trained 50 steps scores a recall of 1 on digits); coverage's balls are
/// the data's, so only samples near real points count.
pub fn coverage(real: &[f32], fake: &[f32], dim: usize, k: usize) -> f64 {
    let r: Vec<&[f32]> = real.chunks_exact(dim.max(1)).collect();
    let g: Vec<&[f32]> = fake.chunks_exact(dim.max(1)).collect();
    if r.is_empty() {
        return 0.0;
    }
    let hit = r
        .iter()
        .zip(knn_radii2(&r, k))
        .filter(|(p, rad)| g.iter().any(|q| dist2(p, q) <= *rad))
        .count();
    hit as f64 / r.len() as f64
}

fn dist2(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum()
}

/// Squared `k`-NN radius of every point of a set, within the set (itself excluded).
fn knn_radii2(set: &[&[f32]], k: usize) -> Vec<f64> {
    set.iter()
        .enumerate()
        .map(|(i, p)| {
            let mut d: Vec<f64> = set
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, q)| dist2(p, q))
                .collect();
            if d.is_empty() {
                return 0.0;
            }
            let kth = k.clamp(1, d.len()) - 1;
            *d.select_nth_unstable_by(kth, f64::total_cmp).1
        })
        .collect()
}

/// The `k` of the precision and recall `evaluate` reports (the paper's choice).
pub const PRECISION_RECALL_K: usize = 3;

/// A small MLP classifier trained with the engine (one-hot regression), whose last hidden layer
/// gives the features for the Frechet distance.
pub struct Classifier {
    params: Params,
    layers: [Linear; 3],
    classes: usize,
}

const HIDDEN: usize = 128;

impl Classifier {
    /// Train on `data` (labelled) for `steps` steps.
    pub fn train(gpu: &Gpu, data: &Dataset, steps: usize, seed: u64) -> Result<Classifier> {
        let (dim, classes) = (data.dim(), data.classes);
        if data.labels.is_none() || classes == 0 {
            return Err(Error::Config(format!(
                "{}: a classifier needs labelled data",
                data.name
            )));
        }
        let mut b = ParamsBuilder::new();
        let layers = [
            Linear::declare(&mut b, "fc1", HIDDEN, dim, xavier(dim, HIDDEN)),
            Linear::declare(&mut b, "fc2", HIDDEN, HIDDEN, xavier(HIDDEN, HIDDEN)),
            Linear::declare(&mut b, "out", classes, HIDDEN, xavier(HIDDEN, classes)),
        ];
        let params = b.build(gpu, seed)?;
        let c = Classifier {
            params,
            layers,
            classes,
        };
        let examples = GpuDataset::upload(gpu, data, classes as u32)?;
        let eye: Vec<f32> = (0..classes * classes)
            .map(|i| if i % (classes + 1) == 0 { 1.0 } else { 0.0 })
            .collect();
        let eye = Tensor::from_slice(gpu, &[classes, classes], &eye)?;
        let opts = FitOptions {
            steps,
            batch: 128,
            seed: seed ^ 0xC1A55,
            lr: 2e-3,
            weight_decay: 1e-4,
        };
        // One-hot regression: the MSE between the logits and the labels' rows of the identity.
        fit(&c.params, &examples, &opts, |tape, x, labels| {
            let onehot = ops::embedding(labels, &eye)?;
            let xv = tape.constant(x.clone());
            let (logits, _) = c.forward(tape, &xv)?;
            let tv = tape.constant(onehot);
            f::mse(tape, &logits, &tv)
        })?;
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
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(tape, p, &h)?;
            if i < 2 {
                h = f::gelu(tape, &h)?;
                feat = h.clone();
            }
        }
        Ok((h, feat))
    }

    /// Predicted classes and features `[n, HIDDEN]` of `x` `[n, dim]`.
    pub fn classify(&self, gpu: &Gpu, x: &[f32], dim: usize) -> Result<(Vec<u32>, Vec<f32>)> {
        if dim == 0 || !x.len().is_multiple_of(dim) {
            return Err(Error::Shape(format!(
                "classify: {} values are not rows of {dim}",
                x.len()
            )));
        }
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
                    .map_or(0, |(i, _)| i as u32)
            })
            .collect();
        Ok((pred, feat.value().to_vec()?))
    }

    /// Width of the features [`Classifier::classify`] returns.
    pub fn feature_dim(&self) -> usize {
        HIDDEN
    }
}

/// Labelled images [`evaluate`] holds out for the classifier's reference (and needs as many to
/// train on).
pub const EVAL_HELD_OUT: usize = 300;

/// One measurement.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Metric {
    /// What is measured.
    pub metric: String,
    /// Its value for the samples.
    pub value: f64,
    /// The same measurement between real data (a floor), if there is one.
    pub real_vs_real: Option<f64>,
}

/// What [`evaluate`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalReport {
    /// The measurements, each beside its reference.
    pub metrics: Vec<Metric>,
    /// A sentence about the references, if one is needed.
    pub note: Option<String>,
    /// The path straightness (also a metric) with the paths' sizes.
    pub straightness: Straightness,
}

/// Samples whose paths [`evaluate`] integrates with rk45 for the straightness (at most; fewer
/// when fewer samples are drawn): 20 images or 100 points, enough for a stable mean and few
/// enough to keep `eval` quick on a software rasteriser (on 2 CPU cores with lavapipe, the
/// default digits model's 20 guided paths take about 30 s at the default tolerances; 100 take
/// over 4 minutes).
pub fn straightness_count(data: &Dataset) -> usize {
    if data.is_image() {
        20
    } else {
        100
    }
}

/// What [`path_straightness`] measured.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Straightness {
    /// `S`: the time-weighted mean over every element of `(v(z_t, t) - (z_start - z_0) /
    /// t_start)^2` along the paths (see `crate::rk45`); 0 for straight paths.
    pub value: f64,
    /// Samples whose paths were integrated.
    pub samples: usize,
    /// Network evaluations rk45 took.
    pub nfe: usize,
    /// Accepted rk45 steps.
    pub steps: usize,
}

/// The path straightness of `pipeline`'s flow along the rk45 trajectories of the first
/// `samples` of `opts`' samples (their labels, guidance, clamp, seed and tolerances; whatever
/// `opts.solver` says, the paths are integrated with rk45).
pub fn path_straightness(
    pipeline: &Pipeline,
    opts: &SampleOptions,
    samples: usize,
) -> Result<Straightness> {
    let samples = samples.min(opts.labels.len());
    let opts = SampleOptions {
        solver: Solver::Rk45,
        labels: opts.labels[..samples].to_vec(),
        ..opts.clone()
    };
    let mut sampler = pipeline.sampler(&opts)?;
    sampler.record_straightness()?;
    while sampler.step()? {}
    Ok(Straightness {
        value: sampler.straightness()?,
        samples,
        nfe: sampler.nfe(),
        steps: sampler.steps(),
    })
}

/// Samples [`evaluate`] draws by default: 500 images or 5000 points.
pub fn default_count(data: &Dataset) -> usize {
    if data.is_image() {
        500
    } else {
        5000
    }
}

/// The data set a pipeline was trained on (for a reflow or a distillation, the data at the root of
/// its pairs: [`crate::reflow::original_config`]), loaded (within the device's buffer and the host
/// budget) and checked against the model: the same example shape and classes. `source` names
/// the model in messages (its checkpoint, say).
pub fn load_data(pipeline: &Pipeline, source: &str) -> Result<Dataset> {
    let config = pipeline.config();
    let budget = Budget::of(pipeline.gpu());
    // A reflow or a distillation models what its pairs' source flow was trained on.
    let root = crate::reflow::original_config(config)?;
    let mut data = root
        .data
        .load_within(root.seed, budget.tensor_bytes.min(budget.host_bytes))?;
    let (shape, classes) = (config.model.shape.clone(), config.model.classes);
    if data.labels.is_some() && classes > data.classes {
        // Trained with --classes beyond the largest label.
        data.set_classes(classes)?;
    }
    if data.shape != shape || data.classes != classes {
        return Err(Error::Config(format!(
            "{source}: its configuration names the data {} ({} examples of shape {:?}, {} classes), but \
             its model was built for examples of shape {:?} with {} classes; the checkpoint's \
             configuration does not match its weights, so no metric would mean anything",
            root.data,
            data.len(),
            data.shape,
            data.classes,
            shape,
            classes
        )));
    }
    Ok(data)
}

/// What samples are measured against, prepared once for many sets of samples (one per sampler
/// setting in a study): for a 2-D toy, fresh target samples and a second independent draw (the
/// floor); for labelled images, a classifier trained on all but [`EVAL_HELD_OUT`] images with
/// its features of the held-out ones, and the real images the pixel metrics compare with.
pub struct Reference {
    kind: ReferenceKind,
    /// Samples each measurement expects.
    n: usize,
    dim: usize,
}

enum ReferenceKind {
    Toy { fresh: Vec<f32>, floors: [f64; 2] },
    Images(Box<ImageReference>),
}

struct ImageReference {
    classifier: Classifier,
    /// Features of the held-out images.
    feat_held: Vec<f32>,
    /// The classifier's accuracy on them, and the feature distance between training and
    /// held-out images (the floors).
    floors: [f64; 2],
    /// Every real image but the last `m`, the pixel metrics' reference.
    rest: Dataset,
    /// The last `m` real images (`m = min(n, len / 2)`), the pixel metrics' floor.
    subset: Dataset,
    pixel_floors: [f64; 4],
}

impl Reference {
    /// Refuse data that cannot be measured, before anything is trained or sampled: it must be a
    /// 2-D toy, or labelled images, at least `2 * EVAL_HELD_OUT` of them (the classifier trains
    /// on all but [`EVAL_HELD_OUT`]).
    pub fn check(data: &Dataset, spec: &DataSpec) -> Result<()> {
        let toy = matches!(spec, DataSpec::Toy(_));
        let labelled_images = data.is_image() && data.labels.is_some() && data.classes > 0;
        if !(toy || labelled_images) {
            return Err(Error::Config(
                "samples are measured on 2-D toys and on labelled images; this data set has neither"
                    .into(),
            ));
        }
        if labelled_images && data.len() < 2 * EVAL_HELD_OUT {
            return Err(Error::Config(format!(
                "{} has {} images; measuring trains a classifier on all but {EVAL_HELD_OUT} and \
                 needs at least {}",
                data.name,
                data.len(),
                2 * EVAL_HELD_OUT
            )));
        }
        Ok(())
    }

    /// Prepare the reference for sets of `n` samples of `data` (described by `spec`; 2-D toys
    /// and labelled images), with the toy's fresh draws seeded from `seed`.
    pub fn new(
        gpu: &Gpu,
        data: &Dataset,
        spec: &DataSpec,
        n: usize,
        seed: u64,
    ) -> Result<Reference> {
        Reference::check(data, spec)?;
        let dim = data.dim();
        let kind = if let DataSpec::Toy(toy) = spec {
            let fresh = toy.sample(n, seed + 1000)?.x;
            let other = toy.sample(n, seed + 2000)?.x;
            ReferenceKind::Toy {
                floors: [
                    sliced_w2(&other, &fresh, dim, 256, 7),
                    mmd_rbf(&other, &fresh, dim, 0.25, 2000),
                ],
                fresh,
            }
        } else {
            let (train, held) = data.split_last(EVAL_HELD_OUT);
            let classifier = Classifier::train(gpu, &train, 1500, 1)?;
            let (pred_held, feat_held) = classifier.classify(gpu, &held.x, dim)?;
            let held_labels = held.labels.as_deref().unwrap_or_default();
            let clf_acc = pred_held
                .iter()
                .zip(held_labels)
                .filter(|(p, l)| p == l)
                .count() as f64
                / held.len() as f64;
            let (_, feat_train) = classifier.classify(gpu, &train.x[..held.len() * dim], dim)?;
            let fd_floor = frechet_distance(&feat_train, &feat_held, classifier.feature_dim());
            // The pixel metrics compare with every real image but a subset as large as the
            // samples (at most half); the floor is that subset against the same images. Equal
            // sample sizes on both sides, since the estimates' bias grows as the sets shrink.
            let (rest, subset) = data.split_last(n.min(data.len() / 2));
            let m = subset.len();
            let k = PRECISION_RECALL_K;
            let reference = &rest.x[..m.min(rest.len()) * dim];
            let (p0, r0) = precision_recall(reference, &subset.x, dim, k);
            let c0 = coverage(reference, &subset.x, dim, k);
            ReferenceKind::Images(Box::new(ImageReference {
                pixel_floors: [frechet_distance(&subset.x, &rest.x, dim), p0, r0, c0],
                classifier,
                feat_held,
                floors: [clf_acc, fd_floor],
                rest,
                subset,
            }))
        };
        Ok(Reference { kind, n, dim })
    }

    /// Measure `samples` (`[n, dim]`, drawn for `labels`; the classifier runs on `gpu`) against the reference: each metric
    /// beside its floor, and a note on the references where one is needed.
    pub fn measure(
        &self,
        gpu: &Gpu,
        samples: &[f32],
        labels: &[u32],
    ) -> Result<(Vec<Metric>, Option<String>)> {
        let (n, dim) = (self.n, self.dim);
        if samples.len() != n * dim || labels.len() != n {
            return Err(Error::Shape(format!(
                "the reference was prepared for {n} samples of {dim} values; got {} values and {} labels",
                samples.len(),
                labels.len()
            )));
        }
        let row = |metric: &str, value: f64, floor: f64| Metric {
            metric: metric.into(),
            value,
            real_vs_real: Some(floor),
        };
        Ok(match &self.kind {
            ReferenceKind::Toy { fresh, floors } => (
                vec![
                    row(
                        "sliced W2",
                        sliced_w2(samples, fresh, dim, 256, 7),
                        floors[0],
                    ),
                    row(
                        "MMD^2 (RBF, sigma 0.25)",
                        mmd_rbf(samples, fresh, dim, 0.25, 2000),
                        floors[1],
                    ),
                ],
                None,
            ),
            ReferenceKind::Images(images) => {
                let ImageReference {
                    classifier,
                    feat_held,
                    floors,
                    rest,
                    subset,
                    pixel_floors,
                } = images.as_ref();
                let (pred, feat) = classifier.classify(gpu, samples, dim)?;
                let acc = pred.iter().zip(labels).filter(|(p, l)| p == l).count() as f64 / n as f64;
                let fd = frechet_distance(&feat, feat_held, classifier.feature_dim());
                let m = subset.len();
                let k = PRECISION_RECALL_K;
                let reference = &rest.x[..m.min(rest.len()) * dim];
                let (p, r) = precision_recall(reference, &samples[..m * dim], dim, k);
                (
                    vec![
                        row("class-conditional accuracy", acc, floors[0]),
                        row("Frechet distance (classifier features)", fd, floors[1]),
                        row(
                            "Frechet distance (pixels)",
                            frechet_distance(&samples[..m * dim], &rest.x, dim),
                            pixel_floors[0],
                        ),
                        row(&format!("precision (pixels, {k}-NN)"), p, pixel_floors[1]),
                        row(&format!("recall (pixels, {k}-NN)"), r, pixel_floors[2]),
                        row(
                            &format!("coverage (pixels, {k}-NN)"),
                            coverage(reference, &samples[..m * dim], dim, k),
                            pixel_floors[3],
                        ),
                    ],
                    Some(format!(
                        "the accuracy's reference is the classifier's own accuracy on \
                         {EVAL_HELD_OUT} held-out real images"
                    )),
                )
            }
        })
    }
}

/// Draw `opts.labels.len()` samples from `pipeline` and measure them against `data` (see the
/// module's notes). Samples or metrics that are not finite are refused ([`Error::NonFinite`]).
pub fn evaluate(pipeline: &Pipeline, data: &Dataset, opts: &SampleOptions) -> Result<EvalReport> {
    let n = opts.labels.len();
    if n < 2 {
        return Err(Error::Config(format!(
            "--n {n}: eval needs at least 2 samples (MMD and covariances compare pairs)"
        )));
    }
    let spec = crate::reflow::original_config(pipeline.config())?.data;
    Reference::check(data, &spec)?;
    let samples = pipeline.sample(opts)?.to_vec()?;
    let bad = samples.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        return Err(Error::NonFinite(format!(
            "{bad} of the {} values of the {n} samples are NaN or infinite: the model diverges \
             when sampled (was it trained with too high a learning rate?); nothing was measured",
            samples.len()
        )));
    }
    let reference = Reference::new(pipeline.gpu(), data, &spec, n, opts.seed)?;
    let (mut metrics, note) = reference.measure(pipeline.gpu(), &samples, &opts.labels)?;
    let straight = path_straightness(pipeline, opts, straightness_count(data))?;
    metrics.push(Metric {
        metric: "path straightness (rk45)".into(),
        value: straight.value,
        real_vs_real: None,
    });
    for m in &metrics {
        if !m.value.is_finite() || m.real_vs_real.is_some_and(|f| !f.is_finite()) {
            return Err(Error::NonFinite(format!(
                "the metric {} came out as {} (reference {:?}); nothing was reported",
                m.metric, m.value, m.real_vs_real
            )));
        }
    }
    Ok(EvalReport {
        metrics,
        note,
        straightness: straight,
    })
}
