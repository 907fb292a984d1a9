//! The Qdrant phase (gRPC through qdrant-client).
//!
//! LightRAG stores a tenant's vectors in collections `lightrag_vdb_{ns}[_{model}_{dim}d]`,
//! tagged with payload field `workspace_id`, and **derives every point id from the
//! tenant**: UUID (version-4 bits) of SHA-256(workspace + payload `id`), first 16
//! bytes. Rewriting only the payload (what the reference did) leaves ids LightRAG
//! computes differently for the target. So by default (`pointIds: LightRAG`) each
//! point is re-keyed: upserted under the target's id with the same vectors (named
//! and sparse too) and payload, the tenant field set to the target; Move deletes
//! the source points once the target count is verified. `pointIds: Keep` rewrites
//! the tenant field in place with one server-side filtered payload update per
//! collection.
//!
//! Every write waits for the server (`wait: true`), so a count taken afterwards is
//! a true count. This module must not order phases, retry or persist checkpoints.

use std::collections::HashMap;
use std::time::Duration;

use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, DeletePointsBuilder, Filter, GetPointsBuilder, NamedVectors, PointId, PointStruct,
    PointsIdsList, RetrievedPoint, ScrollPointsBuilder, SetPayloadPointsBuilder, UpsertPointsBuilder, Value, Vector,
    VectorOutput, Vectors, VectorsConfig, VectorsOutput, WriteOrdering, WriteOrderingType, point_id::PointIdOptions,
    value::Kind, vector, vector_output, vectors, vectors_config, vectors_output,
};
use qdrant_client::{Qdrant, QdrantError};
use sha2::{Digest, Sha256};

use super::{GroupCount, Phase, PhasePlan, Recopied, StepOutcome, StoreFailure, Verified, digest};
use crate::Secret;
use crate::api::{Mode, PointIdScheme, Stage, TenantId};

/// Everything the Qdrant phase needs, resolved by the engine.
#[derive(Clone, Debug)]
pub struct QdrantSettings {
    pub url: String,
    pub api_key: Option<Secret>,
    pub source: TenantId,
    pub target: TenantId,
    pub mode: Mode,
    /// Collections to migrate; empty: every collection named `collection_prefix`…
    /// holding source points.
    pub collections: Vec<String>,
    pub collection_prefix: String,
    pub tenant_field: String,
    pub point_ids: PointIdScheme,
    /// Points per page and upsert.
    pub batch_size: usize,
}

/// Errors of the Qdrant phase, each naming the collection or call that failed.
#[derive(Debug, thiserror::Error)]
pub enum QdrantStoreError {
    #[error("invalid Qdrant settings: {0}")]
    Settings(String),
    #[error("Qdrant at {url} rejected the API key: {message}")]
    Auth { url: String, message: String },
    #[error("{what} failed: {source}")]
    Call {
        what: String,
        #[source]
        source: QdrantError,
    },
    #[error("collection {0:?} does not exist")]
    MissingCollection(String),
    #[error("collection {collection:?}: the vector configuration is unknown, so points cannot be re-keyed")]
    UnknownVectors { collection: String },
    #[error("collection {collection:?}: dimension mismatch: {detail}; refusing to re-key its points")]
    DimensionMismatch { collection: String, detail: String },
    #[error(
        "collection {collection:?} already holds {count} points of the target tenant; refusing to mix them with this migration's"
    )]
    TargetNotEmpty { collection: String, count: u64 },
    #[error(
        "collection {collection:?}: point {point} has no string payload field `id`, so its LightRAG id cannot be computed"
    )]
    MissingPayloadId { collection: String, point: String },
    #[error("collection {collection:?}: point {point} came back with vectors that cannot be read: {detail}")]
    BadVectors {
        collection: String,
        point: String,
        detail: String,
    },
    #[error(
        "collection {collection:?}: {count} target ids are held by points of another tenant (e.g. {example}); \
         refusing to overwrite them (a tenant moved earlier with kept ids can own them)"
    )]
    ForeignId {
        collection: String,
        count: usize,
        example: String,
    },
    #[error("verification failed: {0}")]
    Mismatch(String),
    #[error("verification found source points without their copy: {0}")]
    Incomplete(String),
}

impl StoreFailure for QdrantStoreError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Call { source, .. } => match source {
                // Cancelled: a server going down (a pod restart) cancels the calls in
                // flight; every call of the phase is idempotent, so it is asked again.
                QdrantError::ResponseError { status } => matches!(
                    status.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::Cancelled
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Aborted
                        | tonic::Code::ResourceExhausted
                        | tonic::Code::Internal
                        | tonic::Code::Unknown
                ),
                QdrantError::ResourceExhaustedError { .. } => true,
                _ => false,
            },
            _ => false,
        }
    }

    fn is_incomplete(&self) -> bool {
        matches!(self, Self::Incomplete(_))
    }
}

/// The id LightRAG gives a point of `workspace` whose payload `id` is `id`:
/// SHA-256(workspace + id), first 16 bytes, with UUID version-4 and RFC 4122
/// variant bits set (Python's `uuid.UUID(bytes=…, version=4)`).
pub fn lightrag_point_id(workspace: &str, id: &str) -> String {
    let digest = Sha256::digest(format!("{workspace}{id}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The gRPC URL: Qdrant's REST port 6333 (the reference's default) becomes the
/// gRPC port 6334. Returns the URL and a notice when it was changed.
pub fn grpc_url(url: &str) -> (String, Option<String>) {
    let trimmed = url.trim_end_matches('/');
    if let Some(base) = trimmed.strip_suffix(":6333") {
        let mapped = format!("{base}:6334");
        let note = format!("{url} is Qdrant's REST port; using gRPC at {mapped}");
        return (mapped, Some(note));
    }
    (trimmed.to_owned(), None)
}

/// Unique per call: an in-place move has no content digest to tell passes apart.
fn now_nanos() -> String {
    format!("{:?}", std::time::SystemTime::now())
}

/// Payload key set on a source point of a Move, with the target tenant and the run as
/// its value, just before Verify compares it with its copy ([`QdrantPhase::check_page`]):
/// only points still carrying this run's mark are deleted. A Move stopped after its
/// Verify leaves it on the source points not yet removed (LightRAG ignores payload keys
/// it does not know); copies never carry it.
pub const REMOVAL_MARK: &str = "tenant_migrator_removing_to";

/// Writes every replica applies in one order with the others (the removal mark and the
/// delete it guards).
fn strong_ordering() -> WriteOrdering {
    WriteOrdering {
        r#type: WriteOrderingType::Strong as i32,
    }
}

/// The string held by payload field `key`, if it holds one.
fn text_field<'a>(payload: &'a HashMap<String, Value>, key: &str) -> Option<&'a str> {
    match payload.get(key).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => Some(s.as_str()),
        _ => None,
    }
}

