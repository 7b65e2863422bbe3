//! The GPU context: a device (opened on an adapter of its own choosing, `adapter.rs`, whose
//! limits are checked against [`requirements`], or adopted from the host), and the machinery
//! every op records through — the buffer pool, the pipeline cache, and the recorder that
//! batches dispatches into one submission — with uploads, fills and readback. The context knows
//! buffers and kernels, not tensors: the layers above bind their data as storage ranges.
//!
//! A [`Gpu`] is a cheap handle (an `Arc`); clone it freely. All work recorded through it is
//! submitted together when something needs a result ([`Gpu::flush`], or reading a tensor back).

mod adapter;
mod kernel;
mod pipeline;
mod pool;
mod profile;
mod recorder;
pub mod requirements;

pub use adapter::{
    cache_dir_from_env, list_adapters, AdapterReport, GpuOptions, KernelProfile, TuneMode,
    ENV_ADAPTER, ENV_BACKEND, ENV_CACHE_DIR, ENV_NO_IMMEDIATES, ENV_NO_SUBGROUPS, ENV_POISON,
    ENV_PROFILE, ENV_TUNE,
};
pub(crate) use kernel::{kernel_params, kernels, Binding};
pub use kernel::{Access, Kernel, KernelParams, ParamsLayout, Shader};
pub use pool::PoolStats;
pub(crate) use pool::Storage;
pub use profile::{Cost, DispatchTiming, KernelTotal, MatmulShape, Profile, ProfileMethod};

use crate::error::{Error, Result};
use adapter::Settings;
use pipeline::PipelineCache;
use pool::BufferPool;
use recorder::Recorder;
use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// Size in bytes of every kernel's parameter block (immediates or one arena slot).
pub(crate) const PARAMS_BYTES: usize = 128;

/// The GPU context handle. Cloning shares the same device, pools and recorder.
#[derive(Clone)]
pub struct Gpu {
    inner: Arc<GpuInner>,
}

pub(crate) struct GpuInner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    features: wgpu::Features,
    limits: wgpu::Limits,
    use_immediates: bool,
    /// Lanes per subgroup where the kernels may use subgroup operations (a fixed size only).
    subgroup_size: Option<u32>,
    poison: bool,
    profile: KernelProfile,
    pool: BufferPool,
    pipelines: PipelineCache,
    recorder: Mutex<Recorder>,
    /// A small buffer bound where a kernel's optional input is absent (it reads nothing there).
    absent: Arc<Storage>,
    /// The same for an optional read-write binding (one buffer cannot be bound both read-only
    /// and writable in one dispatch).
    absent_writable: Arc<Storage>,
    /// Errors wgpu reported outside any error scope (only when we own the device).
    uncaptured: Arc<Mutex<Vec<String>>>,
    tune: TuneMode,
    cache_dir: Option<PathBuf>,
    /// The ops layer's matmul tile table (`ops::tune`), made the first time a matmul picks its
    /// tiling; untyped, since this layer does not know the ops' types.
    matmul_tuning: OnceLock<Box<dyn Any + Send + Sync>>,
}

kernel_params! {
    /// `fill.wgsl`'s parameters.
    struct FillParams {
        /// 32-bit words to write.
        n: u32,
        /// The word written.
        value: u32,
        _pad: [u32; 2],
    }
}

kernels! {
    crate::shaders::FILL, FillParams {
        FILL = fill(ReadWrite);
    }
}

/// Words per workgroup of `fill.wgsl`: 256 invocations x 8 vec4s.
const FILL_PER_GROUP: u64 = 256 * 8 * 4;

impl Gpu {
    /// Create a context on the best adapter: a hardware GPU first, else a software one such as
    /// lavapipe. `RECTIFLOW_ADAPTER` (name substring) and `RECTIFLOW_BACKEND` narrow the choice.
    /// An adapter short of a limit the kernels need is refused with an [`Error::Device`] naming
    /// the limit and the value needed.
    pub fn new() -> Result<Gpu> {
        Self::with_options(&GpuOptions::default())
    }

