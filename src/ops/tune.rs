//! Per-adapter matmul tile tuning, cached on disk. This module owns the shape classes, the
//! candidate tilings per kernel design, their timing, the table [`MatmulTiling::choose`]
//! consults, and its cache file (with the lock that makes processes starting together tune once).
//!
//! For the adapter's matmul design (tiled, lanes or subgroup: see [`MatmulDesign`]) a few legal
//! tilings, the fixed rule's among them, are timed on one representative shape per class of
//! shapes ([`CLASSES`]: by the rows of C, its columns and K), in rounds, side by side; a
//! candidate replaces the rule for a class when its median speed-up over the rounds is at least
//! 10% ([`table`]). That happens once per context, lazily, the first time a matmul picks its
//! tiling, and takes seconds: a handful of pipelines to compile and a few calls each.
//!
//! The table is cached in `RECTIFLOW_CACHE_DIR` (else `$XDG_CACHE_HOME/rectiflow`, else
//! `$HOME/.cache/rectiflow`), one file per key: the adapter (name, vendor, device id, backend),
//! its driver, the engine version, a hash of the matmul shaders' text and the design, so a new
//! driver, release or kernel retunes. The file is written atomically under a file lock; a damaged
//! or mismatched file is ignored with a warning and replaced; a directory that cannot be written
//! is no error (the table stays in memory). `RECTIFLOW_TUNE`: `on` (default) uses the cache and
//! tunes when it is missing, `off` keeps the fixed rules and touches no file, `force` tunes again
//! and overwrites.
//!
//! Timing runs on a detached context (`Gpu::detached`: the same device and queue, with its own
//! buffers, recorder and submissions), so work the caller has recorded is neither submitted nor
//! mixed with it; with device timestamps where the adapter has `TIMESTAMP_QUERY`, else the host
//! clock around a submission and its wait.
//!
//! Every candidate's output is compared with the fixed rule's on the same inputs before it is
//! timed, and one that differs is never chosen. None should differ: every design sums each output
//! as one chain of multiply-adds over k in order, 0 to K, and the padding past K adds exact
//! zeros, so the tile shape changes which invocation computes an output, not its rounding.

use super::matmul::{matmul_into, MatmulDesign, MatmulSpec, MatmulTiling};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, ProfileMethod, TuneMode};
use crate::shaders::{MATMUL, MATMUL_SUBGROUP};
use crate::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// A class of matmul shapes and the shape timed for it (`m x k` times `k x n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShapeClass {
    /// Rows of C (`small` below [`TALL_ROWS`], else `tall`), its columns (`narrow` up to
    /// [`WIDE_COLS`], else `wide`) and K (`short` up to [`LONG_K`], else `long`).
    pub name: &'static str,
    /// Rows of A and C timed.
    pub m: usize,
    /// The inner dimension timed.
    pub k: usize,
    /// Columns of B and C timed.
    pub n: usize,
    /// The workload shape it stands for.
    pub stands_for: &'static str,
}

/// Rows of C, over the batch, from which a shape is `tall`.
pub const TALL_ROWS: usize = 512;
/// Columns of C beyond which a shape is `wide`.
pub const WIDE_COLS: usize = 128;
/// K beyond which a shape is `long`.
pub const LONG_K: usize = 256;
/// Shapes with fewer rows (over the batch) or columns keep the fixed rules, which size the tile
/// to the shape (a C narrower than 16 columns is computed transposed by the subgroup design).
const MIN_ROWS: usize = 64;
const MIN_COLS: usize = 16;

