//! `clawgress dns`: the DNS control server (issue 13 §4). Being built.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct DnsArgs {}

pub fn run(_args: DnsArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("clawgress dns is being built")
}
