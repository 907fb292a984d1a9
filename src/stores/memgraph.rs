//! The Memgraph phase (Bolt 4.x through neo4rs).
//!
//! LightRAG keeps a tenant's graph as nodes labelled with the workspace id and
//! `DIRECTED` relationships between them, with an index on `:{ws}(entity_id)`.
//! Move relabels the tenant's nodes in batches (each batch one transaction, so a
//! node is always under exactly one of the two labels); Copy clones nodes with all
//! properties under the target label, matched by `entity_id` so a resumed batch
//! never duplicates, then their relationships.
//!
//! The Cypher here is the subset Memgraph and Neo4j 4.4 both accept (the README
//! lists each construct with the Memgraph documentation that allows it):
//! `CREATE INDEX ON :L(p)`, `DROP INDEX ON :L(p)`, MATCH/WITH/ORDER BY/LIMIT,
//! MERGE, `SET m = properties(n)`, label predicates in WHERE, count/min/max, `any()`
//! over `labels(n)`. Labels are always escaped (backticks doubled) and ids validated
//! before any query.
//!
//! Memgraph refuses index changes inside an explicit transaction ("Index manipulation
//! not allowed in multicommand transactions"): schema statements run as auto-commit
//! queries, everything else in explicit transactions. Every query has a deadline, and
//! the connection pool is rebuilt after one passes, so a hung connection cannot hold
//! a batch. Every request names the database (`memgraph` by default: Memgraph 2.11
//! and later refuse a name they do not know, and neo4rs would send `neo4j`).
//!
//! This module must not order phases, retry or persist checkpoints (the engine does).

use std::future::Future;
use std::time::Duration;

use neo4rs::{ConfigBuilder, Graph, Query, query};

use super::{GroupCount, Phase, PhasePlan, Recopied, StepOutcome, StoreFailure, Verified, digest};
use crate::Secret;
use crate::api::{ForeignNodes, Mode, Stage, TenantId};

/// Everything the Memgraph phase needs, resolved by the engine.
#[derive(Clone, Debug)]
pub struct MemgraphSettings {
    pub uri: String,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub source: TenantId,
    pub target: TenantId,
    pub mode: Mode,
    /// Database named in every request.
    pub database: String,
    /// Nodes per transaction.
    pub batch_size: usize,
    /// Deadline of one query.
    pub query_timeout: Duration,
    pub foreign_nodes: ForeignNodes,
}

/// Errors of the Memgraph phase, each naming the query or check that failed.
#[derive(Debug, thiserror::Error)]
pub enum MemgraphStoreError {
    #[error("invalid Memgraph settings: {0}")]
    Settings(String),
    #[error("cannot connect to the graph at {uri}: {source}")]
    Connect {
        uri: String,
        #[source]
        source: neo4rs::Error,
    },
    #[error("the graph at {uri} rejected the credentials: {message}")]
    Auth { uri: String, message: String },
    #[error("{what} failed: {source}")]
    Query {
        what: &'static str,
        #[source]
        source: neo4rs::Error,
    },
    #[error(
        "target label {label} already holds {count} nodes that are not this tenant's (e.g. entity_id {example:?}); refusing to mix tenants"
    )]
    ForeignTarget { label: String, count: u64, example: String },
    #[error(
        "{count} nodes under the source label {label} also carry a label that is neither the tenant's nor their \
         entity_type (e.g. entity_id {example:?} with labels {labels:?}): they may be another tenant's (LightRAG \
         <= 1.4.13 also labels nodes by entity type); refusing to touch them. Set memgraph.foreignLabelledNodes: \
         Include if they are this tenant's"
    )]
    ForeignLabelled {
        label: String,
        count: u64,
        example: String,
        labels: Vec<String>,
    },
    #[error("{count} source nodes have no entity_id; Copy matches nodes by entity_id and cannot clone them")]
    MissingEntityId { count: u64 },
    #[error("{what} did not answer within {seconds} s")]
    Timeout { what: &'static str, seconds: u64 },
    #[error("verification failed: {0}")]
    Mismatch(String),
    #[error("verification found source nodes left: {0}")]
    Incomplete(String),
}

fn neo4j_transient(e: &neo4rs::Error) -> bool {
    match e {
        neo4rs::Error::IOError { .. } | neo4rs::Error::ConnectionError => true,
        // neo4rs 0.8 reports a connection that broke while a query's records were
        // pulled (the server restarted), and a failure the server sent then, as an
        // unexpected PULL response flattened to text: the only place the cause is left.
        neo4rs::Error::UnexpectedMessage(m) => ["IOError", "ConnectionError", ".TransientError.", CONCURRENTLY_DELETED]
            .iter()
            .any(|cause| m.contains(cause)),
        neo4rs::Error::Neo4j(n) => {
            matches!(n.kind(), neo4rs::Neo4jErrorKind::Transient) || n.code() == CONCURRENTLY_DELETED
        }
        _ => false,
    }
}

/// A client deleted a node that a statement had matched, before the statement wrote
/// it: Neo4j 4.4's form, under read-committed isolation, of the write-write conflict
/// that Memgraph reports as a TransientError ("Cannot resolve conflicting
/// transactions"; Memgraph's documentation, help-center/errors/transactions: retry the
/// transaction). The batch rolled back and is safe to run again.
const CONCURRENTLY_DELETED: &str = "Neo.ClientError.Statement.EntityNotFound";

