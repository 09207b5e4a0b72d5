//! `genesis verify` (under construction).

use anyhow::{bail, Result};
use argh::FromArgs;

/// Under construction.
#[derive(FromArgs)]
#[argh(subcommand, name = "verify")]
pub struct VerifyCmd {}

pub fn run(_c: VerifyCmd) -> Result<()> {
    bail!("genesis verify is not built yet")
}
