//! `rectiflow study`: formulations parsed, ranks with ties, the report from measurements on
//! disk (ties, missing runs), and the command itself on a tiny study: sharded over two
//! processes with the last writing the report, resumed after kill -9, extended with a
//! formulation while reusing the runs that match, and refused when its settings change.

mod common;

use common::tiny::temp_dir;
use rectiflow::data::DataSpec;
use rectiflow::flow::{Prediction, Schedule, TimeSampler};
use rectiflow::sample::Solver;
use rectiflow::study::rank::{average_ranks, mean_spread, rank_with_ties, ties};
use rectiflow::study::report::{sd3_ranks, write_report, REPORT_CSV, REPORT_MD, REPORT_PNG};
use rectiflow::study::{
    default_plan, Formulation, MetricValue, Plan, RunResult, Setting, SettingResult, Shard,
    DEFAULT_FORMULATIONS, RESULT_FILE,
};
use rectiflow::train::ModelKind;
use std::path::Path;

#[test]
fn the_default_formulations_parse_into_distinct_runs() {
    let all: Vec<Formulation> = DEFAULT_FORMULATIONS
        .iter()
        .map(|f| Formulation::parse(f).unwrap())
        .collect();
    let mut slugs: Vec<String> = all.iter().map(|f| f.slug()).collect();
    slugs.sort();
    slugs.dedup();
    assert_eq!(slugs.len(), DEFAULT_FORMULATIONS.len());
    let f = Formulation::parse("rf/lognorm(0.5,0.6)").unwrap();
    assert_eq!(
        (f.schedule, f.prediction, f.t_sampler),
        (
            Schedule::RectifiedFlow,
            Prediction::Velocity,
            TimeSampler::LogNormal { m: 0.5, s: 0.6 }
        )
    );
    let edm = Formulation::parse("edm(-1.2,1.2)").unwrap();
    assert_eq!(
        (edm.schedule, edm.prediction, edm.t_sampler),
        (
            Schedule::Edm { pm: -1.2, ps: 1.2 },
            Prediction::X0,
            TimeSampler::Uniform
        )
    );
    assert_eq!(edm.preconditioning.name(), "edm");
    // SD3's names for the same rows.
    assert_eq!(
        Formulation::parse("eps/linear").unwrap().slug(),
        Formulation::parse("eps/ldm-linear").unwrap().slug()
    );
    assert_eq!(
        Formulation::parse("v/cos").unwrap().slug(),
        Formulation::parse("v/cosine").unwrap().slug()
    );
    assert!(sd3_ranks(&Formulation::parse("rf/lognorm(0,1)").unwrap()).is_some());
    assert!(sd3_ranks(&Formulation::parse("rf/lognorm(0.5,0.6)").unwrap()).is_none());
    for bad in ["rf", "rf/lognorm(0)", "eps/nonsense", "edm(1)", "q/rf", ""] {
        let e = Formulation::parse(bad).unwrap_err().to_string();
        assert!(e.contains("formulation"), "{bad}: {e}");
    }
}

