//! Admission of a TenantMigration against the RagStack it names: the rules that let
//! platform admins alone decide where a migration's data and credentials go.
//!
//! Pure functions over the two specs: the controller fetches the stack, calls
//! [`admit`] before it reads any Secret or store, and runs the engine on the spec it
//! returns, whose endpoints and Secret references are the stack's. Nothing here talks
//! to Kubernetes or to a store.

use crate::api::{Mode, RagStackSpec, TenantMigrationSpec, WorkloadRef};

/// Why a migration may not run. Each variant is one rule, named by [`Refusal::reason`]
/// in the migration's conditions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "spec.stackRef is not set: this controller takes store endpoints and credentials only from \
         a RagStack (it was not started with --allow-inline-endpoints)"
    )]
    NoStack,
    #[error("{field} is set, but endpoints and credentials come from RagStack {stack:?}; remove it")]
    InlineWithStack { stack: String, field: &'static str },
    #[error("RagStack {0:?} does not exist")]
    StackNotFound(String),
    #[error("RagStack {stack:?} does not allow namespace {namespace:?}")]
    NamespaceNotAllowed { stack: String, namespace: String },
    #[error(
        "RagStack {stack:?} does not allow namespace {namespace:?} to touch tenant {tenant:?} \
         (allowed: {allowed})"
    )]
    TenantNotAllowed {
        stack: String,
        namespace: String,
        tenant: String,
        allowed: String,
    },
    #[error("RagStack {stack:?} does not allow mode {mode:?} in namespace {namespace:?}")]
    ModeNotAllowed {
        stack: String,
        namespace: String,
        mode: Mode,
    },
    #[error(
        "RagStack {stack:?} defines no {store}; disable the phase (spec.{store}.enabled: false) \
         or ask the stack's admins to add it"
    )]
    StoreNotInStack { stack: String, store: &'static str },
    #[error(
        "RagStack {stack:?} does not allow namespace {namespace:?} to quiesce {kind} {name:?} \
         (spec.quiesce)"
    )]
    QuiesceNotAllowed {
        stack: String,
        namespace: String,
        kind: String,
        name: String,
    },
    #[error("spec.memgraph.database {asked:?} differs from RagStack {stack:?}'s database {theirs:?}")]
    DatabaseMismatch {
        stack: String,
        asked: String,
        theirs: String,
    },
}

impl Refusal {
    /// Every reason a refusal can carry, for telling a refused migration from a failed run.
    pub const REASONS: [&'static str; 8] = [
        "InlineEndpointsRefused",
        "StackNotFound",
        "NamespaceNotAllowed",
        "TenantNotAllowed",
        "ModeNotAllowed",
        "StoreNotInStack",
        "QuiesceNotAllowed",
        "DatabaseMismatch",
    ];

    /// The condition reason: which rule refused.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoStack | Refusal::InlineWithStack { .. } => "InlineEndpointsRefused",
            Refusal::StackNotFound(_) => "StackNotFound",
            Refusal::NamespaceNotAllowed { .. } => "NamespaceNotAllowed",
            Refusal::TenantNotAllowed { .. } => "TenantNotAllowed",
            Refusal::ModeNotAllowed { .. } => "ModeNotAllowed",
            Refusal::StoreNotInStack { .. } => "StoreNotInStack",
            Refusal::QuiesceNotAllowed { .. } => "QuiesceNotAllowed",
            Refusal::DatabaseMismatch { .. } => "DatabaseMismatch",
        }
    }
}

