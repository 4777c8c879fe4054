#!/usr/bin/env bash
# Makes a container engine available, idempotently, and prints for `eval` how to reach it:
#
#   ENGINE='podman --runtime runc'     the command line that builds and runs images
#   DOCKER_HOST=unix:///…              its Docker Engine API (what Docker clients talk to)
#
#   eval "$(scripts/setup-container-engine.sh)"
#
# Docker is used when its daemon answers. Otherwise Podman from Debian's packages, installed
# when missing (as root): with `runc`, because `crun` fails on kernels whose cgroups are
# hybrid, and its Docker-compatible API served by `podman system service` on
# /run/turbofan-podman/podman.sock (started in the background when nothing answers there; its
# log beside the socket). Containers need explicit `nofile`/`nproc` limits within the host's
# hard limits (`--ulimit`, HostConfig.Ulimits): Podman's defaults are above them here.
set -euo pipefail
note() { printf 'setup-container-engine: %s\n' "$*" >&2; }
fail() { note "$*"; exit 1; }

install() { # Debian packages, as root
    [ "$(id -u)" = 0 ] || fail "$* not installed: run as root, or apt-get install $*"
    note "installing $* from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "$@" >&2 ||
        { apt-get update >&2 && apt-get install -y --no-install-recommends "$@" >&2; } ||
        fail "could not install $*"
}

# curl asks the engines' API sockets.
command -v curl >/dev/null || install curl ca-certificates

answers() { # the Docker Engine API answers on unix socket $1
    curl -sf --max-time 5 --unix-socket "$1" http://engine/_ping >/dev/null 2>&1
}

docker_sock="${DOCKER_HOST:-unix:///var/run/docker.sock}"
docker_sock="${docker_sock#unix://}"
# Docker: its client and a daemon answering on its socket (Podman's socket can be there too).
version="$( { [ -S "$docker_sock" ] && curl -sf --max-time 5 --unix-socket "$docker_sock" http://engine/version; } 2>/dev/null || true)"
if command -v docker >/dev/null && [ -n "$version" ] && [[ "$version" != *[Pp]odman* ]]; then
    printf "ENGINE='docker'\nDOCKER_HOST='unix://%s'\n" "$docker_sock"
    exit 0
fi

if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
    install podman runc
fi
ENGINE="podman --runtime runc"

dir=/run/turbofan-podman
sock="$dir/podman.sock"
if ! answers "$sock"; then
    mkdir -p "$dir" || fail "cannot create $dir for Podman's API socket (run as root)"
    rm -f "$sock"
    note "starting the Docker-compatible API: podman system service on $sock (log $dir/service.log)"
    # --time=0: the service stays up (its default ends it after 5 s without requests).
    setsid nohup $ENGINE system service --time=0 "unix://$sock" >"$dir/service.log" 2>&1 </dev/null &
    for _ in $(seq 1 100); do
        answers "$sock" && break
        sleep 0.1
    done
    answers "$sock" || fail "podman system service did not answer on $sock: $(tail -n 5 "$dir/service.log")"
fi
printf "ENGINE='%s'\nDOCKER_HOST='unix://%s'\n" "$ENGINE" "$sock"