    /// Like [`Gpu::new`], with explicit options (they take precedence over the environment).
    pub fn with_options(opts: &GpuOptions) -> Result<Gpu> {
        let o = adapter::open(opts)?;
        Ok(Self::build(
            o.device,
            o.queue,
            o.info,
            o.uncaptured,
            o.settings,
        ))
    }

    /// Adopt a device and queue that the host application already owns (the embedding path).
    ///
    /// The kernels use whatever optional features the device was created with (`SHADER_F16`,
    /// `IMMEDIATES`, ...). A device whose limits fall short of what the kernels need (see
    /// [`requirements`]; wgpu's default limits are enough) is refused with an [`Error::Device`]
    /// naming the limit and the value needed. rectiflow does not install an uncaptured-error
    /// handler on a borrowed device; its own work runs inside error scopes. The matmul tile
    /// tuning follows `RECTIFLOW_TUNE` and `RECTIFLOW_CACHE_DIR` as for [`Gpu::new`] (a value of
    /// `RECTIFLOW_TUNE` other than `on`, `off` or `force` is an [`Error::Config`]); it runs on
    /// buffers and submissions of its own, never the host's.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Result<Gpu> {
        let info = device.adapter_info();
        requirements::check(&device.limits(), &info.name)?;
        Ok(Self::build(
            device,
            queue,
            info,
            Arc::new(Mutex::new(Vec::new())),
            Settings::host()?,
        ))
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        uncaptured: Arc<Mutex<Vec<String>>>,
        settings: Settings,
    ) -> Gpu {
        let features = device.features();
        let limits = device.limits();
        let use_immediates = !settings.no_immediates
            && features.contains(wgpu::Features::IMMEDIATES)
            && limits.max_immediate_size as usize >= PARAMS_BYTES;
        let profile = settings
            .profile
            .unwrap_or(if info.device_type == wgpu::DeviceType::Cpu {
                KernelProfile::Cpu
            } else {
                KernelProfile::Gpu
            });
        let subgroup_size = (features.contains(wgpu::Features::SUBGROUP)
            && !settings.no_subgroups
            && info.subgroup_min_size == info.subgroup_max_size)
            .then_some(info.subgroup_min_size);
        let pool = BufferPool::new(device.clone());
        let absent = pool
            .acquire(16, pool::STORAGE_USAGE, &limits)
            .expect("a 16-byte buffer always fits");
        let absent_writable = pool
            .acquire(16, pool::STORAGE_USAGE, &limits)
            .expect("a 16-byte buffer always fits");
        let pipelines = PipelineCache::new(device.clone(), use_immediates);
        let recorder = Mutex::new(Recorder::new(&limits));
        Gpu {
            inner: Arc::new(GpuInner {
                device,
                queue,
                info,
                features,
                limits,
                use_immediates,
                subgroup_size,
                poison: settings.poison,
                profile,
                pool,
                pipelines,
                recorder,
                absent,
                absent_writable,
                uncaptured,
                tune: settings.tune,
                cache_dir: settings.cache_dir,
                matmul_tuning: OnceLock::new(),
            }),
        }
    }

    /// A second context on the same device and queue, with the same kernel designs, but a pool,
    /// pipeline cache and recorder of its own: what it records is submitted on its own and
    /// never mixed with this context's pending work (the matmul tuner times kernels on one).
    /// It does no tuning itself and does not poison its tensors.
    pub(crate) fn detached(&self) -> Gpu {
        let i = &self.inner;
        Self::build(
            i.device.clone(),
            i.queue.clone(),
            i.info.clone(),
            // Errors of this context's own work are caught by the error scopes around each of
            // its submissions; the device's handler keeps reporting to the original.
            Arc::new(Mutex::new(Vec::new())),
            Settings {
                no_immediates: !i.use_immediates,
                no_subgroups: i.subgroup_size.is_none(),
                poison: false,
                profile: Some(i.profile),
                tune: TuneMode::Off,
                cache_dir: None,
            },
        )
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.inner.info
    }
    pub fn features(&self) -> wgpu::Features {
        self.inner.features
    }
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }
    /// Whether the device can store and compute in f16 (`SHADER_F16`).
    pub fn has_f16(&self) -> bool {
        self.inner.features.contains(wgpu::Features::SHADER_F16)
    }
    /// Whether kernel parameters travel as immediates (else through the uniform arena).
    pub fn uses_immediates(&self) -> bool {
        self.inner.use_immediates
    }
    /// The subgroup size, where the device has subgroup operations of one fixed size and they
    /// are not turned off (`RECTIFLOW_NO_SUBGROUPS`).
    pub fn subgroup_size(&self) -> Option<u32> {
        self.inner.subgroup_size
    }
    /// Whether new tensors are filled with NaN before use.
    pub fn poisons(&self) -> bool {
        self.inner.poison
    }
    /// The kernel designs the ops pick (CPU drivers: barrier-free).
    pub fn profile(&self) -> KernelProfile {
        self.inner.profile
    }

    /// How matmul tile shapes are chosen here (`RECTIFLOW_TUNE`, [`GpuOptions::tune`]; the table
    /// itself: `ops::tune::table`).
    pub fn tune_mode(&self) -> TuneMode {
        self.inner.tune
    }
    /// The directory of rectiflow's caches on disk (`RECTIFLOW_CACHE_DIR`, else the XDG cache
    /// directory); `None` when none could be named.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.inner.cache_dir.as_deref()
    }
    /// The slot `ops::tune` keeps its table in, once per context.
    pub(crate) fn matmul_tuning(&self) -> &OnceLock<Box<dyn Any + Send + Sync>> {
        &self.inner.matmul_tuning
    }

    /// Counters of the buffer pool (buffers created and reused, bytes live and peak).
    pub fn pool_stats(&self) -> PoolStats {
        self.inner.pool.stats()
    }
    /// Number of compiled pipelines in the cache.
    pub fn pipeline_count(&self) -> usize {
        self.inner.pipelines.len()
    }

    /// A storage buffer of at least `bytes` bytes from the pool.
    pub(crate) fn alloc(&self, bytes: u64) -> Result<Arc<Storage>> {
        self.inner
            .pool
            .acquire(bytes, pool::STORAGE_USAGE, &self.inner.limits)
    }

    /// Record one dispatch of one of the engine's kernels. `bindings` follow the kernel's
    /// `access` list (one each; [`Binding::Unused`] where the kernel uses none); `params` is the
    /// kernel's parameter struct; `groups` is the number of workgroups, linear — it is split
    /// over x, y, z when it exceeds the per-dimension limit, and every kernel folds its
    /// workgroup id back into one linear index (the prelude's `workgroup_index`).
    pub(crate) fn dispatch<P: KernelParams>(
        &self,
        kernel: &Kernel,
        overrides: &[(&'static str, f64)],
        bindings: &[Binding],
        params: &P,
        groups: u64,
    ) -> Result<()> {
        // A kernel without a count of its own is taken to be memory-bound: every byte it binds
        // read or written once.
        let bytes = bindings
            .iter()
            .map(|b| match b {
                Binding::Buffer { size, .. } => *size as f64,
                _ => 0.0,
            })
            .sum();
        let cost = Cost {
            bytes,
            ..Cost::default()
        };
        self.dispatch_costed(kernel, overrides, bindings, params, groups, cost)
    }

    /// [`Gpu::dispatch`] with the work the dispatch does, for profiles.
    pub(crate) fn dispatch_costed<P: KernelParams>(
        &self,
        kernel: &Kernel,
        overrides: &[(&'static str, f64)],
        bindings: &[Binding],
        params: &P,
        groups: u64,
        cost: Cost,
    ) -> Result<()> {
        debug_assert_eq!(
            kernel.params.map(|l| l.name),
            Some(P::LAYOUT.name),
            "the parameters of {}",
            kernel.entry
        );
        self.record(
            kernel,
            overrides,
            bindings,
            bytemuck::bytes_of(params),
            groups,
            cost,
        )
    }

    /// Record a dispatch with its parameters as bytes (a user's kernel; see `ops::launch`).
    pub(crate) fn record(
        &self,
        kernel: &Kernel,
        overrides: &[(&'static str, f64)],
        bindings: &[Binding],
        params: &[u8],
        groups: u64,
        cost: Cost,
    ) -> Result<()> {
        assert!(
            params.len() <= PARAMS_BYTES,
            "params of {} exceed {PARAMS_BYTES} bytes",
            kernel.entry
        );
        assert!(
            bindings.len() == kernel.access.len()
                && bindings.iter().zip(kernel.access).all(|(b, a)| b.fits(*a)),
            "the bindings of {} do not follow its access list",
            kernel.entry
        );
        if groups == 0 {
            return Ok(());
        }
        let grid = split_groups(
            groups,
            self.inner.limits.max_compute_workgroups_per_dimension,
        )
        .ok_or_else(|| {
            Error::TooLarge(format!(
                "kernel `{}` needs {groups} workgroups, more than this device can launch",
                kernel.entry
            ))
        })?;
        let pipeline = self
            .inner
            .pipelines
            .get(kernel, overrides, &self.inner.features)?;
        let bind_group = self.inner.pipelines.bind_group(kernel, bindings)?;
        let mut rec = self.inner.recorder.lock().unwrap();
        rec.dispatch(
            pipeline,
            bind_group,
            params,
            grid,
            (kernel.shader.name, kernel.entry),
            cost,
            self.inner.use_immediates,
        );
        Ok(())
    }

    /// Record a fill of a storage range with one 32-bit word (`f32::to_bits` of a value, or a
    /// poison pattern); `size` is a multiple of 4 bytes.
    pub(crate) fn fill(&self, target: Binding, word: u32) -> Result<()> {
        let Binding::Buffer { size, .. } = target else {
            return Ok(());
        };
        let n = size / 4;
        let p = FillParams {
            n: n as u32,
            value: word,
            _pad: [0; 2],
        };
        self.dispatch(&FILL, &[], &[target], &p, n.div_ceil(FILL_PER_GROUP))
    }

    /// What an optional input a kernel reads is bound to when the caller has none (the kernel
    /// is told so through its parameters or override constants and reads nothing there).
    pub(crate) fn absent(&self) -> Binding<'_> {
        Binding::Buffer {
            storage: &self.inner.absent,
            offset: 0,
            size: 4,
        }
    }

    /// [`Gpu::absent`] for an optional read-write binding (16 bytes: one vec4).
    pub(crate) fn absent_writable(&self) -> Binding<'_> {
        Binding::Buffer {
            storage: &self.inner.absent_writable,
            offset: 0,
            size: 16,
        }
    }

    /// Whether two handles share one context.
    pub fn same_context(&self, other: &Gpu) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Dispatches recorded on this context so far (a training step's count is the difference).
    pub fn dispatch_count(&self) -> u64 {
        self.inner.recorder.lock().unwrap().dispatches
    }

    /// Start timing every dispatch (see [`Profile`]): with device timestamps where the adapter
    /// has `TIMESTAMP_QUERY`, else the host clock around each dispatch submitted alone. Work
    /// recorded before is submitted first, untimed. Profiling slows submission down; use it to
    /// see shares, not to measure a step's time.
    pub fn start_profile(&self) -> Result<()> {
        let method = if self
            .inner
            .features
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            ProfileMethod::Timestamps
        } else {
            ProfileMethod::WallClock
        };
        self.start_profile_using(method)
    }

    /// [`Gpu::start_profile`] with a given method (timestamps need `TIMESTAMP_QUERY`).
    pub fn start_profile_using(&self, method: ProfileMethod) -> Result<()> {
        if method == ProfileMethod::Timestamps
            && !self
                .inner
                .features
                .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            return Err(Error::Config(format!(
                "{} has no timestamp queries: profile with ProfileMethod::WallClock",
                self.inner.info.name
            )));
        }
        self.flush()?;
        self.inner.recorder.lock().unwrap().profile = Some((method, Vec::new()));
        Ok(())
    }

    /// Stop profiling and return what was timed since [`Gpu::start_profile`] (pending work is
    /// submitted and timed first). `None` if profiling was not on.
    pub fn finish_profile(&self) -> Result<Option<Profile>> {
        self.flush()?;
        let taken = self.inner.recorder.lock().unwrap().profile.take();
        Ok(taken.map(|(method, dispatches)| Profile { method, dispatches }))
    }

    /// Record a buffer-to-buffer copy, ordered with the dispatches around it.
    pub(crate) fn copy(&self, src: &Storage, src_off: u64, dst: &Storage, dst_off: u64, size: u64) {
        let mut rec = self.inner.recorder.lock().unwrap();
        rec.copy(src.buffer(), src_off, dst.buffer(), dst_off, size);
    }

    /// Write bytes into a buffer. Anything recorded before is submitted first, since
    /// `queue.write_buffer` lands at the start of the *next* submission and would otherwise
    /// overtake earlier work on a recycled buffer.
    pub(crate) fn write(&self, dst: &Storage, offset: u64, data: &[u8]) -> Result<()> {
        if self.inner.recorder.lock().unwrap().has_work() {
            self.flush()?;
        }
        self.inner.queue.write_buffer(dst.buffer(), offset, data);
        Ok(())
    }

    /// Submit everything recorded so far in one `queue.submit`, without waiting.
    pub fn flush(&self) -> Result<()> {
        let inner = &self.inner;
        let scope = inner.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let kernels = {
            let mut rec = inner.recorder.lock().unwrap();
            rec.submit(&inner.device, &inner.queue, &inner.pipelines)
        };
        let err = pollster::block_on(scope.pop());
        if let Some(e) = err {
            return Err(Error::Gpu(format!(
                "{e} (kernels in this submission: {kernels})"
            )));
        }
        self.take_uncaptured()
    }

    fn take_uncaptured(&self) -> Result<()> {
        let mut errs = self.inner.uncaptured.lock().unwrap();
        if errs.is_empty() {
            Ok(())
        } else {
            let msg = errs.join("; ");
            errs.clear();
            Err(Error::Gpu(msg))
        }
    }

    /// Submit pending work and block until the GPU has finished all of it.
    pub fn synchronize(&self) -> Result<()> {
        self.flush()?;
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU failed: {e}")))?;
        Ok(())
    }

    /// Copy `size` bytes at `offset` of a storage buffer back to the host (submits and waits).
    pub(crate) fn read_bytes(&self, src: &Storage, offset: u64, size: u64) -> Result<Vec<u8>> {
        let padded = size.div_ceil(4) * 4;
        let staging = self
            .inner
            .pool
            .acquire(padded, pool::READBACK_USAGE, &self.inner.limits)?;
        self.copy(src, offset, &staging, 0, padded);
        self.flush()?;
        let slice = staging.buffer().slice(0..padded);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU failed: {e}")))?;
        rx.recv()
            .map_err(|_| Error::Gpu("readback callback never ran".into()))?
            .map_err(|e| Error::Gpu(format!("mapping the readback buffer failed: {e}")))?;
        let mut out = slice
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("readback: {e}")))?
            .to_vec();
        staging.buffer().unmap();
        out.truncate(size as usize);
        Ok(out)
    }
}

