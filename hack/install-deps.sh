#!/usr/bin/env bash
# Install the system packages the tests need (Debian): Prometheus, openssl, iproute2 (the
# local cluster's pod network namespace), Go's build deps.
# Idempotent: a machine that has them already skips apt entirely.
set -euo pipefail
need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v openssl >/dev/null || need+=(openssl)
command -v git >/dev/null || need+=(git)
command -v ip >/dev/null || need+=(iproute2)
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# Debian's package may start a Prometheus service on :9090 where an init system exists;
# tests run their own on free ports, so stop it rather than share it.
if command -v service >/dev/null && service prometheus status >/dev/null 2>&1; then
  service prometheus stop || true
fi
command -v go >/dev/null || { echo "go is required to build the local control plane" >&2; exit 1; }
echo "[deps] prometheus $(prometheus --version 2>&1 | head -1 | awk '{print $3}'), $(go version | awk '{print $3}')"
