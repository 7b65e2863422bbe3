//! The counter-based generator: Random123's known-answer vectors, and the statistics of its
//! uniforms and normals.

use rectiflow::rng::{normal, philox4x32_10, uniform, words};

#[test]
fn philox_matches_the_random123_known_answers() {
    assert_eq!(
        philox4x32_10([0; 4], [0; 2]),
        [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
    );
    assert_eq!(
        philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
        [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
    );
    assert_eq!(
        philox4x32_10(
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0]
        ),
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
    );
}

#[test]
fn uniforms_and_normals_have_the_right_moments_and_no_lag_correlation() {
    let n = 200_000u32;
    let u: Vec<f64> = (0..n)
        .map(|i| uniform(words(42, 7, 0, i)[0]) as f64)
        .collect();
    let z: Vec<f64> = (0..n)
        .map(|i| {
            let w = words(42, 7, 1, i);
            normal(w[0], w[1]) as f64
        })
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let var = |v: &[f64]| {
        let m = mean(v);
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64
    };
    let lag = |v: &[f64]| {
        let m = mean(v);
        let c: f64 =
            v.windows(2).map(|w| (w[0] - m) * (w[1] - m)).sum::<f64>() / (v.len() - 1) as f64;
        c / var(v)
    };
    // Standard errors at n = 200k: mean 1/sqrt(12 n) = 6.5e-4 (uniform), 2.2e-3 (normal);
    // variance about 3e-3 (normal); lag-1 correlation 2.2e-3. Bounds are 5 standard errors.
    assert!(
        (mean(&u) - 0.5).abs() < 5.0 * 6.5e-4,
        "uniform mean {}",
        mean(&u)
    );
    assert!(
        (var(&u) - 1.0 / 12.0).abs() < 5.0 * 1.9e-4,
        "uniform variance {}",
        var(&u)
    );
    assert!(mean(&z).abs() < 5.0 * 2.2e-3, "normal mean {}", mean(&z));
    assert!(
        (var(&z) - 1.0).abs() < 5.0 * 3.2e-3,
        "normal variance {}",
        var(&z)
    );
    assert!(
        lag(&u).abs() < 5.0 * 2.2e-3 && lag(&z).abs() < 5.0 * 2.2e-3,
        "lag-1 correlation {} {}",
        lag(&u),
        lag(&z)
    );
    // Across streams and steps, the same index gives unrelated numbers.
    let other: Vec<f64> = (0..n)
        .map(|i| uniform(words(42, 8, 0, i)[0]) as f64)
        .collect();
    let m = 0.5;
    let cross: f64 = u
        .iter()
        .zip(&other)
        .map(|(a, b)| (a - m) * (b - m))
        .sum::<f64>()
        / n as f64
        / (1.0 / 12.0);
    assert!(
        cross.abs() < 5.0 * 2.2e-3,
        "correlation across steps {cross}"
    );
    assert!(u.iter().all(|&x| x > 0.0 && x < 1.0));
}
