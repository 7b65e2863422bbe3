//! Data sets: which one a run uses ([`DataSpec`], the typed form of `--data`), loading it into
//! host memory ([`Dataset`]: the 8x8 handwritten digits embedded in the binary, 2-D toy
//! distributions generated from a seed, MNIST-format IDX files, gzipped or not), and holding it
//! on the GPU to draw batches from ([`GpuDataset`]). Images are scaled to [-1, 1] and stored
//! row-major `[N, C, H, W]`; labels are class numbers. Files are read within a stated size (the
//! device's largest buffer, or the host budget): every size a header claims is checked before
//! anything that large is allocated or inflated.
#![warn(missing_docs)]

use crate::error::{Error, Result};
use crate::limits::{checked_product, show_bytes, HOST_BUDGET_BYTES};
use crate::tensor::Tensor;
use crate::Gpu;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The UCI optical digits (1797 images of 8x8, values 0..16, labels 0..9; CC BY 4.0).
static DIGITS_CSV_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");

/// Names of the 2-D toy distributions.
pub const TOYS: [&str; 4] = ["checkerboard", "moons", "8gaussians", "spirals"];

/// A 2-D toy distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Toy {
    /// Points uniform on the dark squares of a 4x4 checkerboard over `[-2, 2]^2`.
    Checkerboard,
    /// Two interleaved half circles with Gaussian noise.
    Moons,
    /// Eight Gaussians on a circle of radius 1.5.
    EightGaussians,
    /// Two interleaved spirals.
    Spirals,
}

impl Toy {
    /// Every toy, in the order of [`TOYS`].
    pub const ALL: [Toy; 4] = [
        Toy::Checkerboard,
        Toy::Moons,
        Toy::EightGaussians,
        Toy::Spirals,
    ];

    /// The name `toy:NAME` uses.
    pub fn name(self) -> &'static str {
        match self {
            Toy::Checkerboard => "checkerboard",
            Toy::Moons => "moons",
            Toy::EightGaussians => "8gaussians",
            Toy::Spirals => "spirals",
        }
    }

    /// The toy called `name`.
    pub fn parse(name: &str) -> Result<Toy> {
        Toy::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown toy {name:?}: use one of {}",
                    TOYS.join(", ")
                ))
            })
    }

    /// `n` points drawn from `seed` (see [`toy`]).
    pub fn sample(self, n: usize, seed: u64) -> Result<Dataset> {
        toy(self.name(), n, seed)
    }
}

/// Points a toy data set holds when a run loads it.
pub const TOY_POINTS: usize = 100_000;

/// Which data a run trains on. Its text form is what `--data` takes and what `config.json`
/// stores: `digits`, `toy:NAME`, `idx:IMAGES[,LABELS]`, `host:NAME` or `pairs:PATH`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DataSpec {
    /// The UCI 8x8 digits embedded in the binary (1797 images, 10 classes).
    Digits,
    /// A 2-D toy distribution ([`TOY_POINTS`] points drawn from the run's seed).
    Toy(Toy),
    /// MNIST-format IDX files (gzipped or not): images, and optionally labels.
    Idx {
        /// The images file (magic 2051).
        images: PathBuf,
        /// The labels file (magic 2049), if any.
        labels: Option<PathBuf>,
    },
    /// Batches the host program brings itself ([`crate::train::Trainer::step_on`]); there is
    /// nothing to load, and the name only identifies the run's data.
    Host(String),
    /// Reflow pairs ([`crate::pairs`]): examples coupled with the noise a flow took to them.
    Pairs(PathBuf),
}

impl DataSpec {
    /// Parse the text form (`digits`, `toy:NAME`, `idx:IMAGES[,LABELS]`, `host:NAME`,
    /// `pairs:PATH`).
    pub fn parse(spec: &str) -> Result<DataSpec> {
        if spec == "digits" {
            Ok(DataSpec::Digits)
        } else if let Some(name) = spec.strip_prefix("toy:") {
            Ok(DataSpec::Toy(Toy::parse(name)?))
        } else if let Some(paths) = spec.strip_prefix("idx:").filter(|p| !p.is_empty()) {
            let (images, labels) = match paths.split_once(',') {
                Some((i, l)) => (i, Some(PathBuf::from(l))),
                None => (paths, None),
            };
            Ok(DataSpec::Idx {
                images: images.into(),
                labels,
            })
        } else if let Some(name) = spec.strip_prefix("host:").filter(|n| !n.is_empty()) {
            Ok(DataSpec::Host(name.into()))
        } else if let Some(path) = spec.strip_prefix("pairs:").filter(|p| !p.is_empty()) {
            Ok(DataSpec::Pairs(path.into()))
        } else {
            Err(Error::Config(format!(
                "unknown data {spec:?}: use digits, toy:NAME ({}), idx:IMAGES[,LABELS], \
                 host:NAME (batches the program brings itself) or pairs:PATH (reflow pairs)",
                TOYS.join(", ")
            )))
        }
    }

