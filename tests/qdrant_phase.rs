//! The Qdrant phase through the real binary against the Qdrant test server
//! (Qdrant's storage engine behind Qdrant's gRPC definitions): LightRAG re-keying
//! for Move and Copy, Keep, resume after SIGKILL, and bad input. Re-keying reads
//! every vector, so those tests run against both wire encodings of vectors: Qdrant
//! 1.17's `vector` oneof and the deprecated fields Qdrant up to 1.16 fills.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{bin, state_dir, text};
use tenant_migrator_testkit::qdrant_fixture::{self, StoredPoint, lightrag_id};
use tenant_migrator_testkit::{DelayProxy, QdrantServer, Wire, fixture};

const SOURCE: &str = "siraya";
const TARGET: &str = "tenant_b";
const KEY: &str = "qdrant-k3y";
const SCALE: f64 = 0.01;
const DIM: u64 = 8;
/// Points of the source in the named-, sparse- and multi-vector collection.
const HYBRID_POINTS: u64 = 24;

type Collections = BTreeMap<String, BTreeMap<String, StoredPoint>>;

/// The Qdrant of a test: `QDRANT_URL` (with `QDRANT_API_KEY`) when set — a real
/// Qdrant, whose `lightrag_vdb_*` collections the tests replace; run them with
/// `--test-threads=1` — else a test server started here.
struct Endpoint {
    url: String,
    key: String,
    server: Option<QdrantServer>,
}

impl Endpoint {
    /// With `QDRANT_URL` the wire is the real server's, whatever `wire` says.
    fn start_wire(wire: Wire) -> Self {
        match std::env::var("QDRANT_URL") {
            Ok(url) => Endpoint {
                url: url.trim_end_matches('/').to_owned(),
                key: std::env::var("QDRANT_API_KEY").unwrap_or_default(),
                server: None,
            },
            Err(_) => {
                let s = QdrantServer::start_wire(Some(KEY), wire).expect("Qdrant test server (run tools/setup.sh)");
                Endpoint {
                    url: s.url(),
                    key: KEY.into(),
                    server: Some(s),
                }
            }
        }
    }

    fn client(&self) -> qdrant_client::Qdrant {
        let mut b = qdrant_client::Qdrant::from_url(&self.url).skip_compatibility_check();
        if !self.key.is_empty() {
            b = b.api_key(self.key.clone());
        }
        b.build().expect("client")
    }

    fn address(&self) -> std::net::SocketAddr {
        let host_port = self.url.split_once("://").map_or(self.url.as_str(), |(_, r)| r);
        std::net::ToSocketAddrs::to_socket_addrs(host_port)
            .ok()
            .and_then(|mut a| a.next())
            .expect("resolve the Qdrant URL")
    }
}

async fn loaded() -> (Endpoint, u64) {
    loaded_wire(Wire::Current).await
}

/// The standard fixture plus the named-, sparse- and multi-vector collection.
async fn loaded_wire(wire: Wire) -> (Endpoint, u64) {
    load(Endpoint::start_wire(wire)).await
}

/// Like [`loaded`], always on a test server of its own (whose fault injection a test uses).
async fn loaded_test_server() -> (Endpoint, QdrantServer, u64) {
    let s = QdrantServer::start(Some(KEY)).expect("Qdrant test server (run tools/setup.sh)");
    let endpoint = Endpoint {
        url: s.url(),
        key: KEY.into(),
        server: None,
    };
    let (endpoint, n) = load(endpoint).await;
    (endpoint, s, n)
}

async fn load(server: Endpoint) -> (Endpoint, u64) {
    let client = server.client();
    if server.server.is_none() && std::env::var_os("QDRANT_URL").is_some() {
        for c in client.list_collections().await.expect("list").collections {
            if c.name.starts_with("lightrag_vdb_") {
                client.delete_collection(c.name).await.expect("delete");
            }
        }
    }
    let n = qdrant_fixture::load_standard(&client, SOURCE, SCALE, DIM, true)
        .await
        .expect("load");
    qdrant_fixture::create_hybrid(&client, DIM)
        .await
        .expect("hybrid collection");
    let hybrid = qdrant_fixture::load_hybrid(&client, SOURCE, HYBRID_POINTS, DIM)
        .await
        .expect("hybrid points");
    for l in fixture::lookalikes(SOURCE) {
        qdrant_fixture::load_hybrid(&client, &l, 4, DIM)
            .await
            .expect("hybrid look-alikes");
    }
    (server, n + hybrid)
}

async fn snapshot(server: &Endpoint) -> Collections {
    let client = server.client();
    let mut out = BTreeMap::new();
    for c in client.list_collections().await.expect("list").collections {
        out.insert(
            c.name.clone(),
            qdrant_fixture::snapshot(&client, &c.name).await.expect("snapshot"),
        );
    }
    out
}

fn migrate(url: &str, state: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args([
        "migrate",
        SOURCE,
        TARGET,
        "--skip-config",
        "--skip-redis",
        "--skip-memgraph",
    ])
    .args(["--qdrant-url", url])
    .arg("--state-dir")
    .arg(state)
    .args(extra)
    .env("QDRANT_API_KEY", key());
    c
}

