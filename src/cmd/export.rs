//! `genesis export` (under construction).

use anyhow::{bail, Result};
use argh::FromArgs;

/// Under construction.
#[derive(FromArgs)]
#[argh(subcommand, name = "export")]
pub struct ExportCmd {}

pub fn run(_c: ExportCmd) -> Result<()> {
    bail!("genesis export is not built yet")
}
