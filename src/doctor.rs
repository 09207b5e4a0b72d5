//! `genesis doctor`: checks whether this machine can train, each answer with the fix when it cannot.
//!
//! Every check returns [`Check`]s (name, [`Status`], detail, fix) so tests and the CLI read the same
//! results; [`render`] lays them out one per line. Only [`Status::Fail`] means training cannot run
//! here at all (today: not enough disk for even one checkpoint); everything GPU-related is a warning,
//! since training also runs on the CPU. Nothing here panics, whatever the machine lacks: the CUDA
//! driver is probed through [`crate::gpu::device::device_count`], which guards the dynamic loading.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::checkpoint;
use crate::data::manifest::{self, Manifest, MANIFEST_FILE};
use crate::model::ModelConfig;

/// The CUDA version cudarc is built against (the `cuda-13000` feature): older drivers lack symbols.
pub const CUDA_BUILT_FOR: i32 = 13000;
/// The one command that installs the pinned nvcc (the same as `build.rs`'s warning).
pub use crate::nvcc_pins::pip_install as nvcc_pip_install;

/// Relative to `$HOME`: where [`nvcc_pip_install`] puts nvcc.
const PIP_NVCC_DIR: &str = ".cache/genesis/nvcc/nvidia/cu13/bin";

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Fine.
    Ok,
    /// Not checked (e.g. `--offline`).
    Skip,
    /// Something is missing or worrying, but training can still run (perhaps only on the CPU).
    Warn,
    /// Training cannot run until this is fixed.
    Fail,
}

impl Status {
    /// The mark printed at the start of the line.
    pub fn mark(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Skip => "skip",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One check's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// Short name, e.g. `gpu`, `disk`.
    pub name: String,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about it, when the status is not ok.
    pub fix: Option<String>,
}

impl Check {
    fn new(name: &str, status: Status, detail: impl Into<String>, fix: Option<String>) -> Check {
        Check { name: name.to_string(), status, detail: detail.into(), fix }
    }

    fn ok(name: &str, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Ok, detail, None)
    }

    fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(name, Status::Warn, detail, Some(fix.into()))
    }
}

/// What to check.
#[derive(Clone, Debug)]
pub struct DoctorOptions {
    /// The run directory training will write to (checked for free space and existing checkpoints).
    pub run_dir: PathBuf,
    /// Model preset sizing the checkpoints when the run directory holds none.
    pub model: String,
    /// Dataset training will use.
    pub data: String,
    /// Checkpoints kept by training (the last K; the best and one being written come on top).
    pub keep: usize,
    /// Skip the network check.
    pub offline: bool,
    /// Where prepared datasets live.
    pub data_root: PathBuf,
    /// The Hugging Face endpoint probed.
    pub hf_endpoint: String,
    /// How long the endpoint may take to answer.
    pub hf_timeout: Duration,
}

/// Every check, in the order printed.
pub fn run_checks(o: &DoctorOptions) -> Vec<Check> {
    let mut checks = vec![check_cpu()];
    checks.extend(check_gpu());
    checks.extend(check_cuda_libraries());
    checks.push(check_kernels());
    checks.push(check_nvcc());
    checks.push(check_disk(&o.run_dir, &o.model, o.keep));
    checks.push(check_datasets(&o.data_root));
    checks.push(check_data(&o.data_root, &o.data));
    checks.push(if o.offline {
        Check::new("hub", Status::Skip, "--offline: Hugging Face not contacted", None)
    } else {
        check_hub(&o.hf_endpoint, o.hf_timeout)
    });
    checks
}

/// CPU threads training uses, and the vector extensions the matmuls rely on.
pub fn check_cpu() -> Check {
    let threads = rayon::current_num_threads();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut detail = format!("{threads} worker threads ({cores} available)");
    #[cfg(target_arch = "x86_64")]
    {
        let yes = |b: bool| if b { "yes" } else { "no" };
        detail.push_str(&format!(
            ", AVX2 {}, FMA {}, AVX-512 {}",
            yes(std::arch::is_x86_feature_detected!("avx2")),
            yes(std::arch::is_x86_feature_detected!("fma")),
            yes(std::arch::is_x86_feature_detected!("avx512f"))
        ));
    }
    Check::ok("cpu", detail)
}

