//! The one container image (deploy/container): its root filesystem holds
//! everything the binary loads, and it runs as the non-root user; with
//! podman, the Containerfile builds with nothing pulled and the image runs
//! `clawgress --version`. The test's own binary stands in for the release
//! build: both link the same libraries.

use super::*;

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Removes the test's image however the test ends.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", "--force", &self.0]).output();
    }
}

#[test]
fn the_image_holds_the_binary_its_libraries_and_nothing_to_pull() {
    if !is_root() {
        support::skip("not root: chroot into the image's root filesystem needs it");
        return;
    }
    let context = tempfile::tempdir().unwrap();
    let rootfs = context.path().join("rootfs");
    let (ok, text) = run(Command::new("bash")
        .arg(repo("deploy/container/rootfs.sh"))
        .arg(support::clawgress_bin())
        .arg(&rootfs));
    assert!(ok, "rootfs.sh:\n{text}");
    for file in [
        "lib64/ld-linux-x86-64.so.2",
        "etc/ssl/certs/ca-certificates.crt",
        "usr/local/bin/clawgress",
    ] {
        assert!(rootfs.join(file).is_file(), "{file} is missing:\n{text}");
    }
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");
    // Only what the image holds: no library of the host can be found.
    let (ok, version) = run(Command::new("chroot")
        .arg("--userspec=65532:65532")
        .arg(&rootfs)
        .args(["/usr/local/bin/clawgress", "--version"]));
    assert!(ok && version.trim() == "clawgress 0.1.0", "{version}");

    if tool("podman").is_none() {
        support::skip(
            "podman not found (./deploy/local/prereqs.sh podman; `make test` does): the Containerfile was not built",
        );
        return;
    }
    let image = Image(format!("localhost/clawgress-deploy-test:{}", std::process::id()));
    let (ok, text) = run(Command::new("podman")
        .args(["build", "--pull=never", "--quiet", "-f"])
        .arg(repo("deploy/container/Containerfile"))
        .args(["-t", &image.0])
        .arg(context.path()));
    assert!(ok, "podman build (FROM scratch, nothing pulled):\n{text}");
    let (ok, config) = run(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{.Config.User}} {{.Config.Entrypoint}}",
        &image.0,
    ]));
    assert!(
        ok && config.trim() == "65532:65532 [/usr/local/bin/clawgress]",
        "{config}"
    );
    let (ok, text) = run(Command::new("podman").args(["run", "--rm", "--network=none", &image.0, "--version"]));
    if ok {
        assert_eq!(text.trim(), "clawgress 0.1.0");
        return;
    }
    // Some sandboxes refuse the OCI runtime itself (rlimits, cgroups): the
    // image's own layers are then run from their mount, as its user.
    assert!(
        text.contains("OCI"),
        "podman run failed, and not for the runtime:\n{text}"
    );
    support::skip(&format!(
        "podman cannot start containers here ({}); the built image was run from its mount instead",
        text.lines().last().unwrap_or_default()
    ));
    let (ok, mount) = run(Command::new("podman").args(["image", "mount", &image.0]));
    assert!(ok, "{mount}");
    let (ok, version) = run(Command::new("chroot")
        .arg("--userspec=65532:65532")
        .arg(mount.trim())
        .args(["/usr/local/bin/clawgress", "--version"]));
    let _ = Command::new("podman").args(["image", "unmount", &image.0]).output();
    assert!(ok && version.trim() == "clawgress 0.1.0", "{version}");
}