/// Split a linear workgroup count into (x, y, z), each at most `max`. `None` if it cannot fit.
pub(crate) fn split_groups(groups: u64, max: u32) -> Option<[u32; 3]> {
    let max = max as u64;
    if groups <= max {
        return Some([groups as u32, 1, 1]);
    }
    let y = groups.div_ceil(max);
    if y <= max {
        return Some([max as u32, y as u32, 1]);
    }
    let z = y.div_ceil(max);
    (z <= max).then_some([max as u32, max as u32, z as u32])
}

#[cfg(test)]
mod tests {
    use super::split_groups;

    #[test]
    fn split_covers_every_group_and_respects_the_limit() {
        for &(g, max) in &[
            (1u64, 65535u32),
            (65535, 65535),
            (65536, 65535),
            (10_000_000, 65535),
            (300, 7),
            (343, 7),
        ] {
            let [x, y, z] = split_groups(g, max).unwrap();
            assert!(x <= max && y <= max && z <= max);
            let total = x as u64 * y as u64 * z as u64;
            assert!(total >= g, "{g} groups split into {x}x{y}x{z}");
            // No more than one row of waste in the split.
            assert!(total - g < x as u64 * y as u64);
        }
        assert_eq!(split_groups(8 * 8 * 8 + 1, 8), None);
    }
}
