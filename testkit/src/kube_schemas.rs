//! JSON schemas for kubeconform, made from a real API server's OpenAPI v2 document.
//!
//! kubeconform downloads its schemas from GitHub by default; there is no internet here,
//! and the server we test against is the better source anyway (it knows our CRD too).
//! One file per kind, named the way kubeconform's `{{ .ResourceKind }}{{ .KindSuffix }}.json`
//! template expects, holding the kind's definition and every definition it references.
//! Strict like `kubectl --validate=strict`: unknown fields are errors.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{Map, Value, json};

/// The `-schema-location` template for the files written by [`write`].
pub const LOCATION: &str = "{{ .ResourceKind }}{{ .KindSuffix }}.json";

/// Writes one schema per kind of `openapi` (an `/openapi/v2` document) into `dir`;
/// returns how many.
pub fn write(openapi: &Value, dir: &Path) -> std::io::Result<usize> {
    let Some(defs) = openapi.get("definitions").and_then(Value::as_object) else {
        return Err(std::io::Error::other("no definitions in the OpenAPI document"));
    };
    std::fs::create_dir_all(dir)?;
    let mut written = 0;
    for (name, def) in defs {
        let Some(gvks) = def.get("x-kubernetes-group-version-kind").and_then(Value::as_array) else {
            continue;
        };
        for gvk in gvks {
            let (Some(group), Some(version), Some(kind)) = (
                gvk.get("group").and_then(Value::as_str),
                gvk.get("version").and_then(Value::as_str),
                gvk.get("kind").and_then(Value::as_str),
            ) else {
                continue;
            };
            // kubeconform: "-" + first label of the group (or the version for core) + "-" + version.
            let suffix = match group.split('.').next() {
                Some(g) if !g.is_empty() => format!("-{}-{}", g.to_lowercase(), version.to_lowercase()),
                _ => format!("-{}", version.to_lowercase()),
            };
            let mut used = BTreeSet::new();
            references(def, defs, &mut used);
            let definitions: BTreeMap<&String, Value> = used
                .iter()
                .filter_map(|r| defs.get_key_value(r.as_str()))
                .map(|(k, v)| (k, strict(v.clone(), k)))
                .collect();
            let mut schema = strict(def.clone(), name);
            if let Value::Object(m) = &mut schema {
                m.insert("definitions".into(), json!(definitions));
            }
            let file = dir.join(format!("{}{suffix}.json", kind.to_lowercase()));
            std::fs::write(file, serde_json::to_vec(&schema).map_err(std::io::Error::other)?)?;
            written += 1;
        }
    }
    Ok(written)
}

/// Every definition `value` refers to, transitively.
fn references(value: &Value, defs: &Map<String, Value>, seen: &mut BTreeSet<String>) {
    match value {
        Value::Object(m) => {
            if let Some(name) = m
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/definitions/"))
                && seen.insert(name.to_owned())
                && let Some(d) = defs.get(name)
            {
                references(d, defs, seen);
            }
            m.values().for_each(|v| references(v, defs, seen));
        }
        Value::Array(a) => a.iter().for_each(|v| references(v, defs, seen)),
        _ => {}
    }
}

/// Unknown fields rejected; int-or-string and quantities accept both forms, as the server does.
fn strict(value: Value, name: &str) -> Value {
    match name {
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString" => {
            return json!({"oneOf": [{"type": "string"}, {"type": "integer"}]});
        }
        "io.k8s.apimachinery.pkg.api.resource.Quantity" => {
            return json!({"oneOf": [{"type": "string"}, {"type": "number"}]});
        }
        _ => {}
    }
    tighten(value)
}

/// Walks schema keywords only: a property may itself be called `properties` or `default`.
fn tighten(value: Value) -> Value {
    let Value::Object(mut m) = value else {
        return value;
    };
    if m.get("format").and_then(Value::as_str) == Some("int-or-string") {
        return json!({"oneOf": [{"type": "string"}, {"type": "integer"}]});
    }
    let open = m.contains_key("additionalProperties") || m.contains_key("x-kubernetes-preserve-unknown-fields");
    if m.contains_key("properties") && !open {
        m.insert("additionalProperties".into(), Value::Bool(false));
    }
    for (key, v) in m.iter_mut() {
        let taken = std::mem::take(v);
        *v = match key.as_str() {
            "properties" | "patternProperties" => match taken {
                Value::Object(props) => Value::Object(props.into_iter().map(|(k, s)| (k, tighten(s))).collect()),
                other => other,
            },
            "items" | "additionalProperties" | "not" => tighten(taken),
            "allOf" | "anyOf" | "oneOf" => match taken {
                Value::Array(a) => Value::Array(a.into_iter().map(tighten).collect()),
                other => other,
            },
            _ => taken,
        };
    }
    Value::Object(m)
}
