//! Loading a checkpoint in one call: the configuration rebuilds the model, the chosen weights
//! (raw or EMA) are the checkpoint's, sampling gives what the trainer's weights give, a saved
//! pipeline loads back, and files that are not usable checkpoints are refused by kind.

mod common;

use common::gpu;
use rectiflow::checkpoint::Checkpoint;
use rectiflow::data::{self, DataSpec};
use rectiflow::sample::{sample, SampleOptions};
use rectiflow::train::{ModelKind, TrainConfig, Trainer};
use rectiflow::{Error, Pipeline, Tensor, Weights};
use std::path::PathBuf;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rectiflow-pipe-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tiny_dit(steps: usize) -> Trainer {
    let digits = data::digits().unwrap();
    let mut model = ModelKind::Dit.config(&digits.shape, 10);
    (model.width, model.depth, model.heads) = (16, 1, 2);
    let config = TrainConfig {
        batch: 16,
        ema_decay: 0.5,
        ..TrainConfig::new(DataSpec::Digits, model)
    };
    let mut tr = Trainer::new(gpu(), config, &digits).unwrap();
    for _ in 0..steps {
        tr.step().unwrap();
    }
    tr
}

#[test]
fn a_loaded_pipeline_holds_the_checkpoints_weights_and_samples_like_the_trainer() {
    let tr = tiny_dit(4);
    let dir = temp_dir("load");
    let path = dir.join("checkpoint.safetensors");
    tr.save(&path).unwrap();
    let raw = Pipeline::load(gpu(), &path, Weights::Raw).unwrap();
    let ema = Pipeline::load(gpu(), &path, Weights::Ema).unwrap();
    assert_eq!(
        raw.params().values().to_vec().unwrap(),
        tr.params.values().to_vec().unwrap()
    );
    assert_eq!(
        ema.params().values().to_vec().unwrap(),
        tr.opt.ema().to_vec().unwrap()
    );
    assert_ne!(
        raw.params().values().to_vec().unwrap(),
        ema.params().values().to_vec().unwrap(),
        "the two sets differ"
    );
    assert_eq!(
        (raw.step(), raw.weights(), raw.classes()),
        (4, Weights::Raw, 10)
    );
    assert_eq!(raw.example_shape(), [1, 8, 8]);
    assert_eq!(raw.config(), &tr.config);
    // Samples are [n, C, H, W] and equal the trainer's own.
    let opts = raw.options(raw.labels(12));
    assert_eq!(opts.labels, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
    assert_eq!((opts.cfg, opts.steps, opts.clip_x0), (2.0, 20, None));
    let samples = raw.sample(&opts).unwrap();
    assert_eq!(samples.shape(), [12, 1, 8, 8]);
    let want = sample(&tr.model, &tr.params, &tr.flow, 64, 10, &opts).unwrap();
    assert_eq!(samples.to_vec().unwrap(), want.to_vec().unwrap());
    // From the trainer directly: a copy, which training on does not change.
    let mut tr = tr;
    let copy = Pipeline::from_trainer(&tr, Weights::Ema).unwrap();
    let before = copy.params().values().to_vec().unwrap();
    assert_eq!(before, tr.opt.ema().to_vec().unwrap());
    tr.step().unwrap();
    assert_eq!(copy.params().values().to_vec().unwrap(), before);
    assert_ne!(tr.opt.ema().to_vec().unwrap(), before);
}

#[test]
fn a_saved_pipeline_loads_back_as_a_checkpoint() {
    let tr = tiny_dit(2);
    let dir = temp_dir("save");
    let pipe = Pipeline::from_trainer(&tr, Weights::Ema).unwrap();
    let path = dir.join("export.safetensors");
    pipe.save(&path).unwrap();
    let weights = pipe.params().values().to_vec().unwrap();
    for w in [Weights::Raw, Weights::Ema] {
        let back = Pipeline::load(gpu(), &path, w).unwrap();
        assert_eq!(back.params().values().to_vec().unwrap(), weights);
        assert_eq!((back.step(), back.config()), (2, &tr.config));
    }
    let ck = Checkpoint::load(&path).unwrap();
    assert!(ck.adam_m.values().all(|m| m.iter().all(|&v| v == 0.0)));
    // It resumes as training state too.
    let resumed = Trainer::from_checkpoint(gpu(), &path, None).unwrap();
    assert_eq!(resumed.params.values().to_vec().unwrap(), weights);
    assert_eq!(resumed.step, 2);
    // Host noise of the wrong shape is refused; of the right shape, used.
    let noise = Tensor::zeros(gpu(), &[3, 64]).unwrap();
    let opts = SampleOptions::new(vec![0, 1, 2]);
    assert!(matches!(
        pipe.sampler_from_noise(&noise, &opts).err().unwrap(),
        Error::Shape(_)
    ));
    let noise = noise.reshape(&[3, 1, 8, 8]).unwrap();
    assert!(pipe
        .sampler_from_noise(&noise, &opts)
        .unwrap()
        .finish()
        .is_ok());
}

#[test]
fn files_that_are_not_usable_checkpoints_are_refused_by_kind() {
    let dir = temp_dir("bad");
    let e = Pipeline::load(gpu(), dir.join("missing.safetensors"), Weights::Ema)
        .err()
        .unwrap();
    assert!(
        matches!(e, Error::Io(_)) && e.to_string().contains("missing"),
        "{e}"
    );
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"not a checkpoint, only some text here").unwrap();
    let e = Pipeline::load(gpu(), &garbage, Weights::Ema).err().unwrap();
    assert!(matches!(e, Error::Checkpoint(_)), "{e:?}");
    // Tensors that do not match the configuration's model.
    let tr = tiny_dit(0);
    let mut ck = tr.checkpoint().unwrap();
    ck.ema.remove("final_layer.linear.bias");
    let partial = dir.join("partial.safetensors");
    ck.save(&partial).unwrap();
    let e = Pipeline::load(gpu(), &partial, Weights::Raw).err().unwrap();
    assert!(
        matches!(e, Error::Checkpoint(_)) && e.to_string().contains("ema.final_layer.linear.bias"),
        "{e}"
    );
    // A configuration that does not parse.
    let mut ck = tr.checkpoint().unwrap();
    ck.config = ck.config.replace("\"rf\"", "\"straight\"");
    let odd = dir.join("odd.safetensors");
    ck.save(&odd).unwrap();
    let e = Pipeline::load(gpu(), &odd, Weights::Raw).err().unwrap();
    assert!(
        matches!(e, Error::Config(_)) && e.to_string().contains("straight"),
        "{e}"
    );
}
