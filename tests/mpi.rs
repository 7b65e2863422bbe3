//! Data-parallel training under MPI (feature `mpi`): the `rectiflow` binary run by
//! `mpirun -np 2` (as a user runs it; Open MPI's `mpirun` must be on the PATH), beside the same
//! binary run as one plain process.
//!
//! - equivalence: after k steps, 2 ranks with global batch B hold the weights one process holds
//!   with batch B, to the rounding of the different summation order (tolerance below);
//! - checkpoint and resume under MPI, and resume under another number of ranks;
//! - failures and signals: a rank that cannot start, an uneven batch, a diverging run, SIGTERM to
//!   one rank (every rank stops at the same step, rank 0 saves) and a rank killed by SIGKILL each
//!   end the whole job, with the last complete checkpoint kept.
#![cfg(feature = "mpi")]

mod common;

use common::tiny::temp_dir;
use rectiflow::checkpoint::Checkpoint;
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_rectiflow");

/// Weights after k steps of 2 ranks against one process: each step's gradient is the same sum
/// in another order (two half-batch sums, then their sum, against one sum over the batch), so
/// they differ by f32 rounding, ~1e-7 relative per step; AdamW divides by the root of the
/// second moment, so a coordinate whose gradient is near zero can move by up to the learning
/// rate (2e-3) differently, though AdamW's eps (1e-8) bounds that far below it in practice.
/// The tolerance on the largest weight difference is a twentieth of one such step: some 300
/// times the difference seen (3e-7 after 6 and after 8 steps; docs/performance.md), and far
/// below what a different batch, time or noise draw produces (tested below: another seed
/// moves the weights by more than 100 times this).
const TOLERANCE: f32 = 1e-4;

/// The flags of the small run every test trains: toy checkerboard, a 2-layer MLP of width 32.
fn run_flags(out: &Path, steps: u32) -> Vec<String> {
    [
        "train",
        "--data",
        "toy:checkerboard",
        "--model",
        "mlp",
        "--width",
        "32",
        "--depth",
        "2",
        "--batch",
        "64",
        "--warmup",
        "0",
        "--checkpoint-every",
        "0",
        "--sample-every",
        "0",
        "--log-every",
        "2",
        "--quiet",
        "--steps",
        &steps.to_string(),
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `mpirun` with `np` ranks of the binary and `args` (as root and oversubscribed, as CI runs).
fn mpirun(np: usize, args: &[String]) -> Output {
    let mut cmd = Command::new("mpirun");
    cmd.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        &np.to_string(),
    ])
    .arg(BIN)
    .args(args);
    mpi_env(&mut cmd)
        .output()
        .expect("mpirun (Open MPI) is on the PATH")
}

/// Open MPI's settings for running as root in a container, and quiet on a machine without a
/// high-speed network.
fn mpi_env(cmd: &mut Command) -> &mut Command {
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl", "self,vader")
        .env("OMPI_MCA_pml", "ob1")
        .env("OMPI_MCA_osc", "^ucx")
}

