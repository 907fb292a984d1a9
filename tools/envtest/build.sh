#!/usr/bin/env bash
# Builds a real kube-apiserver and etcd from their Go modules (the envtest approach:
# no cluster, no downloaded binaries) into $TM_CACHE/envtest/bin, reused while the
# module files are unchanged. Takes a few minutes the first time.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${TM_CACHE:-$HOME/.cache/tenant-migrator}/envtest
stamp=$(cat "$here"/apiserver/go.mod "$here"/apiserver/go.sum "$here"/apiserver/main.go \
             "$here"/etcd/go.mod "$here"/etcd/go.sum "$here"/etcd/main.go | sha256sum | cut -c1-16)
if [ -x "$out/bin/kube-apiserver" ] && [ -x "$out/bin/etcd" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
mkdir -p "$out/bin"
version=$(grep -oE "k8s.io/kubernetes v[0-9]+\.[0-9]+\.[0-9]+" "$here/apiserver/go.mod" | head -1 | cut -d" " -f2)
minor=$(echo "$version" | cut -d. -f2)
(cd "$here/apiserver" && go build -trimpath -o "$out/bin/kube-apiserver" \
  -ldflags "-X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor" .)
(cd "$here/etcd" && go build -trimpath -o "$out/bin/etcd" .)
echo "$stamp" > "$out/stamp"
echo "setup: kube-apiserver $version and etcd built in $out/bin"
