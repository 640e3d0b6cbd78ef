//! `clawgress policy compile`: the policy rendered for a network layer
//! (issue 13 §3: nftables; issue 14: Cilium). The compiler lives in
//! `clawgress_policies::compile`; this parses the flags, loads the policy and
//! writes the files.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clawgress_policies::compile::cilium::{self, CiliumSettings, ClusterDomain, NodeLabel};
use clawgress_policies::compile::nftables::{self, EdgeSettings, EgressIp, InterfaceName, WorkloadCidr};
use clawgress_policies::compile::{CompileError, Target};
use clawgress_policies::values::Port;

#[derive(clap::Args)]
pub struct CompileArgs {
    /// What to compile to: `nftables` (the host edge ruleset, for `nft -f`) or
    /// `cilium` (Kubernetes manifests, a directory for `kubectl apply -k`).
    #[arg(long)]
    target: Target,
    /// The policy bundle (YAML), e.g. policies/default.yaml.
    #[arg(long)]
    policy: PathBuf,
    /// A subnet the workloads send from, e.g. 10.42.0.0/24 or fd00:42::/64;
    /// repeat for more. An IPv6 subnet gets IPv6 rules.
    #[arg(long = "workload-cidr", value_name = "CIDR", required_if_eq("target", "nftables"))]
    workload_cidrs: Vec<WorkloadCidr>,
    /// The fixed address egress leaves from (SNAT), e.g. 203.0.113.7. nftables:
    /// this host's, exactly one. cilium: repeat for each egress node's address;
    /// without it, each egress node's own first IPv4 address.
    #[arg(long = "egress-ip", value_name = "IP", required_if_eq("target", "nftables"))]
    egress_ips: Vec<EgressIp>,
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
    /// cilium: the label of the nodes the gateway's egress leaves through.
    #[arg(long, value_name = "KEY=VALUE", default_value = NodeLabel::DEFAULT)]
    egress_node_label: NodeLabel,
    /// cilium: the cluster's DNS domain (the kubelet's --cluster-domain).
    #[arg(long, value_name = "DOMAIN", default_value = ClusterDomain::DEFAULT)]
    cluster_domain: ClusterDomain,
    /// nftables: write the ruleset here instead of standard output. cilium:
    /// the directory the manifests are written to (created if missing).
    #[arg(long, value_name = "PATH", required_if_eq("target", "cilium"))]
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
        Target::Cilium => {
            return match cilium_settings(&args).and_then(|settings| cilium::render(&bundle, &settings)) {
                Ok(files) => write_cilium(&args, &files),
                Err(error) => {
                    eprintln!("error: {error}");
                    Ok(ExitCode::from(2))
                }
            };
        }
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
    let egress_ip = match args.egress_ips.as_slice() {
        [ip] => *ip,
        [] => return Err(missing("--egress-ip")),
        _ => {
            return Err(CompileError::Setting(
                "--target nftables takes one --egress-ip: the host's own address on --egress-iface".to_string(),
            ));
        }
    };
    Ok(EdgeSettings {
        workload_cidrs: args.workload_cidrs.clone(),
        egress_ip,
        egress_iface: args.egress_iface.clone().ok_or_else(|| missing("--egress-iface"))?,
        transparent_port: args.transparent_port.ok_or_else(|| missing("--transparent-port"))?,
        dns_port: args.dns_port.ok_or_else(|| missing("--dns-port"))?,
        proxy_port: args.proxy_port,
    })
}

/// The Cilium flags; the host edge's own flags mean nothing here and are
/// refused rather than silently ignored.
fn cilium_settings(args: &CompileArgs) -> Result<CiliumSettings, CompileError> {
    let edge_only = [
        ("--workload-cidr", !args.workload_cidrs.is_empty()),
        ("--egress-iface", args.egress_iface.is_some()),
        ("--transparent-port", args.transparent_port.is_some()),
        ("--dns-port", args.dns_port.is_some()),
    ];
    if let Some((flag, _)) = edge_only.iter().find(|(_, given)| *given) {
        return Err(CompileError::Setting(format!(
            "{flag} is a --target nftables flag; the Cilium manifests take --egress-ip, --egress-node-label and \
             --cluster-domain"
        )));
    }
    Ok(CiliumSettings {
        egress_ips: args.egress_ips.clone(),
        egress_node_label: args.egress_node_label.clone(),
        cluster_domain: args.cluster_domain.clone(),
    })
}

/// Writes each manifest into the `--out` directory; files of ours that are
/// no longer generated are the operator's to remove (the list is printed).
fn write_cilium(args: &CompileArgs, files: &std::collections::BTreeMap<String, String>) -> anyhow::Result<ExitCode> {
    let dir = args.out.as_deref().context("--target cilium needs --out DIR")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, text) in files {
        write_whole(&dir.join(name), text)?;
    }
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    eprintln!(
        "wrote {} in {}; apply with: kubectl apply -k {}",
        names.join(", "),
        dir.display(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
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
