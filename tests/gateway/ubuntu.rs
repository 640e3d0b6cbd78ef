//! The Ubuntu 24.04 host files (`deploy/ubuntu`): the systemd units pass
//! `systemd-analyze verify` and its security rating, the sysctl profile
//! names real keys, and the `.deb` holds the binary, the units (not
//! enabled), the defaults in /etc/clawgress with owner-only secrets, and the
//! maintainer scripts that create the user.
//!
//! The package is built from the binary this test run already built
//! (`--no-build`, placed where cargo-deb looks for a release build), not
//! from a release build: contents, modes and scripts do not depend on
//! optimisation, and a second, optimised build of the whole workspace would
//! cost `make test` more than everything else together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::support;

const SERVICES: [&str; 3] = [
    "clawgress-gateway.service",
    "clawgress-dns.service",
    "clawgress-scheduler.service",
];
const EDGE: &str = "clawgress-edge.service";
const SECRETS: [&str; 7] = [
    "gateway.env",
    "dns.env",
    "scheduler.env",
    "edge.env",
    "agents.yaml.example",
    "admin-tokens.yaml.example",
    "credentials.yaml.example",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn unit_text(name: &str) -> String {
    std::fs::read_to_string(root().join("deploy/ubuntu/systemd").join(name)).expect("unit file")
}

/// A program on PATH (or in the usual sbin directories).
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The `[Service]` settings of a unit, `key → values` (a key may repeat).
fn settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.replace("\\\n", " ").lines() {
        if let Some((key, value)) = line.split_once('=')
            && !line.starts_with('#')
        {
            map.entry(key.trim().to_string())
                .or_default()
                .push(value.trim().to_string());
        }
    }
    map
}

#[test]
fn the_units_are_hardened_as_documented() {
    for name in SERVICES {
        let units = settings(&unit_text(name));
        let one = |key: &str| units.get(key).and_then(|v| v.last()).map(String::as_str);
        assert_eq!(one("User"), Some("clawgress"), "{name}");
        for (key, value) in [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("Restart", "on-failure"),
            ("StateDirectory", "clawgress"),
        ] {
            assert_eq!(one(key), Some(value), "{name}: {key}");
        }
        for key in [
            "RestartSec",
            "StartLimitBurst",
            "StartLimitIntervalSec",
            "MemoryMax",
            "RestrictAddressFamilies",
        ] {
            assert!(one(key).is_some_and(|v| !v.is_empty()), "{name}: {key}");
        }
        assert!(
            units["SystemCallFilter"].contains(&"@system-service".to_string()),
            "{name}"
        );
        let env = one("EnvironmentFile").unwrap_or_default();
        assert!(
            env.starts_with("/etc/clawgress/") && env.ends_with(".env"),
            "{name}: {env}"
        );
        let shipped = root()
            .join("deploy/ubuntu/etc")
            .join(env.trim_start_matches("/etc/clawgress/"));
        assert!(shipped.is_file(), "{name}: {} is not shipped", shipped.display());
        let expected_caps = if name == "clawgress-dns.service" {
            "CAP_NET_BIND_SERVICE"
        } else {
            ""
        };
        assert_eq!(one("CapabilityBoundingSet"), Some(expected_caps), "{name}");
    }
    let edge = settings(&unit_text(EDGE));
    assert_eq!(edge["CapabilityBoundingSet"], ["CAP_NET_ADMIN"]);
    assert!(!edge.contains_key("ExecStop"), "stopping the edge must not open it");
}

