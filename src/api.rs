//! The `TenantMigration` resource: spec and status types.
//!
//! These are plain data. The CLI reads them from a manifest (`-f`), the controller
//! reads and writes them through the API server, and the engine is fed a spec and
//! reports progress in the status shapes defined here. Nothing in this module talks
//! to a store or to Kubernetes.

use std::fmt;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A tenant id as LightRAG's server accepts it: `[A-Za-z0-9_]{1,64}`.
///
/// Validated on deserialisation, so a manifest with a bad id fails to parse
/// before anything is connected to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct TenantId(#[schemars(regex(pattern = r"^[A-Za-z0-9_]{1,64}$"))] String);

/// Why a string is not a tenant id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTenantId {
    #[error("tenant id is empty")]
    Empty,
    #[error("tenant id {0:?} is longer than 64 characters")]
    TooLong(String),
    #[error("tenant id {id:?} contains {ch:?}; only letters, digits and '_' are allowed")]
    BadCharacter { id: String, ch: char },
}

impl TenantId {
    pub const MAX_LEN: usize = 64;

    pub fn new(id: impl Into<String>) -> Result<Self, InvalidTenantId> {
        let id = id.into();
        if id.is_empty() {
            return Err(InvalidTenantId::Empty);
        }
        if id.chars().count() > Self::MAX_LEN {
            return Err(InvalidTenantId::TooLong(id));
        }
        if let Some(ch) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_')) {
            return Err(InvalidTenantId::BadCharacter { id, ch });
        }
        Ok(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TenantId::new(s).map_err(serde::de::Error::custom)
    }
}

/// Move renames the tenant (sources removed once the target is verified);
/// Copy clones it and leaves the source untouched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Mode {
    #[default]
    Move,
    Copy,
}

/// What to do when the target already holds a different item under the same name.
/// An identical item is never a conflict: it counts as already migrated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum OnConflict {
    /// Refuse in preflight, before anything is written.
    #[default]
    Fail,
    /// Keep the target's item and count the source item as skipped.
    Skip,
    /// Replace the target's item with the source's.
    Overwrite,
}

/// A key of a Kubernetes Secret in the migration's namespace. The CLI reads the
/// value from an environment variable instead (see the README).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    pub name: String,
    /// Key inside the Secret whose value is the credential.
    pub key: String,
}

/// A Secret holding `username` and `password` keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// Name of the Secret.
    pub name: String,
}

/// HTTP method used to create the target tenant's config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum CreateMethod {
    #[default]
    Post,
    Put,
}

fn enabled() -> bool {
    true
}

/// The tenant-config HTTP API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigSpec {
    /// Run this phase.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Base URL of the API; the phase uses `{url}/tenants/{id}/config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Bearer token for the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
    /// Method that creates the target's config (POST or PUT).
    #[serde(default)]
    pub method: CreateMethod,
    /// What to do when the target already has a different config.
    #[serde(default)]
    pub on_conflict: OnConflict,
    /// JSON pointers (RFC 6901, e.g. `/storage/workspace`) of the fields that hold the
    /// tenant's own id; each must hold the source id, and the target's config gets the
    /// target id there. Empty: every string value equal to the source id under a key
    /// named `workspace`, `workspace_id`, `tenant`, `tenant_id` or `tenantId`, at any depth.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenant_fields: Vec<String>,
}

impl Default for ConfigSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            url: None,
            token_secret_ref: None,
            method: CreateMethod::Post,
            on_conflict: OnConflict::Fail,
            tenant_fields: Vec::new(),
        }
    }
}

/// Redis or DragonflyDB.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisSpec {
    /// Run this phase.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// `redis://host:port/db`; a password in the URL is refused (use the Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Password (and optionally `username` via the URL) for AUTH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// What to do when a target key already exists with a different value.
    #[serde(default)]
    pub on_conflict: OnConflict,
    /// Key prefix templates that belong to a tenant, each containing `{tenant}`
    /// once. Empty means LightRAG's layout (see the README).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_prefixes: Vec<String>,
    /// Keys per batch (SCAN COUNT and pipeline size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub batch_size: Option<u32>,
}

impl Default for RedisSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            url: None,
            password_secret_ref: None,
            on_conflict: OnConflict::Fail,
            key_prefixes: Vec::new(),
            batch_size: None,
        }
    }
}

/// How Qdrant point ids are handled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PointIdScheme {
    /// Re-key every point to the id LightRAG computes for the target tenant.
    #[default]
    LightRAG,
    /// Keep ids; rewrite the tenant field in place.
    Keep,
}

