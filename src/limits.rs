//! Resource limits: what a size read from a flag, a run configuration or a file may ask for.
//! Every such size is computed with checked arithmetic and compared with the device's buffer
//! limits and a stated host budget *before* anything of that size is allocated, so bad input is
//! refused with its size named instead of aborting the process on an allocation.
#![warn(missing_docs)]

use crate::error::{Error, Result};
use crate::Gpu;

/// Host memory one input may ask for (a data set as f32, a checkpoint file, the host copies of a
/// model's weights and optimiser state when a checkpoint is written): 4 GiB.
pub const HOST_BUDGET_BYTES: u64 = 4 << 30;

/// How large a tensor and a host allocation may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// The largest tensor: the smaller of the device's `max_storage_buffer_binding_size` and
    /// `max_buffer_size` (every tensor is bound whole to some kernel).
    pub tensor_bytes: u64,
    /// Host memory (see [`HOST_BUDGET_BYTES`]).
    pub host_bytes: u64,
}

impl Budget {
    /// The budget of `gpu`'s device with the default host budget.
    pub fn of(gpu: &Gpu) -> Budget {
        Budget::from_limits(gpu.limits())
    }

    /// The budget for a device with these limits and the default host budget.
    pub fn from_limits(limits: &wgpu::Limits) -> Budget {
        Budget {
            tensor_bytes: limits
                .max_storage_buffer_binding_size
                .min(limits.max_buffer_size),
            host_bytes: HOST_BUDGET_BYTES,
        }
    }

    /// Refuse a tensor of `elems` f32 values (`None`: the count overflowed) that the device
    /// cannot hold; `what` names it, `advice` says what to change.
    pub fn check_tensor(&self, what: &str, elems: Option<u64>, advice: &str) -> Result<()> {
        match elems.and_then(|n| n.checked_mul(4)) {
            Some(bytes) if bytes <= self.tensor_bytes => Ok(()),
            Some(bytes) => Err(Error::TooLarge(format!(
                "{what} would need {} in one buffer, more than this device's limit of {} \
                 (max_storage_buffer_binding_size / max_buffer_size); {advice}",
                show_bytes(bytes),
                show_bytes(self.tensor_bytes)
            ))),
            None => Err(Error::TooLarge(format!(
                "{what} has more elements than can be counted; {advice}"
            ))),
        }
    }

    /// Refuse `bytes` of host memory (`None`: the count overflowed) beyond the host budget.
    pub fn check_host(&self, what: &str, bytes: Option<u64>, advice: &str) -> Result<()> {
        match bytes {
            Some(b) if b <= self.host_bytes => Ok(()),
            Some(b) => Err(Error::TooLarge(format!(
                "{what} would need {} of host memory, more than rectiflow's budget of {}; {advice}",
                show_bytes(b),
                show_bytes(self.host_bytes)
            ))),
            None => Err(Error::TooLarge(format!(
                "{what} would need more host memory than can be counted; {advice}"
            ))),
        }
    }
}

/// The product of `dims`, or `None` when it overflows a `u64`.
pub fn checked_product<I: IntoIterator<Item = u64>>(dims: I) -> Option<u64> {
    dims.into_iter().try_fold(1u64, u64::checked_mul)
}

/// A byte count for people: `1.5 GB`, `128 MB`, `512 B` (powers of 1024).
pub fn show_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KB", "MB", "GB", "TB", "PB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
