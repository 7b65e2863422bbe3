//! The kernel table: matmuls beside sgemm on the CPU, memory-bound kernels beside plain loops
//! and the host's memcpy, attention, norms and the adaLN kernels.

use super::{rand_vec, time_cpu, time_gpu, Options, Row};
use crate::error::Result;
use crate::ops::tune;
use crate::ops::{self, Activation, MatmulSpec, MatmulTiling};
use crate::{Gpu, Tensor};
use std::time::Duration;

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

fn bench_matmul(
    gpu: &Gpu,
    name: &str,
    batch: usize,
    mkn: (usize, usize, usize),
    spec: MatmulSpec,
    budget: Duration,
    with_cpu: bool,
) -> Result<Row> {
    bench_matmul_stored(gpu, name, batch, mkn, spec, budget, with_cpu, false)
}

/// [`bench_matmul`] with B (the weight) stored as f16 where `b_f16`. Every matmul row's GB/s
/// counts the bytes of A, B and C once.
#[allow(clippy::too_many_arguments)]
fn bench_matmul_stored(
    gpu: &Gpu,
    name: &str,
    batch: usize,
    (m, k, n): (usize, usize, usize),
    spec: MatmulSpec,
    budget: Duration,
    with_cpu: bool,
    b_f16: bool,
) -> Result<Row> {
    let (ra, ca) = if spec.trans_a { (k, m) } else { (m, k) };
    let (rb, cb) = if spec.trans_b { (n, k) } else { (k, n) };
    let a_shape: Vec<usize> = if batch > 1 {
        vec![batch, ra, ca]
    } else {
        vec![ra, ca]
    };
    let a = Tensor::from_slice(gpu, &a_shape, &rand_vec(batch * m * k, 1))?;
    let b = if b_f16 {
        Tensor::from_slice_f16(gpu, &[rb, cb], &rand_vec(k * n, 2))?
    } else {
        Tensor::from_slice(gpu, &[rb, cb], &rand_vec(k * n, 2))?
    };
    let mut out_shape = a_shape.clone();
    let last = out_shape.len() - 1;
    out_shape[last - 1] = m;
    out_shape[last] = n;
    let out = Tensor::uninit(gpu, &out_shape, crate::DType::F32)?;
    let secs = time_gpu(gpu, budget, || ops::matmul_into(&a, &b, &spec, &out, false))?;
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
    let bytes = a.byte_len() + b.byte_len() + out.byte_len();
    Ok(Row {
        kernel: name.into(),
        shape,
        seconds: secs,
        gflops: Some(flops / secs / 1e9),
        gbs: Some(bytes as f64 / secs / 1e9),
        cpu_seconds: cpu_secs,
    })
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
    f: &dyn Fn(&Tensor) -> Result<Tensor>,
    cpu: Option<&CpuKernel<'_>>,
) -> Result<Row> {
    let n: usize = shape.iter().product();
    let x = Tensor::from_slice(gpu, shape, &rand_vec(n, 3))?;
    let secs = time_gpu(gpu, budget, || f(&x))?;
    let cpu_secs = cpu.map(|c| {
        let hx = rand_vec(n, 3);
        let mut hy = vec![0f32; n];
        time_cpu(budget, || c(&hx, &mut hy))
    });
    Ok(Row {
        kernel: name.into(),
        shape: format!("{shape:?}"),
        seconds: secs,
        gflops: None,
        gbs: Some(bytes as f64 / secs / 1e9),
        cpu_seconds: cpu_secs,
    })
}

/// Attention forward and backward at one shape: GFLOP/s by the usual count (forward
/// 4 B H T^2 D: the two products; backward 2.5x that: five products).
fn bench_attention(
    gpu: &Gpu,
    label: &str,
    (b, t, heads, d): (usize, usize, usize, usize),
    budget: Duration,
) -> Result<[Row; 2]> {
    let qkv = Tensor::from_slice(
        gpu,
        &[b, t, 3 * heads * d],
        &rand_vec(b * t * 3 * heads * d, 5),
    )?;
    let d_o = Tensor::from_slice(gpu, &[b, t, heads * d], &rand_vec(b * t * heads * d, 6))?;
    let (o, lse) = ops::attention(&qkv, heads)?;
    let fwd = time_gpu(gpu, budget, || ops::attention(&qkv, heads))?;
    let bwd = time_gpu(gpu, budget, || {
        ops::attention_backward(&qkv, &o, &lse, &d_o, heads)
    })?;
    let flops = 4.0 * (b * heads * t * t * d) as f64;
    let shape = format!("{b}x{t} tok, {heads}x{d}");
    let row = |kernel: String, secs: f64, flops: f64| Row {
        kernel,
        shape: shape.clone(),
        seconds: secs,
        gflops: Some(flops / secs / 1e9),
        gbs: None,
        cpu_seconds: None,
    };
    Ok([
        row(format!("attention fwd ({label})"), fwd, flops),
        row(format!("attention bwd ({label})"), bwd, 2.5 * flops),
    ])
}

