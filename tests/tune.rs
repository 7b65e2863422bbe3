//! The per-adapter matmul tile tuning (`ops::tune`, `RECTIFLOW_TUNE`, `RECTIFLOW_CACHE_DIR`): the
//! cache file written once and read after, `force` and `off`, damaged and foreign files
//! replaced, a bad setting refused, an unusable directory tolerated, two processes agreeing, a
//! host's device tuned alike, and the tuned tilings legal and exact.
//!
//! Whatever depends on the environment runs in a child process with its own (the `rectiflow`
//! binary's `info`, or this test binary itself for the host device), so no test changes the
//! environment of another; each uses a cache directory of its own.

mod common;

use common::reference::{matmul as reference, MatmulCase};
use common::tiny::temp_dir;
use rectiflow::gpu::{Gpu, GpuOptions, KernelProfile, TuneMode};
use rectiflow::ops::tune::{self, class_of, TuneSource, CLASSES};
use rectiflow::ops::{self, MatmulDesign, MatmulSpec, MatmulTiling};
use rectiflow::Tensor;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `rectiflow info` with the cache in `dir` and `RECTIFLOW_TUNE` set to `tune` (unset: `None`).
fn info_command(dir: &Path, tune: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rectiflow"));
    cmd.arg("info").env("RECTIFLOW_CACHE_DIR", dir);
    match tune {
        Some(v) => cmd.env("RECTIFLOW_TUNE", v),
        None => cmd.env_remove("RECTIFLOW_TUNE"),
    };
    cmd
}

/// Its stdout, stderr, and the tuning's source and cache file as it printed them.
struct Info {
    stderr: String,
    source: String,
    file: PathBuf,
}

fn parse(out: Output) -> Info {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "info failed:\n{stdout}\n{stderr}");
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .unwrap_or_else(|| panic!("no `{name}` line in:\n{stdout}"))
            .to_string()
    };
    let source = field("source: ");
    Info {
        stderr,
        source: source.split_whitespace().next().unwrap_or("").into(),
        file: PathBuf::from(field("file: ")),
    }
}

fn info(dir: &Path, tune: Option<&str>) -> Info {
    parse(info_command(dir, tune).output().unwrap())
}

/// The files in `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The cache file parses and holds one entry per class.
fn assert_valid(path: &Path) {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("JSON");
    assert_eq!(v["classes"].as_array().unwrap().len(), CLASSES.len());
    assert_eq!(v["key"]["engine"], env!("CARGO_PKG_VERSION"));
}

/// `dir` holds the table `file` and its lock, and nothing else (no temporary file left behind).
fn assert_only_table_and_lock(dir: &Path, file: &Path) {
    let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
    assert_eq!(files(dir), [format!("{stem}.json"), format!("{stem}.lock")]);
}

#[test]
fn the_first_run_tunes_and_writes_the_cache_and_the_second_reads_it() {
    let dir = temp_dir("tune-first");
    let first = info(&dir, None);
    assert_eq!(first.source, "tuned");
    assert!(first.file.starts_with(&dir), "{}", first.file.display());
    assert_valid(&first.file);
    assert_only_table_and_lock(&dir, &first.file);
    let written = std::fs::read(&first.file).unwrap();
    // `on` spelled out is the default; the file is read, nothing timed, nothing rewritten.
    let second = info(&dir, Some("on"));
    assert_eq!(second.source, "cache");
    assert_eq!(second.file, first.file);
    assert!(second.stderr.is_empty(), "{}", second.stderr);
    assert_eq!(std::fs::read(&first.file).unwrap(), written);
}

#[test]
fn force_tunes_again_and_overwrites_the_file() {
    let dir = temp_dir("tune-force");
    let first = info(&dir, None);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&first.file).unwrap()).unwrap();
    // Mark the file, so that a rewrite shows even if the timings came out the same.
    v["seconds"] = serde_json::json!(1234.5);
    std::fs::write(&first.file, v.to_string()).unwrap();
    assert_eq!(info(&dir, None).source, "cache");
    let forced = info(&dir, Some("FORCE"));
    assert_eq!(forced.source, "tuned");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&first.file).unwrap()).unwrap();
    assert_ne!(
        v["seconds"],
        serde_json::json!(1234.5),
        "the file was rewritten"
    );
    assert_valid(&first.file);
}

#[test]
fn off_neither_reads_nor_writes_the_cache_directory() {
    let dir = temp_dir("tune-off").join("not-yet");
    let off = info(&dir, Some("off"));
    assert_eq!(off.source, "rules");
    assert!(!dir.exists(), "tuning off created {}", dir.display());
    // Nor does it read a table that is there: the rules stay.
    let on = info(&dir, None);
    assert_eq!(on.source, "tuned");
    assert_eq!(info(&dir, Some("off")).source, "rules");
}

