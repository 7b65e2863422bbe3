use rectiflow::{
    data::Dataset,
    nn::ModelConfig,
    train::{TrainConfig, Trainer},
    Gpu,
};
fn main() -> rectiflow::Result<()> {
    let gpu = Gpu::new()?;
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str).unwrap_or("mlp");
    let (data, model) = if which == "mlp" {
        (
            Dataset::from_spec("toy:checkerboard", 0)?,
            ModelConfig {
                kind: "mlp".into(),
                width: 256,
                depth: 3,
                heads: 0,
                patch: 0,
                shape: vec![2],
                classes: 0,
            },
        )
    } else {
        let w: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
        let d: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(4);
        (
            Dataset::from_spec("digits", 0)?,
            ModelConfig {
                kind: "dit".into(),
                width: w,
                depth: d,
                heads: 4,
                patch: 2,
                shape: vec![1, 8, 8],
                classes: 10,
            },
        )
    };
    let batch: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(256);
    let cfg = TrainConfig {
        data: data.name.clone(),
        model,
        schedule: "rf".into(),
        prediction: "velocity".into(),
        weighting: None,
        t_sampler: "lognorm:0,1".into(),
        steps: 100,
        batch,
        lr: 1e-3,
        warmup: 0,
        ema_decay: 0.999,
        max_grad_norm: 1.0,
        label_dropout: 0.1,
        seed: 0,
    };
    let mut tr = Trainer::new(&gpu, cfg, &data)?;
    println!("params: {}", tr.params.count());
    let t0 = std::time::Instant::now();
    for i in 0..60 {
        tr.step()?;
        if i % 20 == 19 {
            println!(
                "step {} loss {:.4} ({:.1} steps/s) pool {:?}",
                i + 1,
                tr.read_loss()?,
                (i + 1) as f64 / t0.elapsed().as_secs_f64(),
                gpu.pool_stats().created
            );
        }
    }
    Ok(())
}
