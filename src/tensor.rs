//! Tensors: row-major, contiguous data in a storage buffer, described by a shape, a dtype and a
//! byte offset (so a tensor can be a view into a larger buffer, such as the flat parameter
//! buffer). The buffer comes from the context's pool, or is a host's own
//! ([`Tensor::from_buffer`], no copy). Upload and download convert between host `f32` and the
//! stored dtype; a host's own wgpu buffers exchange data with tensors on the GPU
//! ([`Tensor::buffer`], [`Tensor::copy_to_buffer`], [`Tensor::copy_from_buffer`]).
//!
//! This layer sits on the GPU context ([`crate::gpu`]) and below the ops: it allocates, fills
//! (through the context's own fill kernel), uploads and reads back, and computes nothing.
#![warn(missing_docs)]

use crate::error::{ensure_shape, Error, Result};
use crate::gpu::{Binding, Gpu, Storage};
use std::fmt;
use std::sync::Arc;

/// Element type stored on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE float: what every compute kernel works in.
    F32,
    /// Half precision; needs the device feature `SHADER_F16`.
    F16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
        }
    }
}

/// A tensor on the GPU. Cloning is cheap and shares the data.
#[derive(Clone)]
pub struct Tensor {
    gpu: Gpu,
    storage: Arc<Storage>,
    offset: u64,
    shape: Vec<usize>,
    dtype: DType,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({:?}, {:?})", self.shape, self.dtype)
    }
}

