//! Kernels and their compiled pipelines. A [`Kernel`] names a WGSL entry point and the access of
//! each of its storage bindings; the [`PipelineCache`] compiles each (kernel, override constants)
//! pair once, and caches bind-group layouts and bind groups (pooled buffers keep their ids, so a
//! repeated step finds its bind groups already made).
//!
//! Parameter convention shared by every shader: storage buffers in `@group(0)` at bindings
//! `0..n`, and one parameter struct declared exactly as
//! `@group(1) @binding(0) var<uniform> params: Params;`. Where the device supports immediates,
//! that line is rewritten to `var<immediate> params: Params;` before compiling.

use super::pool::Storage;
use super::PARAMS_BYTES;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One WGSL source file.
#[derive(Debug)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
    /// Device features the file needs (e.g. `SHADER_F16` for `enable f16;`).
    pub requires: wgpu::Features,
}

/// How a kernel uses one storage binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    ReadWrite,
    /// A binding number this entry point does not use (its file declares it for another entry):
    /// left out of the layout, so nothing needs binding there.
    Unused,
}

/// One entry point of a shader, with the access of each storage binding in order.
#[derive(Debug)]
pub struct Kernel {
    pub shader: &'static Shader,
    pub entry: &'static str,
    pub access: &'static [Access],
}

/// The declaration every shader uses for its parameters, and its immediate-data form.
const UNIFORM_PARAMS: &str = "@group(1) @binding(0) var<uniform> params: Params;";
const IMMEDIATE_PARAMS: &str = "var<immediate> params: Params;";

