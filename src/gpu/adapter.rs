//! Choosing an adapter and opening a device on it: the options and environment variables that
//! steer the choice, the report `rectiflow info` prints, and the error when nothing fits. The
//! context built on the device is `super::Gpu`.

use super::requirements;
use crate::error::{Error, Result};
use std::path::PathBuf;
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

/// Environment variable: `on` (the default), `off` or `force`: the per-adapter matmul tile
/// tuning and its cache on disk (see [`TuneMode`] and `ops::tune`).
pub const ENV_TUNE: &str = "RECTIFLOW_TUNE";

/// Environment variable: the directory of rectiflow's caches on disk (the tuned matmul tiles);
/// default `$XDG_CACHE_HOME/rectiflow`, else `$HOME/.cache/rectiflow`.
pub const ENV_CACHE_DIR: &str = "RECTIFLOW_CACHE_DIR";

/// How the matmul tile shapes are chosen on a context (`RECTIFLOW_TUNE`; `ops::tune` does the
/// work, the first time a matmul picks its tiling).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TuneMode {
    /// Use the table cached on disk for this adapter, driver and engine; time the candidates
    /// and write the table when there is none (or it is damaged, or made for something else).
    #[default]
    On,
    /// The fixed rules per kernel profile; nothing is timed, read or written.
    Off,
    /// Time the candidates again and overwrite the cached table.
    Force,
}

impl TuneMode {
    /// `on`, `off` or `force` (any case); anything else is an [`Error::Config`] naming
    /// `RECTIFLOW_TUNE` and the accepted values.
    pub fn parse(name: &str) -> Result<TuneMode> {
        match name.trim().to_ascii_lowercase().as_str() {
            "on" => Ok(TuneMode::On),
            "off" => Ok(TuneMode::Off),
            "force" => Ok(TuneMode::Force),
            _ => Err(Error::Config(format!(
                "{ENV_TUNE}={name:?}: use on (tune once per adapter, cached), off (fixed tile \
                 rules, no cache) or force (tune again and overwrite the cache)"
            ))),
        }
    }

    /// The mode `RECTIFLOW_TUNE` asks for (`On` when unset or empty).
    pub fn from_env() -> Result<TuneMode> {
        env_nonempty(ENV_TUNE).map_or(Ok(TuneMode::On), |v| TuneMode::parse(&v))
    }

    /// `on`, `off` or `force`, as the variable takes it.
    pub fn name(self) -> &'static str {
        match self {
            TuneMode::On => "on",
            TuneMode::Off => "off",
            TuneMode::Force => "force",
        }
    }
}

/// The cache directory the environment names: `RECTIFLOW_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/rectiflow`, else `$HOME/.cache/rectiflow`; `None` when none of them is set.
pub fn cache_dir_from_env() -> Option<PathBuf> {
    if let Some(dir) = env_nonempty(ENV_CACHE_DIR) {
        return Some(PathBuf::from(dir));
    }
    // The XDG spec ignores a relative XDG_CACHE_HOME.
    if let Some(xdg) = env_nonempty("XDG_CACHE_HOME").map(PathBuf::from) {
        if xdg.is_absolute() {
            return Some(xdg.join("rectiflow"));
        }
    }
    env_nonempty("HOME").map(|home| PathBuf::from(home).join(".cache").join("rectiflow"))
}

/// Which design each op picks where there are two. A GPU shares data through workgroup memory;
/// a CPU driver (lavapipe) runs a workgroup's lanes as coroutines that switch at every barrier,
/// so there barrier-free kernels win and the CPU's caches do the tiling (docs/performance.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelProfile {
    /// Workgroup memory and barriers (tiled matmul, tree reductions).
    Gpu,
    /// Barrier-free kernels.
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

/// Optional features the kernels use when the adapter has them.
const WANTED_FEATURES: wgpu::Features = wgpu::Features::SHADER_F16
    .union(wgpu::Features::SUBGROUP)
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::IMMEDIATES);

