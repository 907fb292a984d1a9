#!/usr/bin/env bash
# Resolves Neo4j 4.4 Community from Maven Central and compiles the Bolt test server.
# Output (outside the repository, reused by later runs): $TM_CACHE/neo4j/{classpath.txt,classes/}
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${TM_CACHE:-$HOME/.cache/tenant-migrator}/neo4j
stamp=$(sha256sum "$here/pom.xml" "$here/BoltServer.java" | sha256sum | cut -c1-16)
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ]; then
  exit 0
fi
mkdir -p "$out/classes"
(cd "$here" && mvn -q -B dependency:build-classpath -Dmdep.outputFile="$out/classpath.txt")
javac -d "$out/classes" -cp "$(cat "$out/classpath.txt")" "$here/BoltServer.java"
echo "$stamp" > "$out/stamp"
echo "setup: Bolt test server (Neo4j 4.4) built in $out"
