//! The examples, run on this machine's GPU (lavapipe without one): their bodies are compiled
//! into this test and called with small settings, and what they promise is checked — the host's
//! texture holds the samples' tensor pixel for pixel, stepping one ODE step per frame equals
//! one-shot sampling, and training from code on the program's own batches improves the model.

mod common;

#[path = "../examples/embed_texture.rs"]
mod embed_texture;
#[path = "../examples/stepwise.rs"]
mod stepwise;
#[path = "../examples/train_toy.rs"]
mod train_toy;

use common::gpu;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("rectiflow-examples-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One tiny class-conditional DiT checkpoint, trained as the examples do without one.
fn checkpoint() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| stepwise::train_tiny(gpu(), &temp_dir("checkpoint"), 20).unwrap())
}

#[test]
fn embed_texture_draws_the_samples_into_the_hosts_texture() {
    let (device, queue) = embed_texture::host_device().unwrap();
    let png = temp_dir("texture").join("digits.png");
    let report = embed_texture::run(
        &device,
        &queue,
        &embed_texture::Options {
            checkpoint: checkpoint().to_path_buf(),
            png: png.clone(),
            n: 20,
            steps: 4,
        },
    )
    .unwrap();
    assert_eq!(report.shape, [20, 1, 8, 8]);
    assert_eq!((report.width, report.height), (80, 16));
    assert_eq!(report.pixels.len(), 80 * 16 * 4);
    // Every pixel is its sample's value mapped from [-1, 1] to [0, 255]: gray, opaque.
    for i in 0..20 {
        for y in 0..8 {
            for x in 0..8 {
                let v = report.samples[i * 64 + y * 8 + x];
                let want = (0.5 + 255.0 * (v * 0.5 + 0.5).clamp(0.0, 1.0)).floor() as u8;
                let (gx, gy) = ((i % 10) * 8 + x, (i / 10) * 8 + y);
                let at = 4 * (gy * 80 + gx);
                let px = &report.pixels[at..at + 4];
                assert!(
                    px[..3].iter().all(|&c| c.abs_diff(want) <= 1) && px[3] == 255,
                    "sample {i} pixel ({x}, {y}): {px:?} for {v}"
                );
            }
        }
    }
    assert!(
        report.samples.iter().any(|v| v.abs() > 0.1),
        "the samples are not blank"
    );
    // The PNG holds the texture's pixels.
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (80, 16));
    assert_eq!(info.color_type, png::ColorType::Rgba);
    assert_eq!(&buf[..info.buffer_size()], &report.pixels[..]);
}

#[test]
fn stepwise_sampling_one_step_per_frame_equals_one_shot() {
    let report = stepwise::run(
        gpu(),
        &stepwise::Options {
            checkpoint: checkpoint().to_path_buf(),
            n: 10,
            steps: 6,
            seed: 3,
        },
    )
    .unwrap();
    assert_eq!(report.frames, 6);
    assert_eq!(report.shape, [10, 1, 8, 8]);
    assert!(report.times.windows(2).all(|w| w[1] < w[0]));
    assert_eq!(report.times.last(), Some(&0.0));
    assert!(report.peaks.iter().all(|p| p.is_finite() && *p > 0.0));
    assert_eq!(report.stepwise, report.one_shot);
}

#[test]
fn train_toy_learns_the_moons_from_its_own_batches() {
    let report = train_toy::run(
        gpu(),
        &train_toy::Options {
            steps: 300,
            batch: 128,
            width: 64,
            samples: 2000,
            lr: 1e-2,
        },
    )
    .unwrap();
    assert!(report.w2.is_finite() && report.floor > 0.0);
    assert!(
        report.w2 < 0.6 * report.w2_untrained,
        "sliced W2 {} after training, {} before (floor {})",
        report.w2,
        report.w2_untrained,
        report.floor
    );
    assert_eq!(report.losses.len(), 3);
    assert!(report.losses.iter().all(|(_, l)| l.is_finite()));
}
