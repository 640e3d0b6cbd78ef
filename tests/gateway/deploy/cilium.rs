//! `cilium/`: the checked-in manifests are exactly what `clawgress policy
//! compile --target cilium` writes for the shipped policy, and every Cilium
//! object (compiled, or rendered by the overlays) validates against Cilium's
//! own CRD schemas (`cilium/schemas/`, vendored), strictly.

use super::*;

const SCHEMAS: [&str; 2] = [
    "cilium/schemas/ciliumnetworkpolicies.yaml",
    "cilium/schemas/ciliumegressgatewaypolicies.yaml",
];

/// Validates each named document (JSON on stdin: `[[name, doc], ...]`)
/// against the openAPIV3Schema of its kind's version in the given CRD
/// files. Kubernetes refuses fields a structural schema does not name
/// (`kubectl apply --validate=strict`, the default), while JSON Schema
/// allows them unless told: every object schema with properties is closed
/// here, except where the CRD keeps unknown fields on purpose.
const VALIDATE_PY: &str = r#"
import json, sys, yaml, jsonschema

def closed(schema):
    if isinstance(schema, dict):
        if (schema.get("type") == "object" and "properties" in schema
                and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        for value in schema.values():
            closed(value)
    elif isinstance(schema, list):
        for value in schema:
            closed(value)
    return schema

validators = {}
for path in sys.argv[1:]:
    with open(path) as f:
        crd = yaml.safe_load(f)
    spec = crd["spec"]
    for version in spec["versions"]:
        key = (spec["group"] + "/" + version["name"], spec["names"]["kind"])
        validators[key] = jsonschema.Draft4Validator(closed(version["schema"]["openAPIV3Schema"]))

bad = 0
for name, doc in json.load(sys.stdin):
    validator = validators.get((doc.get("apiVersion"), doc.get("kind")))
    if validator is None:
        print(f"{name}: no schema for {doc.get('apiVersion')} {doc.get('kind')}")
        bad += 1
        continue
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    for error in errors:
        print(f"{name}: /{'/'.join(map(str, error.absolute_path))}: {error.message}")
    bad += len(errors)
    if not errors:
        print(f"{name}: valid")
sys.exit(1 if bad else 0)
"#;

/// The venv's Python with jsonschema and PyYAML, or a skip.
fn python() -> Option<PathBuf> {
    let found = tool("python3").filter(|python| {
        Command::new(python)
            .args(["-c", "import jsonschema, yaml"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        support::skip("Python with jsonschema not found (./deploy/local/prereqs.sh k8s-schemas; `make test` does)");
    }
    found
}

/// `Some((every document valid, the validator's report))`, or `None` when
/// the validator is missing (the test has been marked skipped).
pub(super) fn validate(docs: &[&Value]) -> Option<(bool, String)> {
    let python = python()?;
    let named: Vec<(String, &Value)> = docs.iter().map(|d| (name_of(d), *d)).collect();
    let mut child = Command::new(python)
        .arg("-c")
        .arg(VALIDATE_PY)
        .args(SCHEMAS.map(repo))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(child.stdin.take().unwrap(), &named).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), report))
}

/// Runs `clawgress policy compile --target cilium` from the repository
/// root, as cilium/README.md says to; returns (success, output, files).
fn compile(policy: &str, extra: &[&str]) -> (bool, String, BTreeMap<String, String>) {
    let out = tempfile::tempdir().unwrap();
    let (ok, text) = run(Command::new(support::clawgress_bin())
        .current_dir(REPO)
        .args(["policy", "compile", "--target", "cilium", "--policy", policy])
        .args(extra)
        .arg("--out")
        .arg(out.path()));
    let files = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(p).unwrap())
        })
        .collect();
    (ok, text, files)
}

fn checked_in() -> BTreeMap<String, String> {
    std::fs::read_dir(repo("cilium"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(p).unwrap())
        })
        .collect()
}

#[test]
fn the_cilium_directory_is_what_the_compiler_writes_for_the_shipped_policy() {
    let (ok, text, compiled) = compile("policies/default.yaml", &[]);
    assert!(ok, "{text}");
    let regenerate = "clawgress policy compile --target cilium --policy policies/default.yaml --out cilium/";
    let names = |files: &BTreeMap<String, String>| files.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&checked_in()),
        names(&compiled),
        "cilium/*.yaml are not the compiler's files; run: {regenerate}"
    );
    for (name, text) in &compiled {
        assert!(
            checked_in()[name] == *text,
            "cilium/{name} is not the compiler's output for policies/default.yaml; run: {regenerate}"
        );
    }
}

fn compiled_documents(files: &BTreeMap<String, String>) -> Vec<Value> {
    files
        .iter()
        .filter(|(name, _)| *name != "kustomization.yaml")
        .flat_map(|(_, text)| documents(text))
        .collect()
}

