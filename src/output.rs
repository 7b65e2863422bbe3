//! Files a run writes for people and other tools: PNG sample grids (images) or scatter plots
//! (2-D points), and NumPy `.npy` arrays.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io(format!("cannot write {}: {e}", path.display()))
}

fn write_png(path: &Path, width: u32, height: u32, gray: &[u8]) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| io(path, e))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(|e| io(path, e))?;
    w.write_image_data(gray).map_err(|e| io(path, e))
}

/// A grid of single-channel images `[n, h, w]` in [-1, 1], `scale`d up (nearest neighbour), one
/// pixel of border between tiles; `cols` per row.
pub fn image_grid(
    path: &Path,
    images: &[f32],
    n: usize,
    h: usize,
    w: usize,
    cols: usize,
    scale: usize,
) -> Result<()> {
    let rows = n.div_ceil(cols);
    let (tw, th) = (w * scale + 1, h * scale + 1);
    let (gw, gh) = (cols * tw + 1, rows * th + 1);
    let mut px = vec![40u8; gw * gh];
    for i in 0..n {
        let (r, c) = (i / cols, i % cols);
        for y in 0..h * scale {
            for x in 0..w * scale {
                let v = images[i * h * w + (y / scale) * w + x / scale];
                px[(r * th + 1 + y) * gw + c * tw + 1 + x] =
                    (((v + 1.0) * 127.5).round()).clamp(0.0, 255.0) as u8;
            }
        }
    }
    write_png(path, gw as u32, gh as u32, &px)
}

/// A scatter plot of 2-D points `[n, 2]` over `[-range, range]^2`, brightness by density.
pub fn scatter(path: &Path, points: &[f32], size: usize, range: f32) -> Result<()> {
    let mut counts = vec![0u32; size * size];
    for p in points.chunks(2) {
        let x = ((p[0] + range) / (2.0 * range) * size as f32) as isize;
        let y = ((range - p[1]) / (2.0 * range) * size as f32) as isize;
        if (0..size as isize).contains(&x) && (0..size as isize).contains(&y) {
            counts[y as usize * size + x as usize] += 1;
        }
    }
    let max = counts.iter().copied().max().unwrap_or(1).max(1) as f32;
    let px: Vec<u8> = counts
        .iter()
        .map(|&c| {
            if c == 0 {
                0
            } else {
                (80.0 + 175.0 * (c as f32).ln_1p() / max.ln_1p()) as u8
            }
        })
        .collect();
    write_png(path, size as u32, size as u32, &px)
}

/// The `.npy` (format 1.0) header for `descr` and `shape`, padded to a multiple of 64 bytes.
pub fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // magic (6) + version (2) + length (2) + dict + newline: a multiple of 64.
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((dict.len() as u16).to_le_bytes());
    out.extend(dict.as_bytes());
    out
}

fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(|e| io(path, e))?;
    f.write_all(&npy_header(descr, shape))
        .and_then(|_| f.write_all(data))
        .map_err(|e| io(path, e))
}

/// Little-endian float32 `.npy`.
pub fn npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    write_npy(path, "<f4", shape, bytemuck::cast_slice(data))
}

/// Little-endian int64 `.npy`.
pub fn npy_i64(path: &Path, shape: &[usize], data: &[i64]) -> Result<()> {
    write_npy(path, "<i8", shape, bytemuck::cast_slice(data))
}
