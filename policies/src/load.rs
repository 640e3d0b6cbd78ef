//! Loading a policy file: size and UTF-8 checks, bounded YAML parsing,
//! then the whole-document checks, each problem located as
//! `FILE:LINE:COLUMN` with a hint.

mod checks;
mod yaml_error;

use std::io::Read as _;
use std::path::Path;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

pub use crate::diagnostic::{Diagnostic, PolicyError};
use crate::model::PolicyDocument;

/// The largest policy file accepted. Real bundles are a few kilobytes; the
/// cap keeps a wrong path (a log file, a disk image) from eating memory.
pub const MAX_POLICY_BYTES: u64 = 4 * 1024 * 1024;

/// A loaded, checked policy.
#[derive(Debug, Clone)]
pub struct PolicyBundle {
    /// Where the text came from (the path, or the origin given to
    /// [`load_str`]).
    pub source: String,
    /// The first 12 hex digits of the SHA-256 of the file's bytes: names
    /// exactly this text in audit lines and metrics.
    pub version: String,
    pub document: PolicyDocument,
    /// Problems that do not stop the bundle from loading (expired entries,
    /// placeholder pins, rules shadowed by the blocklist), in file order.
    pub warnings: Vec<Diagnostic>,
}

impl PolicyBundle {
    /// One line for a process's log instead of one per warning, which would
    /// repeat at every start and reload: how many there are and the command
    /// that lists them with their lines and fixes. `None` without warnings.
    pub fn warnings_summary(&self) -> Option<String> {
        match self.warnings.len() {
            0 => None,
            n => Some(format!(
                "{}: {n} policy warning{} (entries that load but have no effect, e.g. expired or placeholder); \
                 `clawgress policy check {}` lists them with their lines and fixes",
                self.source,
                if n == 1 { "" } else { "s" },
                self.source
            )),
        }
    }
}

/// Reads and loads the policy file at `path`.
pub fn load_file(path: &Path) -> Result<PolicyBundle, PolicyError> {
    load_file_at(path, Utc::now())
}

/// [`load_file`] judging expiry against `now` instead of the clock.
pub fn load_file_at(path: &Path, now: DateTime<Utc>) -> Result<PolicyBundle, PolicyError> {
    load_file_checked(path, now, |_| Ok(())).map(|(bundle, ())| bundle)
}

/// [`load_file`] for a gateway that takes only signed bundles: the bytes
/// are read once, their signature checked against `keys`, and exactly
/// those bytes parsed. (The pricing file a bundle names is not covered by
/// the bundle's signature.)
pub fn load_file_verified(
    path: &Path,
    keys: &crate::signing::KeyRing,
) -> Result<(PolicyBundle, crate::signing::BundleSignature), PolicyError> {
    let origin = path.display().to_string();
    load_file_checked(path, Utc::now(), |bytes| {
        crate::signing::verify_bundle(bytes, keys).map_err(|problem| PolicyError::Unsigned { origin, problem })
    })
}

/// Reads the file, lets `check` judge its exact bytes, then loads them.
fn load_file_checked<T>(
    path: &Path,
    now: DateTime<Utc>,
    check: impl FnOnce(&[u8]) -> Result<T, PolicyError>,
) -> Result<(PolicyBundle, T), PolicyError> {
    let origin = path.display().to_string();
    let read_error = |source| PolicyError::Read {
        path: origin.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    // Read one byte past the cap so an oversized file is detected without
    // trusting the metadata (which lies for pipes and /proc files).
    let mut bytes = Vec::new();
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    let checked = check(&bytes)?;
    let mut bundle = load_bytes(&bytes, &origin, now)?;
    if let Some(file) = bundle.document.budgets.pricing_file.clone() {
        let pricing_path = path.parent().unwrap_or(Path::new(".")).join(&file.value);
        let prices = load_pricing(&pricing_path).map_err(|mut error| {
            if let PolicyError::Read { .. } = error {
                error = PolicyError::Invalid(vec![
                    Diagnostic::new(
                        &origin,
                        file.line,
                        file.column,
                        format!("cannot read the pricing file {}", pricing_path.display()),
                    )
                    .with_hint("the path is relative to the policy file; policies/pricing.yaml ships list prices"),
                ]);
            }
            error
        })?;
        for (model, price) in prices {
            bundle.document.budgets.pricing.entry(model).or_insert(price);
        }
    }
    Ok((bundle, checked))
}

/// Reads a `pricing:` file (`budgets.pricing_file`).
pub fn load_pricing(path: &Path) -> Result<std::collections::BTreeMap<String, crate::model::ModelPrice>, PolicyError> {
    let origin = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| PolicyError::Read {
        path: origin.clone(),
        source,
    })?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| PolicyError::Invalid(vec![Diagnostic::new(&origin, 1, 1, "the file is not valid UTF-8 text")]))?;
    let parsed: crate::model::PricingFile = serde_saphyr::from_str_with_options(text, parser_options())
        .map_err(|e| PolicyError::Invalid(vec![yaml_error::to_diagnostic(&e, &origin)]))?;
    Ok(parsed.pricing)
}