#[test]
fn ranks_share_places_when_within_the_spread() {
    // Clearly ordered.
    assert_eq!(
        rank_with_ties(&[(3.0, 0.1), (1.0, 0.1), (2.0, 0.1)], true),
        vec![3.0, 1.0, 2.0]
    );
    assert_eq!(
        rank_with_ties(&[(3.0, 0.1), (1.0, 0.1), (2.0, 0.1)], false),
        vec![1.0, 3.0, 2.0]
    );
    // The first two within a spread of each other: they share places 1 and 2.
    assert_eq!(
        rank_with_ties(&[(1.0, 0.1), (1.05, 0.02), (2.0, 0.1)], true),
        vec![1.5, 1.5, 3.0]
    );
    // All tied: each the average place.
    assert_eq!(
        rank_with_ties(&[(1.0, 1.0), (1.5, 1.0), (2.0, 1.0)], true),
        vec![2.0, 2.0, 2.0]
    );
    // Ties that do not chain (a~b, b~c, a<c) still sum to n(n+1)/2.
    let r = rank_with_ties(&[(1.0, 0.3), (1.25, 0.3), (1.5, 0.3)], true);
    assert_eq!(r, vec![1.5, 2.0, 2.5]);
    assert_eq!(r.iter().sum::<f64>(), 6.0);
    assert!(ties((1.0, 0.0), (1.0, 0.0)) && !ties((1.0, 0.0), (1.1, 0.05)));
    let (m, s) = mean_spread(&[1.0, 2.0, 3.0]);
    assert_eq!((m, s), (2.0, 1.0));
    assert_eq!(mean_spread(&[4.0]), (4.0, 0.0));
    // Averages over a chosen subset of settings.
    let ranks = vec![vec![1.0, 2.0], vec![2.0, 1.0], vec![1.0, 2.0]];
    assert_eq!(
        average_ranks(&ranks, |_| true),
        vec![Some(4.0 / 3.0), Some(5.0 / 3.0)]
    );
    assert_eq!(
        average_ranks(&ranks, |s| s == 1),
        vec![Some(2.0), Some(1.0)]
    );
    assert_eq!(average_ranks(&ranks, |_| false), vec![None, None]);
}

#[test]
fn shards_split_the_runs_between_them() {
    let (a, b) = (Shard::parse("0/2").unwrap(), Shard::parse("1/2").unwrap());
    assert!((0..10).all(|k| a.takes(k) != b.takes(k)));
    for bad in ["2/2", "1", "0/0", "a/b", "-1/2"] {
        assert!(Shard::parse(bad).is_err(), "{bad}");
    }
}

fn toy_plan(formulations: &[&str], seeds: u64) -> Plan {
    let data = DataSpec::parse("toy:checkerboard")
        .unwrap()
        .load(0)
        .unwrap();
    let mut plan = default_plan(&data, ModelKind::Mlp).unwrap();
    plan.formulations = formulations.iter().map(|s| s.to_string()).collect();
    plan.seeds = seeds;
    plan.rank_by = "sliced-w2".into();
    plan.settings = [1, 10]
        .map(|steps| Setting {
            steps,
            solver: Solver::Euler,
            cfg: 1.0,
        })
        .to_vec();
    plan
}

fn write_result(dir: &Path, plan: &Plan, formulation: usize, seed: u64, w2: [f64; 2]) {
    let run = &plan.runs(dir).unwrap()[formulation * plan.seeds as usize + seed as usize];
    std::fs::create_dir_all(&run.dir).unwrap();
    let result = RunResult {
        formulation: run.formulation.name.clone(),
        seed,
        train_seconds: Some(1.0),
        diverged: None,
        settings: plan
            .settings
            .iter()
            .zip(w2)
            .map(|(s, v)| SettingResult {
                setting: *s,
                samples: plan.samples,
                diverged: false,
                metrics: vec![MetricValue {
                    metric: "sliced W2".into(),
                    value: v,
                    floor: Some(0.05),
                }],
            })
            .collect(),
    };
    std::fs::write(
        run.dir.join(RESULT_FILE),
        serde_json::to_string(&result).unwrap(),
    )
    .unwrap();
}