/// The binary as one plain process (no launcher, no MPI).
fn plain(args: &[String]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(what: &str, r: &Output) {
    assert!(
        r.status.success(),
        "{what} failed ({:?}):\n{}\n{}",
        r.status,
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
}

/// The run's weights, flat, in name order, and its step.
fn weights(run: &Path) -> (Vec<f32>, u64) {
    let ck = Checkpoint::load(&run.join("checkpoint.safetensors")).unwrap();
    let mut names: Vec<&String> = ck.params.keys().collect();
    names.sort();
    let flat = names
        .iter()
        .flat_map(|n| ck.params[*n].1.iter().copied())
        .collect();
    (flat, ck.step)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn two_ranks_train_the_weights_one_process_trains_and_resume_under_another_count() {
    let dir = temp_dir("mpi-equivalence");
    let (one, two) = (dir.join("one"), dir.join("two"));
    ok("one process, 6 steps", &plain(&run_flags(&one, 6)));
    let r = mpirun(2, &run_flags(&two, 6));
    ok("2 ranks, 6 steps", &r);
    // Rank 0 alone wrote the run directory, as one process would.
    for f in [
        "config.json",
        "checkpoint.safetensors",
        "metrics.json",
        "samples.png",
    ] {
        assert!(two.join(f).exists(), "{f} missing");
    }
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(two.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["ranks"], 2);
    let (w1, s1) = weights(&one);
    let (w2, s2) = weights(&two);
    assert_eq!((s1, s2), (6, 6));
    let d = max_diff(&w1, &w2);
    eprintln!("largest weight difference, 2 ranks vs 1 process after 6 steps: {d:e}");
    assert!(d < TOLERANCE, "2 ranks differ from one process by {d}");
    // The logged loss is the global batch's: the same to rounding.
    let loss = |m: &serde_json::Value| m["log"][0]["loss"].as_f64().unwrap();
    let one_metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(one.join("metrics.json")).unwrap()).unwrap();
    assert!((loss(&one_metrics) - loss(&metrics)).abs() < 1e-5 * loss(&one_metrics).abs().max(1.0));

    // The tolerance separates: another seed's batch, times and noise move the weights far more.
    let other = dir.join("other-seed");
    let mut flags = run_flags(&other, 6);
    flags.extend(["--seed".to_string(), "1".to_string()]);
    ok("one process, another seed", &plain(&flags));
    let far = max_diff(&w1, &weights(&other).0);
    assert!(
        far > 100.0 * TOLERANCE,
        "another seed moved the weights by only {far}"
    );

    // Resume under another number of ranks continues the same run: 2 ranks to step 3, one
    // process to step 6, then 2 ranks again to step 8, against one process straight to 8.
    let mixed = dir.join("mixed");
    ok("2 ranks to step 3", &mpirun(2, &run_flags(&mixed, 3)));
    let mut resume = run_flags(&mixed, 6);
    resume.push("--resume".into());
    ok("one process resumes to step 6", &plain(&resume));
    let mut resume = run_flags(&mixed, 8);
    resume.push("--resume".into());
    ok("2 ranks resume to step 8", &mpirun(2, &resume));
    let straight = dir.join("straight");
    ok("one process to step 8", &plain(&run_flags(&straight, 8)));
    let (wm, sm) = weights(&mixed);
    assert_eq!(sm, 8);
    let d = max_diff(&wm, &weights(&straight).0);
    eprintln!("largest weight difference, 2-1-2 ranks resumed vs 1 process after 8 steps: {d:e}");
    assert!(d < TOLERANCE, "the resumed run differs by {d}");
}

#[test]
fn a_failing_rank_ends_the_job_with_rank_0_naming_it_and_the_checkpoint_stays() {
    let dir = temp_dir("mpi-failures");
    let run = dir.join("run");
    ok("2 ranks, 4 steps", &mpirun(2, &run_flags(&run, 4)));
    let saved = std::fs::read(run.join("checkpoint.safetensors")).unwrap();

    // Rank 1 cannot open an adapter: every rank stops before training, rank 0 says why.
    let mut resume = run_flags(&run, 8);
    resume.push("--resume".into());
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-np", "1"])
        .arg(BIN)
        .args(&resume)
        .args([":", "-np", "1", "-x", "RECTIFLOW_ADAPTER=no-such-adapter"])
        .arg(BIN)
        .args(&resume);
    let r = mpi_env(&mut cmd).output().unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        err.contains("rank 1 of 2") && err.contains("no-such-adapter"),
        "{err}"
    );
    assert!(
        !err.contains("MPI_Abort"),
        "an agreed failure ends without MPI_Abort: {err}"
    );

    // A global batch the ranks cannot split evenly is refused on every rank, naming --batch.
    let mut uneven = run_flags(&dir.join("uneven"), 4);
    let at = uneven.iter().position(|a| a == "--batch").unwrap();
    uneven[at + 1] = "63".into();
    let r = mpirun(2, &uneven);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        err.contains("--batch 63") && err.contains("2 ranks"),
        "{err}"
    );

    // A run that diverges stops on every rank at the same step without saving.
    let mut diverge = resume.clone();
    diverge.extend(["--lr", "1e30", "--allow-changes"].map(String::from));
    let r = mpirun(2, &diverge);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        err.contains("not finite") && err.contains("from step 4"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(run.join("checkpoint.safetensors")).unwrap(),
        saved
    );

    // SIGTERM to one rank stops every rank at the same step: rank 0 saves, all exit 143.
    let mut long = run_flags(&run, 100_000);
    long.push("--resume".into());
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .arg(BIN)
        .args(&long);
    let job = mpi_env(&mut cmd)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rank1 = wait_for_rank(1, &run);
    // Until its run loop catches SIGTERM (set up), a signal simply ends a rank, and the job.
    wait_for_sigterm_handler(rank1);
    std::thread::sleep(std::time::Duration::from_secs(1));
    Command::new("kill")
        .args(["-TERM", &rank1.to_string()])
        .status()
        .unwrap();
    let r = job.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(143), "{err}");
    assert!(err.contains("interrupted by signal 15"), "{err}");
    let (_, stopped_at) = weights(&run);
    assert!(stopped_at > 4, "no checkpoint saved at the stop: {err}");
    let saved = std::fs::read(run.join("checkpoint.safetensors")).unwrap();

    // A rank killed outright (it cannot take part in anything) ends the job through mpirun;
    // the last complete checkpoint stays and the run resumes from it.
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .arg(BIN)
        .args(&long);
    let mut job = mpi_env(&mut cmd)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let victim = wait_for_rank(1, &run);
    std::thread::sleep(std::time::Duration::from_secs(2));
    Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap();
    let started = std::time::Instant::now();
    let status = job.wait().unwrap();
    assert!(!status.success());
    assert!(
        started.elapsed().as_secs() < 60,
        "the job outlived its killed rank"
    );
    assert_eq!(
        std::fs::read(run.join("checkpoint.safetensors")).unwrap(),
        saved,
        "the last complete checkpoint stays"
    );
    // (Fewer steps than the interrupted run asked for: a change that needs consent.)
    let mut more = run_flags(&run, stopped_at as u32 + 2);
    more.extend(["--resume", "--allow-changes"].map(String::from));
    ok("resume after the killed job", &mpirun(2, &more));
    assert_eq!(weights(&run).1, stopped_at + 2);
}

/// The process id of rank `rank` of a running job training into `out` (found by its
/// environment), once it has started.
fn wait_for_rank(rank: usize, out: &Path) -> u32 {
    let want_rank = format!("OMPI_COMM_WORLD_RANK={rank}");
    let want_out = out.to_str().unwrap();
    for _ in 0..600 {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let (Ok(env), Ok(cmdline)) = (
                std::fs::read(entry.path().join("environ")),
                std::fs::read(entry.path().join("cmdline")),
            ) else {
                continue;
            };
            let env = String::from_utf8_lossy(&env);
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.starts_with(BIN)
                && cmdline.contains(want_out)
                && env.split('\0').any(|v| v == want_rank)
            {
                return pid;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("rank {rank} of the job never started");
}

/// Wait until process `pid` catches SIGTERM (bit 15 of its caught-signals mask in
/// /proc/PID/status): its run loop has begun.
fn wait_for_sigterm_handler(pid: u32) {
    for _ in 0..600 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .unwrap_or(0);
        if caught & (1 << (15 - 1)) != 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("process {pid} never caught SIGTERM");
}
