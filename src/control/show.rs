//! What `clawgress control` prints for people: one line per agent, version,
//! quota or change, and after a change what happened and what to do next.

use hyper::StatusCode;
use serde_json::Value;

use super::{AgentsCommand, ControlCommand, PolicyCommand, TokensCommand};

fn s(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

fn list(value: &Value) -> String {
    value
        .as_array()
        .map(|items| items.iter().map(s).collect::<Vec<_>>().join(","))
        .filter(|joined| !joined.is_empty())
        .unwrap_or_else(|| "-".to_string())
}

/// A refused call: what, why, what to do.
pub(super) fn problem(value: &Value, status: StatusCode) -> String {
    let mut out = format!(
        "error: {} ({status})\n",
        value["detail"].as_str().unwrap_or("the gateway refused")
    );
    if let Some(current) = value["current_version"].as_i64() {
        out.push_str(&format!("  current version: {current}\n"));
    }
    if let Some(hint) = value["hint"].as_str() {
        out.push_str(&format!("  hint: {hint}\n"));
    }
    out
}

/// Where a committed change got to.
fn propagation(value: &Value, status: StatusCode) -> String {
    let p = &value["propagation"];
    if p.is_null() {
        return String::new();
    }
    if status == StatusCode::ACCEPTED {
        format!(
            "committed at store revision {}, not yet in force everywhere ({}); the gateway keeps publishing it\n",
            p["revision"],
            if p["published"] == true {
                "published"
            } else {
                "NATS unreachable"
            }
        )
    } else {
        format!("in force (store revision {})\n", p["revision"])
    }
}

fn agent_line(a: &Value) -> String {
    let mut flags = Vec::new();
    if a["disabled"] == true {
        flags.push("DISABLED".to_string());
    }
    if let Some(until) = a["previous_key_until"].as_str() {
        flags.push(format!("old key until {until}"));
    }
    format!(
        "{:<24} v{:<3} {:<12} {:<14} {:<8} {:<10} key {:<9} sources {} {}\n",
        s(&a["id"]),
        s(&a["version"]),
        s(&a["team"]),
        s(&a["project"]),
        s(&a["environment"]),
        s(&a["role"]),
        s(&a["key_id"]),
        list(&a["sources"]),
        flags.join(", ")
    )
}

pub(super) fn summary(command: &ControlCommand, value: &Value, status: StatusCode) -> String {
    let mut out = String::new();
    match command {
        ControlCommand::Agents { command } => match command {
            AgentsCommand::List { .. } => {
                out.push_str(&format!(
                    "{:<24} {:<4} {:<12} {:<14} {:<8} {:<10} {}\n",
                    "AGENT", "VER", "TEAM", "PROJECT", "ENV", "ROLE", "KEY"
                ));
                for a in value["agents"].as_array().into_iter().flatten() {
                    out.push_str(&agent_line(a));
                }
            }
            AgentsCommand::Show { .. } => {
                out.push_str(&agent_line(value));
                out.push_str(&format!(
                    "spiffe ids {}\nupdated {} by {}\n",
                    list(&value["spiffe_ids"]),
                    s(&value["updated_at"]),
                    s(&value["updated_by"])
                ));
            }
            AgentsCommand::Create { id, .. } => {
                out.push_str(&format!("agent {id} created (version 1)\n"));
                if let Some(key) = value["api_key"].as_str() {
                    out.push_str(&format!(
                        "api key (shown once, only its SHA-256 is kept): {key}\n  use: curl -x http://GATEWAY:3128 -U {id}:{key} ...\n"
                    ));
                }
            }
            AgentsCommand::Rotate { id, .. } => {
                out.push_str(&format!(
                    "agent {id} has a new key (version {}): {}\n  shown once; the old key works until {}\n",
                    s(&value["agent"]["version"]),
                    s(&value["api_key"]),
                    s(&value["previous_key_until"])
                ));
            }
            AgentsCommand::Update { id, .. } | AgentsCommand::Disable { id, .. } | AgentsCommand::Enable { id, .. } => {
                out.push_str(&format!(
                    "agent {id} is now version {}{}\n",
                    s(&value["version"]),
                    if value["disabled"] == true { " (disabled)" } else { "" }
                ));
            }
            AgentsCommand::Delete { id, .. } => out.push_str(&format!("agent {id} deleted\n")),
        },
        ControlCommand::ImportAgents { .. } => {
            let imported = value["imported"].as_array().map_or(0, Vec::len);
            out.push_str(&format!("imported {imported} agents"));
            let skipped = list(&value["skipped"]);
            if skipped != "-" {
                out.push_str(&format!(", skipped (already in the store): {skipped}"));
            }
            out.push('\n');
        }
        ControlCommand::Policy { command } => match command {
            PolicyCommand::Upload { .. } => {
                out.push_str(&format!(
                    "uploaded as version {} (digest {}); not active yet\n  activate: clawgress control policy activate {} --version N (N from `policy history`)\n",
                    s(&value["id"]),
                    s(&value["digest"]),
                    s(&value["id"])
                ));
                for warning in value["warnings"].as_array().into_iter().flatten() {
                    out.push_str(&format!("  warning: {}\n", s(warning)));
                }
            }
            PolicyCommand::History => {
                out.push_str(&format!(
                    "active: {}   activation version: {}   in force here: {} (from the {})\n",
                    s(&value["active_id"]),
                    s(&value["version"]),
                    s(&value["in_force_here"]),
                    s(&value["from"])
                ));
                for v in value["versions"].as_array().into_iter().flatten() {
                    let active = if v["id"] == value["active_id"] { "*" } else { " " };
                    out.push_str(&format!(
                        "{active} v{:<4} {:<13} {:<24} {} by {:<14} {}\n",
                        s(&v["id"]),
                        s(&v["digest"]),
                        s(&v["name"]),
                        s(&v["created_at"]),
                        s(&v["created_by"]),
                        s(&v["comment"])
                    ));
                }
                for a in value["activations"].as_array().into_iter().take(10).flatten() {
                    out.push_str(&format!(
                        "  {} v{} at {} by {}\n",
                        s(&a["action"]),
                        s(&a["policy_id"]),
                        s(&a["at"]),
                        s(&a["actor"])
                    ));
                }
            }
            PolicyCommand::Show { .. } => out.push_str(value["body"].as_str().unwrap_or_default()),
            PolicyCommand::Diff { .. } => {
                out.push_str(value["summary"].as_str().unwrap_or("(no allowlist summary)\n"));
                out.push('\n');
                out.push_str(value["unified"].as_str().unwrap_or_default());
            }
            PolicyCommand::Activate { .. } | PolicyCommand::Rollback { .. } => {
                out.push_str(&format!(
                    "version {} ({}) is active; activation version {}\n",
                    s(&value["policy"]["id"]),
                    s(&value["policy"]["digest"]),
                    s(&value["version"])
                ));
            }
        },
        ControlCommand::Quotas => {
            out.push_str(&format!(
                "{:<20} {:<8} {:<24} {:<7} {:>12} {:>12} {:>10} {:>10} {:>6}  resets\n",
                "BUDGET", "SCOPE", "ID", "WINDOW", "TOKENS", "LIMIT", "USD", "LIMIT", "USED"
            ));
            for q in value["quotas"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "{:<20} {:<8} {:<24} {:<7} {:>12} {:>12} {:>10.2} {:>10} {:>5.0}%  {}{}\n",
                    s(&q["policy_id"]),
                    s(&q["scope"]),
                    s(&q["id"]),
                    s(&q["window"]),
                    s(&q["spent_tokens"]),
                    s(&q["limit_tokens"]),
                    q["spent_cost_usd"].as_f64().unwrap_or(0.0),
                    s(&q["limit_cost_usd"]),
                    q["used_ratio"].as_f64().unwrap_or(0.0) * 100.0,
                    s(&q["resets_at"]),
                    q["error"].as_str().map_or(String::new(), |e| format!("  ({e})"))
                ));
            }
            if let Some(note) = value["note"].as_str() {
                out.push_str(&format!("{note}\n"));
            }
        }
        ControlCommand::Tokens { command } => match command {
            TokensCommand::List => {
                for t in value["tokens"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "{:<24} v{:<3} {:<11} teams {:<20} id {} by {}\n",
                        s(&t["name"]),
                        s(&t["version"]),
                        s(&t["role"]),
                        list(&t["teams"]),
                        s(&t["token_id"]),
                        s(&t["created_by"])
                    ));
                }
            }
            TokensCommand::Create { name, .. } => out.push_str(&format!(
                "token for {name} (shown once, only its SHA-256 is kept): {}\n",
                s(&value["secret"])
            )),
            TokensCommand::Revoke { name, .. } => out.push_str(&format!("token {name} revoked\n")),
        },
        ControlCommand::History { .. } => {
            for h in value["history"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "r{:<5} {} {:<16} {:<10} {:<7} {:<24} {}\n",
                    s(&h["revision"]),
                    s(&h["at"]),
                    s(&h["actor"]),
                    s(&h["action"]),
                    s(&h["kind"]),
                    s(&h["target"]),
                    h["detail"]
                ));
            }
        }
        ControlCommand::Status => {
            let holder = &value["holder"];
            out.push_str(&match holder.is_null() {
                true => "store: not held here (no --database)\n".to_string(),
                false => format!(
                    "store: {} ({})\n",
                    s(&holder["database"]),
                    if holder["open"] == true {
                        "open".to_string()
                    } else {
                        format!("not reachable: {}", s(&holder["error"]))
                    }
                ),
            });
            if !value["bucket"].is_null() {
                out.push_str(&format!(
                    "bucket: {} (synced {}, connected {})\n",
                    s(&value["bucket"]["name"]),
                    value["bucket"]["synced"],
                    value["bucket"]["connected"]
                ));
            }
            out.push_str(&format!(
                "agents from the {} (revision {}), policy from the {} (revision {}), tokens revision {}\n",
                s(&value["agents_from"]),
                value["applied"]["agents"],
                s(&value["policy_from"]),
                value["applied"]["policy"],
                value["applied"]["tokens"]
            ));
        }
    }
    out.push_str(&propagation(value, status));
    out
}