    /// Whether the examples are images (`None` for host data, whose shape the model says, and
    /// for pairs, whose file says).
    pub fn is_image(&self) -> Option<bool> {
        match self {
            DataSpec::Digits | DataSpec::Idx { .. } => Some(true),
            DataSpec::Toy(_) => Some(false),
            DataSpec::Host(_) | DataSpec::Pairs(_) => None,
        }
    }

    /// The name a default run directory takes: the text form without an IDX file's labels, with
    /// characters that do not belong in a file name replaced by `_`.
    pub fn dir_name(&self) -> String {
        let text = match self {
            DataSpec::Idx { images, .. } => format!("idx:{}", images.display()),
            other => other.to_string(),
        };
        text.replace([':', '/', '\\', ','], "_")
    }

    /// Load the data set (toys drawn from `seed`) within the host budget.
    pub fn load(&self, seed: u64) -> Result<Dataset> {
        self.load_within(seed, HOST_BUDGET_BYTES)
    }

    /// Load the data set, refusing files whose images take more than `max_bytes` as f32 (one
    /// device buffer, say) before their data is read.
    pub fn load_within(&self, seed: u64, max_bytes: u64) -> Result<Dataset> {
        match self {
            DataSpec::Digits => digits(),
            DataSpec::Toy(t) => toy(t.name(), TOY_POINTS, seed),
            DataSpec::Idx { images, labels } => idx_within(images, labels.as_deref(), max_bytes),
            DataSpec::Host(name) => Err(Error::Config(format!(
                "the data host:{name} is brought by the program that trained on it (batch by \
                 batch); there is no data set to load"
            ))),
            DataSpec::Pairs(path) => {
                let pairs = crate::pairs::Pairs::load(path)?;
                // Uploaded as one buffer of examples and noise side by side.
                let bytes = (pairs.noise.len() as u64).saturating_mul(8);
                if bytes > max_bytes {
                    return Err(Error::TooLarge(format!(
                        "the pairs in {} take {} on the device, more than the {} allowed",
                        path.display(),
                        show_bytes(bytes),
                        show_bytes(max_bytes)
                    )));
                }
                Ok(pairs.to_dataset(&self.to_string()))
            }
        }
    }
}

impl fmt::Display for DataSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSpec::Digits => write!(f, "digits"),
            DataSpec::Toy(t) => write!(f, "toy:{}", t.name()),
            DataSpec::Idx { images, labels } => {
                write!(f, "idx:{}", images.display())?;
                match labels {
                    Some(l) => write!(f, ",{}", l.display()),
                    None => Ok(()),
                }
            }
            DataSpec::Host(name) => write!(f, "host:{name}"),
            DataSpec::Pairs(path) => write!(f, "pairs:{}", path.display()),
        }
    }
}

impl FromStr for DataSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<DataSpec> {
        DataSpec::parse(s)
    }
}

impl Serialize for DataSpec {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DataSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<DataSpec, D::Error> {
        let text = String::deserialize(d)?;
        DataSpec::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A data set in host memory, ready to upload once.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// The text form of its [`DataSpec`] (`digits`, `toy:moons`, `idx:PATH`).
    pub name: String,
    /// Shape of one example: `[C, H, W]` for images, `[2]` for points.
    pub shape: Vec<usize>,
    /// `[N * dim]`, images in [-1, 1].
    pub x: Vec<f32>,
    /// Class of each example, if labelled.
    pub labels: Option<Vec<u32>>,
    /// Number of classes (0 when unlabelled).
    pub classes: usize,
    /// `[N * dim]`: the noise each example is coupled with (reflow pairs: the example is where
    /// the flow took this noise), or `None` for data trained on fresh noise.
    pub noise: Option<Vec<f32>>,
}

impl Dataset {
    /// Elements of one example.
    pub fn dim(&self) -> usize {
        self.shape.iter().product()
    }
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.x.len().checked_div(self.dim()).unwrap_or(0)
    }
    /// Whether it holds no example.
    pub fn is_empty(&self) -> bool {
        self.x.is_empty()
    }
    /// Whether the examples are images `[C, H, W]` (else points `[D]`).
    pub fn is_image(&self) -> bool {
        self.shape.len() == 3
    }