impl StoreFailure for MemgraphStoreError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Connect { source, .. } | Self::Query { source, .. } => neo4j_transient(source),
            Self::Timeout { .. } => true,
            _ => false,
        }
    }

    fn is_incomplete(&self) -> bool {
        matches!(self, Self::Incomplete(_))
    }
}

/// A label in Cypher: backtick-quoted with backticks doubled. Tenant ids cannot
/// contain backticks, but the quoting never relies on that.
pub fn label(id: &TenantId) -> String {
    format!("`{}`", id.as_str().replace('`', "``"))
}

/// The Memgraph phase of one migration.
pub struct MemgraphPhase {
    settings: MemgraphSettings,
    graph: Option<Graph>,
    src: String,
    tgt: String,
    /// Relationships of twins that joined an edge their moved node already had
    /// (see [`MemgraphPhase::merge_twins`]) since the plan.
    merged_relationships: u64,
    /// Nodes this run relabelled (Move), and whether its catch-up found nodes written
    /// under the source label since the plan: a source that changed during the run
    /// makes the plan's counts a guess (see [`MemgraphPhase::check`]).
    relabelled: u64,
    source_changed: bool,
    /// Entity ids held by more than one of the tenant's nodes when the plan was made.
    duplicates_at_plan: u64,
}

/// Counts of the tenant's graph.
struct Counts {
    source_nodes: u64,
    target_nodes: u64,
    source_rels: u64,
    target_rels: u64,
}

impl MemgraphPhase {
    pub fn new(settings: MemgraphSettings) -> Result<Self, MemgraphStoreError> {
        if settings.batch_size == 0 {
            return Err(MemgraphStoreError::Settings("batch size must be at least 1".into()));
        }
        let uri = settings.uri.as_str();
        let scheme = uri.split_once("://").map(|(s, _)| s);
        if !matches!(
            scheme,
            Some("bolt" | "bolt+s" | "bolt+ssc" | "neo4j" | "neo4j+s" | "neo4j+ssc" | "memgraph")
        ) {
            return Err(MemgraphStoreError::Settings(format!(
                "URI {uri:?} must start with bolt:// (or bolt+s:// for TLS)"
            )));
        }
        if settings.database.is_empty() {
            return Err(MemgraphStoreError::Settings("database is empty".into()));
        }
        Ok(Self {
            src: label(&settings.source),
            tgt: label(&settings.target),
            settings,
            graph: None,
            merged_relationships: 0,
            relabelled: 0,
            source_changed: false,
            duplicates_at_plan: 0,
        })
    }

    async fn graph(&mut self) -> Result<Graph, MemgraphStoreError> {
        if let Some(g) = &self.graph {
            return Ok(g.clone());
        }
        let s = &self.settings;
        let uri = s.uri.clone();
        // neo4rs reads the scheme (bolt+s: TLS, verified against the system's roots or
        // SSL_CERT_FILE); `memgraph://` is our alias of bolt://. Checked in `new`.
        let address = match uri.strip_prefix("memgraph://") {
            Some(rest) => format!("bolt://{rest}"),
            None => uri.clone(),
        };
        let config = ConfigBuilder::default()
            .uri(address.trim_end_matches('/'))
            .db(s.database.as_str())
            .user(s.user.clone().unwrap_or_default())
            .password(s.password.as_ref().map(|p| p.expose().to_owned()).unwrap_or_default())
            .max_connections(4)
            .fetch_size(1000)
            .build()
            .map_err(|source| MemgraphStoreError::Connect {
                uri: uri.clone(),
                source,
            })?;
        let graph = self
            .deadline("connecting", Graph::connect(config))
            .await?
            .map_err(|source| classify_connect(&uri, source))?;
        // The pool connects lazily: a first query proves the server and the credentials.
        self.one(&graph, "connection check", query("RETURN 1 AS c"))
            .await
            .map_err(|e| match e {
                MemgraphStoreError::Query { source, .. } => classify_connect(&uri, source),
                other => other,
            })?;
        self.graph = Some(graph.clone());
        Ok(graph)
    }

    /// Awaits `work` until the query deadline; past it the pool is dropped (its
    /// connections may hang) and the error is transient: the engine retries on a new one.
    async fn deadline<T>(&self, what: &'static str, work: impl Future<Output = T>) -> Result<T, MemgraphStoreError> {
        tokio::time::timeout(self.settings.query_timeout, work)
            .await
            .map_err(|_| MemgraphStoreError::Timeout {
                what,
                seconds: self.settings.query_timeout.as_secs(),
            })
    }

    /// Runs `q` in a transaction of its own, within the query deadline, and folds its
    /// rows into `init` with `fold`. Explicit transactions, because neo4rs retries
    /// transient failures of auto-commit queries by itself for up to a minute, while
    /// retries with backoff are the engine's job.
    async fn rows<T: Send>(
        &self,
        graph: &Graph,
        what: &'static str,
        q: Query,
        init: T,
        fold: impl Fn(&mut T, neo4rs::Row) + Send,
    ) -> Result<T, MemgraphStoreError> {
        let err = |source| MemgraphStoreError::Query { what, source };
        self.deadline(what, async {
            let mut txn = graph.start_txn().await.map_err(err)?;
            let mut rows = txn.execute(q).await.map_err(err)?;
            let mut out = init;
            while let Some(row) = rows.next(txn.handle()).await.map_err(err)? {
                fold(&mut out, row);
            }
            txn.commit().await.map_err(err)?;
            Ok(out)
        })
        .await?
    }

