//! Samples into the host's own textures and buffers, on the GPU: every pixel of an rgba32float
//! texture equals `clamp(v / 2 + 1/2, 0, 1)` of the samples' tensor, rgba8unorm pixels and
//! packed RGBA8 words equal it quantised to 8 bits (within one step of rounding), pixels
//! outside the grid are left alone, and textures or buffers that cannot take the images are
//! refused. Tensors copy to and from host buffers on the GPU.

mod common;

use common::{gpu, rand_vec};
use rectiflow::ops::texture::{ImageWriter, Tiling};
use rectiflow::{Error, Tensor};

/// A texture with the given format and usage.
fn texture(
    w: u32,
    h: u32,
    format: wgpu::TextureFormat,
    usage: wgpu::TextureUsages,
) -> wgpu::Texture {
    gpu().device().create_texture(&wgpu::TextureDescriptor {
        label: Some("test"),
        size: wgpu::Extent3d {
            width: w,
            height: h,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format,
        usage,
        view_formats: &[],
    })
}

const DRAW: wgpu::TextureUsages =
    wgpu::TextureUsages::STORAGE_BINDING.union(wgpu::TextureUsages::COPY_SRC);

/// A host buffer.
fn buffer(size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    gpu().device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("test"),
        size,
        usage,
        mapped_at_creation: false,
    })
}

/// The bytes of a host buffer, read through a tensor copied from it on the GPU.
fn buffer_bytes(b: &wgpu::Buffer) -> Vec<u8> {
    let words = Tensor::copy_from_buffer(gpu(), b, 0, &[b.size() as usize / 4]).unwrap();
    words
        .to_vec()
        .unwrap()
        .iter()
        .flat_map(|v| v.to_bits().to_le_bytes())
        .collect()
}

/// A texture's texels, row by row, `texel` bytes each.
fn texture_bytes(t: &wgpu::Texture, texel: u32) -> Vec<u8> {
    let row = t.width() * texel;
    let padded = row.div_ceil(256) * 256;
    let b = buffer(
        padded as u64 * t.height() as u64,
        wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
    );
    let mut enc = gpu().device().create_command_encoder(&Default::default());
    enc.copy_texture_to_buffer(
        t.as_image_copy(),
        wgpu::TexelCopyBufferInfo {
            buffer: &b,
            layout: wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(padded),
                rows_per_image: None,
            },
        },
        t.size(),
    );
    gpu().queue().submit([enc.finish()]);
    buffer_bytes(&b)
        .chunks(padded as usize)
        .flat_map(|r| r[..row as usize].to_vec())
        .collect()
}

/// Where each image pixel lands and its expected colour in [0, 1].
fn expected(
    samples: &[f32],
    [n, c, h, w]: [usize; 4],
    tiling: Tiling,
) -> Vec<((usize, usize), [f32; 4])> {
    let map = |v: f32| (v * 0.5 + 0.5).clamp(0.0, 1.0);
    let mut out = Vec::new();
    for i in 0..n {
        for y in 0..h {
            for x in 0..w {
                let at = |ch: usize| samples[((i * c + ch) * h + y) * w + x];
                let rgba = match c {
                    1 => [map(at(0)), map(at(0)), map(at(0)), 1.0],
                    3 => [map(at(0)), map(at(1)), map(at(2)), 1.0],
                    _ => [map(at(0)), map(at(1)), map(at(2)), map(at(3))],
                };
                let gx = tiling.origin.0 as usize + (i % tiling.columns as usize) * w + x;
                let gy = tiling.origin.1 as usize + (i / tiling.columns as usize) * h + y;
                out.push(((gx, gy), rgba));
            }
        }
    }
    out
}

/// 8-bit channels: the nearest step to `255 v` (WGSL's `pack4x8unorm` rounds `floor(0.5 + 255 v)`;
/// a driver's unorm conversion may round a value within 1e-3 of a half step either way).
fn assert_within_one_step(got: &[u8], want: [f32; 4], at: (usize, usize)) {
    for ch in 0..4 {
        let exact = want[ch] * 255.0;
        let nearest = (0.5 + exact).floor();
        let tie = (exact - exact.floor() - 0.5).abs() < 1e-3;
        assert!(
            got[ch] as f32 == nearest || (tie && (got[ch] as f32 - exact).abs() < 0.51),
            "pixel {at:?} channel {ch}: {} for {exact}",
            got[ch]
        );
    }
}

