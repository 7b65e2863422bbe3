//! The buffer pool: GPU buffers are reused by size class. A [`Storage`] returns its buffer to
//! the pool when the last handle to it drops, so a training step that repeats allocates nothing
//! after its first run. Counters say how well that works. A [`Storage`] may also wrap a host's
//! buffer ([`Storage::foreign`]): bound like any other, never handed to the pool.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub(crate) const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);
pub(crate) const READBACK_USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::MAP_READ.union(wgpu::BufferUsages::COPY_DST);

/// What the pool has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers created on the device.
    pub created: u64,
    /// Requests served from a free list instead of a new buffer.
    pub reused: u64,
    /// Bytes in buffers currently handed out (by size class).
    pub bytes_live: u64,
    /// The most `bytes_live` has ever been.
    pub peak_bytes: u64,
    /// Bytes in all buffers the pool owns, live or free.
    pub bytes_owned: u64,
    /// The largest single buffer ever requested (bytes, before rounding to a class).
    pub largest_request: u64,
}

/// Round a request up to its size class: powers of two up to 64 KiB, then steps of 1/8 of the
/// enclosing power of two, so no class wastes more than 12.5% above 64 KiB.
pub(crate) fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(256);
    let p = bytes.next_power_of_two();
    if p <= 65536 {
        return p;
    }
    let step = p / 16; // p/2 < bytes <= p, so steps of p/16 are at most 12.5% of bytes
    bytes.div_ceil(step) * step
}

type Key = (u64, u32); // (size class, usage bits)

struct PoolState {
    free: HashMap<Key, Vec<(u64, wgpu::Buffer)>>,
    stats: PoolStats,
}

pub(crate) struct BufferPool {
    device: wgpu::Device,
    state: Arc<Mutex<PoolState>>,
}

/// Ids of buffers, unique in the process (bind groups are cached by them).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A GPU buffer that tensors live in: from the pool (dropping the last handle hands it back)
/// or a host's own (never handed to the pool; the host keeps it).
pub(crate) struct Storage {
    buffer: wgpu::Buffer,
    id: u64,
    /// The pool it returns to and its size class there; `None` for a host's buffer.
    home: Option<(Key, Arc<Mutex<PoolState>>)>,
}

impl Storage {
    /// Wrap a host's buffer. Its usage and size are the caller's to check.
    pub fn foreign(buffer: wgpu::Buffer) -> Arc<Storage> {
        Arc::new(Storage {
            buffer,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            home: None,
        })
    }
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
    /// A stable id for this buffer (kept across reuse), used to cache bind groups.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Whether the buffer belongs to the pool (else to the host).
    pub fn is_pooled(&self) -> bool {
        self.home.is_some()
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        let Some((key, pool)) = &self.home else {
            return;
        };
        let mut st = pool.lock().unwrap();
        st.stats.bytes_live -= key.0;
        st.free
            .entry(*key)
            .or_default()
            .push((self.id, self.buffer.clone()));
    }
}

impl BufferPool {
    pub fn new(device: wgpu::Device) -> Self {
        BufferPool {
            device,
            state: Arc::new(Mutex::new(PoolState {
                free: HashMap::new(),
                stats: PoolStats::default(),
            })),
        }
    }

    pub fn stats(&self) -> PoolStats {
        self.state.lock().unwrap().stats
    }

    /// A buffer of at least `bytes` bytes with the given usage, reused if one is free.
    pub fn acquire(
        &self,
        bytes: u64,
        usage: wgpu::BufferUsages,
        limits: &wgpu::Limits,
    ) -> Result<Arc<Storage>> {
        let class = size_class(bytes);
        if bytes > limits.max_buffer_size {
            return Err(Error::TooLarge(format!(
                "a buffer of {bytes} bytes exceeds this device's max_buffer_size of {} bytes",
                limits.max_buffer_size
            )));
        }
        // Never round past what the device allows.
        let class = class.min(limits.max_buffer_size / 4 * 4);
        let key = (class, usage.bits());
        let mut st = self.state.lock().unwrap();
        st.stats.largest_request = st.stats.largest_request.max(bytes);
        let (id, buffer) = match st.free.get_mut(&key).and_then(|v| v.pop()) {
            Some(found) => {
                st.stats.reused += 1;
                found
            }
            None => {
                let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("rectiflow pool"),
                    size: class,
                    usage,
                    mapped_at_creation: false,
                });
                st.stats.created += 1;
                st.stats.bytes_owned += class;
                (NEXT_ID.fetch_add(1, Ordering::Relaxed), buffer)
            }
        };
        st.stats.bytes_live += class;
        st.stats.peak_bytes = st.stats.peak_bytes.max(st.stats.bytes_live);
        Ok(Arc::new(Storage {
            buffer,
            id,
            home: Some((key, self.state.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_cover_the_request_with_bounded_waste() {
        for bytes in (1..200_000u64)
            .step_by(97)
            .chain([1 << 20, (1 << 20) + 1, 3 << 30])
        {
            let c = size_class(bytes);
            assert!(c >= bytes, "class {c} < request {bytes}");
            if bytes > 65536 {
                assert!(
                    (c - bytes) as f64 <= 0.125 * bytes as f64,
                    "class {c} for {bytes}"
                );
            }
        }
        assert_eq!(size_class(1), 256);
        assert_eq!(size_class(1000), 1024);
    }
}