#[test]
fn a_damaged_file_is_replaced_with_a_warning() {
    let dir = temp_dir("tune-damaged");
    let path = info(&dir, None).file;
    std::fs::write(&path, "{\"key\": {\"format\": 1, \"adapt").unwrap();
    let again = info(&dir, None);
    assert_eq!(again.source, "tuned");
    let warnings: Vec<&str> = again
        .stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", again.stderr);
    assert!(
        warnings[0].contains(&*path.to_string_lossy())
            && warnings[0].contains("not a tuning table"),
        "{}",
        warnings[0]
    );
    assert_valid(&path);
    let third = info(&dir, None);
    assert_eq!(third.source, "cache");
    assert!(third.stderr.is_empty(), "{}", third.stderr);
}

#[test]
fn a_file_made_for_another_key_is_not_used() {
    let dir = temp_dir("tune-key");
    let path = info(&dir, None).file;
    for (field, value) in [
        ("engine", serde_json::json!("0.0.1-other")),
        ("driver_info", serde_json::json!("another driver")),
        ("shaders", serde_json::json!("0000000000000000")),
    ] {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v["key"][field] = value;
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
        let again = info(&dir, None);
        assert_eq!(
            again.source, "tuned",
            "a table with another {field} was used"
        );
        assert!(
            again.stderr.contains("made for another") && again.stderr.contains(field),
            "{}",
            again.stderr
        );
        assert_valid(&path);
    }
}

#[test]
fn a_bad_tune_value_is_a_clear_error() {
    let dir = temp_dir("tune-bad").join("cache");
    let out = info_command(&dir, Some("sometimes")).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("RECTIFLOW_TUNE=\"sometimes\"")
            && stderr.contains("on")
            && stderr.contains("off")
            && stderr.contains("force"),
        "{stderr}"
    );
    assert!(!dir.exists());
    // The same through the library.
    let e = TuneMode::parse("maybe").unwrap_err().to_string();
    assert!(e.contains("RECTIFLOW_TUNE") && e.contains("force"), "{e}");
    assert_eq!(TuneMode::parse(" Off ").unwrap(), TuneMode::Off);
}

#[test]
fn an_unusable_cache_directory_tunes_in_memory_with_one_warning() {
    let dir = temp_dir("tune-unusable");
    // A directory cannot be made under a file (permissions would not stop root).
    let file = dir.join("a-file");
    std::fs::write(&file, "").unwrap();
    let under = file.join("cache");
    let r = info(&under, None);
    assert_eq!(r.source, "tuned");
    let warnings: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", r.stderr);
    assert!(warnings[0].contains("in memory"), "{}", warnings[0]);
    assert_eq!(files(&dir), ["a-file"]);
}

