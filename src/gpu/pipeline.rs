//! The pipeline cache: each shader module is made once (from [`Shader::wgsl`]: prelude,
//! generated constants, libraries, file), each (kernel, override constants) pair compiled once,
//! and bind-group layouts and bind groups cached too (pooled buffers keep their ids, so a
//! repeated step finds its bind groups already made).

use super::kernel::{Access, Binding, Kernel, Shader};
use super::PARAMS_BYTES;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The declaration every shader uses for its parameters, and its immediate-data form.
pub(crate) const UNIFORM_PARAMS: &str = "@group(1) @binding(0) var<uniform> params: Params;";
const IMMEDIATE_PARAMS: &str = "var<immediate> params: Params;";

type PipelineKey = (&'static str, &'static str, Vec<(&'static str, u64)>);
/// Access list and (buffer id, offset, size) per binding; bind groups with a texture or a
/// host's buffer are not cached (their resources come and go with the host).
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

/// The size to bind for `size` bytes at `offset` of `buffer`: padded to whole vec4s where the
/// buffer has room (pooled buffers always do: 16-byte aligned tensors, sizes multiples of 16),
/// so a kernel may read any tensor as vec4s.
fn padded_size(buffer: &wgpu::Buffer, offset: u64, size: u64) -> Option<wgpu::BufferSize> {
    wgpu::BufferSize::new(
        size.max(16)
            .div_ceil(16)
            .saturating_mul(16)
            .min(buffer.size().saturating_sub(offset))
            .max(size.max(4).div_ceil(4) * 4),
    )
}

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
            .filter_map(|(i, a)| {
                let ty = match *a {
                    Access::Read | Access::ReadWrite => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage {
                            read_only: *a == Access::Read,
                        },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    Access::WriteTexture(format) => wgpu::BindingType::StorageTexture {
                        access: wgpu::StorageTextureAccess::WriteOnly,
                        format,
                        view_dimension: wgpu::TextureViewDimension::D2,
                    },
                    Access::Unused => return None,
                };
                Some(wgpu::BindGroupLayoutEntry {
                    binding: i as u32,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty,
                    count: None,
                })
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
        let source = shader.wgsl();
        let source = if self.use_immediates {
            source.replace(UNIFORM_PARAMS, IMMEDIATE_PARAMS)
        } else {
            source.into_owned()
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

    /// The bind group for these bindings (one per entry of `kernel.access`), made once and
    /// cached when it holds only pooled buffers.
    pub fn bind_group(&self, kernel: &Kernel, bindings: &[Binding]) -> Result<wgpu::BindGroup> {
        let key: Option<BindKey> = bindings
            .iter()
            .map(|b| match b {
                Binding::Buffer {
                    storage,
                    offset,
                    size,
                } => storage
                    .is_pooled()
                    .then_some((storage.id(), *offset, *size)),
                Binding::Texture(_) => None,
                Binding::Unused => Some((0, 0, 0)),
            })
            .collect::<Option<Vec<_>>>()
            .map(|ids| (kernel.access.to_vec(), ids));
        let mut cache = self.bind_groups.lock().unwrap();
        if let Some(bg) = key.as_ref().and_then(|k| cache.get(k)) {
            return Ok(bg.clone());
        }
        let layouts = self.layouts(kernel.access);
        let entries: Vec<_> = bindings
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let resource = match *b {
                    Binding::Buffer {
                        storage,
                        offset,
                        size,
                    } => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: storage.buffer(),
                        offset,
                        size: padded_size(storage.buffer(), offset, size),
                    }),
                    Binding::Texture(view) => wgpu::BindingResource::TextureView(view),
                    Binding::Unused => return None,
                };
                Some(wgpu::BindGroupEntry {
                    binding: i as u32,
                    resource,
                })
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
                "binding resources for `{}`: {e}",
                kernel.entry
            )));
        }
        if let Some(key) = key {
            if cache.len() >= MAX_BIND_GROUPS {
                cache.clear();
            }
            cache.insert(key, bg.clone());
        }
        Ok(bg)
    }
}