/// Per shape class of the matmul tuning (`ops::tune`), at the class's shape: the fixed rule's
/// tiling and, where it differs, the tuned one (timed here with the benchmark's budget, so the
/// figures are steadier than the tuner's quick look).
fn tuned_classes(gpu: &Gpu, budget: Duration) -> Result<Vec<Row>> {
    let table = tune::table(gpu);
    let mut rows = Vec::new();
    for (i, class) in tune::CLASSES.iter().enumerate() {
        let rule = MatmulTiling::fixed_rule(gpu, class.m, class.n, 1);
        let tuned = table.choices.get(i).map(|c| c.tiling);
        let mut run = |label: &str, tiling: MatmulTiling| -> Result<()> {
            let spec = MatmulSpec {
                tiling: Some(tiling),
                ..Default::default()
            };
            let name = format!("{}: {label} {}", class.name, tune::tiling_name(&tiling));
            let mkn = (class.m, class.k, class.n);
            rows.push(bench_matmul(gpu, &name, 1, mkn, spec, budget, false)?);
            Ok(())
        };
        match tuned {
            Some(t) if t != rule => {
                run("rule", rule)?;
                run("tuned", t)?;
            }
            Some(_) => run("rule = tuned", rule)?,
            // Tuning is off, or failed: the rules only.
            None => run("rule (untuned)", rule)?,
        }
    }
    Ok(rows)
}

