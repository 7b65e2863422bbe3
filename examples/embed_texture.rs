//! Embed rectiflow in a host application that owns its GPU device: the host creates its wgpu
//! device and queue as it would for its own rendering, hands them to [`Gpu::from_device`],
//! loads a checkpoint in one call ([`Pipeline::load`]), samples digits, and has them drawn
//! straight into a storage texture of its own ([`ImageWriter::to_texture`]: no round trip
//! through the CPU). Then, as a host saving a screenshot would, it copies the texture out and
//! writes a PNG.
//!
//! ```sh
//! cargo run --release --example embed_texture -- [CHECKPOINT [OUT.png]]
//! ```
//! Without a checkpoint it first trains a tiny class-conditional DiT on the digits for a few
//! seconds (into a temporary directory).
#![allow(dead_code)] // the tests include this file for `run`

use rectiflow::data::{self, DataSpec};
use rectiflow::ops::texture::{ImageWriter, Tiling};
use rectiflow::train::{ModelKind, TrainConfig, Trainer};
use rectiflow::{output, Error, Gpu, Pipeline, Result, Weights};
use std::path::{Path, PathBuf};

/// What to draw.
pub struct Options {
    /// A checkpoint of a model of images (`rectiflow train`, `Trainer::save`).
    pub checkpoint: PathBuf,
    /// Where to write the PNG.
    pub png: PathBuf,
    /// Samples (labels `i % classes`), drawn ten to a row.
    pub n: usize,
    /// ODE steps.
    pub steps: usize,
}

/// What came out.
pub struct Report {
    /// The samples' tensor, `[n, C, H, W]` row-major, values in about [-1, 1].
    pub samples: Vec<f32>,
    /// Its shape.
    pub shape: Vec<usize>,
    /// The texture's pixels as the host read them back: RGBA8, `width * 4` bytes per row.
    pub pixels: Vec<u8>,
    /// The texture's width and height in pixels.
    pub width: u32,
    /// See `width`.
    pub height: u32,
}

/// Images per row of the picture.
pub const COLUMNS: u32 = 10;

/// The host's own device, made as an application would make it for itself (no optional
/// features; the adapter's limits, so large models fit).
pub fn host_device() -> Result<(wgpu::Device, wgpu::Queue)> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::PRIMARY;
    let instance = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))
    .map_err(|e| Error::Device(format!("the host found no adapter: {e}")))?;
    pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("host"),
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .map_err(|e| Error::Device(format!("the host's device: {e}")))
}

/// A tiny class-conditional DiT trained on the digits for `steps` steps, saved into `dir`.
pub fn train_tiny(gpu: &Gpu, dir: &Path, steps: u64) -> Result<PathBuf> {
    let digits = data::digits()?;
    let mut model = ModelKind::Dit.config(&digits.shape, digits.classes);
    (model.width, model.depth, model.heads) = (16, 1, 2);
    let config = TrainConfig {
        steps,
        batch: 32,
        warmup: 10,
        ema_decay: 0.9,
        lr: 3e-3,
        ..TrainConfig::new(DataSpec::Digits, model)
    };
    let mut trainer = Trainer::new(gpu, config, &digits)?;
    while trainer.step < steps {
        trainer.step()?;
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
    let path = dir.join("checkpoint.safetensors");
    trainer.save(&path)?;
    Ok(path)
}

/// Copy an RGBA8 texture out to the host (`width * 4` bytes per row), as a host saving a
/// screenshot does: a copy into a mappable buffer with rows padded to 256 bytes.
pub fn read_texture(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    texture: &wgpu::Texture,
) -> Result<Vec<u8>> {
    let (w, h) = (texture.width(), texture.height());
    let row = w * 4;
    let padded =
        row.div_ceil(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT) * wgpu::COPY_BYTES_PER_ROW_ALIGNMENT;
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("host readback"),
        size: padded as u64 * h as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_texture_to_buffer(
        wgpu::TexelCopyTextureInfo {
            texture,
            mip_level: 0,
            origin: wgpu::Origin3d::ZERO,
            aspect: wgpu::TextureAspect::All,
        },
        wgpu::TexelCopyBufferInfo {
            buffer: &buffer,
            layout: wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(padded),
                rows_per_image: Some(h),
            },
        },
        wgpu::Extent3d {
            width: w,
            height: h,
            depth_or_array_layers: 1,
        },
    );
    queue.submit([encoder.finish()]);
    let slice = buffer.slice(..);
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| Error::Gpu(format!("waiting for the readback: {e}")))?;
    rx.recv()
        .map_err(|_| Error::Gpu("the readback never finished".into()))?
        .map_err(|e| Error::Gpu(format!("mapping the readback: {e}")))?;
    let pixels = {
        let view = slice
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("reading the readback: {e}")))?;
        view.chunks(padded as usize)
            .flat_map(|r| r[..row as usize].to_vec())
            .collect()
    };
    buffer.unmap();
    Ok(pixels)
}

