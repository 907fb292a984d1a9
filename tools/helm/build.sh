#!/usr/bin/env bash
# Builds helm from its Go module (helm.sh/helm/v3, pinned) into $TM_CACHE/helm/bin, for the
# chart tests (lint, template). Reused while the version is unchanged.
set -euo pipefail
version=v3.22.0
out=${TM_CACHE:-$HOME/.cache/tenant-migrator}/helm
if [ -x "$out/bin/helm" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$version" ]; then
  exit 0
fi
mkdir -p "$out/bin"
GOBIN="$out/bin" go install "helm.sh/helm/v3/cmd/helm@$version"
echo "$version" > "$out/stamp"
echo "setup: helm $version built in $out/bin"
