//! The typed training configuration: the flow settings, the data and the model kind are enums
//! written in their old text form, so configurations written before the types existed load
//! unchanged; values that do not parse or are out of range are refused, naming them.

use rectiflow::data::{DataSpec, Toy};
use rectiflow::flow::{Prediction, Schedule, TimeSampler, Weighting};
use rectiflow::train::{ModelKind, TrainConfig};
use rectiflow::Solver;
use std::path::PathBuf;

/// A `config.json` as the command line wrote it before the configuration was typed.
const OLD_CONFIG: &str = r#"{
  "data": "toy:moons",
  "model": {
    "kind": "mlp",
    "width": 32,
    "depth": 1,
    "heads": 4,
    "patch": 2,
    "shape": [
      2
    ],
    "classes": 0,
    "context_dim": 0
  },
  "schedule": "rf",
  "prediction": "eps",
  "weighting": null,
  "t_sampler": "lognorm:0,1",
  "steps": 30,
  "batch": 32,
  "lr": 0.002,
  "warmup": 100,
  "ema_decay": 0.999,
  "max_grad_norm": 1.0,
  "label_dropout": 0.1,
  "seed": 0
}"#;

#[test]
fn old_configurations_load_into_the_types_and_write_back_the_same_text() {
    let c = TrainConfig::from_json(OLD_CONFIG).unwrap();
    assert_eq!(c.data, DataSpec::Toy(Toy::Moons));
    assert_eq!(c.schedule, Schedule::RectifiedFlow);
    assert_eq!(c.prediction, Prediction::Eps);
    assert_eq!(c.weighting, None);
    assert_eq!(c.weighting(), Weighting::Eps);
    assert_eq!(c.t_sampler, TimeSampler::LogNormal { m: 0.0, s: 1.0 });
    assert_eq!(ModelKind::parse(&c.model.kind).unwrap(), ModelKind::Mlp);
    assert_eq!(c.to_json(), OLD_CONFIG, "the text form is unchanged");
    c.validate().unwrap();
    assert_eq!(c.default_clip_x0(), Some(4.0));
}

#[test]
fn every_setting_round_trips_through_json() {
    let digits_dit = ModelKind::Dit.config(&[1, 8, 8], 10);
    let idx = DataSpec::Idx {
        images: PathBuf::from("/data/train-images.idx.gz"),
        labels: Some(PathBuf::from("/data/train-labels.idx")),
    };
    for (schedule, prediction, weighting, t_sampler, data) in [
        (
            Schedule::Cosine,
            Prediction::V,
            Some(Weighting::Velocity),
            TimeSampler::Mode { s: 1.29 },
            DataSpec::Digits,
        ),
        (
            Schedule::Edm { pm: -1.2, ps: 1.2 },
            Prediction::X0,
            Some(Weighting::Edm { pm: -1.2, ps: 1.2 }),
            TimeSampler::CosMap,
            idx.clone(),
        ),
        (
            Schedule::LdmLinear,
            Prediction::Velocity,
            None,
            TimeSampler::Uniform,
            DataSpec::Host("frames".into()),
        ),
    ] {
        let c = TrainConfig {
            schedule,
            prediction,
            weighting,
            t_sampler,
            ..TrainConfig::new(data, digits_dit.clone())
        };
        c.validate().unwrap();
        let back = TrainConfig::from_json(&c.to_json()).unwrap();
        assert_eq!(back, c);
    }
    // The text forms, as the flags take them.
    let json = serde_json::to_value(TrainConfig {
        schedule: Schedule::Edm { pm: -1.2, ps: 1.2 },
        ..TrainConfig::new(idx, digits_dit)
    })
    .unwrap();
    assert_eq!(json["schedule"], "edm:-1.2,1.2");
    assert_eq!(
        json["data"],
        "idx:/data/train-images.idx.gz,/data/train-labels.idx"
    );
    assert_eq!(json["t_sampler"], "lognorm:0,1");
    assert_eq!(serde_json::to_value(Solver::Heun).unwrap(), "heun");
    assert_eq!(serde_json::to_value(ModelKind::Mmdit).unwrap(), "mmdit");
}

