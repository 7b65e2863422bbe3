//! A study's report from the measurements in its directory: the ranking table (`study.md`,
//! beside SD3's published ranks for the rows it shares), every measurement (`study.csv`: one
//! row per run, setting and metric) and the chart of the ranked metric against the number of
//! sampling steps (`study.png`, and `study-cfgW.png` for each guidance weight `W`).

use super::rank::{average_ranks, mean_spread, rank_with_ties};
use super::{load_result, Formulation, Plan, RunResult, Setting, FEW_STEPS};
use crate::error::{Error, Result};
use crate::output::write_atomically;
use crate::plot::{line_chart_png, LineChart, Series};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The report's files in a study's directory.
pub const REPORT_MD: &str = "study.md";
/// Every measurement.
pub const REPORT_CSV: &str = "study.csv";
/// The chart of the unguided settings.
pub const REPORT_PNG: &str = "study.png";

/// SD3's published average ranks (all settings / 5 steps / 50 steps; Esser et al. 2024, Table 1)
/// of the formulations a study can train, by formulation name.
pub const SD3_RANKS: [(&str, [f64; 3]); 6] = [
    ("rf/lognorm(0,1)", [1.54, 1.25, 1.50]),
    ("rf/mode(1.29)", [2.75, 3.25, 3.00]),
    ("eps/ldm-linear", [2.88, 4.25, 2.75]),
    ("rf/cosmap", [4.13, 3.75, 4.00]),
    ("rf/uniform", [5.67, 6.50, 5.75]),
    ("v/cosine", [9.17, 12.25, 8.75]),
];

/// SD3's ranks of `f`, if SD3's table has it.
pub fn sd3_ranks(f: &Formulation) -> Option<[f64; 3]> {
    SD3_RANKS.iter().find_map(|(name, ranks)| {
        Formulation::parse(name)
            .ok()
            .filter(|g| g.slug() == f.slug())
            .map(|_| *ranks)
    })
}

/// The ranking of a study's formulations.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranking {
    /// The formulations, in the plan's order.
    pub formulations: Vec<Formulation>,
    /// The settings, in the plan's order.
    pub settings: Vec<Setting>,
    /// The ranked metric's `(mean, spread)` over the seeds, `[formulation][setting]` (an
    /// infinite mean: diverged); `None` where a seed is not measured.
    pub cells: Vec<Vec<Option<(f64, f64)>>>,
    /// Seeds measured, `[formulation][setting]`.
    pub seeds: Vec<Vec<usize>>,
    /// Ranks `[setting][formulation]` (settings that every formulation has; others `None`).
    pub ranks: Vec<Option<Vec<f64>>>,
    /// Average ranks over all ranked settings, the few-step ones (`<= FEW_STEPS`) and the others.
    pub average: [Vec<Option<f64>>; 3],
    /// Runs or measurements that are missing (`formulation seed S: setting`).
    pub missing: Vec<String>,
}

/// The measurements of the plan's runs in `dir`, `[formulation][seed]`.
pub fn collect(dir: &Path, plan: &Plan) -> Result<Vec<Vec<RunResult>>> {
    let runs = plan.runs(dir)?;
    let mut out: Vec<Vec<RunResult>> = Vec::new();
    for chunk in runs.chunks(plan.seeds as usize) {
        out.push(
            chunk
                .iter()
                .map(|r| load_result(&r.dir))
                .collect::<Result<_>>()?,
        );
    }
    Ok(out)
}

