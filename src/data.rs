//! Data sets: the 8x8 handwritten digits embedded in the binary (the default), 2-D toy
//! distributions generated from a seed, and MNIST-format IDX files (gzipped or not). Images are
//! scaled to [-1, 1] and flattened `[N, C * H * W]`; labels are class numbers.

use crate::error::{Error, Result};
use rand::{Rng, SeedableRng};
use std::io::Read;
use std::path::Path;

/// The UCI optical digits (1797 images of 8x8, values 0..16, labels 0..9; CC BY 4.0).
static DIGITS_CSV_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");

/// Names of the 2-D toy distributions.
pub const TOYS: [&str; 4] = ["checkerboard", "moons", "8gaussians", "spirals"];

/// A data set in host memory, ready to upload once.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub name: String,
    /// Shape of one example: `[C, H, W]` for images, `[2]` for points.
    pub shape: Vec<usize>,
    /// `[N * dim]`, images in [-1, 1].
    pub x: Vec<f32>,
    /// Class of each example, if labelled.
    pub labels: Option<Vec<u32>>,
    /// Number of classes (0 when unlabelled).
    pub classes: usize,
}

impl Dataset {
    /// Elements of one example.
    pub fn dim(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn len(&self) -> usize {
        self.x.len() / self.dim()
    }
    pub fn is_empty(&self) -> bool {
        self.x.is_empty()
    }
    pub fn is_image(&self) -> bool {
        self.shape.len() == 3
    }

    /// Parse a `--data` value: `digits`, `toy:NAME` or `idx:IMAGES[,LABELS]`.
    pub fn from_spec(spec: &str, seed: u64) -> Result<Dataset> {
        if spec == "digits" {
            digits()
        } else if let Some(name) = spec.strip_prefix("toy:") {
            toy(name, 100_000, seed)
        } else if let Some(paths) = spec.strip_prefix("idx:") {
            let (images, labels) = match paths.split_once(',') {
                Some((i, l)) => (i, Some(l)),
                None => (paths, None),
            };
            idx(Path::new(images), labels.map(Path::new))
        } else {
            Err(Error::Config(format!(
                "unknown data {spec:?}: use digits, toy:NAME ({}) or idx:IMAGES[,LABELS]",
                TOYS.join(", ")
            )))
        }
    }

    /// Split off the last `n` examples (a held-out set).
    pub fn split_last(&self, n: usize) -> (Dataset, Dataset) {
        let d = self.dim();
        let keep = self.len().saturating_sub(n);
        let part = |range: std::ops::Range<usize>| Dataset {
            x: self.x[range.start * d..range.end * d].to_vec(),
            labels: self.labels.as_ref().map(|l| l[range.clone()].to_vec()),
            ..self.clone()
        };
        (part(0..keep), part(keep..self.len()))
    }
}

/// The embedded 8x8 digits, scaled to [-1, 1].
pub fn digits() -> Result<Dataset> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(DIGITS_CSV_GZ)
        .read_to_string(&mut text)
        .map_err(|e| Error::Io(format!("the embedded digits do not decompress: {e}")))?;
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate() {
        let values: Vec<u32> = line
            .split(',')
            .map(|v| v.trim().parse())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Io(format!("digits line {}: {e}", n + 1)))?;
        if values.len() != 65 {
            return Err(Error::Io(format!(
                "digits line {} has {} values, not 65",
                n + 1,
                values.len()
            )));
        }
        x.extend(values[..64].iter().map(|&v| v as f32 / 8.0 - 1.0));
        labels.push(values[64]);
    }
    Ok(Dataset {
        name: "digits".into(),
        shape: vec![1, 8, 8],
        x,
        labels: Some(labels),
        classes: 10,
    })
}

