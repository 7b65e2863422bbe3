//! Fuzz-style robustness of the loaders (issue 12): a few hundred seeded mutations of a checkpoint
//! and of IDX files go through the library's loaders (`open_checkpoint`, `data::idx_within`).
//! Every input must give a clean `Ok` or `Err` (no panic, no abort), every mutation that breaks
//! the structure must give an `Err` naming the file, and a counting global allocator must see the
//! largest single allocation and the peak of live heap bytes stay under 64 MB. No GPU is used.

use rand::{Rng, SeedableRng};
use rectiflow::checkpoint::Checkpoint;
use rectiflow::data::{self, DataSpec};
use rectiflow::flow::{Prediction, Schedule, TimeSampler};
use rectiflow::limits::Budget;
use rectiflow::nn::ModelConfig;
use rectiflow::train::{open_checkpoint, TrainConfig};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts live heap bytes, their peak, and the largest single allocation.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize, request: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::SeqCst) + bytes;
    PEAK.fetch_max(live, Ordering::SeqCst);
    LARGEST.fetch_max(request, Ordering::SeqCst);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size(), layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size(), layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size(), new_size);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const CAP: usize = 64 << 20;

/// The budget the loaders run under: a 128 MB device buffer and a 64 MB host budget.
fn budget() -> Budget {
    Budget {
        tensor_bytes: 128 << 20,
        host_bytes: CAP as u64,
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rectiflow-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A valid checkpoint of a tiny class-conditional DiT on 8x8 images, built on the host.
fn base_checkpoint() -> (Vec<u8>, TrainConfig) {
    let config = TrainConfig {
        data: DataSpec::Digits,
        model: ModelConfig {
            kind: "dit".into(),
            width: 16,
            depth: 1,
            heads: 2,
            patch: 2,
            shape: vec![1, 8, 8],
            classes: 10,
            context_dim: 0,
        },
        schedule: Schedule::RectifiedFlow,
        prediction: Prediction::Velocity,
        preconditioning: Default::default(),
        weighting: None,
        t_sampler: TimeSampler::LogNormal { m: 0.0, s: 1.0 },
        steps: 100,
        batch: 16,
        lr: 1e-3,
        warmup: 10,
        ema_decay: 0.99,
        max_grad_norm: 1.0,
        label_dropout: 0.1,
        seed: 3,
        f16: false,
    };
    let layout = config.model.layout().unwrap();
    let mut params = HashMap::new();
    let mut ema = HashMap::new();
    for (i, s) in layout.specs().iter().enumerate() {
        let n: usize = s.shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|j| ((i * 31 + j) as f32 * 0.37).sin() * 0.1)
            .collect();
        params.insert(s.name.clone(), (s.shape.clone(), v.clone()));
        ema.insert(s.name.clone(), v);
    }
    let ck = Checkpoint {
        step: 7,
        config: config.to_json(),
        params,
        adam_m: ema.clone(),
        adam_v: ema
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().map(|x| x * x).collect()))
            .collect(),
        ema,
    };
    let dir = temp_dir("base");
    let path = dir.join("base.safetensors");
    ck.save(&path).unwrap();
    (std::fs::read(&path).unwrap(), config)
}

/// A checkpoint's header as JSON, and where its data starts.
fn split_header(bytes: &[u8]) -> (serde_json::Value, usize) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&bytes[8..8 + n]).unwrap(), 8 + n)
}

fn join_header(header: &serde_json::Value, body: &[u8]) -> Vec<u8> {
    let text = header.to_string();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text.as_bytes());
    out.extend(body);
    out
}