/// The API key the runs use: the test server's, or a real Qdrant's from the environment.
fn key() -> String {
    match std::env::var_os("QDRANT_URL") {
        Some(_) => std::env::var("QDRANT_API_KEY").unwrap_or_default(),
        None => KEY.to_owned(),
    }
}

fn proxied(proxy: &DelayProxy) -> String {
    format!("http://127.0.0.1:{}", proxy.port())
}

fn tenant_of(p: &StoredPoint) -> Option<String> {
    p.payload.get("workspace_id").cloned()
}

fn ws(tenant: &str) -> String {
    format!("{:?}", qdrant_client::qdrant::Value::from(tenant.to_owned()))
}

/// What every collection must hold after migrating SOURCE to TARGET.
fn expected(before: &Collections, moved: bool, rekey: bool) -> Collections {
    let mut out = BTreeMap::new();
    for (name, points) in before {
        let mut want = BTreeMap::new();
        for (id, p) in points {
            if tenant_of(p) != Some(ws(SOURCE)) {
                want.insert(id.clone(), p.clone());
                continue;
            }
            let mut q = p.clone();
            q.payload.insert("workspace_id".into(), ws(TARGET));
            let payload_id = p.payload.get("id").cloned().unwrap_or_default();
            // The payload id is a Debug-formatted string value: take the text between quotes.
            let raw = payload_id.split('"').nth(1).unwrap_or_default().to_owned();
            let new_id = if rekey { lightrag_id(TARGET, &raw) } else { id.clone() };
            if !moved {
                want.insert(id.clone(), p.clone());
            }
            want.insert(new_id, q);
        }
        out.insert(name.clone(), want);
    }
    out
}

fn assert_same(got: &Collections, want: &Collections) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "collections"
    );
    for (name, want) in want {
        let got = &got[name];
        let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).take(3).collect();
        let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).take(3).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{name}: missing {missing:?}, unexpected {extra:?}"
        );
        for (id, w) in want {
            let g = &got[id];
            assert_eq!(g.payload, w.payload, "{name}/{id}: payload");
            assert_eq!(
                g.vectors.keys().collect::<Vec<_>>(),
                w.vectors.keys().collect::<Vec<_>>(),
                "{name}/{id}: vector names"
            );
            assert!(!w.vectors.is_empty(), "{name}/{id}: a fixture point without vectors");
            for (v, want) in &w.vectors {
                assert!(
                    g.vectors[v].close_to(want),
                    "{name}/{id}: vector {v:?} differs: {:?} instead of {want:?}",
                    g.vectors[v]
                );
            }
        }
    }
}