/// The classes, indexed by `4 tall + 2 wide + long` ([`class_of`]). The shapes are those of the
/// small DiTs (widths 64-256, 16-64 tokens, batch 64-128) and the MLP (width 256), cut down to
/// what times in milliseconds on a CPU driver.
pub const CLASSES: [ShapeClass; 8] = [
    ShapeClass {
        name: "small-narrow-short",
        m: 128,
        k: 64,
        n: 64,
        stands_for: "the timestep MLP, batch 128, width 64",
    },
    ShapeClass {
        name: "small-narrow-long",
        m: 64,
        k: 1024,
        n: 64,
        stands_for: "a width-64 weight gradient over 1024 tokens",
    },
    ShapeClass {
        name: "small-wide-short",
        m: 128,
        k: 128,
        n: 768,
        stands_for: "adaLN conditioning, batch 128, width 128",
    },
    ShapeClass {
        name: "small-wide-long",
        m: 256,
        k: 1024,
        n: 256,
        stands_for: "a width-256 weight gradient over 1024 rows",
    },
    ShapeClass {
        name: "tall-narrow-short",
        m: 1024,
        k: 64,
        n: 64,
        stands_for: "a width-64 linear layer over 1024 tokens",
    },
    ShapeClass {
        name: "tall-narrow-long",
        m: 1024,
        k: 512,
        n: 128,
        stands_for: "an MLP down-projection 512 -> 128 over 1024 tokens",
    },
    ShapeClass {
        name: "tall-wide-short",
        m: 1024,
        k: 256,
        n: 256,
        stands_for: "the MLP's 256-wide layers (1024 of its 4096 rows)",
    },
    ShapeClass {
        name: "tall-wide-long",
        m: 512,
        k: 512,
        n: 256,
        stands_for: "an MLP down-projection 512 -> 256 over 512 tokens",
    },
];

/// The class of an `m x n` output over `k` and `batch` items; `None` for the shapes the fixed
/// rules keep.
pub fn class_of(m: usize, n: usize, k: usize, batch: usize) -> Option<usize> {
    let rows = m.saturating_mul(batch.max(1));
    if m < MIN_COLS || rows < MIN_ROWS || n < MIN_COLS {
        return None;
    }
    Some(
        4 * usize::from(rows >= TALL_ROWS)
            + 2 * usize::from(n > WIDE_COLS)
            + usize::from(k > LONG_K),
    )
}

/// Where a [`TuneTable`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TuneSource {
    /// Timed by this context.
    Tuned,
    /// Read from the cache file (timed by an earlier context or process).
    Cache,
    /// No table: the fixed rules ([`TuneTable::note`] says why).
    Rules,
}

impl std::fmt::Display for TuneSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TuneSource::Tuned => "tuned",
            TuneSource::Cache => "cache",
            TuneSource::Rules => "rules",
        })
    }
}

/// One class's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassChoice {
    pub class: ShapeClass,
    /// The fastest candidate (the rule's own unless another was clearly faster).
    pub tiling: MatmulTiling,
    pub gflops: f64,
    /// The fixed rule's tiling at the class's shape, and its rate.
    pub rule: MatmulTiling,
    pub rule_gflops: f64,
    /// Candidates whose output differed from the rule's, so were never timed (normally none).
    pub differed: Vec<MatmulTiling>,
}

/// The tuning state of a context: the table [`MatmulTiling::choose`] consults.
#[derive(Clone, Debug, PartialEq)]
pub struct TuneTable {
    pub mode: TuneMode,
    pub source: TuneSource,
    /// The cache file for this adapter, driver, engine and design (`None` when tuning is off or
    /// no cache directory could be named).
    pub path: Option<PathBuf>,
    /// How the candidates were timed.
    pub method: String,
    /// Seconds the tuning took (here, or in the process that wrote the file).
    pub seconds: f64,
    /// One per entry of [`CLASSES`]; empty when the fixed rules are in use.
    pub choices: Vec<ClassChoice>,
    /// Why the fixed rules are in use (source `rules`).
    pub note: Option<String>,
}

/// A candidate replaces the rule only when this much faster: on a shared machine the timings of
/// one tiling move by 10% and more between runs, and the rule sizes its tile to each shape,
/// where a class's tile is one size.
const MARGIN: f64 = 0.10;

/// Timing budget per class after the first timed call of each candidate: as many rounds (each
/// candidate timed once per round, side by side, so a load that comes and goes touches them
/// alike) as fit.
const CLASS_BUDGET_SECONDS: f64 = 0.15;
/// Rounds per class, at least and at most (with the first call, three samples at least: a slow
/// design's long calls get no more than that).
const ROUNDS: (usize, usize) = (2, 12);

/// Version of the cache file's layout and of the classes and candidates in it: bumping it
/// retunes.
const FORMAT: u32 = 1;

/// The table for `gpu`: tuned, read from the cache or the fixed rules, made on first use.
pub fn table(gpu: &Gpu) -> &TuneTable {
    gpu.matmul_tuning()
        .get_or_init(|| Box::new(make_table(gpu)))
        .downcast_ref::<TuneTable>()
        .expect("the tuning slot holds this module's table")
}