fn tenant_filter(field: &str, tenant: &TenantId) -> Filter {
    Filter::must([Condition::matches(field, tenant.as_str().to_owned())])
}

fn show_id(id: &Option<PointId>) -> String {
    match id.as_ref().and_then(|p| p.point_id_options.as_ref()) {
        Some(PointIdOptions::Num(n)) => n.to_string(),
        Some(PointIdOptions::Uuid(u)) => u.clone(),
        None => "(none)".into(),
    }
}

/// Cursor of a page: `n:<number>` or `u:<uuid>`.
fn encode_offset(id: &PointId) -> String {
    match &id.point_id_options {
        Some(PointIdOptions::Num(n)) => format!("n:{n}"),
        Some(PointIdOptions::Uuid(u)) => format!("u:{u}"),
        None => String::new(),
    }
}

fn decode_offset(s: &str) -> Option<PointId> {
    match s.split_once(':') {
        Some(("n", n)) => n.parse::<u64>().ok().map(PointId::from),
        Some(("u", u)) => Some(PointId::from(u.to_owned())),
        _ => None,
    }
}

/// A point's vectors as read, whatever the wire encoding: the unnamed vector, or
/// named ones (dense, sparse and multi-dense alike).
#[derive(Clone, Debug, PartialEq)]
enum ReadVectors {
    Unnamed(vector_output::Vector),
    Named(HashMap<String, vector_output::Vector>),
}

/// One vector of a retrieved point in either wire encoding. Qdrant up to 1.16 fills
/// only the deprecated `data` / `indices` / `vectors_count` fields of `VectorOutput`;
/// from 1.17 the `vector` oneof (qdrant/qdrant#7183, the 1.17 switch in #8114).
/// `into_vector` decodes both, but divides by `vectors_count` and cuts uneven data
/// into a short last vector: those are refused here first.
fn read_vector(v: VectorOutput) -> Result<vector_output::Vector, String> {
    #[allow(deprecated)] // reading the deprecated fields is the point
    let (len, indices, count) = (v.data.len(), v.indices.as_ref().map(|i| i.data.len()), v.vectors_count);
    if v.vector.is_none() {
        match (indices, count) {
            (Some(n), _) if n != len => return Err(format!("a sparse vector with {n} indices and {len} values")),
            (None, Some(c)) if c == 0 || len % c as usize != 0 => {
                return Err(format!("a multi-vector of {c} vectors over {len} values"));
            }
            (None, None) if len == 0 => return Err("an empty vector".into()),
            _ => {}
        }
    }
    Ok(v.into_vector())
}

/// A retrieved point's vectors, decoded (see [`read_vector`]); `None` when it has none.
fn read_vectors(v: Option<VectorsOutput>) -> Result<Option<ReadVectors>, String> {
    let Some(options) = v.and_then(|v| v.vectors_options) else {
        return Ok(None);
    };
    Ok(Some(match options {
        vectors_output::VectorsOptions::Vector(v) => ReadVectors::Unnamed(read_vector(v)?),
        vectors_output::VectorsOptions::Vectors(named) => ReadVectors::Named(
            named
                .vectors
                .into_iter()
                .map(|(name, v)| match read_vector(v) {
                    Ok(v) => Ok((name, v)),
                    Err(e) => Err(format!("vector {name:?}: {e}")),
                })
                .collect::<Result<_, _>>()?,
        ),
    }))
}

fn vector_in(v: vector_output::Vector) -> Vector {
    let inner = match v {
        vector_output::Vector::Dense(d) => vector::Vector::Dense(d),
        vector_output::Vector::Sparse(s) => vector::Vector::Sparse(s),
        vector_output::Vector::MultiDense(m) => vector::Vector::MultiDense(m),
    };
    Vector {
        vector: Some(inner),
        ..Vector::default()
    }
}

/// Read vectors as vectors to write (every named, sparse and multi-dense one).
fn vectors_in(v: ReadVectors) -> Vectors {
    let options = match v {
        ReadVectors::Unnamed(v) => vectors::VectorsOptions::Vector(vector_in(v)),
        ReadVectors::Named(named) => vectors::VectorsOptions::Vectors(NamedVectors {
            vectors: named.into_iter().map(|(name, v)| (name, vector_in(v))).collect(),
        }),
    };
    Vectors {
        vectors_options: Some(options),
    }
}

/// Whether a stored copy holds what `want` would write: the same payload and every
/// vector equal (a cosine collection normalises vectors on the way in, so floats are
/// compared to within 1e-5).
fn same_point(want: &PointStruct, found: &RetrievedPoint) -> bool {
    if want.payload != found.payload {
        return false;
    }
    let want = want.vectors.clone().and_then(|v| v.vectors_options);
    let found = read_vectors(found.vectors.clone()).ok().flatten();
    let close = |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
    let same = |a: &Vector, b: &vector_output::Vector| match (&a.vector, b) {
        (Some(vector::Vector::Dense(x)), vector_output::Vector::Dense(y)) => close(&x.data, &y.data),
        (Some(vector::Vector::Sparse(x)), vector_output::Vector::Sparse(y)) => {
            x.indices == y.indices && close(&x.values, &y.values)
        }
        (Some(vector::Vector::MultiDense(x)), vector_output::Vector::MultiDense(y)) => {
            x.vectors.len() == y.vectors.len() && x.vectors.iter().zip(&y.vectors).all(|(a, b)| close(&a.data, &b.data))
        }
        _ => false,
    };
    match (want, found) {
        (None, None) => true,
        (Some(vectors::VectorsOptions::Vector(a)), Some(ReadVectors::Unnamed(b))) => same(&a, &b),
        (Some(vectors::VectorsOptions::Vectors(a)), Some(ReadVectors::Named(b))) => {
            a.vectors.len() == b.len() && a.vectors.iter().all(|(k, v)| b.get(k).is_some_and(|w| same(v, w)))
        }
        _ => false,
    }
}

