//! Samples into the host's pictures (`shaders/texture.wgsl`): images `[n, C, H, W]` in [-1, 1]
//! drawn as a grid of pixels in [0, 1] into a host-owned storage texture (`rgba8unorm` or
//! `rgba32float`) or packed as RGBA8 words into a host-owned storage buffer, on the GPU, with no
//! round trip through the CPU. One channel is drawn gray, three as RGB, four as RGBA.
//!
//! These kernels bind textures and host buffers, which the engine's buffer-only dispatch path
//! does not, so [`ImageWriter`] keeps its own three pipelines and submits its own pass: first
//! the engine's pending work ([`Gpu::flush`]), then the pass, in queue order.
#![warn(missing_docs)]

use crate::error::{Error, Result};
use crate::shaders::TEXTURE;
use crate::tensor::{DType, Tensor};
use crate::Gpu;

const WG: u64 = 64;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    channels: u32,
    height: u32,
    width: u32,
    columns: u32,
    origin_x: u32,
    origin_y: u32,
    row_words: u32,
    word_offset: u32,
    _pad: [u32; 3],
}

/// Where the images go in the picture: a grid of `columns` images per row whose top-left
/// corner is at `origin` (x, y) pixels. Image `i` fills the `W x H` tile at
/// `(origin.0 + (i % columns) W, origin.1 + (i / columns) H)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    /// Images per row of the grid (at least 1).
    pub columns: u32,
    /// The grid's top-left pixel, (x, y).
    pub origin: (u32, u32),
}

impl Tiling {
    /// A grid of `columns` images per row at the picture's top-left corner.
    pub fn grid(columns: u32) -> Tiling {
        Tiling {
            columns,
            origin: (0, 0),
        }
    }

    /// The pixels (width, height) a picture needs to hold `n` images of `h x w` in this grid,
    /// origin included; `None` if that does not fit a `u32`.
    pub fn extent(&self, n: usize, h: usize, w: usize) -> Option<(u32, u32)> {
        let columns = (self.columns.max(1) as u64).min(n as u64);
        let rows = (n as u64).div_ceil(self.columns.max(1) as u64);
        let width = columns
            .checked_mul(w as u64)?
            .checked_add(self.origin.0 as u64)?;
        let height = rows
            .checked_mul(h as u64)?
            .checked_add(self.origin.1 as u64)?;
        Some((u32::try_from(width).ok()?, u32::try_from(height).ok()?))
    }
}

/// Draws sample tensors into host-owned textures and buffers. Make one per context and reuse
/// it: it compiles its three kernels once.
pub struct ImageWriter {
    gpu: Gpu,
    rgba8: (wgpu::ComputePipeline, wgpu::BindGroupLayout),
    rgba32: (wgpu::ComputePipeline, wgpu::BindGroupLayout),
    packed: (wgpu::ComputePipeline, wgpu::BindGroupLayout),
    params: wgpu::Buffer,
    params_group: wgpu::BindGroup,
}

/// The output a kernel writes: binding 1, 2 or 3 of group 0.
enum Output {
    Texture(wgpu::TextureFormat),
    Packed,
}

