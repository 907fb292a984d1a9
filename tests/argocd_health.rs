//! The Argo CD health check (deploy/argocd/health.lua) on its fixtures
//! (deploy/argocd/testdata/*.json: an object and the health it must get), run by a
//! real Lua 5.4 interpreter, as Argo CD runs it (a chunk that reads `obj`, returns `hs`).

use std::path::Path;
use std::process::Command;

/// A JSON value as a Lua literal.
fn lua(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "nil".into(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => format!("{s:?}"),
        serde_json::Value::Array(items) => format!("{{{}}}", items.iter().map(lua).collect::<Vec<_>>().join(", ")),
        serde_json::Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("[{k:?}] = {}", lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[test]
fn the_argocd_health_check_maps_every_phase() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/argocd");
    let script = dir.join("health.lua");
    let mut seen = Vec::new();
    let mut fixtures: Vec<_> = std::fs::read_dir(dir.join("testdata"))
        .expect("testdata")
        .flatten()
        .collect();
    fixtures.sort_by_key(|e| e.path());
    for entry in fixtures {
        let path = entry.path();
        let fixture: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("fixture JSON");
        let out = Command::new(std::env::var("LUA").unwrap_or_else(|_| "lua5.4".into()))
            .arg("-e")
            .arg(format!("obj = {}", lua(&fixture["obj"])))
            .arg("-e")
            .arg(format!(
                "local hs = dofile({:?}) io.write(hs.status, '\\n', hs.message or '')",
                script.display().to_string()
            ))
            .output()
            .expect("lua5.4 (installed by tools/setup.sh)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
        assert_eq!(Some(status), fixture["want"].as_str(), "{}", path.display());
        assert!(!message.is_empty(), "{}: no message", path.display());
        seen.push(status.to_owned());
    }
    for health in ["Healthy", "Degraded", "Progressing", "Suspended"] {
        assert!(seen.iter().any(|s| s == health), "no fixture for {health}");
    }
}
