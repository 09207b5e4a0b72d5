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
    /// A step whose loss or gradient norm was not finite: its update was skipped. Non-finite values
    /// are written as the strings "NaN", "inf" and "-inf" (JSON has no such numbers).
    Skip {
        step: u64,
        tokens: u64,
        #[serde(with = "any_f64")]
        loss: f64,
        #[serde(with = "any_f64")]
        grad_norm: f64,
    },
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
            crate::util::write_atomic(&path, text.as_bytes())?;
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

/// Serde for an f64 that may be NaN or infinite: a JSON number when finite, else a string.
mod any_f64 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Num(f64),
        Text(String),
    }

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            Repr::Num(*x).serialize(s)
        } else {
            Repr::Text(x.to_string()).serialize(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Num(x) => Ok(x),
            Repr::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_skips_round_trip() {
        for (loss, norm) in [(f64::NAN, 1.5), (f64::INFINITY, f64::NEG_INFINITY)] {
            let r = Record::Skip { step: 3, tokens: 9, loss, grad_norm: norm };
            let line = serde_json::to_string(&r).unwrap();
            let Record::Skip { loss: l, grad_norm: g, .. } = serde_json::from_str(&line).unwrap() else {
                panic!("{line}")
            };
            assert_eq!((l.to_bits(), g.to_bits()), (loss.to_bits(), norm.to_bits()), "{line}");
        }
    }
}