/// Runs a test body once against each wire encoding of vectors.
macro_rules! on_both_wires {
    ($(#[$attr:meta])* async fn $name:ident($wire:ident) $body:block) => {
        mod $name {
            use super::*;
            async fn run($wire: Wire) $body
            $(#[$attr])*
            async fn current() {
                run(Wire::Current).await
            }
            /// Qdrant up to 1.16: vectors only in `VectorOutput`'s deprecated fields.
            $(#[$attr])*
            async fn legacy_up_to_1_16() {
                run(Wire::Legacy).await
            }
        }
    };
}

on_both_wires! {
#[tokio::test]
async fn move_rekeys_every_point_the_lightrag_way_and_leaves_lookalikes(wire) {
    let (server, n) = loaded_wire(wire).await;
    let before = snapshot(&server).await;
    let out = migrate(&server.url, &state_dir(&format!("q-move-{wire:?}")), &[]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{n} of {n} points moved and verified")),
        "{}",
        text(&out)
    );
    assert_same(&snapshot(&server).await, &expected(&before, true, true));
    assert!(!text(&out).contains(KEY), "the API key leaked");
}
}

on_both_wires! {
#[tokio::test]
async fn copy_rekeys_into_the_target_and_leaves_the_source(wire) {
    let (server, n) = loaded_wire(wire).await;
    let before = snapshot(&server).await;
    let out = migrate(
        &server.url,
        &state_dir(&format!("q-copy-{wire:?}")),
        &["--mode", "copy", "--output", "json"],
    )
    .output()
    .expect("run");
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let status = &report["phases"][2]["status"];
    assert_eq!(
        status["message"],
        format!("{n} of {n} points copied and verified ({n} compared by content)"),
        "{report}"
    );
    // Per-collection progress, as the resource's status shows it.
    let collections = status["collections"].as_array().expect("collections");
    assert_eq!(collections.len(), 5, "{report}");
    assert!(collections.iter().all(|c| c["done"] == c["total"]), "{report}");
    assert_eq!(collections.iter().filter_map(|c| c["total"].as_u64()).sum::<u64>(), n);
    assert_same(&snapshot(&server).await, &expected(&before, false, true));
}
}

/// Another application's collection that happens to tag points with the same field
/// and value is not LightRAG's: discovery looks only at `lightrag_vdb_*` unless told
/// otherwise, and a prefix or a list brings it in.
#[tokio::test]
async fn only_collections_named_like_lightrags_are_discovered() {
    let (server, _) = loaded().await;
    let client = server.client();
    let other = "support_tickets";
    qdrant_fixture::create_collections(&client, DIM, false)
        .await
        .expect("collections");
    client
        .create_collection(
            qdrant_client::qdrant::CreateCollectionBuilder::new(other).vectors_config(
                qdrant_client::qdrant::VectorParamsBuilder::new(DIM, qdrant_client::qdrant::Distance::Cosine),
            ),
        )
        .await
        .expect("create");
    let points: Vec<qdrant_client::qdrant::PointStruct> = (0..5u64)
        .map(|i| {
            let payload: std::collections::HashMap<String, qdrant_client::qdrant::Value> = [
                ("id".to_owned(), format!("ticket-{i}").into()),
                ("workspace_id".to_owned(), SOURCE.to_owned().into()),
            ]
            .into();
            qdrant_client::qdrant::PointStruct::new(i, vec![0.5_f32; DIM as usize], payload)
        })
        .collect();
    client
        .upsert_points(qdrant_client::qdrant::UpsertPointsBuilder::new(other, points).wait(true))
        .await
        .expect("upsert");
    let before = snapshot(&server).await;
    let planned = |extra: &[&str]| {
        let mut args = vec!["--dry-run", "--output", "json"];
        args.extend_from_slice(extra);
        let out = migrate(&server.url, &state_dir("q-discover-plan"), &args)
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", text(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        report["phases"][2]["plan"]["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .filter_map(|g| g["name"].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    let found = planned(&[]);
    assert!(!found.contains(&other.to_owned()), "{found:?}");
    assert_eq!(found.len(), 5, "{found:?}");
    // Named by prefix, it is the tenant's too.
    assert_eq!(planned(&["--qdrant-collection-prefix", "support_"]), [other]);
    let out = migrate(&server.url, &state_dir("q-discover"), &[])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out));
    let mut want = expected(&before, true, true);
    want.insert(other.to_owned(), before[other].clone());
    assert_same(&snapshot(&server).await, &want);
}

/// LightRAG 1.5 creates model-suffixed collections at start-up: one that appears
/// between a killed run and its resume must neither shift the checkpoint onto
/// another collection nor be left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_created_between_two_runs_is_migrated_and_the_checkpoint_stays_put() {
    let (server, n) = loaded().await;
    let state = state_dir("q-added");
    let cmd = migrate(&server.url, &state, &["--batch-size", "10"]);
    let killed = tokio::task::block_in_place(|| {
        common::kill_when(cmd, &state, (SOURCE, TARGET), "qdrant", "copying relationships", |cp| {
            Some(cp["stage"].as_str()? == "Copy" && cp["cursor"].as_str()?.starts_with(qdrant_fixture::RELATIONSHIPS))
        })
    });
    assert!(killed, "finished before copying relationships");
    // Sorts between collections already copied and the one being copied.
    let added = "lightrag_vdb_entities_bge_m3_8d";
    let client = server.client();
    client
        .create_collection(
            qdrant_client::qdrant::CreateCollectionBuilder::new(added).vectors_config(
                qdrant_client::qdrant::VectorParamsBuilder::new(DIM, qdrant_client::qdrant::Distance::Cosine),
            ),
        )
        .await
        .expect("create");
    let points: Vec<qdrant_client::qdrant::PointStruct> = (0..7u64)
        .map(|i| {
            let id = format!("ent-new-{i}");
            let payload: std::collections::HashMap<String, qdrant_client::qdrant::Value> = [
                ("id".to_owned(), id.clone().into()),
                ("workspace_id".to_owned(), SOURCE.to_owned().into()),
            ]
            .into();
            qdrant_client::qdrant::PointStruct::new(lightrag_id(SOURCE, &id), vec![0.5_f32; DIM as usize], payload)
        })
        .collect();
    client
        .upsert_points(qdrant_client::qdrant::UpsertPointsBuilder::new(added, points).wait(true))
        .await
        .expect("upsert");
    let before = snapshot(&server).await;
    let out = migrate(&server.url, &state, &[]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out));
    let total = n + 7;
    assert!(
        text(&out).contains(&format!("{total} of {total} points moved and verified")),
        "{}",
        text(&out)
    );
    // `before` holds the interrupted run's copies too: they equal their sources' re-keyed points.
    assert_same(&snapshot(&server).await, &expected(&before, true, true));
}

#[tokio::test]
async fn keep_rewrites_the_tenant_field_in_place() {
    let (server, _) = loaded().await;
    let before = snapshot(&server).await;
    let dir = state_dir("q-keep");
    std::fs::create_dir_all(&dir).expect("dir");
    let manifest = dir.join("m.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: tenancy.dev/v1alpha1\nkind: TenantMigration\nmetadata: {{name: k}}\nspec:\n  source: {SOURCE}\n  target: {TARGET}\n  \
             config: {{enabled: false}}\n  redis: {{enabled: false}}\n  memgraph: {{enabled: false}}\n  \
             qdrant: {{url: '{}', pointIds: Keep}}\n",
            server.url
        ),
    )
    .expect("manifest");
    let out = Command::new(bin())
        .args(["migrate", "-f"])
        .arg(&manifest)
        .arg("--state-dir")
        .arg(&dir)
        .env("QDRANT_API_KEY", key())
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out));
    assert_same(&snapshot(&server).await, &expected(&before, true, false));
}