    /// Runs `q` and reads integer column `c` (and string column `last`) of its last row.
    async fn one(
        &self,
        graph: &Graph,
        what: &'static str,
        q: Query,
    ) -> Result<(u64, Option<String>), MemgraphStoreError> {
        self.rows(graph, what, q, (0, None), |out, row| {
            let c: i64 = row.get("c").unwrap_or(0);
            *out = (c.max(0) as u64, row.get::<Option<String>>("last").ok().flatten());
        })
        .await
    }

    async fn count(&self, graph: &Graph, what: &'static str, cypher: &str) -> Result<u64, MemgraphStoreError> {
        Ok(self.one(graph, what, query(cypher)).await?.0)
    }

    /// Node counts of source and target, and with `relationships` their relationship
    /// counts too (a scan of every edge), in one query (one round trip).
    async fn counts(&self, graph: &Graph, relationships: bool) -> Result<Counts, MemgraphStoreError> {
        let (s, t) = (&self.src, &self.tgt);
        let q = query(&if relationships {
            format!(
                "OPTIONAL MATCH (n:{s}) WITH count(n) AS sn \
                 OPTIONAL MATCH (m:{t}) WITH sn, count(m) AS tn \
                 OPTIONAL MATCH (:{s})-[r:DIRECTED]->(:{s}) WITH sn, tn, count(r) AS sr \
                 OPTIONAL MATCH (:{t})-[q:DIRECTED]->(:{t}) \
                 RETURN sn, tn, sr, count(q) AS tr"
            )
        } else {
            format!(
                "OPTIONAL MATCH (n:{s}) WITH count(n) AS sn \
                 OPTIONAL MATCH (m:{t}) RETURN sn, count(m) AS tn, 0 AS sr, 0 AS tr"
            )
        });
        let none = Counts {
            source_nodes: 0,
            target_nodes: 0,
            source_rels: 0,
            target_rels: 0,
        };
        self.rows(graph, "count of source and target", q, none, |c, row| {
            let n = |k: &str| row.get::<i64>(k).unwrap_or(0).max(0) as u64;
            *c = Counts {
                source_nodes: n("sn"),
                target_nodes: n("tn"),
                source_rels: n("sr"),
                target_rels: n("tr"),
            };
        })
        .await
    }

    /// Entity ids held by more than one node under `label`, and the first of them.
    async fn duplicates(&self, graph: &Graph, label: &str) -> Result<(u64, Option<String>), MemgraphStoreError> {
        let q = query(&format!(
            "MATCH (n:{label}) WITH n.entity_id AS id, count(n) AS c WHERE c > 1 RETURN count(id) AS c, min(id) AS last"
        ));
        self.one(graph, "check of duplicate entity ids", q).await
    }

    /// Runs `q` and reads string-list column `column` of its last row.
    async fn list(
        &self,
        graph: &Graph,
        what: &'static str,
        q: Query,
        column: &'static str,
    ) -> Result<Vec<String>, MemgraphStoreError> {
        self.rows(graph, what, q, Vec::new(), |out, row| {
            *out = row.get::<Vec<String>>(column).unwrap_or_default();
        })
        .await
    }

    /// The labels of the source node with `entity_id`, for an error message.
    async fn labels_of(&self, graph: &Graph, entity_id: &str) -> Result<Vec<String>, MemgraphStoreError> {
        let q = query(&format!(
            "MATCH (n:{} {{entity_id: $id}}) RETURN labels(n) AS labels LIMIT 1",
            self.src
        ))
        .param("id", entity_id);
        self.list(graph, "labels of an example node", q, "labels").await
    }