/// Loads policy text; `origin` names it in messages (e.g. the file name).
pub fn load_str(text: &str, origin: &str) -> Result<PolicyBundle, PolicyError> {
    load_str_at(text, origin, Utc::now())
}

/// [`load_str`] judging expiry against `now` instead of the clock.
pub fn load_str_at(text: &str, origin: &str, now: DateTime<Utc>) -> Result<PolicyBundle, PolicyError> {
    load_bytes(text.as_bytes(), origin, now)
}

fn load_bytes(bytes: &[u8], origin: &str, now: DateTime<Utc>) -> Result<PolicyBundle, PolicyError> {
    let size = bytes.len() as u64;
    if size > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge {
            origin: origin.to_string(),
            size,
            limit: MAX_POLICY_BYTES,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let (line, column) = position_of(bytes, e.valid_up_to());
        PolicyError::Invalid(vec![
            Diagnostic::new(origin, line, column, "the file is not valid UTF-8 text")
                .with_hint("save the file as UTF-8"),
        ])
    })?;
    let document = parse(text, origin)?;
    let findings = checks::check(&document, origin, now);
    if !findings.errors.is_empty() {
        return Err(PolicyError::Invalid(findings.errors));
    }
    Ok(PolicyBundle {
        source: origin.to_string(),
        version: version_of(bytes),
        document,
        warnings: findings.warnings,
    })
}

fn parse(text: &str, origin: &str) -> Result<PolicyDocument, PolicyError> {
    let parsed: Option<PolicyDocument> = serde_saphyr::from_str_with_options(text, parser_options())
        .map_err(|e| PolicyError::Invalid(vec![yaml_error::to_diagnostic(&e, origin)]))?;
    // An empty file would load as "deny everything"; far more likely it is
    // the wrong file or a truncated one.
    parsed.ok_or_else(|| {
        PolicyError::Invalid(vec![
            Diagnostic::new(origin, 1, 1, "the policy file is empty")
                .with_hint("start from policies/default.yaml; an empty allowlist is written `allowlist: {}`"),
        ])
    })
}

/// Limits far above any real policy and far below what hurts: nesting is a
/// few levels, aliases a handful. A YAML bomb or a deeply nested document
/// fails here with a location instead of exhausting memory or the stack.
fn parser_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = 32;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_nodes = 200_000;
    budget.max_events = 400_000;
    budget.max_documents = 1;
    budget.max_total_scalar_bytes = MAX_POLICY_BYTES as usize;
    budget.max_recorded_anchor_events = 100_000;
    budget.max_recorded_anchor_bytes = MAX_POLICY_BYTES as usize;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = 100_000;
    options.alias_limits.max_replay_stack_depth = 16;
    options.alias_limits.max_alias_expansions_per_anchor = 1_000;
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    // Snippets would repeat the source text in every error; ours are one line.
    options.with_snippet = false;
    options
}

fn version_of(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    hex::encode(&digest[..6])
}

/// The 1-based line and column of byte `offset`.
fn position_of(bytes: &[u8], offset: usize) -> (u32, u32) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    // `before` is valid UTF-8 up to offset, so counting chars is exact.
    let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}

#[cfg(test)]
mod tests;
