//! Kernel benchmarks: `cargo bench --bench kernels [-- --sweep] [-- --quick]`.
//!
//! Each GPU figure is the mean over many dispatches recorded into one submission (so the ~0.1 ms
//! per-dispatch cost of a software driver is included, as in real use). Beside each matmul, the
//! same product on the CPU with the `matrixmultiply` crate's sgemm on all cores, measured in the
//! same run, and the ratio GPU / CPU.

use rectiflow::ops::{self, Activation, MatmulSpec, MatmulTiling};
use rectiflow::{Gpu, Tensor};
use std::time::{Duration, Instant};

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-1.0..1.0)).collect()
}

/// Timed batches per measurement; the median batch is reported (this machine's neighbours make
/// single runs vary by +-20%).
const BATCHES: usize = 5;

/// Seconds per call of `f`: the median over batches of the mean over enough calls to fill
/// `budget / BATCHES`. `sync` waits for the work `f` recorded (nothing for CPU work).
fn median_time(budget: Duration, mut f: impl FnMut(), sync: impl Fn()) -> f64 {
    f();
    sync(); // compile, warm up
    let t = Instant::now();
    f();
    sync();
    let one = t.elapsed().as_secs_f64().max(1e-7);
    let reps = ((budget.as_secs_f64() / BATCHES as f64 / one) as usize).clamp(1, 200);
    let mut batches: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            sync();
            t.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    batches.sort_by(f64::total_cmp);
    batches[BATCHES / 2]
}

fn time_gpu(gpu: &Gpu, budget: Duration, f: impl FnMut()) -> f64 {
    median_time(budget, f, || gpu.synchronize().unwrap())
}

fn time_cpu(budget: Duration, f: impl FnMut()) -> f64 {
    median_time(budget, f, || ())
}