/// Seeded structural mutations of a checkpoint, each expected to be refused.
fn header_mutations(base: &[u8], rng: &mut rand::rngs::StdRng) -> Vec<(String, Vec<u8>)> {
    let (header, start) = split_header(base);
    let body = &base[start..];
    let names: Vec<String> = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    let mut out = Vec::new();
    let mut edit = |label: String, f: &mut dyn FnMut(&mut serde_json::Value)| {
        let mut h = header.clone();
        f(&mut h);
        out.push((label, join_header(&h, body)));
    };
    let huge = [
        serde_json::json!(u64::MAX),
        serde_json::json!(1u64 << 40),
        serde_json::json!(1u64 << 63),
    ];
    for round in 0..4 {
        let name = names[rng.random_range(0..names.len())].clone();
        for dtype in ["F16", "BF16", "I64", "U8", "F64", "BOGUS"] {
            edit(format!("{name} dtype {dtype}"), &mut |h| {
                h[&name]["dtype"] = dtype.into()
            });
        }
        for shape in [
            serde_json::json!([1u64 << 32, 1u64 << 32]),
            serde_json::json!([u64::MAX]),
            serde_json::json!([0]),
            serde_json::json!([]),
            serde_json::json!([3, 5, 7]),
        ] {
            edit(format!("{name} shape {shape}"), &mut |h| {
                h[&name]["shape"] = shape.clone()
            });
        }
        let [s, e] = [0, 1].map(|i| h_offset(&header, &name, i));
        for offsets in [
            serde_json::json!([0u64, u64::MAX]),
            serde_json::json!([e, s]),
            serde_json::json!([s, e + 4]),
            serde_json::json!([s + 4, e + 4]),
            serde_json::json!([body.len() as u64, body.len() as u64 + (e - s)]),
            serde_json::json!([u64::MAX - 3, u64::MAX]),
        ] {
            edit(
                format!("{name} offsets {offsets} (round {round})"),
                &mut |h| h[&name]["data_offsets"] = offsets.clone(),
            );
        }
        edit(format!("{name} renamed"), &mut |h| {
            let v = h.as_object_mut().unwrap().remove(&name).unwrap();
            h["params.not_in_the_model"] = v;
        });
        edit(format!("{name} removed"), &mut |h| {
            h.as_object_mut().unwrap().remove(&name);
        });
    }
    // The metadata.
    for (key, value) in [
        ("format", serde_json::json!("safetensors-but-not-ours")),
        ("step", serde_json::json!("seven")),
        ("step", serde_json::json!("-1")),
        ("config", serde_json::json!("{not json")),
        ("config", serde_json::json!("[]")),
    ] {
        edit(format!("metadata {key} = {value}"), &mut |h| {
            h["__metadata__"][key] = value.clone()
        });
    }
    edit("no metadata".into(), &mut |h| {
        h.as_object_mut().unwrap().remove("__metadata__");
    });
    // Numbers in the configuration: huge, zero, or merely different from the weights.
    let config: serde_json::Value =
        serde_json::from_str(header["__metadata__"]["config"].as_str().unwrap()).unwrap();
    let model_edits: Vec<(&str, serde_json::Value)> = vec![
        ("width", 0.into()),
        ("width", 100_000.into()),
        ("width", 20_000.into()),
        ("width", 32.into()),
        ("width", huge[0].clone()),
        ("depth", 1_000_000_000u64.into()),
        ("depth", huge[1].clone()),
        ("depth", 2.into()),
        ("classes", 1_000_000_000u64.into()),
        ("classes", huge[2].clone()),
        ("classes", 11.into()),
        ("heads", 0.into()),
        ("heads", 3.into()),
        ("heads", 1_000_000_000u64.into()),
        ("patch", 0.into()),
        ("patch", 3.into()),
        ("patch", 1_000_000_000u64.into()),
        ("shape", serde_json::json!([1u64 << 40])),
        ("shape", serde_json::json!([1, 1u64 << 20, 1u64 << 20])),
        ("shape", serde_json::json!([4096, 4096, 4096])),
        ("shape", serde_json::json!([])),
        ("shape", serde_json::json!([0])),
        ("shape", serde_json::json!([1, 8, 8, 8])),
        ("shape", serde_json::json!([2, 8, 8])),
        ("kind", "bogus".into()),
        ("kind", "mlp".into()),
        ("context_dim", 1_000_000_000u64.into()),
    ];
    for (key, value) in model_edits {
        let mut c = config.clone();
        c["model"][key] = value.clone();
        let text = c.to_string();
        edit(format!("config model.{key} = {value}"), &mut |h| {
            h["__metadata__"]["config"] = text.clone().into()
        });
    }
    for (key, value) in [
        ("batch", serde_json::json!(0)),
        ("batch", serde_json::json!(1u64 << 60)),
        ("lr", serde_json::json!(-1.0)),
        ("lr", serde_json::json!(0.0)),
        ("lr", serde_json::json!(1e39)),
        ("ema_decay", serde_json::json!(1.5)),
        ("label_dropout", serde_json::json!(2.0)),
        ("schedule", serde_json::json!("edm:0,-1")),
        ("t_sampler", serde_json::json!("mode:99")),
        ("prediction", serde_json::json!("bogus")),
        ("steps", serde_json::json!(-5)),
    ] {
        let mut c = config.clone();
        c[key] = value.clone();
        let text = c.to_string();
        edit(format!("config {key} = {value}"), &mut |h| {
            h["__metadata__"]["config"] = text.clone().into()
        });
    }
    out
}

fn h_offset(header: &serde_json::Value, name: &str, i: usize) -> u64 {
    header[name]["data_offsets"][i].as_u64().unwrap()
}

/// An IDX file: magic, big-endian dimensions, data.
fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = magic.to_be_bytes().to_vec();
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend(data);
    b
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, bytes).unwrap();
    enc.finish().unwrap()
}

