//! `genesis doctor`: check this machine for training and say how to fix what is missing.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use argh::FromArgs;
use genesis::data::{datasets, manifest};
use genesis::doctor::{self, DoctorOptions};
use genesis::model::ModelConfig;

/// Check whether this machine can train: GPU, CUDA libraries, kernels, nvcc, disk, data, network.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "doctor",
    example = "genesis doctor\ngenesis doctor --out runs/big --model gpt2-350m --keep 5\ngenesis doctor --data shakespeare --offline",
    note = "One line per check, marked ok, warn, FAIL or skip, with the fix indented beneath anything not ok:\n  cpu       worker threads and vector extensions\n  gpu       the NVIDIA driver (libcuda), its CUDA version and device count; then per device its name, compute capability and free/total memory\n  cublas    libcublas and libcublasLt ($CUDA_HOME/lib64, /usr/local/cuda/lib64, LD_LIBRARY_PATH, ldconfig)\n  kernels   the CUDA architectures compiled into this binary (none when it was built without nvcc)\n  nvcc      where build.rs finds nvcc, and its version\n  disk      free space at --out (or its nearest existing parent) against --keep + 2 full checkpoints (the last K, the best, one being written), sized by the run's own checkpoints when it has some, else by --model\n  datasets  prepared datasets in data/ ($GENESIS_DATA_DIR) with their token counts\n  data      whether --data is prepared, else the command that prepares it\n  hub       whether $HF_ENDPOINT (default https://huggingface.co) answers within 5 s; --offline skips it\n\nExit status: 1 when a check FAILs, meaning training cannot run at all (today only the disk: not even one checkpoint fits); otherwise 0. A machine without a GPU only warns, since training also runs on the CPU."
)]
pub struct DoctorCmd {
    /// run directory training will write to (default: the current directory)
    #[argh(option)]
    out: Option<PathBuf>,
    /// model preset sizing the checkpoints when --out holds none (default genesis-150m)
    #[argh(option, default = "String::from(\"genesis-150m\")")]
    model: String,
    /// dataset training will use: a name in data/ or a directory (default wikitext-103)
    #[argh(option, default = "String::from(\"wikitext-103\")")]
    data: String,
    /// checkpoints training keeps, as genesis train --keep (default 3); the best and one being written come on top
    #[argh(option, default = "3")]
    keep: usize,
    /// do not contact Hugging Face
    #[argh(switch)]
    offline: bool,
}

/// Runs every check, prints them, and fails (exit status 1) when one makes training impossible.
pub fn run(c: DoctorCmd) -> Result<()> {
    if let Err(e) = ModelConfig::preset(&c.model) {
        bail!("--model: {e}");
    }
    let opts = DoctorOptions {
        run_dir: c.out.unwrap_or_else(|| PathBuf::from(".")),
        model: c.model,
        data: c.data,
        keep: c.keep,
        offline: c.offline,
        data_root: manifest::data_root(),
        hf_endpoint: datasets::hf_endpoint(),
        hf_timeout: Duration::from_secs(5),
    };
    let checks = doctor::run_checks(&opts);
    super::write_stdout(format_args!("{}", doctor::render(&checks)), false)?;
    if doctor::any_failed(&checks) {
        let names: Vec<&str> =
            checks.iter().filter(|c| c.status == doctor::Status::Fail).map(|c| c.name.as_str()).collect();
        bail!("{} failed; see the fix beneath it above", names.join(", "));
    }
    Ok(())
}