    /// A schema statement, as an auto-commit query: Memgraph refuses index changes in
    /// an explicit transaction. neo4rs retries its transient failures inside the query
    /// deadline; past it the engine retries the batch. Idempotent here: an index that
    /// exists (or is gone) is fine — a notice in Memgraph, an error in Neo4j.
    async fn schema(&self, graph: &Graph, what: &'static str, cypher: String) -> Result<(), MemgraphStoreError> {
        let result = self.deadline(what, graph.run(query(&cypher))).await?;
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                let text = e.to_string().to_lowercase();
                let benign = [
                    "already exists",
                    "equivalent index",
                    "no such index",
                    "does not exist",
                    "doesn't exist",
                ];
                if benign.iter().any(|b| text.contains(b)) {
                    Ok(())
                } else {
                    Err(MemgraphStoreError::Query { what, source: e })
                }
            }
        }
    }

    /// Move: relabel up to a batch of source nodes in one transaction.
    async fn relabel(&mut self, graph: &Graph) -> Result<StepOutcome, MemgraphStoreError> {
        let (s, t) = (&self.src, &self.tgt);
        let unmoved = unmoved(t);
        let q = query(&format!(
            "MATCH (n:{s}) {unmoved} WITH n LIMIT $batch SET n:{t} REMOVE n:{s} RETURN count(n) AS c"
        ))
        .param("batch", self.settings.batch_size as i64);
        let (c, _) = self.one(graph, "relabel batch", q).await?;
        self.relabelled += c;
        Ok(StepOutcome {
            next: (c as usize >= self.settings.batch_size).then(|| "relabel".to_owned()),
            done: c,
            skipped: 0,
            group: None,
            recopied: Vec::new(),
        })
    }

    /// Verify of a Move: the relabelled nodes are the very nodes that were under the
    /// source label, so there is nothing to compare but where they are. Nodes under the
    /// source label now were written since (a client that was not quiesced): those
    /// with no target node of the same entity_id are moved too (catch-up); a source
    /// node whose entity_id the target already holds is refused, naming it.
    /// Merges the nodes a client wrote under the source label after a node with the
    /// same `entity_id` had moved (twins) into that node, as LightRAG's own upserts
    /// would have written them: properties with `SET m += properties(n)`, each
    /// `DIRECTED` relationship of the twin onto the moved node with an undirected
    /// `MERGE` (LightRAG upserts edges that way, so an edge the moved node already has
    /// is updated, not doubled), then the twin deleted. Each statement is idempotent:
    /// a run killed between them merges again. Returns the twins merged.
    async fn merge_twins(&mut self, graph: &Graph) -> Result<Vec<Recopied>, MemgraphStoreError> {
        let (s, t) = (self.src.clone(), self.tgt.clone());
        let q = query(&format!(
            "MATCH (n:{s}) MATCH (:{t} {{entity_id: n.entity_id}}) WITH n ORDER BY n.entity_id LIMIT $batch \
             RETURN n.entity_id AS id, properties(n) AS p"
        ))
        .param("batch", self.settings.batch_size as i64);
        let twins: Vec<(String, String)> = self
            .rows(
                graph,
                "check of nodes written under the source label",
                q,
                Vec::new(),
                |out, row| {
                    let p: neo4rs::BoltType = row.get("p").unwrap_or(neo4rs::BoltType::Null(neo4rs::BoltNull));
                    out.push((row.get("id").unwrap_or_default(), format!("{p:?}")));
                },
            )
            .await?;
        if twins.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = twins.iter().map(|(id, _)| id.clone()).collect();
        let tenant_rels =
            format!("MATCH (a)-[r:DIRECTED]->(b) WHERE (a:{s} OR a:{t}) AND (b:{s} OR b:{t}) RETURN count(r) AS c");
        let before = self.count(graph, "count of tenant relationships", &tenant_rels).await?;
        for (what, cypher) in [
            (
                "merge of the relationships leaving twins",
                format!(
                    "UNWIND $ids AS id MATCH (n:{s} {{entity_id: id}})-[r:DIRECTED]->(x) WHERE x <> n \
                     MATCH (m:{t} {{entity_id: id}}) MERGE (m)-[r2:DIRECTED]-(x) SET r2 += properties(r) \
                     RETURN count(r2) AS c"
                ),
            ),
            (
                "merge of the relationships reaching twins",
                format!(
                    "UNWIND $ids AS id MATCH (x)-[r:DIRECTED]->(n:{s} {{entity_id: id}}) WHERE x <> n \
                     MATCH (m:{t} {{entity_id: id}}) MERGE (x)-[r2:DIRECTED]-(m) SET r2 += properties(r) \
                     RETURN count(r2) AS c"
                ),
            ),
            (
                "merge of twins into the moved nodes",
                format!(
                    "UNWIND $ids AS id MATCH (n:{s} {{entity_id: id}}) MATCH (m:{t} {{entity_id: id}}) \
                     SET m += properties(n) DETACH DELETE n RETURN count(m) AS c"
                ),
            ),
        ] {
            self.one(graph, what, query(&cypher).param("ids", ids.clone())).await?;
        }
        // Relationships that joined an edge the moved node already had: the count the
        // plan expects shrinks by as many.
        let after = self.count(graph, "count of tenant relationships", &tenant_rels).await?;
        self.merged_relationships += before.saturating_sub(after);
        tracing::warn!(
            count = twins.len(),
            example = %ids[0],
            "nodes written under the source label after their entity moved were merged into it"
        );
        Ok(twins
            .into_iter()
            .map(|(id, p)| Recopied {
                digest: digest(&[id.as_bytes(), p.as_bytes()]),
                item: id,
            })
            .collect())
    }

    async fn catch_up_moved(&mut self, graph: &Graph) -> Result<StepOutcome, MemgraphStoreError> {
        let merged = self.merge_twins(graph).await?;
        let (s, t) = (&self.src, &self.tgt);
        let unmoved = unmoved(t);
        let moved = self
            .list(
                graph,
                "relabel of nodes written since",
                query(&format!(
                    "MATCH (n:{s}) {unmoved} WITH n ORDER BY n.entity_id LIMIT $batch SET n:{t} REMOVE n:{s} \
                     RETURN collect(n.entity_id) AS ids"
                ))
                .param("batch", self.settings.batch_size as i64),
                "ids",
            )
            .await?;
        self.relabelled += moved.len() as u64;
        self.source_changed |= !moved.is_empty() || !merged.is_empty();
        let more = moved.len() >= self.settings.batch_size || !merged.is_empty();
        let recopied = merged
            .into_iter()
            .chain(moved.into_iter().map(|id| Recopied {
                digest: digest(&[id.as_bytes()]),
                item: id,
            }))
            .collect();
        let done = if more {
            0
        } else {
            // Nodes only: the relationship counts of `counts` cost a scan of every edge.
            let t = &self.tgt;
            self.count(
                graph,
                "count of target nodes",
                &format!("MATCH (m:{t}) RETURN count(m) AS c"),
            )
            .await?
        };
        Ok(StepOutcome {
            next: more.then(|| "v:".to_owned()),
            done,
            skipped: 0,
            group: None,
            recopied,
        })
    }

    /// Verify of a Copy: the next batch of source nodes after `after` (by entity_id),
    /// each compared with its clone by every property; a clone that is missing or
    /// differs is written again from the source (catch-up).
    async fn compare_clones(&self, graph: &Graph, after: &str) -> Result<StepOutcome, MemgraphStoreError> {
        let (s, t) = (&self.src, &self.tgt);
        let what = "comparison of a batch of nodes with their clones";
        let q = query(&format!(
            "MATCH (n:{s}) WHERE n.entity_id > $after WITH n ORDER BY n.entity_id LIMIT $batch \
             OPTIONAL MATCH (m:{t} {{entity_id: n.entity_id}}) \
             RETURN n.entity_id AS id, properties(n) AS source, properties(m) AS target"
        ))
        .param("after", after)
        .param("batch", self.settings.batch_size as i64);
        let rows: Vec<(String, neo4rs::BoltType, Option<neo4rs::BoltType>)> = self
            .rows(graph, what, q, Vec::new(), |out, row| {
                let id: String = row.get("id").unwrap_or_default();
                let source = row.get("source").unwrap_or(neo4rs::BoltType::Null(neo4rs::BoltNull));
                out.push((id, source, row.get("target").unwrap_or(None)));
            })
            .await?;
        let last = rows.last().map(|(id, ..)| id.clone());
        let full = rows.len() >= self.settings.batch_size;
        let mut equal = 0;
        let mut again = Vec::new();
        for (id, source, target) in rows {
            if target.as_ref() == Some(&source) {
                equal += 1;
            } else {
                again.push(Recopied {
                    digest: digest(&[id.as_bytes(), format!("{source:?}").as_bytes()]),
                    item: id,
                });
            }
        }
        if !again.is_empty() {
            let ids: Vec<String> = again.iter().map(|r| r.item.clone()).collect();
            self.one(
                graph,
                "clone again of changed nodes",
                query(&format!(
                    "UNWIND $ids AS id MATCH (n:{s} {{entity_id: id}}) \
                     MERGE (m:{t} {{entity_id: id}}) SET m = properties(n) RETURN count(m) AS c"
                ))
                .param("ids", ids),
            )
            .await?;
        }
        Ok(StepOutcome {
            next: Some(match last {
                Some(last) if full => format!("v:{last}"),
                _ => "w:".to_owned(), // nodes compared: relationships next
            }),
            done: equal,
            skipped: 0,
            group: None,
            recopied: again,
        })
    }

    /// Verify of a Copy, after the nodes: the DIRECTED relationships leaving the next
    /// batch of source nodes, each compared with its clone between the clones of its
    /// ends by every property; a clone that is missing or differs is written again.
    /// Counted as compared, not as items: the phase's items are nodes. Each end's clone
    /// is looked up on its own (an index seek by `entity_id`) before the two are joined:
    /// given the whole target pattern in one `OPTIONAL MATCH`, Neo4j 4.4 was free to plan
    /// a scan of the target label per row, and a batch took over 60 s after a wiped and
    /// reloaded graph (the bench, 2 ms RTT).
    async fn compare_relationships(&self, graph: &Graph, after: &str) -> Result<StepOutcome, MemgraphStoreError> {
        let (s, t) = (&self.src, &self.tgt);
        let Some((c, last)) = self.node_window(graph, "relationship comparison window", after).await? else {
            return Ok(StepOutcome::default());
        };
        let q = query(&format!(
            "MATCH (a:{s})-[r:DIRECTED]->(b:{s}) WHERE a.entity_id > $after AND a.entity_id <= $last \
             WITH a, r, b \
             OPTIONAL MATCH (a2:{t} {{entity_id: a.entity_id}}) \
             OPTIONAL MATCH (b2:{t} {{entity_id: b.entity_id}}) \
             OPTIONAL MATCH (a2)-[r2:DIRECTED]->(b2) \
             RETURN a.entity_id AS a, b.entity_id AS b, properties(r) AS source, properties(r2) AS target"
        ))
        .param("after", after)
        .param("last", last.as_str());
        type Row = (String, String, neo4rs::BoltType, Option<neo4rs::BoltType>);
        let rows: Vec<Row> = self
            .rows(
                graph,
                "comparison of a batch of relationships",
                q,
                Vec::new(),
                |out, row| {
                    let source = row.get("source").unwrap_or(neo4rs::BoltType::Null(neo4rs::BoltNull));
                    out.push((
                        row.get("a").unwrap_or_default(),
                        row.get("b").unwrap_or_default(),
                        source,
                        row.get("target").unwrap_or(None),
                    ));
                },
            )
            .await?;
        let mut again = Vec::new();
        for (a, b, source, target) in rows {
            if target.as_ref() != Some(&source) {
                again.push((a, b, source));
            }
        }
        if !again.is_empty() {
            let pairs: Vec<Vec<String>> = again.iter().map(|(a, b, _)| vec![a.clone(), b.clone()]).collect();
            self.one(
                graph,
                "clone again of changed relationships",
                query(&format!(
                    "UNWIND $pairs AS p MATCH (a:{s} {{entity_id: p[0]}})-[r:DIRECTED]->(b:{s} {{entity_id: p[1]}}) \
                     MATCH (a2:{t} {{entity_id: p[0]}}), (b2:{t} {{entity_id: p[1]}}) \
                     MERGE (a2)-[r2:DIRECTED]->(b2) SET r2 = properties(r) RETURN count(r2) AS c"
                ))
                .param("pairs", pairs),
            )
            .await?;
        }
        Ok(StepOutcome {
            next: (c as usize >= self.settings.batch_size).then(|| format!("w:{last}")),
            done: 0,
            skipped: 0,
            group: None,
            recopied: again
                .into_iter()
                .map(|(a, b, source)| Recopied {
                    digest: digest(&[a.as_bytes(), b.as_bytes(), format!("{source:?}").as_bytes()]),
                    item: format!("({a})-[DIRECTED]->({b})"),
                })
                .collect(),
        })
    }

    /// Copy: clone the next batch of nodes after `after` (by entity_id).
    async fn clone_nodes(&self, graph: &Graph, after: &str) -> Result<StepOutcome, MemgraphStoreError> {
        let (s, t) = (&self.src, &self.tgt);
        let q = query(&format!(
            "MATCH (n:{s}) WHERE n.entity_id > $after \
             WITH n ORDER BY n.entity_id LIMIT $batch \
             MERGE (m:{t} {{entity_id: n.entity_id}}) SET m = properties(n) \
             RETURN count(m) AS c, max(n.entity_id) AS last"
        ))
        .param("after", after)
        .param("batch", self.settings.batch_size as i64);
        let (c, last) = self.one(graph, "clone batch of nodes", q).await?;
        let next = match last {
            Some(last) if c as usize >= self.settings.batch_size => format!("n:{last}"),
            _ => "e:".to_owned(), // nodes done: relationships next
        };
        Ok(StepOutcome {
            next: Some(next),
            done: c,
            skipped: 0,
            group: None,
            recopied: Vec::new(),
        })
    }

    /// The next batch of source nodes after `after` (by entity_id): how many, and the
    /// last one's entity_id; `None` when there are none. The relationships leaving them
    /// are the unit of a relationship batch, copied or compared.
    async fn node_window(
        &self,
        graph: &Graph,
        what: &'static str,
        after: &str,
    ) -> Result<Option<(u64, String)>, MemgraphStoreError> {
        let s = &self.src;
        let window = query(&format!(
            "MATCH (a:{s}) WHERE a.entity_id > $after WITH a ORDER BY a.entity_id LIMIT $batch \
             RETURN count(a) AS c, max(a.entity_id) AS last"
        ))
        .param("after", after)
        .param("batch", self.settings.batch_size as i64);
        let (c, last) = self.one(graph, what, window).await?;
        Ok(last.filter(|_| c > 0).map(|last| (c, last)))
    }

    /// Copy: clone the DIRECTED relationships leaving the next batch of source nodes.
    async fn clone_relationships(&self, graph: &Graph, after: &str) -> Result<StepOutcome, MemgraphStoreError> {
        let (s, t) = (&self.src, &self.tgt);
        let Some((c, last)) = self.node_window(graph, "relationship batch window", after).await? else {
            return Ok(StepOutcome::default());
        };
        let merge = query(&format!(
            "MATCH (a:{s})-[r:DIRECTED]->(b:{s}) WHERE a.entity_id > $after AND a.entity_id <= $last \
             MATCH (a2:{t} {{entity_id: a.entity_id}}), (b2:{t} {{entity_id: b.entity_id}}) \
             MERGE (a2)-[r2:DIRECTED]->(b2) SET r2 = properties(r) \
             RETURN count(r2) AS c"
        ))
        .param("after", after)
        .param("last", last.as_str());
        self.one(graph, "clone batch of relationships", merge).await?;
        Ok(StepOutcome {
            next: (c as usize >= self.settings.batch_size).then(|| format!("e:{last}")),
            done: 0,
            skipped: 0,
            group: None,
            recopied: Vec::new(),
        })
    }
}

