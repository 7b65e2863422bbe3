//! Checkpoints: a saved run loads back and continues bit for bit; corrupt or mismatched files
//! are refused with an error that says what is wrong.

mod common;

use common::gpu;
use common::tiny::{config, temp_dir};
use rectiflow::checkpoint::Checkpoint;
use rectiflow::data;
use rectiflow::train::{TrainConfig, Trainer};

#[test]
fn checkpoints_round_trip_and_resume_continues_bit_for_bit() {
    let digits = data::digits().unwrap();
    let cfg = config(&digits, "dit", 16);
    let dir = temp_dir("resume");
    let path = dir.join("checkpoint.safetensors");

    let mut a = Trainer::new(gpu(), cfg.clone(), &digits).unwrap();
    for _ in 0..6 {
        a.step().unwrap();
    }
    a.checkpoint().unwrap().save(&path).unwrap();
    assert!(
        !dir.join("checkpoint.safetensors.tmp").exists(),
        "the temporary file was renamed"
    );
    for _ in 0..6 {
        a.step().unwrap();
    }

    let loaded = Checkpoint::load(&path).unwrap();
    assert_eq!(loaded.step, 6);
    assert_eq!(TrainConfig::from_json(&loaded.config).unwrap(), cfg);
    let mut b = Trainer::new(gpu(), cfg.clone(), &digits).unwrap();
    b.restore(&loaded, &path).unwrap();
    // Saving what was restored gives the same checkpoint.
    assert_eq!(b.checkpoint().unwrap(), loaded);
    for _ in 0..6 {
        b.step().unwrap();
    }
    assert_eq!(
        a.params.values().to_vec().unwrap(),
        b.params.values().to_vec().unwrap(),
        "weights after resuming"
    );
    assert_eq!(
        a.opt.ema().to_vec().unwrap(),
        b.opt.ema().to_vec().unwrap(),
        "EMA after resuming"
    );
    assert_eq!(a.read_loss().unwrap(), b.read_loss().unwrap());
}

#[test]
fn corrupt_or_mismatched_checkpoints_are_refused_clearly() {
    let digits = data::digits().unwrap();
    let dir = temp_dir("corrupt");
    let good = dir.join("good.safetensors");
    let tr = Trainer::new(gpu(), config(&digits, "dit", 16), &digits).unwrap();
    tr.checkpoint().unwrap().save(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();

    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = Checkpoint::load(&truncated).unwrap_err().to_string();
    assert!(
        err.contains("truncated.safetensors") && err.contains("not a usable"),
        "{err}"
    );

    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a checkpoint at all").unwrap();
    assert!(Checkpoint::load(&garbage)
        .unwrap_err()
        .to_string()
        .contains("not a usable"));

    let missing = dir.join("missing.safetensors");
    assert!(Checkpoint::load(&missing)
        .unwrap_err()
        .to_string()
        .contains("cannot read checkpoint"));

    // A checkpoint of another model size is refused by name and shape.
    let ck = Checkpoint::load(&good).unwrap();
    let mut wider = Trainer::new(gpu(), config(&digits, "dit", 32), &digits).unwrap();
    let err = wider.restore(&ck, &good).unwrap_err().to_string();
    assert!(
        err.contains("shape") && err.contains("good.safetensors"),
        "{err}"
    );
    // And one that lacks a parameter.
    let mut partial = ck.clone();
    partial.params.remove("final_layer.linear.weight");
    let mut same = Trainer::new(gpu(), config(&digits, "dit", 16), &digits).unwrap();
    let err = same.restore(&partial, &good).unwrap_err().to_string();
    assert!(err.contains("final_layer.linear.weight"), "{err}");
}
