//! `metrics.jsonl`: one JSON object per line in the run directory, appended as training goes, read
//! by `genesis plot`. A line torn by a kill is ignored when reading. On resume the file is cut after
//! the last record of the resumed step (the later steps are trained again); the lines before the cut
//! are kept byte for byte, never re-serialised, and lines among them that do not parse are kept and
//! reported.

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
    /// Opens `dir/metrics.jsonl` for appending. `resumed_at`: the step training resumes from; the
    /// file is cut after that step's last record (see [`resume_cut`]); `None` (a new run) empties
    /// it. Returns the log and lines for the run log about what was cut or could not be read.
    pub fn open(dir: &Path, resumed_at: Option<u64>) -> Result<(Self, Vec<String>)> {
        let path = dir.join(METRICS_FILE);
        let mut notes = Vec::new();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let cut = match resumed_at {
            None => Cut { at: 0, newline: false, unreadable: Vec::new(), dropped: count_lines(&bytes) },
            Some(step) => resume_cut(&bytes, step),
        };
        for line in &cut.unreadable {
            notes.push(format!(
                "{}: line {line} is not a metrics record; kept as it is (genesis plot skips it)",
                path.display()
            ));
        }
        if cut.at < bytes.len() as u64 {
            file.set_len(cut.at)
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot truncate {}", path.display()))?;
            let after = match resumed_at {
                Some(step) => format!("after step {step}, which is trained again"),
                None => "of an earlier start that saved no checkpoint".to_string(),
            };
            notes.push(format!("{}: removed {} line(s) {after}", path.display(), cut.dropped));
        }
        let mut log = MetricsLog { path, file };
        if cut.newline {
            log.file.write_all(b"\n").with_context(|| format!("cannot write {}", log.path.display()))?;
        }
        Ok((log, notes))
    }

    pub fn write(&mut self, r: &Record) -> Result<()> {
        let mut line = serde_json::to_string(r)?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Where [`resume_cut`] cuts `metrics.jsonl`.
#[derive(Debug, PartialEq)]
pub struct Cut {
    /// Bytes kept.
    pub at: u64,
    /// The kept part ends in a record without its newline (a kill between the two): add one.
    pub newline: bool,
    /// 1-based numbers of the kept lines that are not records.
    pub unreadable: Vec<usize>,
    /// Lines removed.
    pub dropped: usize,
}

/// Where to cut `metrics.jsonl` (its `bytes`) to resume from `step`: after the last line up to the
/// first record of a later step. Lines are only scanned for their step, never re-serialised, so
/// what is kept stays byte for byte. A line that does not parse is kept when a record of `step` or
/// earlier follows it, else (a line torn by a kill) it goes with the later steps.
pub fn resume_cut(bytes: &[u8], step: u64) -> Cut {
    let mut cut = Cut { at: 0, newline: false, unreadable: Vec::new(), dropped: 0 };
    let mut pending = Vec::new();
    let (mut start, mut number) = (0usize, 0usize);
    while start < bytes.len() {
        let end = bytes[start..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |i| start + i + 1);
        number += 1;
        let text = &bytes[start..end];
        let body = text.strip_suffix(b"\n").unwrap_or(text);
        match serde_json::from_slice::<Record>(body) {
            Ok(r) if r.step() <= step => {
                cut.unreadable.append(&mut pending);
                (cut.at, cut.newline) = (end as u64, !text.ends_with(b"\n"));
            }
            Ok(_) => break,
            Err(_) if body.iter().all(u8::is_ascii_whitespace) => {}
            Err(_) => pending.push(number),
        }
        start = end;
    }
    cut.dropped = count_lines(&bytes[cut.at as usize..]);
    cut
}

/// Lines of `bytes` holding anything.
fn count_lines(bytes: &[u8]) -> usize {
    bytes.split(|&b| b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)).count()
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
    fn resume_cuts_after_the_step_without_rewriting_or_dropping_unreadable_lines() {
        let kept = "{\"kind\":\"val\",\"step\":0,\"tokens\":0,\"loss\":10.98765432109876}\n\
                    not a record\n\
                    {\"kind\":\"train\",\"step\":1,\"tokens\":8,\"loss\":0.30000000000000004,\"lr\":1e-4,\
                    \"grad_norm\":1.0,\"tokens_per_sec\":5.0,\"elapsed_s\":0.5}\n\
                    {\"kind\":\"val\",\"step\":1,\"tokens\":8,\"loss\":2.5}\n";
        let later = "{\"kind\":\"val\",\"step\":2,\"tokens\":16,\"loss\":2.0}\n{\"kind\":\"tr";
        let cut = resume_cut(format!("{kept}{later}").as_bytes(), 1);
        assert_eq!(cut, Cut { at: kept.len() as u64, newline: false, unreadable: vec![2], dropped: 2 });
        // A last record whose newline was never written is kept, and the newline added.
        let torn = &kept[..kept.len() - 1];
        assert_eq!(
            resume_cut(torn.as_bytes(), 1),
            Cut { at: torn.len() as u64, newline: true, unreadable: vec![2], dropped: 0 }
        );
        // Nothing of step 0 or earlier: all goes.
        assert_eq!(resume_cut(later.as_bytes(), 1).at, 0);
    }

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