fn classify_connect(uri: &str, source: neo4rs::Error) -> MemgraphStoreError {
    let auth = match &source {
        neo4rs::Error::AuthenticationError(_) => true,
        neo4rs::Error::Neo4j(e) => e.code().contains("Security") || e.code().contains("Unauthorized"),
        _ => false,
    };
    if auth {
        MemgraphStoreError::Auth {
            uri: uri.to_owned(),
            message: source.to_string(),
        }
    } else {
        MemgraphStoreError::Connect {
            uri: uri.to_owned(),
            source,
        }
    }
}

impl MemgraphPhase {
    /// After a deadline passed, the pool's connections may hang: connect anew next time.
    fn forget_hung<T>(&mut self, r: Result<T, MemgraphStoreError>) -> Result<T, MemgraphStoreError> {
        if matches!(r, Err(MemgraphStoreError::Timeout { .. })) {
            self.graph = None;
        }
        r
    }
}

impl Phase for MemgraphPhase {
    type Error = MemgraphStoreError;

    async fn plan(&mut self, resuming: bool) -> Result<PhasePlan, MemgraphStoreError> {
        let r = self.preflight(resuming).await;
        self.forget_hung(r)
    }

    async fn step(&mut self, stage: Stage, cursor: &str, _plan: &PhasePlan) -> Result<StepOutcome, MemgraphStoreError> {
        let r = self.batch(stage, cursor).await;
        self.forget_hung(r)
    }