#[test]
fn the_units_pass_systemd_analyze_verify_and_its_security_rating() {
    let Some(analyze) = which("systemd-analyze") else {
        support::skip("systemd-analyze is missing (Debian's systemd package: ./deploy/local/prereqs.sh deb)");
        return;
    };
    // `verify` checks that ExecStart's program exists and is executable:
    // test copies point at the binary under test (and at this host's nft).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let nft = which("nft");
    let mut files = Vec::new();
    for name in SERVICES.iter().chain([&EDGE]) {
        let mut text = unit_text(name).replace("/usr/bin/clawgress", &support::clawgress_bin().display().to_string());
        if *name == EDGE {
            let Some(nft) = &nft else {
                support::skip(
                    "nft is missing, so clawgress-edge.service is not verified (./deploy/local/prereqs.sh nftables)",
                );
                continue;
            };
            text = text.replace("/usr/sbin/nft", &nft.display().to_string());
        }
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write unit");
        files.push(path);
    }
    let verified = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .args(&files)
        .output()
        .expect("run systemd-analyze verify");
    // RestartSteps and RestartMaxDelaySec (the restart backoff) arrived in
    // systemd 254; Ubuntu 24.04 has 255. An older systemd here warns about
    // them and nothing else may be said.
    let old = systemd_version(&analyze) < 254;
    let complaints: Vec<String> = String::from_utf8_lossy(&verified.stderr)
        .lines()
        .chain(String::from_utf8_lossy(&verified.stdout).lines())
        .filter(|line| {
            !(old && (line.contains("Unknown key 'RestartSteps'") || line.contains("Unknown key 'RestartMaxDelaySec'")))
        })
        .filter(|line| !line.trim().is_empty())
        .map(str::to_string)
        .collect();
    assert!(
        verified.status.success() && complaints.is_empty(),
        "systemd-analyze verify: {:?}\n{}",
        verified.status,
        complaints.join("\n")
    );
    // "OK" is below 3.0 on systemd's exposure scale; ours stay under 2.5.
    for file in &files {
        let rated = Command::new(&analyze)
            .args(["security", "--offline=yes", "--threshold=25", "--no-pager"])
            .arg(file)
            .output()
            .expect("run systemd-analyze security");
        let text = String::from_utf8_lossy(&rated.stdout);
        let overall = text
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_default();
        assert!(rated.status.success(), "{}: {overall}\n{text}", file.display());
    }
}

fn systemd_version(analyze: &Path) -> u32 {
    let output = Command::new(analyze)
        .arg("--version")
        .output()
        .expect("systemd-analyze --version");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_sysctl_profile_sets_real_keys_including_the_cis_network_ones() {
    let text = std::fs::read_to_string(root().join("deploy/ubuntu/sysctl.d/60-clawgress.conf")).expect("profile");
    let mut keys = BTreeMap::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not `key = value`: {line}"));
        keys.insert(key.trim().to_string(), value.trim().to_string());
    }
    for (key, value) in [
        ("net.ipv4.ip_forward", "0"),
        ("net.ipv4.conf.all.send_redirects", "0"),
        ("net.ipv4.conf.all.accept_redirects", "0"),
        ("net.ipv4.conf.all.secure_redirects", "0"),
        ("net.ipv4.conf.all.accept_source_route", "0"),
        ("net.ipv4.conf.all.rp_filter", "1"),
        ("net.ipv4.conf.all.log_martians", "1"),
        ("net.ipv4.icmp_echo_ignore_broadcasts", "1"),
        ("net.ipv4.icmp_ignore_bogus_error_responses", "1"),
        ("net.ipv4.tcp_syncookies", "1"),
        ("net.ipv6.conf.all.accept_ra", "0"),
        ("net.ipv6.conf.all.accept_redirects", "0"),
        ("net.ipv4.conf.all.route_localnet", "0"),
    ] {
        assert_eq!(keys.get(key).map(String::as_str), Some(value), "{key}");
    }
    // Every key a kernel must have (no leading `-`) exists here: no typos.
    if Path::new("/proc/sys/net/ipv4").is_dir() {
        for key in keys.keys().filter(|k| !k.starts_with('-')) {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            assert!(path.exists(), "{key}: no {}", path.display());
        }
    }
}