#[test]
fn two_processes_started_together_tune_once_and_agree() {
    let dir = temp_dir("tune-race");
    let children: Vec<_> = (0..2)
        .map(|_| {
            info_command(&dir, None)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let infos: Vec<Info> = children
        .into_iter()
        .map(|c| parse(c.wait_with_output().unwrap()))
        .collect();
    let mut sources: Vec<&str> = infos.iter().map(|i| i.source.as_str()).collect();
    sources.sort();
    // One timed and wrote; the other waited for the lock and read what it wrote.
    assert_eq!(sources, ["cache", "tuned"]);
    assert_eq!(infos[0].file, infos[1].file);
    assert!(infos.iter().all(|i| i.stderr.is_empty()));
    assert_valid(&infos[0].file);
    assert_only_table_and_lock(&dir, &infos[0].file);
}

/// Contexts that between them run every matmul design this machine has, tuning afresh into
/// `dir`.
fn every_design(dir: &Path) -> Vec<Gpu> {
    let open = |profile: Option<KernelProfile>, no_subgroups: bool| {
        Gpu::with_options(&GpuOptions {
            poison: true,
            profile,
            no_subgroups,
            tune: Some(TuneMode::Force),
            cache_dir: Some(dir.to_path_buf()),
            ..Default::default()
        })
        .unwrap()
    };
    let g = open(None, false);
    let other = match g.profile() {
        KernelProfile::Cpu => KernelProfile::Gpu,
        KernelProfile::Gpu => KernelProfile::Cpu,
    };
    let mut v = vec![open(Some(other), false)];
    if g.subgroup_size().is_some() {
        v.push(open(None, true));
    }
    v.insert(0, g);
    v
}

/// Every design's tuned table holds legal tilings of that design; the matmul through the table
/// (no tiling given), on a shape of each class that is no multiple of any tile, matches a plain
/// f64 reference, and equals, value for value, the fixed rule's result: no candidate rounds
/// differently (each design sums every output over k in order; see `ops::tune`).
#[test]
fn tuned_tilings_are_legal_and_match_an_f64_reference_in_every_design() {
    let dir = temp_dir("tune-exact");
    for g in every_design(&dir) {
        let t = tune::table(&g);
        assert_eq!(t.source, TuneSource::Tuned);
        assert_eq!(t.choices.len(), CLASSES.len());
        let design = MatmulTiling::fixed_rule(&g, 1024, 64, 1).design;
        for (i, c) in t.choices.iter().enumerate() {
            assert_eq!(c.class, CLASSES[i]);
            for tiling in [c.tiling, c.rule] {
                assert_eq!(tiling.design, design, "{tiling:?}");
                tiling.validate(&g).unwrap();
            }
            assert!(c.gflops >= c.rule_gflops && c.rule_gflops > 0.0, "{c:?}");
            assert!(c.differed.is_empty(), "{c:?}");
            // Odd sizes in the same class: M + 3, K - 3, N - 5.
            let (m, k, n) = (c.class.m + 3, c.class.k - 3, c.class.n - 5);
            assert_eq!(class_of(m, n, k, 1), Some(i));
            let chosen = MatmulTiling::choose(&g, m, n, k, 1);
            chosen.validate(&g).unwrap();
            if c.tiling == c.rule {
                assert_eq!(chosen, MatmulTiling::fixed_rule(&g, m, n, 1));
            } else if design != MatmulDesign::Lanes {
                assert_eq!(chosen, c.tiling);
            }
            let a = common::rand_vec(m * k, 10 + i as u64);
            let b = common::rand_vec(k * n, 20 + i as u64);
            let ta = Tensor::from_slice(&g, &[m, k], &a).unwrap();
            let tb = Tensor::from_slice(&g, &[k, n], &b).unwrap();
            let got = ops::matmul(&ta, &tb).unwrap().to_vec().unwrap();
            let rule = MatmulSpec {
                tiling: Some(MatmulTiling::fixed_rule(&g, m, n, 1)),
                ..Default::default()
            };
            let by_rule = ops::matmul_with(&ta, &tb, &rule).unwrap().to_vec().unwrap();
            assert!(
                got.iter().zip(&by_rule).all(|(x, y)| x == y),
                "{:?} {}: the tuned tiling rounds differently from the rule's",
                design,
                c.class.name
            );
            let (ad, bd) = (common::f64s(&a), common::f64s(&b));
            let (want, magnitude) = reference(&MatmulCase {
                a: &ad,
                b: &bd,
                batch: 1,
                a_batched: false,
                b_batched: false,
                m,
                k,
                n,
                trans_a: false,
                trans_b: false,
                alpha: 1.0,
                bias: None,
                act: 0,
                c0: None,
            });
            // f32 summation of k products: at most (k + 3) ulps of sum |a b| (as tests/kernels.rs).
            let eps = f32::EPSILON as f64 / 2.0;
            let tol: Vec<f64> = magnitude
                .iter()
                .map(|&mg| 1.2 * (k as f64 + 3.0) * eps * mg + 1e-6)
                .collect();
            common::assert_close(&format!("{design:?} {}", c.class.name), &got, &want, &tol);
        }
    }
}

/// The child half of the host-device test: runs only when the parent sets the marker.
#[test]
fn host_device_child() {
    let Ok(expect) = std::env::var("RECTIFLOW_TUNE_TEST_EXPECT") else {
        return;
    };
    use rectiflow::wgpu;
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .expect("an adapter");
    // Subgroups where the adapter has them (the quickest design to tune on lavapipe).
    let desc = wgpu::DeviceDescriptor {
        required_features: adapter.features() & wgpu::Features::SUBGROUP,
        ..Default::default()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&desc)).unwrap();
    match Gpu::from_device(device, queue) {
        Ok(g) => {
            let t = tune::table(&g);
            assert_eq!(t.source.to_string(), expect);
            if t.source == TuneSource::Tuned {
                assert!(t.path.as_ref().is_some_and(|p| p.exists()));
            }
        }
        Err(e) => {
            assert_eq!(expect, "error");
            assert!(e.to_string().contains("RECTIFLOW_TUNE"), "{e}");
        }
    }
}

/// A host's device (`Gpu::from_device`) follows `RECTIFLOW_TUNE` and `RECTIFLOW_CACHE_DIR` as
/// a device of rectiflow's own does.
#[test]
fn a_host_device_is_tuned_alike() {
    let dir = temp_dir("tune-host");
    let child = |tune: Option<&str>, expect: &str| {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "host_device_child", "--test-threads=1"])
            .env("RECTIFLOW_CACHE_DIR", &dir)
            .env("RECTIFLOW_TUNE_TEST_EXPECT", expect);
        match tune {
            Some(v) => cmd.env("RECTIFLOW_TUNE", v),
            None => cmd.env_remove("RECTIFLOW_TUNE"),
        };
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    child(None, "tuned");
    child(None, "cache");
    child(Some("off"), "rules");
    child(Some("force"), "tuned");
    child(Some("bogus"), "error");
}