fn workspace_id() -> String {
    "workspace_id".to_owned()
}

fn lightrag_prefix() -> String {
    "lightrag_vdb_".to_owned()
}

/// Qdrant (gRPC).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QdrantSpec {
    /// Run this phase.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// gRPC URL, e.g. `http://rag-qdrant:6334`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
    /// Collections to migrate; empty means every collection whose name starts with
    /// `collectionPrefix` and that holds source points.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collections: Vec<String>,
    /// Name prefix of the collections discovered when `collections` is empty. LightRAG's
    /// collections (`lightrag_vdb_{ns}` and `lightrag_vdb_{ns}_{model}_{dim}d`) start with
    /// `lightrag_vdb_`; another application's collections are never searched.
    #[serde(default = "lightrag_prefix")]
    pub collection_prefix: String,
    /// Payload field naming the tenant.
    #[serde(default = "workspace_id")]
    pub tenant_field: String,
    /// Re-key points the LightRAG way, or keep their ids.
    #[serde(default)]
    pub point_ids: PointIdScheme,
    /// Points per page and upsert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub batch_size: Option<u32>,
}

impl Default for QdrantSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            url: None,
            api_key_secret_ref: None,
            collections: Vec::new(),
            collection_prefix: lightrag_prefix(),
            tenant_field: workspace_id(),
            point_ids: PointIdScheme::LightRAG,
            batch_size: None,
        }
    }
}

/// Memgraph (Bolt).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemgraphSpec {
    /// Run this phase.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Bolt URI, e.g. `bolt://rag-memgraph:7687`; `bolt+s://` for TLS (the server's
    /// certificate is verified against the system's roots or `SSL_CERT_FILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Secret with `username` and `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// Database named in every Bolt request; Memgraph's default database is `memgraph`
    /// (Memgraph 2.11 and later refuse a name they do not know).
    #[serde(default = "memgraph_database")]
    pub database: String,
    /// Nodes per transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub batch_size: Option<u32>,
    /// Seconds one query may take before it is abandoned and retried (a hung
    /// connection cannot hold a batch forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub query_timeout_seconds: Option<u32>,
    /// What to do with nodes under the source label that also carry a label that is
    /// neither the tenant's nor their own `entity_type` (another tenant's workspace
    /// label on a graph written by LightRAG <= 1.4.13, which also labelled nodes by
    /// entity type): `Refuse` the migration in preflight (default), or `Include` them.
    #[serde(default)]
    pub foreign_labelled_nodes: ForeignNodes,
}

/// How the Memgraph phase treats nodes whose labels say they may be another tenant's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ForeignNodes {
    /// Refuse the migration in preflight, naming how many and one of them.
    #[default]
    Refuse,
    /// Treat them as the tenant's: they move (or are cloned) with it.
    Include,
}

fn memgraph_database() -> String {
    "memgraph".to_owned()
}

impl Default for MemgraphSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            uri: None,
            credentials_secret_ref: None,
            database: memgraph_database(),
            batch_size: None,
            query_timeout_seconds: None,
            foreign_labelled_nodes: ForeignNodes::Refuse,
        }
    }
}

