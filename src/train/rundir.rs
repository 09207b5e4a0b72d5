//! The run directory: checkpoint names, finding them, keeping the last K plus the best, and moving
//! an earlier run aside for `--fresh`.
//!
//! ```text
//! RUN/step_00001000.ckpt   full checkpoints (the last --keep, plus the best validation loss)
//! RUN/run.json             the run's settings, written when it starts (resumes use them when no
//!                          checkpoint is whole yet)
//! RUN/metrics.jsonl        one JSON record per step and evaluation
//! RUN/main.log             the human log
//! RUN/previous-N/          an earlier run moved aside by --fresh
//! RUN/.genesis.lock        held by the `genesis train` using the directory (util::DirLock)
//! ```

use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

use super::RunConfig;

/// The run's settings ([`RunConfig`] as JSON), written atomically when the run starts.
pub const RUN_FILE: &str = "run.json";

/// File name of the checkpoint written at `step`.
pub fn checkpoint_path(out: &Path, step: u64) -> PathBuf {
    out.join(format!("step_{step:08}.ckpt"))
}

/// The step of a `step_NNNNNNNN.ckpt` file name.
fn step_of(name: &str) -> Option<u64> {
    name.strip_prefix("step_")?.strip_suffix(".ckpt")?.parse().ok()
}

/// Checkpoints in `out`, newest (highest step) first.
pub fn list_checkpoints(out: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = fs::read_dir(out)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((step_of(e.file_name().to_str()?)?, e.path())))
        .collect();
    found.sort_by_key(|c| std::cmp::Reverse(c.0));
    found
}

/// Writes `out/run.json` atomically.
pub fn write_run_config(out: &Path, run: &RunConfig) -> Result<()> {
    let mut json = serde_json::to_string_pretty(run).context("cannot serialise the run settings")?;
    json.push('\n');
    crate::util::write_atomic(&out.join(RUN_FILE), json.as_bytes())
}

/// The settings in `out/run.json`, if it exists and reads.
pub fn read_run_config(out: &Path) -> Option<RunConfig> {
    serde_json::from_slice(&fs::read(out.join(RUN_FILE)).ok()?).ok()
}

/// Whether `out` holds files of a run: checkpoints (whole or not), run.json or metrics.jsonl.
pub fn holds_a_run(out: &Path) -> bool {
    fs::read_dir(out).into_iter().flatten().flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.starts_with("step_") || name == RUN_FILE || name == super::metrics::METRICS_FILE
    })
}

/// Deletes `*.ckpt.tmp` files left by a checkpoint write that was killed; returns their names.
pub fn remove_stale_temporaries(out: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    for e in fs::read_dir(out).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".ckpt.tmp") && fs::remove_file(e.path()).is_ok() {
            removed.push(name);
        }
    }
    removed
}

/// Keeps the newest `keep` sound checkpoints, the one at `best_step`, and diverged ones (whose
/// validation loss was not finite, as `diverged` says) only while they are among the newest `keep`
/// of all: a diverged checkpoint never pushes a sound one out. Deletes the rest; returns their steps.
pub fn prune(out: &Path, keep: usize, best_step: Option<u64>, diverged: impl Fn(&Path) -> bool) -> Vec<u64> {
    let keep = keep.max(1);
    let mut deleted = Vec::new();
    let mut sound_kept = 0;
    for (i, (step, path)) in list_checkpoints(out).into_iter().enumerate() {
        let keep_it = if diverged(&path) {
            i < keep
        } else {
            sound_kept += 1;
            sound_kept <= keep
        };
        if !keep_it && Some(step) != best_step && fs::remove_file(&path).is_ok() {
            deleted.push(step);
        }
    }
    deleted
}

/// Renames a damaged checkpoint to `*.ckpt.corrupt` so it is kept for inspection but never
/// resumed from or overwritten. Returns the new path.
pub fn set_aside(path: &Path) -> Result<PathBuf> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".corrupt");
    let to = path.with_file_name(name);
    fs::rename(path, &to).with_context(|| format!("cannot rename {} to {}", path.display(), to.display()))?;
    Ok(to)
}

/// Moves the run's files (checkpoints, settings, logs, metrics, plots) into a new `out/previous-N/` and
/// returns it, or `None` when there was nothing to move.
pub fn archive(out: &Path) -> Result<Option<PathBuf>> {
    let movable = |name: &str| {
        name.starts_with("step_")
            || name == RUN_FILE
            || name == super::metrics::METRICS_FILE
            || name == super::runlog::LOG_FILE
            || name.ends_with(".svg")
            || name.ends_with(".png")
    };
    let entries: Vec<fs::DirEntry> = fs::read_dir(out)
        .with_context(|| format!("cannot read run directory {}", out.display()))?
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(movable))
        .collect();
    if entries.is_empty() {
        return Ok(None);
    }
    let dest = (1..).map(|n| out.join(format!("previous-{n}"))).find(|d| !d.exists()).expect("unbounded");
    fs::create_dir(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
    for e in entries {
        let to = dest.join(e.file_name());
        fs::rename(e.path(), &to).with_context(|| format!("cannot move {} to {}", e.path().display(), to.display()))?;
    }
    Ok(Some(dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("genesis-rundir-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn prune_keeps_the_newest_and_the_best() {
        let d = scratch("prune");
        for s in [10, 20, 30, 40, 50] {
            fs::write(checkpoint_path(&d, s), b"x").unwrap();
        }
        fs::write(d.join("notes.txt"), b"x").unwrap();
        assert_eq!(prune(&d, 2, Some(20), |_| false), vec![30, 10]);
        let left: Vec<u64> = list_checkpoints(&d).into_iter().map(|c| c.0).collect();
        assert_eq!(left, vec![50, 40, 20]);
        assert!(d.join("notes.txt").exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn diverged_checkpoints_never_push_sound_ones_out() {
        let d = scratch("diverged");
        for s in [10, 20, 30, 40, 50] {
            fs::write(checkpoint_path(&d, s), b"x").unwrap();
        }
        // 40 and 50 diverged: the two newest sound ones (30, 20) stay, and so do 40 and 50 as the
        // newest of all; 10 goes.
        let bad = |p: &Path| p.ends_with("step_00000040.ckpt") || p.ends_with("step_00000050.ckpt");
        assert_eq!(prune(&d, 2, None, bad), vec![10]);
        // A newer diverged one pushes the older diverged ones out, never the sound ones.
        fs::write(checkpoint_path(&d, 60), b"x").unwrap();
        let bad = |p: &Path| !p.ends_with("step_00000030.ckpt") && !p.ends_with("step_00000020.ckpt");
        assert_eq!(prune(&d, 2, None, bad), vec![40]);
        let left: Vec<u64> = list_checkpoints(&d).into_iter().map(|c| c.0).collect();
        assert_eq!(left, vec![60, 50, 30, 20]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn archive_moves_run_files_only() {
        let d = scratch("archive");
        fs::write(checkpoint_path(&d, 5), b"x").unwrap();
        fs::write(d.join("metrics.jsonl"), b"{}").unwrap();
        fs::write(d.join("keep.txt"), b"x").unwrap();
        let dest = archive(&d).unwrap().unwrap();
        assert_eq!(dest, d.join("previous-1"));
        assert!(dest.join("step_00000005.ckpt").exists() && dest.join("metrics.jsonl").exists());
        assert!(d.join("keep.txt").exists() && list_checkpoints(&d).is_empty());
        assert_eq!(archive(&d).unwrap(), None);
        fs::remove_dir_all(&d).unwrap();
    }
}
