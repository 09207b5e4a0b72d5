//! The pinned nvcc that builds the CUDA kernels: one command, from `scripts/nvcc-requirements.txt`,
//! used by `build.rs`'s warning (which includes this file) and `genesis doctor`; the README and
//! `.ci/run` use the same pins.

/// The pinned packages, one per line.
const REQUIREMENTS: &str = include_str!("../scripts/nvcc-requirements.txt");

/// `pip install --target ~/.cache/genesis/nvcc "pkg==x.y.z" ...`: installs the pinned nvcc where
/// `build.rs` looks for it, without root.
pub fn pip_install() -> String {
    let pins: Vec<String> = REQUIREMENTS
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| format!("\"{l}\""))
        .collect();
    format!("pip install --target ~/.cache/genesis/nvcc {}", pins.join(" "))
}