/// A digest of what a copy holds (to tell a changing source from a changing target).
fn point_digest(p: &PointStruct) -> u64 {
    let mut keys: Vec<&String> = p.payload.keys().collect();
    keys.sort();
    let payload: String = keys.iter().map(|k| format!("{k}={:?};", p.payload[*k])).collect();
    digest(&[payload.as_bytes(), format!("{:?}", p.vectors).as_bytes()])
}

/// Dense vector sizes a collection is configured with, by vector name ("" for the
/// unnamed vector).
fn configured_sizes(config: &VectorsConfig) -> HashMap<String, u64> {
    match &config.config {
        Some(vectors_config::Config::Params(p)) => HashMap::from([(String::new(), p.size)]),
        Some(vectors_config::Config::ParamsMap(m)) => m.map.iter().map(|(k, p)| (k.clone(), p.size)).collect(),
        None => HashMap::new(),
    }
}

/// The dimension LightRAG 1.5 writes into model-suffixed names (`…_bge_m3_1024d`).
fn declared_dimension(collection: &str) -> Option<u64> {
    let last = collection.rsplit('_').next()?;
    let digits = last.strip_suffix('d')?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Lengths of a point's dense vectors, by name ("" for the unnamed vector).
fn dense_lengths(v: &ReadVectors) -> Vec<(String, usize)> {
    let len = |v: &vector_output::Vector| match v {
        vector_output::Vector::Dense(d) => Some(d.data.len()),
        _ => None,
    };
    match v {
        ReadVectors::Unnamed(v) => len(v).map(|n| (String::new(), n)).into_iter().collect(),
        ReadVectors::Named(named) => named
            .iter()
            .filter_map(|(name, v)| len(v).map(|n| (name.clone(), n)))
            .collect(),
    }
}

/// Whether the points of `collection` can be written back under new ids as they are:
/// its name's declared dimension (if any) and a sample point's dense vectors must
/// agree with the configured sizes. `None` when they do; what disagrees otherwise.
fn dimension_problem(collection: &str, sizes: &HashMap<String, u64>, sample: Option<&ReadVectors>) -> Option<String> {
    if let (Some(declared), Some(size)) = (declared_dimension(collection), sizes.get(""))
        && declared != *size
    {
        return Some(format!(
            "its name says {declared} dimensions, its vectors are configured with {size}"
        ));
    }
    for (name, len) in sample.map(dense_lengths).unwrap_or_default() {
        let shown = if name.is_empty() {
            "the vector".to_owned()
        } else {
            format!("vector {name:?}")
        };
        match sizes.get(&name) {
            Some(size) if *size == len as u64 => {}
            Some(size) => {
                return Some(format!(
                    "a source point's {shown} has {len} dimensions, the collection {size}"
                ));
            }
            None => {
                return Some(format!(
                    "a source point has {shown}, which the collection does not configure"
                ));
            }
        }
    }
    None
}

/// The Qdrant phase of one migration.
pub struct QdrantPhase {
    settings: QdrantSettings,
    url: String,
    url_note: Option<String>,
    client: Option<Qdrant>,
    /// Collections in the plan, in order; cursors index into this.
    collections: Vec<String>,
    prefetch: Option<Prefetch>,
    /// The value of [`REMOVAL_MARK`] this run sets: the target, the process and an
    /// instant of this run's start, so that no other run's mark is taken for this run's
    /// comparison.
    mark: String,
}

impl QdrantPhase {
    pub fn new(settings: QdrantSettings) -> Result<Self, QdrantStoreError> {
        if settings.batch_size == 0 {
            return Err(QdrantStoreError::Settings("batch size must be at least 1".into()));
        }
        if settings.mode == Mode::Copy && settings.point_ids == PointIdScheme::Keep {
            return Err(QdrantStoreError::Settings(
                "pointIds: Keep cannot Copy: a clone needs ids of its own; use pointIds: LightRAG".into(),
            ));
        }
        if settings.tenant_field.is_empty() {
            return Err(QdrantStoreError::Settings("tenantField is empty".into()));
        }
        let (url, url_note) = grpc_url(&settings.url);
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mark = format!("{}@{}.{started}", settings.target.as_str(), std::process::id());
        Ok(Self {
            settings,
            url,
            url_note,
            client: None,
            collections: Vec::new(),
            prefetch: None,
            mark,
        })
    }

    fn call(what: impl Into<String>) -> impl FnOnce(QdrantError) -> QdrantStoreError {
        let what = what.into();
        move |source| QdrantStoreError::Call { what, source }
    }

    async fn client(&mut self) -> Result<Qdrant, QdrantStoreError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let mut builder = Qdrant::from_url(&self.url)
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(5))
            .skip_compatibility_check();
        if let Some(k) = &self.settings.api_key {
            builder = builder.api_key(k.expose().to_owned());
        }
        let client = builder
            .build()
            .map_err(Self::call(format!("connecting to {}", self.url)))?;
        if let Err(e) = client.health_check().await {
            if let QdrantError::ResponseError { status } = &e
                && matches!(
                    status.code(),
                    tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
                )
            {
                return Err(QdrantStoreError::Auth {
                    url: self.url.clone(),
                    message: status.message().to_owned(),
                });
            }
            return Err(QdrantStoreError::Call {
                what: format!("health check of Qdrant at {}", self.url),
                source: e,
            });
        }
        self.client = Some(client.clone());
        Ok(client)
    }

    async fn count(&self, client: &Qdrant, collection: &str, tenant: &TenantId) -> Result<u64, QdrantStoreError> {
        let r = client
            .count(
                CountPointsBuilder::new(collection)
                    .filter(tenant_filter(&self.settings.tenant_field, tenant))
                    .exact(true),
            )
            .await
            .map_err(Self::call(format!("count in {collection}")))?;
        Ok(r.result.map_or(0, |c| c.count))
    }

    /// One page of source points of `collection` from `offset`.
    async fn page(
        &self,
        client: &Qdrant,
        collection: &str,
        offset: Option<PointId>,
        with_data: bool,
    ) -> Result<Page, QdrantStoreError> {
        let filter = tenant_filter(&self.settings.tenant_field, &self.settings.source);
        scroll_page(
            client,
            collection,
            filter,
            self.settings.batch_size as u32,
            offset,
            with_data,
        )
        .await
    }

    /// Like [`Self::page`] with data, and asks for the following page while the
    /// caller works on this one: a round trip per page is hidden behind the upsert.
    async fn page_ahead(
        &mut self,
        client: &Qdrant,
        collection: &str,
        offset: Option<PointId>,
    ) -> Result<Page, QdrantStoreError> {
        let page = match self.prefetch.take() {
            Some(p) if p.collection == collection && p.offset == offset => match p.task.await {
                Ok(r) => r,
                Err(e) => Err(QdrantStoreError::Settings(format!(
                    "prefetch of {collection} ended: {e}"
                ))),
            },
            other => {
                if let Some(p) = other {
                    p.task.abort();
                }
                self.page(client, collection, offset, true).await
            }
        }?;
        if let Some(next) = &page.1 {
            let (c, name) = (client.clone(), collection.to_owned());
            let filter = tenant_filter(&self.settings.tenant_field, &self.settings.source);
            let (limit, at) = (self.settings.batch_size as u32, next.clone());
            self.prefetch = Some(Prefetch {
                collection: collection.to_owned(),
                offset: Some(next.clone()),
                task: tokio::spawn(async move { scroll_page(&c, &name, filter, limit, Some(at), true).await }),
            });
        }
        Ok(page)
    }

    /// The re-keyed copy of a source point: its LightRAG id for the target, its
    /// payload with the tenant field set to the target, and all its vectors.
    fn rekeyed(&self, collection: &str, p: RetrievedPoint) -> Result<PointStruct, QdrantStoreError> {
        let Some(Kind::StringValue(id)) = p.payload.get("id").and_then(|v| v.kind.clone()) else {
            return Err(QdrantStoreError::MissingPayloadId {
                collection: collection.to_owned(),
                point: show_id(&p.id),
            });
        };
        let vectors = read_vectors(p.vectors).map_err(|detail| QdrantStoreError::BadVectors {
            collection: collection.to_owned(),
            point: show_id(&p.id),
            detail,
        })?;
        let target = self.settings.target.as_str();
        let mut payload: HashMap<String, Value> = p.payload;
        // The mark of a removal in progress is the migration's, never the copy's.
        payload.remove(REMOVAL_MARK);
        payload.insert(self.settings.tenant_field.clone(), Value::from(target.to_owned()));
        Ok(PointStruct {
            id: Some(PointId::from(lightrag_point_id(target, &id))),
            payload,
            vectors: vectors.map(vectors_in),
        })
    }

    /// The points at `ids` (payload, and vectors when `vectors`), by id.
    async fn points_at(
        &self,
        client: &Qdrant,
        collection: &str,
        ids: Vec<PointId>,
        vectors: bool,
    ) -> Result<HashMap<String, RetrievedPoint>, QdrantStoreError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let found = client
            .get_points(
                GetPointsBuilder::new(collection, ids)
                    .with_payload(true)
                    .with_vectors(vectors),
            )
            .await
            .map_err(Self::call(format!("lookup of points in {collection}")))?;
        Ok(found.result.into_iter().map(|p| (show_id(&p.id), p)).collect())
    }

    /// Target ids of `points` that a point of another tenant already holds (a tenant
    /// moved earlier with kept ids can own them): those must never be overwritten.
    fn foreign_owned(&self, points: &[PointStruct], existing: &HashMap<String, RetrievedPoint>) -> Vec<String> {
        points
            .iter()
            .filter_map(|p| {
                let at = existing.get(&show_id(&p.id))?;
                (!self.belongs_to(&at.payload, &self.settings.target)).then(|| show_id(&p.id))
            })
            .collect()
    }

    /// Whether a point's payload names `tenant` in the tenant field.
    fn belongs_to(&self, payload: &HashMap<String, Value>, tenant: &TenantId) -> bool {
        text_field(payload, &self.settings.tenant_field) == Some(tenant.as_str())
    }

    fn refuse_foreign(&self, collection: &str, foreign: Vec<String>) -> Result<(), QdrantStoreError> {
        match foreign.first() {
            None => Ok(()),
            Some(example) => Err(QdrantStoreError::ForeignId {
                collection: collection.to_owned(),
                count: foreign.len(),
                example: example.clone(),
            }),
        }
    }

    /// Re-keys one page of source points into the target; returns the next cursor.
    /// A target id held by another tenant's point is a conflict: nothing of the page
    /// is written.
    async fn copy_page(
        &mut self,
        client: &Qdrant,
        collection: &str,
        offset: Option<PointId>,
    ) -> Result<(u64, Option<PointId>), QdrantStoreError> {
        let (points, next) = self.page_ahead(client, collection, offset).await?;
        let out = points
            .into_iter()
            .map(|p| self.rekeyed(collection, p))
            .collect::<Result<Vec<_>, _>>()?;
        let ids = out.iter().filter_map(|p| p.id.clone()).collect();
        let existing = self.points_at(client, collection, ids, false).await?;
        self.refuse_foreign(collection, self.foreign_owned(&out, &existing))?;
        let n = out.len() as u64;
        if n > 0 {
            client
                .upsert_points(UpsertPointsBuilder::new(collection, out).wait(true))
                .await
                .map_err(Self::call(format!("upsert of {n} points into {collection}")))?;
        }
        Ok((n, next))
    }

    /// Verify (`remove` false) or RemoveSource (`remove` true) of one page of source
    /// points from `offset`: each is compared with its re-keyed copy — payload except
    /// the tenant field, and every vector. Equal: counted, and with `remove` deleted by
    /// id (never by filter: only points compared equal go). Missing or different: the
    /// copy is written again from the source as it is now, and the source point stays
    /// for the next pass.
    ///
    /// Qdrant has no transactions: a client's upsert landing between the comparison and
    /// the delete would be deleted unseen. So a Move marks the page's source points
    /// ([`REMOVAL_MARK`], this run's [`QdrantPhase::mark`], set by id: a point deleted
    /// meanwhile is simply not matched) before it reads and compares them, and deletes
    /// only points still carrying this run's mark — an upsert replaces a point's whole
    /// payload, mark included, so a point written after its mark stays for the next
    /// pass, which copies it again. The mark is set in Verify: RemoveSource deletes a
    /// point that still carries it (compared with its copy, or copied again from the
    /// very version that carries it) without reading its vectors again, and compares
    /// only the others — written since, or marked by an earlier run, whose comparison
    /// this run does not trust. A Copy never marks.
    async fn check_page(
        &mut self,
        client: &Qdrant,
        collection: &str,
        offset: Option<PointId>,
        remove: bool,
    ) -> Result<(u64, Vec<Recopied>, Option<PointId>), QdrantStoreError> {
        let (points, mut checked, next) = if self.settings.mode == Mode::Move {
            let filter = tenant_filter(&self.settings.tenant_field, &self.settings.source);
            let limit = self.settings.batch_size as u32;
            // The payload (its mark) when removing; never the vectors.
            let (page, next) = scroll(client, collection, filter, limit, offset, (remove, false)).await?;
            let (checked, unchecked): (Vec<_>, Vec<_>) = page.into_iter().partition(|p| remove && self.marked(p));
            let ids: Vec<PointId> = unchecked.into_iter().filter_map(|p| p.id).collect();
            self.mark_for_removal(client, collection, &ids).await?;
            let points = self
                .points_at(client, collection, ids, true)
                .await?
                .into_values()
                .filter(|p| self.belongs_to(&p.payload, &self.settings.source))
                .collect();
            (points, checked.into_iter().filter_map(|p| p.id).collect(), next)
        } else {
            let (points, next) = self.page(client, collection, offset, true).await?;
            (points, Vec::new(), next)
        };
        let mut sources = Vec::with_capacity(points.len());
        for p in points {
            let source_id = p.id.clone();
            sources.push((source_id, self.rekeyed(collection, p)?));
        }
        let ids = sources.iter().filter_map(|(_, c)| c.id.clone()).collect();
        let copies = self.points_at(client, collection, ids, true).await?;
        let wanted: Vec<PointStruct> = sources.iter().map(|(_, c)| c.clone()).collect();
        self.refuse_foreign(collection, self.foreign_owned(&wanted, &copies))?;
        let (mut again, mut recopied) = (Vec::new(), Vec::new());
        for (source_id, copy) in sources {
            match copies.get(&show_id(&copy.id)) {
                Some(found) if same_point(&copy, found) => checked.extend(source_id),
                _ => {
                    recopied.push(Recopied {
                        item: format!("{collection}/{}", show_id(&source_id)),
                        digest: point_digest(&copy),
                    });
                    again.push(copy);
                }
            }
        }
        if !again.is_empty() {
            let n = again.len();
            client
                .upsert_points(UpsertPointsBuilder::new(collection, again).wait(true))
                .await
                .map_err(Self::call(format!("upsert again of {n} points into {collection}")))?;
        }
        let mut n = checked.len() as u64;
        if remove && n > 0 {
            let marked = Filter::must([
                Condition::has_id(checked.clone()),
                Condition::matches(REMOVAL_MARK, self.mark.clone()),
            ]);
            client
                .delete_points(
                    DeletePointsBuilder::new(collection)
                        .points(marked)
                        .ordering(strong_ordering())
                        .wait(true),
                )
                .await
                .map_err(Self::call(format!("delete of {n} source points in {collection}")))?;
            // Rewritten since their mark: not deleted, compared again in the next pass.
            let kept = client
                .count(
                    CountPointsBuilder::new(collection)
                        .filter(Filter::must([Condition::has_id(checked)]))
                        .exact(true),
                )
                .await
                .map_err(Self::call(format!("count of source points kept in {collection}")))?
                .result
                .map_or(0, |r| r.count);
            n -= kept.min(n);
        }
        Ok((n, recopied, next))
    }

    /// Whether a source point carries this run's removal mark.
    fn marked(&self, p: &RetrievedPoint) -> bool {
        text_field(&p.payload, REMOVAL_MARK) == Some(self.mark.as_str())
    }

    /// Sets [`REMOVAL_MARK`] on those of `ids` that still exist.
    async fn mark_for_removal(
        &self,
        client: &Qdrant,
        collection: &str,
        ids: &[PointId],
    ) -> Result<(), QdrantStoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mark = HashMap::from([(REMOVAL_MARK.to_owned(), Value::from(self.mark.clone()))]);
        client
            .set_payload(
                SetPayloadPointsBuilder::new(collection, mark)
                    .points_selector(Filter::must([Condition::has_id(ids.to_vec())]))
                    // On a replicated collection the mark, a client's upsert and the delete
                    // must be applied in one order on every replica.
                    .ordering(strong_ordering())
                    .wait(true),
            )
            .await
            .map_err(Self::call(format!(
                "marking of {} source points for removal in {collection}",
                ids.len()
            )))?;
        Ok(())
    }

    /// Deletes target points of `collection` whose source point is gone (deleted by a
    /// client after it was copied; the target held none of its own at the start).
    /// Returns how many, and one of them.
    async fn remove_orphans(&self, client: &Qdrant, collection: &str) -> Result<(u64, String), QdrantStoreError> {
        let source = self.settings.source.as_str();
        let (mut removed, mut example) = (0u64, String::new());
        let mut offset = None;
        loop {
            let filter = tenant_filter(&self.settings.tenant_field, &self.settings.target);
            let limit = self.settings.batch_size as u32;
            // The payload (its `id`), not the vectors.
            let (points, next) = scroll(client, collection, filter, limit, offset, (true, false)).await?;
            let pairs: Vec<(PointId, PointId)> = points
                .into_iter()
                .filter_map(|p| match p.payload.get("id").and_then(|v| v.kind.as_ref()) {
                    Some(Kind::StringValue(id)) => Some((p.id?, PointId::from(lightrag_point_id(source, id.as_str())))),
                    _ => None,
                })
                .collect();
            let ids = pairs.iter().map(|(_, s)| s.clone()).collect();
            let sources = self.points_at(client, collection, ids, false).await?;
            let orphans: Vec<PointId> = pairs
                .into_iter()
                .filter(|(_, s)| !sources.contains_key(&show_id(&Some(s.clone()))))
                .map(|(t, _)| t)
                .collect();
            if let Some(first) = orphans.first() {
                if example.is_empty() {
                    example = format!("{collection}/{}", show_id(&Some(first.clone())));
                }
                removed += orphans.len() as u64;
                client
                    .delete_points(
                        DeletePointsBuilder::new(collection)
                            .points(PointsIdsList { ids: orphans })
                            .wait(true),
                    )
                    .await
                    .map_err(Self::call(format!("delete of orphaned copies in {collection}")))?;
            }
            match next {
                Some(o) => offset = Some(o),
                None => return Ok((removed, example)),
            }
        }
    }

    /// How many remaining source points already have their re-keyed copy: on a
    /// resumed run, the other target points are copies of sources already removed.
    async fn copies_present(&self, client: &Qdrant, collection: &str) -> Result<u64, QdrantStoreError> {
        let target = self.settings.target.as_str();
        let mut present = 0;
        let mut offset = None;
        loop {
            let (points, next) = self.page(client, collection, offset, true).await?;
            let ids: Vec<PointId> = points
                .iter()
                .filter_map(|p| match p.payload.get("id").and_then(|v| v.kind.as_ref()) {
                    Some(Kind::StringValue(id)) => Some(PointId::from(lightrag_point_id(target, id))),
                    _ => None,
                })
                .collect();
            if !ids.is_empty() {
                let found = client
                    .get_points(
                        GetPointsBuilder::new(collection, ids)
                            .with_payload(false)
                            .with_vectors(false),
                    )
                    .await
                    .map_err(Self::call(format!("lookup of copies in {collection}")))?;
                present += found.result.len() as u64;
            }
            match next {
                Some(o) => offset = Some(o),
                None => return Ok(present),
            }
        }
    }

    /// Keep: one server-side filtered payload update for the whole collection.
    async fn rewrite_in_place(&self, client: &Qdrant, collection: &str) -> Result<(), QdrantStoreError> {
        let mut payload = qdrant_client::Payload::new();
        payload.insert(
            self.settings.tenant_field.clone(),
            self.settings.target.as_str().to_owned(),
        );
        client
            .set_payload(
                SetPayloadPointsBuilder::new(collection, payload)
                    .points_selector(tenant_filter(&self.settings.tenant_field, &self.settings.source))
                    .wait(true),
            )
            .await
            .map_err(Self::call(format!("payload update of {collection}")))?;
        Ok(())
    }
}

