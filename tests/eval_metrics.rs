//! The evaluation metrics against cases with known answers.

use rand::{Rng, SeedableRng};
use rectiflow::eval::{coverage, frechet_distance, mmd_rbf, precision_recall, sliced_w2};

fn gaussian(n: usize, dim: usize, mean: &[f32], std: f32, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n * dim)
        .map(|i| {
            let (u1, u2): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
            mean[i % dim] + std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

#[test]
fn sliced_w2_of_a_shift_is_the_shift_length_over_sqrt_dim() {
    // A shift by (1, 1) moves each projection <v, x> by v1 + v2, whose mean square over random
    // unit directions is about 1: the distance lands near 1, far above two samples of one
    // Gaussian. The 1-D case below is exact.
    let a = gaussian(4000, 2, &[0.0, 0.0], 1.0, 1);
    let b = gaussian(4000, 2, &[0.0, 0.0], 1.0, 2);
    let same = sliced_w2(&a, &b, 2, 128, 3);
    let shifted: Vec<f32> = b.iter().map(|v| v + 1.0).collect();
    let far = sliced_w2(&a, &shifted, 2, 128, 3);
    assert!(same < 0.06, "two samples of one Gaussian: {same}");
    assert!(far > 0.6 && far < 1.5, "a shift by (1, 1): {far}");
    assert_eq!(sliced_w2(&a, &a, 2, 16, 3), 0.0);
    // In one dimension every direction is +-1: W2 of a shift is exactly the shift.
    let x: Vec<f32> = (0..1000).map(|i| i as f32 / 1000.0).collect();
    let y: Vec<f32> = x.iter().map(|v| v + 0.25).collect();
    assert!((sliced_w2(&x, &y, 1, 8, 0) - 0.25).abs() < 1e-6);
}

#[test]
fn mmd_is_near_zero_for_one_distribution_and_grows_with_a_shift() {
    let a = gaussian(800, 2, &[0.0, 0.0], 1.0, 4);
    let b = gaussian(800, 2, &[0.0, 0.0], 1.0, 5);
    let c = gaussian(800, 2, &[0.5, 0.0], 1.0, 6);
    let (same, shifted) = (mmd_rbf(&a, &b, 2, 0.5, 800), mmd_rbf(&a, &c, 2, 0.5, 800));
    assert!(same.abs() < 0.005, "{same}");
    assert!(shifted > 10.0 * same.abs().max(1e-4), "{shifted} vs {same}");
}

#[test]
fn frechet_distance_matches_the_closed_form_for_gaussians() {
    // N(0, I) against N(m, s^2 I) in d dimensions: |m|^2 + d (1 - s)^2.
    let d = 4;
    let a = gaussian(20_000, d, &[0.0; 4], 1.0, 7);
    let b = gaussian(20_000, d, &[0.5, 0.0, 0.0, -0.5], 2.0, 8);
    let fd = frechet_distance(&a, &b, d);
    let want = 0.5 + d as f64 * 1.0;
    assert!((fd - want).abs() < 0.1 * want, "{fd} vs {want}");
    let a2 = gaussian(20_000, d, &[0.0; 4], 1.0, 9);
    assert!(frechet_distance(&a, &a2, d) < 0.01);
}

#[test]
fn precision_and_recall_count_the_points_inside_each_others_balls() {
    // By hand, 1-D, k = 1: real points 0, 1, 2, 3 have radius 1; samples 0.5 and 10 have radius
    // 9.5. One sample of two lies within a real ball; every real point within a sample's.
    let (p, r) = precision_recall(&[0.0, 1.0, 2.0, 3.0], &[0.5, 10.0], 1, 1);
    assert_eq!((p, r), (0.5, 1.0));
    // k = 3 on the reals: radii 3 at the ends, 2 in the middle; 4.9 lies within 3 of 3, 10 not.
    let (p, _) = precision_recall(&[0.0, 1.0, 2.0, 3.0], &[4.9, 10.0], 1, 3);
    assert_eq!(p, 0.5);
}

#[test]
fn coverage_counts_the_real_balls_that_hold_a_sample() {
    // 1-D, k = 1: real points 0, 1, 2, 3 have radius 1. A sample at 0.5 lies in the balls of 0
    // and 1; one at 10 in none. Recall on the same sets is 1 (the far sample's ball is wide).
    let real = [0.0, 1.0, 2.0, 3.0];
    assert_eq!(coverage(&real, &[0.5, 10.0], 1, 1), 0.5);
    assert_eq!(precision_recall(&real, &[0.5, 10.0], 1, 1).1, 1.0);
    // Scattered samples far from the data cover nothing, whatever their spread.
    assert_eq!(coverage(&real, &[-50.0, 50.0, 100.0], 1, 1), 0.0);
    assert_eq!(precision_recall(&real, &[-50.0, 50.0, 100.0], 1, 1).1, 1.0);
    // The data against itself, shifted slightly: every ball holds a sample.
    assert_eq!(coverage(&real, &[0.1, 1.1, 2.1, 3.1], 1, 1), 1.0);
}

#[test]
fn precision_and_recall_tell_realism_from_coverage() {
    // Four Gaussian modes in 2-D.
    let modes = [[-3.0f32, -3.0], [-3.0, 3.0], [3.0, -3.0], [3.0, 3.0]];
    let mixture = |n: usize, seed: u64, of: &[[f32; 2]]| -> Vec<f32> {
        (0..n)
            .flat_map(|i| gaussian(1, 2, &of[i % of.len()], 0.5, seed * 1000 + i as u64))
            .collect()
    };
    let real = mixture(400, 1, &modes);
    // Another draw of the same data: both near 1.
    let (p, r) = precision_recall(&real, &mixture(400, 2, &modes), 2, 3);
    assert!(
        p > 0.9 && r > 0.9,
        "same distribution: precision {p}, recall {r}"
    );
    // One mode only: realistic, but a quarter of the data.
    let (p, r) = precision_recall(&real, &mixture(400, 3, &modes[..1]), 2, 3);
    assert!(p > 0.9 && r < 0.4, "one mode: precision {p}, recall {r}");
    // Far from the data: neither.
    let far = gaussian(400, 2, &[20.0, 20.0], 0.5, 4);
    let (p, r) = precision_recall(&real, &far, 2, 3);
    assert!(p < 0.01 && r < 0.01, "far: precision {p}, recall {r}");
}