on_both_wires! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_killed_at_several_points_resumes_and_ends_exact(wire) {
    let (server, n) = loaded_wire(wire).await;
    let before = snapshot(&server).await;
    let state = state_dir(&format!("q-kill-{wire:?}"));
    let proxy = DelayProxy::start(server.address(), Duration::from_millis(2)).expect("proxy");
    for (stage, batch) in [("Copy", 2), ("Copy", 9), ("Verify", 0), ("RemoveSource", 3)] {
        let cmd = migrate(&proxied(&proxy), &state, &["--batch-size", "10"]);
        let killed =
            tokio::task::block_in_place(|| common::kill_at(cmd, &state, (SOURCE, TARGET), "qdrant", stage, batch));
        assert!(killed, "finished before {stage} batch {batch}");
    }
    let out = migrate(&proxied(&proxy), &state, &[]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{n} of {n} points moved and verified")),
        "{}",
        text(&out)
    );
    assert_same(&snapshot(&server).await, &expected(&before, true, true));
    let again = migrate(&proxied(&proxy), &state, &[]).output().expect("run");
    assert!(again.status.success(), "{}", text(&again));
    assert_same(&snapshot(&server).await, &expected(&before, true, true));
}
}

#[tokio::test]
async fn bad_input_is_refused_without_a_write() {
    let (server, _) = loaded().await;
    // A point of the target tenant already exists.
    let client = server.client();
    qdrant_fixture::load_tenant(&client, TARGET, 0.0, DIM, false)
        .await
        .expect("load target");
    let before = snapshot(&server).await;
    let closed = tenant_migrator_testkit::free_port().expect("port");
    let dir = state_dir("q-bad");
    let wrong_key = {
        let mut c = migrate(&server.url, &dir, &[]);
        c.env("QDRANT_API_KEY", "wrong");
        c
    };
    let cases: Vec<(Command, &str)> = vec![
        (
            migrate(&format!("http://127.0.0.1:{closed}"), &dir, &[]),
            "health check of Qdrant at http://127.0.0.1:",
        ),
        (wrong_key, "rejected the API key"),
        (
            migrate(&server.url, &dir, &["--point-ids", "keep", "--mode", "copy"]),
            "pointIds: Keep cannot Copy",
        ),
        (
            migrate(&server.url, &dir, &[]),
            "already holds 3 points of the target tenant",
        ),
        (
            migrate(
                &server.url,
                &dir,
                &["--qdrant-collections", "lightrag_vdb_chunks,lightrag_vdb_nope"],
            ),
            "collection \"lightrag_vdb_nope\" does not exist",
        ),
    ];
    for (mut cmd, want) in cases {
        let out = cmd.output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{want}: {}", text(&out));
        assert!(text(&out).contains(want), "expected {want:?} in {}", text(&out));
        assert!(!text(&out).contains(KEY), "the API key leaked");
    }
    assert_same(&snapshot(&server).await, &before);
    // Look-alike tenants exist in the fixture and are part of what stayed identical.
    assert!(
        before
            .values()
            .flat_map(|c| c.values())
            .any(|p| tenant_of(p) == Some(ws(&fixture::lookalikes(SOURCE)[2])))
    );
}

#[tokio::test]
async fn a_collection_whose_dimension_contradicts_its_name_is_refused_without_a_write() {
    use qdrant_client::qdrant::{
        CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, Distance, FieldType, PointStruct,
        UpsertPointsBuilder, VectorParamsBuilder,
    };
    let (server, _) = loaded().await;
    let client = server.client();
    // LightRAG names model-suffixed collections by their dimension; this one says 1024
    // but holds DIM-sized vectors: whoever made it, re-keyed points would be written
    // into a collection that LightRAG for the target would not read as the name says.
    let odd = "lightrag_vdb_entities_bge_m3_1024d";
    client
        .create_collection(
            CreateCollectionBuilder::new(odd).vectors_config(VectorParamsBuilder::new(DIM, Distance::Cosine)),
        )
        .await
        .expect("create");
    client
        .create_field_index(CreateFieldIndexCollectionBuilder::new(
            odd,
            "workspace_id",
            FieldType::Keyword,
        ))
        .await
        .expect("index");
    let points: Vec<PointStruct> = (0..3u64)
        .map(|i| {
            let id = format!("ent-odd-{i}");
            let payload: std::collections::HashMap<String, qdrant_client::qdrant::Value> = [
                ("id".to_owned(), id.clone().into()),
                ("workspace_id".to_owned(), SOURCE.to_owned().into()),
            ]
            .into();
            PointStruct::new(
                qdrant_fixture::lightrag_id(SOURCE, &id),
                vec![0.25_f32; DIM as usize],
                payload,
            )
        })
        .collect();
    client
        .upsert_points(UpsertPointsBuilder::new(odd, points).wait(true))
        .await
        .expect("upsert");
    let before = snapshot(&server).await;
    let out = migrate(&server.url, &state_dir("q-dim"), &[]).output().expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains(&format!(
            "collection \"{odd}\": dimension mismatch: its name says 1024 dimensions, its vectors are configured with {DIM}"
        )),
        "{said}"
    );
    assert!(said.contains("preflight failed, nothing was written"), "{said}");
    assert_same(&snapshot(&server).await, &before);
}