type Page = (Vec<RetrievedPoint>, Option<PointId>);

/// The next page of a collection, requested while the current one is written.
struct Prefetch {
    collection: String,
    offset: Option<PointId>,
    task: tokio::task::JoinHandle<Result<Page, QdrantStoreError>>,
}

async fn scroll_page(
    client: &Qdrant,
    collection: &str,
    filter: Filter,
    limit: u32,
    offset: Option<PointId>,
    with_data: bool,
) -> Result<Page, QdrantStoreError> {
    scroll(client, collection, filter, limit, offset, (with_data, with_data)).await
}

async fn scroll(
    client: &Qdrant,
    collection: &str,
    filter: Filter,
    limit: u32,
    offset: Option<PointId>,
    (payload, vectors): (bool, bool),
) -> Result<Page, QdrantStoreError> {
    let mut req = ScrollPointsBuilder::new(collection)
        .filter(filter)
        .limit(limit)
        .with_payload(payload)
        .with_vectors(vectors);
    if let Some(o) = offset {
        req = req.offset(o);
    }
    let r = client.scroll(req).await.map_err(|source| QdrantStoreError::Call {
        what: format!("scroll of {collection}"),
        source,
    })?;
    Ok((r.result, r.next_page_offset))
}

/// A cursor names the collection, never its position in a list that the next plan
/// rebuilds: `"{collection}#{offset}"` (the offset holds no `#`); "" is the start.
fn split_cursor(cursor: &str) -> Option<(&str, Option<PointId>)> {
    cursor
        .rsplit_once('#')
        .map(|(collection, offset)| (collection, decode_offset(offset)))
}

