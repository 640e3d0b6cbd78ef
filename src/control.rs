//! `clawgress control ...`: the control plane's store (agents, policy
//! versions, quotas, tokens, history) as a client of the admin port's
//! `/v1/` API, with the same `--admin`, `--token` and `--json` as
//! `clawgress egress`. Output for people, one line per thing; `--json`
//! prints the API's answer.

mod show;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use hyper::Method;
use serde_json::{Value, json};

use crate::egress::{Api, encode};

#[derive(clap::Args)]
pub struct ControlArgs {
    /// The admin address of the gateway that holds the store (`--database`).
    #[arg(
        long,
        global = true,
        env = "CLAWGRESS_ADMIN_URL",
        default_value = "http://127.0.0.1:9128"
    )]
    admin: String,
    /// Bearer token for the control API.
    #[arg(long, global = true, env = "CLAWGRESS_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON instead of a summary.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: ControlCommand,
}

#[derive(clap::Subcommand)]
enum ControlCommand {
    /// The agent registry in the store.
    Agents {
        #[command(subcommand)]
        command: AgentsCommand,
    },
    /// Copy an agents file's agents into the store (keys keep their
    /// digests; the file's `jwt:` section stays in the file).
    ImportAgents {
        file: PathBuf,
        /// Leave agents the store already has as they are.
        #[arg(long)]
        skip_existing: bool,
    },
    /// Policy versions: upload, diff, activate, roll back.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Spend of each budget (agent, team, project) against its limit.
    Quotas,
    /// Control API tokens kept in the store (maintainer).
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// The store's change history, newest first.
    History {
        /// agent, policy or token.
        #[arg(long)]
        kind: Option<String>,
        /// One agent id, policy version or token name.
        #[arg(long)]
        target: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Where this gateway's agents, tokens and policy come from, and the
    /// store revisions it applied.
    Status,
}

/// Fields of an agent that `create` and `update` set.
#[derive(clap::Args)]
struct AgentFields {
    #[arg(long)]
    team: Option<String>,
    #[arg(long)]
    project: Option<String>,
    #[arg(long)]
    environment: Option<String>,
    /// e.g. scraper, ai-agent (policy groups select on it).
    #[arg(long)]
    role: Option<String>,
    /// A source CIDR (the transparent listener's identity); repeat for several.
    #[arg(long = "source")]
    sources: Vec<String>,
    /// A SPIFFE ID naming the agent on the mTLS listener; repeat for several.
    #[arg(long = "spiffe-id")]
    spiffe_ids: Vec<String>,
}

#[derive(clap::Subcommand)]
enum AgentsCommand {
    /// Every agent (a team-bound token: its teams' only).
    List {
        #[arg(long)]
        team: Option<String>,
    },
    Show {
        id: String,
    },
    /// A new agent; its API key is printed once.
    Create {
        id: String,
        #[command(flatten)]
        fields: AgentFields,
        /// No API key: the agent uses a JWT or a client certificate.
        #[arg(long)]
        no_key: bool,
    },
    /// Change an agent's attributes (`--source`/`--spiffe-id` replace the lists).
    Update {
        id: String,
        /// The agent's version, from `list` or `show`.
        #[arg(long)]
        version: i64,
        #[command(flatten)]
        fields: AgentFields,
        /// Clear the agent's sources.
        #[arg(long, conflicts_with = "sources")]
        no_sources: bool,
    },
    /// A new key, printed once; the old one works until the grace ends.
    Rotate {
        id: String,
        #[arg(long)]
        version: i64,
        /// How long the old key keeps working: 1h, 0s (stops at once), at most 30d.
        #[arg(long, default_value = "1h")]
        grace: String,
    },
    /// Refuse the agent's requests (`agent_disabled`) until enabled.
    Disable {
        id: String,
        #[arg(long)]
        version: i64,
    },
    Enable {
        id: String,
        #[arg(long)]
        version: i64,
    },
    Delete {
        id: String,
        #[arg(long)]
        version: i64,
    },
}

#[derive(clap::Subcommand)]
enum PolicyCommand {
    /// Keep FILE as a new version (validated like `policy check`; signed
    /// when the gateway runs with --policy-key). Not active until activated.
    Upload {
        file: PathBuf,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Versions, which one is active, and the activations.
    History,
    /// A version's text.
    Show {
        /// Number or digest.
        id: String,
    },
    /// What changes from one version to another: the allowlist summary and
    /// a unified diff [default: from the active version].
    Diff { from: String, to: Option<String> },
    /// Make a version the one in force on every replica (maintainer).
    Activate {
        id: String,
        /// The activation state's version, from `policy history`.
        #[arg(long)]
        version: i64,
    },
    /// Back to the version active before the current one (maintainer).
    Rollback {
        #[arg(long)]
        version: i64,
    },
}

#[derive(clap::Subcommand)]
enum TokensCommand {
    List,
    /// A new token, printed once.
    Create {
        name: String,
        /// viewer, operator or maintainer.
        #[arg(long)]
        role: String,
        /// Bind the token to a team; repeat for several [default: every team].
        #[arg(long = "team")]
        teams: Vec<String>,
    },
    Revoke {
        name: String,
        #[arg(long)]
        version: i64,
    },
}

pub fn run(args: ControlArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run_async(args))
}

fn fields(fields: &AgentFields, body: &mut Value) {
    for (key, value) in [
        ("team", &fields.team),
        ("project", &fields.project),
        ("environment", &fields.environment),
        ("role", &fields.role),
    ] {
        if let Some(value) = value {
            body[key] = json!(value);
        }
    }
    if !fields.sources.is_empty() {
        body["sources"] = json!(fields.sources);
    }
    if !fields.spiffe_ids.is_empty() {
        body["spiffe_ids"] = json!(fields.spiffe_ids);
    }
}

fn read_file(path: &PathBuf) -> anyhow::Result<(String, String)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = path
        .file_name()
        .map_or_else(|| "file".to_string(), |n| n.to_string_lossy().into_owned());
    Ok((name, text))
}

