//! Ranking formulations the way SD3's Table 1 does: at each sampler setting the formulations are
//! ranked by their metric (averaged over seeds), then each formulation's ranks are averaged over
//! the settings. A difference within the seeds' spread is a tie, and tied formulations share the
//! ranks they span (fractional ranking), so the ranks at a setting always sum to `n (n + 1) / 2`.

/// The mean and the spread (the sample standard deviation; 0 for one value) of `values`.
pub fn mean_spread(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Whether two results `(mean, spread)` tie: their means are equal or differ by no more than
/// the larger spread.
pub fn ties(a: (f64, f64), b: (f64, f64)) -> bool {
    // Equal means tie first, so that two infinite ones (diverged runs) do too.
    a.0 == b.0 || (a.0 - b.0).abs() <= a.1.max(b.1)
}

/// The rank of each result `(mean, spread)` at one setting, 1 the best. `lower_is_better` says
/// which way the metric points. A result's rank is `1 + (results clearly better) + (results
/// tied with it) / 2`: with no ties the usual 1, 2, 3, ...; results tied with each other share
/// the average of the places they span.
pub fn rank_with_ties(results: &[(f64, f64)], lower_is_better: bool) -> Vec<f64> {
    let better = |a: f64, b: f64| if lower_is_better { a < b } else { a > b };
    results
        .iter()
        .enumerate()
        .map(|(i, &r)| {
            let mut rank = 1.0;
            for (j, &o) in results.iter().enumerate() {
                if i == j {
                    continue;
                }
                if ties(r, o) {
                    rank += 0.5;
                } else if better(o.0, r.0) {
                    rank += 1.0;
                }
            }
            rank
        })
        .collect()
}

/// The mean of each row's ranks over the settings `settings` picks (`ranks[setting][row]`);
/// `None` for each row when it picks none.
pub fn average_ranks(ranks: &[Vec<f64>], pick: impl Fn(usize) -> bool) -> Vec<Option<f64>> {
    let rows = ranks.first().map_or(0, Vec::len);
    let chosen: Vec<&Vec<f64>> = ranks
        .iter()
        .enumerate()
        .filter(|(s, _)| pick(*s))
        .map(|(_, r)| r)
        .collect();
    (0..rows)
        .map(|row| {
            (!chosen.is_empty())
                .then(|| chosen.iter().map(|r| r[row]).sum::<f64>() / chosen.len() as f64)
        })
        .collect()
}
