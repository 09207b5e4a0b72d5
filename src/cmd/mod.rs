//! The subcommands of the `genesis` binary, one file each: its arguments (with its `--help`
//! manual) and a `run` function. The library does the work; `src/main.rs` only parses and
//! dispatches. Commands print with [`outln!`] (or [`write_stdout`]), so a closed standard output ends them
//! quietly instead of panicking.

pub mod bench;
pub mod data;
pub mod doctor;
pub mod eval;
pub mod export;
pub mod import;
pub mod info;
pub mod plot;
pub mod prepare;
pub mod sample;
pub mod train;
pub mod verify;

use std::fmt;
use std::io::{self, Write};

/// The error a command returns when its standard output was closed (`genesis eval ... | head -1`):
/// `main` then exits quietly with status 0, as a command whose reader has gone should.
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// An error writing standard output: [`StdoutClosed`] for a closed pipe, else the error with context.
pub fn stdout_error(e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        anyhow::Error::new(StdoutClosed)
    } else {
        anyhow::Error::new(e).context("cannot write to standard output")
    }
}

/// Writes `args` (and a newline when `newline`) to standard output and flushes it; see [`outln!`].
pub fn write_stdout(args: fmt::Arguments<'_>, newline: bool) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| if newline { out.write_all(b"\n") } else { Ok(()) })
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

/// `println!` for commands: a closed standard output returns [`StdoutClosed`] from the enclosing
/// function (which must return `anyhow::Result`) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cmd::write_stdout(format_args!($($arg)*), true)?
    };
}

pub(crate) use outln;