/// Rank the formulations on `metric` (`lower_is_better` or not) from their results
/// `[formulation][seed]` measured on `samples` samples. A cell is ranked when every seed was
/// measured; a setting when every formulation's cell is. Diverged runs rank last, tied.
pub fn rank(
    formulations: &[Formulation],
    settings: &[Setting],
    samples: usize,
    results: &[Vec<RunResult>],
    metric: &str,
    lower_is_better: bool,
) -> Ranking {
    let mut missing = Vec::new();
    let mut cells = Vec::new();
    let mut seeds = Vec::new();
    // A diverged run ranks last, tied with the others that diverged.
    let worst = if lower_is_better {
        f64::INFINITY
    } else {
        f64::NEG_INFINITY
    };
    for (f, runs) in formulations.iter().zip(results) {
        let mut row = Vec::new();
        let mut row_seeds = Vec::new();
        for s in settings {
            let mut values = Vec::new();
            let mut diverged = false;
            let mut measured = 0;
            for (seed, r) in runs.iter().enumerate() {
                match r.get(s, samples) {
                    None => missing.push(format!("{} seed {seed}: {}", f.name, s.label())),
                    Some(m) if m.diverged => {
                        diverged = true;
                        measured += 1;
                    }
                    Some(m) => match m.metrics.iter().find(|m| m.metric == metric) {
                        Some(m) => {
                            values.push(m.value);
                            measured += 1;
                        }
                        None => missing.push(format!(
                            "{} seed {seed}: {} ({metric} not measured)",
                            f.name,
                            s.label()
                        )),
                    },
                }
            }
            row_seeds.push(measured);
            // Ranked only with every seed: a mean of fewer has another spread.
            let complete = measured == runs.len() && !runs.is_empty();
            row.push(complete.then(|| {
                if diverged {
                    (worst, 0.0)
                } else {
                    mean_spread(&values)
                }
            }));
        }
        cells.push(row);
        seeds.push(row_seeds);
    }
    let ranks: Vec<Option<Vec<f64>>> = (0..settings.len())
        .map(|s| {
            let column: Option<Vec<(f64, f64)>> = cells.iter().map(|row| row[s]).collect();
            column.map(|c| rank_with_ties(&c, lower_is_better))
        })
        .collect();
    let ranked: Vec<Vec<f64>> = ranks.iter().flatten().cloned().collect();
    let ranked_settings: Vec<&Setting> = settings
        .iter()
        .zip(&ranks)
        .filter(|(_, r)| r.is_some())
        .map(|(s, _)| s)
        .collect();
    let average = [
        average_ranks(&ranked, |_| true),
        average_ranks(&ranked, |i| ranked_settings[i].steps <= FEW_STEPS),
        average_ranks(&ranked, |i| ranked_settings[i].steps > FEW_STEPS),
    ];
    let average = average.map(|a| {
        if a.is_empty() {
            vec![None; formulations.len()]
        } else {
            a
        }
    });
    Ranking {
        formulations: formulations.to_vec(),
        settings: settings.to_vec(),
        cells,
        seeds,
        ranks,
        average,
        missing,
    }
}

/// What [`write_report`] wrote.
#[derive(Clone, Debug)]
pub struct Report {
    /// The ranking.
    pub ranking: Ranking,
    /// The files written.
    pub files: Vec<PathBuf>,
}

/// A Markdown table's header: the `first` columns (the first left-aligned), then one per
/// setting.
fn table_head(first: &[&str], settings: &[Setting]) -> String {
    let mut header = String::from("|");
    let mut rule = String::from("|");
    for (i, c) in first.iter().enumerate() {
        header += &format!(" {c} |");
        rule += if i == 0 { " --- |" } else { " ---: |" };
    }
    for s in settings {
        header += &format!(" {} |", s.label());
        rule += " ---: |";
    }
    format!("{header}\n{rule}\n")
}

fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        "diverged".into()
    } else if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e4) {
        format!("{v:.2e}")
    } else {
        format!("{v:.4}")
    }
}

fn fmt_rank(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.2}"))
}