/// The first endpoint or credential field a migration sets itself, if any.
pub fn inline_field(spec: &TenantMigrationSpec) -> Option<&'static str> {
    [
        (spec.config.url.is_some(), "spec.config.url"),
        (spec.config.token_secret_ref.is_some(), "spec.config.tokenSecretRef"),
        (spec.redis.url.is_some(), "spec.redis.url"),
        (spec.redis.password_secret_ref.is_some(), "spec.redis.passwordSecretRef"),
        (spec.qdrant.url.is_some(), "spec.qdrant.url"),
        (spec.qdrant.api_key_secret_ref.is_some(), "spec.qdrant.apiKeySecretRef"),
        (spec.memgraph.uri.is_some(), "spec.memgraph.uri"),
        (
            spec.memgraph.credentials_secret_ref.is_some(),
            "spec.memgraph.credentialsSecretRef",
        ),
    ]
    .into_iter()
    .find_map(|(set, field)| set.then_some(field))
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters
/// (tenant ids and Kubernetes names have no other special characters to escape).
pub fn matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return pattern == text;
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Checks every rule of `stack` (named `name`) for a migration in `namespace`, and
/// builds the spec to run: the stack's endpoints and Secret references (which live in
/// the operator's namespace), its batch and retry defaults under the migration's own
/// settings. Nothing is read from a store or a Secret before this passes.
pub fn admit(
    name: &str,
    stack: &RagStackSpec,
    namespace: &str,
    spec: &TenantMigrationSpec,
) -> Result<TenantMigrationSpec, Refusal> {
    let stack_name = name.to_owned();
    if let Some(field) = inline_field(spec) {
        return Err(Refusal::InlineWithStack {
            stack: stack_name,
            field,
        });
    }
    let entries: Vec<_> = stack
        .access
        .iter()
        .filter(|a| a.namespaces.iter().any(|p| matches(p, namespace)))
        .collect();
    if entries.is_empty() {
        return Err(Refusal::NamespaceNotAllowed {
            stack: stack_name,
            namespace: namespace.to_owned(),
        });
    }
    for tenant in [&spec.source, &spec.target] {
        let allowed = entries
            .iter()
            .any(|a| a.tenants.iter().any(|p| matches(p, tenant.as_str())));
        if !allowed {
            let patterns: Vec<&str> = entries
                .iter()
                .flat_map(|a| a.tenants.iter().map(String::as_str))
                .collect();
            return Err(Refusal::TenantNotAllowed {
                stack: stack_name,
                namespace: namespace.to_owned(),
                tenant: tenant.to_string(),
                allowed: if patterns.is_empty() {
                    "none".to_owned()
                } else {
                    patterns.join(", ")
                },
            });
        }
    }
    if !entries
        .iter()
        .any(|a| a.modes.is_empty() || a.modes.contains(&spec.mode))
    {
        return Err(Refusal::ModeNotAllowed {
            stack: stack_name,
            namespace: namespace.to_owned(),
            mode: spec.mode,
        });
    }
    for w in &spec.quiesce {
        let allowed = |a: &WorkloadRef| a.kind == w.kind && matches(&a.name, &w.name);
        if !entries.iter().any(|e| e.quiesce.iter().any(allowed)) {
            return Err(Refusal::QuiesceNotAllowed {
                stack: stack_name,
                namespace: namespace.to_owned(),
                kind: w.kind.to_string(),
                name: w.name.clone(),
            });
        }
    }

    let mut out = spec.clone();
    let missing = |store: &'static str| Refusal::StoreNotInStack {
        stack: name.to_owned(),
        store,
    };
    let d = &stack.defaults;
    if out.config.enabled {
        let c = stack.config.as_ref().ok_or_else(|| missing("config"))?;
        out.config.url = Some(c.url.clone());
        out.config.token_secret_ref = c.token_secret_ref.clone();
    }
    if out.redis.enabled {
        let r = stack.redis.as_ref().ok_or_else(|| missing("redis"))?;
        out.redis.url = Some(r.url.clone());
        out.redis.password_secret_ref = r.password_secret_ref.clone();
        out.redis.batch_size = out.redis.batch_size.or(d.redis_batch_size);
    }
    if out.qdrant.enabled {
        let q = stack.qdrant.as_ref().ok_or_else(|| missing("qdrant"))?;
        out.qdrant.url = Some(q.url.clone());
        out.qdrant.api_key_secret_ref = q.api_key_secret_ref.clone();
        out.qdrant.batch_size = out.qdrant.batch_size.or(d.qdrant_batch_size);
    }
    if out.memgraph.enabled {
        let m = stack.memgraph.as_ref().ok_or_else(|| missing("memgraph"))?;
        let default = crate::api::MemgraphSpec::default().database;
        if out.memgraph.database != default && out.memgraph.database != m.database {
            return Err(Refusal::DatabaseMismatch {
                stack: stack_name,
                asked: out.memgraph.database.clone(),
                theirs: m.database.clone(),
            });
        }
        out.memgraph.uri = Some(m.uri.clone());
        out.memgraph.credentials_secret_ref = m.credentials_secret_ref.clone();
        out.memgraph.database = m.database.clone();
        out.memgraph.batch_size = out.memgraph.batch_size.or(d.memgraph_batch_size);
        out.memgraph.query_timeout_seconds = out.memgraph.query_timeout_seconds.or(d.memgraph_query_timeout_seconds);
    }
    out.retry = spec.retry.or(&d.retry);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(yaml: &str) -> RagStackSpec {
        serde_yaml::from_str(yaml).expect("stack")
    }

    fn migration(yaml: &str) -> TenantMigrationSpec {
        serde_yaml::from_str(yaml).expect("migration")
    }

    const STACK: &str = "redis: {url: 'redis://r:6379/0', passwordSecretRef: {name: r, key: p}}\n\
        config: {url: 'http://api:8000', tokenSecretRef: {name: api, key: token}}\n\
        access:\n\
        - {namespaces: [team-a], tenants: ['acme_*', shared], quiesce: [{kind: Deployment, name: 'rag-*'}]}\n\
        - {namespaces: ['ro-*'], tenants: ['*'], modes: [Copy]}\n\
        defaults: {redisBatchSize: 77, retry: {maxAttempts: 9}}\n";

    #[test]
    fn patterns_match_whole_names() {
        for (p, t, want) in [
            ("acme_*", "acme_1", true),
            ("acme_*", "acme_", true),
            ("acme_*", "xacme_1", false),
            ("*", "anything", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("a*a", "a", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("*_prod", "acme_prod", true),
        ] {
            assert_eq!(matches(p, t), want, "{p} ~ {t}");
        }
    }

    #[test]
    fn an_admitted_migration_gets_the_stacks_endpoints_and_defaults() {
        let m = migration("source: acme_1\ntarget: acme_2\nqdrant: {enabled: false}\nmemgraph: {enabled: false}\n");
        let a = admit("prod", &stack(STACK), "team-a", &m).expect("admitted");
        assert_eq!(a.redis.url.as_deref(), Some("redis://r:6379/0"));
        assert_eq!(a.redis.password_secret_ref.as_ref().map(|r| r.name.as_str()), Some("r"));
        assert_eq!(a.config.url.as_deref(), Some("http://api:8000"));
        assert_eq!(a.redis.batch_size, Some(77));
        assert_eq!(a.retry.max_attempts, Some(9));
    }

    #[test]
    fn every_rule_refuses_by_name() {
        let s = stack(STACK);
        let cases = [
            (
                "source: acme_1\ntarget: acme_2\nredis: {url: 'redis://evil:6379'}\n",
                "team-a",
                "InlineEndpointsRefused",
                "spec.redis.url",
            ),
            (
                "source: acme_1\ntarget: acme_2\nconfig: {tokenSecretRef: {name: other, key: k}}\n",
                "team-a",
                "InlineEndpointsRefused",
                "spec.config.tokenSecretRef",
            ),
            (
                "source: acme_1\ntarget: acme_2\n",
                "team-b",
                "NamespaceNotAllowed",
                "team-b",
            ),
            (
                "source: acme_1\ntarget: globex_1\n",
                "team-a",
                "TenantNotAllowed",
                "globex_1",
            ),
            (
                "source: globex_1\ntarget: acme_1\n",
                "team-a",
                "TenantNotAllowed",
                "acme_*, shared",
            ),
            ("source: a\ntarget: b\nmode: Move\n", "ro-x", "ModeNotAllowed", "Move"),
            (
                "source: acme_1\ntarget: acme_2\n",
                "team-a",
                "StoreNotInStack",
                "qdrant",
            ),
            (
                "source: acme_1\ntarget: acme_2\nqdrant: {enabled: false}\nmemgraph: {enabled: false}\n\
                 quiesce: [{kind: Deployment, name: billing}]\n",
                "team-a",
                "QuiesceNotAllowed",
                "billing",
            ),
            (
                "source: acme_1\ntarget: acme_2\nqdrant: {enabled: false}\nmemgraph: {enabled: false}\n\
                 quiesce: [{kind: StatefulSet, name: rag-db}]\n",
                "team-a",
                "QuiesceNotAllowed",
                "StatefulSet",
            ),
        ];
        for (m, ns, reason, names) in cases {
            let err = admit("prod", &s, ns, &migration(m)).expect_err(m);
            assert_eq!(err.reason(), reason, "{m}: {err}");
            assert!(err.to_string().contains(names), "{m}: {err}");
            assert!(Refusal::REASONS.contains(&err.reason()));
        }
        let ok = "source: acme_1\ntarget: acme_2\nqdrant: {enabled: false}\nmemgraph: {enabled: false}\n\
                  quiesce: [{kind: Deployment, name: rag-api}]\n";
        assert!(admit("prod", &s, "team-a", &migration(ok)).is_ok());
        let copy = "source: x\ntarget: y\nmode: Copy\nqdrant: {enabled: false}\nmemgraph: {enabled: false}\n";
        assert!(admit("prod", &s, "ro-x", &migration(copy)).is_ok());
    }

    #[test]
    fn a_stack_with_no_access_entries_admits_nobody() {
        let s = stack("redis: {url: 'redis://r'}\n");
        let m = migration("source: a\ntarget: b\n");
        assert_eq!(
            admit("s", &s, "default", &m).expect_err("refused").reason(),
            "NamespaceNotAllowed"
        );
    }
}