/// How to create a [`Gpu`](super::Gpu).
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Adapter name filter (overrides `RECTIFLOW_ADAPTER`).
    pub adapter: Option<String>,
    /// Which of several equally good adapters to take (counted modulo their number): a rank
    /// of a data-parallel job passes its rank among the machine's ranks, so that each takes
    /// its own GPU. `None` (or 0): the first.
    pub adapter_index: Option<usize>,
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
    /// Request no `SHADER_F16` even where the adapter has it: no f16 tensors or f16 weights
    /// (what a device without it does, on any machine).
    pub no_f16: bool,
    /// Matmul tile tuning (overrides `RECTIFLOW_TUNE`).
    pub tune: Option<TuneMode>,
    /// Where the tuned table is cached (overrides `RECTIFLOW_CACHE_DIR` and its defaults).
    pub cache_dir: Option<PathBuf>,
}

/// The resolved settings a context is built with.
pub(super) struct Settings {
    pub no_immediates: bool,
    pub no_subgroups: bool,
    pub poison: bool,
    /// `None`: from the adapter's type.
    pub profile: Option<KernelProfile>,
    pub tune: TuneMode,
    /// `None`: no cache directory could be named (tuning then stays in memory).
    pub cache_dir: Option<PathBuf>,
}

impl Settings {
    /// A host's device: nothing asked for but the tuning, which follows the environment as it
    /// does for a device of rectiflow's own.
    pub fn host() -> Result<Settings> {
        Ok(Settings {
            no_immediates: false,
            no_subgroups: false,
            poison: false,
            profile: None,
            tune: TuneMode::from_env()?,
            cache_dir: cache_dir_from_env(),
        })
    }
}

/// One adapter as `rectiflow info` reports it.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    /// Name, vendor, type, backend, driver.
    pub info: wgpu::AdapterInfo,
    /// Every feature it offers.
    pub features: wgpu::Features,
    /// Its limits.
    pub limits: wgpu::Limits,
    /// Whether it runs compute shaders at all.
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

/// A device opened on the chosen adapter, with what the context needs to know about it.
pub(super) struct Opened {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    /// Errors wgpu reports outside any error scope (the handler is ours: we own the device).
    pub uncaptured: Arc<Mutex<Vec<String>>>,
    pub settings: Settings,
}

/// Choose the best adapter for `opts` (a hardware GPU first, else a software one such as
/// lavapipe), check it offers the limits the kernels need, and open a device on it.
pub(super) fn open(opts: &GpuOptions) -> Result<Opened> {
    let (instance, backends) = instance_and_backends(opts)?;
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    let found: Vec<String> = adapters.iter().map(|a| report(a).summary()).collect();
    let wanted = opts.adapter.clone().or_else(|| env_nonempty(ENV_ADAPTER));
    let usable: Vec<wgpu::Adapter> = adapters
        .into_iter()
        .filter(|a| report(a).compute)
        .filter(|a| match &wanted {
            Some(w) => a.get_info().name.to_lowercase().contains(&w.to_lowercase()),
            None => true,
        })
        .collect();
    // The best kind present (hardware first), then the index among adapters of that kind.
    let best = usable
        .iter()
        .map(|a| adapter_rank(a.get_info().device_type))
        .min();
    let mut of_best: Vec<wgpu::Adapter> = usable
        .into_iter()
        .filter(|a| Some(adapter_rank(a.get_info().device_type)) == best)
        .collect();
    let chosen = match of_best.len() {
        0 => None,
        n => Some(of_best.swap_remove(opts.adapter_index.unwrap_or(0) % n)),
    };
    let Some(adapter) = chosen else {
        return Err(Error::NoAdapter { wanted, found });
    };
    let info = adapter.get_info();
    requirements::check(&adapter.limits(), &info.name)?;

    let mut features = adapter.features() & WANTED_FEATURES;
    if opts.no_f16 {
        features.remove(wgpu::Features::SHADER_F16);
    }
    let desc = wgpu::DeviceDescriptor {
        label: Some("rectiflow"),
        required_features: features,
        // Compute kernels want the largest bindings and workgroups the adapter allows.
        required_limits: adapter.limits(),
        memory_hints: wgpu::MemoryHints::Performance,
        ..Default::default()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&desc))
        .map_err(|e| Error::Device(format!("{} refused: {e}", info.name)))?;

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
        tune: opts.tune.map_or_else(TuneMode::from_env, Ok)?,
        cache_dir: opts.cache_dir.clone().or_else(cache_dir_from_env),
    };
    Ok(Opened {
        device,
        queue,
        info,
        uncaptured,
        settings,
    })
}