/// An `https://` Qdrant URL verifies the server against the system's roots or the
/// bundle `SSL_CERT_FILE` names: an unknown CA is refused before any write; a trusted
/// one re-keys exactly as over plain gRPC. (The test server's own TLS; a real Qdrant's
/// TLS is configured on the Qdrant side.)
#[tokio::test]
async fn an_https_url_verifies_the_server_and_migrates_over_tls() {
    let tls = QdrantServer::start_tls(Some(KEY)).expect("Qdrant test server with TLS");
    let (https, ca) = tls.tls().expect("a TLS port");
    let server = Endpoint {
        url: tls.url(),
        key: KEY.into(),
        server: Some(tls),
    };
    let n = qdrant_fixture::load_standard(&server.client(), SOURCE, SCALE, DIM, true)
        .await
        .expect("load");
    let before = snapshot(&server).await;
    let state = state_dir("q-tls");
    let run = |trusted: bool| {
        let mut c = migrate(&https, &state, &[]);
        if trusted {
            c.env("SSL_CERT_FILE", &ca);
        } else {
            c.env_remove("SSL_CERT_FILE");
        }
        c.output().expect("run")
    };
    let out = run(false);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("preflight failed, nothing was written"),
        "{}",
        text(&out)
    );
    assert_same(&snapshot(&server).await, &before);

    let out = run(true);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{n} of {n} points moved and verified")),
        "{}",
        text(&out)
    );
    assert_same(&snapshot(&server).await, &expected(&before, true, true));
}

/// A source point with LightRAG's payload (`id`, `content`, the tenant) and a vector.
fn point_of(tenant: &str, id: &str, content: &str) -> qdrant_client::qdrant::PointStruct {
    let payload: std::collections::HashMap<String, qdrant_client::qdrant::Value> = [
        ("id".to_owned(), id.to_owned().into()),
        ("workspace_id".to_owned(), tenant.to_owned().into()),
        ("content".to_owned(), content.to_owned().into()),
    ]
    .into();
    qdrant_client::qdrant::PointStruct::new(lightrag_id(tenant, id), vec![0.5_f32; DIM as usize], payload)
}

/// A Move killed in its removal (batch 2 of RemoveSource, pages of 10 points): its
/// state directory, and a source point of the relationships not removed yet.
async fn killed_in_removal(server: &Endpoint, name: &str) -> (std::path::PathBuf, StoredPoint) {
    let state = state_dir(name);
    let cmd = migrate(&server.url, &state, &["--batch-size", "10"]);
    let killed =
        tokio::task::block_in_place(|| common::kill_at(cmd, &state, (SOURCE, TARGET), "qdrant", "RemoveSource", 2));
    assert!(killed, "finished before removal");
    let left = qdrant_fixture::snapshot(&server.client(), qdrant_fixture::RELATIONSHIPS)
        .await
        .expect("snapshot");
    let kept = left
        .into_values()
        .find(|p| tenant_of(p) == Some(ws(SOURCE)))
        .expect("a source point not removed yet");
    (state, kept)
}

/// Killed in the middle of removal; then a client updates a source point not removed
/// yet and adds one: the resumed run compares each point with its copy before it
/// deletes it (by id, never by filter), copies the update and the new point again,
/// and removes them in a later pass — nothing written to the source is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_written_between_copy_and_removal_is_copied_again() {
    let (server, _) = loaded().await;
    let (state, kept) = killed_in_removal(&server, "q-catchup").await;
    let client = server.client();
    let rel = qdrant_fixture::RELATIONSHIPS;
    let id = kept.payload["id"].split('"').nth(1).unwrap_or_default().to_owned();
    let fresh = [
        point_of(SOURCE, &id, "updated after verification"),
        point_of(SOURCE, "rel-new-after-verification", "new"),
    ];
    client
        .upsert_points(qdrant_client::qdrant::UpsertPointsBuilder::new(rel, fresh.to_vec()).wait(true))
        .await
        .expect("upsert");
    let out = migrate(&server.url, &state, &[]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out));
    let after = qdrant_fixture::snapshot(&client, rel).await.expect("snapshot");
    for (pid, content) in [
        (id.as_str(), "updated after verification"),
        ("rel-new-after-verification", "new"),
    ] {
        let copy = after
            .get(&lightrag_id(TARGET, pid))
            .unwrap_or_else(|| panic!("{pid} has no copy"));
        assert_eq!(copy.payload["content"], ws(content), "{pid}: {}", text(&out));
    }
    assert!(
        !after.values().any(|p| tenant_of(p) == Some(ws(SOURCE))),
        "source points left"
    );
    assert!(
        text(&out).contains("copied again after they changed in the source"),
        "{}",
        text(&out)
    );
}

