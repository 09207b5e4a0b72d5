//! The run's human log: every line goes to stdout and is appended to `RUN/main.log`, so the log
//! survives a closed terminal. Write errors on stdout (a dropped ssh session) are ignored: losing
//! the terminal must never stop training.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

pub const LOG_FILE: &str = "main.log";

pub struct RunLog {
    file: Option<File>,
    stdout: bool,
}

impl RunLog {
    /// Appends to `dir/main.log`; `stdout` also echoes each line to standard output.
    pub fn open(dir: &Path, stdout: bool) -> Self {
        let file = OpenOptions::new().create(true).append(true).open(dir.join(LOG_FILE)).ok();
        RunLog { file, stdout }
    }

    pub fn line(&mut self, s: &str) {
        if self.stdout {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{s}");
            let _ = out.flush();
        }
        if let Some(f) = &mut self.file {
            let _ = writeln!(f, "{s}");
        }
    }
}
