//! The device limits the engine's kernels need, checked when a context is made (on an adapter
//! of its own or on the host's device), so a device that cannot run them is refused up front
//! with the limit named, instead of failing at some kernel's first use. The naga test
//! (`tests/kernel_bindings.rs`) checks the numbers against the shaders.

use crate::error::{Error, Result};

/// Storage buffers one entry point binds at most (`qk_norm_backward`).
pub const STORAGE_BUFFERS_PER_STAGE: u32 = 8;
/// Storage textures one entry point binds at most (the texture writers).
pub const STORAGE_TEXTURES_PER_STAGE: u32 = 1;
/// Invocations per workgroup at most (elementwise, layout's 16 x 16 tiles, tiled matmul).
pub const INVOCATIONS_PER_WORKGROUP: u32 = 256;
/// Workgroup size along x at most.
pub const WORKGROUP_SIZE_X: u32 = 256;
/// Workgroup size along y at most (the transpose's 16 x 16 tiles).
pub const WORKGROUP_SIZE_Y: u32 = 16;
/// Workgroup memory one entry point uses at most (attention's two key/value tiles, 16 KiB).
pub const WORKGROUP_STORAGE_BYTES: u32 = 16384;
/// Bind groups: storage in group 0, the parameter arena in group 1 where immediates are off.
pub const BIND_GROUPS: u32 = 2;
/// The parameter block's size: an arena slot (a uniform binding with a dynamic offset) where
/// the device has no immediates of that size.
pub const PARAMS_BYTES: u32 = super::PARAMS_BYTES as u32;
/// The parameter buffer lays its views out at multiples of 512 bytes on every device (its f16
/// copy's at multiples of 256), so a device must accept storage bindings at 256 bytes.
pub const STORAGE_OFFSET_ALIGNMENT: u32 = 256;

/// One limit: its wgpu name, what the kernels need, and whether that is a floor or a ceiling.
struct Need {
    name: &'static str,
    needed: u64,
    have: fn(&wgpu::Limits) -> u64,
    /// `true`: the device's value must be at most `needed` (an alignment).
    at_most: bool,
}

const fn at_least(name: &'static str, needed: u32, have: fn(&wgpu::Limits) -> u64) -> Need {
    Need {
        name,
        needed: needed as u64,
        have,
        at_most: false,
    }
}

static NEEDS: &[Need] = &[
    at_least(
        "max_storage_buffers_per_shader_stage",
        STORAGE_BUFFERS_PER_STAGE,
        |l| l.max_storage_buffers_per_shader_stage as u64,
    ),
    at_least(
        "max_storage_textures_per_shader_stage",
        STORAGE_TEXTURES_PER_STAGE,
        |l| l.max_storage_textures_per_shader_stage as u64,
    ),
    at_least(
        "max_bindings_per_bind_group",
        STORAGE_BUFFERS_PER_STAGE,
        |l| l.max_bindings_per_bind_group as u64,
    ),
    at_least(
        "max_compute_invocations_per_workgroup",
        INVOCATIONS_PER_WORKGROUP,
        |l| l.max_compute_invocations_per_workgroup as u64,
    ),
    at_least("max_compute_workgroup_size_x", WORKGROUP_SIZE_X, |l| {
        l.max_compute_workgroup_size_x as u64
    }),
    at_least("max_compute_workgroup_size_y", WORKGROUP_SIZE_Y, |l| {
        l.max_compute_workgroup_size_y as u64
    }),
    at_least(
        "max_compute_workgroup_storage_size",
        WORKGROUP_STORAGE_BYTES,
        |l| l.max_compute_workgroup_storage_size as u64,
    ),
    at_least("max_compute_workgroups_per_dimension", 1, |l| {
        l.max_compute_workgroups_per_dimension as u64
    }),
    at_least("max_bind_groups", BIND_GROUPS, |l| l.max_bind_groups as u64),
    at_least("max_uniform_buffers_per_shader_stage", 1, |l| {
        l.max_uniform_buffers_per_shader_stage as u64
    }),
    at_least("max_dynamic_uniform_buffers_per_pipeline_layout", 1, |l| {
        l.max_dynamic_uniform_buffers_per_pipeline_layout as u64
    }),
    at_least("max_uniform_buffer_binding_size", PARAMS_BYTES, |l| {
        l.max_uniform_buffer_binding_size
    }),
    Need {
        name: "min_storage_buffer_offset_alignment",
        needed: STORAGE_OFFSET_ALIGNMENT as u64,
        have: |l| l.min_storage_buffer_offset_alignment as u64,
        at_most: true,
    },
];

/// Refuse a device (named `who`) whose `limits` fall short of what the kernels need, naming the
/// first limit that does and the value needed.
pub fn check(limits: &wgpu::Limits, who: &str) -> Result<()> {
    for need in NEEDS {
        let have = (need.have)(limits);
        let short = if need.at_most {
            have > need.needed
        } else {
            have < need.needed
        };
        if short {
            let (bound, hint) = if need.at_most {
                ("at most", "")
            } else {
                (
                    "at least",
                    " (a host's device: request the adapter's limits, or at least these)",
                )
            };
            return Err(Error::Device(format!(
                "{who}: the device's {} is {have}; rectiflow's kernels need {bound} {}{hint}",
                need.name, need.needed
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn default_limits_pass_and_a_short_one_is_named() {
        // wgpu's defaults (what a host gets without asking) are enough.
        check(&wgpu::Limits::default(), "defaults").unwrap();
        let limits = wgpu::Limits {
            max_storage_buffers_per_shader_stage: 4,
            ..Default::default()
        };
        let err = check(&limits, "small").unwrap_err().to_string();
        assert!(
            err.contains("max_storage_buffers_per_shader_stage is 4") && err.contains("at least 8"),
            "{err}"
        );
        let limits = wgpu::Limits {
            min_storage_buffer_offset_alignment: 512,
            ..Default::default()
        };
        let err = check(&limits, "coarse").unwrap_err().to_string();
        assert!(err.contains("at most 256"), "{err}");
    }
}