/// `13000` as `13.0`.
pub fn cuda_version(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// The CUDA driver, its version and device count, then one check per device.
pub fn check_gpu() -> Vec<Check> {
    let count = match crate::gpu::device::device_count() {
        Ok(n) => n,
        Err(reason) => {
            return vec![Check::warn(
                "gpu",
                format!("no usable GPU: {reason}"),
                "training runs on the CPU meanwhile. For GPU training install the NVIDIA driver \
                 (`nvidia-smi` must list the GPU) so that libcuda.so.1 loads; in a container, start it \
                 with the GPU passed through (e.g. `docker run --gpus all`)",
            )]
        }
    };
    let version = crate::gpu::device::driver_version();
    let vtext = version.map_or_else(|| "unknown CUDA version".to_string(), |v| format!("CUDA {}", cuda_version(v)));
    let mut checks = Vec::new();
    if count == 0 {
        checks.push(Check::warn(
            "gpu",
            format!("driver loaded ({vtext}) but it reports no devices"),
            "check `nvidia-smi` and that CUDA_VISIBLE_DEVICES does not hide them",
        ));
        return checks;
    }
    match version {
        Some(v) if v < CUDA_BUILT_FOR => checks.push(Check::warn(
            "gpu",
            format!(
                "driver supports {vtext}, {count} device(s); this build needs CUDA {}",
                cuda_version(CUDA_BUILT_FOR)
            ),
            format!("update the NVIDIA driver to one supporting CUDA {} (R580 or newer)", cuda_version(CUDA_BUILT_FOR)),
        )),
        _ => checks.push(Check::ok("gpu", format!("driver {vtext}, {count} device(s)"))),
    }
    checks.extend((0..count).map(check_device));
    checks
}

/// One device: name, compute capability, memory, and whether the embedded kernels run on it.
fn check_device(ordinal: usize) -> Check {
    let name = format!("gpu {ordinal}");
    let info = match crate::gpu::device::probe_device(ordinal) {
        Ok(info) => info,
        Err(e) if e == crate::gpu::device::PROBE_PANICKED => return Check::warn(&name, e, "update the NVIDIA driver"),
        Err(e) => return Check::warn(&name, e, "check `nvidia-smi`; is another process holding it in exclusive mode?"),
    };
    let (dev, (major, minor), (free, total)) = (info.name, info.compute_capability, (info.free, info.total));
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    let detail = format!("{dev}, sm_{major}{minor}, {:.1} GiB total, {:.1} GiB free", gib(total), gib(free));
    let archs = crate::gpu::kernels::kernel_archs();
    if !archs.is_empty() && !kernels_run_on(archs, major, minor) {
        return Check::warn(
            &name,
            format!("{detail}; the kernels ({archs}) do not run on sm_{major}{minor}"),
            "Genesis kernels need compute capability 8.0 or newer (A100, RTX 30xx and later)",
        );
    }
    Check::ok(&name, detail)
}

/// Whether a fatbin built for `archs` (e.g. `sm_80,sm_90,compute_90`) runs on compute capability
/// `major.minor`: SASS for the same major version and an equal or lower minor one, or PTX for an
/// equal or lower version (JIT-compiled by the driver).
pub fn kernels_run_on(archs: &str, major: i32, minor: i32) -> bool {
    let device = major * 10 + minor;
    archs.split(',').map(str::trim).any(|a| {
        if let Some(v) = a.strip_prefix("sm_").and_then(|v| v.parse::<i32>().ok()) {
            v / 10 == major && v <= device
        } else if let Some(v) = a.strip_prefix("compute_").and_then(|v| v.parse::<i32>().ok()) {
            v <= device
        } else {
            false
        }
    })
}

/// libcublas and libcublasLt: where they are, or what to install.
pub fn check_cuda_libraries() -> Vec<Check> {
    let fix = "install cuBLAS (the CUDA 13 toolkit, or `pip install nvidia-cublas` and add its lib directory to \
               LD_LIBRARY_PATH), or set CUDA_HOME to a toolkit holding lib64/libcublas.so.13; only the GPU engine \
               needs it";
    let cublas = match crate::gpu::device::find_cublas() {
        Some(p) => Check::ok("cublas", p.display().to_string()),
        None => Check::warn("cublas", "libcublas.so.13/.12 not found", fix),
    };
    let lt_fix = if cublas.status == Status::Ok {
        "it ships with cuBLAS: install the full cuBLAS package beside the libcublas found above".to_string()
    } else {
        "installed together with libcublas (see the fix above)".to_string()
    };
    let lt = match crate::gpu::device::find_cuda_library(&["libcublasLt.so.13", "libcublasLt.so.12"]) {
        Some(p) => Check::ok("cublasLt", p.display().to_string()),
        None => Check::warn("cublasLt", "libcublasLt.so.13/.12 not found", lt_fix),
    };
    vec![cublas, lt]
}

/// The CUDA architectures compiled into this binary, or how to get a build that has them.
pub fn check_kernels() -> Check {
    let archs = crate::gpu::kernels::kernel_archs();
    if archs.is_empty() {
        Check::warn(
            "kernels",
            "none: this binary was built without nvcc (CPU-only)",
            format!("install nvcc, then rebuild:\n$ {}\n$ cargo build --release", nvcc_pip_install()),
        )
    } else {
        Check::ok("kernels", format!("compiled in for {archs}"))
    }
}

/// Where `build.rs` would find nvcc: `$NVCC`, `PATH`, `$CUDA_HOME/bin`, `$CUDA_PATH/bin`,
/// `/usr/local/cuda/bin`, `~/.cache/genesis/nvcc/nvidia/cu13/bin`.
pub fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC").filter(|v| !v.is_empty()).map(PathBuf::from) {
        if p.components().count() > 1 {
            return p.is_file().then_some(p);
        }
        return on_path(&p.to_string_lossy());
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            dirs.push(PathBuf::from(root).join("bin"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/bin"));
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(PIP_NVCC_DIR));
    }
    on_path("nvcc").or_else(|| dirs.into_iter().map(|d| d.join("nvcc")).find(|p| p.is_file()))
}