/// The kernel table (or, with `opts.sweep`, the matmul tile shapes at one size).
pub fn kernels(gpu: &Gpu, opts: &Options) -> Result<Vec<Row>> {
    let quick = opts.quick;
    let budget = opts.budget();
    if let Some(n) = opts.sweep {
        let mut rows = Vec::new();
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
        let subgroup = [8, 16, 32].map(MatmulTiling::subgroup);
        for tiling in tiled.into_iter().chain(lanes).chain(subgroup) {
            if tiling.validate(gpu).is_err() {
                continue;
            }
            let spec = MatmulSpec {
                tiling: Some(tiling),
                ..Default::default()
            };
            let name = tune::tiling_name(&tiling);
            rows.push(bench_matmul(gpu, &name, 1, (n, n, n), spec, budget, false)?);
        }
        return Ok(rows);
    }

    let mut rows = Vec::new();
    let sizes: &[usize] = if quick {
        &[256, 512, 1024]
    } else {
        &[256, 512, 1024, 2048]
    };
    for &s in sizes {
        let spec = MatmulSpec::default();
        rows.push(bench_matmul(
            gpu,
            "matmul A B",
            1,
            (s, s, s),
            spec,
            budget,
            true,
        )?);
    }
    // The linear layers of the benchmark transformers, forward (A W^T, bias and GELU fused) and
    // the two backward products: the default DiT (1024 tokens of width 64, MLP 256) and
    // ref-dit-digits (8192 tokens of width 128).
    let fwd = MatmulSpec {
        trans_b: true,
        activation: Activation::Gelu,
        ..Default::default()
    };
    let dw = MatmulSpec {
        trans_a: true,
        ..Default::default()
    };
    for (tokens, width, hidden) in [(1024usize, 64usize, 256usize), (8192, 128, 512)] {
        if quick && tokens > 1024 {
            continue;
        }
        let rows_of = [
            ("linear fwd (A W^T, gelu)", (tokens, width, hidden), fwd),
            (
                "linear dX (dY W)",
                (tokens, hidden, width),
                MatmulSpec::default(),
            ),
            ("linear dW (dY^T X)", (hidden, tokens, width), dw),
        ];
        for (name, mkn, spec) in rows_of {
            rows.push(bench_matmul(gpu, name, 1, mkn, spec, budget, true)?);
        }
    }
    // Products reading their weight (B) as f16, as `--f16` runs them, whenever the adapter has
    // f16: the default DiT's linear layers and a product whose bytes are mostly its weight (16
    // rows: sampling a few images), where halving them should show on a GPU; each beside its
    // f32 row.
    if gpu.has_f16() {
        let weight_bound = MatmulSpec {
            trans_b: true,
            ..Default::default()
        };
        let f16_rows = [
            ("linear fwd (A W^T, gelu)", (1024, 64, 256), fwd),
            ("linear dX (dY W)", (1024, 256, 64), MatmulSpec::default()),
            ("weight-bound (A W^T)", (16, 1024, 4096), weight_bound),
        ];
        for (name, mkn, spec) in f16_rows {
            for b_f16 in [false, true] {
                let name = format!("{name}{}", if b_f16 { ", f16 W" } else { ", f32 W" });
                rows.push(bench_matmul_stored(
                    gpu, &name, 1, mkn, spec, budget, false, b_f16,
                )?);
            }
        }
    }
    rows.extend(tuned_classes(gpu, budget)?);
    let heads = MatmulSpec {
        trans_b: true,
        ..Default::default()
    };
    rows.push(bench_matmul(
        gpu,
        "batched (heads) A B^T",
        32,
        (64, 32, 64),
        heads,
        budget,
        true,
    )?);
    let odd = MatmulSpec::default();
    rows.push(bench_matmul(
        gpu,
        "matmul odd edges",
        1,
        (257, 127, 65),
        odd,
        budget,
        true,
    )?);
    let narrow = MatmulSpec {
        trans_b: true,
        ..Default::default()
    };
    rows.push(bench_matmul(
        gpu,
        "narrow output (A W^T)",
        1,
        (4096, 256, 2),
        narrow,
        budget,
        true,
    )?);

    let n = 1 << 22;
    let moved = 8 * n; // 4 bytes read and 4 written per element
                       // The ceiling: the host's own memcpy of the same bytes.
    let host = rand_vec(n, 3);
    let mut copy = vec![0f32; n];
    let memcpy = time_cpu(budget, || copy.copy_from_slice(&host));
    rows.push(Row {
        kernel: "host memcpy (ceiling)".into(),
        shape: format!("[{n}]"),
        seconds: memcpy,
        gflops: None,
        gbs: Some(moved as f64 / memcpy / 1e9),
        cpu_seconds: Some(memcpy),
    });
    type Elementwise<'a> = (
        &'a str,
        usize,
        &'a dyn Fn(&Tensor) -> Result<Tensor>,
        &'a CpuKernel<'a>,
    );
    let elementwise: [Elementwise; 4] = [
        ("scale", moved, &|x| ops::scale(x, 2.0), &|x, y| {
            y.iter_mut().zip(x).for_each(|(y, x)| *y = 2.0 * x)
        }),
        ("gelu", moved, &ops::gelu, &|x, y| {
            y.iter_mut().zip(x).for_each(|(y, &x)| {
                *y = 0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044715 * x * x * x)).tanh())
            })
        }),
        ("silu", moved, &ops::silu, &|x, y| {
            y.iter_mut()
                .zip(x)
                .for_each(|(y, &x)| *y = x / (1.0 + (-x).exp()))
        }),
        ("add", 12 * n, &|x| ops::add(x, x), &|x, y| {
            y.iter_mut().zip(x).for_each(|(y, x)| *y = x + x)
        }),
    ];
    for (name, bytes, f, cpu) in elementwise {
        rows.push(bench_memory(gpu, name, &[n], bytes, budget, f, Some(cpu))?);
    }
    for (r, c) in [(4096usize, 1024usize), (1024 * 16, 128)] {
        rows.push(bench_memory(
            gpu,
            "sum_rows",
            &[r, c],
            4 * r * c,
            budget,
            &ops::sum_rows,
            Some(&|x: &[f32], y: &mut [f32]| {
                x.chunks(c)
                    .zip(y.iter_mut())
                    .for_each(|(row, y)| *y = row.iter().sum())
            }),
        )?);
        rows.push(bench_memory(
            gpu,
            "transpose",
            &[r, c],
            8 * r * c,
            budget,
            &ops::transpose,
            Some(&|x: &[f32], y: &mut [f32]| {
                for i in 0..r {
                    for j in 0..c {
                        y[j * r + i] = x[i * c + j];
                    }
                }
            }),
        )?);
    }
    // Attention at the shapes of the benchmark transformers, in every design this adapter runs:
    // its own, the other profile's, and without subgroups where it has them.
    let other = |profile, no_subgroups| {
        Gpu::with_options(&crate::gpu::GpuOptions {
            profile: Some(profile),
            no_subgroups,
            ..Default::default()
        })
    };
    use crate::gpu::KernelProfile::{Cpu, Gpu as GpuProfile};
    let flipped = if gpu.profile() == Cpu {
        GpuProfile
    } else {
        Cpu
    };
    let mut contexts = vec![(gpu.clone(), "default".to_string())];
    contexts.push((other(flipped, false)?, format!("{flipped:?} profile")));
    if gpu.subgroup_size().is_some() {
        contexts.push((other(gpu.profile(), true)?, "no subgroups".into()));
    }
    let shapes: &[(usize, usize, usize, usize)] = if quick {
        &[(64, 16, 4, 16), (128, 64, 4, 32)]
    } else {
        &[
            (64, 16, 4, 16),
            (128, 64, 4, 32),
            (4, 196, 8, 32),
            (1, 1024, 1, 64),
        ]
    };
    for &shape in shapes {
        for (g, label) in &contexts {
            rows.extend(bench_attention(g, label, shape, budget)?);
        }
    }
    // Row-wise kernels of a transformer block (bytes: every input read and every output
    // written once).
    let mk = |kernel: &str, shape: String, secs: f64, bytes: f64| Row {
        kernel: kernel.into(),
        shape,
        seconds: secs,
        gflops: None,
        gbs: Some(bytes / secs / 1e9),
        cpu_seconds: None,
    };
    for (r, c) in [(16 * 64, 128usize), (4 * 196, 256), (16384, 256)] {
        let x = Tensor::from_slice(gpu, &[r, c], &rand_vec(r * c, 7))?;
        let gamma = Tensor::from_slice(gpu, &[c], &rand_vec(c, 8))?;
        let beta = Tensor::from_slice(gpu, &[c], &rand_vec(c, 9))?;
        let (_, stats) = ops::layer_norm(&x, Some((&gamma, &beta)), 1e-6)?;
        let n = (r * c) as f64;
        let shape = format!("{r}x{c}");
        let secs = time_gpu(gpu, budget, || {
            ops::layer_norm(&x, Some((&gamma, &beta)), 1e-6)
        })?;
        rows.push(mk("layer_norm fwd (affine)", shape.clone(), secs, 8.0 * n));
        // Reads x, dy; writes dx, dy * xhat; then two column sums read dy * xhat and dy.
        let secs = time_gpu(gpu, budget, || {
            ops::layer_norm_backward(&x, &stats, Some(&gamma), &x)
        })?;
        rows.push(mk("layer_norm bwd (affine)", shape.clone(), secs, 24.0 * n));
        let (_, rstats) = ops::rms_norm(&x, &gamma, 1e-6)?;
        let secs = time_gpu(gpu, budget, || ops::rms_norm(&x, &gamma, 1e-6))?;
        rows.push(mk("rms_norm fwd", shape.clone(), secs, 8.0 * n));
        let secs = time_gpu(gpu, budget, || {
            ops::rms_norm_backward(&x, &rstats, &gamma, &x)
        })?;
        rows.push(mk("rms_norm bwd", shape.clone(), secs, 20.0 * n));
        let secs = time_gpu(gpu, budget, || ops::softmax(&x))?;
        rows.push(mk("softmax fwd", shape, secs, 8.0 * n));
    }
    // The fused adaLN kernels of a DiT block at the default run's shape: 64 images of 16
    // tokens of width 64, the six conditioning vectors in one [64, 384] tensor.
    let (b, t, c) = (64usize, 16usize, 64usize);
    let x = Tensor::from_slice(gpu, &[b, t, c], &rand_vec(b * t * c, 10))?;
    let ada = Tensor::from_slice(gpu, &[b, 6 * c], &rand_vec(b * 6 * c, 11))?;
    let d_ada = Tensor::zeros(gpu, &[b, 6 * c])?;
    let n = (b * t * c) as f64;
    let shape = format!("{b}x{t}x{c}");
    let (_, stats) = ops::ln_modulate(&x, &ada, 0, 1, 1e-6)?;
    let secs = time_gpu(gpu, budget, || ops::ln_modulate(&x, &ada, 0, 1, 1e-6))?;
    rows.push(mk("ln_modulate fwd", shape.clone(), secs, 8.0 * n));
    let secs = time_gpu(gpu, budget, || {
        ops::ln_modulate_backward(&x, &stats, &ada, 0, 1, &x, &d_ada)
    })?;
    rows.push(mk("ln_modulate bwd", shape.clone(), secs, 20.0 * n));
    let secs = time_gpu(gpu, budget, || ops::ada_gate(&x, &x, &ada, 2))?;
    rows.push(mk("ada_gate fwd", shape.clone(), secs, 12.0 * n));
    let secs = time_gpu(gpu, budget, || {
        ops::ada_gate_backward(&x, &ada, 2, &x, &d_ada, false)
    })?;
    rows.push(mk("ada_gate bwd", shape, secs, 12.0 * n));
    Ok(rows)
}