/// Moves (or copies) one tenant's data to a new tenant id across the tenant-config
/// API, Redis/DragonflyDB, Qdrant and Memgraph.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "tenancy.dev",
    version = "v1alpha1",
    kind = "TenantMigration",
    plural = "tenantmigrations",
    shortname = "tm",
    namespaced,
    status = "TenantMigrationStatus",
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".spec.source"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.target"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self.source != self.target").message("source and target must be different tenants"))]
#[x_kube(validation = Rule::new("has(self.stackRef) == has(oldSelf.stackRef)").message("stackRef cannot be added or removed; create a new TenantMigration"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantMigrationSpec {
    /// Tenant id whose data is migrated.
    #[x_kube(validation = Rule::new("self == oldSelf").message("source is immutable; create a new TenantMigration"))]
    pub source: TenantId,
    /// New tenant id.
    #[x_kube(validation = Rule::new("self == oldSelf").message("target is immutable; create a new TenantMigration"))]
    pub target: TenantId,
    /// Move (rename) or Copy (clone).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("mode is immutable; create a new TenantMigration"))]
    pub mode: Mode,
    /// Plan only: count what would move and find conflicts; write nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Pause at the next batch boundary; resume when false.
    #[serde(default)]
    pub suspend: bool,
    /// Tenant-config API phase.
    #[serde(default)]
    pub config: ConfigSpec,
    /// Redis / DragonflyDB phase.
    #[serde(default)]
    pub redis: RedisSpec,
    /// Qdrant phase.
    #[serde(default)]
    pub qdrant: QdrantSpec,
    /// Memgraph phase.
    #[serde(default)]
    pub memgraph: MemgraphSpec,
    /// Workloads in this namespace that write to the stores (the RAG API, its workers):
    /// scaled to zero once every preflight passed, before the first write, and back to
    /// their former replica counts when the migration ends (succeeded, failed or
    /// deleted). A suspended migration keeps them at zero: they would see a half-moved
    /// tenant. Needs the controller's quiesce role (see the README).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quiesce: Vec<WorkloadRef>,
    /// How failing batches are retried (over the stack's defaults).
    #[serde(default, skip_serializing_if = "RetryPolicy::is_default")]
    pub retry: RetryPolicy,
    /// How many times the controller runs a migration again after it failed for a
    /// transient reason (a store down past the batch retries, a source still being
    /// written), waiting 10 s, 20 s, 40 s … (at most 5 min) in between; permanent
    /// failures (bad input, conflicts) stay Failed at once. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub backoff_limit: Option<u32>,
    /// The RagStack (set up by platform admins) whose stores this migration uses: the
    /// endpoints and credentials come from it, and it says which namespaces may use it
    /// for which tenants. Without it the endpoints are inline, which the controller
    /// accepts only when started with `--allow-inline-endpoints`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("stackRef is immutable; create a new TenantMigration"))]
    pub stack_ref: Option<StackRef>,
}

/// Names a cluster-scoped RagStack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StackRef {
    /// Name of the RagStack.
    pub name: String,
}

/// The tenant-config API of a stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StackConfig {
    /// Base URL of the API (`https://` for TLS); the phase uses `{url}/tenants/{id}/config`.
    pub url: String,
    /// Bearer token: a Secret in the operator's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
}

/// The Redis or DragonflyDB of a stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StackRedis {
    /// `redis://host:port/db` (`rediss://` for TLS, `redis+cluster://` for a Cluster).
    pub url: String,
    /// Password for AUTH: a Secret in the operator's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
}

/// The Qdrant of a stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StackQdrant {
    /// gRPC URL (`https://` for TLS), e.g. `http://rag-qdrant:6334`.
    pub url: String,
    /// API key: a Secret in the operator's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
}

/// The Memgraph of a stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StackMemgraph {
    /// Bolt URI, `bolt://` or `bolt+s://` for TLS.
    pub uri: String,
    /// Secret in the operator's namespace with `username` and `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// Database named in every Bolt request.
    #[serde(default = "memgraph_database")]
    pub database: String,
}

/// Who may use a stack: namespaces, and the tenant ids migrations there may touch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StackAccess {
    /// Namespaces whose TenantMigrations may use the stack; `*` matches any run of
    /// characters (`team-*`), a lone `*` every namespace.
    pub namespaces: Vec<String>,
    /// Tenant ids those migrations may touch, as source and as target; `*` as above
    /// (`acme_*`).
    pub tenants: Vec<String>,
    /// Modes allowed (`Move`, `Copy`); empty allows both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modes: Vec<Mode>,
    /// Workloads of those namespaces that `spec.quiesce` may scale to zero (names may
    /// use `*`); empty allows none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quiesce: Vec<WorkloadRef>,
}

/// How a failing batch is retried: with exponential backoff, while it fails with a
/// transient error, until the deadline or the attempts run out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Seconds a failing batch is retried for, from its first failure: long enough to
    /// ride out a store's restart or failover (default 120).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub deadline_seconds: Option<u64>,
    /// Attempts per batch before the phase fails, whatever the deadline (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_attempts: Option<u32>,
    /// Milliseconds before the first retry; doubled each time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 600000))]
    pub initial_backoff_millis: Option<u64>,
    /// Longest wait between two attempts, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub max_backoff_seconds: Option<u64>,
}

impl RetryPolicy {
    /// Each field of `self`, or else `other`'s.
    pub fn or(&self, other: &RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            deadline_seconds: self.deadline_seconds.or(other.deadline_seconds),
            max_attempts: self.max_attempts.or(other.max_attempts),
            initial_backoff_millis: self.initial_backoff_millis.or(other.initial_backoff_millis),
            max_backoff_seconds: self.max_backoff_seconds.or(other.max_backoff_seconds),
        }
    }

    fn is_default(&self) -> bool {
        self == &RetryPolicy::default()
    }
}

