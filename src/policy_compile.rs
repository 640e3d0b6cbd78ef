//! `clawgress policy compile`: the policy rendered for a network layer
//! (issue 13 §3: nftables). The compiler lives in `clawgress_policies::compile`;
//! this parses the flags, loads the policy and writes the file.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clawgress_policies::compile::nftables::{self, EdgeSettings, EgressIp, InterfaceName, WorkloadCidr};
use clawgress_policies::compile::{CompileError, Target};
use clawgress_policies::values::Port;

#[derive(clap::Args)]
pub struct CompileArgs {
    /// What to compile to: `nftables` (the host edge ruleset, for `nft -f`).
    #[arg(long)]
    target: Target,
    /// The policy bundle (YAML), e.g. policies/default.yaml.
    #[arg(long)]
    policy: PathBuf,
    /// A subnet the workloads send from, e.g. 10.42.0.0/24 or fd00:42::/64;
    /// repeat for more. An IPv6 subnet gets IPv6 rules.
    #[arg(long = "workload-cidr", value_name = "CIDR", required_if_eq("target", "nftables"))]
    workload_cidrs: Vec<WorkloadCidr>,
    /// The fixed address this host's egress leaves from (SNAT), e.g. 203.0.113.7.
    #[arg(long, value_name = "IP", required_if_eq("target", "nftables"))]
    egress_ip: Option<EgressIp>,
    /// The interface egress leaves through, e.g. eth0.
    #[arg(long, value_name = "IF", required_if_eq("target", "nftables"))]
    egress_iface: Option<InterfaceName>,
    /// The gateway's transparent listener; workload TCP to allowlisted ports is redirected here.
    #[arg(long, value_name = "PORT", required_if_eq("target", "nftables"))]
    transparent_port: Option<Port>,
    /// The DNS control server; workload UDP and TCP port 53 is redirected here.
    #[arg(long, value_name = "PORT", required_if_eq("target", "nftables"))]
    dns_port: Option<Port>,
    /// The gateway's explicit proxy port, which workloads may reach directly.
    #[arg(long, value_name = "PORT", default_value = "3128")]
    proxy_port: Port,
    /// Write the ruleset here instead of standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub fn run(args: CompileArgs) -> anyhow::Result<ExitCode> {
    let bundle = match clawgress_policies::load_file(&args.policy) {
        Ok(bundle) => bundle,
        Err(error) => {
            eprintln!("{error}");
            return Ok(ExitCode::from(2));
        }
    };
    // Standard output may be the ruleset itself; warnings are `policy check`'s to list.
    if !bundle.warnings.is_empty() {
        eprintln!(
            "note: the policy has {} warning(s); `clawgress policy check {}` lists them",
            bundle.warnings.len(),
            args.policy.display()
        );
    }
    let compiled = match args.target {
        Target::Nftables => edge_settings(&args).and_then(|settings| nftables::render(&bundle, &settings)),
    };
    let text = match compiled {
        Ok(text) => text,
        Err(error) => {
            eprintln!("error: {error}");
            return Ok(ExitCode::from(2));
        }
    };
    match &args.out {
        Some(path) => {
            write_whole(path, &text)?;
            eprintln!("wrote {}; load it with: nft -f {}", path.display(), path.display());
        }
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The nftables flags, which clap already requires for this target.
fn edge_settings(args: &CompileArgs) -> Result<EdgeSettings, CompileError> {
    let missing = |flag: &str| CompileError::Setting(format!("--target nftables needs {flag}"));
    Ok(EdgeSettings {
        workload_cidrs: args.workload_cidrs.clone(),
        egress_ip: args.egress_ip.ok_or_else(|| missing("--egress-ip"))?,
        egress_iface: args.egress_iface.clone().ok_or_else(|| missing("--egress-iface"))?,
        transparent_port: args.transparent_port.ok_or_else(|| missing("--transparent-port"))?,
        dns_port: args.dns_port.ok_or_else(|| missing("--dns-port"))?,
        proxy_port: args.proxy_port,
    })
}

/// Writes beside `path` and renames, so a boot-time `nft -f` never reads a
/// half-written ruleset.
fn write_whole(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    std::fs::write(&partial, text).with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("cannot replace {}", path.display()))
}
