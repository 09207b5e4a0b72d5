//! `metrics.jsonl`: one JSON object per line in the run directory, appended as training goes, read
//! by `genesis plot`. A line torn by a kill is ignored when reading; on resume the records after the
//! resumed step are dropped, since those steps are trained again.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const METRICS_FILE: &str = "metrics.jsonl";

/// One line of `metrics.jsonl`, tagged by `"kind"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    /// The run started (step 0) or resumed (step > 0).
    Start { step: u64, tokens: u64, model: String, params: u64, tokens_per_step: u64, device: String },
    /// A completed optimizer step. `tokens` counts training tokens seen after it.
    Train {
        step: u64,
        tokens: u64,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        tokens_per_sec: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mfu: Option<f64>,
        elapsed_s: f64,
    },
    /// Mean validation loss after `step` steps.
    Val { step: u64, tokens: u64, loss: f64 },
    /// A step whose loss or gradient norm was not finite: its update was skipped.
    Skip { step: u64, tokens: u64, loss: f64, grad_norm: f64 },
}

impl Record {
    pub fn step(&self) -> u64 {
        match self {
            Record::Start { step, .. }
            | Record::Train { step, .. }
            | Record::Val { step, .. }
            | Record::Skip { step, .. } => *step,
        }
    }
}

/// Reads every whole record of `path`; lines that do not parse (a torn last line) are skipped.
pub fn read(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

/// Appends records to `metrics.jsonl`.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens `dir/metrics.jsonl` for appending. `resumed_at`: the step training resumes from, whose
    /// later records are dropped; `None` (a new run) empties the file.
    pub fn open(dir: &Path, resumed_at: Option<u64>) -> Result<Self> {
        let path = dir.join(METRICS_FILE);
        if path.exists() {
            let keep = |r: &Record| resumed_at.is_some_and(|s| r.step() <= s);
            let kept: Vec<Record> = read(&path)?.into_iter().filter(keep).collect();
            let mut text = String::new();
            for r in &kept {
                text.push_str(&serde_json::to_string(r)?);
                text.push('\n');
            }
            crate::data::shard::write_atomic(&path, text.as_bytes())?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(MetricsLog { path, file })
    }

    pub fn write(&mut self, r: &Record) -> Result<()> {
        let mut line = serde_json::to_string(r)?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).with_context(|| format!("cannot write {}", self.path.display()))
    }
}