/// The tuned tiling for a shape, if the table has one for its class that differs from the
/// rule's (where the rule won, the rule decides for the actual shape, as without tuning).
pub(crate) fn tuned_tiling(
    gpu: &Gpu,
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
) -> Option<MatmulTiling> {
    if gpu.tune_mode() == TuneMode::Off {
        return None;
    }
    let class = class_of(m, n, k, batch)?;
    let choice = table(gpu).choices.get(class)?;
    if choice.tiling == choice.rule {
        return None;
    }
    let t = choice.tiling;
    // The lanes design's width follows N as the rule's does: the table keeps rows and columns
    // per lane.
    Some(match t.design {
        MatmulDesign::Lanes => lanes_for(n, t.tm, t.tn),
        _ => t,
    })
}

/// A lanes tiling with as many lanes as N needs, at most 16 (the rule's width).
fn lanes_for(n: usize, tm: u32, tn: u32) -> MatmulTiling {
    let wg_n = n.div_ceil(tn as usize).next_power_of_two().min(16) as u32;
    MatmulTiling::lanes(wg_n, tm, tn)
}

/// A tiling in a few words (`subgroup t32x32`, `lanes wg16 t8x8`, `tiled wg16x16 t4x4 k16`).
pub fn tiling_name(t: &MatmulTiling) -> String {
    match t.design {
        MatmulDesign::Lanes => format!("lanes wg{} t{}x{}", t.wg_n, t.tm, t.tn),
        MatmulDesign::Subgroup => format!("subgroup t{}x32", t.tm),
        MatmulDesign::Tiled => {
            format!("tiled wg{}x{} t{}x{} k{}", t.wg_m, t.wg_n, t.tm, t.tn, t.bk)
        }
    }
}

/// The candidates for one class: the rule's first, then the design's others that are legal here.
fn candidates(gpu: &Gpu, class: &ShapeClass) -> Vec<MatmulTiling> {
    let rule = MatmulTiling::fixed_rule(gpu, class.m, class.n, 1);
    let others: Vec<MatmulTiling> = match rule.design {
        MatmulDesign::Subgroup => [8, 16, 32].map(MatmulTiling::subgroup).to_vec(),
        // Fewer or more rows per workgroup; 16 rows of 4 columns (more lanes).
        MatmulDesign::Lanes => vec![
            lanes_for(class.n, if rule.tm == 8 { 4 } else { 8 }, rule.tn),
            lanes_for(class.n, 16, 4),
        ],
        // The rule's two tiles, and a 128 x 128 one with 8 x 8 outputs per invocation.
        MatmulDesign::Tiled => vec![
            MatmulTiling::new(16, 16, 4, 4, 16),
            MatmulTiling::new(8, 8, 4, 4, 16),
            MatmulTiling::new(16, 16, 8, 8, 16),
        ],
    };
    let mut all = vec![rule];
    for t in others {
        if !all.contains(&t) && t.validate(gpu).is_ok() {
            all.push(t);
        }
    }
    all
}

/// Inputs in [-1, 1), the same on every run (a small LCG: the values only need to be varied).
fn inputs(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The median of a few numbers (of an even count, the mean of the middle two).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let h = v.len() / 2;
    if v.len() % 2 == 1 {
        v[h]
    } else {
        (v[h - 1] + v[h]) / 2.0
    }
}

/// Whether two outputs hold the same values (NaN equal to NaN; -0 equal to +0).
fn same_values(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x == y || (x.is_nan() && y.is_nan()))
}

/// Seconds of one call of `run` (which records one dispatch) on the detached context `s`:
/// timed by the device (`timestamps`), else as a submission and its wait on the host clock
/// (of enough calls to fill a millisecond, `estimate` being a call's time as far as known).
fn time_call(
    s: &Gpu,
    timestamps: bool,
    estimate: f64,
    run: &dyn Fn() -> Result<()>,
) -> Result<f64> {
    if timestamps {
        s.start_profile_using(ProfileMethod::Timestamps)?;
        let recorded = run();
        let profile = s.finish_profile()?;
        recorded?;
        let seconds = profile
            .into_iter()
            .flat_map(|p| p.dispatches)
            .map(|d| d.seconds)
            .sum::<f64>();
        if seconds > 0.0 && seconds.is_finite() {
            return Ok(seconds);
        }
        // No usable stamps (a driver that writes zeros): the host clock instead.
    }
    let calls = ((1e-3 / estimate.max(1e-7)) as usize).clamp(1, 100);
    s.synchronize()?;
    let start = Instant::now();
    for _ in 0..calls {
        run()?;
    }
    s.synchronize()?;
    Ok(start.elapsed().as_secs_f64() / calls as f64)
}

