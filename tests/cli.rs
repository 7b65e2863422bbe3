//! The command line: `train`, `sample` and `eval` end to end on tiny runs, and existing runs
//! protected.

mod common;

use common::tiny::temp_dir;
use rectiflow::checkpoint::Checkpoint;
use rectiflow::output::npy_header;

#[test]
fn the_command_line_trains_samples_and_protects_existing_runs() {
    let bin = env!("CARGO_BIN_EXE_rectiflow");
    let dir = temp_dir("cli");
    let out = dir.join("run");
    let train = |extra: &[&str]| {
        let steps = if extra.contains(&"--resume") {
            "30"
        } else {
            "20"
        };
        let mut args = vec![
            "train",
            "--data",
            "toy:moons",
            "--model",
            "mlp",
            "--steps",
            steps,
            "--batch",
            "32",
            "--width",
            "16",
            "--depth",
            "1",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        std::process::Command::new(bin)
            .args(&args)
            .output()
            .unwrap()
    };
    let r = train(&[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for f in [
        "config.json",
        "checkpoint.safetensors",
        "metrics.json",
        "samples.png",
        "samples.npy",
        "labels.npy",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let before = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
    // A second run into the same directory is refused and leaves it untouched.
    let r = train(&[]);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("--resume"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(
        std::fs::read(out.join("checkpoint.safetensors")).unwrap(),
        before
    );
    // Resume to more steps.
    let r = train(&["--resume"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        Checkpoint::load(&out.join("checkpoint.safetensors"))
            .unwrap()
            .step,
        30
    );
    // Bad settings fail before anything is written.
    let r = std::process::Command::new(bin)
        .args([
            "train",
            "--t-sampler",
            "mode:5",
            "--out",
            dir.join("bad").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stderr).contains("mode:5"));
    assert!(!dir.join("bad").exists());
    // A diverging run stops with the step named and writes no checkpoint.
    let blown = dir.join("blown");
    let r = std::process::Command::new(bin)
        .args([
            "train",
            "--data",
            "toy:moons",
            "--model",
            "mlp",
            "--width",
            "16",
            "--depth",
            "1",
            "--steps",
            "40",
            "--batch",
            "32",
            "--lr",
            "1e30",
            "--warmup",
            "0",
            "--log-every",
            "5",
            "--quiet",
            "--out",
            blown.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("the loss became") && err.contains("at step"),
        "{err}"
    );
    assert!(!blown.join("checkpoint.safetensors").exists());
    // Sample from the checkpoint.
    let png = dir.join("s").join("grid.png");
    let r = std::process::Command::new(bin)
        .args([
            "sample",
            "--checkpoint",
            out.join("checkpoint.safetensors").to_str().unwrap(),
            "--n",
            "50",
            "--steps",
            "3",
            "--out",
            png.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let npy = std::fs::read(dir.join("s").join("samples.npy")).unwrap();
    assert_eq!(npy.len(), npy_header("<f4", &[50, 2]).len() + 50 * 2 * 4);
    let out_text = String::from_utf8_lossy(&r.stdout);
    assert!(
        out_text.contains("euler 3 steps, 3 network evaluations (NFE)"),
        "{out_text}"
    );
    // The adaptive solver reports its steps and evaluations (one at the start, six per
    // attempted step).
    let r = std::process::Command::new(bin)
        .args([
            "sample",
            "--checkpoint",
            out.join("checkpoint.safetensors").to_str().unwrap(),
            "--n",
            "20",
            "--solver",
            "rk45",
            "--rtol",
            "1e-3",
            "--atol",
            "1e-3",
            "--out",
            png.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let out_text = String::from_utf8_lossy(&r.stdout);
    let nfe: usize = out_text
        .split(" steps, ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no NFE in {out_text}"));
    assert!(
        out_text.contains("rk45 ") && nfe > 6 && nfe % 6 == 1,
        "{out_text}"
    );
    // eval reports the path straightness beside the sample metrics, in its table and JSON.
    let json = dir.join("s").join("eval.json");
    let r = std::process::Command::new(bin)
        .args([
            "eval",
            "--checkpoint",
            out.join("checkpoint.safetensors").to_str().unwrap(),
            "--n",
            "30",
            "--rtol",
            "1e-3",
            "--atol",
            "1e-3",
            "--json",
            json.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let out_text = String::from_utf8_lossy(&r.stdout);
    assert!(
        out_text.contains("path straightness (rk45)")
            && out_text.contains("along the rk45 paths of 30 samples"),
        "{out_text}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let s = &report["straightness"];
    assert_eq!(s["samples"], 30, "{report}");
    let row = report["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == "path straightness (rk45)")
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(row["value"], s["value"]);
    assert!(s["value"].as_f64().unwrap() >= 0.0 && s["nfe"].as_u64().unwrap() > 6);
}

/// `train --f16` records the setting in the run's configuration (so a resumed run keeps it) and
/// trains; `sample --f16` samples any checkpoint with f16 weights. Where the adapter has no
/// `SHADER_F16`, both are refused with an error that says so.
#[test]
fn the_command_line_trains_and_samples_with_f16_weights() {
    let bin = env!("CARGO_BIN_EXE_rectiflow");
    let dir = temp_dir("cli-f16");
    let out = dir.join("run");
    let r = std::process::Command::new(bin)
        .args([
            "train",
            "--data",
            "toy:moons",
            "--model",
            "mlp",
            "--steps",
            "20",
            "--batch",
            "32",
            "--width",
            "16",
            "--depth",
            "1",
            "--quiet",
            "--f16",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    if !common::gpu().has_f16() {
        assert!(
            !r.status.success() && stderr.contains("SHADER_F16"),
            "{stderr}"
        );
        return;
    }
    assert!(r.status.success(), "{stderr}");
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(config.contains("\"f16\": true"), "{config}");
    let png = dir.join("f16.png");
    let r = std::process::Command::new(bin)
        .args(["sample", "--n", "64", "--f16", "--checkpoint"])
        .arg(out.join("checkpoint.safetensors"))
        .arg("--out")
        .arg(&png)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(png.exists() && dir.join("samples.npy").exists());
    // A resumed run keeps f16 weights without the flag.
    let resume = |steps: &str, extra: &[&str]| {
        std::process::Command::new(bin)
            .args([
                "train",
                "--data",
                "toy:moons",
                "--model",
                "mlp",
                "--quiet",
                "--resume",
            ])
            .args(["--steps", steps])
            .args(extra)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap()
    };
    let r = resume("25", &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(config.contains("\"f16\": true"), "{config}");
    // Turning it off is a change of the run's settings: refused without consent, then taken
    // (the setting leaves the configuration: f32 is the default).
    let r = resume("30", &["--f16=false"]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && stderr.contains("--f16"), "{stderr}");
    let r = resume("30", &["--f16=false", "--allow-changes"]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    assert!(
        stderr.contains("--f16 unset (the run had true)"),
        "{stderr}"
    );
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(!config.contains("f16"), "{config}");
}
