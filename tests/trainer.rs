//! Training from code: a step on a batch the host brings equals a step on the same batch drawn
//! from the trainer's own data; bad batches are refused before anything runs; a trainer saved
//! and reloaded continues bit for bit; the run loop reports progress, stops when asked and
//! resumes.

mod common;

use common::tiny::tiny_dit;

use common::gpu;
use rectiflow::data::{self, DataSpec, GpuDataset, Toy};
use rectiflow::train::run::CHECKPOINT_FILE;
use rectiflow::train::{Event, ModelKind, Run, RunEnd, RunOptions, TrainConfig, Trainer};
use rectiflow::{Error, Tensor};
use std::path::PathBuf;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rectiflow-trainer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn dit_config() -> TrainConfig {
    tiny_dit()
}

fn moons_config(steps: u64) -> TrainConfig {
    let mut model = ModelKind::Mlp.config(&[2], 0);
    (model.width, model.depth) = (16, 1);
    TrainConfig {
        steps,
        batch: 32,
        warmup: 0,
        ..TrainConfig::new(DataSpec::Toy(Toy::Moons), model)
    }
}

#[test]
fn a_step_on_the_hosts_batch_equals_a_step_on_the_same_drawn_batch() {
    let digits = data::digits().unwrap();
    let config = dit_config();
    let mut own = Trainer::new(gpu(), config.clone(), &digits).unwrap();
    let mut hosted = Trainer::without_data(gpu(), config.clone()).unwrap();
    let drawn = GpuDataset::upload(gpu(), &digits, 10).unwrap();
    for step in 0..3 {
        own.step().unwrap();
        // The batch the trainer drew, handed over by the host as [B, C, H, W] and u32 labels.
        let (x, labels) = drawn.batch(config.batch, config.seed, step).unwrap();
        let images = x.reshape(&[config.batch, 1, 8, 8]).unwrap();
        let labels: Vec<u32> = labels.to_vec().unwrap().iter().map(|&l| l as u32).collect();
        hosted.step_on(&images, Some(&labels)).unwrap();
        assert_eq!(own.read_loss().unwrap(), hosted.read_loss().unwrap());
    }
    assert_eq!(
        own.params.values().to_vec().unwrap(),
        hosted.params.values().to_vec().unwrap()
    );
    assert_eq!(hosted.step, 3);
    // Flat rows [B, C*H*W] are taken too, and a batch size other than the configuration's.
    let flat = Tensor::from_slice(gpu(), &[3, 64], &digits.x[..3 * 64]).unwrap();
    hosted.step_on(&flat, Some(&[1, 2, 10])).unwrap();
    assert!(hosted.read_loss().unwrap().is_finite());
}

#[test]
fn batches_that_do_not_fit_the_model_are_refused() {
    let mut tr = Trainer::without_data(gpu(), dit_config()).unwrap();
    let e = tr.step().unwrap_err();
    assert!(
        matches!(e, Error::Config(_)) && e.to_string().contains("step_on"),
        "{e}"
    );
    let images = |shape: &[usize]| Tensor::zeros(gpu(), shape).unwrap();
    for (batch, labels, want) in [
        (images(&[4, 1, 8, 9]), None, "[B, 1, 8, 8]"),
        (images(&[4, 8, 8]), None, "[B, 1, 8, 8]"),
        (images(&[0, 1, 8, 8]), None, "B >= 1"),
        (
            images(&[2, 1, 8, 8]),
            Some(vec![1]),
            "1 labels for a batch of 2",
        ),
        (images(&[2, 1, 8, 8]), Some(vec![1, 11]), "label 11"),
    ] {
        let e = tr.step_on(&batch, labels.as_deref()).unwrap_err();
        assert!(e.to_string().contains(want), "wanted {want:?} in {e}");
    }
    assert_eq!(tr.step, 0, "nothing was trained");
}

#[test]
fn a_saved_trainer_continues_bit_for_bit() {
    let digits = data::digits().unwrap();
    let dir = temp_dir("continue");
    let path = dir.join("checkpoint.safetensors");
    let mut a = Trainer::new(gpu(), dit_config(), &digits).unwrap();
    for _ in 0..3 {
        a.step().unwrap();
    }
    a.save(&path).unwrap();
    let mut b = Trainer::from_checkpoint(gpu(), &path, Some(&digits)).unwrap();
    assert_eq!(b.step, 3);
    for _ in 0..3 {
        a.step().unwrap();
        b.step().unwrap();
    }
    assert_eq!(
        a.params.values().to_vec().unwrap(),
        b.params.values().to_vec().unwrap()
    );
    assert_eq!(a.opt.ema().to_vec().unwrap(), b.opt.ema().to_vec().unwrap());
    // Data that does not fit the checkpoint's model is refused.
    let toy = data::toy("moons", 10, 0).unwrap();
    assert!(Trainer::from_checkpoint(gpu(), &path, Some(&toy)).is_err());
}