    async fn verify(&mut self, plan: &PhasePlan, removed: bool) -> Result<Verified, MemgraphStoreError> {
        let r = self.check(plan, removed).await;
        self.forget_hung(r)
    }
}

impl MemgraphPhase {
    async fn preflight(&mut self, resuming: bool) -> Result<PhasePlan, MemgraphStoreError> {
        self.merged_relationships = 0;
        self.relabelled = 0;
        self.source_changed = false;
        let graph = self.graph().await?;
        let (s, t) = (self.src.clone(), self.tgt.clone());
        let c = self.counts(&graph, true).await?;
        // Tenant-internal relationships among source and target nodes together: what
        // the target must hold at the end, also when a Move resumes half-way.
        // With an empty target (the common case) these two scans have nothing to find.
        let all_rels = if c.target_nodes == 0 {
            c.source_rels
        } else {
            self.count(
                &graph,
                "count of tenant relationships",
                &format!(
                    "MATCH (a)-[r:DIRECTED]->(b) WHERE (a:{s} OR a:{t}) AND (b:{s} OR b:{t}) RETURN count(r) AS c"
                ),
            )
            .await?
        };
        let mut plan = PhasePlan {
            total: c.source_nodes,
            ..PhasePlan::default()
        };
        // Target nodes that are not clones of a source node belong to someone else.
        let foreign_q = query(&format!(
            "MATCH (m:{t}) OPTIONAL MATCH (n:{s} {{entity_id: m.entity_id}}) WITH m, n WHERE n IS NULL \
             RETURN count(m) AS c, min(m.entity_id) AS last"
        ));
        let (foreign, example) = if c.target_nodes == 0 {
            (0, None)
        } else {
            self.one(&graph, "check of target nodes", foreign_q).await?
        };
        let clones = c.target_nodes - foreign.min(c.target_nodes);
        plan.identical = clones;
        plan.extra = foreign;
        if foreign > 0 && !resuming {
            return Err(MemgraphStoreError::ForeignTarget {
                label: t.clone(),
                count: foreign,
                example: example.unwrap_or_default(),
            });
        }
        if self.settings.mode == Mode::Move {
            // Per label, each scan by its label: an id held under both is a twin, merged.
            let (in_source, example) = self.duplicates(&graph, &s).await?;
            let (in_target, _) = self.duplicates(&graph, &t).await?;
            let twice = in_source + in_target;
            self.duplicates_at_plan = twice;
            if twice > 0 {
                plan.notes.push(format!(
                    "{twice} entity ids are held by more than one of the tenant's nodes (e.g. {:?}); each is moved \
                     as it is, or merged into the first of them to move, as LightRAG's upserts would",
                    example.unwrap_or_default()
                ));
            }
        }
        if self.settings.mode == Mode::Copy {
            let missing = self
                .count(
                    &graph,
                    "check of entity ids",
                    &format!("MATCH (n:{s}) WHERE n.entity_id IS NULL RETURN count(n) AS c"),
                )
                .await?;
            if missing > 0 {
                return Err(MemgraphStoreError::MissingEntityId { count: missing });
            }
        }
        // Own nodes carry the workspace label and at most their entity type as a label
        // (LightRAG <= 1.4.13); any other label may be another tenant's workspace.
        let (foreign_labelled, example) = self
            .one(
                &graph,
                "check of source node labels",
                query(&format!(
                    "MATCH (n:{s}) WHERE any(l IN labels(n) WHERE l <> $src AND l <> coalesce(n.entity_type, '')) \
                     RETURN count(n) AS c, min(n.entity_id) AS last"
                ))
                .param("src", self.settings.source.as_str()),
            )
            .await?;
        if foreign_labelled > 0 {
            let example = example.unwrap_or_default();
            if self.settings.foreign_nodes == ForeignNodes::Refuse {
                let labels = self.labels_of(&graph, &example).await?;
                return Err(MemgraphStoreError::ForeignLabelled {
                    label: s.clone(),
                    count: foreign_labelled,
                    example,
                    labels,
                });
            }
            plan.notes.push(format!(
                "{foreign_labelled} source nodes carry another label too (e.g. entity_id {example:?}); \
                 included as the tenant's (foreignLabelledNodes: Include)"
            ));
        }
        plan.groups = vec![
            GroupCount {
                name: "nodes".into(),
                source: c.source_nodes,
                target: c.target_nodes,
                extra: foreign,
            },
            GroupCount {
                name: "DIRECTED relationships".into(),
                source: c.source_rels,
                target: c.target_rels,
                // Move: relationships of nodes an interrupted run already relabelled.
                // Copy: the target's relationships are clones, never extra.
                extra: if self.settings.mode == Mode::Move {
                    all_rels.saturating_sub(c.source_rels)
                } else {
                    0
                },
            },
        ];
        Ok(plan)
    }

