//! Files a run writes for people and other tools: PNG sample grids (images) or scatter plots
//! (2-D points, drawn by [`crate::plot`]), NumPy `.npy` arrays, JSON. Every file is written atomically
//! ([`write_atomically`]): to a temporary file beside it, synced, then renamed into place, so a
//! full disk or a kill leaves either the old file or the new one, never a partial one, and no
//! temporary file behind.
#![warn(missing_docs)]

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The temporary file `path` is written to before it is renamed into place: `NAME.tmp`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Write every `(path, bytes)` as a group: each to its temporary file (synced), and only when all
/// are complete, each renamed into place. On any failure every temporary file is removed and the
/// error names the file; the files already in place are untouched unless a rename itself fails.
pub fn write_atomically(files: &[(&Path, &[u8])]) -> Result<()> {
    let temps: Vec<PathBuf> = files.iter().map(|(p, _)| temp_path(p)).collect();
    let remove_temps = || {
        for t in &temps {
            let _ = std::fs::remove_file(t);
        }
    };
    for ((path, bytes), tmp) in files.iter().zip(&temps) {
        let written = std::fs::File::create(tmp).and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        });
        if let Err(e) = written {
            remove_temps();
            return Err(Error::Io(format!(
                "cannot write {} (for {}): {e}; nothing was replaced",
                tmp.display(),
                path.display()
            )));
        }
    }
    for ((path, _), tmp) in files.iter().zip(&temps) {
        if let Err(e) = std::fs::rename(tmp, path) {
            remove_temps();
            return Err(Error::Io(format!(
                "cannot move {} into place as {}: {e}",
                tmp.display(),
                path.display()
            )));
        }
    }
    Ok(())
}

/// A grayscale PNG, encoded in memory.
fn png_bytes(width: usize, height: usize, gray: &[u8]) -> Result<Vec<u8>> {
    encode_png(width, height, gray, png::ColorType::Grayscale)
}

fn encode_png(width: usize, height: usize, px: &[u8], color: png::ColorType) -> Result<Vec<u8>> {
    let encode_error = |e: png::EncodingError| Error::Io(format!("encoding a PNG: {e}"));
    let (w, h) = (u32::try_from(width), u32::try_from(height));
    let (Ok(w), Ok(h)) = (w, h) else {
        return Err(Error::TooLarge(format!("a PNG of {width}x{height} pixels")));
    };
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(encode_error)?;
    writer.write_image_data(px).map_err(encode_error)?;
    writer.finish().map_err(encode_error)?;
    Ok(out)
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
    let png = image_grid_png(images, n, h, w, cols, scale)?;
    write_atomically(&[(path, &png)])
}

/// [`image_grid`]'s PNG, in memory.
pub fn image_grid_png(
    images: &[f32],
    n: usize,
    h: usize,
    w: usize,
    cols: usize,
    scale: usize,
) -> Result<Vec<u8>> {
    let needed = n.checked_mul(h).and_then(|v| v.checked_mul(w));
    if cols == 0 || scale == 0 || needed.is_none_or(|v| v > images.len()) {
        return Err(Error::Shape(format!(
            "a grid of {n} images of {h}x{w} in {cols} columns at scale {scale} from {} values",
            images.len()
        )));
    }
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
    png_bytes(gw, gh, &px)
}

/// [`crate::npy::f32_bytes`], kept under its old name.
pub use crate::npy::f32_bytes as npy_f32_bytes;
/// [`crate::npy::header`], kept under its old name.
pub use crate::npy::header as npy_header;
/// [`crate::npy::i64_bytes`], kept under its old name.
pub use crate::npy::i64_bytes as npy_i64_bytes;

/// Little-endian float32 `.npy`, written atomically.
pub fn npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    write_atomically(&[(path, &npy_f32_bytes(shape, data))])
}

/// Little-endian int64 `.npy`, written atomically.
pub fn npy_i64(path: &Path, shape: &[usize], data: &[i64]) -> Result<()> {
    write_atomically(&[(path, &npy_i64_bytes(shape, data))])
}

/// An RGB PNG (8 bits per channel, `width * height * 3` bytes, rows top to bottom), in memory.
pub fn rgb_png(width: usize, height: usize, rgb: &[u8]) -> Result<Vec<u8>> {
    if width.checked_mul(height).and_then(|p| p.checked_mul(3)) != Some(rgb.len()) {
        return Err(Error::Shape(format!(
            "an RGB PNG of {width}x{height} pixels from {} bytes",
            rgb.len()
        )));
    }
    encode_png(width, height, rgb, png::ColorType::Rgb)
}