/// Settings for every migration on a stack that does not set them itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StackDefaults {
    /// Redis keys per batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub redis_batch_size: Option<u32>,
    /// Qdrant points per page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub qdrant_batch_size: Option<u32>,
    /// Memgraph nodes per transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub memgraph_batch_size: Option<u32>,
    /// Seconds one Memgraph query may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub memgraph_query_timeout_seconds: Option<u32>,
    /// Retries of a failed batch.
    #[serde(default)]
    pub retry: RetryPolicy,
}

/// One RAG platform's stores, set up by platform admins: where a migration's data
/// goes, with which credentials (Secrets in the operator's namespace), and who may
/// use it. A TenantMigration names it in `spec.stackRef`; Velero's
/// BackupStorageLocation is the model.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "tenancy.dev",
    version = "v1alpha1",
    kind = "RagStack",
    plural = "ragstacks",
    shortname = "stack",
    printcolumn = r#"{"name":"Config","type":"string","jsonPath":".spec.config.url"}"#,
    printcolumn = r#"{"name":"Redis","type":"string","jsonPath":".spec.redis.url"}"#,
    printcolumn = r#"{"name":"Qdrant","type":"string","jsonPath":".spec.qdrant.url"}"#,
    printcolumn = r#"{"name":"Memgraph","type":"string","jsonPath":".spec.memgraph.uri"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RagStackSpec {
    /// The tenant-config API; a stack without it cannot run the config phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<StackConfig>,
    /// Redis / DragonflyDB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<StackRedis>,
    /// Qdrant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qdrant: Option<StackQdrant>,
    /// Memgraph.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memgraph: Option<StackMemgraph>,
    /// Who may use the stack; a namespace no entry names may not.
    #[serde(default)]
    pub access: Vec<StackAccess>,
    /// Settings for migrations that do not set them.
    #[serde(default)]
    pub defaults: StackDefaults,
}

/// Kinds of workload that `spec.quiesce` can scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A Deployment or StatefulSet in the migration's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadRef {
    /// Deployment or StatefulSet.
    pub kind: WorkloadKind,
    /// Its name.
    pub name: String,
}

/// A workload scaled down for the migration, and the replica count to give back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuiescedWorkload {
    /// Deployment or StatefulSet.
    pub kind: WorkloadKind,
    /// Its name.
    pub name: String,
    /// Replicas it had before the migration scaled it to zero.
    pub replicas: i32,
    /// Whether those replicas were given back.
    #[serde(default)]
    pub restored: bool,
}

/// The four stores, in the order their phases run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Store {
    Config,
    Redis,
    Qdrant,
    Memgraph,
}

impl Store {
    pub const ALL: [Store; 4] = [Store::Config, Store::Redis, Store::Qdrant, Store::Memgraph];

    pub fn name(self) -> &'static str {
        match self {
            Store::Config => "config",
            Store::Redis => "redis",
            Store::Qdrant => "qdrant",
            Store::Memgraph => "memgraph",
        }
    }

    /// What one item of this store is called in messages.
    pub fn unit(self) -> &'static str {
        match self {
            Store::Config => "configs",
            Store::Redis => "keys",
            Store::Qdrant => "points",
            Store::Memgraph => "nodes",
        }
    }
}

impl fmt::Display for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Overall state of a migration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MigrationPhase {
    #[default]
    Pending,
    Running,
    Suspended,
    Succeeded,
    Failed,
}

/// State of one store's phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PhaseState {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
}

/// Where a phase is inside its run; each stage is a pass over the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Stage {
    /// Writing target items.
    #[default]
    Copy,
    /// Comparing every source item with its target by content, copying again what
    /// changed in the source since it was copied; then counting both. Nothing has
    /// been removed yet.
    Verify,
    /// Move only: removing each source item whose target is equal at that moment
    /// (items changed since are copied again and removed in a later pass).
    RemoveSource,
    /// Move only: checking that no source item is left.
    VerifyRemoved,
    /// Verified and finished.
    Done,
}

/// Where to continue a phase after a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// Stage that was running.
    pub stage: Stage,
    /// Store-specific position inside the stage (a SCAN cursor for Redis); empty at the start.
    #[serde(default)]
    pub cursor: String,
    /// Batches completed in this stage.
    #[serde(default)]
    pub batch: u64,
    /// Pass of the stage (Verify and RemoveSource repeat while the source changes).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pass: u32,
    /// The phase may have written: recorded before its first write, so that a run
    /// stopped during that write knows on resume that the target's items are its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wrote: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Progress of one collection (Qdrant) inside a phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CollectionStatus {
    /// Collection name.
    pub name: String,
    /// Points of the tenant the collection will hold in the target.
    #[serde(default)]
    pub total: u64,
    /// Points migrated so far.
    #[serde(default)]
    pub done: u64,
}

