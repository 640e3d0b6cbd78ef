//! Store snapshots into force on this replica: the agent registry (over the
//! agents file's JWT settings), the control API's store tokens, and the
//! policy in force (built and checked exactly as a reload of the file is).
//! A snapshot that does not build here is refused with a log line, a
//! metric and, for a policy, a `policy_rejected` audit line; the replica
//! keeps what it had.

use std::path::Path;
use std::sync::Arc;

use clawgress_control::{Kind, Snapshot};
use clawgress_policies::signing::KeyRing;
use clawgress_policies::{Diagnostic, PolicyBundle, PolicyError};

use crate::Gateway;
use crate::state::PolicySnapshot;

/// Loads a stored policy text as `clawgress policy check` loads a file:
/// the signature first when the gateway takes signed bundles only, then the
/// text (errors at `origin:line:column`), then the pricing file it names,
/// relative to `base_dir` (the `--policy` file's directory). Returns the
/// bundle and the key id of its signature.
pub fn policy_bundle(
    text: &str,
    origin: &str,
    base_dir: &Path,
    keys: Option<&KeyRing>,
) -> Result<(PolicyBundle, Option<String>), PolicyError> {
    let signed_by = match keys {
        Some(keys) => Some(
            clawgress_policies::signing::verify_bundle(text.as_bytes(), keys)
                .map_err(|problem| PolicyError::Unsigned {
                    origin: origin.to_string(),
                    problem,
                })?
                .key_id,
        ),
        None => None,
    };
    let mut bundle = clawgress_policies::load_str(text, origin)?;
    if let Some(file) = bundle.document.budgets.pricing_file.clone() {
        let path = base_dir.join(&file.value);
        let prices = clawgress_policies::load::load_pricing(&path).map_err(|error| match error {
            PolicyError::Read { .. } => PolicyError::Invalid(vec![Diagnostic {
                origin: origin.to_string(),
                line: file.line,
                column: file.column,
                message: format!("cannot read the pricing file {}", path.display()),
                hint: Some(
                    "the path is relative to the gateway's --policy file; policies/pricing.yaml ships list prices"
                        .to_string(),
                ),
            }]),
            other => other,
        })?;
        for (model, price) in prices {
            bundle.document.budgets.pricing.entry(model).or_insert(price);
        }
    }
    // Files the policy names (GeoIP databases) are found beside the
    // `--policy` file, as for a bundle loaded from there.
    bundle.source = base_dir.join(origin).display().to_string();
    Ok((bundle, signed_by))
}

/// Puts `snapshot` in force unless what is in force is as new; returns
/// whether it is now in force.
pub fn apply(gateway: &Gateway, snapshot: Snapshot) -> bool {
    let link = &gateway.store;
    let kind = snapshot.kind();
    if link.applied_revision(kind) >= snapshot.revision() && link.applied_revision(kind) > 0 {
        return true;
    }
    let ok = match &snapshot {
        Snapshot::Agents(agents) => {
            let base = link.file_identities.load();
            match base.with_store_agents(&agents.agents) {
                Ok(resolver) => {
                    gateway.identities.store(Arc::new(resolver));
                    tracing::info!(
                        revision = agents.revision,
                        agents = agents.agents.len(),
                        "agent registry from the control store in force"
                    );
                    true
                }
                Err(error) => {
                    tracing::error!(
                        revision = agents.revision,
                        "the control store's agents cannot be used here; the registry in force stays. {}",
                        error.to_string().replace('\n', " | ")
                    );
                    false
                }
            }
        }
        Snapshot::Tokens(tokens) => {
            gateway.admin_tokens.set_store_tokens(&tokens.tokens);
            tracing::info!(
                revision = tokens.revision,
                tokens = tokens.tokens.len(),
                "control API tokens from the store in force"
            );
            true
        }
        Snapshot::Policy(policy) => apply_policy(gateway, policy),
    };
    if ok {
        link.record_applied(snapshot);
    }
    ok
}

fn apply_policy(gateway: &Gateway, policy: &clawgress_control::PolicySnapshot) -> bool {
    let origin = format!("store-v{}-{}", policy.id, policy.name);
    let keys = gateway.policy_trust.keys.as_deref();
    let built = policy_bundle(&policy.body, &origin, &gateway.store.policy_dir, keys)
        .map_err(|e| (crate::integrity::rejection_reason(&e), e.to_string()))
        .and_then(|(bundle, _)| {
            if gateway.tls.ca.is_none()
                && let Some(rule) = crate::state::first_intercept_rule(&bundle.document)
            {
                return Err((
                    "invalid_bundle",
                    format!(
                        "the rule for {} says tls: intercept, but this gateway has no interception CA",
                        rule.domain.value
                    ),
                ));
            }
            PolicySnapshot::build(&bundle, Some(&gateway.policy.load()))
                .map_err(|e| ("invalid_bundle", format!("{e:#}")))
        });
    match built {
        Ok(snapshot) => {
            let version = snapshot.version.clone();
            let (concurrent, pending) = snapshot.containment_limits();
            gateway.containment.set_limits(concurrent, pending);
            gateway.policy.store(Arc::new(snapshot));
            gateway.metrics.record_policy_reload_success(&version);
            tracing::info!(%version, store_version = policy.id, revision = policy.revision, "policy from the control store in force");
            true
        }
        Err((reason, message)) => {
            let current = gateway.policy.load().version.clone();
            let message = message.replace('\n', " | ");
            gateway.metrics.record_policy_reload_failure();
            gateway.policy_trust.count_rejection(reason);
            tracing::error!(
                reason,
                store_version = policy.id,
                "the control store's policy cannot be used here; version {current} stays in force. {message}"
            );
            let event = crate::audit::PolicyEvent::rejected(&origin, reason, &message, &current);
            match gateway.audit.reserve_past_backlog() {
                Ok(slot) => slot.record(event),
                Err(error) => tracing::error!(%error, "cannot record the policy rejection in the audit trail"),
            }
            false
        }
    }
}

/// The store has nothing of `kind` any more: back to the file.
pub fn clear(gateway: &Gateway, kind: Kind) {
    let link = &gateway.store;
    if !link.forget(kind) {
        return;
    }
    match kind {
        Kind::Agents => {
            gateway.identities.store(link.file_identities.load_full());
            tracing::info!("the control store holds no agents any more: the agents file is in force");
        }
        Kind::Tokens => gateway.admin_tokens.set_store_tokens(&[]),
        Kind::Policy => {
            tracing::info!("the control store has no active policy any more: the policy file is in force");
            crate::reload::reload_policy(gateway, &link.policy_file);
        }
    }
}
