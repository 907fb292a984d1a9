//! LightRAG-shaped Qdrant data at any scale, and snapshots to compare collections.
//!
//! Collections `lightrag_vdb_chunks`, `lightrag_vdb_entities` and
//! `lightrag_vdb_relationships` (scale 1: 544 + 15,644 + 22,926 = 39,114 points of
//! the tenant), optionally a model-suffixed `lightrag_vdb_chunks_bge_m3_{dim}d`, a
//! keyword index on `workspace_id`, LightRAG's payload fields, and point ids computed
//! the way LightRAG computes them (UUID of SHA-256(workspace + payload id)). Look-alike
//! tenants share the collections. A `lightrag_vdb_hybrid` collection (not LightRAG's
//! layout, but one a platform may add) holds every other kind of vector: named dense,
//! sparse and multi-dense vectors, some points without some of them.

use std::collections::{BTreeMap, HashMap};

use qdrant_client::Qdrant;
use qdrant_client::qdrant::{
    CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, Distance, FieldType, MultiVectorComparator,
    MultiVectorConfigBuilder, NamedVectors, PointId, PointStruct, ScrollPointsBuilder, SparseVectorParamsBuilder,
    SparseVectorsConfigBuilder, UpsertPointsBuilder, Value, Vector, VectorParamsBuilder, VectorsConfigBuilder,
    point_id::PointIdOptions, vector_output, vectors_output,
};
use sha2::{Digest, Sha256};

pub const CHUNKS: &str = "lightrag_vdb_chunks";
pub const ENTITIES: &str = "lightrag_vdb_entities";
pub const RELATIONSHIPS: &str = "lightrag_vdb_relationships";
/// Named dense (`dense`), multi-dense (`colbert`) and sparse (`keywords`) vectors.
pub const HYBRID: &str = "lightrag_vdb_hybrid";
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

/// Creates [`HYBRID`] (if missing) with `dim`-sized named vectors and the tenant index.
pub async fn create_hybrid(q: &Qdrant, dim: u64) -> Result<(), qdrant_client::QdrantError> {
    if q.collection_exists(HYBRID).await? {
        return Ok(());
    }
    let mut vectors = VectorsConfigBuilder::default();
    vectors.add_named_vector_params("dense", VectorParamsBuilder::new(dim, Distance::Cosine));
    vectors.add_named_vector_params(
        "colbert",
        VectorParamsBuilder::new(dim, Distance::Dot)
            .multivector_config(MultiVectorConfigBuilder::new(MultiVectorComparator::MaxSim)),
    );
    let mut sparse = SparseVectorsConfigBuilder::default();
    sparse.add_named_vector_params("keywords", SparseVectorParamsBuilder::default());
    q.create_collection(
        CreateCollectionBuilder::new(HYBRID)
            .vectors_config(vectors)
            .sparse_vectors_config(sparse),
    )
    .await?;
    q.create_field_index(CreateFieldIndexCollectionBuilder::new(
        HYBRID,
        "workspace_id",
        FieldType::Keyword,
    ))
    .await?;
    Ok(())
}

/// Writes `n` points of tenant `ws` into [`HYBRID`]: every third point lacks the
/// multi-vector, every fifth the sparse one; multi-vectors hold one to three vectors.
pub async fn load_hybrid(q: &Qdrant, ws: &str, n: u64, dim: u64) -> Result<u64, qdrant_client::QdrantError> {
    let mut batch = Vec::new();
    for i in 0..n {
        let id = format!("hyb-{ws}-{i}");
        let mut named = NamedVectors::default().add_vector("dense", vector(i + 7, dim));
        if i % 3 != 0 {
            let multi: Vec<Vec<f32>> = (0..1 + i % 3).map(|k| vector(i * 10 + k, dim)).collect();
            named = named.add_vector("colbert", Vector::new_multi(multi));
        }
        if i % 5 != 0 {
            let indices = vec![(i % 50) as u32, 100 + (i % 7) as u32, 1000 + i as u32];
            let values = vec![0.5, -0.25 * (i % 4) as f32, 1.0 / (i + 1) as f32];
            named = named.add_vector("keywords", Vector::new_sparse(indices, values));
        }
        let payload: HashMap<String, Value> = [
            ("id", Value::from(id.clone())),
            ("workspace_id", Value::from(ws.to_owned())),
            ("content", Value::from(format!("hybrid point {i} of {ws}"))),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        batch.push(PointStruct::new(lightrag_id(ws, &id), named, payload));
    }
    q.upsert_points(UpsertPointsBuilder::new(HYBRID, batch).wait(true))
        .await?;
    Ok(n)
}

/// A vector as stored, of any kind.
#[derive(Clone, Debug, PartialEq)]
pub enum StoredVector {
    Dense(Vec<f32>),
    /// (index, value) pairs in index order.
    Sparse(Vec<(u32, f32)>),
    Multi(Vec<Vec<f32>>),
}

impl StoredVector {
    /// Equal up to the rounding of a cosine collection's normalisation.
    pub fn close_to(&self, other: &StoredVector) -> bool {
        let close = |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
        match (self, other) {
            (Self::Dense(a), Self::Dense(b)) => close(a, b),
            (Self::Sparse(a), Self::Sparse(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|((i, x), (j, y))| i == j && (x - y).abs() < 1e-5)
            }
            (Self::Multi(a), Self::Multi(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| close(x, y)),
            _ => false,
        }
    }
}

/// Decodes a vector in either wire encoding with the client library's own reader.
fn stored(v: qdrant_client::qdrant::VectorOutput) -> StoredVector {
    match v.into_vector() {
        vector_output::Vector::Dense(d) => StoredVector::Dense(d.data),
        vector_output::Vector::Sparse(s) => {
            let mut pairs: Vec<(u32, f32)> = s.indices.into_iter().zip(s.values).collect();
            pairs.sort_by_key(|(i, _)| *i);
            StoredVector::Sparse(pairs)
        }
        vector_output::Vector::MultiDense(m) => StoredVector::Multi(m.vectors.into_iter().map(|d| d.data).collect()),
    }
}

/// A point as stored: payload as sorted JSON text, every vector by name ("" for the
/// unnamed one).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredPoint {
    pub payload: BTreeMap<String, String>,
    pub vectors: BTreeMap<String, StoredVector>,
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
            let vectors = match p.vectors.and_then(|v| v.vectors_options) {
                Some(vectors_output::VectorsOptions::Vector(v)) => BTreeMap::from([(String::new(), stored(v))]),
                Some(vectors_output::VectorsOptions::Vectors(named)) => {
                    named.vectors.into_iter().map(|(k, v)| (k, stored(v))).collect()
                }
                None => BTreeMap::new(),
            };
            out.insert(id, StoredPoint { payload, vectors });
        }
        match r.next_page_offset {
            Some(o) => offset = Some(o),
            None => return Ok(out),
        }
    }
}