#[test]
fn textures_hold_the_samples_pixel_for_pixel() {
    let writer = ImageWriter::new(gpu()).unwrap();
    for (shape, tiling) in [
        ([7usize, 1, 8, 8], Tiling::grid(3)),
        (
            [3, 3, 2, 5],
            Tiling {
                columns: 2,
                origin: (3, 2),
            },
        ),
        ([2, 4, 3, 3], Tiling::grid(10)),
    ] {
        let [n, c, h, w] = shape;
        // Values beyond [-1, 1] too, to see the clamp.
        let values: Vec<f32> = rand_vec(n * c * h * w, n as u64)
            .iter()
            .map(|v| 1.5 * v)
            .collect();
        let samples = Tensor::from_slice(gpu(), &shape, &values).unwrap();
        let (gw, gh) = tiling.extent(n, h, w).unwrap();
        let (tw, th) = (gw + 2, gh + 1); // larger than the grid: the rest stays untouched
        let want = expected(&values, shape, tiling);

        let t32 = texture(tw, th, wgpu::TextureFormat::Rgba32Float, DRAW);
        writer.to_texture(&samples, &t32, tiling).unwrap();
        let texels: Vec<f32> = bytemuck::pod_collect_to_vec(&texture_bytes(&t32, 16));
        let mut covered = vec![false; (tw * th) as usize];
        for ((x, y), rgba) in &want {
            let at = y * tw as usize + x;
            assert_eq!(
                &texels[4 * at..4 * at + 4],
                rgba,
                "rgba32float pixel ({x}, {y})"
            );
            covered[at] = true;
        }
        for (at, c) in covered.iter().enumerate() {
            if !c {
                assert_eq!(
                    &texels[4 * at..4 * at + 4],
                    [0.0; 4],
                    "pixel {at} outside the grid"
                );
            }
        }

        let t8 = texture(tw, th, wgpu::TextureFormat::Rgba8Unorm, DRAW);
        writer.to_texture(&samples, &t8, tiling).unwrap();
        let px = texture_bytes(&t8, 4);
        for ((x, y), rgba) in &want {
            let at = 4 * (y * tw as usize + x);
            assert_within_one_step(&px[at..at + 4], *rgba, (*x, *y));
        }

        // Packed into a host buffer with rows of 256 bytes, after 64 bytes of the host's own.
        let (offset, row) = (64u64, 256u32);
        let buf = buffer(
            offset + row as u64 * gh as u64,
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        );
        gpu()
            .queue()
            .write_buffer(&buf, 0, &vec![0xAB; buf.size() as usize]);
        writer
            .to_buffer(&samples, &buf, offset, row, tiling)
            .unwrap();
        let bytes = buffer_bytes(&buf);
        assert!(
            bytes[..offset as usize].iter().all(|&b| b == 0xAB),
            "the host's bytes"
        );
        let mut written = vec![false; bytes.len()];
        for ((x, y), rgba) in &want {
            let at = offset as usize + y * row as usize + 4 * x;
            assert_within_one_step(&bytes[at..at + 4], *rgba, (*x, *y));
            written[at..at + 4].fill(true);
        }
        assert!(
            bytes.iter().zip(&written).all(|(&b, &w)| w || b == 0xAB),
            "bytes outside the grid are left alone"
        );
    }
}

#[test]
fn textures_and_buffers_that_cannot_take_the_images_are_refused() {
    let writer = ImageWriter::new(gpu()).unwrap();
    let samples = Tensor::zeros(gpu(), &[4, 1, 8, 8]).unwrap();
    let grid = Tiling::grid(2);
    let refused = |r: rectiflow::Result<()>, want: &str| {
        let e = r.unwrap_err();
        assert!(e.to_string().contains(want), "wanted {want:?} in {e}");
    };
    refused(
        writer.to_texture(
            &samples,
            &texture(16, 16, wgpu::TextureFormat::R32Float, DRAW),
            grid,
        ),
        "rgba8unorm or rgba32float",
    );
    refused(
        writer.to_texture(
            &samples,
            &texture(
                16,
                16,
                wgpu::TextureFormat::Rgba8Unorm,
                wgpu::TextureUsages::TEXTURE_BINDING,
            ),
            grid,
        ),
        "STORAGE_BINDING",
    );
    refused(
        writer.to_texture(
            &samples,
            &texture(16, 15, wgpu::TextureFormat::Rgba8Unorm, DRAW),
            grid,
        ),
        "need 16x16 pixels",
    );
    let t = texture(64, 64, wgpu::TextureFormat::Rgba8Unorm, DRAW);
    refused(
        writer.to_texture(&samples, &t, Tiling::grid(0)),
        "0 columns",
    );
    for bad in [vec![4, 2], vec![4, 2, 8, 8], vec![0, 1, 8, 8]] {
        let s = Tensor::zeros(gpu(), &bad).unwrap();
        refused(writer.to_texture(&s, &t, grid), "C = 1, 3 or 4");
    }
    let storage = wgpu::BufferUsages::STORAGE;
    refused(
        writer.to_buffer(
            &samples,
            &buffer(4096, wgpu::BufferUsages::COPY_DST),
            0,
            256,
            grid,
        ),
        "STORAGE",
    );
    refused(
        writer.to_buffer(&samples, &buffer(4096, storage), 2, 256, grid),
        "multiples of 4",
    );
    refused(
        writer.to_buffer(&samples, &buffer(4096, storage), 0, 32, grid),
        "bytes_per_row 32",
    );
    refused(
        writer.to_buffer(&samples, &buffer(1024, storage), 0, 256, grid),
        "it has 1024",
    );
}

