//! LightRAG-shaped Qdrant data at any scale, and snapshots to compare collections.
//!
//! Collections `lightrag_vdb_chunks`, `lightrag_vdb_entities` and
//! `lightrag_vdb_relationships` (scale 1: 544 + 15,644 + 22,926 = 39,114 points of
//! the tenant), optionally a model-suffixed `lightrag_vdb_chunks_bge_m3_{dim}d`, a
//! keyword index on `workspace_id`, LightRAG's payload fields, and point ids computed
//! the way LightRAG computes them (UUID of SHA-256(workspace + payload id)). Look-alike
//! tenants share the collections.

use std::collections::{BTreeMap, HashMap};

use qdrant_client::Qdrant;
use qdrant_client::qdrant::{
    CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, Distance, FieldType, PointId, PointStruct,
    ScrollPointsBuilder, UpsertPointsBuilder, Value, VectorParamsBuilder, point_id::PointIdOptions,
};
use sha2::{Digest, Sha256};

pub const CHUNKS: &str = "lightrag_vdb_chunks";
pub const ENTITIES: &str = "lightrag_vdb_entities";
pub const RELATIONSHIPS: &str = "lightrag_vdb_relationships";
/// Scale-1 points of the tenant per collection.
pub const SCALE1: [(&str, u64); 3] = [(CHUNKS, 544), (ENTITIES, 15_644), (RELATIONSHIPS, 22_926)];

/// The model-suffixed collection name of LightRAG 1.5 for `dim`.
pub fn suffixed(dim: u64) -> String {
    format!("{CHUNKS}_bge_m3_{dim}d")
}