/// Number of elements of a shape.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// An uninitialised tensor: its contents are whatever the pooled buffer held (NaN when the
    /// context poisons new tensors).
    pub fn uninit(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let bytes = (numel(shape) as u64 * dtype.size()).div_ceil(4) * 4;
        let max = gpu.limits().max_storage_buffer_binding_size;
        if bytes > max {
            return Err(Error::TooLarge(format!(
                "a tensor of shape {shape:?} ({bytes} bytes) exceeds this device's \
                 max_storage_buffer_binding_size of {max} bytes"
            )));
        }
        if dtype == DType::F16 && !gpu.has_f16() {
            return Err(Error::Config(format!(
                "f16 tensors need the SHADER_F16 feature, which {} does not offer",
                gpu.adapter_info().name
            )));
        }
        let t = Tensor {
            gpu: gpu.clone(),
            storage: gpu.alloc(bytes)?,
            offset: 0,
            shape: shape.to_vec(),
            dtype,
        };
        if gpu.poisons() && dtype == DType::F32 {
            gpu.fill(t.binding(), f32::NAN.to_bits())?;
        }
        Ok(t)
    }

    /// Upload host data (f32) as a tensor of the given shape.
    pub fn from_slice(gpu: &Gpu, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        ensure_shape!(
            numel(shape) == data.len(),
            "shape {shape:?} holds {} elements but {} were given",
            numel(shape),
            data.len()
        );
        let t = Tensor::uninit(gpu, shape, DType::F32)?;
        t.write(data)?;
        Ok(t)
    }

    /// Upload host data, stored as f16 (needs `SHADER_F16`).
    pub fn from_slice_f16(gpu: &Gpu, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        ensure_shape!(
            numel(shape) == data.len(),
            "shape {shape:?} holds {} elements but {} were given",
            numel(shape),
            data.len()
        );
        let t = Tensor::uninit(gpu, shape, DType::F16)?;
        t.write(data)?;
        Ok(t)
    }

    /// A tensor filled with one value (f32).
    pub fn full(gpu: &Gpu, shape: &[usize], value: f32) -> Result<Tensor> {
        let t = Tensor::uninit(gpu, shape, DType::F32)?;
        gpu.fill(t.binding(), value.to_bits())?;
        Ok(t)
    }

    /// A tensor of zeros (f32).
    pub fn zeros(gpu: &Gpu, shape: &[usize]) -> Result<Tensor> {
        Tensor::full(gpu, shape, 0.0)
    }

    /// Overwrite the tensor's contents from host f32 data (converted to the tensor's dtype).
    pub fn write(&self, data: &[f32]) -> Result<()> {
        ensure_shape!(
            data.len() == self.numel(),
            "writing {} values into a tensor of shape {:?}",
            data.len(),
            self.shape
        );
        let mut bytes: Vec<u8> = match self.dtype {
            DType::F32 => bytemuck::cast_slice(data).to_vec(),
            DType::F16 => data
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
        };
        bytes.resize(bytes.len().div_ceil(4) * 4, 0);
        if bytes.is_empty() {
            return Ok(());
        }
        self.check_usage("writing into it", wgpu::BufferUsages::COPY_DST)?;
        self.gpu.write(&self.storage, self.offset, &bytes)
    }

    /// Read the tensor back to the host as f32 (submits pending work and waits for it). A
    /// host's buffer ([`Tensor::from_buffer`]) needs `COPY_SRC` usage for this.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        if self.numel() == 0 {
            return Ok(Vec::new());
        }
        self.check_usage("reading it back", wgpu::BufferUsages::COPY_SRC)?;
        let bytes = self
            .gpu
            .read_bytes(&self.storage, self.offset, self.byte_len())?;
        Ok(match self.dtype {
            DType::F32 => bytemuck::pod_collect_to_vec(&bytes),
            DType::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        })
    }

    /// The same data under another shape with as many elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        ensure_shape!(
            numel(shape) == self.numel(),
            "cannot reshape {:?} ({} elements) to {shape:?} ({} elements)",
            self.shape,
            self.numel(),
            numel(shape)
        );
        Ok(Tensor {
            shape: shape.to_vec(),
            ..self.clone()
        })
    }

    /// A view of `shape` starting `elem_offset` elements into this tensor's data. The byte
    /// offset must meet the device's storage-offset alignment (usually 256 bytes).
    pub fn view(&self, elem_offset: usize, shape: &[usize]) -> Result<Tensor> {
        ensure_shape!(
            elem_offset + numel(shape) <= self.numel(),
            "a view of {shape:?} at element {elem_offset} runs past a tensor of shape {:?}",
            self.shape
        );
        let offset = self.offset + elem_offset as u64 * self.dtype.size();
        let align = self.gpu.limits().min_storage_buffer_offset_alignment as u64;
        ensure_shape!(
            offset.is_multiple_of(align),
            "a view at byte offset {offset} is not a multiple of the device's storage alignment {align}"
        );
        Ok(Tensor {
            offset,
            shape: shape.to_vec(),
            ..self.clone()
        })
    }

    /// The shape, outermost dimension first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// The element type stored on the GPU.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    /// The context the tensor lives on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }
    /// Size of the last dimension (1 for a scalar).
    pub fn last_dim(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }
    /// Bytes of data (elements times element size).
    pub fn byte_len(&self) -> u64 {
        self.numel() as u64 * self.dtype.size()
    }
    /// Byte offset into the underlying buffer.
    pub fn byte_offset(&self) -> u64 {
        self.offset
    }

    /// The wgpu buffer that holds this tensor's data: [`Tensor::byte_len`] bytes at
    /// [`Tensor::byte_offset`] (row-major, the dtype's little-endian values), with usage
    /// `STORAGE | COPY_SRC | COPY_DST` (a pooled one), so a host can bind it or copy from it in
    /// its own passes.
    ///
    /// A pooled buffer belongs to the context's pool: it holds this tensor's data while the
    /// tensor (or a clone of it) lives, and is handed to other tensors afterwards; it may be
    /// larger than the tensor, and other views may share it. A host's buffer
    /// ([`Tensor::from_buffer`]) stays the host's. Work rectiflow has recorded is submitted
    /// by [`Gpu::flush`]: call it before submitting the host's own work on the buffer, so the
    /// queue runs them in that order.
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.storage.buffer()
    }

    /// Copy this tensor's bytes into a host-owned buffer at `offset`, on the GPU (no round trip
    /// through the CPU): rectiflow's pending work is submitted first, then the copy, so the
    /// copy sees every result recorded before it. `dst` needs `COPY_DST` usage; the offset and
    /// the tensor's byte length must be multiples of 4, and the bytes must fit.
    pub fn copy_to_buffer(&self, dst: &wgpu::Buffer, offset: u64) -> Result<()> {
        let size = self.byte_len();
        check_copy(
            "copy_to_buffer: the destination",
            dst,
            wgpu::BufferUsages::COPY_DST,
            offset,
            size,
        )?;
        self.check_usage("copy_to_buffer", wgpu::BufferUsages::COPY_SRC)?;
        let (src, src_offset) = (self.storage.buffer(), self.offset);
        submit_copy(&self.gpu, src, src_offset, dst, offset, size)
    }

    /// A new f32 tensor of `shape` holding a copy, made on the GPU, of the values at `offset`
    /// of a host-owned buffer (`COPY_SRC` usage; offset a multiple of 4). Rectiflow's pending
    /// work is submitted first, then the copy; the host's writes to `src` submitted before this
    /// call are seen.
    pub fn copy_from_buffer(
        gpu: &Gpu,
        src: &wgpu::Buffer,
        offset: u64,
        shape: &[usize],
    ) -> Result<Tensor> {
        let elems = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        let Some(size) = elems.and_then(|n| n.checked_mul(4)) else {
            return Err(Error::TooLarge(format!("a tensor of shape {shape:?}")));
        };
        check_copy(
            "copy_from_buffer: the source",
            src,
            wgpu::BufferUsages::COPY_SRC,
            offset,
            size,
        )?;
        let t = Tensor::uninit(gpu, shape, DType::F32)?;
        submit_copy(gpu, src, offset, t.storage.buffer(), t.offset, size)?;
        Ok(t)
    }

    /// Wrap `shape` f32 values at byte `offset` of a host-owned buffer as a tensor, without a
    /// copy: kernels read and write the host's buffer itself, and the buffer is never handed to
    /// the pool (the host keeps it; the tensor holds a handle). The buffer needs `STORAGE`
    /// usage (and `COPY_SRC` to read the tensor back, `COPY_DST` to write it from the host);
    /// `offset` must be a multiple of the device's storage-offset alignment; and the buffer
    /// must hold the tensor's bytes rounded up to 16 from `offset` (kernels read whole vec4s).
    /// The buffer must belong to `gpu`'s device. As with [`Tensor::buffer`], call
    /// [`Gpu::flush`] before submitting the host's own work on the buffer.
    pub fn from_buffer(
        gpu: &Gpu,
        buffer: &wgpu::Buffer,
        offset: u64,
        shape: &[usize],
    ) -> Result<Tensor> {
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::Config(format!(
                "from_buffer: the buffer has usage {:?}; create it with STORAGE (and COPY_SRC to \
                 read the tensor back, COPY_DST to write it)",
                buffer.usage()
            )));
        }
        let align = gpu.limits().min_storage_buffer_offset_alignment as u64;
        if !offset.is_multiple_of(align) {
            return Err(Error::Shape(format!(
                "from_buffer: offset {offset} is not a multiple of the device's storage \
                 alignment {align}"
            )));
        }
        let elems = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        let Some(bytes) = elems.and_then(|n| n.checked_mul(4)) else {
            return Err(Error::TooLarge(format!("a tensor of shape {shape:?}")));
        };
        let max = gpu.limits().max_storage_buffer_binding_size;
        if bytes > max {
            return Err(Error::TooLarge(format!(
                "a tensor of shape {shape:?} ({bytes} bytes) exceeds this device's \
                 max_storage_buffer_binding_size of {max} bytes"
            )));
        }
        let padded = bytes.max(1).div_ceil(16) * 16;
        if offset
            .checked_add(padded)
            .is_none_or(|end| end > buffer.size())
        {
            return Err(Error::Shape(format!(
                "from_buffer: {shape:?} at offset {offset} needs {padded} bytes (its {bytes} \
                 rounded up to 16), the buffer has {} bytes",
                buffer.size()
            )));
        }
        Ok(Tensor {
            gpu: gpu.clone(),
            storage: Storage::foreign(buffer.clone()),
            offset,
            shape: shape.to_vec(),
            dtype: DType::F32,
        })
    }

    /// Refuse an operation (`what`) that needs `usage` of a host's buffer that lacks it
    /// (pooled buffers have every usage a tensor needs).
    fn check_usage(&self, what: &str, usage: wgpu::BufferUsages) -> Result<()> {
        let has = self.storage.buffer().usage();
        if has.contains(usage) {
            return Ok(());
        }
        Err(Error::Config(format!(
            "{what}: the tensor wraps a host's buffer of usage {has:?}, without {usage:?}"
        )))
    }

    /// This tensor as a kernel binding: its bytes of its buffer.
    pub(crate) fn binding(&self) -> Binding<'_> {
        Binding::Buffer {
            storage: &self.storage,
            offset: self.offset,
            size: self.byte_len(),
        }
    }

    /// Whether two tensors share a buffer (so cannot be bound read and read-write together).
    pub(crate) fn same_buffer(&self, other: &Tensor) -> bool {
        self.storage.buffer() == other.storage.buffer()
    }

    /// Whether two tensors share bytes (views of one buffer that overlap).
    pub(crate) fn overlaps(&self, other: &Tensor) -> bool {
        self.same_buffer(other)
            && self.offset < other.offset + other.byte_len()
            && other.offset < self.offset + self.byte_len()
    }

    /// Whether the byte offset allows 16-byte (vec4) access.
    pub(crate) fn vec4_aligned(&self) -> bool {
        self.offset.is_multiple_of(16)
    }
}

