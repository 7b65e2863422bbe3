//! The GPU context: adapter choice, device creation (or adoption of the host's device), and the
//! shared machinery every op uses — the buffer pool, the pipeline cache, and the recorder that
//! batches dispatches into one submission.
//!
//! A [`Gpu`] is a cheap handle (an `Arc`); clone it freely. All work recorded through it is
//! submitted together when something needs a result ([`Gpu::flush`], or reading a tensor back).

mod kernel;
mod pool;
mod profile;
mod recorder;

pub use kernel::{Access, Kernel, Shader};
pub use pool::PoolStats;
pub(crate) use pool::Storage;
pub use profile::{Cost, DispatchTiming, KernelTotal, Profile, ProfileMethod};

use crate::error::{Error, Result};
use kernel::PipelineCache;
use pool::BufferPool;
use recorder::Recorder;
use std::sync::{Arc, Mutex};

/// Environment variable: pick the adapter whose name contains this text (case-insensitive).
pub const ENV_ADAPTER: &str = "RECTIFLOW_ADAPTER";
/// Environment variable: restrict to a backend (`vulkan`, `metal`, `dx12`, `gl`).
pub const ENV_BACKEND: &str = "RECTIFLOW_BACKEND";
/// Environment variable: set to `1` to pass kernel parameters through the uniform arena even when
/// the device supports immediates (for testing both paths).
pub const ENV_NO_IMMEDIATES: &str = "RECTIFLOW_NO_IMMEDIATES";

/// Environment variable: set to `1` to fill every new tensor with NaN before use, so a kernel
/// that leaves an element unwritten shows it (debugging; the tests always do this).
pub const ENV_POISON: &str = "RECTIFLOW_POISON";

/// Environment variable: set to `1` to use no subgroup operations even where the adapter has
/// them (kernels fall back to their other designs; for testing every design on one machine).
pub const ENV_NO_SUBGROUPS: &str = "RECTIFLOW_NO_SUBGROUPS";

/// Environment variable: `cpu` or `gpu`, the kernel designs to use (see [`KernelProfile`]).
pub const ENV_PROFILE: &str = "RECTIFLOW_PROFILE";

/// Which design each op picks where there are two. A GPU shares data through workgroup memory;
/// a CPU driver (lavapipe) runs a workgroup's lanes as coroutines that switch at every barrier,
/// so there barrier-free kernels win and the CPU's caches do the tiling (docs/performance.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelProfile {
    Gpu,
    Cpu,
}

impl KernelProfile {
    fn parse(name: &str) -> Result<KernelProfile> {
        match name.to_ascii_lowercase().as_str() {
            "gpu" => Ok(KernelProfile::Gpu),
            "cpu" => Ok(KernelProfile::Cpu),
            other => Err(Error::Config(format!(
                "{ENV_PROFILE}={other:?}: use cpu or gpu"
            ))),
        }
    }
}

/// Size in bytes of every kernel's parameter block (immediates or one arena slot).
pub(crate) const PARAMS_BYTES: usize = 128;

/// Optional features the kernels use when the adapter has them.
const WANTED_FEATURES: wgpu::Features = wgpu::Features::SHADER_F16
    .union(wgpu::Features::SUBGROUP)
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::IMMEDIATES);

/// How to create a [`Gpu`].
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Adapter name filter (overrides `RECTIFLOW_ADAPTER`).
    pub adapter: Option<String>,
    /// Backend name (overrides `RECTIFLOW_BACKEND`).
    pub backend: Option<String>,
    /// Never use immediates, even where supported (parameters go through the uniform arena).
    pub no_immediates: bool,
    /// Fill every new tensor with NaN (also `RECTIFLOW_POISON=1`).
    pub poison: bool,
    /// Kernel designs (also `RECTIFLOW_PROFILE`); by default from the adapter's type.
    pub profile: Option<KernelProfile>,
    /// Use no subgroup operations even where the adapter has them (also
    /// `RECTIFLOW_NO_SUBGROUPS=1`).
    pub no_subgroups: bool,
}

/// The resolved settings a context is built with.
struct Settings {
    no_immediates: bool,
    no_subgroups: bool,
    poison: bool,
    /// `None`: from the adapter's type.
    profile: Option<KernelProfile>,
}

/// One adapter as `rectiflow info` reports it.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    pub info: wgpu::AdapterInfo,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
    pub compute: bool,
}

