//! What the data-parallel step's gradient exchange costs on this machine (feature `mpi`): for
//! flat gradients of several sizes, the three parts each step adds to one process's step — the
//! read-back of the gradient, the MPI sum across ranks (with the 1/N scale on the host), and
//! the upload — timed apart (the ranks wait for each other between the read-back and the sum,
//! so the sum is timed alone), medians of repeated rounds, per step and per parameter.
//!
//! ```text
//! cargo build --release --features mpi --example allreduce_cost
//! mpirun -np 2 target/release/examples/allreduce_cost
//! ```
//!
//! docs/performance.md quotes its figures.

use rectiflow::gpu::GpuOptions;
use rectiflow::mpi::World;
use rectiflow::train::Collective;
use rectiflow::{Gpu, Result, Tensor};
use std::time::Instant;

/// Rounds timed per size (after one untimed round).
const ROUNDS: usize = 15;

fn main() -> Result<()> {
    let Some(world) = World::launched()? else {
        eprintln!(
            "run it under an MPI launcher: mpirun -np 2 target/release/examples/allreduce_cost"
        );
        std::process::exit(2);
    };
    let gpu = Gpu::with_options(&GpuOptions {
        adapter_index: Some(world.local_rank()),
        ..GpuOptions::default()
    })?;
    let root = world.rank() == 0;
    if root {
        println!(
            "{} ranks on {}; medians of {ROUNDS} rounds",
            world.size(),
            gpu.adapter_info().name
        );
        println!(
            "{:>12} {:>11} {:>11} {:>11} {:>11} {:>13}",
            "parameters", "read ms", "sum ms", "upload ms", "total ms", "ns/parameter"
        );
    }
    for n in [1usize << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24] {
        let grads = Tensor::zeros(&gpu, &[n])?;
        let mut times = Vec::new();
        for round in 0..=ROUNDS {
            gpu.synchronize()?;
            let t0 = Instant::now();
            let mut host = grads.to_vec()?;
            let read = Instant::now();
            // Wait for the other ranks' read-backs, so that the sum is timed alone.
            world.sum(&mut [0.0]);
            let t1 = Instant::now();
            world.sum(&mut host);
            let scale = 1.0 / world.size() as f32;
            host.iter_mut().for_each(|g| *g *= scale);
            let t2 = Instant::now();
            grads.write(&host)?;
            gpu.synchronize()?;
            let t3 = Instant::now();
            if round > 0 {
                times.push(
                    [read - t0, t2 - t1, t3 - t2, (read - t0) + (t3 - t1)]
                        .map(|d| d.as_secs_f64() * 1e3),
                );
            }
        }
        let median = |i: usize| {
            let mut v: Vec<f64> = times.iter().map(|t| t[i]).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        if root {
            println!(
                "{n:>12} {:>11.3} {:>11.3} {:>11.3} {:>11.3} {:>13.2}",
                median(0),
                median(1),
                median(2),
                median(3),
                median(3) * 1e6 / n as f64
            );
        }
    }
    Ok(())
}