/// Refuse a copy the buffer cannot take: the usage it needs, wgpu's 4-byte alignment, and the
/// bytes it holds.
fn check_copy(
    what: &str,
    buffer: &wgpu::Buffer,
    usage: wgpu::BufferUsages,
    offset: u64,
    size: u64,
) -> Result<()> {
    if !buffer.usage().contains(usage) {
        return Err(Error::Config(format!(
            "{what} buffer has usage {:?}; create it with {usage:?}",
            buffer.usage()
        )));
    }
    let align = wgpu::COPY_BUFFER_ALIGNMENT;
    if !offset.is_multiple_of(align) || !size.is_multiple_of(align) {
        return Err(Error::Shape(format!(
            "{what}: offset {offset} and size {size} must be multiples of {align} bytes"
        )));
    }
    if offset
        .checked_add(size)
        .is_none_or(|end| end > buffer.size())
    {
        return Err(Error::Shape(format!(
            "{what}: {size} bytes at offset {offset} run past the buffer's {} bytes",
            buffer.size()
        )));
    }
    Ok(())
}

/// Submit rectiflow's pending work, then one buffer-to-buffer copy in a submission of its own.
fn submit_copy(
    gpu: &Gpu,
    src: &wgpu::Buffer,
    src_offset: u64,
    dst: &wgpu::Buffer,
    dst_offset: u64,
    size: u64,
) -> Result<()> {
    gpu.flush()?;
    if size == 0 {
        return Ok(());
    }
    let device = gpu.device();
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("rectiflow copy"),
    });
    encoder.copy_buffer_to_buffer(src, src_offset, dst, dst_offset, size);
    gpu.queue().submit([encoder.finish()]);
    match pollster::block_on(scope.pop()) {
        Some(e) => Err(Error::Gpu(format!(
            "copying {size} bytes between buffers: {e}"
        ))),
        None => Ok(()),
    }
}