/// Draw `opts.n` samples into a host-owned texture, read it back and write the PNG.
pub fn run(device: &wgpu::Device, queue: &wgpu::Queue, opts: &Options) -> Result<Report> {
    // rectiflow works on the host's device and queue.
    let gpu = Gpu::from_device(device.clone(), queue.clone())?;
    let pipe = Pipeline::load(&gpu, &opts.checkpoint, Weights::Ema)?;
    let [_, h, w] = pipe.example_shape() else {
        return Err(Error::Config(format!(
            "{} holds a model of points {:?}; this example draws images",
            opts.checkpoint.display(),
            pipe.example_shape()
        )));
    };
    let mut sampling = pipe.options(pipe.labels(opts.n));
    sampling.steps = opts.steps;
    let samples = pipe.sample(&sampling)?; // [n, C, H, W], still on the GPU

    // The host's texture: it could as well be bound in its render pass next.
    let tiling = Tiling::grid(COLUMNS);
    let (width, height) = tiling
        .extent(opts.n, *h, *w)
        .ok_or_else(|| Error::TooLarge("the picture".into()))?;
    let texture = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("host samples"),
        size: wgpu::Extent3d {
            width,
            height,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba8Unorm,
        usage: wgpu::TextureUsages::STORAGE_BINDING
            | wgpu::TextureUsages::TEXTURE_BINDING
            | wgpu::TextureUsages::COPY_SRC,
        view_formats: &[],
    });
    ImageWriter::new(&gpu)?.to_texture(&samples, &texture, tiling)?;

    let pixels = read_texture(device, queue, &texture)?;
    let png = output::rgba_png(width as usize, height as usize, &pixels)?;
    if let Some(dir) = opts.png.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
    }
    output::write_atomically(&[(&opts.png, &png)])?;
    Ok(Report {
        shape: samples.shape().to_vec(),
        samples: samples.to_vec()?,
        pixels,
        width,
        height,
    })
}

fn main() {
    if let Err(e) = cli() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn cli() -> Result<()> {
    let (device, queue) = host_device()?;
    let mut args = std::env::args().skip(1);
    let checkpoint = match args.next() {
        Some(path) => PathBuf::from(path),
        None => {
            let dir = std::env::temp_dir().join(format!("rectiflow-embed-{}", std::process::id()));
            println!(
                "no checkpoint given: training a tiny DiT into {}",
                dir.display()
            );
            train_tiny(&Gpu::from_device(device.clone(), queue.clone())?, &dir, 60)?
        }
    };
    let png = PathBuf::from(args.next().unwrap_or_else(|| "samples_texture.png".into()));
    let report = run(
        &device,
        &queue,
        &Options {
            checkpoint,
            png: png.clone(),
            n: 20,
            steps: 20,
        },
    )?;
    println!(
        "drew {:?} samples into a {}x{} rgba8unorm texture; wrote {}",
        report.shape,
        report.width,
        report.height,
        png.display()
    );
    Ok(())
}