#[test]
fn the_compiled_manifests_match_the_cilium_crd_schemas() {
    let docs = compiled_documents(&checked_in());
    assert_eq!(docs.len(), 13, "{docs:?}");
    // With egress addresses too: egressGateways, IPv6 destinations.
    let (ok, text, with_ips) = compile(
        "policies/default.yaml",
        &["--egress-ip", "203.0.113.10", "--egress-ip", "2001:db8::10"],
    );
    assert!(ok, "{text}");
    let mut all: Vec<&Value> = docs.iter().collect();
    let with_ips = compiled_documents(&with_ips);
    all.extend(with_ips.iter().filter(|d| d["kind"] == "CiliumEgressGatewayPolicy"));
    let Some((valid, report)) = validate(&all) else { return };
    assert!(valid, "{report}");
    assert_eq!(report.matches(": valid").count(), 14, "{report}");
}

#[test]
fn a_manifest_cilium_would_refuse_fails_the_schema_check() {
    let docs = compiled_documents(&checked_in());
    let gateway = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "egress-gateway-egress")
        .unwrap();
    let egress = docs.iter().find(|d| d["kind"] == "CiliumEgressGatewayPolicy").unwrap();
    // A misspelled field, which the API server would refuse (or silently drop).
    let mut misspelled = gateway.clone();
    let rule = misspelled["spec"]["egress"][2].as_object_mut().unwrap();
    let fqdns = rule.remove("toFQDNs").unwrap();
    rule.insert("toFQDN".to_string(), fqdns);
    // A protocol outside the enum.
    let mut lowercase = gateway.clone();
    lowercase["spec"]["egress"][1]["toPorts"][0]["ports"][0]["protocol"] = "tcp".into();
    // A required field gone.
    let mut no_gateway = egress.clone();
    no_gateway["spec"].as_object_mut().unwrap().remove("egressGateway");
    // A DNS name the pattern refuses.
    let mut bad_name = gateway.clone();
    bad_name["spec"]["egress"][2]["toFQDNs"][0]["matchName"] = "api openai com".into();
    for (broken, expected) in [
        (
            &misspelled,
            "/spec/egress/2: Additional properties are not allowed ('toFQDN' was unexpected)",
        ),
        (
            &lowercase,
            "/spec/egress/1/toPorts/0/ports/0/protocol: 'tcp' is not one of",
        ),
        (&no_gateway, "/spec: 'egressGateway' is a required property"),
        (
            &bad_name,
            "/spec/egress/2/toFQDNs/0/matchName: 'api openai com' does not match",
        ),
    ] {
        let Some((valid, report)) = validate(&[broken]) else {
            return;
        };
        assert!(!valid, "must fail:\n{report}");
        assert!(report.contains(expected), "{expected}\n{report}");
    }
}

#[test]
fn the_prod_overlay_s_egress_addresses_are_the_compilers() {
    let Some(rendered) = render_overlays() else { return };
    let (ok, text, compiled) = compile(
        "policies/default.yaml",
        &["--egress-ip", "203.0.113.10", "--egress-ip", "203.0.113.11"],
    );
    assert!(ok, "{text}");
    let policy = |docs: &[Value]| {
        docs.iter()
            .find(|d| d["kind"] == "CiliumEgressGatewayPolicy")
            .cloned()
            .unwrap()
    };
    let compiled = policy(&documents(&compiled["egress-gateway-policy.yaml"]));
    assert_eq!(
        policy(&rendered["prod"]),
        compiled,
        "deploy/k8s/overlays/prod/egress-ips.yaml no longer patches the policy into what \
         `--egress-ip 203.0.113.10 --egress-ip 203.0.113.11` compiles to"
    );
    // dev keeps the base: each egress node's own address.
    assert_eq!(
        policy(&rendered["dev"]),
        policy(&documents(&checked_in()["egress-gateway-policy.yaml"]))
    );
}

#[test]
fn what_cilium_cannot_express_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "allowlist:\n  internal:\n    - domain: qdrant.db.svc.cluster.local\n      ports: [6333]\n      protocols: [http]\n",
    )
    .unwrap();
    let (ok, text, files) = compile(policy.to_str().unwrap(), &[]);
    assert!(!ok && files.is_empty(), "{text}");
    assert!(
        text.contains(&format!(
            "{}:3:15: internal rule qdrant.db.svc.cluster.local names the cluster's own domain",
            policy.display()
        )),
        "{text}"
    );
    // Flags of the other target are refused, not ignored.
    let (ok, text, _) = compile("policies/default.yaml", &["--egress-iface", "eth0"]);
    assert!(
        !ok && text.contains("--egress-iface is a --target nftables flag"),
        "{text}"
    );
}

/// The vendored schemas are the shared set's files, unmodified.
#[test]
fn the_vendored_schemas_are_the_official_files() {
    let shared = repo("../shared/schemas/cilium");
    if !shared.is_dir() {
        support::skip("../shared/schemas/cilium is not beside the repository; the vendored copies stand alone");
        return;
    }
    for schema in SCHEMAS {
        let name = Path::new(schema).file_name().unwrap();
        assert!(
            std::fs::read(repo(schema)).unwrap() == std::fs::read(shared.join(name)).unwrap(),
            "{schema} differs from ../shared/schemas/cilium"
        );
    }
}
