#!/usr/bin/env bash
# The root filesystem of the Clawgress image: the release binary, exactly
# the shared libraries `ldd` says it loads (and the dynamic loader), the CA
# certificates for upstream TLS, and a passwd/group naming the non-root
# user. Nothing else: no shell, no package manager.
#
#   deploy/container/rootfs.sh [BINARY] [DIR]
#     BINARY  default target/release/clawgress (cargo build --release --locked)
#     DIR     default target/container/rootfs; emptied first
#
# Then: podman build -f deploy/container/Containerfile -t ghcr.io/clawgress/clawgress:0.1.0 target/container
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
binary="${1:-target/release/clawgress}"
root="${2:-target/container/rootfs}"
[ -x "$binary" ] || { echo "rootfs.sh: $binary is missing: cargo build --release --locked" >&2; exit 1; }
command -v ldd >/dev/null || { echo "rootfs.sh: ldd is missing (Debian: libc-bin)" >&2; exit 1; }

rm -rf "$root"
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp" "$root/var/lib/clawgress" "$root/var/log/clawgress"
chmod 1777 "$root/tmp"
install -m 0755 "$binary" "$root/usr/local/bin/clawgress"

# Every library ldd resolves (`name => /path (addr)`) and the loader
# (`/lib64/ld-linux-x86-64.so.2 (addr)`), each at the path the binary and the
# loader look for it, symlinks resolved to the file. linux-vdso is the
# kernel's. A library ldd cannot find fails the build here, not at start.
ldd "$binary" | while read -r first second third _; do
  case "$first" in
    linux-vdso.so.*|linux-gate.so.*) continue ;;
  esac
  if [ "$second" = "=>" ]; then
    [ "$third" != "not" ] || { echo "rootfs.sh: ldd cannot find $first" >&2; exit 1; }
    path="$third"
  else
    path="$first"
  fi
  [ -e "$path" ] || { echo "rootfs.sh: $path (from ldd) does not exist" >&2; exit 1; }
  mkdir -p "$root$(dirname "$path")"
  cp -L "$path" "$root$path"
done

# Debian's bundle of the system roots (package ca-certificates): what
# rustls-native-certs and the upstream TLS checks read.
bundle=/etc/ssl/certs/ca-certificates.crt
[ -s "$bundle" ] || { echo "rootfs.sh: $bundle is missing (Debian: ca-certificates)" >&2; exit 1; }
cp -L "$bundle" "$root/etc/ssl/certs/ca-certificates.crt"

# The user the image runs as (65532, as distroless calls it "nonroot"), and
# name lookups from /etc/hosts first, then DNS (Kubernetes mounts both files).
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:clawgress:/var/lib/clawgress:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
chown -R 65532:65532 "$root/var/lib/clawgress" "$root/var/log/clawgress" 2>/dev/null || true

echo "rootfs.sh: $(du -sh "$root" | cut -f1) in $root:" >&2
find "$root" -type f | sed "s|^$root||" | sort >&2