impl ImageWriter {
    /// Compile the kernels on `gpu`'s device (its own or the host's).
    pub fn new(gpu: &Gpu) -> Result<ImageWriter> {
        let device = gpu.device();
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(TEXTURE.name),
            source: wgpu::ShaderSource::Wgsl(TEXTURE.source.into()),
        });
        let params_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("rectiflow texture params"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            }],
        });
        let make = |entry: &str, output: Output| {
            let samples = wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: true },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            };
            let out = match output {
                Output::Texture(format) => wgpu::BindGroupLayoutEntry {
                    binding: if format == wgpu::TextureFormat::Rgba8Unorm {
                        1
                    } else {
                        2
                    },
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::StorageTexture {
                        access: wgpu::StorageTextureAccess::WriteOnly,
                        format,
                        view_dimension: wgpu::TextureViewDimension::D2,
                    },
                    count: None,
                },
                Output::Packed => wgpu::BindGroupLayoutEntry {
                    binding: 3,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: false },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
            };
            let group0 = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(entry),
                entries: &[samples, out],
            });
            let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(entry),
                bind_group_layouts: &[Some(&group0), Some(&params_layout)],
                immediate_size: 0,
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
            (pipeline, group0)
        };
        let rgba8 = make("to_rgba8", Output::Texture(wgpu::TextureFormat::Rgba8Unorm));
        let rgba32 = make(
            "to_rgba32f",
            Output::Texture(wgpu::TextureFormat::Rgba32Float),
        );
        let packed = make("to_packed_rgba8", Output::Packed);
        let params = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("rectiflow texture params"),
            size: std::mem::size_of::<Params>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let params_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("rectiflow texture params"),
            layout: &params_layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: params.as_entire_binding(),
            }],
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Kernel {
                kernel: TEXTURE.name.into(),
                message: e.to_string(),
            });
        }
        Ok(ImageWriter {
            gpu: gpu.clone(),
            rgba8,
            rgba32,
            packed,
            params,
            params_group,
        })
    }

    /// Draw `samples` `[n, C, H, W]` (f32, C = 1, 3 or 4) into `texture` (a 2-D `rgba8unorm` or
    /// `rgba32float` texture with `STORAGE_BINDING` usage, large enough for the grid: see
    /// [`Tiling::extent`]); mip level 0, array layer 0. Pixels outside the grid are left as
    /// they were.
    pub fn to_texture(
        &self,
        samples: &Tensor,
        texture: &wgpu::Texture,
        tiling: Tiling,
    ) -> Result<()> {
        let (n, c, h, w) = image_shape(samples)?;
        let (gw, gh) = extent(&tiling, n, h, w)?;
        let (pipeline, layout, binding) = match texture.format() {
            wgpu::TextureFormat::Rgba8Unorm => (&self.rgba8.0, &self.rgba8.1, 1),
            wgpu::TextureFormat::Rgba32Float => (&self.rgba32.0, &self.rgba32.1, 2),
            other => {
                return Err(Error::Config(format!(
                    "a texture of format {other:?}: samples are drawn into rgba8unorm or \
                     rgba32float storage textures"
                )))
            }
        };
        if !texture
            .usage()
            .contains(wgpu::TextureUsages::STORAGE_BINDING)
        {
            return Err(Error::Config(format!(
                "the texture has usage {:?}; create it with STORAGE_BINDING to draw into it",
                texture.usage()
            )));
        }
        if texture.dimension() != wgpu::TextureDimension::D2 || texture.sample_count() != 1 {
            return Err(Error::Config(
                "samples are drawn into single-sampled 2-D textures".into(),
            ));
        }
        if texture.width() < gw || texture.height() < gh {
            return Err(Error::Shape(format!(
                "{n} images of {h}x{w} in {} columns from ({}, {}) need {gw}x{gh} pixels; the \
                 texture has {}x{}",
                tiling.columns,
                tiling.origin.0,
                tiling.origin.1,
                texture.width(),
                texture.height()
            )));
        }
        let view = texture.create_view(&wgpu::TextureViewDescriptor {
            dimension: Some(wgpu::TextureViewDimension::D2),
            base_mip_level: 0,
            mip_level_count: Some(1),
            base_array_layer: 0,
            array_layer_count: Some(1),
            ..Default::default()
        });
        let params = self.params(n, c, h, w, tiling, 0, 0);
        self.run(
            samples,
            pipeline,
            layout,
            binding,
            wgpu::BindingResource::TextureView(&view),
            params,
        )
    }

    /// Draw `samples` `[n, C, H, W]` packed as RGBA8 words (red in the lowest byte) into a
    /// host-owned `buffer` (`STORAGE` usage): row `y` of the grid starts at byte
    /// `offset + y * bytes_per_row` (both multiples of 4; `bytes_per_row` at least 4 bytes per
    /// pixel of the grid's width, and a multiple of 256 for a later `copy_buffer_to_texture`).
    /// Bytes outside the grid are left as they were.
    pub fn to_buffer(
        &self,
        samples: &Tensor,
        buffer: &wgpu::Buffer,
        offset: u64,
        bytes_per_row: u32,
        tiling: Tiling,
    ) -> Result<()> {
        let (n, c, h, w) = image_shape(samples)?;
        let (gw, gh) = extent(&tiling, n, h, w)?;
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::Config(format!(
                "the buffer has usage {:?}; create it with STORAGE to draw into it",
                buffer.usage()
            )));
        }
        if !offset.is_multiple_of(4) || !bytes_per_row.is_multiple_of(4) {
            return Err(Error::Shape(format!(
                "offset {offset} and bytes_per_row {bytes_per_row} must be multiples of 4"
            )));
        }
        if (bytes_per_row as u64) < 4 * gw as u64 {
            return Err(Error::Shape(format!(
                "bytes_per_row {bytes_per_row} is less than the grid's {gw} pixels of 4 bytes"
            )));
        }
        // The last row needs only the grid's width. An end past u64 is past any buffer.
        let end = ((gh as u64 - 1) * bytes_per_row as u64)
            .checked_add(4 * gw as u64)
            .and_then(|bytes| bytes.checked_add(offset))
            .unwrap_or(u64::MAX);
        if end > buffer.size() {
            return Err(Error::Shape(format!(
                "{n} images of {h}x{w} in {} columns need {end} bytes of the buffer; it has {}",
                tiling.columns,
                buffer.size()
            )));
        }
        let max = self.gpu.limits().max_storage_buffer_binding_size;
        if end > max {
            return Err(Error::TooLarge(format!(
                "drawing into the first {end} bytes of a buffer exceeds this device's \
                 max_storage_buffer_binding_size of {max} bytes"
            )));
        }
        let word_offset =
            u32::try_from(offset / 4).map_err(|_| Error::TooLarge(format!("offset {offset}")))?;
        let params = self.params(n, c, h, w, tiling, bytes_per_row / 4, word_offset);
        let binding = wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer,
            offset: 0,
            size: wgpu::BufferSize::new(end),
        });
        self.run(samples, &self.packed.0, &self.packed.1, 3, binding, params)
    }

    #[allow(clippy::too_many_arguments)]
    fn params(
        &self,
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        tiling: Tiling,
        row_words: u32,
        word_offset: u32,
    ) -> Params {
        Params {
            n: n as u32,
            channels: c as u32,
            height: h as u32,
            width: w as u32,
            columns: tiling.columns,
            origin_x: tiling.origin.0,
            origin_y: tiling.origin.1,
            row_words,
            word_offset,
            _pad: [0; 3],
        }
    }

    /// Submit the engine's pending work, then one pass of `pipeline` over every image pixel.
    fn run(
        &self,
        samples: &Tensor,
        pipeline: &wgpu::ComputePipeline,
        layout: &wgpu::BindGroupLayout,
        binding: u32,
        output: wgpu::BindingResource,
        params: Params,
    ) -> Result<()> {
        let pixels = params.n as u64 * params.height as u64 * params.width as u64;
        let groups = pixels.div_ceil(WG);
        let max = self.gpu.limits().max_compute_workgroups_per_dimension as u64;
        let x = groups.min(max);
        let y = groups.div_ceil(x.max(1));
        if y > max {
            return Err(Error::TooLarge(format!(
                "{pixels} pixels need more workgroups than this device can launch"
            )));
        }
        self.gpu.flush()?;
        let device = self.gpu.device();
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let (storage, offset, size) = samples.binding();
        let group0 = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("rectiflow texture"),
            layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: storage.buffer(),
                        offset,
                        size: wgpu::BufferSize::new(size),
                    }),
                },
                wgpu::BindGroupEntry {
                    binding,
                    resource: output,
                },
            ],
        });
        self.gpu
            .queue()
            .write_buffer(&self.params, 0, bytemuck::bytes_of(&params));
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("rectiflow texture"),
        });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("rectiflow texture"),
                timestamp_writes: None,
            });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &group0, &[]);
            pass.set_bind_group(1, &self.params_group, &[]);
            pass.dispatch_workgroups(x as u32, y as u32, 1);
        }
        self.gpu.queue().submit([encoder.finish()]);
        match pollster::block_on(scope.pop()) {
            Some(e) => Err(Error::Gpu(format!("drawing samples: {e}"))),
            None => Ok(()),
        }
    }
}

/// `(n, C, H, W)` of an image batch the kernels take.
fn image_shape(samples: &Tensor) -> Result<(usize, usize, usize, usize)> {
    match *samples.shape() {
        [n, c, h, w]
            if samples.dtype() == DType::F32
                && n > 0
                && h > 0
                && w > 0
                && matches!(c, 1 | 3 | 4)
                && u32::try_from(samples.numel()).is_ok() =>
        {
            Ok((n, c, h, w))
        }
        _ => Err(Error::Shape(format!(
            "samples to draw must be f32 images [n, C, H, W] with C = 1, 3 or 4 (fewer than 2^32 \
             values), got {:?} {:?}",
            samples.dtype(),
            samples.shape()
        ))),
    }
}

fn extent(tiling: &Tiling, n: usize, h: usize, w: usize) -> Result<(u32, u32)> {
    if tiling.columns == 0 {
        return Err(Error::Config("a grid of 0 columns: use at least 1".into()));
    }
    tiling.extent(n, h, w).ok_or_else(|| {
        Error::TooLarge(format!(
            "a grid of {n} images of {h}x{w} in {} columns does not fit 2^32 pixels",
            tiling.columns
        ))
    })
}