impl AdapterReport {
    /// One line: name, type, backend, driver.
    pub fn summary(&self) -> String {
        let i = &self.info;
        format!(
            "{} ({:?}, {:?}, driver {} {}){}",
            i.name,
            i.device_type,
            i.backend,
            i.driver,
            i.driver_info,
            if self.compute {
                ""
            } else {
                " [no compute shaders]"
            }
        )
    }
}

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
    /// A small buffer bound where a kernel's optional input is absent.
    dummy: Arc<Storage>,
    /// Errors wgpu reported outside any error scope (only when we own the device).
    uncaptured: Arc<Mutex<Vec<String>>>,
}

fn parse_backend(name: &str) -> Result<wgpu::Backends> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => wgpu::Backends::VULKAN,
        "metal" | "mtl" => wgpu::Backends::METAL,
        "dx12" | "d3d12" => wgpu::Backends::DX12,
        "gl" | "gles" | "opengl" => wgpu::Backends::GL,
        other => {
            return Err(Error::Config(format!(
                "{ENV_BACKEND}={other:?} is not a backend; use vulkan, metal, dx12 or gl"
            )))
        }
    })
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Rank adapters: hardware first, then virtual, then software.
fn adapter_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

/// The wgpu instance and the backends to search, from options and environment.
fn instance_and_backends(opts: &GpuOptions) -> Result<(wgpu::Instance, wgpu::Backends)> {
    let backends = match opts.backend.clone().or_else(|| env_nonempty(ENV_BACKEND)) {
        Some(b) => parse_backend(&b)?,
        // GL compute is too limited for these kernels; use it only when asked for.
        None => wgpu::Backends::PRIMARY,
    };
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    Ok((wgpu::Instance::new(desc), backends))
}

/// Every adapter wgpu can see on the selected backends (for `rectiflow info`).
pub fn list_adapters(opts: &GpuOptions) -> Result<Vec<AdapterReport>> {
    let (instance, backends) = instance_and_backends(opts)?;
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    Ok(adapters.iter().map(report).collect())
}

fn report(a: &wgpu::Adapter) -> AdapterReport {
    AdapterReport {
        info: a.get_info(),
        features: a.features(),
        limits: a.limits(),
        compute: a
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS),
    }
}

impl Gpu {
    /// Create a context on the best adapter: a hardware GPU first, else a software one such as
    /// lavapipe. `RECTIFLOW_ADAPTER` (name substring) and `RECTIFLOW_BACKEND` narrow the choice.
    pub fn new() -> Result<Gpu> {
        Self::with_options(&GpuOptions::default())
    }

