//! `clawgress keys init`, `policy sign|verify`, `audit verify [--key]`, and
//! the gateway's audit durability, shipping and signing flags.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr as _;
use std::time::Duration;

use anyhow::Context as _;
use clawgress_gateway::audit::{FsyncPolicy, VerifyReport};
use clawgress_gateway::integrity::{CHECKPOINT_EVERY, IntegrityOptions, WAL_MAX_BYTES};
use clawgress_policies::signing::{self, KeyRing, SigningKey};

#[derive(clap::Args)]
pub struct IntegrityArgs {
    /// When a record counts as written, which is when the response it
    /// records is released: `every` (fsync of each group commit: survives a
    /// power loss), `interval` (write(2) now, fsync within 100 ms: survives
    /// a gateway crash) or `never` (fsync only at shutdown).
    #[arg(long, env = "CLAWGRESS_AUDIT_FSYNC", default_value = "interval", value_parser = FsyncPolicy::from_str)]
    audit_fsync: FsyncPolicy,
    /// Ed25519 private key (`clawgress keys init`) that signs checkpoints
    /// of the audit trail. Mode 0600; refused when others may read it.
    #[arg(long, env = "CLAWGRESS_AUDIT_KEY", value_name = "FILE")]
    audit_key: Option<PathBuf>,
    /// A signed checkpoint after this many records...
    #[arg(long, default_value_t = CHECKPOINT_EVERY, requires = "audit_key")]
    audit_checkpoint_every: u64,
    /// ... or this many seconds after the first unsigned one.
    #[arg(long, default_value_t = 10, requires = "audit_key")]
    audit_checkpoint_interval_secs: u64,
    /// Replicas of the audit streams (with --nats): `auto` is 1 on one
    /// server, 3 on a cluster of 3 or more [default: --replicas]. An
    /// existing stream with fewer is reported and not used.
    #[arg(long, env = "CLAWGRESS_AUDIT_REPLICAS", value_name = "auto|N")]
    audit_replicas: Option<clawgress_nats::Replicas>,
    /// Trail bytes not yet acknowledged by the audit streams before
    /// `egress.fail_mode` decides (closed: refuse; open: keep writing).
    #[arg(long, env = "CLAWGRESS_AUDIT_WAL_MAX_BYTES", default_value_t = WAL_MAX_BYTES)]
    audit_wal_max_bytes: u64,
    /// Public key a policy bundle must be signed by (`clawgress policy
    /// sign`); repeat during a key rotation. Unsigned or badly signed
    /// bundles are refused at start; on reload the last good one stays.
    #[arg(long, env = "CLAWGRESS_POLICY_KEY", value_name = "FILE")]
    policy_key: Vec<PathBuf>,
}

impl IntegrityArgs {
    pub fn options(self) -> IntegrityOptions {
        IntegrityOptions {
            fsync: self.audit_fsync,
            audit_key: self.audit_key,
            checkpoint_every: self.audit_checkpoint_every.max(1),
            checkpoint_interval: Duration::from_secs(self.audit_checkpoint_interval_secs.max(1)),
            replicas: self.audit_replicas,
            wal_max_bytes: self.audit_wal_max_bytes.max(1),
            policy_keys: self.policy_key,
        }
    }
}

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Create Ed25519 key pairs: `audit` (the gateway signs checkpoints
    /// with audit.key) and `policy` (whoever approves bundles signs with
    /// policy.key; gateways get only policy.pub). Private keys are 0600.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Only this pair (NAME.key, NAME.pub).
        #[arg(long)]
        name: Option<String>,
        /// Replace existing pairs.
        #[arg(long)]
        force: bool,
    },
}

