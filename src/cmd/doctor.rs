//! `genesis doctor` (under construction).

use anyhow::{bail, Result};
use argh::FromArgs;

/// Under construction.
#[derive(FromArgs)]
#[argh(subcommand, name = "doctor")]
pub struct DoctorCmd {}

pub fn run(_c: DoctorCmd) -> Result<()> {
    bail!("genesis doctor is not built yet")
}