/// Time every class's candidates on a detached context.
fn tune(gpu: &Gpu) -> Result<(Vec<ClassChoice>, String, f64)> {
    let start = Instant::now();
    let s = gpu.detached();
    // Work submitted before may still be running: let it finish before anything is timed.
    s.synchronize()?;
    let timestamps = s.features().contains(wgpu::Features::TIMESTAMP_QUERY);
    let mut choices = Vec::with_capacity(CLASSES.len());
    for (i, class) in CLASSES.iter().enumerate() {
        let (m, k, n) = (class.m, class.k, class.n);
        let a = Tensor::from_slice(&s, &[m, k], &inputs(m * k, 2 * i as u64))?;
        let b = Tensor::from_slice(&s, &[k, n], &inputs(k * n, 2 * i as u64 + 1))?;
        let out = Tensor::uninit(&s, &[m, n], DType::F32)?;
        let flops = 2.0 * (m * n * k) as f64;
        let mut reference: Option<Vec<f32>> = None;
        let mut differed = Vec::new();
        // (tiling, its spec, one call's seconds per round: the first after the check, then one
        // per round of the candidates in turn)
        let mut timed: Vec<(MatmulTiling, MatmulSpec, Vec<f64>)> = Vec::new();
        for tiling in candidates(gpu, class) {
            let spec = MatmulSpec {
                tiling: Some(tiling),
                ..Default::default()
            };
            let run = || matmul_into(&a, &b, &spec, &out, false);
            // The first call compiles the pipeline; its output is checked against the rule's,
            // over NaN so that an element a candidate leaves unwritten cannot pass.
            crate::ops::fill(&out, f32::NAN)?;
            let start = Instant::now();
            run()?;
            let got = out.to_vec()?;
            match &reference {
                None => reference = Some(got),
                Some(r) if !same_values(r, &got) => {
                    differed.push(tiling);
                    continue;
                }
                Some(_) => {}
            }
            let first = time_call(&s, timestamps, start.elapsed().as_secs_f64(), &run)?;
            timed.push((tiling, spec, vec![first]));
        }
        let round: f64 = timed.iter().map(|t| t.2[0]).sum();
        let rounds = ((CLASS_BUDGET_SECONDS / round) as usize).clamp(ROUNDS.0, ROUNDS.1);
        for _ in 0..rounds {
            for (_, spec, times) in timed.iter_mut() {
                let run = || matmul_into(&a, &b, spec, &out, false);
                times.push(time_call(&s, timestamps, times[0], &run)?);
            }
        }
        // A candidate's speed-up over the rule is the median over rounds of the two timed side
        // by side, so a load that comes and goes between rounds does not decide; its rate, the
        // median call's.
        let rule_times = timed[0].2.clone();
        let (rule, rule_gflops) = (timed[0].0, flops / median(&rule_times) / 1e9);
        let (tiling, gflops) = timed
            .iter()
            .map(|(t, _, times)| {
                let ratios: Vec<f64> = rule_times.iter().zip(times).map(|(r, c)| r / c).collect();
                (*t, flops / median(times) / 1e9, median(&ratios))
            })
            .filter(|&(_, g, speedup)| speedup >= 1.0 + MARGIN && g > rule_gflops)
            .max_by(|x, y| x.2.total_cmp(&y.2))
            .map_or((rule, rule_gflops), |(t, g, _)| (t, g));
        choices.push(ClassChoice {
            class: *class,
            tiling,
            gflops,
            rule,
            rule_gflops,
            differed,
        });
    }
    let method = if timestamps {
        "device timestamps"
    } else {
        "host wall clock (no timestamp queries)"
    };
    Ok((choices, method.into(), start.elapsed().as_secs_f64()))
}

// ---- the cache file ----