fn cursor_at(collection: &str, offset: Option<&PointId>) -> String {
    format!("{collection}#{}", offset.map(encode_offset).unwrap_or_default())
}

impl Phase for QdrantPhase {
    type Error = QdrantStoreError;

    async fn plan(&mut self, resuming: bool) -> Result<PhasePlan, QdrantStoreError> {
        let client = self.client().await?;
        let mut existing: Vec<String> = client
            .list_collections()
            .await
            .map_err(Self::call("listing collections"))?
            .collections
            .into_iter()
            .map(|c| c.name)
            .collect();
        // In name order: a cursor names its collection, and those before it are done.
        existing.sort();
        let mut candidates = if self.settings.collections.is_empty() {
            let prefix = &self.settings.collection_prefix;
            existing
                .iter()
                .filter(|c| c.starts_with(prefix.as_str()))
                .cloned()
                .collect()
        } else {
            for c in &self.settings.collections {
                if !existing.contains(c) {
                    return Err(QdrantStoreError::MissingCollection(c.clone()));
                }
            }
            self.settings.collections.clone()
        };
        candidates.sort();
        candidates.dedup();
        let mut plan = PhasePlan::default();
        plan.notes.extend(self.url_note.clone());
        self.collections.clear();
        for name in candidates {
            let source = self.count(&client, &name, &self.settings.source).await?;
            let target = self.count(&client, &name, &self.settings.target).await?;
            if source == 0 && target == 0 {
                continue;
            }
            if target > 0 && !resuming {
                return Err(QdrantStoreError::TargetNotEmpty {
                    collection: name,
                    count: target,
                });
            }
            if self.settings.point_ids == PointIdScheme::LightRAG {
                let info = client
                    .collection_info(name.as_str())
                    .await
                    .map_err(Self::call(format!("info of {name}")))?;
                let params = info.result.and_then(|r| r.config).and_then(|c| c.params);
                let known = params
                    .as_ref()
                    .is_some_and(|p| p.vectors_config.is_some() || p.sparse_vectors_config.is_some());
                if !known {
                    return Err(QdrantStoreError::UnknownVectors { collection: name });
                }
                let sizes = params
                    .and_then(|p| p.vectors_config)
                    .map(|c| configured_sizes(&c))
                    .unwrap_or_default();
                let filter = tenant_filter(&self.settings.tenant_field, &self.settings.source);
                let (sample, _) = scroll_page(&client, &name, filter, 1, None, true).await?;
                let vectors = match sample.into_iter().next() {
                    Some(p) => read_vectors(p.vectors).map_err(|detail| QdrantStoreError::BadVectors {
                        collection: name.clone(),
                        point: show_id(&p.id),
                        detail,
                    })?,
                    None => None,
                };
                if let Some(detail) = dimension_problem(&name, &sizes, vectors.as_ref()) {
                    return Err(QdrantStoreError::DimensionMismatch {
                        collection: name,
                        detail,
                    });
                }
            }
            // Target points that are not copies of a remaining source point: with
            // Keep, every one (moved in place); with re-keying, only those whose
            // source an interrupted run already removed.
            let extra = match self.settings.point_ids {
                PointIdScheme::Keep => target,
                PointIdScheme::LightRAG if target == 0 => 0,
                PointIdScheme::LightRAG => target - self.copies_present(&client, &name).await?.min(target),
            };
            plan.groups.push(GroupCount {
                name: name.clone(),
                source,
                target,
                extra,
            });
            self.collections.push(name);
        }
        plan.total = plan.groups.iter().map(|g| g.source).sum();
        plan.extra = plan.groups.iter().map(|g| g.extra).sum();
        Ok(plan)
    }