/// Killed in removal after its Verify marked every source point; then a copy of a
/// point not removed yet is changed behind the run's back (the source is not touched,
/// so it still carries the killed run's removal mark). The resumed run does not take
/// that mark for its own comparison: it compares the point with its copy before it
/// deletes it, writes the copy again from the source, and ends with the source's
/// content at the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_move_compares_again_what_an_earlier_run_marked() {
    let (server, _) = loaded().await;
    let (state, kept) = killed_in_removal(&server, "q-old-mark").await;
    let client = server.client();
    let rel = qdrant_fixture::RELATIONSHIPS;
    assert!(
        kept.payload.contains_key(tenant_migrator::stores::qdrant::REMOVAL_MARK),
        "the killed run's Verify left no mark on {kept:?}"
    );
    let id = kept.payload["id"].split('"').nth(1).unwrap_or_default().to_owned();
    let content = kept.payload["content"].clone();
    client
        .upsert_points(
            qdrant_client::qdrant::UpsertPointsBuilder::new(rel, vec![point_of(TARGET, &id, "changed behind the run")])
                .wait(true),
        )
        .await
        .expect("upsert");
    let out = migrate(&server.url, &state, &[]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out));
    let after = qdrant_fixture::snapshot(&client, rel).await.expect("snapshot");
    let copy = after
        .get(&lightrag_id(TARGET, &id))
        .unwrap_or_else(|| panic!("{id} has no copy"));
    assert_eq!(copy.payload["content"], content, "{id}: {}", text(&out));
    assert!(
        !after.values().any(|p| tenant_of(p) == Some(ws(SOURCE))),
        "source points left"
    );
}

/// A client rewrites every source point still there while the run's first delete of
/// RemoveSource waits in the server — after the run compared those points with their
/// copies and found them equal. Deleting them by id would lose the rewrite (Qdrant has
/// no transactions); the run deletes only points it marked before comparing, which an
/// upsert clears, so the rewritten points stay, are copied again, and the Move ends
/// with every rewrite at its target id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_rewritten_between_its_comparison_and_its_delete_is_not_deleted() {
    let (server, test_server, _) = loaded_test_server().await;
    let client = server.client();
    // The run removes collections in name order: the paused delete is in one of these.
    let collections = [
        qdrant_fixture::CHUNKS,
        qdrant_fixture::ENTITIES,
        qdrant_fixture::RELATIONSHIPS,
    ];
    test_server.pause_next("Points.Delete").expect("pause");
    let state = state_dir("q-rewrite-before-delete");
    let mut run = migrate(&server.url, &state, &["--batch-size", "10"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !test_server.paused() {
        if run.try_wait().ok().flatten().is_some() {
            let out = run.wait_with_output().expect("run");
            panic!("the run ended before its first delete: {}", text(&out));
        }
        assert!(std::time::Instant::now() < deadline, "the run never deleted a point");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        qdrant_stage(&state),
        "RemoveSource",
        "the first delete is RemoveSource's"
    );
    let mut rewritten = Vec::new();
    for c in collections {
        let left = qdrant_fixture::snapshot(&client, c).await.expect("snapshot");
        let ids: Vec<String> = left
            .values()
            .filter(|p| tenant_of(p) == Some(ws(SOURCE)))
            .map(|p| p.payload["id"].split('"').nth(1).unwrap_or_default().to_owned())
            .collect();
        let fresh: Vec<_> = ids
            .iter()
            .map(|id| point_of(SOURCE, id, &format!("rewritten {id}")))
            .collect();
        if !fresh.is_empty() {
            client
                .upsert_points(qdrant_client::qdrant::UpsertPointsBuilder::new(c, fresh).wait(true))
                .await
                .expect("upsert");
        }
        rewritten.extend(ids.into_iter().map(|id| (c, id)));
    }
    assert!(!rewritten.is_empty(), "no source point left to rewrite");
    test_server.resume().expect("resume");
    let out = tokio::task::block_in_place(|| run.wait_with_output()).expect("run");
    assert!(out.status.success(), "{}", text(&out));
    let mut after = BTreeMap::new();
    for c in collections {
        after.insert(c, qdrant_fixture::snapshot(&client, c).await.expect("snapshot"));
    }
    let lost: Vec<&(&str, String)> = rewritten
        .iter()
        .filter(|(c, id)| {
            after[c]
                .get(&lightrag_id(TARGET, id))
                .map(|p| p.payload["content"].clone())
                != Some(ws(&format!("rewritten {id}")))
        })
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} rewrites lost, e.g. {:?}: {}",
        lost.len(),
        rewritten.len(),
        lost.first(),
        text(&out)
    );
    let points = || after.values().flat_map(|points| points.values());
    assert!(
        !points().any(|p| tenant_of(p) == Some(ws(SOURCE))),
        "source points left"
    );
    assert!(
        points().all(|p| !p.payload.contains_key(tenant_migrator::stores::qdrant::REMOVAL_MARK)),
        "a copy carries the removal mark"
    );
}

