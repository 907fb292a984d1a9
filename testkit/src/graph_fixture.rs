//! LightRAG-shaped graphs at any scale, and snapshots to compare graphs.
//!
//! A tenant is nodes labelled with its workspace id, with LightRAG's properties
//! (`entity_id`, `entity_type`, `description`, `source_id`, `file_path`,
//! `created_at`), an index on `:{ws}(entity_id)`, and `DIRECTED` relationships
//! (one per node pair, as LightRAG upserts them) with their properties. Scale 1 is
//! the reference's tenant: 13,613 nodes. Entity ids contain the tenant id.
//! The Cypher is the subset Memgraph and Neo4j 4.4 share.

use neo4rs::{Graph, query};

/// Nodes of the tenant at scale 1 (the reference's published figure).
pub const SCALE1_NODES: u64 = 13_613;
/// Relationships at scale 1 (as many as the reference's relationship vectors).
pub const SCALE1_RELS: u64 = 22_926;

/// Nodes and relationships of one tenant at a scale.
pub fn shape(scale: f64) -> (u64, u64) {
    let nodes = ((SCALE1_NODES as f64 * scale).round() as u64).max(50);
    let rels = ((SCALE1_RELS as f64 * scale).round() as u64).max(1).min(nodes * 2);
    (nodes, rels)
}

fn label(ws: &str) -> String {
    format!("`{}`", ws.replace('`', "``"))
}

/// Writes one tenant `ws` at `scale`; returns (nodes, relationships).
pub async fn load_tenant(g: &Graph, ws: &str, scale: f64) -> neo4rs::Result<(u64, u64)> {
    let (nodes, rels) = shape(scale);
    let l = label(ws);
    // LightRAG creates this index; creating it twice is refused by Neo4j, fine by Memgraph.
    let _ = g.run(query(&format!("CREATE INDEX ON :{l}(entity_id)"))).await;
    const CHUNK: u64 = 5_000;
    let mut start = 0;
    while start < nodes {
        let end = (start + CHUNK).min(nodes) - 1;
        g.run(
            query(&format!(
                "UNWIND range($start, $end) AS i \
                 CREATE (:{l} {{entity_id: $ws + ' entity ' + toString(i), \
                   entity_type: ['person', 'organization', 'location', 'event', 'concept'][i % 5], \
                   description: 'Entity ' + toString(i) + ' of ' + $ws + ', seen in several documents', \
                   source_id: 'chunk-' + $ws + '-' + toString(i % 997), \
                   file_path: 'report-' + toString(i % 600) + '-' + $ws + '.pdf', \
                   created_at: 1700000000 + i}})"
            ))
            .param("start", start as i64)
            .param("end", end as i64)
            .param("ws", ws),
        )
        .await?;
        start = end + 1;
    }
    // Relationship i joins node i % n to node (i % n) + 1 + 7k (k = i / n): unique pairs, no loops.
    let mut start = 0;
    while start < rels {
        let end = (start + CHUNK).min(rels) - 1;
        g.run(
            query(&format!(
                "UNWIND range($start, $end) AS i \
                 WITH i, i % $n AS a, (i % $n + 1 + 7 * (i / $n)) % $n AS b \
                 MATCH (x:{l} {{entity_id: $ws + ' entity ' + toString(a)}}), \
                       (y:{l} {{entity_id: $ws + ' entity ' + toString(b)}}) \
                 CREATE (x)-[:DIRECTED {{weight: toFloat(i % 10) / 10.0, \
                   description: 'relation ' + toString(i) + ' of ' + $ws, keywords: 'k' + toString(i % 13), \
                   source_id: 'chunk-' + $ws + '-' + toString(i % 997), file_path: 'report-' + toString(i % 600) + '.pdf', \
                   created_at: 1700000000 + i}}]->(y)"
            ))
            .param("start", start as i64)
            .param("end", end as i64)
            .param("n", nodes as i64)
            .param("ws", ws),
        )
        .await?;
        start = end + 1;
    }
    Ok((nodes, rels))
}