    async fn step(&mut self, stage: Stage, cursor: &str, _plan: &PhasePlan) -> Result<StepOutcome, QdrantStoreError> {
        let client = self.client().await?;
        // The cursor's collection, or (gone from this plan) the first one after it.
        let (index, offset) = match split_cursor(cursor) {
            None => (0, None),
            Some((name, offset)) => match self.collections.binary_search_by(|c| c.as_str().cmp(name)) {
                Ok(i) => (i, offset),
                Err(i) => (i, None),
            },
        };
        let Some(collection) = self.collections.get(index).cloned() else {
            return Ok(StepOutcome::default());
        };
        let next_collection = self.collections.get(index + 1).map(|c| cursor_at(c, None));
        match (stage, self.settings.point_ids) {
            (Stage::Copy, PointIdScheme::Keep) => {
                let n = self.count(&client, &collection, &self.settings.source).await?;
                self.rewrite_in_place(&client, &collection).await?;
                Ok(StepOutcome {
                    next: next_collection,
                    done: n,
                    skipped: 0,
                    group: Some(index),
                    recopied: Vec::new(),
                })
            }
            (Stage::Copy, PointIdScheme::LightRAG) => {
                let (n, next) = self.copy_page(&client, &collection, offset).await?;
                Ok(StepOutcome {
                    next: match next {
                        Some(o) => Some(cursor_at(&collection, Some(&o))),
                        None => next_collection,
                    },
                    done: n,
                    skipped: 0,
                    group: Some(index),
                    recopied: Vec::new(),
                })
            }
            (Stage::Verify | Stage::RemoveSource, PointIdScheme::LightRAG) => {
                let remove = stage == Stage::RemoveSource;
                let (n, recopied, next) = self.check_page(&client, &collection, offset, remove).await?;
                Ok(StepOutcome {
                    next: match next {
                        Some(o) => Some(cursor_at(&collection, Some(&o))),
                        None => next_collection,
                    },
                    done: n,
                    skipped: 0,
                    group: Some(index),
                    recopied,
                })
            }
            // Keep moves points in place: a point tagged with the source again (written
            // by a client since) is moved again; there is nothing else to compare.
            (Stage::Verify, PointIdScheme::Keep) => {
                let left = self.count(&client, &collection, &self.settings.source).await?;
                if left > 0 {
                    self.rewrite_in_place(&client, &collection).await?;
                }
                let recopied = (left > 0)
                    .then(|| Recopied {
                        item: format!("{collection}: {left} points tagged with the source again"),
                        digest: digest(&[collection.as_bytes(), &left.to_le_bytes(), now_nanos().as_bytes()]),
                    })
                    .into_iter()
                    .collect();
                let target = self.count(&client, &collection, &self.settings.target).await?;
                Ok(StepOutcome {
                    next: next_collection,
                    done: target,
                    skipped: 0,
                    group: Some(index),
                    recopied,
                })
            }
            // Keep moved the points in place: there is nothing left to remove.
            (Stage::RemoveSource, PointIdScheme::Keep) => Ok(StepOutcome::default()),
            (other, _) => Err(QdrantStoreError::Settings(format!("stage {other:?} has no batches"))),
        }
    }