/// Run a loader on one input: it must not panic; an expected refusal must be an `Err` that names
/// the file. Returns whether it succeeded.
fn check<T>(
    label: &str,
    path: &Path,
    must_fail: bool,
    load: impl FnOnce() -> rectiflow::Result<T>,
) -> bool {
    let result = catch_unwind(AssertUnwindSafe(load));
    let result = result.unwrap_or_else(|_| panic!("{label}: the loader panicked"));
    match result {
        Ok(_) => {
            assert!(!must_fail, "{label}: accepted");
            true
        }
        Err(e) => {
            let name = path.file_name().unwrap().to_string_lossy();
            assert!(
                e.to_string().contains(&*name),
                "{label}: the error does not name the file: {e}"
            );
            false
        }
    }
}

#[test]
fn mutated_checkpoints_and_idx_files_are_refused_cleanly_within_64_mb() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let dir = temp_dir("inputs");
    let (base, config) = base_checkpoint();
    let budget = budget();
    // The base checkpoint loads.
    let path = dir.join("base.safetensors");
    std::fs::write(&path, &base).unwrap();
    let (_, loaded) = open_checkpoint(&path, &budget).unwrap();
    assert_eq!(loaded, config);

    let mut inputs: Vec<(String, Vec<u8>, bool)> = Vec::new();
    for _ in 0..60 {
        let cut = rng.random_range(0..base.len());
        inputs.push((format!("truncated to {cut}"), base[..cut].to_vec(), true));
    }
    for _ in 0..80 {
        let mut b = base.clone();
        let flips = rng.random_range(1..=8);
        for _ in 0..flips {
            let i = rng.random_range(0..b.len());
            b[i] ^= 1 << rng.random_range(0..8);
        }
        // A flip in the tensor data can leave a valid checkpoint; one in the header usually not.
        inputs.push((format!("{flips} bit flips"), b, false));
    }
    let (_, data_start) = split_header(&base);
    let header_len = data_start as u64 - 8;
    for claim in [
        0,
        1,
        7,
        header_len - 1,
        header_len + 1,
        base.len() as u64,
        u32::MAX as u64,
        1 << 40,
        1 << 63,
        u64::MAX,
        rng.random(),
        rng.random::<u64>() >> 16,
    ] {
        let mut b = base.clone();
        b[..8].copy_from_slice(&claim.to_le_bytes());
        inputs.push((format!("header length {claim}"), b, true));
    }
    for (label, bytes) in header_mutations(&base, &mut rng) {
        inputs.push((label, bytes, true));
    }
    for _ in 0..20 {
        let n = rng.random_range(0..4096);
        let mut b: Vec<u8> = (0..n).map(|_| rng.random()).collect();
        if n >= 8 && rng.random_bool(0.5) {
            b[..8].copy_from_slice(&(rng.random_range(0..n as u64)).to_le_bytes());
        }
        inputs.push((format!("{n} random bytes"), b, true));
    }

    // IDX images [20, 8, 8] and labels [20], mutated.
    let pixels: Vec<u8> = (0..20 * 64).map(|_| rng.random()).collect();
    let labels: Vec<u8> = (0..20).map(|_| rng.random_range(0..10)).collect();
    let good_images = idx_bytes(2051, &[20, 8, 8], &pixels);
    let good_labels = idx_bytes(2049, &[20], &labels);
    let mut idx_inputs: Vec<(String, Vec<u8>, Vec<u8>, bool)> = vec![(
        "the good pair".into(),
        good_images.clone(),
        good_labels.clone(),
        false,
    )];
    let dim_choices = [0u32, 1, 7, 8, 20, 21, 1 << 15, 1 << 31, u32::MAX];
    for _ in 0..80 {
        let dims: Vec<u32> = (0..3)
            .map(|_| {
                if rng.random_bool(0.8) {
                    dim_choices[rng.random_range(0..dim_choices.len())]
                } else {
                    rng.random()
                }
            })
            .collect();
        let fits = dims.iter().map(|&d| d as u64).product::<u64>() == pixels.len() as u64;
        let images = idx_bytes(2051, &dims, &pixels);
        idx_inputs.push((
            format!("image dims {dims:?}"),
            images,
            good_labels.clone(),
            !fits,
        ));
    }
    for _ in 0..20 {
        let count = [0u32, 19, 21, 1 << 31, u32::MAX][rng.random_range(0..5)];
        let l = idx_bytes(2049, &[count], &labels);
        idx_inputs.push((format!("label count {count}"), good_images.clone(), l, true));
    }
    for magic in [0u32, 2049, 2050, 2052, 0x0803_0000, u32::MAX] {
        let images = idx_bytes(magic, &[20, 8, 8], &pixels);
        idx_inputs.push((format!("magic {magic}"), images, good_labels.clone(), true));
    }
    for _ in 0..30 {
        let cut = rng.random_range(0..good_images.len());
        let images = good_images[..cut].to_vec();
        idx_inputs.push((
            format!("images cut at {cut}"),
            images,
            good_labels.clone(),
            true,
        ));
    }
    for extra in [1usize, 64, 4096] {
        let mut images = good_images.clone();
        images.extend(std::iter::repeat_n(0, extra));
        idx_inputs.push((
            format!("{extra} bytes too many"),
            images,
            good_labels.clone(),
            true,
        ));
    }
    // Gzipped: every mutation above again, and bodies longer than their headers promise.
    let plain = idx_inputs.clone();
    for (label, images, labels_file, must_fail) in plain.into_iter().step_by(3) {
        idx_inputs.push((
            format!("{label}, gzipped"),
            gzip(&images),
            labels_file,
            must_fail,
        ));
    }
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut bomb, &idx_bytes(2051, &[20, 8, 8], &[])).unwrap();
    for _ in 0..(256 << 4) {
        std::io::Write::write_all(&mut bomb, &[0u8; 1 << 16]).unwrap();
    }
    let bomb = bomb.finish().unwrap();
    idx_inputs.push((
        "a gzip body of 256 MB for 1280 bytes".into(),
        bomb,
        good_labels.clone(),
        true,
    ));
    let claim = gzip(&idx_bytes(2051, &[1, 1 << 15, 1 << 15], &[0; 4096]));
    idx_inputs.push((
        "a gzip header promising 1 GB".into(),
        claim,
        good_labels.clone(),
        true,
    ));
    let claim = idx_bytes(2051, &[1, 4096, 2048], &[]);
    idx_inputs.push((
        "a header promising 8 MB".into(),
        claim,
        good_labels.clone(),
        true,
    ));

    // Write every input first, so that the measurement sees only the loaders.
    let mut cases = Vec::new();
    for (i, (label, bytes, must_fail)) in inputs.into_iter().enumerate() {
        let path = dir.join(format!("ck{i:04}.safetensors"));
        std::fs::write(&path, &bytes).unwrap();
        cases.push((label, path, must_fail));
    }
    let mut idx_cases = Vec::new();
    for (i, (label, images, labels_file, must_fail)) in idx_inputs.into_iter().enumerate() {
        let (ip, lp) = (
            dir.join(format!("img{i:04}.idx")),
            dir.join(format!("lab{i:04}.idx")),
        );
        std::fs::write(&ip, &images).unwrap();
        std::fs::write(&lp, &labels_file).unwrap();
        idx_cases.push((label, ip, lp, must_fail));
    }

    let baseline = LIVE.load(Ordering::SeqCst);
    PEAK.store(baseline, Ordering::SeqCst);
    LARGEST.store(0, Ordering::SeqCst);
    let (mut accepted, mut refused) = (0, 0);
    for (label, path, must_fail) in &cases {
        let ok = check(label, path, *must_fail, || open_checkpoint(path, &budget));
        if ok {
            accepted += 1
        } else {
            refused += 1
        }
    }
    let (mut idx_accepted, mut idx_refused) = (0, 0);
    for (label, ip, lp, must_fail) in &idx_cases {
        // The error names the images or the labels file; either is the file at fault.
        let result = catch_unwind(AssertUnwindSafe(|| {
            data::idx_within(ip, Some(lp), 32 << 20)
        }))
        .unwrap_or_else(|_| panic!("{label}: the IDX loader panicked"));
        match result {
            Ok(ds) => {
                assert!(!must_fail, "{label}: accepted");
                assert_eq!(ds.len(), 20);
                idx_accepted += 1;
            }
            Err(e) => {
                let text = e.to_string();
                let named = [ip, lp]
                    .iter()
                    .any(|p| text.contains(&*p.file_name().unwrap().to_string_lossy()));
                assert!(named, "{label}: the error names neither file: {text}");
                idx_refused += 1;
            }
        }
    }
    let peak = PEAK.load(Ordering::SeqCst) - baseline;
    let largest = LARGEST.load(Ordering::SeqCst);
    println!(
        "{} checkpoints ({accepted} accepted, {refused} refused) and {} IDX pairs \
         ({idx_accepted} accepted, {idx_refused} refused): peak {:.2} MB above the baseline, \
         largest allocation {:.2} MB",
        cases.len(),
        idx_cases.len(),
        peak as f64 / (1 << 20) as f64,
        largest as f64 / (1 << 20) as f64
    );
    assert!(cases.len() + idx_cases.len() >= 400);
    assert!(
        refused >= cases.len() * 3 / 4,
        "most mutations must be refused"
    );
    assert!(idx_accepted >= 2, "the good pair loads, plain and gzipped");
    assert!(largest < CAP, "largest allocation {largest} bytes");
    assert!(peak < CAP, "peak {peak} bytes above the baseline");
}