/// Write `study.md`, `study.csv` and the charts into `dir` from the measurements there.
pub fn write_report(dir: &Path, plan: &Plan) -> Result<Report> {
    let formulations = plan.validate()?;
    let results = collect(dir, plan)?;
    let (metric, lower) = plan.ranked_metric()?;
    let ranking = rank(
        &formulations,
        &plan.settings,
        plan.samples,
        &results,
        metric,
        lower,
    );
    if ranking.cells.iter().flatten().all(Option::is_none) {
        return Err(Error::Config(format!(
            "{} has no measurements yet: run the study (rectiflow study --out {}) first",
            dir.display(),
            dir.display()
        )));
    }

    // study.csv: every measurement.
    let mut csv = String::from("formulation,seed,solver,steps,cfg,metric,value,floor\n");
    for (f, runs) in formulations.iter().zip(&results) {
        for (seed, r) in runs.iter().enumerate() {
            for s in &plan.settings {
                let Some(measured) = r.get(s, plan.samples) else {
                    continue;
                };
                let row = format!(
                    "\"{}\",{seed},{},{},{}",
                    f.name,
                    s.solver.name(),
                    s.steps,
                    s.cfg
                );
                if measured.diverged {
                    let _ = writeln!(csv, "{row},\"diverged\",,");
                }
                for m in &measured.metrics {
                    let _ = writeln!(
                        csv,
                        "{row},\"{}\",{},{}",
                        m.metric,
                        m.value,
                        m.floor.map_or(String::new(), |v| v.to_string())
                    );
                }
            }
        }
    }

    // study.md: the ranking, best first.
    let mut order: Vec<usize> = (0..formulations.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| ranking.average[0][i].unwrap_or(f64::INFINITY);
        key(a).total_cmp(&key(b))
    });
    let floor = results
        .iter()
        .flatten()
        .flat_map(|r| &r.settings)
        .flat_map(|s| &s.metrics)
        .find(|m| m.metric == metric)
        .and_then(|m| m.floor);
    let b = &plan.base;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Formulation study: {} with the {} (width {}, depth {}), {} steps of batch {}, {} seed{}\n",
        b.data,
        b.model.kind,
        b.model.width,
        b.model.depth,
        b.steps,
        b.batch,
        plan.seeds,
        if plan.seeds == 1 { "" } else { "s" }
    );
    let _ =
        writeln!(
        md,
        "Ranked metric: {metric} ({} is better) of {} samples{}; mean ± standard deviation over \
         the seeds, and in brackets the rank at that setting (ties, differences within the \
         spread, share their places). Average ranks over all settings, over those with at most \
         {FEW_STEPS} steps and over the others. SD3: the published average ranks (all / 5 steps / \
         50 steps; Esser et al. 2024, Table 1) where SD3 has the row.\n",
        if lower { "lower" } else { "higher" },
        plan.samples,
        floor.map_or(String::new(), |f| format!(", real-vs-real floor {}", fmt_value(f)))
    );
    md += &table_head(
        &[
            "formulation",
            "rank (all)",
            "rank (≤ 5 steps)",
            "rank (> 5 steps)",
            "SD3",
        ],
        &plan.settings,
    );
    for &i in &order {
        let f = &formulations[i];
        let sd3 = sd3_ranks(f).map_or("-".into(), |r| {
            format!("{:.2} / {:.2} / {:.2}", r[0], r[1], r[2])
        });
        let _ = write!(
            md,
            "| {} | {} | {} | {} | {sd3} |",
            f.name,
            fmt_rank(ranking.average[0][i]),
            fmt_rank(ranking.average[1][i]),
            fmt_rank(ranking.average[2][i])
        );
        for (s, cell) in ranking.cells[i].iter().enumerate() {
            let rank = ranking.ranks[s].as_ref().map(|r| r[i]);
            let _ = match cell {
                Some((m, sd)) if m.is_finite() => write!(
                    md,
                    " {} ± {} ({}) |",
                    fmt_value(*m),
                    fmt_value(*sd),
                    fmt_rank(rank)
                ),
                Some(_) => write!(md, " diverged ({}) |", fmt_rank(rank)),
                None => write!(md, " - |"),
            };
        }
        md.push('\n');
    }
    // The order of the rows SD3 shares, ours beside theirs.
    let shared: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| sd3_ranks(&formulations[i]).is_some() && ranking.average[0][i].is_some())
        .collect();
    if shared.len() >= 2 {
        let mut theirs = shared.clone();
        theirs.sort_by(|&a, &b| {
            let key = |i: usize| sd3_ranks(&formulations[i]).map_or(f64::INFINITY, |r| r[0]);
            key(a).total_cmp(&key(b))
        });
        let names = |v: &[usize]| {
            v.iter()
                .map(|&i| formulations[i].name.as_str())
                .collect::<Vec<_>>()
                .join(" < ")
        };
        let _ = writeln!(
            md,
            "\nOrder of the rows SD3 also has (best first), all settings:\n\n- this study: {}\n- SD3: {}",
            names(&shared),
            names(&theirs)
        );
    }
    // The other metrics, means only.
    let mut others: Vec<String> = Vec::new();
    for m in results
        .iter()
        .flatten()
        .flat_map(|r| &r.settings)
        .flat_map(|s| &s.metrics)
    {
        if m.metric != metric && !others.contains(&m.metric) {
            others.push(m.metric.clone());
        }
    }
    for other in &others {
        let r = rank(
            &formulations,
            &plan.settings,
            plan.samples,
            &results,
            other,
            true,
        );
        let floor = results
            .iter()
            .flatten()
            .flat_map(|r| &r.settings)
            .flat_map(|s| &s.metrics)
            .find(|m| &m.metric == other)
            .and_then(|m| m.floor);
        let _ = writeln!(
            md,
            "\n## {other} (mean over seeds{})\n",
            floor.map_or(String::new(), |f| format!(
                "; real-vs-real {}",
                fmt_value(f)
            ))
        );
        md += &table_head(&["formulation"], &plan.settings);
        for &i in &order {
            let _ = write!(md, "| {} |", formulations[i].name);
            for cell in &r.cells[i] {
                let _ = write!(md, " {} |", cell.map_or("-".into(), |(m, _)| fmt_value(m)));
            }
            md.push('\n');
        }
    }
    let seconds: f64 = results
        .iter()
        .flatten()
        .filter_map(|r| r.train_seconds)
        .sum();
    let _ = writeln!(md, "\nTraining time of the runs, summed: {seconds:.0} s.");
    if !ranking.missing.is_empty() {
        let _ = writeln!(
            md,
            "\n**Incomplete**: {} measurements are missing; the ranks cover only the settings at \
             which every formulation has every seed. Missing: {}.",
            ranking.missing.len(),
            ranking.missing.join("; ")
        );
    }

    // The charts: one per guidance weight.
    let mut cfgs: Vec<f32> = Vec::new();
    for s in &plan.settings {
        if !cfgs.contains(&s.cfg) {
            cfgs.push(s.cfg);
        }
    }
    let mut files: Vec<(PathBuf, Vec<u8>)> = vec![
        (dir.join(REPORT_MD), md.into_bytes()),
        (dir.join(REPORT_CSV), csv.into_bytes()),
    ];
    for cfg in cfgs {
        let series: Vec<Series> = order
            .iter()
            .filter_map(|&i| {
                let mut points = Vec::new();
                let mut spread = Vec::new();
                for (s, cell) in plan.settings.iter().zip(&ranking.cells[i]) {
                    if let Some((m, sd)) = cell.filter(|(m, _)| m.is_finite() && *m > 0.0) {
                        if s.cfg == cfg {
                            points.push((s.steps as f64, m));
                            spread.push(sd.min(m * 0.999));
                        }
                    }
                }
                (!points.is_empty()).then(|| Series {
                    name: formulations[i].name.clone(),
                    points,
                    spread: Some(spread),
                })
            })
            .collect();
        if series.is_empty() {
            continue;
        }
        let solver = plan.settings[0].solver.name();
        let mut series = series;
        if let Some(f) = floor.filter(|f| *f > 0.0) {
            let steps: Vec<f64> = plan
                .settings
                .iter()
                .filter(|s| s.cfg == cfg)
                .map(|s| s.steps as f64)
                .collect();
            series.push(Series {
                name: "real vs real (floor)".into(),
                points: steps.iter().map(|&s| (s, f)).collect(),
                spread: None,
            });
        }
        let title = format!(
            "{} ({}), {} training steps x {} seed{}: {metric}{}",
            b.data,
            b.model.kind,
            b.steps,
            plan.seeds,
            if plan.seeds == 1 { "" } else { "s" },
            if cfg == 1.0 {
                String::new()
            } else {
                format!(", guidance {cfg}")
            }
        );
        let png = line_chart_png(
            &LineChart {
                title: &title,
                x_label: &format!("sampling steps ({solver})"),
                y_label: metric,
                log_x: true,
                log_y: true,
                series: &series,
            },
            1000,
            650,
        )?;
        let name = if cfg == 1.0 {
            REPORT_PNG.to_string()
        } else {
            format!("study-cfg{cfg}.png")
        };
        files.push((dir.join(name), png));
    }
    let refs: Vec<(&Path, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_path(), b.as_slice()))
        .collect();
    write_atomically(&refs)?;
    Ok(Report {
        ranking,
        files: files.into_iter().map(|(p, _)| p).collect(),
    })
}