/// What a cache file is valid for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct CacheKey {
    format: u32,
    adapter: String,
    vendor: u32,
    device: u32,
    backend: String,
    driver: String,
    driver_info: String,
    engine: String,
    /// FNV-1a of the matmul shaders' full text (prelude and libraries included).
    shaders: String,
    design: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct TilingRecord {
    design: String,
    wg_m: u32,
    wg_n: u32,
    tm: u32,
    tn: u32,
    bk: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct CachedClass {
    class: String,
    /// M, K, N timed.
    shape: [usize; 3],
    tiling: TilingRecord,
    gflops: f64,
    rule: TilingRecord,
    rule_gflops: f64,
    #[serde(default)]
    differed: Vec<TilingRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CacheFile {
    key: CacheKey,
    method: String,
    seconds: f64,
    classes: Vec<CachedClass>,
}

/// 64-bit FNV-1a: a stable hash for the file name and the shaders' text.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn design_name(d: MatmulDesign) -> &'static str {
    match d {
        MatmulDesign::Tiled => "tiled",
        MatmulDesign::Lanes => "lanes",
        MatmulDesign::Subgroup => "subgroup",
    }
}

/// The design this context's matmuls use (the rules pick one per context, not per shape).
fn design(gpu: &Gpu) -> MatmulDesign {
    MatmulTiling::fixed_rule(gpu, 1024, 64, 1).design
}

fn cache_key(gpu: &Gpu) -> CacheKey {
    let i = gpu.adapter_info();
    let shaders = format!("{}\n{}", MATMUL.wgsl(), MATMUL_SUBGROUP.wgsl());
    CacheKey {
        format: FORMAT,
        adapter: i.name.clone(),
        vendor: i.vendor,
        device: i.device,
        backend: format!("{:?}", i.backend),
        driver: i.driver.clone(),
        driver_info: i.driver_info.clone(),
        engine: env!("CARGO_PKG_VERSION").into(),
        shaders: format!("{:016x}", fnv1a(shaders.as_bytes())),
        design: design_name(design(gpu)).into(),
    }
}

/// The cache file's name for a key (its hash: one file per adapter, driver, engine and design).
fn file_stem(key: &CacheKey) -> String {
    let text = serde_json::to_string(key).expect("a key serialises");
    format!("matmul-tiles-{:016x}", fnv1a(text.as_bytes()))
}

/// The cache file `gpu`'s table is read from and written to, where a cache directory is named.
pub fn cache_path(gpu: &Gpu) -> Option<PathBuf> {
    let stem = file_stem(&cache_key(gpu));
    gpu.cache_dir().map(|d| d.join(format!("{stem}.json")))
}

fn record(t: &MatmulTiling) -> TilingRecord {
    TilingRecord {
        design: design_name(t.design).into(),
        wg_m: t.wg_m,
        wg_n: t.wg_n,
        tm: t.tm,
        tn: t.tn,
        bk: t.bk,
    }
}

/// A recorded tiling, if it is of the expected design and legal on `gpu`.
fn tiling_of(
    r: &TilingRecord,
    gpu: &Gpu,
    want: MatmulDesign,
) -> std::result::Result<MatmulTiling, String> {
    let t = MatmulTiling {
        wg_m: r.wg_m,
        wg_n: r.wg_n,
        tm: r.tm,
        tn: r.tn,
        bk: r.bk,
        design: want,
    };
    if r.design != design_name(want) {
        return Err(format!(
            "it holds a {} tiling where this context runs the {} design",
            r.design,
            design_name(want)
        ));
    }
    t.validate(gpu).map_err(|e| e.to_string())?;
    Ok(t)
}

/// The table in `path`: `Ok(None)` if there is no file, `Err(why)` if it is damaged or made
/// for another key.
fn read_table(
    gpu: &Gpu,
    path: &Path,
    key: &CacheKey,
) -> std::result::Result<Option<TuneTable>, String> {
    // No file (or no directory): nothing to warn about; the caller tunes and tries to write.
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("it cannot be read ({e})"))?;
    let file: CacheFile =
        serde_json::from_str(&text).map_err(|e| format!("it is not a tuning table ({e})"))?;
    if file.key != *key {
        let (had, want) = (
            serde_json::to_value(&file.key).unwrap_or_default(),
            serde_json::to_value(key).unwrap_or_default(),
        );
        let differing: Vec<&str> = [
            "format",
            "adapter",
            "vendor",
            "device",
            "backend",
            "driver",
            "driver_info",
            "engine",
            "shaders",
            "design",
        ]
        .into_iter()
        .filter(|f| had.get(f) != want.get(f))
        .collect();
        return Err(format!(
            "it was made for another adapter, driver, engine version or matmul kernel (differing: {})",
            differing.join(", ")
        ));
    }
    let want = design(gpu);
    if file.classes.len() != CLASSES.len() {
        return Err(format!(
            "it has {} classes, not {}",
            file.classes.len(),
            CLASSES.len()
        ));
    }
    let mut choices = Vec::with_capacity(CLASSES.len());
    for (c, class) in file.classes.iter().zip(&CLASSES) {
        if c.class != class.name || c.shape != [class.m, class.k, class.n] {
            return Err(format!("its class {:?} is not {:?}", c.class, class.name));
        }
        let rates_ok = [c.gflops, c.rule_gflops]
            .iter()
            .all(|g| g.is_finite() && *g > 0.0);
        if !rates_ok {
            return Err(format!(
                "class {} has a rate that is not a positive number",
                class.name
            ));
        }
        choices.push(ClassChoice {
            class: *class,
            tiling: tiling_of(&c.tiling, gpu, want)?,
            gflops: c.gflops,
            rule: tiling_of(&c.rule, gpu, want)?,
            rule_gflops: c.rule_gflops,
            differed: c
                .differed
                .iter()
                .map(|r| tiling_of(r, gpu, want))
                .collect::<std::result::Result<_, _>>()?,
        });
    }
    Ok(Some(TuneTable {
        mode: gpu.tune_mode(),
        source: TuneSource::Cache,
        path: Some(path.to_path_buf()),
        method: file.method,
        seconds: file.seconds,
        choices,
        note: None,
    }))
}