    /// Parse a `--data` value ([`DataSpec::parse`]) and load it within the host budget.
    pub fn from_spec(spec: &str, seed: u64) -> Result<Dataset> {
        Dataset::from_spec_within(spec, seed, HOST_BUDGET_BYTES)
    }

    /// [`Dataset::from_spec`] for a data set of at most `max_bytes` as f32 (one device buffer).
    pub fn from_spec_within(spec: &str, seed: u64, max_bytes: u64) -> Result<Dataset> {
        DataSpec::parse(spec)?.load_within(seed, max_bytes)
    }

    /// One line for the log: what was loaded, and the classes the labels imply.
    pub fn describe(&self) -> String {
        let shape = self
            .shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x");
        let what = if self.is_image() { "images" } else { "points" };
        let mut line = format!("{}: {} {what} of {shape}", self.name, self.len());
        match &self.labels {
            Some(labels) => {
                let mut present = vec![false; self.classes];
                for &l in labels {
                    if let Some(p) = present.get_mut(l as usize) {
                        *p = true;
                    }
                }
                let max = labels.iter().max().copied().unwrap_or(0);
                line += &format!(
                    ", labels 0..={max}: {} classes ({} of them present)",
                    self.classes,
                    present.iter().filter(|&&p| p).count()
                );
            }
            None => line += ", unlabelled",
        }
        line
    }

    /// Bound the classes by `--classes K`: every label must be below `classes`, which becomes
    /// the number of classes (a class may have no examples).
    pub fn set_classes(&mut self, classes: usize) -> Result<()> {
        let Some(labels) = &self.labels else {
            return Err(Error::Config(format!(
                "--classes {classes}: {} has no labels",
                self.name
            )));
        };
        if classes == 0 {
            return Err(Error::Config(
                "--classes 0: give the number of classes, at least 1 (leave it out to take it from the labels)".into(),
            ));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= classes)
        {
            return Err(Error::Config(format!(
                "--classes {classes}: example {i} of {} has label {l}; labels must lie in 0..={}",
                self.name,
                classes - 1
            )));
        }
        self.classes = classes;
        Ok(())
    }

