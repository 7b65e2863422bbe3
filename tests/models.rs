//! The networks' parameter layouts: names and shapes a checkpoint (and PyTorch) relies on.

use rectiflow::nn::mmdit::{Mmdit, Upgrade};
use rectiflow::nn::{Model, ModelConfig};
use rectiflow::params::ParamsBuilder;

fn mmdit_config(depth: usize) -> ModelConfig {
    ModelConfig {
        kind: "mmdit".into(),
        width: 16,
        depth,
        heads: 2,
        patch: 2,
        shape: vec![1, 8, 8],
        classes: 10,
        context_dim: 0,
    }
}

fn shapes(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let mut b = ParamsBuilder::new();
    Model::build(config, &mut b).unwrap();
    b.specs()
        .iter()
        .map(|s| (s.name.clone(), s.shape.clone()))
        .collect()
}

/// As in SD3, the last joint block's context stream only feeds the attention: its adaLN gives
/// shift and scale, and it has no output projection and no MLP; earlier blocks are full.
#[test]
fn the_last_mmdit_context_block_is_pre_only() {
    let c = mmdit_config(2);
    let s = shapes(&c);
    let get = |name: &str| s.iter().find(|(n, _)| n == name).map(|(_, sh)| sh.clone());
    let w = c.width;
    assert_eq!(
        get("joint_blocks.0.context_block.adaLN_modulation.1.weight"),
        Some(vec![6 * w, w])
    );
    assert_eq!(
        get("joint_blocks.1.context_block.adaLN_modulation.1.weight"),
        Some(vec![2 * w, w])
    );
    assert_eq!(
        get("joint_blocks.1.context_block.adaLN_modulation.1.bias"),
        Some(vec![2 * w])
    );
    assert_eq!(
        get("joint_blocks.1.context_block.attn.qkv.weight"),
        Some(vec![3 * w, w])
    );
    assert!(get("joint_blocks.1.context_block.attn.ln_q.weight").is_some());
    for gone in [
        "attn.proj.weight",
        "attn.proj.bias",
        "mlp.fc1.weight",
        "mlp.fc2.bias",
    ] {
        assert_eq!(
            get(&format!("joint_blocks.1.context_block.{gone}")),
            None,
            "{gone}"
        );
        assert!(
            get(&format!("joint_blocks.0.context_block.{gone}")).is_some(),
            "{gone}"
        );
        assert!(
            get(&format!("joint_blocks.1.x_block.{gone}")).is_some(),
            "{gone}"
        );
    }
}

/// A checkpoint from before (a full last context block) maps onto the pre-only block: the
/// adaLN keeps its first two chunks (shift, scale), the projection and MLP are dropped, and
/// every other tensor is kept; after the mapping its names and shapes are exactly the model's.
#[test]
fn older_mmdit_checkpoints_map_onto_the_pre_only_block() {
    let c = mmdit_config(2);
    let w = c.width;
    // The older layout: the last context block as full as the others.
    let mut old = shapes(&mmdit_config(2));
    let last = "joint_blocks.1.context_block";
    old.retain(|(n, _)| !n.starts_with(last));
    for (name, shape) in shapes(&mmdit_config(2)) {
        if let Some(rest) = name.strip_prefix("joint_blocks.0.context_block") {
            old.push((format!("{last}{rest}"), shape));
        }
    }
    let mut upgraded: Vec<(String, Vec<usize>)> = old
        .into_iter()
        .filter_map(|(name, mut shape)| match Mmdit::upgrade(&c, &name) {
            Upgrade::Keep => Some((name, shape)),
            Upgrade::FirstRows(rows) => {
                assert_eq!(shape[0], 6 * w, "{name}");
                shape[0] = rows;
                Some((name, shape))
            }
            Upgrade::Drop => None,
        })
        .collect();
    let mut now = shapes(&c);
    upgraded.sort();
    now.sort();
    assert_eq!(upgraded, now);
}