fn write_table(table: &TuneTable, key: &CacheKey, path: &Path) -> Result<()> {
    let file = CacheFile {
        key: key.clone(),
        method: table.method.clone(),
        seconds: table.seconds,
        classes: table
            .choices
            .iter()
            .map(|c| CachedClass {
                class: c.class.name.into(),
                shape: [c.class.m, c.class.k, c.class.n],
                tiling: record(&c.tiling),
                gflops: c.gflops,
                rule: record(&c.rule),
                rule_gflops: c.rule_gflops,
                differed: c.differed.iter().map(record).collect(),
            })
            .collect(),
    };
    let text = serde_json::to_string_pretty(&file)
        .map_err(|e| Error::Io(format!("the tuning table does not serialise: {e}")))?;
    crate::output::write_atomically(&[(path, text.as_bytes())])
}

/// Said once per process: the cache directory cannot be used.
static WARNED_UNWRITABLE: AtomicBool = AtomicBool::new(false);

fn warn_unwritable(why: &str) {
    if !WARNED_UNWRITABLE.swap(true, Ordering::Relaxed) {
        eprintln!("warning: {why}; the tuned matmul tiles are kept in memory only");
    }
}

fn rules(mode: TuneMode, path: Option<PathBuf>, note: String) -> TuneTable {
    TuneTable {
        mode,
        source: TuneSource::Rules,
        path,
        method: String::new(),
        seconds: 0.0,
        choices: Vec::new(),
        note: Some(note),
    }
}

fn make_table(gpu: &Gpu) -> TuneTable {
    let mode = gpu.tune_mode();
    if mode == TuneMode::Off {
        return rules(mode, None, "tuning is off".into());
    }
    let key = cache_key(gpu);
    let stem = file_stem(&key);
    let dir = gpu.cache_dir();
    let path = dir.map(|d| d.join(format!("{stem}.json")));
    if let (TuneMode::On, Some(p)) = (mode, &path) {
        match read_table(gpu, p, &key) {
            Ok(Some(t)) => return t,
            Ok(None) => {}
            Err(why) => eprintln!(
                "warning: ignoring the matmul tuning cache {}: {why}; tuning again to replace it",
                p.display()
            ),
        }
    }
    // Processes starting together take turns: the first tunes and writes, the others then
    // read what it wrote.
    let lock = match dir {
        None => {
            warn_unwritable(&format!(
                "no cache directory ({} and HOME are unset)",
                crate::gpu::ENV_CACHE_DIR
            ));
            None
        }
        Some(d) => match std::fs::create_dir_all(d)
            .map_err(|e| Error::Io(format!("cannot create {}: {e}", d.display())))
            .and_then(|()| crate::rundir::lock_exclusive(&d.join(format!("{stem}.lock"))))
        {
            Ok(f) => Some(f),
            Err(e) => {
                warn_unwritable(&format!("the cache directory cannot be used ({e})"));
                None
            }
        },
    };
    if let (TuneMode::On, Some(_), Some(p)) = (mode, &lock, &path) {
        if let Ok(Some(t)) = read_table(gpu, p, &key) {
            return t;
        }
    }
    let (choices, method, seconds) = match tune(gpu) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("warning: timing the matmul tilings failed ({e}); using the fixed rules");
            return rules(mode, path, format!("timing failed: {e}"));
        }
    };
    let table = TuneTable {
        mode,
        source: TuneSource::Tuned,
        path: path.clone(),
        method,
        seconds,
        choices,
        note: None,
    };
    if let (Some(_), Some(p)) = (&lock, &path) {
        if let Err(e) = write_table(&table, &key, p) {
            warn_unwritable(&e.to_string());
        }
    }
    drop(lock);
    table
}

