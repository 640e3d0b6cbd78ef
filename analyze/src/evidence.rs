//! `clawgress audit evidence`: a directory an auditor can take away and
//! check on their own (seed 002 §9.2):
//!
//! | file | what |
//! |---|---|
//! | `records.jsonl` | every record from `--from` to `--to`, as the trail holds it (hash chain intact) |
//! | `admin_actions.jsonl` | the control-plane changes among them |
//! | `checkpoints.jsonl` | signed checkpoint lines in the range, and the first one after it |
//! | `policies/<version>.yaml` | the policy files given whose version was in force in the range |
//! | `policy_versions.json` | each `policy_version` the records name: lines, first and last seen, file (or missing) |
//! | `manifest.json` | the range, the source, counts, and SHA-256 and size of every file |
//! | `SHA256SUMS` | the same hashes for `sha256sum -c SHA256SUMS` |

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::line::Line;
use crate::source::TrailReader;

pub struct Request<'a> {
    pub trail: &'a Path,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub out: &'a Path,
    /// Policy files that may have been in force (current and past).
    pub policies: &'a [PathBuf],
}

#[derive(Debug, Serialize)]
pub struct PolicyVersion {
    pub version: String,
    pub records: u64,
    pub first_seen: String,
    pub last_seen: String,
    /// The bundle's file, when one of the given files has this version.
    pub file: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ManifestFile {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Manifest {
    pub created_at: String,
    pub from: String,
    pub to: String,
    pub source: String,
    pub records: u64,
    pub admin_actions: u64,
    pub checkpoints: u64,
    /// Undecodable lines in the range's neighbourhood, by `file:line`.
    pub skipped: Vec<String>,
    /// The `hash` of the first and last record: where the bundle sits in
    /// the trail's chain.
    pub first_hash: Option<String>,
    pub last_hash: Option<String>,
    pub policy_versions: Vec<PolicyVersion>,
    pub files: Vec<ManifestFile>,
}

/// The version the gateway gives a policy file: the first 12 hex digits of
/// the SHA-256 of its bytes.
pub fn policy_version(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))[..12].to_string()
}

/// Writes the bundle; refuses a directory that already has files in it
/// (evidence is never mixed with something else).
pub fn write(request: &Request<'_>) -> anyhow::Result<Manifest> {
    if request.out.exists()
        && std::fs::read_dir(request.out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        anyhow::bail!(
            "{} exists and is not empty; give a new directory for the evidence bundle",
            request.out.display()
        );
    }
    std::fs::create_dir_all(request.out.join("policies"))?;
    let (from, to) = (request.from.timestamp_millis(), request.to.timestamp_millis());
    let mut records = Vec::new();
    let mut admin = Vec::new();
    let mut checkpoints = Vec::new();
    let mut after_checkpoint = false;
    let mut skipped = Vec::new();
    let (mut n_records, mut n_admin, mut n_checkpoints) = (0u64, 0u64, 0u64);
    let (mut first_hash, mut last_hash) = (None, None);
    let mut versions: BTreeMap<String, (u64, String, String)> = BTreeMap::new();
    let mut reader = TrailReader::open(request.trail)
        .map_err(|e| anyhow::anyhow!("cannot read the trail {}: {e}", request.trail.display()))?;
    while let Some((number, bytes)) = reader.next_line()? {
        let line = match Line::parse(bytes) {
            Ok(line) => line,
            Err(why) => {
                skipped.push(format!("{}:{number}: {why}", request.trail.display()));
                continue;
            }
        };
        let at = line.at_ms();
        if line.kind == "checkpoint" {
            if (from..=to).contains(&at) || (at > to && !after_checkpoint) {
                after_checkpoint |= at > to;
                checkpoints.extend_from_slice(bytes);
                checkpoints.push(b'\n');
                n_checkpoints += 1;
            }
            continue;
        }
        if at < from || at >= to {
            continue;
        }
        records.extend_from_slice(bytes);
        records.push(b'\n');
        n_records += 1;
        let hash = serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| v["hash"].as_str().map(str::to_string));
        if first_hash.is_none() {
            first_hash.clone_from(&hash);
        }
        if hash.is_some() {
            last_hash = hash;
        }
        if line.kind == "admin_action" {
            admin.extend_from_slice(bytes);
            admin.push(b'\n');
            n_admin += 1;
        }
        if let Some(version) = line.policy_version.as_deref() {
            let seen = versions
                .entry(version.to_string())
                .or_insert_with(|| (0, line.timestamp.to_string(), String::new()));
            seen.0 += 1;
            seen.2 = line.timestamp.to_string();
        }
    }
    let mut files = Vec::new();
    let mut put = |name: &str, bytes: &[u8]| -> anyhow::Result<()> {
        std::fs::write(request.out.join(name), bytes)?;
        files.push(ManifestFile {
            path: name.to_string(),
            sha256: hex::encode(Sha256::digest(bytes)),
            bytes: bytes.len() as u64,
        });
        Ok(())
    };
    put("records.jsonl", &records)?;
    put("admin_actions.jsonl", &admin)?;
    put("checkpoints.jsonl", &checkpoints)?;
    let mut policy_files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for path in request.policies {
        let bytes =
            std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read the policy file {}: {e}", path.display()))?;
        // The loader's version when the file loads (it is what lines
        // record), the same digest of the raw bytes when it no longer does.
        let version = clawgress_policies::load_file(path)
            .map(|bundle| bundle.version)
            .unwrap_or_else(|_| policy_version(&bytes));
        policy_files.insert(version, bytes);
    }
    let mut policy_versions = Vec::new();
    for (version, (count, first, last)) in versions {
        let file = match policy_files.get(&version) {
            Some(bytes) => {
                let name = format!("policies/{version}.yaml");
                put(&name, bytes)?;
                Some(name)
            }
            None => None,
        };
        policy_versions.push(PolicyVersion {
            version,
            records: count,
            first_seen: first,
            last_seen: last,
            file,
        });
    }
    put("policy_versions.json", &serde_json::to_vec_pretty(&policy_versions)?)?;
    let manifest = Manifest {
        created_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        from: request.from.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        to: request.to.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        source: request.trail.display().to_string(),
        records: n_records,
        admin_actions: n_admin,
        checkpoints: n_checkpoints,
        skipped,
        first_hash,
        last_hash,
        policy_versions,
        files,
    };
    let manifest_bytes = serde_json::to_vec_pretty(&manifest)?;
    std::fs::write(request.out.join("manifest.json"), &manifest_bytes)?;
    let mut sums = std::fs::File::create(request.out.join("SHA256SUMS"))?;
    for file in &manifest.files {
        writeln!(sums, "{}  {}", file.sha256, file.path)?;
    }
    writeln!(sums, "{}  manifest.json", hex::encode(Sha256::digest(&manifest_bytes)))?;
    Ok(manifest)
}