    async fn batch(&mut self, stage: Stage, cursor: &str) -> Result<StepOutcome, MemgraphStoreError> {
        let graph = self.graph().await?;
        match stage {
            Stage::Copy => {
                if cursor.is_empty() {
                    // LightRAG looks nodes up by entity_id: the target label needs the index first.
                    self.schema(
                        &graph,
                        "create index on the target label",
                        format!("CREATE INDEX ON :{}(entity_id)", self.tgt),
                    )
                    .await?;
                }
                match self.settings.mode {
                    Mode::Move => self.relabel(&graph).await,
                    Mode::Copy => match cursor.split_once(':') {
                        Some(("e", after)) => self.clone_relationships(&graph, after).await,
                        Some(("n", after)) => self.clone_nodes(&graph, after).await,
                        _ => self.clone_nodes(&graph, "").await,
                    },
                }
            }
            Stage::Verify => match self.settings.mode {
                Mode::Move => self.catch_up_moved(&graph).await,
                Mode::Copy => match cursor.split_once(':') {
                    Some(("w", after)) => self.compare_relationships(&graph, after).await,
                    Some((_, after)) => self.compare_clones(&graph, after).await,
                    None => self.compare_clones(&graph, "").await,
                },
            },
            Stage::RemoveSource => {
                // The nodes left the source label batch by batch; what a client wrote
                // there since the last pass is caught up first (a Move has no other
                // stage that would move it: a resumed run starts here), then only the
                // index remains.
                let caught = match self.settings.mode {
                    Mode::Move => self.catch_up_moved(&graph).await?,
                    Mode::Copy => StepOutcome::default(),
                };
                if caught.next.is_some() {
                    return Ok(caught);
                }
                self.schema(
                    &graph,
                    "drop index on the source label",
                    format!("DROP INDEX ON :{}(entity_id)", self.src),
                )
                .await?;
                Ok(StepOutcome {
                    recopied: caught.recopied,
                    ..StepOutcome::default()
                })
            }
            other => Err(MemgraphStoreError::Settings(format!("stage {other:?} has no batches"))),
        }
    }