async fn run_async(args: ControlArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.admin, args.token.clone());
    let agent = |id: &str| format!("/v1/agents/{}", encode(id));
    let (method, path, body) = match &args.command {
        ControlCommand::Agents { command } => match command {
            AgentsCommand::List { team } => (
                Method::GET,
                match team {
                    Some(team) => format!("/v1/agents?team={}", encode(team)),
                    None => "/v1/agents".to_string(),
                },
                None,
            ),
            AgentsCommand::Show { id } => (Method::GET, agent(id), None),
            AgentsCommand::Create { id, fields: f, no_key } => {
                let missing: Vec<&str> = [
                    ("--team", &f.team),
                    ("--project", &f.project),
                    ("--environment", &f.environment),
                    ("--role", &f.role),
                ]
                .iter()
                .filter(|(_, v)| v.is_none())
                .map(|(k, _)| *k)
                .collect();
                if !missing.is_empty() {
                    anyhow::bail!("a new agent needs {}", missing.join(", "));
                }
                let mut body = json!({"id": id, "no_key": no_key});
                fields(f, &mut body);
                (Method::POST, "/v1/agents".to_string(), Some(body))
            }
            AgentsCommand::Update {
                id,
                version,
                fields: f,
                no_sources,
            } => {
                let mut body = json!({"version": version});
                fields(f, &mut body);
                if *no_sources {
                    body["sources"] = json!([]);
                }
                (Method::PATCH, agent(id), Some(body))
            }
            AgentsCommand::Rotate { id, version, grace } => (
                Method::POST,
                format!("{}/rotate", agent(id)),
                Some(json!({"version": version, "grace": grace})),
            ),
            AgentsCommand::Disable { id, version } => (
                Method::PATCH,
                agent(id),
                Some(json!({"version": version, "disabled": true})),
            ),
            AgentsCommand::Enable { id, version } => (
                Method::PATCH,
                agent(id),
                Some(json!({"version": version, "disabled": false})),
            ),
            AgentsCommand::Delete { id, version } => (Method::DELETE, format!("{}?version={version}", agent(id)), None),
        },
        ControlCommand::ImportAgents { file, skip_existing } => {
            let (name, text) = read_file(file)?;
            (
                Method::POST,
                "/v1/agents/import".to_string(),
                Some(json!({"name": name, "text": text, "skip_existing": skip_existing})),
            )
        }
        ControlCommand::Policy { command } => match command {
            PolicyCommand::Upload { file, comment } => {
                let (name, text) = read_file(file)?;
                (
                    Method::POST,
                    "/v1/policies".to_string(),
                    Some(json!({"name": name, "body": text, "comment": comment})),
                )
            }
            PolicyCommand::History => (Method::GET, "/v1/policies".to_string(), None),
            PolicyCommand::Show { id } => (Method::GET, format!("/v1/policies/{}", encode(id)), None),
            PolicyCommand::Diff { from, to } => {
                let mut path = format!("/v1/policies/diff?from={}", encode(from));
                if let Some(to) = to {
                    path.push_str(&format!("&to={}", encode(to)));
                }
                (Method::GET, path, None)
            }
            PolicyCommand::Activate { id, version } => (
                Method::POST,
                format!("/v1/policies/{}/activate", encode(id)),
                Some(json!({"version": version})),
            ),
            PolicyCommand::Rollback { version } => (
                Method::POST,
                "/v1/policies/rollback".to_string(),
                Some(json!({"version": version})),
            ),
        },
        ControlCommand::Quotas => (Method::GET, "/v1/quotas".to_string(), None),
        ControlCommand::Tokens { command } => match command {
            TokensCommand::List => (Method::GET, "/v1/tokens".to_string(), None),
            TokensCommand::Create { name, role, teams } => (
                Method::POST,
                "/v1/tokens".to_string(),
                Some(json!({"name": name, "role": role, "teams": teams})),
            ),
            TokensCommand::Revoke { name, version } => (
                Method::DELETE,
                format!("/v1/tokens/{}?version={version}", encode(name)),
                None,
            ),
        },
        ControlCommand::History { kind, target, limit } => {
            let mut query = vec![format!("limit={limit}")];
            query.extend(kind.iter().map(|k| format!("kind={}", encode(k))));
            query.extend(target.iter().map(|t| format!("target={}", encode(t))));
            (Method::GET, format!("/v1/history?{}", query.join("&")), None)
        }
        ControlCommand::Status => (Method::GET, "/v1/store".to_string(), None),
    };
    let (status, text) = api.call(method, &path, body).await?;
    let value: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
    if !status.is_success() {
        eprint!("{}", show::problem(&value, status));
        return Ok(ExitCode::FAILURE);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", show::summary(&args.command, &value, status));
    }
    Ok(ExitCode::SUCCESS)
}