/// `name` in a `PATH` directory.
fn on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file())
}

/// nvcc's location and version (`release 13.0, V13.0.88`), or how to get it.
pub fn check_nvcc() -> Check {
    let Some(nvcc) = find_nvcc() else {
        if crate::gpu::kernels::fatbin().is_some() {
            return Check::ok("nvcc", "not found; not needed, this binary already carries its kernels");
        }
        return Check::warn(
            "nvcc",
            "not found (looked in $NVCC, PATH, $CUDA_HOME/bin, $CUDA_PATH/bin, /usr/local/cuda/bin, ~/".to_string()
                + PIP_NVCC_DIR
                + ")",
            format!(
                "$ {}\nor install the CUDA toolkit and set CUDA_HOME; then rebuild with cargo build --release",
                nvcc_pip_install()
            ),
        );
    };
    match Command::new(&nvcc).arg("--version").output() {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let version = text.lines().find_map(|l| l.split_once("release ").map(|x| x.1.trim().to_string()));
            Check::ok("nvcc", format!("{} ({})", nvcc.display(), version.unwrap_or_else(|| "version unknown".into())))
        }
        Ok(out) => Check::warn(
            "nvcc",
            format!("{} --version failed: {}", nvcc.display(), String::from_utf8_lossy(&out.stderr).trim()),
            format!("reinstall it:\n$ {}", nvcc_pip_install()),
        ),
        Err(e) => Check::warn(
            "nvcc",
            format!("cannot run {}: {e}", nvcc.display()),
            format!("reinstall it:\n$ {}", nvcc_pip_install()),
        ),
    }
}

/// `path` itself if it exists, else its nearest existing ancestor (`.` for a relative path whose
/// parents do not exist).
pub fn nearest_existing(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    loop {
        if p.exists() {
            return p;
        }
        if !p.pop() || p.as_os_str().is_empty() {
            return PathBuf::from(".");
        }
    }
}

/// Bytes available to this user on the filesystem holding `path` (statvfs).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs the call fills in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Bytes as `1.8 GB`.
pub fn format_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e12 {
        format!("{:.1} TB", b / 1e12)
    } else if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.0} kB", b / 1e3)
    }
}

/// The verdict on `free` bytes for checkpoints of `per_ckpt` bytes with `keep` kept: ok when the
/// last `keep`, the best and one being written fit; a warning when at least one fits (training
/// starts but will stop on a full disk later); a failure when not even one does.
pub fn disk_verdict(free: u64, per_ckpt: u64, keep: usize) -> Status {
    let need = per_ckpt.saturating_mul(keep as u64 + 2);
    if free >= need {
        Status::Ok
    } else if free >= per_ckpt {
        Status::Warn
    } else {
        Status::Fail
    }
}

