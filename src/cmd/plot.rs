//! `genesis plot` (under construction).

use anyhow::{bail, Result};
use argh::FromArgs;

/// Under construction.
#[derive(FromArgs)]
#[argh(subcommand, name = "plot")]
pub struct PlotCmd {}

pub fn run(_c: PlotCmd) -> Result<()> {
    bail!("genesis plot is not built yet")
}