#[test]
fn values_that_do_not_parse_or_fit_are_refused_by_name() {
    let base: serde_json::Value = serde_json::from_str(OLD_CONFIG).unwrap();
    for (key, value, want) in [
        ("prediction", "bogus", "unknown prediction \"bogus\""),
        ("schedule", "edm:0,-1", "edm:0,-1"),
        ("t_sampler", "mode:5", "mode:5"),
        ("weighting", "edm:nan,1", "edm:NaN,1"),
        ("data", "toy:circles", "unknown toy \"circles\""),
        ("data", "mnist", "unknown data \"mnist\""),
    ] {
        let mut c = base.clone();
        c[key] = value.into();
        let e = TrainConfig::from_json(&c.to_string())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{key} = {value}: {e}");
    }
    // Values built in code skip the parsers; validation checks them the same way.
    let ok = TrainConfig::from_json(OLD_CONFIG).unwrap();
    for (c, want) in [
        (
            TrainConfig {
                t_sampler: TimeSampler::Mode { s: 5.0 },
                ..ok.clone()
            },
            "mode:5",
        ),
        (
            TrainConfig {
                schedule: Schedule::Edm {
                    pm: 0.0,
                    ps: f64::INFINITY,
                },
                ..ok.clone()
            },
            "edm:0,inf",
        ),
        (
            TrainConfig {
                weighting: Some(Weighting::Edm {
                    pm: f64::NAN,
                    ps: 1.0,
                }),
                ..ok.clone()
            },
            "edm:NaN,1",
        ),
        (
            TrainConfig {
                lr: f32::INFINITY,
                ..ok.clone()
            },
            "--lr inf",
        ),
        (
            TrainConfig {
                steps: 0,
                ..ok.clone()
            },
            "--steps 0",
        ),
        (
            TrainConfig {
                batch: 0,
                ..ok.clone()
            },
            "--batch 0",
        ),
    ] {
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(want), "wanted {want:?} in {e}");
    }
}

#[test]
fn data_specs_and_model_kinds_parse_their_text_forms() {
    for text in [
        "digits",
        "toy:checkerboard",
        "toy:8gaussians",
        "idx:a.idx",
        "idx:a.idx,b.idx",
        "host:camera",
    ] {
        let spec = DataSpec::parse(text).unwrap();
        assert_eq!(spec.to_string(), text);
    }
    assert_eq!(DataSpec::Toy(Toy::Spirals).is_image(), Some(false));
    assert_eq!(DataSpec::Digits.is_image(), Some(true));
    assert_eq!(DataSpec::Host("x".into()).is_image(), None);
    assert_eq!(
        DataSpec::parse("idx:/d/img.idx,/d/lab.idx")
            .unwrap()
            .dir_name(),
        "idx__d_img.idx"
    );
    for bad in ["", "idx:", "host:", "toy:", "digit"] {
        assert!(DataSpec::parse(bad).is_err(), "{bad:?}");
    }
    let e = DataSpec::Host("frames".into())
        .load(0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("host:frames"), "{e}");
    assert_eq!(Toy::ALL.map(Toy::name), rectiflow::data::TOYS);
    for kind in [ModelKind::Mlp, ModelKind::Dit, ModelKind::Mmdit] {
        assert_eq!(ModelKind::parse(kind.name()).unwrap(), kind);
        let m = kind.config(&[1, 8, 8], 10);
        assert_eq!(m.kind, kind.name());
        m.validate().unwrap();
    }
    assert!(ModelKind::parse("unet")
        .unwrap_err()
        .to_string()
        .contains("dit, mmdit or mlp"));
    // The defaults of the command line.
    let c = TrainConfig::new(DataSpec::Digits, ModelKind::Dit.config(&[1, 8, 8], 10));
    assert_eq!((c.steps, c.batch, c.lr, c.warmup), (1600, 64, 2e-3, 100));
    let p = TrainConfig::new(DataSpec::Toy(Toy::Moons), ModelKind::Mlp.config(&[2], 0));
    assert_eq!(
        (p.steps, p.batch, p.model.width, p.model.depth),
        (1500, 256, 256, 3)
    );
}
