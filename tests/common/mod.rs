//! Shared test helpers: one poisoning GPU context, seeded random data, and an error check that
//! names the worst element.
#![allow(dead_code)]

pub mod reference;
pub mod tiny;

use rand::{Rng, SeedableRng};
use rectiflow::gpu::{Gpu, GpuOptions, KernelProfile, TuneMode};
use std::sync::OnceLock;

/// The test context: every new tensor is filled with NaN, so unwritten outputs show. The test
/// contexts keep the fixed tile rules (no tuning: the tests' tile shapes do not depend on what a
/// cache holds, and tests timed side by side would write noisy tables into the user's cache);
/// `tests/tune.rs` tests the tuning, and the tests that force every design test every tile.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        Gpu::with_options(&GpuOptions {
            poison: true,
            tune: Some(TuneMode::Off),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{e}"))
    })
}

/// A second test context that picks the other kernel design where ops have two (on lavapipe:
/// the workgroup-memory kernels meant for GPUs), so both designs are checked on any machine.
pub fn gpu_other_profile() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        let profile = match gpu().profile() {
            KernelProfile::Cpu => KernelProfile::Gpu,
            KernelProfile::Gpu => KernelProfile::Cpu,
        };
        Gpu::with_options(&GpuOptions {
            poison: true,
            profile: Some(profile),
            tune: Some(TuneMode::Off),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{e}"))
    })
}

/// Both test contexts.
pub fn both_profiles() -> [&'static Gpu; 2] {
    [gpu(), gpu_other_profile()]
}

/// The test context's profile without subgroup operations: where the adapter has subgroups,
/// ops then take the design meant for adapters without them.
pub fn gpu_without_subgroups() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        Gpu::with_options(&GpuOptions {
            poison: true,
            no_subgroups: true,
            tune: Some(TuneMode::Off),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{e}"))
    })
}

/// Contexts that between them run every kernel design this machine can run: the default, the
/// other profile, and (where the default uses subgroups) the default without subgroups.
pub fn every_design() -> Vec<&'static Gpu> {
    let mut v = vec![gpu(), gpu_other_profile()];
    if gpu().subgroup_size().is_some() {
        v.push(gpu_without_subgroups());
    }
    v
}

/// Uniform values in [-1, 1), reproducible from `seed`.
pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

/// Widen to f64 for the references.
pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Assert `|got[i] - want[i]| <= tol[i]` for all i (NaN fails), naming the worst element.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst: Option<(usize, f64)> = None;
    for i in 0..got.len() {
        let err = (got[i] as f64 - want[i]).abs();
        let ratio = if err.is_nan() {
            f64::INFINITY
        } else {
            err / tol[i]
        };
        if ratio > 1.0 && worst.is_none_or(|(_, r)| ratio > r) {
            worst = Some((i, ratio));
        }
    }
    if let Some((i, r)) = worst {
        panic!(
            "{what}: element {i} is {} but should be {} (error {:.3e}, bound {:.3e}, {r:.1}x over)",
            got[i],
            want[i],
            (got[i] as f64 - want[i]).abs(),
            tol[i]
        );
    }
}

/// Same, with one relative bound and an absolute floor for every element.
pub fn assert_rel(what: &str, got: &[f32], want: &[f64], rel: f64, abs: f64) {
    let tol: Vec<f64> = want.iter().map(|w| rel * w.abs() + abs).collect();
    assert_close(what, got, want, &tol);
}

/// Compare a GPU gradient (f32) with finite differences of the f64 reference: each element
/// within `5e-4 * max|want| + 5e-4 * |want|` (f32 forward and backward passes; the finite
/// differences themselves are accurate to ~1e-8 at the steps used).
pub fn assert_grad(what: &str, got: &[f32], want: &[f64]) {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(
        scale > 0.0 || want.is_empty() || got.iter().all(|&g| g == 0.0),
        "{what}: the reference gradient is all zero"
    );
    let tol: Vec<f64> = want.iter().map(|w| 5e-4 * scale + 5e-4 * w.abs()).collect();
    assert_close(what, got, want, &tol);
}

/// Upload host data.
pub fn upload(g: &Gpu, shape: &[usize], data: &[f32]) -> rectiflow::Tensor {
    rectiflow::Tensor::from_slice(g, shape, data).unwrap()
}
