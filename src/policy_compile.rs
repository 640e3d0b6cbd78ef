//! `clawgress policy compile`: the policy rendered for a network layer
//! (issue 13 §3: nftables). Being built.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct CompileArgs {}

pub fn run(_args: CompileArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("clawgress policy compile is being built")
}