/// The newest checkpoint in `dir` that reads, with its model config.
pub fn run_checkpoint(dir: &Path) -> Option<(PathBuf, ModelConfig)> {
    let mut ckpts: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ckpt"))
        .collect();
    ckpts.sort();
    ckpts.into_iter().rev().find_map(|p| checkpoint::read_info(&p).ok().map(|i| (p, i.config)))
}

/// The preset name of `cfg`, if it is one.
fn preset_name(cfg: &ModelConfig) -> Option<&'static str> {
    crate::model::PRESETS.iter().map(|p| p.0).find(|n| ModelConfig::preset(n).is_ok_and(|c| c == *cfg))
}

/// Free space where the run writes against the checkpoints it will keep (sized by the run's own
/// checkpoints when it has some, else by `model`).
pub fn check_disk(run_dir: &Path, model: &str, keep: usize) -> Check {
    let (cfg, source) = match run_checkpoint(run_dir) {
        Some((path, cfg)) => {
            let name =
                preset_name(&cfg).map_or_else(|| format!("{} layers x {}", cfg.num_layers, cfg.channels), String::from);
            (
                cfg,
                format!(
                    "{name}, from {}",
                    path.file_name().map_or_else(String::new, |f| f.to_string_lossy().into_owned())
                ),
            )
        }
        None => match ModelConfig::preset(model) {
            Ok(cfg) => (cfg, model.to_string()),
            Err(e) => return Check::new("disk", Status::Fail, e, Some("pass a preset with --model".into())),
        },
    };
    check_disk_for(run_dir, &cfg, &source, keep)
}

/// [`check_disk`] for an explicit model config (`what` names it in the message).
pub fn check_disk_for(run_dir: &Path, cfg: &ModelConfig, what: &str, keep: usize) -> Check {
    let at = nearest_existing(run_dir);
    let free = match free_bytes(&at) {
        Ok(f) => f,
        Err(e) => {
            return Check::warn(
                "disk",
                format!("cannot read free space of {}: {e}", at.display()),
                "check the path given with --out",
            )
        }
    };
    let per = checkpoint::full_checkpoint_bytes(cfg);
    let need = per.saturating_mul(keep as u64 + 2);
    let detail = format!(
        "{} free at {}; {} checkpoints of {} ({what}) need {}",
        format_bytes(free),
        at.display(),
        keep + 2,
        format_bytes(per),
        format_bytes(need)
    );
    let status = disk_verdict(free, per, keep);
    let fix = match status {
        Status::Ok | Status::Skip => None,
        Status::Warn => Some(format!(
            "training starts but runs out of space later: free {} there, keep fewer checkpoints (--keep), or put the run on a larger disk with --out",
            format_bytes(need - free)
        )),
        Status::Fail => Some(format!(
            "not even one checkpoint ({}) fits: free space there or choose another disk with --out",
            format_bytes(per)
        )),
    };
    Check::new("disk", status, detail, fix)
}

/// Prepared datasets (directories with a manifest) under `root`, by name, with their manifests.
pub fn prepared_datasets(root: &Path) -> Vec<(String, Manifest)> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    let mut found: Vec<(String, Manifest)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(MANIFEST_FILE).is_file())
        .filter_map(|p| {
            let name = p.file_name()?.to_string_lossy().into_owned();
            Manifest::load(&p).ok().map(|m| (name, m))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// A token count as `117.9M`.
fn format_count(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.2}B", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.1}M", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1}k", f / 1e3)
    } else {
        n.to_string()
    }
}

/// `117.9M train / 247.3k val tokens` for a manifest.
fn split_summary(m: &Manifest) -> String {
    let parts: Vec<String> =
        m.splits.iter().filter(|(_, s)| s.tokens > 0).map(|(k, s)| format!("{} {k}", format_count(s.tokens))).collect();
    format!("{} tokens", parts.join(" / "))
}

/// Every prepared dataset under `root` with its token counts.
pub fn check_datasets(root: &Path) -> Check {
    let found = prepared_datasets(root);
    if found.is_empty() {
        let why = if root.is_dir() { "holds no prepared dataset" } else { "does not exist" };
        return Check::warn(
            "datasets",
            format!("none prepared: {} {why}", root.display()),
            "prepare one: genesis prepare wikitext-103 (or --input FILES --name NAME); if they live elsewhere, set GENESIS_DATA_DIR",
        );
    }
    let list: Vec<String> = found.iter().map(|(n, m)| format!("{n} ({})", split_summary(m))).collect();
    Check::ok("datasets", format!("in {}: {}", root.display(), list.join(", ")))
}