fn normal(rng: &mut rand::rngs::StdRng) -> f32 {
    let u1: f32 = rng.random_range(f32::MIN_POSITIVE..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// `n` points of a 2-D toy distribution (scaled to roughly unit spread), from `seed`.
pub fn toy(name: &str, n: usize, seed: u64) -> Result<Dataset> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x70_79);
    let mut x = Vec::with_capacity(2 * n);
    for i in 0..n {
        let (a, b) = match name {
            "checkerboard" => {
                let x1: f32 = rng.random_range(-2.0..2.0);
                let x2 = rng.random::<f32>() - 2.0 * rng.random_range(0..2) as f32
                    + (x1.floor().rem_euclid(2.0));
                (x1, x2)
            }
            "moons" => {
                let t: f32 = rng.random_range(0.0..std::f32::consts::PI);
                let (px, py) = if i % 2 == 0 {
                    (t.cos(), t.sin())
                } else {
                    (1.0 - t.cos(), 0.5 - t.sin())
                };
                (
                    1.2 * (px - 0.5) + 0.1 * normal(&mut rng),
                    1.2 * (py - 0.25) + 0.1 * normal(&mut rng),
                )
            }
            "8gaussians" => {
                let k = rng.random_range(0..8) as f32 * std::f32::consts::FRAC_PI_4;
                (
                    1.5 * k.cos() + 0.1 * normal(&mut rng),
                    1.5 * k.sin() + 0.1 * normal(&mut rng),
                )
            }
            "spirals" => {
                let r = rng.random::<f32>().sqrt() * 540.0_f32.to_radians() * 1.0;
                let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
                let (sx, sy) = (
                    -r.cos() * r + rng.random::<f32>() * 0.5,
                    r.sin() * r + rng.random::<f32>() * 0.5,
                );
                (
                    sign * sx / 4.0 + 0.05 * normal(&mut rng),
                    sign * sy / 4.0 + 0.05 * normal(&mut rng),
                )
            }
            _ => {
                return Err(Error::Config(format!(
                    "unknown toy {name:?}: use one of {}",
                    TOYS.join(", ")
                )))
            }
        };
        x.extend([a, b]);
    }
    Ok(Dataset {
        name: format!("toy:{name}"),
        shape: vec![2],
        x,
        labels: None,
        classes: 0,
    })
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| {
        Error::Io(format!(
            "cannot read {}: {e} (give the path of an MNIST-format IDX file, gzipped or not)",
            path.display()
        ))
    })?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| {
                Error::Io(format!(
                    "{} is gzipped but does not decompress: {e}",
                    path.display()
                ))
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parse an IDX file of unsigned bytes: (dimensions, data). Checks the magic and the length.
fn parse_idx(bytes: &[u8], path: &Path, want_dims: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let bad = |why: String| Error::Io(format!("{} is not a valid IDX file: {why}", path.display()));
    if bytes.len() < 4 {
        return Err(bad("shorter than its 4-byte magic".into()));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let want_magic = 0x0800 + want_dims as u32;
    if magic != want_magic {
        return Err(bad(format!(
            "magic {magic:#06x}, expected {want_magic:#06x} ({} of unsigned bytes; MNIST images have 2051, labels 2049)",
            if want_dims == 3 { "images" } else { "labels" }
        )));
    }
    let header = 4 + 4 * want_dims;
    if bytes.len() < header {
        return Err(bad("truncated header".into()));
    }
    let dims: Vec<usize> = (0..want_dims)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let count: usize = dims.iter().product();
    if bytes.len() != header + count {
        return Err(bad(format!(
            "the header promises {dims:?} = {count} bytes of data, the file has {} (truncated or corrupt)",
            bytes.len() - header
        )));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// MNIST-format images (magic 2051) and, optionally, labels (magic 2049).
pub fn idx(images: &Path, labels: Option<&Path>) -> Result<Dataset> {
    let (dims, pixels) = parse_idx(&read_maybe_gz(images)?, images, 3)?;
    let x = pixels.iter().map(|&p| p as f32 / 127.5 - 1.0).collect();
    let (labels, classes) = match labels {
        Some(path) => {
            let (ldims, l) = parse_idx(&read_maybe_gz(path)?, path, 1)?;
            if ldims[0] != dims[0] {
                return Err(Error::Io(format!(
                    "{} has {} labels for {} images in {}",
                    path.display(),
                    ldims[0],
                    dims[0],
                    images.display()
                )));
            }
            let classes = l.iter().map(|&v| v as usize + 1).max().unwrap_or(0);
            (Some(l.into_iter().map(u32::from).collect()), classes)
        }
        None => (None, 0),
    };
    Ok(Dataset {
        name: format!("idx:{}", images.display()),
        shape: vec![1, dims[1], dims[2]],
        x,
        labels,
        classes,
    })
}