    /// Counts the graph against the plan. A Copy must match it exactly. A Move
    /// relabels in place, so what it must show is where the nodes are: nothing left
    /// under the source label (a node there was written since the last pass: another
    /// pass) and no entity id under the target label twice that was not so in the plan
    /// already. Its node count must equal the plan's too, unless the source changed
    /// during the run (the catch-up moved or merged nodes, or the copy relabelled another
    /// number of nodes than planned): then clients created and deleted entities
    /// meanwhile, and the difference is logged. A Move's relationships are logged, not
    /// held to the plan: a relabel never touches one, and a client that linked two
    /// unmoved entities changes their count without moving anything.
    async fn check(&mut self, plan: &PhasePlan, removed: bool) -> Result<Verified, MemgraphStoreError> {
        let graph = self.graph().await?;
        let moving = self.settings.mode == Mode::Move;
        // A Move's relationships are only logged, and only when the source was written.
        let mut c = self.counts(&graph, !moving).await?;
        let nodes = &plan.groups[0];
        let rels = &plan.groups[1];
        let expected_nodes = nodes.source + nodes.extra;
        let expected_rels = (rels.source + rels.extra).saturating_sub(self.merged_relationships);
        let when = if removed { "after removal" } else { "after copy" };
        let mut problems = Vec::new();
        if self.settings.mode == Mode::Move {
            if c.source_nodes > 0 {
                return Err(MemgraphStoreError::Incomplete(format!(
                    "{when}: {} nodes under the source label, written since the last pass",
                    c.source_nodes
                )));
            }
            let (twice, example) = self.duplicates(&graph, &self.tgt).await?;
            if twice > self.duplicates_at_plan {
                problems.push(format!(
                    "{twice} entity ids are held by more than one node under the target label (e.g. {:?}; the \
                     plan found {})",
                    example.unwrap_or_default(),
                    self.duplicates_at_plan
                ));
            }
            let changed = self.source_changed || self.relabelled != nodes.source;
            if !changed && c.target_nodes != expected_nodes {
                problems.push(format!(
                    "target has {} nodes, expected {expected_nodes}",
                    c.target_nodes
                ));
            }
            if changed {
                c = self.counts(&graph, true).await?;
                tracing::warn!(
                    nodes = c.target_nodes,
                    planned_nodes = expected_nodes,
                    relationships = c.target_rels,
                    planned_relationships = expected_rels,
                    "the source was written during the move: the target differs from the plan's counts by those writes"
                );
            }
        } else {
            if c.source_nodes != nodes.source {
                problems.push(format!(
                    "source has {} nodes, expected {}",
                    c.source_nodes, nodes.source
                ));
            }
            if c.target_nodes != expected_nodes {
                problems.push(format!(
                    "target has {} nodes, expected {expected_nodes}",
                    c.target_nodes
                ));
            }
            if c.target_rels != expected_rels {
                problems.push(format!(
                    "target has {} DIRECTED relationships, expected {expected_rels}",
                    c.target_rels
                ));
            }
            if c.source_rels != rels.source {
                problems.push(format!(
                    "source has {} DIRECTED relationships, expected {}",
                    c.source_rels, rels.source
                ));
            }
        }
        if !problems.is_empty() {
            return Err(MemgraphStoreError::Mismatch(format!("{when}: {}", problems.join("; "))));
        }
        Ok(Verified {
            source_left: c.source_nodes,
            target: c.target_nodes,
        })
    }
}

/// The filter, after `MATCH (n:source)`, that keeps the nodes a Move may relabel: those
/// whose entity_id no node under the target label `t` holds. One that is held is a
/// twin — a client upserted the entity under the source label after it moved — and
/// relabelling it would put the entity twice under the target label: twins are merged
/// ([`MemgraphPhase::merge_twins`]), never relabelled.
fn unmoved(t: &str) -> String {
    format!("OPTIONAL MATCH (m:{t} {{entity_id: n.entity_id}}) WITH n, m WHERE m IS NULL")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_quoted() {
        assert_eq!(label(&TenantId::new("tenant_1").unwrap()), "`tenant_1`");
    }
}