pub fn keys(command: KeysCommand) -> anyhow::Result<ExitCode> {
    let KeysCommand::Init { dir, name, force } = command;
    let names = match &name {
        Some(name) => vec![name.as_str()],
        None => vec!["audit", "policy"],
    };
    for name in names {
        let (private, public, key_id) = signing::init_key_pair(&dir, name, force)?;
        println!(
            "{name}: key id {key_id}; private {} (0600, keep it secret), public {}",
            private.display(),
            public.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `policy sign --key PRIV FILE`: the signature becomes FILE's last line.
pub fn policy_sign(key: &Path, file: &Path) -> anyhow::Result<ExitCode> {
    let key = SigningKey::load(key)?;
    // Signing says "this is the policy": never for a file that does not load.
    if let Err(error) = clawgress_policies::load_file(file) {
        eprintln!("{error}");
        eprintln!("{}: not signed: the bundle is not valid", file.display());
        return Ok(ExitCode::from(2));
    }
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let signed = signing::sign_bundle(&bytes, &key);
    // Replaced in one rename: a gateway watching the file never reads half.
    let temp = file.with_extension("signing");
    std::fs::write(&temp, &signed).with_context(|| format!("cannot write {}", temp.display()))?;
    if let Ok(meta) = std::fs::metadata(file) {
        let _ = std::fs::set_permissions(&temp, meta.permissions());
    }
    std::fs::rename(&temp, file).with_context(|| format!("cannot replace {}", file.display()))?;
    println!("{}: signed with key {}", file.display(), key.key_id());
    Ok(ExitCode::SUCCESS)
}

/// `policy verify --key PUB FILE`.
pub fn policy_verify(keys: &[PathBuf], file: &Path) -> anyhow::Result<ExitCode> {
    let ring = KeyRing::load(keys)?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    match signing::verify_bundle(&bytes, &ring) {
        Ok(signature) => {
            println!(
                "{}: signature by key {} verified (line {})",
                file.display(),
                signature.key_id,
                signature.line
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(problem) => {
            eprintln!("{}:{}: {problem}", file.display(), problem.line());
            Ok(ExitCode::from(1))
        }
    }
}

/// `audit verify FILE [--key PUB]...`.
pub fn audit_verify(file: &Path, keys: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let verified = if keys.is_empty() {
        clawgress_gateway::audit::verify_file(file).map(|report| (report, None))
    } else {
        let ring = KeyRing::load(keys)?;
        clawgress_gateway::audit::verify_file_signed(file, &ring).map(|(report, signed)| (report, Some(signed)))
    };
    let (report, signed) = match verified {
        Ok(verified) => verified,
        Err(clawgress_gateway::audit::VerifyError::BadLine { line, problem }) => {
            eprintln!("{}:{line}: {problem}", file.display());
            return Ok(ExitCode::from(1));
        }
        Err(error) => {
            eprintln!("{}: {error}", file.display());
            return Ok(ExitCode::from(1));
        }
    };
    print_report(file, &report);
    if let Some(signed) = signed {
        println!(
            "{}: {} checkpoint(s) verified (key {}), signed through line {}",
            file.display(),
            signed.checkpoints,
            signed.key_ids.join(", "),
            signed.signed_through
        );
        if signed.unsigned_records > 0 {
            println!(
                "{}: {} record(s) after line {} are not signed yet (a running gateway signs every --audit-checkpoint-every records or seconds, and on shutdown)",
                file.display(),
                signed.unsigned_records,
                signed.signed_through
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(file: &Path, report: &VerifyReport) {
    println!(
        "{}: {} lines, chain intact, last hash {}",
        file.display(),
        report.lines,
        report.last_hash
    );
    if !report.torn_lines.is_empty() {
        println!(
            "{}: torn fragments at line(s) {:?}: writes cut off by earlier crashes, kept as found and marked by audit_chain_resumed",
            file.display(),
            report.torn_lines
        );
    }
    if let Some(torn) = report.torn_tail {
        println!(
            "{}:{}: torn tail: {} byte(s) in {} line(s) after the last complete record, a write cut off by a crash; \
             every record before it is intact, and the gateway's next start keeps the fragment and continues the chain \
             after it (audit_chain_resumed)",
            file.display(),
            torn.first_line,
            torn.bytes,
            torn.lines
        );
    }
}