    /// Split off the last `n` examples (a held-out set).
    pub fn split_last(&self, n: usize) -> (Dataset, Dataset) {
        let d = self.dim();
        let keep = self.len().saturating_sub(n);
        let part = |range: std::ops::Range<usize>| Dataset {
            x: self.x[range.start * d..range.end * d].to_vec(),
            labels: self.labels.as_ref().map(|l| l[range.clone()].to_vec()),
            noise: self
                .noise
                .as_ref()
                .map(|n| n[range.start * d..range.end * d].to_vec()),
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
        .map_err(|e| Error::Data(format!("the embedded digits do not decompress: {e}")))?;
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate() {
        let values: Vec<u32> = line
            .split(',')
            .map(|v| v.trim().parse())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Data(format!("digits line {}: {e}", n + 1)))?;
        if values.len() != 65 {
            return Err(Error::Data(format!(
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
        noise: None,
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
        noise: None,
    })
}

/// Bytes of an IDX header: the 4-byte magic and 4 bytes per dimension.
fn idx_header_len(dims: usize) -> usize {
    4 + 4 * dims
}

/// Read an IDX file of unsigned bytes, gzipped or not: (dimensions, data). The header is read
/// first; the data it promises is sized with checked arithmetic and refused, before it is read,
/// when a dimension is zero, when it exceeds `max_elems`, or (uncompressed) when it disagrees
/// with the file's length. A gzipped body is inflated through a bound of what the header allows,
/// so a small file cannot inflate into more.
fn read_idx(path: &Path, want_dims: usize, max_elems: u64) -> Result<(Vec<usize>, Vec<u8>)> {
    let cannot = |e: std::io::Error| {
        Error::Io(format!(
            "cannot read {}: {e} (give the path of an MNIST-format IDX file, gzipped or not)",
            path.display()
        ))
    };
    let bad =
        |why: String| Error::Data(format!("{} is not a valid IDX file: {why}", path.display()));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(bad(
            "it is not a regular file (a device, a pipe or a directory)".into(),
        ));
    }
    let file_len = meta.len();
    let mut file = std::io::BufReader::new(file);
    let gzipped = {
        use std::io::BufRead;
        file.fill_buf().map_err(cannot)?.starts_with(&[0x1f, 0x8b])
    };
    let mut reader: Box<dyn Read> = if gzipped {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let inflate = |e: std::io::Error| {
        if gzipped {
            bad(format!("it is gzipped but does not decompress: {e}"))
        } else {
            cannot(e)
        }
    };
    let mut header = vec![0u8; idx_header_len(want_dims)];
    let got = read_up_to(&mut reader, &mut header).map_err(inflate)?;
    if got < 4 {
        return Err(bad("shorter than its 4-byte magic".into()));
    }
    let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let want_magic = 0x0800 + want_dims as u32;
    if magic != want_magic {
        return Err(bad(format!(
            "magic {magic:#06x}, expected {want_magic:#06x} ({} of unsigned bytes; MNIST images have 2051, labels 2049)",
            if want_dims == 3 { "images" } else { "labels" }
        )));
    }
    if got < header.len() {
        return Err(bad("truncated header".into()));
    }
    let dims: Vec<usize> = header[4..]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    if dims.contains(&0) {
        return Err(bad(format!(
            "its header gives the dimensions {dims:?}, one of them zero: it holds no data"
        )));
    }
    let count = checked_product(dims.iter().map(|&d| d as u64));
    let Some(count) = count.filter(|&c| c <= max_elems) else {
        return Err(Error::TooLarge(format!(
            "{}: its header promises {dims:?} = {} values, more than the {max_elems} (as f32: {}) \
             that may be loaded here (the device's largest buffer, or the host budget)",
            path.display(),
            count.map_or("more than 2^64".into(), |c| c.to_string()),
            show_bytes(max_elems.saturating_mul(4))
        )));
    };
    if !gzipped && file_len != idx_header_len(want_dims) as u64 + count {
        return Err(bad(format!(
            "the header promises {dims:?} = {count} bytes of data, the file has {} (truncated or corrupt)",
            file_len.saturating_sub(idx_header_len(want_dims) as u64)
        )));
    }
    // One byte more than promised shows a body that is too long; an uncompressed body was
    // measured above, so its buffer is allocated once.
    let mut data = Vec::with_capacity(if gzipped { 0 } else { count as usize });
    reader
        .take(count + 1)
        .read_to_end(&mut data)
        .map_err(inflate)?;
    let body = if gzipped { "decompressed body" } else { "file" };
    if data.len() as u64 > count {
        return Err(bad(format!(
            "the header promises {dims:?} = {count} bytes of data, the {body} holds more (corrupt)"
        )));
    }
    if (data.len() as u64) < count {
        return Err(bad(format!(
            "the header promises {dims:?} = {count} bytes of data, the {body} holds only {} (truncated or corrupt)",
            data.len()
        )));
    }
    Ok((dims, data))
}

/// Fill `buf` as far as the reader allows; the number of bytes read.
fn read_up_to(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// MNIST-format images (magic 2051) and, optionally, labels (magic 2049), within the host budget.
pub fn idx(images: &Path, labels: Option<&Path>) -> Result<Dataset> {
    idx_within(images, labels, HOST_BUDGET_BYTES)
}

/// MNIST-format images and optional labels whose images take at most `max_bytes` as f32 (the
/// size of one device buffer, say); larger files are refused before their data is read.
pub fn idx_within(images: &Path, labels: Option<&Path>, max_bytes: u64) -> Result<Dataset> {
    let (dims, pixels) = read_idx(images, 3, max_bytes / 4)?;
    let x = pixels.iter().map(|&p| p as f32 / 127.5 - 1.0).collect();
    drop(pixels);
    let (labels, classes) = match labels {
        Some(path) => {
            let (ldims, l) = read_idx(path, 1, dims[0] as u64).map_err(|e| match e {
                Error::TooLarge(_) => Error::Data(format!(
                    "{} has more labels than the {} images in {}",
                    path.display(),
                    dims[0],
                    images.display()
                )),
                e => e,
            })?;
            if ldims[0] != dims[0] {
                return Err(Error::Data(format!(
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
        noise: None,
    })
}

/// A data set held on the GPU (uploaded once) to draw batches from without the host: each
/// batch is gathered on the GPU, uniformly with replacement, from the counter-based random
/// stream 2 of `(seed, step)`, so a batch depends only on the data, the seed and the step.
pub struct GpuDataset {
    /// `[N, dim]`, or for reflow pairs `[N, 2 * dim]`: each example followed by its noise.
    x: Tensor,
    /// Class numbers as f32 (the form the networks and the flow kernels take); the null class
    /// for unlabelled data.
    labels: Tensor,
    shape: Vec<usize>,
    paired: bool,
}

impl GpuDataset {
    /// Upload `data` (refusing an empty one). Unlabelled examples get `null_label`.
    pub fn upload(gpu: &Gpu, data: &Dataset, null_label: u32) -> Result<GpuDataset> {
        if data.is_empty() {
            return Err(Error::Config(format!("{} holds no examples", data.name)));
        }
        let labels: Vec<f32> = match &data.labels {
            Some(l) => l.iter().map(|&v| v as f32).collect(),
            None => vec![null_label as f32; data.len()],
        };
        let (n, d) = (data.len(), data.dim());
        let x = match &data.noise {
            None => Tensor::from_slice(gpu, &[n, d], &data.x)?,
            Some(noise) => {
                if noise.len() != data.x.len() {
                    return Err(Error::Data(format!(
                        "{}: {} noise values for {} example values",
                        data.name,
                        noise.len(),
                        data.x.len()
                    )));
                }
                // One row per pair, so that one gather draws an example with its noise.
                let rows: Vec<f32> = data
                    .x
                    .chunks_exact(d)
                    .zip(noise.chunks_exact(d))
                    .flat_map(|(x, e)| x.iter().chain(e).copied())
                    .collect();
                Tensor::from_slice(gpu, &[n, 2 * d], &rows)?
            }
        };
        Ok(GpuDataset {
            x,
            labels: Tensor::from_slice(gpu, &[n], &labels)?,
            shape: data.shape.clone(),
            paired: data.noise.is_some(),
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.x.shape()[0]
    }

    /// Whether it holds no example (never: [`GpuDataset::upload`] refuses that).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shape of one example.
    pub fn example_shape(&self) -> &[usize] {
        &self.shape
    }

    /// The examples, `[N, dim]` (for reflow pairs `[N, 2 * dim]`, each example followed by its
    /// noise).
    pub fn examples(&self) -> &Tensor {
        &self.x
    }

    /// Whether the examples come with their own noise (reflow pairs).
    pub fn is_paired(&self) -> bool {
        self.paired
    }

    /// A batch of `batch` examples `[batch, dim]` (for reflow pairs `[batch, 2, dim]`, each
    /// example and its noise) and their labels `[batch]` (f32 class numbers, as
    /// `Model::forward` takes them), drawn for `(seed, step)`; recorded, not yet run.
    pub fn batch(&self, batch: usize, seed: u64, step: u32) -> Result<(Tensor, Tensor)> {
        self.batch_slice(batch, 0, seed, step)
    }

    /// Samples `first_sample..first_sample + batch` of the batch of (seed, step) that
    /// [`GpuDataset::batch`] would draw with a larger batch: a rank's slice of a global batch.
    pub fn batch_slice(
        &self,
        batch: usize,
        first_sample: usize,
        seed: u64,
        step: u32,
    ) -> Result<(Tensor, Tensor)> {
        if batch == 0 {
            return Err(Error::Config(
                "a batch of 0 examples: use at least 1".into(),
            ));
        }
        let (x, labels) =
            crate::ops::gather_batch_slice(&self.x, &self.labels, batch, first_sample, seed, step)?;
        if self.paired {
            let d = self.x.shape()[1] / 2;
            return Ok((x.reshape(&[batch, 2, d])?, labels));
        }
        Ok((x, labels))
    }
}
