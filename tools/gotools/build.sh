#!/usr/bin/env bash
# Builds the chart tests' Go CLIs from their modules (pinned) into $TM_CACHE/<tool>/bin:
# helm (lint, template) and kubeconform (schema validation of every rendered manifest).
# Each is reused while its version is unchanged.
set -euo pipefail
cache=${TM_CACHE:-$HOME/.cache/tenant-migrator}
build() { # name module version
  local name=$1 module=$2 version=$3 out=$cache/$1
  if [ -x "$out/bin/$name" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$version" ]; then
    return 0
  fi
  mkdir -p "$out/bin"
  GOBIN="$out/bin" go install "$module@$version"
  echo "$version" > "$out/stamp"
  echo "setup: $name $version built in $out/bin"
}
build helm helm.sh/helm/v3/cmd/helm v3.22.0
build kubeconform github.com/yannh/kubeconform/cmd/kubeconform v0.7.0