/// LightRAG's point id (compute_mdhash_id_for_qdrant), written out here
/// independently of the product's.
pub fn lightrag_id(workspace: &str, id: &str) -> String {
    let d = Sha256::digest(format!("{workspace}{id}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// Creates the collections (if missing) with `dim`-sized cosine vectors and the tenant index.
pub async fn create_collections(q: &Qdrant, dim: u64, with_suffixed: bool) -> Result<(), qdrant_client::QdrantError> {
    let mut names: Vec<String> = SCALE1.iter().map(|(n, _)| (*n).to_owned()).collect();
    if with_suffixed {
        names.push(suffixed(dim));
    }
    for name in names {
        if !q.collection_exists(name.as_str()).await? {
            q.create_collection(
                CreateCollectionBuilder::new(name.as_str())
                    .vectors_config(VectorParamsBuilder::new(dim, Distance::Cosine)),
            )
            .await?;
            q.create_field_index(CreateFieldIndexCollectionBuilder::new(
                name.as_str(),
                "workspace_id",
                FieldType::Keyword,
            ))
            .await?;
        }
    }
    Ok(())
}

fn vector(seed: u64, dim: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// Writes tenant `ws` at `scale` into the collections; returns its points per collection.
pub async fn load_tenant(
    q: &Qdrant,
    ws: &str,
    scale: f64,
    dim: u64,
    with_suffixed: bool,
) -> Result<Vec<(String, u64)>, qdrant_client::QdrantError> {
    let mut counts = Vec::new();
    let mut targets: Vec<(String, u64)> = SCALE1
        .iter()
        .map(|(n, c)| ((*n).to_owned(), ((*c as f64 * scale).round() as u64).max(3)))
        .collect();
    if with_suffixed {
        targets.push((suffixed(dim), ((100.0 * scale).round() as u64).max(3)));
    }
    for (collection, n) in targets {
        let mut batch = Vec::new();
        for i in 0..n {
            let s = |v: String| Value::from(v);
            let (id, extra) = match collection.as_str() {
                ENTITIES => (
                    format!("ent-{ws} entity {i}"),
                    [
                        ("entity_name", s(format!("{ws} entity {i}"))),
                        ("source_id", s(format!("chunk-{i}"))),
                    ],
                ),
                RELATIONSHIPS => (
                    format!("rel-{ws}-{i}"),
                    [
                        ("src_id", s(format!("{ws} entity {i}"))),
                        ("tgt_id", s(format!("ENTITY_{}", i % 97))),
                    ],
                ),
                _ => (
                    format!("chunk-{ws}-{i:06}"),
                    [
                        ("full_doc_id", s(format!("doc-{ws}-{}", i % 30))),
                        ("chunk_order_index", Value::from((i % 12) as i64)),
                    ],
                ),
            };
            let mut payload: HashMap<String, Value> = extra.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            payload.insert("id".into(), s(id.clone()));
            payload.insert("workspace_id".into(), s(ws.to_owned()));
            payload.insert("content".into(), s(format!("content of {id} in {ws}")));
            payload.insert("file_path".into(), s(format!("report-{}-{ws}.pdf", i % 600)));
            payload.insert("created_at".into(), Value::from(1_700_000_000 + i as i64));
            let payload = qdrant_client::Payload::from(payload);
            batch.push(PointStruct::new(
                lightrag_id(ws, &id),
                vector(i ^ ws.len() as u64, dim),
                payload,
            ));
            if batch.len() == 512 || i + 1 == n {
                q.upsert_points(UpsertPointsBuilder::new(collection.as_str(), std::mem::take(&mut batch)).wait(true))
                    .await?;
            }
        }
        counts.push((collection, n));
    }
    Ok(counts)
}

/// The standard fixture: `source` at `scale`, its look-alikes at a fiftieth.
pub async fn load_standard(
    q: &Qdrant,
    source: &str,
    scale: f64,
    dim: u64,
    with_suffixed: bool,
) -> Result<u64, qdrant_client::QdrantError> {
    create_collections(q, dim, with_suffixed).await?;
    let counts = load_tenant(q, source, scale, dim, with_suffixed).await?;
    for l in crate::fixture::lookalikes(source) {
        load_tenant(q, &l, scale / 50.0, dim, with_suffixed).await?;
    }
    Ok(counts.iter().map(|(_, n)| n).sum())
}

/// A point as stored: payload as sorted JSON text, vectors as one list of floats.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredPoint {
    pub payload: BTreeMap<String, String>,
    pub vector: Vec<f32>,
}

/// Every point of `collection` by id.
pub async fn snapshot(
    q: &Qdrant,
    collection: &str,
) -> Result<BTreeMap<String, StoredPoint>, qdrant_client::QdrantError> {
    let mut out = BTreeMap::new();
    let mut offset: Option<PointId> = None;
    loop {
        let mut req = ScrollPointsBuilder::new(collection)
            .limit(1000)
            .with_payload(true)
            .with_vectors(true);
        if let Some(o) = offset.take() {
            req = req.offset(o);
        }
        let r = q.scroll(req).await?;
        for p in r.result {
            let id = match p.id.and_then(|i| i.point_id_options) {
                Some(PointIdOptions::Uuid(u)) => u,
                Some(PointIdOptions::Num(n)) => n.to_string(),
                None => continue,
            };
            let payload = p.payload.iter().map(|(k, v)| (k.clone(), format!("{v:?}"))).collect();
            #[allow(deprecated)] // `data` carries dense vectors on every server version
            let vector = p
                .vectors
                .and_then(|v| v.vectors_options)
                .map(|o| match o {
                    qdrant_client::qdrant::vectors_output::VectorsOptions::Vector(v) => match v.vector {
                        Some(qdrant_client::qdrant::vector_output::Vector::Dense(d)) => d.data,
                        _ => v.data,
                    },
                    qdrant_client::qdrant::vectors_output::VectorsOptions::Vectors(_) => Vec::new(),
                })
                .unwrap_or_default();
            out.insert(id, StoredPoint { payload, vector });
        }
        match r.next_page_offset {
            Some(o) => offset = Some(o),
            None => return Ok(out),
        }
    }
}
