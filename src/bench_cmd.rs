//! `rectiflow bench`: the library's benchmarks (`rectiflow::bench`), printed as tables and
//! optionally written as JSON.

use clap::Args;
use rectiflow::bench::{self, Options, Suite};
use rectiflow::{Error, Gpu, Result};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// kernels | step | sample | all
    #[arg(default_value = "all")]
    what: String,
    /// For `step`: one workload (mlp, dit-default, dit-digits); default all three.
    #[arg(long)]
    workload: Option<String>,
    /// Shorter timing budgets and fewer shapes.
    #[arg(long)]
    quick: bool,
    /// For `kernels`: compare the matmul tile shapes at N x N x N instead.
    #[arg(long, value_name = "N")]
    sweep: Option<usize>,
    /// For `step` and `sample`: with f16 weights (the linear layers read f16 copies; needs an
    /// adapter with SHADER_F16).
    #[arg(long)]
    f16: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn bench(a: BenchArgs) -> Result<()> {
    let suite = Suite::parse(&a.what, a.workload.as_deref())?;
    if a.sweep == Some(0) {
        return Err(Error::Config("--sweep N needs N > 0".into()));
    }
    let gpu = Gpu::new()?;
    let report = bench::run(
        &gpu,
        suite,
        &Options {
            quick: a.quick,
            sweep: a.sweep,
            f16: a.f16,
        },
    )?;
    println!("{}", report.to_markdown());
    if let Some(path) = a.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::Io(format!("the report does not serialise: {e}")))?;
        std::fs::write(&path, text)
            .map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