    async fn verify(&mut self, plan: &PhasePlan, removed: bool) -> Result<Verified, QdrantStoreError> {
        let client = self.client().await?;
        let in_place = self.settings.point_ids == PointIdScheme::Keep;
        let mut problems = Vec::new();
        // Short of points, or points left in the source: written since the last pass.
        let mut again = Vec::new();
        let (mut source_left, mut target_total) = (0, 0);
        // Counts of the stores as they are now: clients may have written since the plan.
        for g in &plan.groups {
            let source = self.count(&client, &g.name, &self.settings.source).await?;
            let mut target = self.count(&client, &g.name, &self.settings.target).await?;
            if removed || in_place {
                if source > 0 {
                    again.push(format!(
                        "{}: {source} source points written after the last pass",
                        g.name
                    ));
                }
            } else {
                // Before any removal every target point is the copy of a source point:
                // one without (the plan's "extra" ones too) lost its source since.
                let expected = source;
                if target > expected {
                    // Copies of source points deleted since they were copied: the delete
                    // reaches the target too.
                    let (orphans, example) = self.remove_orphans(&client, &g.name).await?;
                    if orphans > 0 {
                        again.push(format!(
                            "{}: {orphans} copies of source points deleted since were removed (e.g. {example})",
                            g.name
                        ));
                    }
                    target -= orphans.min(target);
                }
                if target < expected {
                    again.push(format!("{}: target has {target} points, expected {expected}", g.name));
                } else if target > expected {
                    problems.push(format!("{}: target has {target} points, expected {expected}", g.name));
                }
            }
            source_left += source;
            target_total += target;
        }
        if !problems.is_empty() {
            problems.extend(again);
            return Err(QdrantStoreError::Mismatch(problems.join("; ")));
        }
        if !again.is_empty() {
            return Err(QdrantStoreError::Incomplete(again.join("; ")));
        }
        Ok(Verified {
            source_left,
            target: target_total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_ids_match_lightrags_formula() {
        // Computed with LightRAG's compute_mdhash_id_for_qdrant (Python's uuid module).
        let cases = [
            ("siraya", "chunk-0a1b2c", "f7913f4c-02c4-4be5-8e72-979c0454305b"),
            (
                "tenant_76920508",
                "ent-Siraya Corp",
                "31a88b61-d643-489e-8451-ea4a61888408",
            ),
            (
                "tenant_76920508",
                "rel-abc<SEP>def",
                "67a5d70c-9597-4070-be4e-fb7595960996",
            ),
        ];
        for (ws, id, want) in cases {
            assert_eq!(lightrag_point_id(ws, id), want, "{ws} {id}");
        }
    }

    #[test]
    fn dimensions_must_agree_with_the_name_and_the_configuration() {
        use qdrant_client::qdrant::DenseVector;
        let dense = |n: usize| vector_output::Vector::Dense(DenseVector { data: vec![0.5; n] });
        let unnamed = |n| ReadVectors::Unnamed(dense(n));
        let sizes = HashMap::from([(String::new(), 1024)]);
        assert_eq!(declared_dimension("lightrag_vdb_chunks_bge_m3_1024d"), Some(1024));
        assert_eq!(declared_dimension("lightrag_vdb_chunks"), None);
        assert_eq!(declared_dimension("lightrag_vdb_chunks_d"), None);
        assert_eq!(
            dimension_problem("lightrag_vdb_chunks_bge_m3_1024d", &sizes, Some(&unnamed(1024))),
            None
        );
        assert_eq!(dimension_problem("lightrag_vdb_chunks", &sizes, None), None);
        let by_name = dimension_problem("lightrag_vdb_chunks_bge_m3_768d", &sizes, None).unwrap_or_default();
        assert!(
            by_name.contains("768 dimensions") && by_name.contains("1024"),
            "{by_name}"
        );
        let by_point = dimension_problem("lightrag_vdb_chunks", &sizes, Some(&unnamed(768))).unwrap_or_default();
        assert!(by_point.contains("768 dimensions, the collection 1024"), "{by_point}");
        let named = ReadVectors::Named(HashMap::from([("dense".to_owned(), dense(1024))]));
        let other = dimension_problem("c", &sizes, Some(&named)).unwrap_or_default();
        assert!(
            other.contains("\"dense\", which the collection does not configure"),
            "{other}"
        );
        let named_sizes = HashMap::from([("dense".to_owned(), 1024)]);
        assert_eq!(dimension_problem("c", &named_sizes, Some(&named)), None);
    }

    /// Both wire encodings decode to the same vectors; malformed legacy ones are refused.
    #[test]
    #[allow(deprecated)]
    fn vectors_read_the_same_in_both_encodings() {
        use qdrant_client::qdrant::{DenseVector, MultiDenseVector, SparseIndices, SparseVector, VectorOutput};
        let legacy = |data: Vec<f32>, indices: Option<Vec<u32>>, count: Option<u32>| VectorOutput {
            data,
            indices: indices.map(|data| SparseIndices { data }),
            vectors_count: count,
            vector: None,
        };
        let current = |v| VectorOutput {
            vector: Some(v),
            ..VectorOutput::default()
        };
        let dense = vector_output::Vector::Dense(DenseVector { data: vec![1.0, 2.0] });
        let sparse = vector_output::Vector::Sparse(SparseVector {
            indices: vec![3, 9],
            values: vec![0.5, 0.25],
        });
        let multi = vector_output::Vector::MultiDense(MultiDenseVector {
            vectors: vec![
                DenseVector { data: vec![1.0, 2.0] },
                DenseVector { data: vec![3.0, 4.0] },
            ],
        });
        for (old, new, want) in [
            (legacy(vec![1.0, 2.0], None, None), current(dense.clone()), dense),
            (
                legacy(vec![0.5, 0.25], Some(vec![3, 9]), None),
                current(sparse.clone()),
                sparse,
            ),
            (
                legacy(vec![1.0, 2.0, 3.0, 4.0], None, Some(2)),
                current(multi.clone()),
                multi,
            ),
        ] {
            assert_eq!(read_vector(old), Ok(want.clone()));
            assert_eq!(read_vector(new), Ok(want));
        }
        assert!(read_vector(legacy(vec![1.0], Some(vec![1, 2]), None)).is_err());
        assert!(read_vector(legacy(vec![1.0, 2.0, 3.0], None, Some(2))).is_err());
        assert!(read_vector(legacy(vec![1.0, 2.0], None, Some(0))).is_err());
        assert!(read_vector(legacy(Vec::new(), None, None)).is_err());
    }

    #[test]
    fn the_rest_port_maps_to_grpc() {
        assert_eq!(grpc_url("http://localhost:6333").0, "http://localhost:6334");
        assert!(grpc_url("http://localhost:6333/").1.is_some());
        assert_eq!(grpc_url("http://q:6334"), ("http://q:6334".into(), None));
    }

    #[test]
    fn cursors_name_their_collection() {
        let id = PointId::from(42u64);
        let uuid = PointId::from("2f1b9c1e-0000-4000-8000-000000000001".to_owned());
        assert_eq!(
            split_cursor(&cursor_at("lightrag_vdb_chunks", Some(&id))),
            Some(("lightrag_vdb_chunks", Some(id)))
        );
        assert_eq!(split_cursor(&cursor_at("a#b", Some(&uuid))), Some(("a#b", Some(uuid))));
        assert_eq!(split_cursor(&cursor_at("c", None)), Some(("c", None)));
        assert_eq!(split_cursor(""), None);
    }
}
