//! Samples into the host's pictures (`shaders/texture.wgsl`): images `[n, C, H, W]` in [-1, 1]
//! drawn as a grid of pixels in [0, 1] into a host-owned storage texture (`rgba8unorm` or
//! `rgba32float`) or packed as RGBA8 words into a host-owned storage buffer, on the GPU, with no
//! round trip through the CPU. One channel is drawn gray, three as RGB, four as RGBA.
//!
//! The kernels are recorded like every other (a storage-texture binding, a host's buffer
//! wrapped without a copy) and submitted at once, with the engine's pending work before them in
//! the same submission, so the host's next submission sees the pixels.
#![warn(missing_docs)]

use crate::error::{Error, Result};
use crate::gpu::{kernel_params, kernels, Binding, Kernel, Storage};
use crate::shaders::TEXTURE;
use crate::tensor::{DType, Tensor};
use crate::Gpu;

const WG: u64 = 64;

kernel_params! {
    struct Params {
        /// Images.
        n: u32,
        channels: u32,
        height: u32,
        width: u32,
        /// Images per row of the grid.
        columns: u32,
        origin_x: u32,
        origin_y: u32,
        /// Packed output: words per row of pixels.
        row_words: u32,
        /// Packed output: the first pixel's word.
        word_offset: u32,
        _pad: [u32; 3],
    }
}

kernels! {
    // samples, the rgba8unorm texture, the rgba32float texture, the packed buffer.
    TEXTURE, Params {
        TO_RGBA8 = to_rgba8(Read, WriteTexture(Rgba8Unorm), Unused, Unused);
        TO_RGBA32F = to_rgba32f(Read, Unused, WriteTexture(Rgba32Float), Unused);
        TO_PACKED_RGBA8 = to_packed_rgba8(Read, Unused, Unused, ReadWrite);
    }
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

/// Draws sample tensors into host-owned textures and buffers. Cheap to make: its kernels go
/// through the context's pipeline cache (compiled on first use).
pub struct ImageWriter {
    gpu: Gpu,
}

impl ImageWriter {
    /// A writer on `gpu`'s device (its own or the host's).
    pub fn new(gpu: &Gpu) -> Result<ImageWriter> {
        Ok(ImageWriter { gpu: gpu.clone() })
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
        // The kernel for the format, and the binding its texture takes.
        let (kernel, slot) = match texture.format() {
            wgpu::TextureFormat::Rgba8Unorm => (&TO_RGBA8, 1),
            wgpu::TextureFormat::Rgba32Float => (&TO_RGBA32F, 2),
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
        let mut bindings = [
            samples.binding(),
            Binding::Unused,
            Binding::Unused,
            Binding::Unused,
        ];
        bindings[slot] = Binding::Texture(&view);
        self.run(kernel, &bindings, params)
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
        let host = Storage::foreign(buffer.clone());
        let packed = Binding::Buffer {
            storage: &host,
            offset: 0,
            size: end,
        };
        let bindings = [samples.binding(), Binding::Unused, Binding::Unused, packed];
        self.run(&TO_PACKED_RGBA8, &bindings, params)
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

    /// Record one pass of `kernel` over every image pixel and submit it, after the engine's
    /// pending work, in one submission.
    fn run(&self, kernel: &Kernel, bindings: &[Binding], params: Params) -> Result<()> {
        let pixels = params.n as u64 * params.height as u64 * params.width as u64;
        self.gpu
            .dispatch(kernel, &[], bindings, &params, pixels.div_ceil(WG))?;
        self.gpu.flush()
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
