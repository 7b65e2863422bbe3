//! The `rectiflow` command line: `train`, `sample`, `reflow`, `distill`, `eval`, `info`, `bench`,
//! and their exit codes: 0 done, 1 refused or failed (the message says why), 2 unusable flags
//! (clap), 128 + N when a training run was stopped by signal N after saving (130 SIGINT, 143
//! SIGTERM).

mod bench_cmd;
mod cli;

use clap::{Parser, Subcommand};
use rectiflow::gpu::{self, Gpu, GpuOptions};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "rectiflow",
    version,
    about = "Rectified-flow transformers on raw wgpu"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a velocity network and write checkpoints, sample grids and metrics to a run directory.
    Train(Box<cli::TrainArgs>),
    /// Draw samples from a checkpoint: a PNG grid or scatter plot, samples.npy and labels.npy.
    Sample(cli::SampleArgs),
    /// Straighten a trained flow: draw (noise, sample) pairs from a checkpoint, then train a
    /// new flow, initialised from it, on the pairs' straight lines (2-rectified flow).
    Reflow(Box<cli::ReflowCmd>),
    /// Distil a trained flow into a K-step generator (K = 1: one network evaluation) trained on
    /// pairs drawn from it.
    Distill(Box<cli::DistillCmd>),
    /// Measure a checkpoint's samples: sliced W2 and MMD (2-D data) or classifier accuracy and
    /// Frechet distance (labelled images), each beside its real-vs-real floor.
    Eval(cli::EvalArgs),
    /// Compare formulations (schedule x prediction x time sampler) as SD3's Table 1 does: train
    /// each with the same budget for several seeds, measure at several sampler settings, rank.
    Study(Box<cli::StudyArgs>),
    /// List every GPU adapter and show the chosen one's features and limits.
    Info,
    /// Measure the kernels, whole training steps and sampling on this adapter, beside CPU
    /// references timed in the same run (tables; --json for a file).
    Bench(bench_cmd::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Under an MPI launcher only `train` runs on every rank; any other command runs on rank 0
    // alone (the others leave at once), as one process would run it.
    #[cfg(feature = "mpi")]
    let _world = match &cli.command {
        Command::Train(_) => None,
        _ => match rectiflow::mpi::World::launched() {
            Ok(Some(world)) if rectiflow::train::Collective::rank(&world) > 0 => {
                return ExitCode::SUCCESS;
            }
            Ok(world) => world,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let result = match cli.command {
        Command::Train(args) => cli::train(*args),
        Command::Sample(args) => cli::sample(args).map(|()| cli::RunEnd::Finished),
        Command::Reflow(args) => cli::reflow(*args),
        Command::Distill(args) => cli::distill(*args),
        Command::Eval(args) => cli::eval(args).map(|()| cli::RunEnd::Finished),
        Command::Study(args) => cli::study(*args),
        Command::Info => info().map(|()| cli::RunEnd::Finished),
        Command::Bench(args) => bench_cmd::bench(args).map(|()| cli::RunEnd::Finished),
    };
    match result {
        Ok(cli::RunEnd::Finished) => ExitCode::SUCCESS,
        Ok(cli::RunEnd::FailedQuietly) => ExitCode::FAILURE,
        Ok(cli::RunEnd::Interrupted(signal)) => ExitCode::from((128 + signal).clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn info() -> rectiflow::Result<()> {
    let opts = GpuOptions::default();
    let adapters = gpu::list_adapters(&opts)?;
    println!("Adapters ({}):", adapters.len());
    for a in &adapters {
        println!("  - {}", a.summary());
    }
    let g = Gpu::with_options(&opts)?;
    let i = g.adapter_info();
    println!(
        "\nChosen: {} ({:?}, {:?})",
        i.name, i.device_type, i.backend
    );
    println!("  driver: {} {}", i.driver, i.driver_info);
    println!(
        "  kernel profile: {:?} (set {} to cpu or gpu)",
        g.profile(),
        gpu::ENV_PROFILE
    );
    println!(
        "  selection: {}={:?}, {}={:?}",
        gpu::ENV_ADAPTER,
        std::env::var(gpu::ENV_ADAPTER).unwrap_or_default(),
        gpu::ENV_BACKEND,
        std::env::var(gpu::ENV_BACKEND).unwrap_or_default()
    );
    let f = g.features();
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!("\nFeatures used when present:");
    println!(
        "  shader-f16 (f16 storage):  {}",
        yes(f.contains(wgpu::Features::SHADER_F16))
    );
    println!(
        "  subgroups:                 {}",
        yes(f.contains(wgpu::Features::SUBGROUP))
    );
    println!(
        "  timestamp queries:         {}",
        yes(f.contains(wgpu::Features::TIMESTAMP_QUERY))
    );
    println!(
        "  immediates (kernel params): {} (in use: {})",
        yes(f.contains(wgpu::Features::IMMEDIATES)),
        yes(g.uses_immediates())
    );
    let l = g.limits();
    println!("\nLimits that matter:");
    let rows: [(&str, u64); 10] = [
        (
            "max_storage_buffer_binding_size",
            l.max_storage_buffer_binding_size,
        ),
        ("max_buffer_size", l.max_buffer_size),
        (
            "max_compute_workgroup_storage_size",
            l.max_compute_workgroup_storage_size as u64,
        ),
        (
            "max_compute_invocations_per_workgroup",
            l.max_compute_invocations_per_workgroup as u64,
        ),
        (
            "max_compute_workgroup_size_x",
            l.max_compute_workgroup_size_x as u64,
        ),
        (
            "max_compute_workgroups_per_dimension",
            l.max_compute_workgroups_per_dimension as u64,
        ),
        (
            "max_storage_buffers_per_shader_stage",
            l.max_storage_buffers_per_shader_stage as u64,
        ),
        (
            "min_storage_buffer_offset_alignment",
            l.min_storage_buffer_offset_alignment as u64,
        ),
        (
            "min_uniform_buffer_offset_alignment",
            l.min_uniform_buffer_offset_alignment as u64,
        ),
        ("max_immediate_size", l.max_immediate_size as u64),
    ];
    for (name, v) in rows {
        println!("  {name:<40} {v}");
    }
    if f.contains(wgpu::Features::SUBGROUP) {
        println!(
            "  {:<40} {}..{}",
            "subgroup size", i.subgroup_min_size, i.subgroup_max_size
        );
    }
    // Tunes here, if there is no cached table yet (seconds).
    let tuning = rectiflow::ops::tune::table(&g);
    println!(
        "\nMatmul tile tuning ({}=on|off|force; cache directory: {}, else $XDG_CACHE_HOME/rectiflow, \
         else ~/.cache/rectiflow):",
        gpu::ENV_TUNE,
        gpu::ENV_CACHE_DIR
    );
    print!("{}", tuning.summary(&g));
    Ok(())
}