/// Progress and result of one store's phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhaseStatus {
    /// Pending, Running, Succeeded, Failed or Skipped.
    pub state: PhaseState,
    /// Items of the source planned to migrate.
    #[serde(default)]
    pub total: u64,
    /// Items migrated (or found already identical in the target).
    #[serde(default)]
    pub done: u64,
    /// Items left alone because of `onConflict: Skip`.
    #[serde(default)]
    pub skipped: u64,
    /// Items that could not be migrated.
    #[serde(default)]
    pub failed: u64,
    /// Source items whose target was compared with them by content and found equal
    /// (in the last verification pass).
    #[serde(default)]
    pub compared: u64,
    /// Source items copied again because they changed (or appeared) in the source
    /// after they were copied: catch-up, over the whole run.
    #[serde(default)]
    pub recopied: u64,
    /// Where to resume after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
    /// When the phase started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When the phase ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// Human-readable result or error: which store, which batch, which error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Per-collection progress (Qdrant).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collections: Vec<CollectionStatus>,
}

/// One entry per store, in run order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhaseStatuses {
    /// Tenant-config API.
    #[serde(default)]
    pub config: PhaseStatus,
    /// Redis / DragonflyDB.
    #[serde(default)]
    pub redis: PhaseStatus,
    /// Qdrant.
    #[serde(default)]
    pub qdrant: PhaseStatus,
    /// Memgraph.
    #[serde(default)]
    pub memgraph: PhaseStatus,
}

impl PhaseStatuses {
    pub fn get(&self, store: Store) -> &PhaseStatus {
        match store {
            Store::Config => &self.config,
            Store::Redis => &self.redis,
            Store::Qdrant => &self.qdrant,
            Store::Memgraph => &self.memgraph,
        }
    }

    pub fn get_mut(&mut self, store: Store) -> &mut PhaseStatus {
        match store {
            Store::Config => &mut self.config,
            Store::Redis => &mut self.redis,
            Store::Qdrant => &mut self.qdrant,
            Store::Memgraph => &mut self.memgraph,
        }
    }
}

/// Observed state of a TenantMigration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantMigrationStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Running, Suspended, Succeeded or Failed.
    #[serde(default)]
    pub phase: MigrationPhase,
    /// Items done over items planned, across stores (e.g. `12000/91000`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// When the migration started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When the migration ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// One entry per store, in run order.
    #[serde(default)]
    pub phases: PhaseStatuses,
    /// Workloads of `spec.quiesce` scaled to zero, recorded before scaling so that a
    /// restarted controller still knows what to give back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quiesced: Vec<QuiescedWorkload>,
    /// The RagStack whose stores the migration uses (`inline` without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// The tenants the migration touches: source, then target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<String>,
    /// Runs of this generation that failed for a transient reason and were retried.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed_runs: u32,
    /// When the next run after a transient failure starts (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
    /// Ready, Progressing and Degraded, in metav1.Condition shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_follow_lightrag_rules() {
        for ok in ["siraya", "tenant_76920508", "A", &"x".repeat(64)] {
            assert!(TenantId::new(ok).is_ok(), "{ok}");
        }
        let cases = [
            ("", "empty"),
            (&"x".repeat(65) as &str, "longer than 64"),
            ("sir*ya", "contains '*'"),
            ("a b", "contains ' '"),
            ("ten-ant", "contains '-'"),
            ("t[1]", "contains '['"),
            ("tënant", "contains 'ë'"),
        ];
        for (id, want) in cases {
            let err = TenantId::new(id).expect_err(id).to_string();
            assert!(err.contains(want), "{id:?}: {err}");
        }
    }

    #[test]
    fn spec_rejects_unknown_fields_and_bad_ids() {
        let unknown: Result<TenantMigrationSpec, _> = serde_yaml::from_str("source: a\ntarget: b\nmodee: Copy\n");
        assert!(unknown.unwrap_err().to_string().contains("unknown field `modee`"));
        let bad: Result<TenantMigrationSpec, _> = serde_yaml::from_str("source: 'a*'\ntarget: b\n");
        assert!(bad.unwrap_err().to_string().contains("contains '*'"));
        let spec: TenantMigrationSpec = serde_yaml::from_str("source: a\ntarget: b\n").unwrap();
        assert_eq!(spec.mode, Mode::Move);
        assert!(spec.redis.enabled && spec.config.enabled);
        assert_eq!(spec.redis.on_conflict, OnConflict::Fail);
    }
}
