#!/usr/bin/env bash
# Builds a real kube-apiserver and etcd from their Go modules (the envtest approach:
# no cluster, no downloaded binaries), and from the same Kubernetes module the kubelet,
# kube-controller-manager and kube-scheduler of the one-node test cluster, into
# $TM_CACHE/envtest/bin, reused while the module files are unchanged. Takes several
# minutes the first time.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${TM_CACHE:-$HOME/.cache/tenant-migrator}/envtest
stamp=$(cat "$here"/apiserver/go.mod "$here"/apiserver/go.sum "$here"/apiserver/main.go \
             "$here"/apiserver/{kubelet,controller-manager,scheduler}/main.go \
             "$here"/etcd/go.mod "$here"/etcd/go.sum "$here"/etcd/main.go | sha256sum | cut -c1-16)
built=true
for b in kube-apiserver etcd kubelet kube-controller-manager kube-scheduler; do
  [ -x "$out/bin/$b" ] || built=false
done
if $built && [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
mkdir -p "$out/bin"
version=$(grep -oE "k8s.io/kubernetes v[0-9]+\.[0-9]+\.[0-9]+" "$here/apiserver/go.mod" | head -1 | cut -d" " -f2)
minor=$(echo "$version" | cut -d. -f2)
# The version is stamped in: without it the kubelet and the API server see v0.0.0 and
# fail their version-skew checks. -s -w: no symbol tables (a third of each binary).
ld="-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
(cd "$here/apiserver" \
  && go build -trimpath -ldflags "$ld" -o "$out/bin/kube-apiserver" . \
  && go build -trimpath -ldflags "$ld" -o "$out/bin/kubelet" ./kubelet \
  && go build -trimpath -ldflags "$ld" -o "$out/bin/kube-controller-manager" ./controller-manager \
  && go build -trimpath -ldflags "$ld" -o "$out/bin/kube-scheduler" ./scheduler)
(cd "$here/etcd" && go build -trimpath -o "$out/bin/etcd" .)
echo "$stamp" > "$out/stamp"
echo "setup: kube-apiserver, kubelet, kube-controller-manager, kube-scheduler $version and etcd built in $out/bin"