    /// Like [`Gpu::new`], with explicit options (they take precedence over the environment).
    pub fn with_options(opts: &GpuOptions) -> Result<Gpu> {
        let (instance, backends) = instance_and_backends(opts)?;
        let adapters = pollster::block_on(instance.enumerate_adapters(backends));
        let found: Vec<String> = adapters.iter().map(|a| report(a).summary()).collect();
        let wanted = opts.adapter.clone().or_else(|| env_nonempty(ENV_ADAPTER));
        let chosen = adapters
            .into_iter()
            .filter(|a| report(a).compute)
            .filter(|a| match &wanted {
                Some(w) => a.get_info().name.to_lowercase().contains(&w.to_lowercase()),
                None => true,
            })
            .min_by_key(|a| adapter_rank(a.get_info().device_type));
        let Some(adapter) = chosen else {
            return Err(Error::NoAdapter { wanted, found });
        };

        let features = adapter.features() & WANTED_FEATURES;
        let desc = wgpu::DeviceDescriptor {
            label: Some("rectiflow"),
            required_features: features,
            // Compute kernels want the largest bindings and workgroups the adapter allows.
            required_limits: adapter.limits(),
            memory_hints: wgpu::MemoryHints::Performance,
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| Error::Device(format!("{} refused: {e}", adapter.get_info().name)))?;

        // Without this handler wgpu panics on an error outside a scope; keep it for `flush`.
        let uncaptured = Arc::new(Mutex::new(Vec::new()));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().unwrap().push(e.to_string());
        }));
        let flag = |name| env_nonempty(name).is_some_and(|v| v != "0");
        let profile = match opts.profile {
            Some(p) => Some(p),
            None => env_nonempty(ENV_PROFILE)
                .map(|name| KernelProfile::parse(&name))
                .transpose()?,
        };
        let settings = Settings {
            no_immediates: opts.no_immediates || flag(ENV_NO_IMMEDIATES),
            no_subgroups: opts.no_subgroups || flag(ENV_NO_SUBGROUPS),
            poison: opts.poison || flag(ENV_POISON),
            profile,
        };
        Ok(Self::build(
            device,
            queue,
            adapter.get_info(),
            uncaptured,
            settings,
        ))
    }

    /// Adopt a device and queue that the host application already owns (the embedding path).
    ///
    /// The kernels use whatever optional features the device was created with (`SHADER_F16`,
    /// `IMMEDIATES`, ...). rectiflow does not install an uncaptured-error handler on a borrowed
    /// device; its own work runs inside error scopes.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Gpu {
        let info = device.adapter_info();
        let settings = Settings {
            no_immediates: false,
            no_subgroups: false,
            poison: false,
            profile: None,
        };
        Self::build(
            device,
            queue,
            info,
            Arc::new(Mutex::new(Vec::new())),
            settings,
        )
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
        let dummy = pool
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
                dummy,
                uncaptured,
            }),
        }
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

    /// Record one kernel dispatch. `bindings` are (storage, byte offset, byte size) in the order
    /// of the kernel's `@binding`s; `params` is the kernel's parameter struct; `groups` is the
    /// number of workgroups, linear — it is split over x, y, z when it exceeds the per-dimension
    /// limit, and every kernel folds its workgroup id back into one linear index.
    pub(crate) fn dispatch<P: bytemuck::Pod>(
        &self,
        kernel: &Kernel,
        overrides: &[(&'static str, f64)],
        bindings: &[(&Arc<Storage>, u64, u64)],
        params: &P,
        groups: u64,
    ) -> Result<()> {
        // A kernel without a count of its own is taken to be memory-bound: every byte it binds
        // read or written once.
        let bytes = bindings
            .iter()
            .zip(kernel.access)
            .filter(|(_, a)| **a != Access::Unused)
            .map(|((_, _, size), _)| *size as f64)
            .sum();
        let cost = Cost { flops: 0.0, bytes };
        self.dispatch_costed(kernel, overrides, bindings, params, groups, cost)
    }

    /// [`Gpu::dispatch`] with the work the dispatch does, for profiles.
    pub(crate) fn dispatch_costed<P: bytemuck::Pod>(
        &self,
        kernel: &Kernel,
        overrides: &[(&'static str, f64)],
        bindings: &[(&Arc<Storage>, u64, u64)],
        params: &P,
        groups: u64,
        cost: Cost,
    ) -> Result<()> {
        let bytes = bytemuck::bytes_of(params);
        assert!(
            bytes.len() <= PARAMS_BYTES,
            "params of {} exceed {PARAMS_BYTES} bytes",
            kernel.entry
        );
        assert_eq!(
            bindings.len(),
            kernel.access.len(),
            "binding count of {}",
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
            bytes,
            grid,
            (kernel.shader.name, kernel.entry),
            cost,
            self.inner.use_immediates,
        );
        Ok(())
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

    /// Record a dispatch of your own kernel on tensors (bound at `@group(0)`, bindings `0..n` in
    /// order). `params` is the kernel's `Params` struct (at most 128 bytes, declared in WGSL as
    /// `@group(1) @binding(0) var<uniform> params: Params;`); `workgroups` is a linear count,
    /// split over x, y and z where it exceeds the device limit, so the kernel must fold
    /// `workgroup_id` back into `wid.x + wid.y * nwg.x + wid.z * nwg.x * nwg.y`.
    pub fn launch<P: bytemuck::Pod>(
        &self,
        kernel: &Kernel,
        overrides: &[(&'static str, f64)],
        tensors: &[&crate::Tensor],
        params: &P,
        workgroups: u64,
    ) -> Result<()> {
        if tensors.len() != kernel.access.len() {
            return Err(Error::Shape(format!(
                "kernel `{}` binds {} buffers, {} tensors were given",
                kernel.entry,
                kernel.access.len(),
                tensors.len()
            )));
        }
        let bindings: Vec<_> = tensors.iter().map(|t| t.binding()).collect();
        self.dispatch(kernel, overrides, &bindings, params, workgroups)
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

    /// The shared placeholder buffer bound where an optional input is absent.
    pub(crate) fn dummy(&self) -> &Arc<Storage> {
        &self.inner.dummy
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
