#!/usr/bin/env bash
# Lays out, in a folder, the files of the modules' base image as distroless's
# `static-debian12:nonroot` has them, made from this machine's installed Debian 12 packages:
# base-files, netbase, tzdata, ca-certificates and media-types (their data files; no programs,
# no documentation), the CA bundle, a `nonroot` user and group 65532, /tmp and
# /home/nonroot. No shell, no package manager, no shared libraries: each module image brings
# its own (docker/rootfs.sh).
#
#   docker/base-tree.sh OUT
#
# Used by docker/assemble.sh (the emulated base of its trees) and by docker/build-images.sh
# (the base image where no registry is reachable), so both are the same files.
set -euo pipefail
out="${1:?usage: base-tree.sh OUT}"
fail() { echo "base-tree.sh: $*" >&2; exit 1; }
MODULE_UID=65532
PACKAGES=(base-files netbase tzdata ca-certificates media-types)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || fail "packages not installed: ${missing[*]} (apt-get install ${missing[*]})"
    echo "base-tree.sh: installing ${missing[*]} from Debian's packages" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
        { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; } ||
        fail "could not install ${missing[*]}"
fi
rm -rf "$out"
mkdir -p "$out"
for p in "${PACKAGES[@]}"; do
    dpkg -L "$p" | while read -r f; do
        case "$f" in
            /usr/share/doc/* | /usr/share/man/* | /usr/share/info/* | /usr/share/lintian/* | \
                /bin/* | /sbin/* | /usr/bin/* | /usr/sbin/* | /etc/cron* | /etc/update-motd.d/*) continue ;;
        esac
        if [ -L "$f" ]; then
            mkdir -p "$out$(dirname "$f")"
            cp -P "$f" "$out$f"
        elif [ -f "$f" ]; then
            mkdir -p "$out$(dirname "$f")"
            cp "$f" "$out$f"
        fi
    done
done
mkdir -p "$out/etc/ssl/certs" "$out/tmp" "$out/home/nonroot"
chmod 1777 "$out/tmp"
# The bundle update-ca-certificates made from the ca-certificates package.
cp /etc/ssl/certs/ca-certificates.crt "$out/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/home/nonroot:/sbin/nologin\n' \
    "$MODULE_UID" "$MODULE_UID" >"$out/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:%s:\n' "$MODULE_UID" >"$out/etc/group"
if [ "$(id -u)" = 0 ]; then chown "$MODULE_UID:$MODULE_UID" "$out/home/nonroot"; fi