type PipelineKey = (&'static str, &'static str, Vec<(&'static str, u64)>);
type BindKey = (Vec<Access>, Vec<(u64, u64, u64)>);

struct Layouts {
    group0: wgpu::BindGroupLayout,
    pipeline: wgpu::PipelineLayout,
}

pub(crate) struct PipelineCache {
    device: wgpu::Device,
    use_immediates: bool,
    params_layout: wgpu::BindGroupLayout,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    layouts: Mutex<HashMap<Vec<Access>, Arc<Layouts>>>,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
    bind_groups: Mutex<HashMap<BindKey, wgpu::BindGroup>>,
}

/// Bind groups cached before the cache is cleared (each pins a few buffers).
const MAX_BIND_GROUPS: usize = 8192;

impl PipelineCache {
    pub fn new(device: wgpu::Device, use_immediates: bool) -> Self {
        let params_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("rectiflow params"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: wgpu::BufferSize::new(PARAMS_BYTES as u64),
                },
                count: None,
            }],
        });
        PipelineCache {
            device,
            use_immediates,
            params_layout,
            modules: Mutex::default(),
            layouts: Mutex::default(),
            pipelines: Mutex::default(),
            bind_groups: Mutex::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.pipelines.lock().unwrap().len()
    }

    pub fn params_layout(&self) -> &wgpu::BindGroupLayout {
        &self.params_layout
    }

    fn layouts(&self, access: &[Access]) -> Arc<Layouts> {
        let mut map = self.layouts.lock().unwrap();
        if let Some(l) = map.get(access) {
            return l.clone();
        }
        let entries: Vec<_> = access
            .iter()
            .enumerate()
            .filter(|(_, a)| **a != Access::Unused)
            .map(|(i, a)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: *a == Access::Read,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let group0 = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("rectiflow storage"),
                entries: &entries,
            });
        let pipeline = if self.use_immediates {
            self.device
                .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some("rectiflow"),
                    bind_group_layouts: &[Some(&group0)],
                    immediate_size: PARAMS_BYTES as u32,
                })
        } else {
            self.device
                .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some("rectiflow"),
                    bind_group_layouts: &[Some(&group0), Some(&self.params_layout)],
                    immediate_size: 0,
                })
        };
        let l = Arc::new(Layouts { group0, pipeline });
        map.insert(access.to_vec(), l.clone());
        l
    }

    fn module(&self, shader: &'static Shader) -> Result<wgpu::ShaderModule> {
        let mut modules = self.modules.lock().unwrap();
        if let Some(m) = modules.get(shader.name) {
            return Ok(m.clone());
        }
        if !shader.source.contains(UNIFORM_PARAMS) {
            return Err(Error::Kernel {
                kernel: shader.name.into(),
                message: format!("the shader must declare its parameters as `{UNIFORM_PARAMS}`"),
            });
        }
        let source = if self.use_immediates {
            shader.source.replace(UNIFORM_PARAMS, IMMEDIATE_PARAMS)
        } else {
            shader.source.to_string()
        };
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(shader.name),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        };
        let module = if crate::shaders::ALL.iter().any(|s| std::ptr::eq(*s, shader)) {
            // The engine's own kernels run without naga's loop bounding: it wraps every loop
            // iteration in a 64-bit countdown and a branch, which, once a small constant loop is
            // unrolled, nests a branch around each multiply-add (measured: up to 3x on the
            // subgroup matmul on lavapipe). Bounds and division checks stay.
            // SAFETY: every loop in `shaders/` is bounded by its own condition (the tests run
            // them all), which is what turning loop bounding off requires.
            let checks = wgpu::ShaderRuntimeChecks {
                force_loop_bounding: false,
                ..wgpu::ShaderRuntimeChecks::checked()
            };
            unsafe { self.device.create_shader_module_trusted(desc, checks) }
        } else {
            self.device.create_shader_module(desc)
        };
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Kernel {
                kernel: shader.name.into(),
                message: e.to_string(),
            });
        }
        modules.insert(shader.name, module.clone());
        Ok(module)
    }

    /// The pipeline for a kernel with the given override constants, compiled on first use.
    pub fn get(
        &self,
        kernel: &Kernel,
        overrides: &[(&'static str, f64)],
        features: &wgpu::Features,
    ) -> Result<wgpu::ComputePipeline> {
        let key: PipelineKey = (
            kernel.shader.name,
            kernel.entry,
            overrides.iter().map(|(k, v)| (*k, v.to_bits())).collect(),
        );
        if let Some(p) = self.pipelines.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        if !features.contains(kernel.shader.requires) {
            return Err(Error::Kernel {
                kernel: kernel.entry.into(),
                message: format!(
                    "needs device features {:?}, which this adapter does not offer",
                    kernel.shader.requires - *features
                ),
            });
        }
        let module = self.module(kernel.shader)?;
        let layouts = self.layouts(kernel.access);
        let label = format!("{}::{}", kernel.shader.name, kernel.entry);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&label),
                layout: Some(&layouts.pipeline),
                module: &module,
                entry_point: Some(kernel.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: overrides,
                    // Every kernel writes its workgroup memory before reading it.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Kernel {
                kernel: label,
                message: e.to_string(),
            });
        }
        self.pipelines.lock().unwrap().insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// The bind group for these (buffer, offset, size) bindings, made once and cached.
    pub fn bind_group(
        &self,
        kernel: &Kernel,
        bindings: &[(&Arc<Storage>, u64, u64)],
    ) -> Result<wgpu::BindGroup> {
        let key: BindKey = (
            kernel.access.to_vec(),
            bindings.iter().map(|(s, o, n)| (s.id(), *o, *n)).collect(),
        );
        let mut cache = self.bind_groups.lock().unwrap();
        if let Some(bg) = cache.get(&key) {
            return Ok(bg.clone());
        }
        let layouts = self.layouts(kernel.access);
        let entries: Vec<_> = bindings
            .iter()
            .zip(kernel.access)
            .enumerate()
            .filter(|(_, (_, a))| **a != Access::Unused)
            .map(|(i, ((s, offset, size), _))| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: s.buffer(),
                    offset: *offset,
                    // Bindings are padded to whole vec4s where the buffer has room (pooled
                    // buffers always do: 16-byte aligned tensors, sizes multiples of 16), so a
                    // kernel may read any tensor as vec4s.
                    size: wgpu::BufferSize::new(
                        (*size)
                            .max(16)
                            .div_ceil(16)
                            .saturating_mul(16)
                            .min(s.buffer().size().saturating_sub(*offset))
                            .max((*size).max(4).div_ceil(4) * 4),
                    ),
                }),
            })
            .collect();
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.entry),
            layout: &layouts.group0,
            entries: &entries,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "binding buffers for `{}`: {e}",
                kernel.entry
            )));
        }
        if cache.len() >= MAX_BIND_GROUPS {
            cache.clear();
        }
        cache.insert(key, bg.clone());
        Ok(bg)
    }
}