/// Whether `--data NAME` is prepared under `root` (or at the path it names), with the command
/// that prepares it when not.
pub fn check_data(root: &Path, data: &str) -> Check {
    let dir = if manifest::is_dataset_name(data) { root.join(data) } else { PathBuf::from(data) };
    if !dir.join(MANIFEST_FILE).exists() {
        return Check::warn("data", format!("{data} is not prepared"), manifest::missing_hint(&dir));
    }
    match Manifest::load(&dir) {
        Ok(m) => Check::ok("data", format!("{data} prepared: {} in {}", split_summary(&m), dir.display())),
        Err(e) => Check::warn(
            "data",
            format!("{data}: {e:#}"),
            format!("prepare it again with --force: {}", manifest::missing_hint(&dir)),
        ),
    }
}

/// Whether the Hugging Face endpoint answers within `timeout` (any HTTP status counts: the host is
/// reachable; server errors are a warning).
pub fn check_hub(endpoint: &str, timeout: Duration) -> Check {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("genesis/", env!("CARGO_PKG_VERSION")))
        .timeout_global(Some(timeout))
        .build()
        .into();
    let started = std::time::Instant::now();
    let fix = "`genesis prepare wikitext-103` downloads from there: without network fetch the parquet files \
               elsewhere and pass --from DIR, or set HF_ENDPOINT to a reachable mirror";
    match agent.head(endpoint).call() {
        Ok(resp) if resp.status().is_server_error() => {
            Check::warn("hub", format!("{endpoint} answers {} (server error)", resp.status()), fix)
        }
        Ok(resp) => Check::ok(
            "hub",
            format!("{endpoint} reachable (HTTP {}, {} ms)", resp.status().as_u16(), started.elapsed().as_millis()),
        ),
        Err(e) => Check::warn("hub", format!("cannot reach {endpoint}: {}", one_line(&e.to_string())), fix),
    }
}

/// The first line of `s`.
fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

/// The checks as aligned lines (`STATUS NAME DETAIL`), each fix indented beneath a check that is
/// not ok, then the summary line.
pub fn render(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let indent = " ".repeat(6 + width + 1);
    let mut out = String::new();
    for c in checks {
        out.push_str(&format!("{:<5} {:<width$} {}\n", c.status.mark(), c.name, c.detail));
        if let Some(fix) = c.fix.as_ref().filter(|_| c.status != Status::Ok) {
            for (i, line) in fix.lines().flat_map(|l| wrap(l, FIX_WIDTH)).enumerate() {
                out.push_str(&format!("{indent}{}{line}\n", if i == 0 { "fix: " } else { "     " }));
            }
        }
    }
    out.push_str(&summary(checks));
    out.push('\n');
    out
}

/// Columns a fix line is wrapped at (after its indent).
const FIX_WIDTH: usize = 90;

/// `text` broken at spaces into lines of at most `width` characters (longer words stay whole); a
/// command to copy (a line starting with `$ `) is never broken.
fn wrap(text: &str, width: usize) -> Vec<String> {
    if text.starts_with("$ ") {
        return vec![text.to_string()];
    }
    let mut lines = vec![String::new()];
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let line = lines.last_mut().expect("never empty");
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(word.to_string());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

/// How many checks came out each way, and what that means for training.
pub fn summary(checks: &[Check]) -> String {
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    let (warn, fail) = (count(Status::Warn), count(Status::Fail));
    let gpu_ok = checks.iter().any(|c| c.name.starts_with("gpu ") && c.status == Status::Ok)
        && checks.iter().any(|c| c.name == "kernels" && c.status == Status::Ok);
    let verdict = if fail > 0 {
        let names: Vec<&str> = checks.iter().filter(|c| c.status == Status::Fail).map(|c| c.name.as_str()).collect();
        format!("training cannot run here until {} is fixed", names.join(", "))
    } else if gpu_ok {
        "ready to train (a GPU with matching kernels found)".to_string()
    } else if warn > 0 {
        "training can run on the CPU; the warnings say what GPU training or the data still needs".to_string()
    } else {
        "ready to train".to_string()
    };
    format!("{} ok, {warn} warn, {fail} FAIL: {verdict}", count(Status::Ok))
}

/// Whether any check failed (the CLI then exits with status 1).
pub fn any_failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.status == Status::Fail)
}
