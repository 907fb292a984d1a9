//! tenant-migrator: moves one tenant's data to a new tenant id across a tenant-config
//! API, Redis/DragonflyDB, Qdrant and Memgraph.
//!
//! Layout (data flows one way, top to bottom):
//! - [`api`]: the TenantMigration resource types, plain data.
//! - [`engine`]: orders the phases, retries batches, checkpoints, verifies; knows
//!   nothing of Kubernetes or terminals.
//! - [`stores`]: one module per store, the only code that speaks its protocol.
//! - [`cli`]: the `migrate` shell (flags, manifest, progress bars, summary).
//! - [`controller`]: the Kubernetes shell (watch, Secrets, engine, status).
//! - [`quiesce`]: the controller's scaling of `spec.quiesce` workloads to zero and back.
//! - [`stack`]: admission of a migration against the RagStack it names.
//! - [`redact`]: bounded, credential-free excerpts for status and Events.

pub mod api;
pub mod cli;
pub mod controller;
pub mod engine;
pub mod quiesce;
pub mod redact;
pub mod stack;
pub mod stores;
pub mod telemetry;

use std::fmt;

/// A credential. Its `Debug` and `Display` never show the value, so it cannot leak
/// into logs, errors or status by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that hands it to a protocol client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}