/// The standard graph: `source` at `scale` and its look-alikes (see
/// [`crate::fixture::lookalikes`]) at a fiftieth of it (at least 50 nodes each).
pub async fn load_standard(g: &Graph, source: &str, scale: f64) -> neo4rs::Result<(u64, u64)> {
    let loaded = load_tenant(g, source, scale).await?;
    for l in crate::fixture::lookalikes(source) {
        load_tenant(g, &l, scale / 50.0).await?;
    }
    Ok(loaded)
}

/// Nodes and relationships carrying any of `labels`, as sorted canonical lines:
/// labels and every property for nodes; both ends, type and properties for relationships.
pub async fn snapshot(g: &Graph, labels: &[&str]) -> neo4rs::Result<(Vec<String>, Vec<String>)> {
    let labels: Vec<String> = labels.iter().map(|s| (*s).to_owned()).collect();
    let mut nodes = Vec::new();
    let mut rows = g
        .execute(
            query(
                "MATCH (n) WHERE any(l IN labels(n) WHERE l IN $labels) \
                 RETURN labels(n) AS l, [k IN keys(n) | k + '=' + toString(n[k])] AS p",
            )
            .param("labels", labels.clone()),
        )
        .await?;
    while let Some(row) = rows.next().await? {
        nodes.push(line(row.get("l").unwrap_or_default(), row.get("p").unwrap_or_default()));
    }
    let mut rels = Vec::new();
    let mut rows = g
        .execute(
            query(
                "MATCH (a)-[r]->(b) WHERE any(l IN labels(a) + labels(b) WHERE l IN $labels) \
                 RETURN labels(a) AS la, a.entity_id AS ea, type(r) AS t, \
                 [k IN keys(r) | k + '=' + toString(r[k])] AS p, labels(b) AS lb, b.entity_id AS eb",
            )
            .param("labels", labels),
        )
        .await?;
    while let Some(row) = rows.next().await? {
        let la: Vec<String> = row.get("la").unwrap_or_default();
        let lb: Vec<String> = row.get("lb").unwrap_or_default();
        let ea: String = row.get("ea").unwrap_or_default();
        let eb: String = row.get("eb").unwrap_or_default();
        let t: String = row.get("t").unwrap_or_default();
        rels.push(format!(
            "({}:{ea})-[{t} {}]->({}:{eb})",
            sorted(la).join(":"),
            sorted(row.get("p").unwrap_or_default()).join(","),
            sorted(lb).join(":")
        ));
    }
    nodes.sort();
    rels.sort();
    Ok((nodes, rels))
}

/// What a [`snapshot`] must hold after migrating `source` to `target`: the source's
/// nodes and its internal relationships relabelled (kept as well after a Copy),
/// everything else as it was; sorted.
pub fn expected(
    before: &(Vec<String>, Vec<String>),
    source: &str,
    target: &str,
    moved: bool,
) -> (Vec<String>, Vec<String>) {
    let relabel = |line: &str| line.replace(&format!("({source} "), &format!("({target} "));
    let relabel_rel = |line: &str| line.replace(&format!("({source}:"), &format!("({target}:"));
    let mut nodes = Vec::new();
    for n in &before.0 {
        let ours = n.starts_with(&format!("({source} "));
        if ours {
            nodes.push(relabel(n));
        }
        if !ours || !moved {
            nodes.push(n.clone());
        }
    }
    let mut rels = Vec::new();
    for r in &before.1 {
        let ours = r.starts_with(&format!("({source}:")) && r.contains(&format!("]->({source}:"));
        if ours {
            rels.push(relabel_rel(r));
        }
        if !ours || !moved {
            rels.push(r.clone());
        }
    }
    nodes.sort();
    rels.sort();
    (nodes, rels)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn line(labels: Vec<String>, props: Vec<String>) -> String {
    format!("({} {})", sorted(labels).join(":"), sorted(props).join(","))
}
