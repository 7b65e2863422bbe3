//! The crate's error type: every failure a user can cause or meet (no adapter, a wrong shape, a
//! tensor too large for the device, a WGSL validation error, a damaged checkpoint, a data file
//! that is not what it claims, a diverged run) comes back as an [`Error`] whose variant says what
//! kind of problem it is and whose message names the problem and, where there is one, what to do
//! about it. Nothing in the library panics on bad input.
#![warn(missing_docs)]

use std::fmt;

/// Everything that can go wrong in rectiflow.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// No usable GPU adapter (or none matching `RECTIFLOW_ADAPTER`).
    NoAdapter {
        /// What the user asked for through the environment, if anything.
        wanted: Option<String>,
        /// Every adapter that was found, one line each.
        found: Vec<String>,
    },
    /// The adapter refused to create a device.
    Device(String),
    /// An operation was given tensors of the wrong shape or dtype.
    Shape(String),
    /// A tensor does not fit the device's buffer or binding limits, or an input asks for more
    /// host memory than the budget (see `limits`).
    TooLarge(String),
    /// WGSL compilation or pipeline creation failed for a kernel.
    Kernel {
        /// The kernel (`shader::entry`) or shader that failed.
        kernel: String,
        /// What the compiler or the driver said.
        message: String,
    },
    /// The GPU reported an error while running submitted work (names the kernels involved).
    Gpu(String),
    /// The operating system refused a file operation (missing file, no permission, a full disk),
    /// or a run directory is in use by another writer.
    Io(String),
    /// A checkpoint file is not usable: not a safetensors file, damaged, holding values that are
    /// not finite, or tensors that do not match the model its configuration describes.
    Checkpoint(String),
    /// A data file or array is not usable: an IDX or `.npy` file whose header or body is wrong,
    /// an array of a dtype rectiflow does not read, labels outside the model's classes.
    Data(String),
    /// A setting (environment variable, option, config value) is not valid.
    Config(String),
    /// Numbers that must be finite are not: a diverged run's loss or weights, or samples that
    /// blow up. Nothing is written from them.
    NonFinite(String),
    /// A data-parallel job stopped on every rank because one or more ranks failed (the
    /// message names each failing rank and what it met; `train::distributed`).
    Ranks(String),
}

/// Shorthand used across the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoAdapter { wanted, found } => {
                match wanted {
                    Some(w) => writeln!(f, "no GPU adapter matches RECTIFLOW_ADAPTER={w:?}.")?,
                    None => writeln!(f, "no GPU adapter with compute support was found.")?,
                }
                if found.is_empty() {
                    writeln!(f, "Adapters found: none.")?;
                } else {
                    writeln!(f, "Adapters found:")?;
                    for a in found {
                        writeln!(f, "  - {a}")?;
                    }
                }
                write!(
                    f,
                    "On a machine without a GPU, install a software Vulkan driver (Mesa's lavapipe):\n  \
                     Debian/Ubuntu: apt-get install mesa-vulkan-drivers  (on Debian bookworm take it \
                     from bookworm-backports: Mesa 25 is about 4x faster than bookworm's Mesa 22)\n  \
                     Fedora: dnf install mesa-vulkan-drivers\n\
                     Unset RECTIFLOW_ADAPTER / RECTIFLOW_BACKEND to let rectiflow choose."
                )
            }
            Error::Device(m) => write!(f, "could not create the GPU device: {m}"),
            Error::Shape(m) => write!(f, "shape error: {m}"),
            Error::TooLarge(m) => write!(f, "too large: {m}"),
            Error::Kernel { kernel, message } => {
                write!(f, "kernel `{kernel}` failed to compile: {message}")
            }
            Error::Gpu(m) => write!(f, "GPU error: {m}"),
            Error::Io(m) | Error::Checkpoint(m) | Error::Data(m) | Error::Ranks(m) => {
                write!(f, "{m}")
            }
            Error::Config(m) => write!(f, "invalid setting: {m}"),
            Error::NonFinite(m) => write!(f, "not finite: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// Returns `Err(Error::Shape(..))` with a formatted message unless the condition holds.
macro_rules! ensure_shape {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::error::Error::Shape(format!($($arg)+)));
        }
    };
}
pub(crate) use ensure_shape;
