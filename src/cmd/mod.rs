//! Subcommands of the `genesis` binary that live in their own file: each defines its arguments
//! (with its `--help` manual) and a `run` function. The library does the work.

pub mod doctor;
pub mod eval;
pub mod export;
pub mod import;
pub mod info;
pub mod plot;
pub mod verify;