fn cpu_sgemm(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

struct Row {
    kernel: String,
    shape: String,
    secs: f64,
    gflops: Option<f64>,
    gbs: Option<f64>,
    cpu_secs: Option<f64>,
}

fn print_rows(rows: &[Row]) {
    println!(
        "| {:<28} | {:<22} | {:>10} | {:>9} | {:>8} | {:>12} | {:>9} |",
        "kernel", "shape", "time (ms)", "GFLOP/s", "GB/s", "CPU ref (ms)", "GPU/CPU"
    );
    println!(
        "|{:-<30}|{:-<24}|{:->12}|{:->11}|{:->10}|{:->14}|{:->11}|",
        "", "", "", "", "", "", ""
    );
    for r in rows {
        let f = |v: Option<f64>, p: usize| v.map(|x| format!("{x:.p$}")).unwrap_or("-".into());
        println!(
            "| {:<28} | {:<22} | {:>10.3} | {:>9} | {:>8} | {:>12} | {:>9} |",
            r.kernel,
            r.shape,
            r.secs * 1e3,
            f(r.gflops, 2),
            f(r.gbs, 2),
            f(r.cpu_secs.map(|s| s * 1e3), 3),
            f(r.cpu_secs.map(|c| c / r.secs), 3),
        );
    }
}

fn bench_matmul(
    gpu: &Gpu,
    name: &str,
    batch: usize,
    (m, k, n): (usize, usize, usize),
    spec: MatmulSpec,
    budget: Duration,
    with_cpu: bool,
) -> Row {
    let (ra, ca) = if spec.trans_a { (k, m) } else { (m, k) };
    let (rb, cb) = if spec.trans_b { (n, k) } else { (k, n) };
    let a_shape: Vec<usize> = if batch > 1 {
        vec![batch, ra, ca]
    } else {
        vec![ra, ca]
    };
    let a = Tensor::from_slice(gpu, &a_shape, &rand_vec(batch * m * k, 1)).unwrap();
    let b = Tensor::from_slice(gpu, &[rb, cb], &rand_vec(k * n, 2)).unwrap();
    let mut out_shape = a_shape.clone();
    let last = out_shape.len() - 1;
    out_shape[last - 1] = m;
    out_shape[last] = n;
    let out = Tensor::uninit(gpu, &out_shape, rectiflow::DType::F32).unwrap();
    let secs = time_gpu(gpu, budget, || {
        ops::matmul_into(&a, &b, &spec, &out, false).unwrap()
    });
    let flops = 2.0 * (batch * m * n * k) as f64;
    let cpu_secs = with_cpu.then(|| {
        let (ha, hb) = (rand_vec(batch * m * k, 1), rand_vec(k * n, 2));
        let mut hc = vec![0f32; batch * m * n];
        time_cpu(budget, || {
            for i in 0..batch {
                cpu_sgemm(
                    m,
                    k,
                    n,
                    &ha[i * m * k..][..m * k],
                    &hb,
                    &mut hc[i * m * n..][..m * n],
                );
            }
        })
    });
    let shape = if batch > 1 {
        format!("{batch}x{m}x{k}x{n}")
    } else {
        format!("{m}x{k}x{n}")
    };
    Row {
        kernel: name.into(),
        shape,
        secs,
        gflops: Some(flops / secs / 1e9),
        gbs: None,
        cpu_secs,
    }
}

/// The same work as a GPU kernel, on the CPU: input to output.
type CpuKernel<'a> = dyn Fn(&[f32], &mut [f32]) + 'a;

/// A memory-bound kernel: `bytes` moved per call, timed on the GPU and, when given, the same
/// work as a plain single-threaded loop on the CPU.
fn bench_memory(
    gpu: &Gpu,
    name: &str,
    shape: &[usize],
    bytes: usize,
    budget: Duration,
    f: &dyn Fn(&Tensor) -> Tensor,
    cpu: Option<&CpuKernel<'_>>,
) -> Row {
    let n: usize = shape.iter().product();
    let x = Tensor::from_slice(gpu, shape, &rand_vec(n, 3)).unwrap();
    let secs = time_gpu(gpu, budget, || drop(f(&x)));
    let cpu_secs = cpu.map(|c| {
        let hx = rand_vec(n, 3);
        let mut hy = vec![0f32; n];
        time_cpu(budget, || c(&hx, &mut hy))
    });
    Row {
        kernel: name.into(),
        shape: format!("{shape:?}"),
        secs,
        gflops: None,
        gbs: Some(bytes as f64 / secs / 1e9),
        cpu_secs,
    }
}

/// Attention forward and backward at one shape: GFLOP/s by the usual count (forward
/// 4 B H T^2 D: the two products; backward 2.5x that: five products).
fn bench_attention(
    gpu: &Gpu,
    label: &str,
    (b, t, heads, d): (usize, usize, usize, usize),
    budget: Duration,
) -> [Row; 2] {
    let qkv = Tensor::from_slice(
        gpu,
        &[b, t, 3 * heads * d],
        &rand_vec(b * t * 3 * heads * d, 5),
    )
    .unwrap();
    let d_o = Tensor::from_slice(gpu, &[b, t, heads * d], &rand_vec(b * t * heads * d, 6)).unwrap();
    let (o, lse) = ops::attention(&qkv, heads).unwrap();
    let fwd = time_gpu(gpu, budget, || drop(ops::attention(&qkv, heads).unwrap()));
    let bwd = time_gpu(gpu, budget, || {
        drop(ops::attention_backward(&qkv, &o, &lse, &d_o, heads).unwrap())
    });
    let flops = 4.0 * (b * heads * t * t * d) as f64;
    let shape = format!("{b}x{t} tok, {heads}x{d}");
    let row = |kernel: String, secs: f64, flops: f64| Row {
        kernel,
        shape: shape.clone(),
        secs,
        gflops: Some(flops / secs / 1e9),
        gbs: None,
        cpu_secs: None,
    };
    [
        row(format!("attention fwd ({label})"), fwd, flops),
        row(format!("attention bwd ({label})"), bwd, 2.5 * flops),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let budget = Duration::from_millis(if quick { 200 } else { 1000 });
    let gpu = Gpu::new().expect("no GPU adapter");
    let info = gpu.adapter_info();
    println!(
        "adapter: {} ({:?}, {:?}, {} {}); immediates: {}; CPU threads: {}",
        info.name,
        info.device_type,
        info.backend,
        info.driver,
        info.driver_info,
        gpu.uses_immediates(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    if args.iter().any(|a| a == "--sweep") {
        let mut rows = Vec::new();
        let n: usize = args
            .iter()
            .find_map(|a| a.strip_prefix("--size=").and_then(|s| s.parse().ok()))
            .unwrap_or(1024);
        let tiled = [
            (16, 16, 4, 4, 16),
            (8, 8, 8, 8, 16),
            (16, 16, 8, 8, 8),
            (16, 16, 8, 8, 16),
            (16, 16, 8, 8, 32),
        ]
        .map(|(wm, wn, tm, tn, bk)| MatmulTiling::new(wm, wn, tm, tn, bk));
        let lanes = [
            (64, 16, 4),
            (32, 16, 4),
            (16, 16, 4),
            (128, 16, 4),
            (64, 8, 8),
            (32, 8, 8),
            (16, 8, 8),
            (64, 8, 4),
            (8, 8, 4),
        ]
        .map(|(wn, tm, tn)| MatmulTiling::lanes(wn, tm, tn));
        for tiling in tiled.into_iter().chain(lanes) {
            if let Err(e) = tiling.validate(&gpu) {
                println!("skipped: {e}");
                continue;
            }
            let spec = MatmulSpec {
                tiling: Some(tiling),
                ..Default::default()
            };
            let t = tiling;
            let name = if t.design == rectiflow::ops::MatmulDesign::Lanes {
                format!("lanes wg{} t{}x{}", t.wg_n, t.tm, t.tn)
            } else {
                format!("tiled wg{}x{} t{}x{} k{}", t.wg_m, t.wg_n, t.tm, t.tn, t.bk)
            };
            rows.push(bench_matmul(&gpu, &name, 1, (n, n, n), spec, budget, false));
        }
        print_rows(&rows);
        return;
    }

    let mut rows = Vec::new();
    let sizes: &[usize] = if quick {
        &[256, 512, 1024]
    } else {
        &[256, 512, 1024, 2048]
    };
    for &s in sizes {
        rows.push(bench_matmul(
            &gpu,
            "matmul A B",
            1,
            (s, s, s),
            MatmulSpec::default(),
            budget,
            true,
        ));
    }
    // The linear layers of a transformer block: tokens x width -> tokens x 4 width and back,
    // forward (A W^T, with bias and GELU) and the two backward products.
    let tokens = 64 * 16; // 16 images of 64 tokens
    for (width, hidden) in [(128usize, 512usize), (256, 1024)] {
        let spec_fwd = MatmulSpec {
            trans_b: true,
            activation: Activation::Gelu,
            ..Default::default()
        };
        rows.push(bench_matmul(
            &gpu,
            "linear fwd (A W^T, gelu)",
            1,
            (tokens, width, hidden),
            spec_fwd,
            budget,
            true,
        ));
        let spec_dx = MatmulSpec::default();
        rows.push(bench_matmul(
            &gpu,
            "linear dX (dY W)",
            1,
            (tokens, hidden, width),
            spec_dx,
            budget,
            true,
        ));
        let spec_dw = MatmulSpec {
            trans_a: true,
            ..Default::default()
        };
        rows.push(bench_matmul(
            &gpu,
            "linear dW (dY^T X)",
            1,
            (hidden, tokens, width),
            spec_dw,
            budget,
            true,
        ));
    }
    rows.push(bench_matmul(
        &gpu,
        "batched (heads) A B^T",
        32,
        (64, 32, 64),
        MatmulSpec {
            trans_b: true,
            ..Default::default()
        },
        budget,
        true,
    ));
    rows.push(bench_matmul(
        &gpu,
        "matmul odd edges",
        1,
        (257, 127, 65),
        MatmulSpec::default(),
        budget,
        true,
    ));
    let n = 1 << 22;
    let moved = 8 * n; // 4 bytes read and 4 written per element
    rows.push(bench_memory(
        &gpu,
        "host memcpy (ceiling)",
        &[n],
        moved,
        budget,
        &|x| x.clone(),
        Some(&|x: &[f32], y: &mut [f32]| y.copy_from_slice(x)),
    ));
    rows.last_mut().unwrap().secs = rows.last().unwrap().cpu_secs.unwrap();
    rows.last_mut().unwrap().gbs = Some(moved as f64 / rows.last().unwrap().secs / 1e9);
    rows.push(bench_memory(
        &gpu,
        "scale",
        &[n],
        moved,
        budget,
        &|x| ops::scale(x, 2.0).unwrap(),
        Some(&|x: &[f32], y: &mut [f32]| y.iter_mut().zip(x).for_each(|(y, x)| *y = 2.0 * x)),
    ));
    rows.push(bench_memory(
        &gpu,
        "gelu",
        &[n],
        moved,
        budget,
        &|x| ops::gelu(x).unwrap(),
        Some(&|x: &[f32], y: &mut [f32]| {
            y.iter_mut().zip(x).for_each(|(y, &x)| {
                *y = 0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044715 * x * x * x)).tanh())
            })
        }),
    ));
    rows.push(bench_memory(
        &gpu,
        "silu",
        &[n],
        moved,
        budget,
        &|x| ops::silu(x).unwrap(),
        Some(&|x: &[f32], y: &mut [f32]| {
            y.iter_mut()
                .zip(x)
                .for_each(|(y, &x)| *y = x / (1.0 + (-x).exp()))
        }),
    ));
    rows.push(bench_memory(
        &gpu,
        "add",
        &[n],
        12 * n,
        budget,
        &|x| ops::add(x, x).unwrap(),
        Some(&|x: &[f32], y: &mut [f32]| y.iter_mut().zip(x).for_each(|(y, x)| *y = x + x)),
    ));
    for (r, c) in [(4096usize, 1024usize), (1024 * 16, 128)] {
        rows.push(bench_memory(
            &gpu,
            "sum_rows",
            &[r, c],
            4 * r * c,
            budget,
            &|x| ops::sum_rows(x).unwrap(),
            Some(&|x: &[f32], y: &mut [f32]| {
                x.chunks(c)
                    .zip(y.iter_mut())
                    .for_each(|(row, y)| *y = row.iter().sum())
            }),
        ));
        rows.push(bench_memory(
            &gpu,
            "transpose",
            &[r, c],
            8 * r * c,
            budget,
            &|x| ops::transpose(x).unwrap(),
            Some(&|x: &[f32], y: &mut [f32]| {
                for i in 0..r {
                    for j in 0..c {
                        y[j * r + i] = x[i * c + j];
                    }
                }
            }),
        ));
    }
    // Attention at the shapes of the reference networks, in both kernel designs.
    let other = Gpu::with_options(&rectiflow::gpu::GpuOptions {
        profile: Some(match gpu.profile() {
            rectiflow::gpu::KernelProfile::Cpu => rectiflow::gpu::KernelProfile::Gpu,
            rectiflow::gpu::KernelProfile::Gpu => rectiflow::gpu::KernelProfile::Cpu,
        }),
        ..Default::default()
    })
    .unwrap();
    for shape in [(16, 64, 4, 32), (4, 196, 8, 32), (1, 1024, 1, 64)] {
        for (g, label) in [(&gpu, "default"), (&other, "other profile")] {
            let label = format!("{label}: {:?}", g.profile());
            rows.extend(bench_attention(g, &label, shape, budget));
        }
    }
    // Row-wise and broadcast kernels of a transformer block (bytes: every input read and every
    // output written once).
    for (r, c) in [(16 * 64, 128usize), (4 * 196, 256), (16384, 256)] {
        let x = Tensor::from_slice(&gpu, &[r, c], &rand_vec(r * c, 7)).unwrap();
        let gamma = Tensor::from_slice(&gpu, &[c], &rand_vec(c, 8)).unwrap();
        let beta = Tensor::from_slice(&gpu, &[c], &rand_vec(c, 9)).unwrap();
        let (_, stats) = ops::layer_norm(&x, Some((&gamma, &beta)), 1e-6).unwrap();
        let n = (r * c) as f64;
        let fwd = time_gpu(&gpu, budget, || {
            drop(ops::layer_norm(&x, Some((&gamma, &beta)), 1e-6).unwrap())
        });
        let bwd = time_gpu(&gpu, budget, || {
            drop(ops::layer_norm_backward(&x, &stats, Some(&gamma), &x).unwrap())
        });
        let mk = |kernel: &str, secs: f64, bytes: f64| Row {
            kernel: kernel.into(),
            shape: format!("{r}x{c}"),
            secs,
            gflops: None,
            gbs: Some(bytes / secs / 1e9),
            cpu_secs: None,
        };
        rows.push(mk("layer_norm fwd (affine)", fwd, 8.0 * n));
        // reads x, dy; writes dx, dy*xhat; then two column sums read dy*xhat and dy.
        rows.push(mk("layer_norm bwd (affine)", bwd, 24.0 * n));
        let (_, rstats) = ops::rms_norm(&x, &gamma, 1e-6).unwrap();
        let fwd = time_gpu(&gpu, budget, || {
            drop(ops::rms_norm(&x, &gamma, 1e-6).unwrap())
        });
        let bwd = time_gpu(&gpu, budget, || {
            drop(ops::rms_norm_backward(&x, &rstats, &gamma, &x).unwrap())
        });
        rows.push(mk("rms_norm fwd", fwd, 8.0 * n));
        rows.push(mk("rms_norm bwd", bwd, 20.0 * n));
        let sm = time_gpu(&gpu, budget, || drop(ops::softmax(&x).unwrap()));
        rows.push(mk("softmax fwd", sm, 8.0 * n));
    }
    let (b, t, c) = (16usize, 256usize, 256usize);
    let x = Tensor::from_slice(&gpu, &[b, t, c], &rand_vec(b * t * c, 10)).unwrap();
    let s = Tensor::from_slice(&gpu, &[b, c], &rand_vec(b * c, 11)).unwrap();
    let n = (b * t * c) as f64;
    let secs = time_gpu(&gpu, budget, || drop(ops::modulate(&x, &s, &s).unwrap()));
    rows.push(Row {
        kernel: "modulate (adaLN)".into(),
        shape: format!("{b}x{t}x{c}"),
        secs,
        gflops: None,
        gbs: Some(8.0 * n / secs / 1e9),
        cpu_secs: None,
    });
    let secs = time_gpu(&gpu, budget, || drop(ops::gate(&x, &x, &s).unwrap()));
    rows.push(Row {
        kernel: "gate (residual)".into(),
        shape: format!("{b}x{t}x{c}"),
        secs,
        gflops: None,
        gbs: Some(12.0 * n / secs / 1e9),
        cpu_secs: None,
    });
    let secs = time_gpu(&gpu, budget, || drop(ops::gelu_backward(&x, &x).unwrap()));
    rows.push(Row {
        kernel: "gelu_backward".into(),
        shape: format!("{b}x{t}x{c}"),
        secs,
        gflops: None,
        gbs: Some(12.0 * n / secs / 1e9),
        cpu_secs: None,
    });
    print_rows(&rows);
}