/// A two-block DiT and MM-DiT on 8x8 digits (16 wide) and a two-layer MLP on points (32 wide,
/// `mlp_classes` classes).
fn small_networks(mlp_classes: usize) -> [ModelConfig; 3] {
    let digits = ModelConfig {
        kind: "dit".into(),
        width: 16,
        depth: 2,
        heads: 2,
        patch: 2,
        shape: vec![1, 8, 8],
        classes: 10,
        context_dim: 0,
    };
    let mmdit = ModelConfig {
        kind: "mmdit".into(),
        ..digits.clone()
    };
    let mlp = ModelConfig {
        kind: "mlp".into(),
        width: 32,
        depth: 2,
        shape: vec![2],
        classes: mlp_classes,
        ..digits.clone()
    };
    [digits, mmdit, mlp]
}

/// The network on a batch of three: fixed inputs, times 0.1, 0.5 and 0.9, labels 1, 2 and the
/// null class.
fn forward_three(
    gpu: &rectiflow::Gpu,
    model: &Model,
    config: &ModelConfig,
    tape: &mut rectiflow::autograd::Tape,
    params: &rectiflow::params::Params,
) -> rectiflow::autograd::Var {
    let (batch, dim) = (3, config.shape.iter().product::<usize>());
    let z: Vec<f32> = (0..batch * dim).map(|i| (i as f32 * 0.37).sin()).collect();
    let zv = tape.constant(rectiflow::Tensor::from_slice(gpu, &[batch, dim], &z).unwrap());
    let tv = tape.constant(rectiflow::Tensor::from_slice(gpu, &[batch], &[0.1, 0.5, 0.9]).unwrap());
    let labels =
        rectiflow::Tensor::from_slice(gpu, &[batch], &[1.0, 2.0, config.classes as f32]).unwrap();
    model.forward(tape, params, &zv, &tv, &labels).unwrap()
}

/// Sampling (a tape that records nothing) fuses activations into the matmuls; it computes the
/// same network as training's forward pass.
#[test]
fn the_sampling_forward_equals_the_training_forward() {
    use rectiflow::autograd::Tape;
    let gpu = rectiflow::Gpu::new().unwrap();
    for config in small_networks(0) {
        let mut b = ParamsBuilder::new();
        let model = Model::build(&config, &mut b).unwrap();
        let params = b.build(&gpu, 3).unwrap();
        // Random weights everywhere (no zero-initialised layer hides a path).
        let n = params.values().numel();
        let values: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.6)
            .collect();
        params.values().write(&values).unwrap();
        let run = |mut tape: Tape| {
            forward_three(&gpu, &model, &config, &mut tape, &params)
                .value()
                .to_vec()
                .unwrap()
        };
        let (training, sampling) = (run(Tape::new()), run(Tape::no_grad()));
        for (i, (a, b)) in training.iter().zip(&sampling).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
                "{} output {i}: training {a}, sampling {b}",
                config.kind
            );
        }
    }
}