/// A tenant moved earlier with kept ids owns points at ids that LightRAG computes for
/// this migration's target: they are someone else's, and re-keying stops before
/// writing over them, naming one.
#[tokio::test]
async fn a_target_id_held_by_another_tenants_point_is_never_overwritten() {
    let (server, _) = loaded().await;
    let client = server.client();
    let chunks = qdrant_fixture::CHUNKS;
    let source_points = qdrant_fixture::snapshot(&client, chunks).await.expect("snapshot");
    let (_, first) = source_points
        .iter()
        .find(|(_, p)| tenant_of(p) == Some(ws(SOURCE)))
        .expect("a source point");
    let id = first.payload["id"].split('"').nth(1).unwrap_or_default().to_owned();
    // Another tenant's point, at the id this migration would give `id`.
    let mut squatter = point_of(TARGET, &id, "another tenant's");
    squatter
        .payload
        .insert("workspace_id".into(), "moved_with_kept_ids".to_owned().into());
    client
        .upsert_points(qdrant_client::qdrant::UpsertPointsBuilder::new(chunks, vec![squatter]).wait(true))
        .await
        .expect("upsert");
    let before = snapshot(&server).await;
    let out = migrate(&server.url, &state_dir("q-foreign-id"), &[])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "target ids are held by points of another tenant (e.g. {})",
            lightrag_id(TARGET, &id)
        )),
        "{}",
        text(&out)
    );
    let after = snapshot(&server).await;
    assert_eq!(
        after[chunks][&lightrag_id(TARGET, &id)],
        before[chunks][&lightrag_id(TARGET, &id)]
    );
    // Every source point is still there: nothing is removed before every store is verified.
    for (name, points) in &before {
        for (pid, p) in points {
            if tenant_of(p) == Some(ws(SOURCE)) {
                assert!(after[name].contains_key(pid), "{name}/{pid} was removed");
            }
        }
    }
}

/// A run killed during a phase's very first write — applied by the server, its reply
/// never received, nothing in the state file but the phase's start — resumes: the points
/// it wrote are recognised as its own (with Keep, the re-tagged points are the tenant's
/// only copy), and the tenant ends exact. Before the phase recorded its start durably,
/// every re-run refused them ("refusing to mix").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_in_its_first_write_resumes_instead_of_refusing_its_own_points() {
    for (ids, rekey) in [("lightrag", true), ("keep", false)] {
        let (endpoint, server, _) = loaded_test_server().await;
        let before = snapshot(&endpoint).await;
        let state = state_dir(&format!("q-first-write-{ids}"));
        server.hang_after_writes(1).expect("hang file");
        let log = state.join("first.log");
        std::fs::create_dir_all(&state).expect("dir");
        let out = std::fs::File::create(&log).expect("log");
        let mut child = migrate(&endpoint.url, &state, &["--point-ids", ids, "--batch-size", "10"])
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn");
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !server.hung() {
            assert!(
                child.try_wait().expect("wait").is_none(),
                "{ids}: the run ended before its first write: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            assert!(
                std::time::Instant::now() < deadline,
                "{ids}: no write reached the server"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        let file: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(state.join(format!("{SOURCE}--{TARGET}.json"))).expect("state file"),
        )
        .expect("JSON");
        let cp = &file["phases"]["qdrant"]["checkpoint"];
        assert_eq!(
            (cp["stage"].as_str(), cp["batch"].as_u64()),
            (Some("Copy"), Some(0)),
            "{ids}: {cp}"
        );
        assert_ne!(
            snapshot(&endpoint).await,
            before,
            "{ids}: the first write was not applied"
        );

        let out = migrate(&endpoint.url, &state, &["--point-ids", ids])
            .output()
            .expect("run");
        assert!(out.status.success(), "{ids}: {}", text(&out));
        assert_same(&snapshot(&endpoint).await, &expected(&before, true, rekey));
    }
}

/// The stage a run's state file shows for the Qdrant phase ("" before it has one).
fn qdrant_stage(state: &Path) -> String {
    common::stage_of(state, (SOURCE, TARGET), "qdrant")
}

/// A client keeps writing the source tenant's points — updates, creates and deletes
/// of `lightrag_vdb_relationships` at a steady rate, each logged once Qdrant
/// acknowledged it — while a Move runs without quiesce. With that log as the oracle:
/// every point's last value is at its target id, or the run failed and it is still
/// at the source; a re-run after the writer stopped then moves it. A delete is at
/// neither side (one acknowledged after verification may leave the copy: counted;
/// a run that stopped before its passes settled may leave it too, its re-run not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_writing_points_during_a_move_loses_no_acknowledged_write() {
    for from in ["Copy", "RemoveSource"] {
        writer_round(from).await;
    }
}