#[test]
fn tensors_copy_to_and_from_host_buffers_on_the_gpu() {
    let values = rand_vec(100, 3);
    let t = Tensor::from_slice(gpu(), &[10, 10], &values).unwrap();
    let usage = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let host = buffer(1024, usage);
    t.copy_to_buffer(&host, 512).unwrap();
    let back = Tensor::copy_from_buffer(gpu(), &host, 512, &[100]).unwrap();
    assert_eq!(back.to_vec().unwrap(), values);
    // Work recorded before the copy is seen by it.
    let doubled = rectiflow::ops::scale(&t, 2.0).unwrap();
    doubled.copy_to_buffer(&host, 0).unwrap();
    let back = Tensor::copy_from_buffer(gpu(), &host, 0, &[10, 10]).unwrap();
    let want: Vec<f32> = values.iter().map(|v| 2.0 * v).collect();
    assert_eq!(back.to_vec().unwrap(), want);
    // The tensor's own buffer, at its offset.
    assert!(t.buffer().size() >= t.byte_offset() + t.byte_len());
    assert!(t.buffer().usage().contains(wgpu::BufferUsages::STORAGE));
    // Refusals: usage, alignment, bounds.
    let e = t
        .copy_to_buffer(&buffer(1024, wgpu::BufferUsages::COPY_SRC), 0)
        .unwrap_err();
    assert!(
        matches!(e, Error::Config(_)) && e.to_string().contains("COPY_DST"),
        "{e}"
    );
    assert!(t
        .copy_to_buffer(&host, 2)
        .unwrap_err()
        .to_string()
        .contains("multiples of 4"));
    assert!(t
        .copy_to_buffer(&host, 800)
        .unwrap_err()
        .to_string()
        .contains("run past"));
    let e = Tensor::copy_from_buffer(gpu(), &buffer(64, wgpu::BufferUsages::COPY_DST), 0, &[4])
        .unwrap_err();
    assert!(e.to_string().contains("COPY_SRC"), "{e}");
    assert!(Tensor::copy_from_buffer(gpu(), &host, 0, &[1 << 40, 1 << 40]).is_err());
}

#[test]
fn the_writer_records_through_the_pipeline_cache_like_every_kernel() {
    // A context of its own, so its counters are this test's alone.
    let g = &rectiflow::Gpu::with_options(&rectiflow::gpu::GpuOptions::default()).unwrap();
    let tex = g.device().create_texture(&wgpu::TextureDescriptor {
        label: Some("test"),
        size: wgpu::Extent3d {
            width: 16,
            height: 8,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba8Unorm,
        usage: DRAW,
        view_formats: &[],
    });
    let packed = g.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("test"),
        size: 256 * 8,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let samples = Tensor::from_slice(g, &[2, 1, 8, 8], &rand_vec(128, 5)).unwrap();
    let writer = ImageWriter::new(g).unwrap();
    let (dispatches, pipelines) = (g.dispatch_count(), g.pipeline_count());
    writer.to_texture(&samples, &tex, Tiling::grid(2)).unwrap();
    writer
        .to_buffer(&samples, &packed, 0, 256, Tiling::grid(2))
        .unwrap();
    assert_eq!(
        g.dispatch_count(),
        dispatches + 2,
        "one recorded dispatch each"
    );
    assert_eq!(
        g.pipeline_count(),
        pipelines + 2,
        "two pipelines in the cache"
    );
    // Drawn again: the same pipelines, from the cache.
    writer.to_texture(&samples, &tex, Tiling::grid(2)).unwrap();
    writer
        .to_buffer(&samples, &packed, 0, 256, Tiling::grid(2))
        .unwrap();
    assert_eq!(g.pipeline_count(), pipelines + 2);
    assert_eq!(g.dispatch_count(), dispatches + 4);
}