/// A checkpoint in the older MM-DiT layout (a full last context block) loads as the same
/// network: made here from a current checkpoint by giving the last context stream four more
/// adaLN chunks and an output projection and MLP (values that, as before, reach no output),
/// its samples equal the original's.
#[test]
fn an_older_mmdit_checkpoint_loads_as_the_same_network() {
    use rectiflow::checkpoint::Checkpoint;
    use rectiflow::data::{self, DataSpec};
    use rectiflow::train::{ModelKind, TrainConfig, Trainer};
    use rectiflow::{Pipeline, Weights};
    let gpu = rectiflow::Gpu::new().unwrap();
    let digits = data::digits().unwrap();
    let mut model = ModelKind::Mmdit.config(&digits.shape, 10);
    (model.width, model.depth, model.heads) = (16, 2, 2);
    let w = model.width;
    let config = TrainConfig {
        batch: 8,
        ..TrainConfig::new(DataSpec::Digits, model)
    };
    let mut tr = Trainer::new(&gpu, config, &digits).unwrap();
    for _ in 0..3 {
        tr.step().unwrap();
    }
    let dir = std::env::temp_dir().join(format!("rectiflow-models-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (now_path, old_path) = (dir.join("now.safetensors"), dir.join("old.safetensors"));
    tr.save(&now_path).unwrap();
    let mut ck = Checkpoint::load(&now_path).unwrap();
    let last = "joint_blocks.1.context_block";
    let fill = |n: usize, v: f32| vec![v; n];
    for (suffix, rows) in [
        ("adaLN_modulation.1.weight", w),
        ("adaLN_modulation.1.bias", 1),
    ] {
        let name = format!("{last}.{suffix}");
        let (shape, values) = ck.params.get_mut(&name).unwrap();
        assert_eq!(shape[0], 2 * w, "{name} is pre-only today");
        shape[0] = 6 * w;
        values.extend(fill(4 * w * rows, 0.25));
        for map in [&mut ck.ema, &mut ck.adam_m, &mut ck.adam_v] {
            map.get_mut(&name).unwrap().extend(fill(4 * w * rows, 0.5));
        }
    }
    for (suffix, shape) in [
        ("attn.proj.weight", vec![w, w]),
        ("attn.proj.bias", vec![w]),
        ("mlp.fc1.weight", vec![4 * w, w]),
        ("mlp.fc1.bias", vec![4 * w]),
        ("mlp.fc2.weight", vec![w, 4 * w]),
        ("mlp.fc2.bias", vec![w]),
    ] {
        let name = format!("{last}.{suffix}");
        let n: usize = shape.iter().product();
        ck.params.insert(name.clone(), (shape, fill(n, 0.1)));
        for map in [&mut ck.ema, &mut ck.adam_m, &mut ck.adam_v] {
            map.insert(name.clone(), fill(n, 0.1));
        }
    }
    ck.save(&old_path).unwrap();
    let now = Pipeline::load(&gpu, &now_path, Weights::Raw).unwrap();
    let old = Pipeline::load(&gpu, &old_path, Weights::Raw).unwrap();
    let opts = now.options(now.labels(10));
    assert_eq!(
        old.sample(&opts).unwrap().to_vec().unwrap(),
        now.sample(&opts).unwrap().to_vec().unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// f16 weights (`Params::store_f16`): the linear layers' matmuls read an f16 copy of the
/// weights and sum in f32, so the network computes exactly what the f32 network computes with
/// weights rounded to f16, forward and backward (every parameter's gradient), for the DiT, the
/// MM-DiT and the MLP. The copy follows the f32 values: new values written between two forward
/// passes are what the second one uses.
#[test]
fn f16_weights_compute_the_network_of_their_rounded_values() {
    use rectiflow::autograd::Tape;
    let gpu = rectiflow::Gpu::new().unwrap();
    if !gpu.has_f16() {
        eprintln!("skipped: {} has no SHADER_F16", gpu.adapter_info().name);
        return;
    }
    let rounded =
        |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect() };
    for config in small_networks(3) {
        let build = || {
            let mut b = ParamsBuilder::new();
            let model = Model::build(&config, &mut b).unwrap();
            (model, b.build(&gpu, 3).unwrap())
        };
        let (model, exact) = build();
        let (_, mut half_params) = build();
        half_params.store_f16().unwrap();
        assert!(half_params.stores_f16() && !exact.stores_f16());
        let n = exact.values().numel();
        let (batch, dim) = (3, config.shape.iter().product::<usize>());
        // Output and every parameter's gradient of sum(output * r).
        let run = |params: &rectiflow::params::Params| {
            params.zero_grads().unwrap();
            let mut tape = Tape::new();
            let out = forward_three(&gpu, &model, &config, &mut tape, params);
            let r: Vec<f32> = (0..batch * dim).map(|i| (i as f32 * 0.91).cos()).collect();
            tape.backward_with(
                &out,
                rectiflow::Tensor::from_slice(&gpu, &[batch, dim], &r).unwrap(),
            )
            .unwrap();
            (
                out.value().to_vec().unwrap(),
                params.grads().unwrap().to_vec().unwrap(),
            )
        };
        for round in 0..2 {
            // Random weights everywhere (no zero-initialised layer hides a path), new ones in
            // the second round (the f16 copy must follow them).
            let values: Vec<f32> = (0..n)
                .map(|i| ((((i + 31 * round) * 7919) % 1000) as f32 / 1000.0 - 0.5) * 0.6 + 1e-4)
                .collect();
            let values = rounded(&values);
            exact.values().write(&values).unwrap();
            half_params.values().write(&values).unwrap();
            let (want, want_grads) = run(&exact);
            let (got, got_grads) = run(&half_params);
            let close = |what: &str, got: &[f32], want: &[f32]| {
                for (i, (g, w)) in got.iter().zip(want).enumerate() {
                    assert!(
                        g.is_finite() && (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
                        "{} round {round}, {what} {i}: f16 weights {g}, f32 weights {w}",
                        config.kind
                    );
                }
            };
            close("output", &got, &want);
            close("gradient", &got_grads, &want_grads);
        }
        // Weights f16 cannot hold: the f16 network is the rounded one, so it differs from the
        // f32 network (the matmuls did read the f16 copy), by about f16's precision.
        let values: Vec<f32> = (0..n)
            .map(|i| (((i * 7919) % 1000) as f32 / 1000.0 - 0.5) * 0.6 + 1.234_567e-4)
            .collect();
        exact.values().write(&values).unwrap();
        half_params.values().write(&values).unwrap();
        let (want, _) = run(&exact);
        let (got, _) = run(&half_params);
        let (diff, scale) = got.iter().zip(&want).fold((0f32, 0f32), |(d, s), (g, w)| {
            (d.max((g - w).abs()), s.max(w.abs()))
        });
        assert!(
            diff > 0.0 && diff <= 1e-2 * scale,
            "{}: unrounded weights, f16 against f32 differ by {diff} (largest output {scale})",
            config.kind
        );
    }
}

/// Without `SHADER_F16` (a device that lacks it, asked for here with `GpuOptions::no_f16`), f16
/// weights are refused with an error that names the feature and the way out, at each entry: the
/// parameters, a run configured with them, an f16 tensor. Nothing else changes.
#[test]
fn f16_weights_are_refused_without_shader_f16() {
    use rectiflow::data::DataSpec;
    use rectiflow::train::{ModelKind, TrainConfig, Trainer};
    let gpu = rectiflow::Gpu::with_options(&rectiflow::gpu::GpuOptions {
        no_f16: true,
        ..Default::default()
    })
    .unwrap();
    assert!(!gpu.has_f16());
    let model = ModelKind::Mlp.config(&[2], 0);
    let mut b = ParamsBuilder::new();
    Model::build(&model, &mut b).unwrap();
    let mut params = b.build(&gpu, 0).unwrap();
    let e = params.store_f16().unwrap_err().to_string();
    assert!(e.contains("SHADER_F16") && e.contains("--f16"), "{e}");
    assert!(!params.stores_f16());
    let e = rectiflow::Tensor::from_slice_f16(&gpu, &[4], &[1.0; 4])
        .unwrap_err()
        .to_string();
    assert!(e.contains("SHADER_F16"), "{e}");
    let config = TrainConfig {
        f16: true,
        ..TrainConfig::new(DataSpec::parse("toy:moons").unwrap(), model)
    };
    let e = Trainer::without_data(&gpu, config.clone())
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("SHADER_F16"), "{e}");
    // The same run in f32 trains here.
    let tr = Trainer::without_data(
        &gpu,
        TrainConfig {
            f16: false,
            ..config
        },
    )
    .unwrap();
    assert!(!tr.params.stores_f16());
}