#[test]
fn the_deb_holds_the_binary_the_units_not_enabled_and_owner_only_secrets() {
    let (Some(_), Some(dpkg_deb)) = (
        which("cargo-deb").or_else(|| {
            let home = std::env::var_os("CARGO_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
            Some(home.join("bin/cargo-deb")).filter(|p| p.is_file())
        }),
        which("dpkg-deb"),
    ) else {
        support::skip("cargo-deb or dpkg-deb is missing: ./deploy/local/prereqs.sh deb (make test installs them)");
        return;
    };
    // cargo-deb packages `<target>/release/clawgress`: a target directory
    // of our own with the binary under test in that place.
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let release = work.path().join("target/release");
    std::fs::create_dir_all(&release).expect("release dir");
    if std::fs::hard_link(support::clawgress_bin(), release.join("clawgress")).is_err() {
        std::fs::copy(support::clawgress_bin(), release.join("clawgress")).expect("copy binary");
    }
    let out = work.path().join("out");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = Command::new(cargo)
        .args([
            "deb",
            "--no-build",
            "--no-strip",
            "--offline",
            "--fast",
            "-Z",
            "gz",
            "--compress-system",
        ])
        .args(["--deb-version", "0.0.0-test", "--manifest-path"])
        .arg(root().join("Cargo.toml"))
        .arg("-o")
        .arg(&out)
        .env("CARGO_TARGET_DIR", work.path().join("target"))
        .output()
        .expect("run cargo deb");
    assert!(
        built.status.success(),
        "cargo deb:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let deb = out.join("clawgress_0.0.0-test_amd64.deb");
    let dpkg = |args: &[&str]| {
        let output = Command::new(&dpkg_deb).args(args).arg(&deb).output().expect("dpkg-deb");
        assert!(
            output.status.success(),
            "dpkg-deb {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).to_string()
    };

    // Contents and modes: `-rw------- 0/0 486 2026-01-01 00:00 ./etc/clawgress/dns.env`.
    let listing = dpkg(&["-c"]);
    let modes: BTreeMap<&str, (&str, &str)> = listing
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some((*fields.last()?, (*fields.first()?, *fields.get(1)?)))
        })
        .collect();
    let mode = |path: &str| {
        modes
            .get(path)
            .copied()
            .unwrap_or_else(|| panic!("{path} is not in the package:\n{listing}"))
    };
    assert_eq!(mode("./usr/bin/clawgress").0, "-rwxr-xr-x");
    for unit in SERVICES.iter().chain([&EDGE]) {
        assert_eq!(
            mode(&format!("./usr/lib/systemd/system/{unit}")).0,
            "-rw-r--r--",
            "{unit}"
        );
    }
    for public in ["policy.yaml", "pricing.yaml"] {
        assert_eq!(mode(&format!("./etc/clawgress/{public}")).0, "-rw-r--r--", "{public}");
    }
    for secret in SECRETS {
        assert_eq!(
            mode(&format!("./etc/clawgress/{secret}")).0,
            "-rw-------",
            "{secret} is owner-only"
        );
    }
    assert!(
        modes
            .values()
            .all(|(_, owner)| *owner == "0/0" || *owner == "root/root"),
        "{listing}"
    );
    assert!(
        !listing.contains(".wants/"),
        "units are installed, not enabled:\n{listing}"
    );
    assert!(
        !modes.contains_key("./etc/clawgress/agents.yaml"),
        "the operator writes the real agents file"
    );

    // The files are the repository's.
    let unpacked = work.path().join("root");
    let extracted = Command::new(&dpkg_deb)
        .arg("-x")
        .arg(&deb)
        .arg(&unpacked)
        .status()
        .expect("dpkg-deb -x");
    assert!(extracted.success());
    let same = |packaged: &str, source: &str| {
        assert_eq!(
            std::fs::read(unpacked.join(packaged)).expect("packaged file"),
            std::fs::read(root().join(source)).expect("source file"),
            "{packaged} is not {source}"
        );
    };
    same("etc/clawgress/policy.yaml", "policies/default.yaml");
    same(
        "usr/lib/systemd/system/clawgress-gateway.service",
        "deploy/ubuntu/systemd/clawgress-gateway.service",
    );
    same(
        "usr/share/clawgress/60-clawgress.conf",
        "deploy/ubuntu/sysctl.d/60-clawgress.conf",
    );

    // Control: dependencies, conffiles, and the scripts that make the user
    // and enable nothing.
    let control = dpkg(&["-I"]);
    assert!(
        control.contains("Package: clawgress") && control.contains("adduser"),
        "{control}"
    );
    let conffiles = info(&dpkg_deb, &deb, "conffiles");
    for conf in ["policy.yaml", "gateway.env", "dns.env", "scheduler.env", "edge.env"] {
        assert!(
            conffiles.contains(&format!("/etc/clawgress/{conf}")),
            "{conf} is a conffile:\n{conffiles}"
        );
    }
    let postinst = info(&dpkg_deb, &deb, "postinst");
    assert!(postinst.contains("adduser --system --group"), "{postinst}");
    for command in [
        "systemctl enable",
        "systemctl start",
        "deb-systemd-helper enable",
        "deb-systemd-invoke start",
    ] {
        assert!(
            !postinst.contains(command),
            "postinst enables or starts nothing: {command}"
        );
    }
    let scripts = work.path().join("control");
    let controlled = Command::new(&dpkg_deb)
        .arg("-e")
        .arg(&deb)
        .arg(&scripts)
        .status()
        .expect("dpkg-deb -e");
    assert!(controlled.success());
    for script in ["postinst", "prerm", "postrm"] {
        let checked = Command::new("sh")
            .arg("-n")
            .arg(scripts.join(script))
            .status()
            .expect("sh -n");
        assert!(checked.success(), "{script} is not valid sh");
    }
}

/// One control file of the package (`dpkg-deb -I DEB FILE`).
fn info(dpkg_deb: &Path, deb: &Path, file: &str) -> String {
    let output = Command::new(dpkg_deb)
        .arg("-I")
        .arg(deb)
        .arg(file)
        .output()
        .expect("dpkg-deb -I");
    String::from_utf8_lossy(&output.stdout).to_string()
}