impl TuneTable {
    /// The state as `rectiflow info` prints it: mode, source, file, and per class the tuned
    /// tiling and its rate beside the fixed rule's.
    pub fn summary(&self, gpu: &Gpu) -> String {
        let mut s = format!("  mode: {}\n", self.mode.name());
        s += &match self.source {
            TuneSource::Tuned => format!(
                "  source: tuned (timed now in {:.2} s, {})\n",
                self.seconds, self.method
            ),
            TuneSource::Cache => format!(
                "  source: cache (timed in {:.2} s by an earlier run, {})\n",
                self.seconds, self.method
            ),
            TuneSource::Rules => format!(
                "  source: rules ({})\n",
                self.note.as_deref().unwrap_or("no table")
            ),
        };
        let file = self.path.clone().or_else(|| cache_path(gpu));
        s += &format!(
            "  file: {}{}\n",
            file.map_or("none (no cache directory)".into(), |p| p
                .display()
                .to_string()),
            if self.mode == TuneMode::Off {
                " (not read or written: tuning is off)"
            } else {
                ""
            }
        );
        s += &format!(
            "  | {:<18} | {:<12} | {:<22} | {:>7} | {:<22} | {:>7} |\n",
            "class", "M x K x N", "tuned", "GFLOP/s", "fixed rule", "GFLOP/s"
        );
        for (i, class) in CLASSES.iter().enumerate() {
            let shape = format!("{}x{}x{}", class.m, class.k, class.n);
            let line = match self.choices.get(i) {
                Some(c) => format!(
                    "  | {:<18} | {:<12} | {:<22} | {:>7.2} | {:<22} | {:>7.2} |\n",
                    class.name,
                    shape,
                    if c.tiling == c.rule {
                        "= rule".to_string()
                    } else {
                        tiling_name(&c.tiling)
                    },
                    c.gflops,
                    tiling_name(&c.rule),
                    c.rule_gflops
                ),
                None => format!(
                    "  | {:<18} | {:<12} | {:<22} | {:>7} | {:<22} | {:>7} |\n",
                    class.name,
                    shape,
                    "-",
                    "-",
                    tiling_name(&MatmulTiling::fixed_rule(gpu, class.m, class.n, 1)),
                    "-"
                ),
            };
            s += &line;
        }
        let differed: Vec<String> = self
            .choices
            .iter()
            .flat_map(|c| {
                c.differed
                    .iter()
                    .map(|t| format!("{} ({})", tiling_name(t), c.class.name))
            })
            .collect();
        if !differed.is_empty() {
            s += &format!(
                "  not used (results differed from the rule's): {}\n",
                differed.join(", ")
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_shape_falls_in_its_own_class() {
        for (i, c) in CLASSES.iter().enumerate() {
            assert_eq!(class_of(c.m, c.n, c.k, 1), Some(i), "{}", c.name);
        }
        // Narrow outputs and few rows keep the rules.
        assert_eq!(class_of(4096, 2, 256, 1), None);
        assert_eq!(class_of(8, 64, 64, 1), None);
        assert_eq!(class_of(32, 64, 64, 1), None);
        // The batch counts towards the rows.
        assert_eq!(class_of(32, 64, 64, 64), Some(4));
    }

    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn inputs_are_in_range_and_repeat() {
        let x = inputs(1000, 3);
        assert!(x.iter().all(|v| (-1.0..1.0).contains(v)));
        assert_eq!(x, inputs(1000, 3));
        assert_ne!(x, inputs(1000, 4));
    }
}