#[test]
fn a_run_reports_progress_stops_when_asked_and_resumes() {
    let dir = temp_dir("run").join("moons");
    let toy = data::toy("moons", 500, 0).unwrap();
    let opts = RunOptions {
        log_every: 2,
        checkpoint_every: 4,
        sample_every: 0,
        grid_samples: Some(40),
        catch_signals: false,
    };
    let mut run = Run::create(
        gpu(),
        &dir,
        moons_config(6),
        Some(&toy),
        false,
        opts.clone(),
    )
    .unwrap();
    assert!(dir.join("config.json").exists() && dir.join(".lock").exists());
    let mut events = Vec::new();
    let end = run
        .run(|e| {
            events.push(match e {
                Event::Step { step, steps } => format!("step {step}/{steps}"),
                Event::Loss { step, loss, .. } => {
                    assert!(loss.is_finite());
                    format!("loss {step}")
                }
                Event::Samples { step, path } => format!("samples {step} {}", path.display()),
                Event::Checkpoint { step, .. } => format!("checkpoint {step}"),
            })
        })
        .unwrap();
    let RunEnd::Finished(summary) = end else {
        panic!("{end:?}")
    };
    assert_eq!((summary.steps, summary.steps_taken), (6, 6));
    let samples = dir.join("samples.png");
    assert_eq!(
        events,
        [
            "step 1/6".to_string(),
            "loss 2".into(),
            "step 2/6".into(),
            "step 3/6".into(),
            "loss 4".into(),
            "checkpoint 4".into(),
            "step 4/6".into(),
            "step 5/6".into(),
            "loss 6".into(),
            format!("samples 6 {}", samples.display()),
            "checkpoint 6".into(),
            "step 6/6".into(),
        ]
    );
    for f in ["metrics.json", "samples.npy", "labels.npy", CHECKPOINT_FILE] {
        assert!(dir.join(f).exists(), "{f}");
    }
    // The directory is locked while the run lives, and holds a run afterwards.
    let e = Run::open(gpu(), &dir).err().unwrap();
    assert!(e.to_string().contains("in use"), "{e}");
    drop(run);
    let e = Run::create(
        gpu(),
        &dir,
        moons_config(6),
        Some(&toy),
        false,
        opts.clone(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("already holds a run"), "{e}");

    // Resume: a changed learning rate needs consent; more steps do not.
    let resumable = Run::open(gpu(), &dir).unwrap();
    assert_eq!(
        (resumable.step(), resumable.config()),
        (6, &moons_config(6))
    );
    let changed = TrainConfig {
        lr: 0.01,
        ..moons_config(10)
    };
    let e = resumable
        .resume(gpu(), changed, Some(&toy), false, opts.clone())
        .err()
        .unwrap();
    assert!(e.to_string().contains("--lr 0.002 -> 0.01"), "{e}");
    let resumable = Run::open(gpu(), &dir).unwrap();
    let mut run = resumable
        .resume(gpu(), moons_config(10), Some(&toy), false, opts.clone())
        .unwrap();
    assert_eq!(run.changes().len(), 1);
    assert_eq!(run.changes()[0].to_string(), "--steps 6 -> 10");
    // Asked to stop before the next step ends: it saves at that step and says so.
    run.stop_handle().stop();
    let end = run.run(|_| {}).unwrap();
    assert_eq!(
        end,
        RunEnd::Stopped {
            signal: None,
            step: 7,
            checkpoint: dir.join(CHECKPOINT_FILE),
        }
    );
    let ck = rectiflow::checkpoint::Checkpoint::load(&dir.join(CHECKPOINT_FILE)).unwrap();
    assert_eq!(ck.step, 7);
    drop(run);

    // A run on the program's own batches: the same cadence and files, no data set loaded.
    let dir = dir.with_file_name("hosted");
    let config = TrainConfig {
        data: DataSpec::Host("moons".into()),
        ..moons_config(4)
    };
    let mut run = Run::create(gpu(), &dir, config, None, false, opts).unwrap();
    let e = run.run(|_| {}).unwrap_err();
    assert!(e.to_string().contains("step_on"), "{e}");
    let mut asked = Vec::new();
    let end = run
        .run_on(
            |step| {
                asked.push(step);
                let points = Toy::Moons.sample(32, step).unwrap();
                Ok((Tensor::from_slice(gpu(), &[32, 2], &points.x)?, None))
            },
            |_| {},
        )
        .unwrap();
    assert!(matches!(end, RunEnd::Finished(_)), "{end:?}");
    assert_eq!(asked, [0, 1, 2, 3]);
    let ck = rectiflow::checkpoint::Checkpoint::load(&dir.join(CHECKPOINT_FILE)).unwrap();
    assert_eq!(ck.step, 4);
    assert!(dir.join("samples.png").exists());
}
