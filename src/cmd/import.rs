//! `genesis import` (under construction).

use anyhow::{bail, Result};
use argh::FromArgs;

/// Under construction.
#[derive(FromArgs)]
#[argh(subcommand, name = "import")]
pub struct ImportCmd {}

pub fn run(_c: ImportCmd) -> Result<()> {
    bail!("genesis import is not built yet")
}
