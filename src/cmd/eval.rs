//! `genesis eval` (under construction).

use anyhow::{bail, Result};
use argh::FromArgs;

/// Under construction.
#[derive(FromArgs)]
#[argh(subcommand, name = "eval")]
pub struct EvalCmd {}

pub fn run(_c: EvalCmd) -> Result<()> {
    bail!("genesis eval is not built yet")
}