#[test]
fn the_report_ranks_with_ties_and_lists_what_is_missing() {
    let dir = temp_dir("study-report");
    let plan = toy_plan(&["rf/uniform", "rf/lognorm(0,1)", "v/cosine"], 2);
    plan.store(&dir, false).unwrap();
    // At 1 step: lognorm clearly first, uniform and cosine tied (means 0.5 and 0.52, spreads
    // about 0.07). At 10 steps: uniform first, lognorm second, cosine third.
    write_result(&dir, &plan, 0, 0, [0.45, 0.10]);
    write_result(&dir, &plan, 0, 1, [0.55, 0.10]);
    write_result(&dir, &plan, 1, 0, [0.20, 0.20]);
    write_result(&dir, &plan, 1, 1, [0.21, 0.20]);
    write_result(&dir, &plan, 2, 0, [0.50, 0.40]);
    write_result(&dir, &plan, 2, 1, [0.54, 0.40]);
    let report = write_report(&dir, &plan).unwrap();
    let r = &report.ranking;
    assert_eq!(r.ranks[0].as_ref().unwrap(), &vec![2.5, 1.0, 2.5]);
    assert_eq!(r.ranks[1].as_ref().unwrap(), &vec![1.0, 2.0, 3.0]);
    assert_eq!(r.average[0], vec![Some(1.75), Some(1.5), Some(2.75)]);
    assert_eq!(r.average[1], vec![Some(2.5), Some(1.0), Some(2.5)]);
    assert_eq!(r.average[2], vec![Some(1.0), Some(2.0), Some(3.0)]);
    assert!(r.missing.is_empty());
    let md = std::fs::read_to_string(dir.join(REPORT_MD)).unwrap();
    // Best first, SD3's published ranks beside the rows it has, the tie visible.
    let first_row = md.lines().find(|l| l.starts_with("| rf/")).unwrap();
    assert!(first_row.starts_with("| rf/lognorm(0,1) | 1.50 |"), "{md}");
    assert!(first_row.contains("1.54 / 1.25 / 1.50"), "{md}");
    assert!(md.contains("0.5000 ± 0.0707 (2.50)"), "{md}");
    assert!(
        md.contains("- SD3: rf/lognorm(0,1) < rf/uniform < v/cosine"),
        "{md}"
    );
    let csv = std::fs::read_to_string(dir.join(REPORT_CSV)).unwrap();
    assert_eq!(csv.lines().count(), 1 + 3 * 2 * 2, "{csv}");
    assert!(
        csv.contains("\"v/cosine\",1,euler,10,1,\"sliced W2\",0.4,0.05"),
        "{csv}"
    );
    assert!(std::fs::metadata(dir.join(REPORT_PNG)).unwrap().len() > 1000);

    // A missing run: the report says so, and ranks the settings every formulation has.
    std::fs::remove_file(plan.runs(&dir).unwrap()[5].dir.join(RESULT_FILE)).unwrap();
    let report = write_report(&dir, &plan).unwrap();
    assert_eq!(report.ranking.missing.len(), 2);
    let md = std::fs::read_to_string(dir.join(REPORT_MD)).unwrap();
    assert!(
        md.contains("**Incomplete**") && md.contains("v/cosine seed 1: euler 1"),
        "{md}"
    );

    // A plan whose training differs is refused in the same directory.
    let mut other = plan.clone();
    other.base.steps += 1;
    let e = other.store(&dir, false).unwrap_err().to_string();
    assert!(e.contains("--steps") && e.contains("another --out"), "{e}");
    // A different formulation list or sampler settings is the same study.
    let mut more = plan.clone();
    more.formulations.push("rf/cosmap".into());
    more.store(&dir, false).unwrap();
    // ...but not for one shard of several, which must split the same list of runs.
    let mut fewer = more.clone();
    fewer.seeds = 1;
    let e = fewer.store(&dir, true).unwrap_err().to_string();
    assert!(e.contains("every shard"), "{e}");
    more.store(&dir, true).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn diverged_runs_rank_last_and_tied_and_a_partial_cell_is_not_ranked() {
    let dir = temp_dir("study-diverged");
    let plan = toy_plan(&["rf/uniform", "rf/lognorm(0,1)", "v/cosine"], 1);
    plan.store(&dir, false).unwrap();
    write_result(&dir, &plan, 0, 0, [0.3, 0.1]);
    // Two formulations diverge: at one step both, at ten steps one of them.
    for (f, steps_diverged) in [(1usize, vec![true, true]), (2, vec![true, false])] {
        let run = &plan.runs(&dir).unwrap()[f];
        std::fs::create_dir_all(&run.dir).unwrap();
        let result = RunResult {
            formulation: run.formulation.name.clone(),
            seed: 0,
            settings: plan
                .settings
                .iter()
                .zip(&steps_diverged)
                .map(|(s, &d)| SettingResult {
                    setting: *s,
                    samples: plan.samples,
                    diverged: d,
                    metrics: if d {
                        vec![]
                    } else {
                        vec![MetricValue {
                            metric: "sliced W2".into(),
                            value: 0.05,
                            floor: Some(0.05),
                        }]
                    },
                })
                .collect(),
            ..Default::default()
        };
        std::fs::write(
            run.dir.join(RESULT_FILE),
            serde_json::to_string(&result).unwrap(),
        )
        .unwrap();
    }
    let r = write_report(&dir, &plan).unwrap().ranking;
    assert_eq!(r.ranks[0].as_ref().unwrap(), &vec![1.0, 2.5, 2.5]);
    assert_eq!(r.ranks[1].as_ref().unwrap(), &vec![2.0, 3.0, 1.0]);
    assert_eq!(r.ranks[0].as_ref().unwrap().iter().sum::<f64>(), 6.0);
    let md = std::fs::read_to_string(dir.join(REPORT_MD)).unwrap();
    assert!(md.contains("diverged (2.50)"), "{md}");
    let csv = std::fs::read_to_string(dir.join(REPORT_CSV)).unwrap();
    assert!(
        csv.contains("\"v/cosine\",0,euler,1,1,\"diverged\",,"),
        "{csv}"
    );
    // Measurements on another number of samples are not this plan's: the cell is missing and
    // that setting is not ranked.
    let mut other_n = plan.clone();
    other_n.samples += 1;
    let r = write_report(&dir, &other_n);
    assert!(
        r.is_err(),
        "nothing measured on {} samples",
        other_n.samples
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_rectiflow"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(r: &std::process::Output) -> String {
    let (out, err) = (
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr),
    );
    assert!(r.status.success(), "{out}\n{err}");
    format!("{out}{err}")
}

fn modified(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn a_study_runs_sharded_resumes_after_kill_and_reuses_matching_runs() {
    let dir = temp_dir("study-cli");
    let out = dir.join("study");
    let o = out.to_str().unwrap().to_string();
    let args = |formulations: &str, steps: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "study",
            "--data",
            "toy:moons",
            "--width",
            "16",
            "--depth",
            "1",
            "--batch",
            "64",
            "--seeds",
            "2",
            "--sample-steps",
            "1,4",
            "--n",
            "200",
            "--quiet",
            "--out",
            &o,
            "--formulations",
            formulations,
            "--steps",
            steps,
        ]
        .map(String::from)
        .to_vec();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let two = "rf/lognorm(0,1),v/cosine";

    // Bad flags are refused before anything is written.
    let bad = run(&args("rf/nonsense", "30", &[]));
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("formulation"));
    assert!(!out.join("plan.json").exists());
    for (flags, want) in [
        (["--seeds", "5000"], "--seeds 5000"),
        (["--n", "100000000000"], "use a smaller --n"),
        (["--rank-by", "fd"], "not measured on points"),
    ] {
        let mut a = vec!["study", "--out", &o, "--quiet"];
        a.extend(flags);
        let e = run(&a);
        let text = String::from_utf8_lossy(&e.stderr);
        assert!(!e.status.success() && text.contains(want), "{text}");
        assert!(!out.exists(), "{flags:?} wrote {}", out.display());
    }
    let bad = run(&args(two, "30", &["--shard", "2/2"]));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--shard"));

    // Two shards: the first leaves the report to the other, which writes it.
    let first = ok(&run(&args(two, "30", &["--shard", "0/2"])));
    assert!(first.contains("not finished yet"), "{first}");
    assert!(!out.join(REPORT_MD).exists());
    let second = ok(&run(&args(two, "30", &["--shard", "1/2"])));
    assert!(second.contains("| formulation |"), "{second}");
    for f in [REPORT_MD, REPORT_CSV, REPORT_PNG] {
        assert!(out.join(f).exists(), "{f}");
    }
    let csv = std::fs::read_to_string(out.join(REPORT_CSV)).unwrap();
    // 2 formulations x 2 seeds x 2 settings x 2 metrics (sliced W2, MMD).
    assert_eq!(csv.lines().count(), 1 + 16, "{csv}");
    let runs: Vec<_> = std::fs::read_dir(out.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 4);
    let stamps: Vec<_> = runs
        .iter()
        .map(|r| modified(&r.join("checkpoint.safetensors")))
        .collect();

    // --report alone rewrites the same report; with other flags it is refused.
    let md = std::fs::read_to_string(out.join(REPORT_MD)).unwrap();
    std::fs::remove_file(out.join(REPORT_MD)).unwrap();
    ok(&run(&["study", "--out", &o, "--report"]));
    assert_eq!(std::fs::read_to_string(out.join(REPORT_MD)).unwrap(), md);
    let e = run(&["study", "--out", &o, "--report", "--seeds", "3"]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("only --out"));
    // Ranked again by another metric from the same measurements; a metric of images is refused.
    ok(&run(&[
        "study",
        "--out",
        &o,
        "--report",
        "--rank-by",
        "sliced-w2",
    ]));
    let by_w2 = std::fs::read_to_string(out.join(REPORT_MD)).unwrap();
    assert!(by_w2.contains("Ranked metric: sliced W2"), "{by_w2}");
    assert!(md.contains("Ranked metric: MMD^2"), "{md}");
    let e = run(&["study", "--out", &o, "--report", "--rank-by", "fd"]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("not measured on points"));
    ok(&run(&["study", "--out", &o, "--report"]));

    // A lost measurement is taken again, and nothing is retrained.
    let result = runs[0].join(RESULT_FILE);
    std::fs::remove_file(&result).unwrap();
    ok(&run(&args(two, "30", &[])));
    assert!(result.exists());
    let tables = |md: &str| -> Vec<String> {
        md.lines()
            .filter(|l| l.starts_with('|'))
            .map(String::from)
            .collect()
    };
    assert_eq!(
        tables(&std::fs::read_to_string(out.join(REPORT_MD)).unwrap()),
        tables(&md),
        "the measurement taken again is the same"
    );
    // A third formulation: only its runs train.
    let three = format!("{two},rf/uniform");
    let report = ok(&run(&args(&three, "30", &[])));
    assert!(report.contains("| rf/uniform |"), "{report}");
    for (r, t) in runs.iter().zip(&stamps) {
        assert_eq!(modified(&r.join("checkpoint.safetensors")), *t);
    }
    // Other training settings in the same directory are refused.
    let e = run(&args(two, "40", &[]));
    assert!(!e.status.success());
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("another --out"),
        "{}",
        String::from_utf8_lossy(&e.stderr)
    );

    // kill -9 in the middle of a long run; the rerun resumes it from its checkpoint and finishes.
    let killed = dir.join("killed");
    let k = killed.to_str().unwrap().to_string();
    let long = |extra: &[&str]| {
        let mut a = args("rf/uniform", "3000", extra);
        let at = a.iter().position(|s| *s == o).unwrap();
        a[at] = k.clone();
        let at = a.iter().position(|s| s == "--seeds").unwrap();
        a[at + 1] = "1".into();
        a
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rectiflow"))
        .args(long(&[]))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let run_dir = killed.join("runs");
    let t0 = std::time::Instant::now();
    let checkpoint = || {
        std::fs::read_dir(&run_dir)
            .ok()
            .and_then(|mut d| d.next())
            .map(|e| e.unwrap().path().join("checkpoint.safetensors"))
            .filter(|p| p.exists())
    };
    while checkpoint().is_none() && t0.elapsed().as_secs() < 300 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(checkpoint().is_some(), "no checkpoint within 300 s");
    let resumed = ok(&run(&long(&[])));
    assert!(
        resumed.contains("resuming from its checkpoint at step"),
        "{resumed}"
    );
    assert!(killed.join(REPORT_MD).exists());
    let _ = std::fs::remove_dir_all(&dir);
}
