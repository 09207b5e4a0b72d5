//! The subcommands of the `genesis` binary, one file each: its arguments (with its `--help`
//! manual) and a `run` function. The library does the work; `src/main.rs` only parses and
//! dispatches.

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
