//! `cargo bench --bench kernels [-- --quick] [-- --sweep[=N]] [-- step|sample|all]`: the
//! library's benchmarks (`rectiflow::bench`), the same implementation as `rectiflow bench`.

use rectiflow::bench::{self, Options, Suite};
use rectiflow::Gpu;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let sweep = args.iter().find_map(|a| match a.as_str() {
        "--sweep" => Some(1024),
        _ => a.strip_prefix("--sweep=").and_then(|n| n.parse().ok()),
    });
    // `cargo bench` passes `--bench`; the suite is the first word that is not a flag.
    let what = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map_or("kernels", String::as_str);
    let suite = Suite::parse(what, None).map_err(|e| e.to_string())?;
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let opts = Options {
        quick: has("--quick"),
        sweep,
        f16: has("--f16"),
    };
    let report = bench::run(&gpu, suite, &opts).map_err(|e| e.to_string())?;
    println!("{}", report.to_markdown());
    Ok(())
}