/// One round of [`a_client_writing_points_during_a_move_loses_no_acknowledged_write`]:
/// the writer starts once the run is in stage `from`.
async fn writer_round(from: &str) {
    let (server, _) = loaded().await;
    let client = server.client();
    let rel = qdrant_fixture::RELATIONSHIPS;
    let existing: Vec<String> = qdrant_fixture::snapshot(&client, rel)
        .await
        .expect("snapshot")
        .values()
        .filter(|p| tenant_of(p) == Some(ws(SOURCE)))
        .filter_map(|p| p.payload["id"].split('"').nth(1).map(str::to_owned))
        .collect();
    assert!(existing.len() > 100, "{} source points", existing.len());
    let proxy = DelayProxy::start(server.address(), Duration::from_millis(1)).expect("proxy");
    let state = state_dir(&format!("q-writer-{from}"));
    let cmd = migrate(&proxied(&proxy), &state, &["--batch-size", "10"]);
    let child =
        tokio::task::block_in_place(|| common::spawn_until_stage(cmd, &state, (SOURCE, TARGET), "qdrant", from));
    // (payload id, content or None for a delete, stage seen right after the ack)
    let mut log: Vec<(String, Option<String>, String)> = Vec::new();
    let mut created = Vec::new();
    for i in 0..400u64 {
        let (id, value) = match i % 10 {
            0..=5 => (
                existing[(i as usize * 7) % existing.len()].clone(),
                Some(format!("v{i}")),
            ),
            6 | 7 => {
                let id = format!("rel-written-{i}");
                created.push(id.clone());
                (id, Some(format!("v{i}")))
            }
            8 => (existing[(i as usize * 13 + 1) % existing.len()].clone(), None),
            _ => match created.get(i as usize % created.len().max(1)) {
                Some(id) => (id.clone(), None),
                None => continue,
            },
        };
        match &value {
            Some(v) => {
                client
                    .upsert_points(
                        qdrant_client::qdrant::UpsertPointsBuilder::new(rel, vec![point_of(SOURCE, &id, v)]).wait(true),
                    )
                    .await
                    .expect("upsert");
            }
            None => {
                client
                    .delete_points(
                        qdrant_client::qdrant::DeletePointsBuilder::new(rel)
                            .points(vec![qdrant_client::qdrant::PointId::from(lightrag_id(SOURCE, &id))])
                            .wait(true),
                    )
                    .await
                    .expect("delete");
            }
        }
        log.push((id, value, qdrant_stage(&state)));
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let out = tokio::task::block_in_place(|| child.wait_with_output().expect("wait"));
    let lost = |after: &BTreeMap<String, StoredPoint>, succeeded: bool| -> (Vec<String>, usize) {
        let mut last: BTreeMap<&str, (&Option<String>, &str)> = BTreeMap::new();
        for (id, v, seen) in &log {
            last.insert(id, (v, seen));
        }
        let (mut lost, mut late_deletes) = (Vec::new(), 0);
        for (id, (value, seen)) in last {
            let content = |tenant: &str| {
                after
                    .get(&lightrag_id(tenant, id))
                    .map(|p| p.payload["content"].clone())
            };
            let (src, tgt) = (content(SOURCE), content(TARGET));
            let ok = match (value, succeeded) {
                // Written once the last removal pass had ended: at the source, like any
                // later write to the old tenant.
                (Some(v), true) => {
                    (tgt == Some(ws(v)) && src.is_none())
                        || (matches!(seen, "VerifyRemoved" | "Done") && src == Some(ws(v)))
                }
                (Some(v), false) => src == Some(ws(v)) || (src.is_none() && tgt == Some(ws(v))),
                (None, _) if src.is_none() && tgt.is_none() => true,
                // A run that stopped unsettled removed no copy of a deleted source
                // point (that happens once a pass settles): the re-run, judged below
                // as a success, must remove it.
                (None, false) if src.is_none() => true,
                (None, _) if src.is_none() && seen != "Copy" => {
                    late_deletes += 1;
                    true
                }
                (None, _) => false,
            };
            if !ok {
                lost.push(format!(
                    "{id}: wrote {value:?} ({seen}), source {src:?}, target {tgt:?}"
                ));
            }
        }
        (lost, late_deletes)
    };
    let succeeded = out.status.success();
    let after = qdrant_fixture::snapshot(&client, rel).await.expect("snapshot");
    let (missing, late) = lost(&after, succeeded);
    assert!(
        missing.is_empty(),
        "{} writes lost: {missing:#?}\n{}",
        missing.len(),
        text(&out)
    );
    if !succeeded {
        assert!(text(&out).contains("still being written"), "{}", text(&out));
        let again = migrate(&proxied(&proxy), &state, &[]).output().expect("run");
        assert!(again.status.success(), "{}", text(&again));
        let after = qdrant_fixture::snapshot(&client, rel).await.expect("snapshot");
        let (missing, _) = lost(&after, true);
        assert!(missing.is_empty(), "re-run: {missing:#?}");
    }
    let stages: std::collections::BTreeSet<&str> = log.iter().map(|(_, _, s)| s.as_str()).collect();
    eprintln!(
        "from {from}: {} writes during {stages:?}; first run {}; {late} deletes after verification",
        log.len(),
        if succeeded {
            "succeeded"
        } else {
            "stopped: source still written"
        }
    );
}
