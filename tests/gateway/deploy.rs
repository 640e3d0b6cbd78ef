//! Issue 14, deployment: the Kubernetes overlays render with `kubectl
//! kustomize` and pass Kubernetes' own schemas (and Cilium's, for the Cilium
//! objects), every container is hardened and pinned, no Secret carries a
//! real value, and the generated files (`cilium/`, the PrometheusRule) are
//! what their generators produce. The container image: `image.rs`; the
//! Cilium manifests against their CRD schemas: `cilium.rs`.

mod cilium;
mod image;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn repo(path: &str) -> PathBuf {
    Path::new(REPO).join(path)
}

/// A tool from the project's virtualenv (deploy/local/prereqs.sh puts
/// kubectl, kubernetes-validate and Python with jsonschema there), else
/// from PATH.
fn tool(name: &str) -> Option<PathBuf> {
    let venv = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .map(|d| d.join("clawgress/venv/bin").join(name))
        .filter(|p| p.is_file());
    venv.or_else(|| {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

fn run(command: &mut Command) -> (bool, String) {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Every document of a YAML stream, as JSON values (nulls from empty
/// documents dropped).
fn documents(text: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn name_of(doc: &Value) -> String {
    format!(
        "{}/{}/{}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["namespace"].as_str().unwrap_or("-"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// What the overlays need, copied with their relative layout into a
/// temporary directory, with each `secrets/X.example` also written as
/// `secrets/X` (what an operator does first), then every overlay rendered.
fn render_overlays() -> Option<BTreeMap<String, Vec<Value>>> {
    let Some(kubectl) = tool("kubectl") else {
        support::skip("kubectl not found (./deploy/local/prereqs.sh kubectl; `make test` does)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    for tree in ["deploy/k8s", "deploy/grafana", "cilium"] {
        copy_tree(&repo(tree), &dir.path().join(tree));
    }
    for file in [
        "policies/kustomization.yaml",
        "policies/default.yaml",
        "policies/pricing.yaml",
        "synthetic/kustomization.yaml",
        "synthetic/checks.yaml",
    ] {
        let to = dir.path().join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(repo(file), to).unwrap();
    }
    let mut rendered = BTreeMap::new();
    for overlay in ["dev", "prod"] {
        let root = dir.path().join("deploy/k8s/overlays").join(overlay);
        for entry in std::fs::read_dir(root.join("secrets")).unwrap() {
            let path = entry.unwrap().path();
            if let Some(real) = path.to_str().and_then(|p| p.strip_suffix(".example")) {
                std::fs::copy(&path, real).unwrap();
            }
        }
        let (ok, text) = run(Command::new(&kubectl).arg("kustomize").arg(&root));
        assert!(ok, "kubectl kustomize deploy/k8s/overlays/{overlay}:\n{text}");
        rendered.insert(overlay.to_string(), documents(&text));
    }
    Some(rendered)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Kinds Kubernetes' own schemas do not know: checked here by other means.
const CILIUM_KINDS: [&str; 2] = ["CiliumNetworkPolicy", "CiliumEgressGatewayPolicy"];
const OPERATOR_KINDS: [&str; 2] = ["ServiceMonitor", "PrometheusRule"];

#[test]
fn every_overlay_renders_and_passes_the_kubernetes_and_cilium_schemas() {
    let Some(rendered) = render_overlays() else { return };
    let Some(validator) = tool("kubernetes-validate") else {
        support::skip("kubernetes-validate not found (./deploy/local/prereqs.sh k8s-schemas; `make test` does)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (overlay, docs) in &rendered {
        // Kubernetes' schemas, strictly (an unknown field is an error), for
        // Kubernetes 1.31. CRD kinds are not in them: kubernetes-validate
        // would only say so.
        let core: Vec<String> = docs
            .iter()
            .filter(|d| {
                let kind = d["kind"].as_str().unwrap_or_default();
                !CILIUM_KINDS.contains(&kind) && !OPERATOR_KINDS.contains(&kind)
            })
            .map(|d| serde_json::to_string(d).unwrap())
            .collect();
        let file = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&file, core.join("\n---\n")).unwrap();
        let (ok, text) = run(Command::new(&validator)
            .args(["--strict", "--kubernetes-version", "1.31.0"])
            .arg(&file));
        assert!(ok, "{overlay}: kubernetes-validate:\n{text}");
        for kind in [
            "deployment/egress-gateway",
            "statefulset/nats",
            "cronjob/clawgress-synthetic",
        ] {
            assert!(text.contains(kind), "{overlay}: {kind} was not validated:\n{text}");
        }
        let cilium: Vec<&Value> = docs
            .iter()
            .filter(|d| CILIUM_KINDS.contains(&d["kind"].as_str().unwrap_or_default()))
            .collect();
        assert_eq!(
            cilium.len(),
            13,
            "{overlay}: the compiled Cilium objects are all included"
        );
        let Some(verdict) = cilium::validate(&cilium) else {
            return;
        };
        assert!(verdict.0, "{overlay}: Cilium objects:\n{}", verdict.1);
        operator_objects_are_well_formed(overlay, docs);
    }
}

/// ServiceMonitor and PrometheusRule have no schema here: their shape is
/// checked against what the Prometheus Operator reads.
fn operator_objects_are_well_formed(overlay: &str, docs: &[Value]) {
    let monitors: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "ServiceMonitor").collect();
    assert_eq!(monitors.len(), 2, "{overlay}");
    for monitor in monitors {
        assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
        let namespace = monitor["metadata"]["namespace"].as_str().unwrap();
        let selector = monitor["spec"]["selector"]["matchLabels"].as_object().unwrap();
        let endpoints = monitor["spec"]["endpoints"].as_array().unwrap();
        // Each selects a Service in its namespace that has the named port.
        let service = docs
            .iter()
            .find(|d| {
                d["kind"] == "Service"
                    && d["metadata"]["namespace"] == namespace
                    && selector.iter().all(|(k, v)| &d["metadata"]["labels"][k] == v)
            })
            .unwrap_or_else(|| panic!("{overlay}: {} selects no Service", name_of(monitor)));
        for endpoint in endpoints {
            let port = endpoint["port"].as_str().unwrap();
            let ports = service["spec"]["ports"].as_array().unwrap();
            assert!(ports.iter().any(|p| p["name"] == port), "{overlay}: no port {port}");
            assert_eq!(endpoint["path"], "/metrics");
        }
    }
    let rules: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "PrometheusRule").collect();
    assert_eq!(rules.len(), 1, "{overlay}");
    let groups = rules[0]["spec"]["groups"].as_array().unwrap();
    assert!(groups.len() >= 2, "{overlay}");
    for group in groups {
        assert!(group["name"].is_string(), "{group}");
        for rule in group["rules"].as_array().unwrap() {
            assert!(rule["record"].is_string() != rule["alert"].is_string(), "{rule}");
            assert!(rule["expr"].is_string(), "{rule}");
        }
    }
}

/// Each pod template in the rendered objects, with its namespace.
fn pod_templates(docs: &[Value]) -> Vec<(String, &Value, &Value)> {
    docs.iter()
        .filter_map(|d| {
            let template = match d["kind"].as_str()? {
                "Deployment" | "StatefulSet" => &d["spec"]["template"],
                "CronJob" => &d["spec"]["jobTemplate"]["spec"]["template"],
                _ => return None,
            };
            Some((name_of(d), template, d))
        })
        .collect()
}

#[test]
fn every_container_is_hardened_limited_probed_and_pinned() {
    let Some(rendered) = render_overlays() else { return };
    for (overlay, docs) in &rendered {
        let templates = pod_templates(docs);
        assert_eq!(
            templates.len(),
            5,
            "{overlay}: gateway, scheduler, Steel, NATS, synthetic"
        );
        for (name, template, _) in templates {
            let pod = &template["spec"];
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{overlay} {name}");
            assert_eq!(
                pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                "{name}"
            );
            for container in pod["containers"].as_array().unwrap() {
                let what = format!("{overlay} {name} container {}", container["name"]);
                let security = &container["securityContext"];
                assert_eq!(security["allowPrivilegeEscalation"], false, "{what}");
                assert_eq!(security["readOnlyRootFilesystem"], true, "{what}");
                assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]), "{what}");
                for bound in ["requests", "limits"] {
                    for resource in ["cpu", "memory"] {
                        assert!(
                            container["resources"][bound][resource].is_string(),
                            "{what}: {bound}.{resource}"
                        );
                    }
                }
                // A container that serves is probed; the CronJob's serves nothing.
                if container["ports"].is_array() {
                    assert!(container["readinessProbe"].is_object(), "{what}: readinessProbe");
                    assert!(container["livenessProbe"].is_object(), "{what}: livenessProbe");
                }
                let image = container["image"].as_str().unwrap();
                let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
                assert!(
                    !tag.is_empty() && !tag.contains('/') && tag != "latest",
                    "{what}: image {image} is not pinned by tag"
                );
                if image.contains("clawgress/clawgress") {
                    assert_eq!(
                        image, "ghcr.io/clawgress/clawgress:0.1.0",
                        "{what}: one image for every process"
                    );
                }
            }
        }
    }
}

/// Fields of the secret files that name things rather than hold secrets.
const STRUCTURAL_FIELDS: [&str; 6] = ["id", "team", "project", "environment", "role", "name"];

#[test]
fn secrets_carry_only_placeholders_and_are_never_committed() {
    let Some(rendered) = render_overlays() else { return };
    for (overlay, docs) in &rendered {
        let secrets: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Secret").collect();
        assert_eq!(secrets.len(), 3, "{overlay}");
        for secret in secrets {
            for (key, value) in secret["data"].as_object().unwrap() {
                use base64::Engine as _;
                // Long values come wrapped over several lines.
                let encoded: String = value.as_str().unwrap().split_whitespace().collect();
                let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
                let text = String::from_utf8(bytes).unwrap();
                let what = format!("{overlay} {} {key}", name_of(secret));
                assert!(text.contains("REPLACE_ME"), "{what}: {text}");
                // Every value is a placeholder, but for the fields that name
                // things (an agent's id, team, role...): no digest or key slipped in.
                for line in text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                {
                    let carries_value = match line.trim_start_matches("- ").split_once(':') {
                        None => true,
                        Some((field, value)) => !value.trim().is_empty() && !STRUCTURAL_FIELDS.contains(&field),
                    };
                    assert!(!carries_value || line.contains("REPLACE_ME"), "{what}: {line}");
                }
            }
        }
    }
    // Only the examples are in the repository: the real files are ignored.
    for overlay in ["dev", "prod"] {
        let dir = repo(&format!("deploy/k8s/overlays/{overlay}/secrets"));
        let ignore = std::fs::read_to_string(dir.join(".gitignore")).unwrap();
        assert!(ignore.lines().any(|l| l == "*") && ignore.lines().any(|l| l == "!*.example"));
    }
}

#[test]
fn the_platform_has_the_shape_the_seed_and_the_network_policies_expect() {
    let Some(rendered) = render_overlays() else { return };
    let prod = &rendered["prod"];
    let find = |kind: &str, name: &str| {
        prod.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name} is missing"))
    };
    let gateway = find("Deployment", "egress-gateway");
    assert_eq!(gateway["metadata"]["namespace"], "clawgress");
    assert!(gateway["spec"]["replicas"].as_u64().unwrap() >= 2);
    let pod = &gateway["spec"]["template"]["spec"];
    assert!(pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"].is_array());
    let args: Vec<&str> = pod["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for pair in [
        ["--policy", "/etc/clawgress/policy.yaml"],
        ["--listen", "0.0.0.0:3128"],
        ["--admin", "0.0.0.0:9128"],
        ["--nats", "nats://nats.clawgress:4222"],
        ["--state-dir", "/var/lib/clawgress"],
    ] {
        assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
    }
    assert_eq!(find("PodDisruptionBudget", "egress-gateway")["spec"]["minAvailable"], 1);
    assert_eq!(find("Service", "steel")["spec"]["clusterIP"], "None");
    let steel = &find("Deployment", "steel")["spec"]["template"];
    let env = steel["spec"]["containers"][0]["env"].as_array().unwrap();
    let host = env.iter().find(|e| e["name"] == "HOST").unwrap();
    assert_eq!(host["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
    assert_eq!(find("StatefulSet", "nats")["spec"]["replicas"], 3);
    // The labels the compiled Cilium policies select exist on the pods they
    // mean: a renamed label would silently open or close a path.
    let templates = pod_templates(prod);
    for policy in prod.iter().filter(|d| d["kind"] == "CiliumNetworkPolicy") {
        let namespace = policy["metadata"]["namespace"].as_str().unwrap();
        for rule in ["egress", "ingress"]
            .iter()
            .flat_map(|k| policy["spec"][k].as_array().cloned().unwrap_or_default())
        {
            let peers = rule["toEndpoints"]
                .as_array()
                .or(rule["fromEndpoints"].as_array())
                .cloned();
            for peer in peers.unwrap_or_default() {
                let labels = peer["matchLabels"].as_object().unwrap();
                let in_namespace = labels
                    .get("k8s:io.kubernetes.pod.namespace")
                    .and_then(Value::as_str)
                    .unwrap_or(namespace);
                if in_namespace == "kube-system" || policy["metadata"]["name"] == "scraper-egress-allow" {
                    continue; // kube-dns is the cluster's; the seed's own text selects nothing on purpose
                }
                let matched = templates.iter().any(|(_, template, object)| {
                    object["metadata"]["namespace"] == in_namespace
                        && labels
                            .iter()
                            .filter(|(k, _)| !k.starts_with("k8s:io.kubernetes"))
                            .all(|(k, v)| &template["metadata"]["labels"][k] == v)
                });
                assert!(matched, "{}: {labels:?} selects no pod", name_of(policy));
            }
        }
    }
    for name in ["clawgress-scheduler", "steel"] {
        let labels = &find("Deployment", name)["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["role"], "scraper", "{name}: its egress must be the scrapers'");
    }
}

/// The PrometheusRule is the rules files under `spec.groups`, their text
/// kept (comments included) and indented.
fn prometheus_rule() -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("deploy/prometheus/rules"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut out = String::from(
        "# Generated from deploy/prometheus/rules/*.yaml by tests/gateway/deploy.rs; do not\n\
         # edit. When the rules change: CLAWGRESS_REGENERATE=1 cargo test --test gateway deploy::\n\
         # Why each rule is what it is: the comments in those files.\n\
         apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: clawgress-egress\n  \
         namespace: clawgress\n  labels:\n    app.kubernetes.io/part-of: clawgress\nspec:\n  groups:\n",
    );
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let relative = file.strip_prefix(REPO).unwrap().display().to_string();
        let (_, groups) = text
            .split_once("\ngroups:\n")
            .unwrap_or_else(|| panic!("{relative} has no top-level `groups:`"));
        out.push_str(&format!("    # {relative}\n"));
        for line in groups.trim_end().lines() {
            assert!(
                line.is_empty() || line.starts_with([' ', '#']),
                "{relative}: only `groups:` may be at the top level, found {line:?}"
            );
            if !line.is_empty() {
                out.push_str("  ");
            }
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn the_prometheus_rule_is_generated_from_the_rules_files() {
    let expected = prometheus_rule();
    let path = repo("deploy/k8s/base/prometheus-rules.yaml");
    if std::env::var_os("CLAWGRESS_REGENERATE").is_some() {
        std::fs::write(&path, &expected).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == expected,
        "deploy/k8s/base/prometheus-rules.yaml is not the rules files' PrometheusRule; regenerate it with:\n  \
         CLAWGRESS_REGENERATE=1 cargo test --test gateway deploy::the_prometheus_rule"
    );
    // The same rules, parsed: the groups of both files, in file order.
    let rule = documents(&expected).remove(0);
    let names: Vec<&str> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"clawgress-egress-slo"), "{names:?}");
    assert!(names.contains(&"clawgress-egress-alert-table"), "{names:?}");
}
