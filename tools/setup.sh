#!/usr/bin/env bash
# Installs what the demo, the tests and the benchmark need on a fresh Debian machine:
# redis-server and redis-benchmark (Debian packages), a Python virtualenv with the
# reference script's packages, the Bolt test server (Neo4j 4.4 via Maven), and — for the
# tests only — LightRAG (the round-trip tests' judge), containerd + runc (Debian), and
# kube-apiserver, etcd, kubelet, kube-controller-manager, kube-scheduler, helm and
# kubeconform built from their Go modules. Idempotent: a second run only checks.
# Everything built here lives outside the repository, in $TM_CACHE.
#
# Usage: tools/setup.sh [demo]   (demo: only what `make demo` and `make bench` run)
set -euo pipefail
cd "$(dirname "$0")/.."
TM_CACHE=${TM_CACHE:-$HOME/.cache/tenant-migrator}
only_demo=false
[ "${1:-}" = demo ] && only_demo=true

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null || ! command -v lua5.4 >/dev/null; then
  echo "setup: installing redis-server, redis-tools and lua5.4 (the Argo CD health check's tests)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq redis-server redis-tools lua5.4 >/dev/null
fi
# Debian starts a system redis-server on 6379; the tests start their own on free ports.

if ! "$TM_CACHE/venv/bin/python" -c 'import redis, requests, neo4j, qdrant_client, qdrant_edge, grpc' 2>/dev/null; then
  echo "setup: creating the Python virtualenv (reference script, Qdrant test server) in $TM_CACHE/venv"
  python3 -m venv "$TM_CACHE/venv"
  "$TM_CACHE/venv/bin/pip" install -q --disable-pip-version-check -r tools/requirements.txt
fi
# The Bolt test server (Neo4j 4.4 from Maven Central, with Java 17 and Maven from the image).
bash tools/neo4j/build.sh
if $only_demo; then
  echo "setup: redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p'), python venv at $TM_CACHE/venv"
  exit 0
fi

# LightRAG itself (lightrag-hku, pinned; no conflict with the pins above), the judge of the
# round-trip tests.
if ! "$TM_CACHE/venv/bin/python" -c 'import lightrag' 2>/dev/null \
   || ! cmp -s tools/lightrag/requirements.txt "$TM_CACHE/venv/lightrag-requirements.txt"; then
  echo "setup: installing LightRAG (lightrag-hku) into $TM_CACHE/venv"
  "$TM_CACHE/venv/bin/pip" install -q --disable-pip-version-check -r tools/requirements.txt -r tools/lightrag/requirements.txt
  cp tools/lightrag/requirements.txt "$TM_CACHE/venv/lightrag-requirements.txt"
fi

# The one-node test cluster's container runtime (tests only): containerd (with ctr) and
# runc from Debian. Without systemd nothing starts them; the tests start their own.
if ! command -v containerd >/dev/null || ! command -v runc >/dev/null || ! command -v gcc >/dev/null; then
  echo "setup: installing containerd, runc and gcc (the test node's runtime and pause image)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq containerd runc gcc libc6-dev >/dev/null
fi

# A real kube-apiserver and etcd, the test node's kubelet, kube-controller-manager and
# kube-scheduler, and helm + kubeconform for the chart tests, built from Go modules.
bash tools/envtest/build.sh
bash tools/gotools/build.sh

echo "setup: redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p'), python venv at $TM_CACHE/venv"