/// An RGBA PNG (8 bits per channel, `width * height * 4` bytes, rows top to bottom), in memory.
pub fn rgba_png(width: usize, height: usize, rgba: &[u8]) -> Result<Vec<u8>> {
    if width.checked_mul(height).and_then(|p| p.checked_mul(4)) != Some(rgba.len()) {
        return Err(Error::Shape(format!(
            "an RGBA PNG of {width}x{height} pixels from {} bytes",
            rgba.len()
        )));
    }
    encode_png(width, height, rgba, png::ColorType::Rgba)
}

/// What a picture of points shows besides the points (a grid of images uses neither).
#[derive(Clone, Copy, Debug, Default)]
pub struct SamplePicture<'a> {
    /// The scatter plot's title: what was sampled, and how.
    pub title: &'a str,
    /// Samples of the target `[m, D]` (the samples' D), drawn faint behind them.
    pub target: Option<&'a [f32]>,
}

/// The side of a scatter plot of samples, in pixels.
const SCATTER_SIZE: u32 = 640;
/// A scatter plot of samples spans `[-SCATTER_RANGE, SCATTER_RANGE]` in x and y.
const SCATTER_RANGE: f32 = 3.0;

/// Write samples as a picture plus `samples.npy` and `labels.npy` beside it, the three as a
/// group (complete files or the old ones, never a partial file): images `[n, C, H, W]` as a
/// grid (ten columns when `n` is a multiple of ten, one class per column when the labels cycle;
/// else a square-ish grid), points `[n, D]` as a scatter plot of their first two coordinates
/// over `[-3, 3]^2` with axes, `picture`'s title and its target faint behind them
/// ([`crate::plot::scatter_png`]). The grid shows the first channel of each image.
pub fn write_samples(
    png: &Path,
    shape: &[usize],
    samples: &[f32],
    labels: &[u32],
    picture: &SamplePicture,
) -> Result<()> {
    let n = labels.len();
    let dim = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if dim.and_then(|d| d.checked_mul(n)) != Some(samples.len()) {
        return Err(Error::Shape(format!(
            "{} values for {n} samples of shape {shape:?}",
            samples.len()
        )));
    }
    if let Some(dir) = png.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Io(format!("cannot create {}: {e}", dir.display())))?;
    }
    let picture = match shape {
        [c, h, w] => {
            let cols = if n.is_multiple_of(10) {
                10
            } else {
                (n as f64).sqrt().ceil() as usize
            };
            let first_channel: Vec<f32> = if *c == 1 {
                samples.to_vec()
            } else {
                samples
                    .chunks(c * h * w)
                    .flat_map(|s| s[..h * w].iter().copied())
                    .collect()
            };
            image_grid_png(&first_channel, n, *h, *w, cols.max(1), 4)?
        }
        [d] if *d >= 2 => {
            if picture.target.is_some_and(|t| !t.len().is_multiple_of(*d)) {
                return Err(Error::Shape(format!(
                    "a target of {} values for samples of {d} coordinates; give [m, {d}]",
                    picture.target.map_or(0, <[f32]>::len)
                )));
            }
            let first_two =
                |v: &[f32]| -> Vec<f32> { v.chunks_exact(*d).flat_map(|p| [p[0], p[1]]).collect() };
            let (points, target) = (first_two(samples), picture.target.map(first_two));
            crate::plot::scatter_png(
                &crate::plot::ScatterPlot {
                    title: picture.title,
                    points: &points,
                    target: target.as_deref(),
                    range: SCATTER_RANGE,
                },
                SCATTER_SIZE,
            )?
        }
        _ => {
            return Err(Error::Shape(format!(
                "samples of shape {shape:?}: pictures are drawn of images [C, H, W] and of \
                 points with at least 2 coordinates"
            )))
        }
    };
    let dir = png.parent().unwrap_or(Path::new("."));
    let mut full = vec![n];
    full.extend(shape);
    let values = npy_f32_bytes(&full, samples);
    let classes = npy_i64_bytes(&[n], &labels.iter().map(|&l| l as i64).collect::<Vec<_>>());
    let (samples_npy, labels_npy) = (dir.join("samples.npy"), dir.join("labels.npy"));
    write_atomically(&[
        (png, &picture),
        (&samples_npy, &values),
        (&labels_npy, &classes),
    ])
}
