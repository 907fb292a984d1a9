//! The Memgraph phase through the real binary against a real Cypher engine over
//! Bolt 4.x (Neo4j 4.4 Community, started by the harness with authentication on).
//! One server serves the whole file; each test works on tenants of its own.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::{bin, state_dir, text};
use tenant_migrator_testkit::graph_fixture::{self, expected, load_standard, load_tenant};
use tenant_migrator_testkit::{BoltServer, DelayProxy, fixture};

const PASSWORD: &str = "graph-s3cret";
const SCALE: f64 = 0.02;

/// The graph server of this file: `MEMGRAPH_URI` (with `MEMGRAPH_USER` and
/// `MEMGRAPH_PASSWORD`) when set — a real Memgraph — else a Neo4j 4.4 Bolt server
/// started here.
struct Endpoint {
    uri: String,
    user: String,
    password: String,
    _server: Option<BoltServer>,
}

impl Endpoint {
    fn port(&self) -> u16 {
        self.uri
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or(7687)
    }

    fn host(&self) -> &str {
        let rest = self.uri.split_once("://").map_or(self.uri.as_str(), |(_, r)| r);
        rest.rsplit_once(':').map_or(rest, |(h, _)| h)
    }

    async fn graph(&self) -> neo4rs::Result<neo4rs::Graph> {
        tenant_migrator_testkit::bolt_server::connect(&self.uri, &self.user, &self.password).await
    }
}

fn server() -> &'static Endpoint {
    static SERVER: OnceLock<Endpoint> = OnceLock::new();
    SERVER.get_or_init(|| match std::env::var("MEMGRAPH_URI") {
        Ok(uri) => Endpoint {
            uri,
            user: std::env::var("MEMGRAPH_USER").unwrap_or_default(),
            password: std::env::var("MEMGRAPH_PASSWORD").unwrap_or_default(),
            _server: None,
        },
        Err(_) => {
            let s = BoltServer::start(PASSWORD).expect("Bolt test server (run tools/setup.sh)");
            Endpoint {
                uri: s.uri(),
                user: tenant_migrator_testkit::bolt_server::USER.into(),
                password: PASSWORD.into(),
                _server: Some(s),
            }
        }
    })
}

/// Labels a test looks at: its source, target and the source's look-alikes.
fn labels(source: &str, target: &str) -> Vec<String> {
    let mut v = vec![source.to_owned(), target.to_owned()];
    v.extend(fixture::lookalikes(source));
    v
}

async fn snapshot(source: &str, target: &str) -> (Vec<String>, Vec<String>) {
    let g = server().graph().await.expect("connect");
    let l = labels(source, target);
    let refs: Vec<&str> = l.iter().map(String::as_str).collect();
    graph_fixture::snapshot(&g, &refs).await.expect("snapshot")
}

fn migrate(source: &str, target: &str, port: u16, state: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(bin());
    // Through a delay proxy the host is loopback; otherwise the endpoint's own.
    let host = if port == server().port() {
        server().host()
    } else {
        "127.0.0.1"
    };
    c.args([
        "migrate",
        source,
        target,
        "--skip-config",
        "--skip-redis",
        "--skip-qdrant",
    ])
    .args(["--memgraph-host", host, "--memgraph-port", &port.to_string()])
    .arg("--state-dir")
    .arg(state)
    .args(extra)
    .env("MEMGRAPH_USER", &server().user)
    .env("MEMGRAPH_PASSWORD", &server().password);
    c
}

/// Runs a graph-only TenantMigration manifest of `src` → `tgt` whose `spec` ends with
/// `rest` (YAML lines indented by two, e.g. the memgraph phase), with this file's
/// credentials.
fn migrate_manifest(name: &str, src: &str, tgt: &str, rest: &str) -> std::process::Output {
    let dir = state_dir(name);
    std::fs::create_dir_all(&dir).expect("dir");
    let manifest = dir.join("m.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: tenancy.dev/v1alpha1\nkind: TenantMigration\nmetadata: {{name: m}}\nspec:\n  source: {src}\n  \
             target: {tgt}\n  config: {{enabled: false}}\n  redis: {{enabled: false}}\n  qdrant: {{enabled: false}}\n{rest}"
        ),
    )
    .expect("manifest");
    Command::new(bin())
        .args(["migrate", "-f"])
        .arg(&manifest)
        .arg("--state-dir")
        .arg(&dir)
        .env("MEMGRAPH_USER", &server().user)
        .env("MEMGRAPH_PASSWORD", &server().password)
        .output()
        .expect("run")
}

async fn loaded(source: &str) -> (u64, u64) {
    let g = server().graph().await.expect("connect");
    load_standard(&g, source, SCALE).await.expect("load graph")
}

fn assert_same(got: &(Vec<String>, Vec<String>), want: &(Vec<String>, Vec<String>)) {
    let diff = |a: &Vec<String>, b: &Vec<String>| -> Vec<String> {
        a.iter()
            .filter(|x| b.binary_search(x).is_err())
            .take(5)
            .cloned()
            .collect()
    };
    assert!(
        got == want,
        "graph differs: {} vs {} nodes, {} vs {} relationships; unexpected {:?} {:?}; missing {:?} {:?}",
        got.0.len(),
        want.0.len(),
        got.1.len(),
        want.1.len(),
        diff(&got.0, &want.0),
        diff(&got.1, &want.1),
        diff(&want.0, &got.0),
        diff(&want.1, &got.1)
    );
}

#[tokio::test]
async fn move_relabels_every_node_and_keeps_relationships_and_lookalikes() {
    let (src, tgt) = ("mv_siraya", "mv_target");
    let (nodes, _) = loaded(src).await;
    let before = snapshot(src, tgt).await;
    let out = migrate(src, tgt, server().port(), &state_dir("mg-move"), &[])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{nodes} of {nodes} nodes moved and verified")),
        "{}",
        text(&out)
    );
    assert_same(&snapshot(src, tgt).await, &expected(&before, src, tgt, true));
    assert!(
        !text(&out).contains(&server().password) || server().password.is_empty(),
        "the password leaked"
    );
}

#[tokio::test]
async fn copy_clones_nodes_and_relationships_and_leaves_the_source() {
    let (src, tgt) = ("cp_siraya", "cp_target");
    let (nodes, _) = loaded(src).await;
    let before = snapshot(src, tgt).await;
    let out = migrate(src, tgt, server().port(), &state_dir("mg-copy"), &["--mode", "copy"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{nodes} of {nodes} nodes copied and verified")),
        "{}",
        text(&out)
    );
    assert_same(&snapshot(src, tgt).await, &expected(&before, src, tgt, false));
}

async fn killed_and_resumed(src: &str, tgt: &str, mode: &str, points: &[(&str, u64)]) {
    loaded(src).await;
    let before = snapshot(src, tgt).await;
    let state = state_dir(&format!("mg-kill-{mode}"));
    let upstream = std::net::ToSocketAddrs::to_socket_addrs(&(server().host(), server().port()))
        .ok()
        .and_then(|mut a| a.next())
        .expect("resolve the graph server");
    let proxy = DelayProxy::start(upstream, Duration::from_millis(2)).expect("proxy");
    for (stage, batch) in points {
        let cmd = migrate(src, tgt, proxy.port(), &state, &["--mode", mode, "--batch-size", "10"]);
        let killed =
            tokio::task::block_in_place(|| common::kill_at(cmd, &state, (src, tgt), "memgraph", stage, *batch));
        assert!(killed, "{mode}: finished before {stage} batch {batch}");
    }
    let out = migrate(src, tgt, proxy.port(), &state, &["--mode", mode])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out));
    assert_same(&snapshot(src, tgt).await, &expected(&before, src, tgt, mode == "move"));
    // A second run changes nothing.
    let again = migrate(src, tgt, proxy.port(), &state, &["--mode", mode])
        .output()
        .expect("run");
    assert!(again.status.success(), "{}", text(&again));
    assert_same(&snapshot(src, tgt).await, &expected(&before, src, tgt, mode == "move"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_killed_at_several_points_resumes_and_ends_exact() {
    killed_and_resumed(
        "kmv_siraya",
        "kmv_target",
        "move",
        &[("Copy", 3), ("Copy", 12), ("Verify", 0)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_killed_in_nodes_and_in_relationships_resumes_without_duplicates() {
    // 272 nodes in batches of 10: batches 1-28 clone nodes, later ones relationships.
    killed_and_resumed(
        "kcp_siraya",
        "kcp_target",
        "copy",
        &[("Copy", 4), ("Copy", 33), ("Verify", 0)],
    )
    .await;
}

#[tokio::test]
async fn bad_input_is_refused_without_a_write() {
    let (src, tgt) = ("bad_siraya", "bad_target");
    loaded(src).await;
    // A foreign node already carries the target label.
    let g = server().graph().await.expect("connect");
    load_tenant(&g, "bad_other", 0.0).await.expect("load");
    g.run(neo4rs::query("MATCH (n:bad_other) SET n:bad_target"))
        .await
        .expect("label");
    let before = snapshot(src, tgt).await;
    let closed = tenant_migrator_testkit::free_port().expect("port");
    let dir = state_dir("mg-bad");
    let cases: Vec<(Command, &str)> = vec![
        (
            migrate(src, tgt, closed, &dir, &[]),
            "cannot connect to the graph at bolt://127.0.0.1:",
        ),
        (
            {
                let mut c = migrate(src, "fresh_target", server().port(), &dir, &[]);
                c.env("MEMGRAPH_PASSWORD", "wrong");
                c
            },
            "rejected the credentials",
        ),
        (
            migrate(src, tgt, server().port(), &dir, &[]),
            "target label `bad_target` already holds 50 nodes",
        ),
        (
            migrate(src, "bad`target", server().port(), &dir, &[]),
            "target tenant id: tenant id \"bad`target\" contains '`'",
        ),
        (migrate("bad siraya", tgt, server().port(), &dir, &[]), "contains ' '"),
    ];
    for (mut cmd, want) in cases {
        let out = cmd.output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{want}: {}", text(&out));
        assert!(text(&out).contains(want), "expected {want:?} in {}", text(&out));
        assert!(
            !text(&out).contains(&server().password) || server().password.is_empty(),
            "the password leaked"
        );
    }
    assert_same(&snapshot(src, tgt).await, &before);
}

/// LightRAG <= 1.4.13 also labelled every node with its entity type: another
/// tenant's node of type `person` carries the label `person`, so `MATCH (n:person)`
/// finds it. It is counted and refused before any write, with an example; the
/// tenant's own nodes of that type (labelled only `person`) are not in question.
#[tokio::test]
async fn a_node_of_another_tenant_labelled_by_its_type_is_refused_without_a_write() {
    let (src, tgt, other) = ("person", "person_new", "acme");
    let g = server().graph().await.expect("connect");
    load_tenant(&g, src, 0.0).await.expect("load");
    load_tenant(&g, other, 0.0).await.expect("load");
    g.run(neo4rs::query(
        "MATCH (n:person) WITH n ORDER BY n.entity_id LIMIT 3 SET n.entity_type = 'person'",
    ))
    .await
    .expect("own nodes of type person");
    g.run(neo4rs::query(
        "MATCH (n:acme) WITH n ORDER BY n.entity_id LIMIT 2 SET n.entity_type = 'person', n:person",
    ))
    .await
    .expect("foreign nodes typed person");
    let snap = || async {
        let g = server().graph().await.expect("connect");
        graph_fixture::snapshot(&g, &[src, tgt, other]).await.expect("snapshot")
    };
    let before = snap().await;
    for extra in [&["--dry-run"][..], &[]] {
        let out = migrate(src, tgt, server().port(), &state_dir("mg-typed"), extra)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(
            text(&out).contains(
                "2 nodes under the source label `person` also carry a label that is neither the tenant's nor their \
                 entity_type (e.g. entity_id \"acme entity 0\" with labels [\""
            ),
            "{}",
            text(&out)
        );
        assert!(
            text(&out).contains("preflight failed, nothing was written"),
            "{}",
            text(&out)
        );
    }
    assert_same(&snap().await, &before);
    // Said explicitly, they count as the tenant's.
    let rest = format!(
        "  dryRun: true\n  memgraph: {{uri: 'bolt://{}:{}', foreignLabelledNodes: Include}}\n",
        server().host(),
        server().port()
    );
    let out = migrate_manifest("mg-typed-include", src, tgt, &rest);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("2 source nodes carry another label too"),
        "{}",
        text(&out)
    );
}

fn upstream() -> std::net::SocketAddr {
    std::net::ToSocketAddrs::to_socket_addrs(&(server().host(), server().port()))
        .ok()
        .and_then(|mut a| a.next())
        .expect("resolve the graph server")
}

/// Memgraph refuses index changes inside an explicit transaction, and a database name
/// it does not know; Neo4j accepts the first. A recording proxy shows what a Move and a
/// Copy send: no schema statement between BEGIN and COMMIT, every request naming the
/// `memgraph` database, and only constructs on the documented Memgraph list.
#[tokio::test]
async fn every_statement_follows_memgraphs_rules() {
    use tenant_migrator_testkit::memgraph_rules;
    let recorder = tenant_migrator_testkit::BoltRecorder::start(upstream()).expect("recorder");
    for (src, tgt, mode) in [("rec_siraya", "rec_target", "move"), ("rec_siraya", "rec_copy", "copy")] {
        if mode == "move" {
            loaded(src).await;
        }
        let before = snapshot(src, tgt).await;
        let out = migrate(
            src,
            tgt,
            recorder.port(),
            &state_dir(&format!("mg-rec-{mode}")),
            &["--mode", mode],
        )
        .output()
        .expect("run");
        assert!(out.status.success(), "{}", text(&out));
        assert_same(&snapshot(src, tgt).await, &expected(&before, src, tgt, mode == "move"));
    }
    let connections = recorder.connections();
    let runs: Vec<&String> = connections
        .iter()
        .flatten()
        .filter_map(|r| match r {
            tenant_migrator_testkit::BoltRequest::Run { query, .. } => Some(query),
            _ => None,
        })
        .collect();
    // The check saw the statements that matter: both index changes and the batches.
    assert!(
        runs.iter()
            .any(|q| memgraph_rules::is_schema_statement(q) && q.starts_with("CREATE INDEX"))
    );
    assert!(
        runs.iter()
            .any(|q| memgraph_rules::is_schema_statement(q) && q.starts_with("DROP INDEX"))
    );
    assert!(runs.iter().any(|q| q.contains("SET n:")), "{runs:?}");
    let violations = memgraph_rules::violations(&connections, "memgraph");
    assert!(violations.is_empty(), "{violations:#?}");
    // The README lists every documented construct with its page.
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README");
    for (construct, _) in memgraph_rules::DOCUMENTED {
        let page = memgraph_rules::doc_of(construct).unwrap_or_default();
        assert!(
            readme.contains(&format!("`{construct}`")) && readme.contains(&page),
            "README lacks {construct} ({page})"
        );
    }
}

/// A connection that stops answering in the middle of a relabelling batch does not
/// hold the run: the query's deadline passes, the batch is retried on a new
/// connection, and the Move ends exact.
#[tokio::test]
async fn a_hung_connection_cannot_hold_a_batch() {
    let (src, tgt) = ("hang_siraya", "hang_target");
    loaded(src).await;
    let before = snapshot(src, tgt).await;
    let recorder = tenant_migrator_testkit::BoltRecorder::start(upstream()).expect("recorder");
    recorder.freeze_after(Some(("SET n:", 2)));
    let rest = format!(
        "  memgraph: {{uri: 'bolt://127.0.0.1:{}', batchSize: 50, queryTimeoutSeconds: 2}}\n",
        recorder.port()
    );
    let out = migrate_manifest("mg-hang", src, tgt, &rest);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("relabel batch did not answer within 2 s"),
        "the hang was never hit: {}",
        text(&out)
    );
    assert_same(&snapshot(src, tgt).await, &expected(&before, src, tgt, true));
}

/// A `bolt+s://` URI connects over TLS and verifies the server: against an unknown CA
/// it is refused before any write; trusting the CA through `SSL_CERT_FILE`, the Move
/// runs as over plain Bolt.
#[tokio::test]
async fn a_bolt_s_uri_verifies_the_server_and_migrates_over_tls() {
    let tls = BoltServer::start_tls(PASSWORD).expect("Bolt test server with TLS");
    let ca = tls.ca().expect("a CA");
    let g = tls.graph().await.expect("connect over TLS");
    let (src, tgt) = ("tls_siraya", "tls_target");
    let (nodes, _) = load_standard(&g, src, SCALE).await.expect("load");
    let snap = || async {
        let g = tls.graph().await.expect("connect");
        let l = labels(src, tgt);
        let refs: Vec<&str> = l.iter().map(String::as_str).collect();
        graph_fixture::snapshot(&g, &refs).await.expect("snapshot")
    };
    let before = snap().await;
    let state = state_dir("mg-tls");
    let run = |trusted: bool| {
        let mut c = Command::new(bin());
        c.args(["migrate", src, tgt, "--skip-config", "--skip-redis", "--skip-qdrant"])
            .args(["--memgraph-uri", &format!("bolt+s://127.0.0.1:{}", tls.port())])
            .arg("--state-dir")
            .arg(&state)
            .env("MEMGRAPH_USER", tenant_migrator_testkit::bolt_server::USER)
            .env("MEMGRAPH_PASSWORD", PASSWORD);
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
    assert_same(&snap().await, &before);
    let out = run(true);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{nodes} of {nodes} nodes moved and verified")),
        "{}",
        text(&out)
    );
    assert_same(&snap().await, &expected(&before, src, tgt, true));
}

/// Nodes written after their copy: a Copy killed before verification, then a source
/// node's description changes — the resumed run's comparison finds the clone differs
/// and clones it again; a Move killed likewise, then a client creates a node under the
/// source label — it is moved too, and one whose entity_id the target already holds
/// is refused by name rather than duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_written_after_their_copy_are_copied_again() {
    let g = server().graph().await.expect("connect");
    let props = |label: &str, id: &str| {
        let (g, q) = (
            g.clone(),
            format!("MATCH (n:`{label}` {{entity_id: $id}}) RETURN n.description AS d"),
        );
        let id = id.to_owned();
        async move {
            let mut rows = g.execute(neo4rs::query(&q).param("id", id)).await.expect("query");
            let mut out = None;
            while let Some(row) = rows.next().await.expect("row") {
                out = row.get::<String>("d").ok();
            }
            out
        }
    };
    // Copy.
    let (src, tgt) = ("cu_siraya", "cu_copy");
    loaded(src).await;
    let state = state_dir("mg-catchup-copy");
    let cmd = migrate(
        src,
        tgt,
        server().port(),
        &state,
        &["--mode", "copy", "--batch-size", "10"],
    );
    assert!(tokio::task::block_in_place(|| common::kill_at(
        cmd,
        &state,
        (src, tgt),
        "memgraph",
        "Verify",
        1
    )));
    let changed = format!("{src} entity 7");
    g.run(
        neo4rs::query("MATCH (n:`cu_siraya` {entity_id: $id}) SET n.description = 'changed after copy'")
            .param("id", changed.as_str()),
    )
    .await
    .expect("update");
    let out = migrate(src, tgt, server().port(), &state, &["--mode", "copy"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        props(tgt, &changed).await.as_deref(),
        Some("changed after copy"),
        "{}",
        text(&out)
    );
    // Move.
    let (src, tgt) = ("cu_move", "cu_moved");
    loaded(src).await;
    let state = state_dir("mg-catchup-move");
    let cmd = migrate(src, tgt, server().port(), &state, &["--batch-size", "10"]);
    assert!(tokio::task::block_in_place(|| common::kill_at(
        cmd,
        &state,
        (src, tgt),
        "memgraph",
        "Verify",
        0
    )));
    g.run(neo4rs::query(
        "CREATE (:`cu_move` {entity_id: 'written later', description: 'new'})",
    ))
    .await
    .expect("create");
    // Twins: entities moved already, written again under the old label by a client that
    // upserts the way LightRAG does (MERGE by entity_id, SET +=, edges merged
    // undirected): one with a new edge to the new node, one updating an edge it has.
    let twin = format!("{src} entity 3");
    let (edged, neighbour) = (format!("{src} entity 5"), format!("{src} entity 6"));
    let weight = |a: &str, b: &str| {
        let (g, a, b) = (g.clone(), a.to_owned(), b.to_owned());
        async move {
            let q = "MATCH (a:`cu_moved` {entity_id: $a})-[r:DIRECTED]-(b:`cu_moved` {entity_id: $b}) \
                     RETURN r.weight AS w";
            let mut rows = g
                .execute(neo4rs::query(q).param("a", a).param("b", b))
                .await
                .expect("query");
            let mut out = Vec::new();
            while let Some(row) = rows.next().await.expect("row") {
                out.push(row.get::<f64>("w").unwrap_or(-1.0));
            }
            out
        }
    };
    assert_eq!(
        weight(&edged, &neighbour).await.len(),
        1,
        "the fixture joins entities 5 and 6"
    );
    for cypher in [
        "MERGE (n:`cu_move` {entity_id: $id}) SET n += {description: 'again'}",
        "MERGE (a:`cu_move` {entity_id: $id}) MERGE (b:`cu_move` {entity_id: 'written later'}) \
         MERGE (a)-[r:DIRECTED]-(b) SET r += {weight: 7.0}",
    ] {
        g.run(neo4rs::query(cypher).param("id", twin.as_str()))
            .await
            .expect("twin");
    }
    g.run(
        neo4rs::query(
            "MERGE (a:`cu_move` {entity_id: $a}) MERGE (b:`cu_move` {entity_id: $b}) \
             MERGE (a)-[r:DIRECTED]-(b) SET r += {weight: 9.5}",
        )
        .param("a", edged.as_str())
        .param("b", neighbour.as_str()),
    )
    .await
    .expect("twins with an edge");
    let out = migrate(src, tgt, server().port(), &state, &[]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(props(tgt, "written later").await.as_deref(), Some("new"));
    assert_eq!(props(src, "written later").await, None);
    // Merged, not doubled: one node per entity, the latest properties, the edge updated.
    assert_eq!(props(tgt, &twin).await.as_deref(), Some("again"));
    let (nodes, _) = graph_fixture::snapshot(&g, &[src]).await.expect("snapshot");
    assert!(nodes.is_empty(), "source nodes left: {nodes:?}");
    let count = |id: String| {
        let g = g.clone();
        async move {
            let q = "MATCH (n:`cu_moved` {entity_id: $id}) RETURN count(n) AS c";
            let mut rows = g.execute(neo4rs::query(q).param("id", id)).await.expect("query");
            rows.next()
                .await
                .expect("row")
                .map_or(0, |r| r.get::<i64>("c").unwrap_or(0))
        }
    };
    for id in [&twin, &edged, &neighbour] {
        assert_eq!(count(id.clone()).await, 1, "{id}");
    }
    assert_eq!(weight(&twin, "written later").await, vec![7.0]);
    assert_eq!(weight(&edged, &neighbour).await, vec![9.5]);
}

/// A Move killed during its very first relabelling batch — committed by the server, the
/// client never told, nothing in the state file but the phase's start — resumes: the
/// nodes under the target label are recognised as this run's own (a Move relabels in
/// place: they are the tenant's only copy), and the graph ends exact. Before the phase
/// recorded its start durably, every re-run refused them as another tenant's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_killed_in_its_first_batch_resumes_instead_of_refusing_its_own_nodes() {
    let (src, tgt) = ("first_siraya", "first_target");
    loaded(src).await;
    let before = snapshot(src, tgt).await;
    let recorder = tenant_migrator_testkit::BoltRecorder::start(upstream()).expect("recorder");
    recorder.freeze_at_commit_after("SET n:");
    let state = state_dir("mg-first-batch");
    std::fs::create_dir_all(&state).expect("dir");
    let mut first = migrate(src, tgt, recorder.port(), &state, &["--batch-size", "20"]);
    let log = state.join("first.log");
    let out = std::fs::File::create(&log).expect("log");
    let mut child = first
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("spawn");
    // The first batch's COMMIT reached the server, its answer withheld: wait until the
    // server shows it, then kill the run that never heard of it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let moved = snapshot(src, tgt)
            .await
            .0
            .iter()
            .filter(|n| n.starts_with(&format!("({tgt} ")))
            .count();
        if recorder.froze() && moved > 0 {
            break;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the run ended before its first batch hung: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(std::time::Instant::now() < deadline, "the first batch never committed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join(format!("{src}--{tgt}.json"))).expect("state file"))
            .expect("JSON");
    let cp = &file["phases"]["memgraph"]["checkpoint"];
    assert_eq!(
        (cp["stage"].as_str(), cp["batch"].as_u64()),
        (Some("Copy"), Some(0)),
        "{cp}"
    );

    // Through the same proxy (the state file records the URL); its freeze is spent.
    let out = migrate(src, tgt, recorder.port(), &state, &[]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out));
    assert_same(&snapshot(src, tgt).await, &expected(&before, src, tgt, true));
}

/// Verification compares relationships by content, not only by count: a Copy killed
/// once its copy stage is done, whose target then has one relationship's properties
/// changed and another relationship deleted and re-created bare (same count), is
/// repaired from the source by the resumed run's comparison, and ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_relationship_changed_behind_the_runs_back_is_copied_again() {
    let (src, tgt) = ("rel_siraya", "rel_target");
    loaded(src).await;
    let before = snapshot(src, tgt).await;
    let state = state_dir("mg-rel-changed");
    let cmd = migrate(
        src,
        tgt,
        server().port(),
        &state,
        &["--mode", "copy", "--batch-size", "10"],
    );
    assert!(
        tokio::task::block_in_place(|| common::kill_at(cmd, &state, (src, tgt), "memgraph", "Verify", 0)),
        "finished before its verification"
    );
    let g = server().graph().await.expect("connect");
    let changed = format!(
        "MATCH (:{tgt} {{entity_id: '{src} entity 3'}})-[r:DIRECTED]->(:{tgt}) SET r.weight = 42.0, r.description = 'edited' \
         RETURN count(r) AS c"
    );
    let mut rows = g.execute(neo4rs::query(&changed)).await.expect("edit");
    let c: i64 = rows.next().await.expect("row").expect("row").get("c").expect("c");
    assert!(c > 0, "no relationship to edit");
    let bare = format!(
        "MATCH (a:{tgt} {{entity_id: '{src} entity 5'}})-[r:DIRECTED]->(b:{tgt}) WITH a, b, r LIMIT 1 \
         DELETE r CREATE (a)-[:DIRECTED]->(b)"
    );
    g.run(neo4rs::query(&bare)).await.expect("replace");
    assert_ne!(
        snapshot(src, tgt).await,
        expected(&before, src, tgt, false),
        "the edits took"
    );

    let out = migrate(src, tgt, server().port(), &state, &["--mode", "copy"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out));
    assert_same(&snapshot(src, tgt).await, &expected(&before, src, tgt, false));
}

/// The stage a run's state file shows for the Memgraph phase ("" before it has one).
fn memgraph_stage(state: &Path, src: &str, tgt: &str) -> String {
    common::stage_of(state, (src, tgt), "memgraph")
}

/// Every node of `labels` as (label, entity_id) → descriptions (more than one: a duplicate).
async fn descriptions(g: &neo4rs::Graph, labels: &[&str]) -> std::collections::BTreeMap<(String, String), Vec<String>> {
    let mut out: std::collections::BTreeMap<(String, String), Vec<String>> = Default::default();
    for l in labels {
        let mut rows = g
            .execute(neo4rs::query(&format!(
                "MATCH (n:`{l}`) RETURN n.entity_id AS id, coalesce(n.description, '') AS d"
            )))
            .await
            .expect("query");
        while let Some(row) = rows.next().await.expect("row") {
            out.entry(((*l).to_owned(), row.get("id").expect("id")))
                .or_default()
                .push(row.get("d").expect("description"));
        }
    }
    out
}

/// A client keeps upserting, creating and deleting the source tenant's entities the way
/// LightRAG's Memgraph storage does (`MERGE (n:`ws` {entity_id}) SET n += …`, `MATCH …
/// DETACH DELETE n`) while a Move runs without quiesce, logging each acknowledged write.
/// With that log as the oracle: a successful run leaves every entity's last value under
/// the target label, once (an upsert after its entity moved made a twin under the source
/// label: merged, not duplicated), and nothing under the source; a run that stopped has
/// each last value under one of the two labels, and its re-run, after the client stopped,
/// moves it. Writes acknowledged once the run was past its last comparison are only
/// required to exist; a delete of an entity that had already moved cannot reach its
/// target node (counted and printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_writing_entities_during_a_move_loses_no_acknowledged_write() {
    let (src, tgt) = ("writer_siraya", "writer_target");
    loaded(src).await;
    let g = server().graph().await.expect("connect");
    let existing: Vec<String> = descriptions(&g, &[src]).await.into_keys().map(|(_, id)| id).collect();
    assert!(existing.len() > 100, "{} source entities", existing.len());
    let upstream = std::net::ToSocketAddrs::to_socket_addrs(&(server().host(), server().port()))
        .ok()
        .and_then(|mut a| a.next())
        .expect("resolve the graph server");
    let proxy = DelayProxy::start(upstream, Duration::from_millis(1)).expect("proxy");
    let state = state_dir("mg-writer");
    let cmd = migrate(src, tgt, proxy.port(), &state, &["--batch-size", "10"]);
    let child = tokio::task::block_in_place(|| common::spawn_until_stage(cmd, &state, (src, tgt), "memgraph", "Copy"));
    // (entity_id, description or None for a delete, stage seen right after the ack)
    let mut log: Vec<(String, Option<String>, String)> = Vec::new();
    let mut created = Vec::new();
    for i in 0..300usize {
        let (id, value) = match i % 10 {
            0..=5 => (existing[(i * 7) % existing.len()].clone(), Some(format!("v{i}"))),
            6 | 7 => {
                let id = format!("{src} written {i}");
                created.push(id.clone());
                (id, Some(format!("v{i}")))
            }
            8 => (existing[(i * 13 + 1) % existing.len()].clone(), None),
            _ => (created[i % created.len()].clone(), None),
        };
        let q = match &value {
            Some(v) => neo4rs::query(&format!(
                "MERGE (n:`{src}` {{entity_id: $id}}) SET n += {{description: $d, entity_type: 'written'}}"
            ))
            .param("id", id.clone())
            .param("d", v.clone()),
            None => {
                neo4rs::query(&format!("MATCH (n:`{src}` {{entity_id: $id}}) DETACH DELETE n")).param("id", id.clone())
            }
        };
        g.run(q).await.expect("client write");
        log.push((id, value, memgraph_stage(&state, src, tgt)));
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let out = tokio::task::block_in_place(|| child.wait_with_output().expect("wait"));
    let succeeded = out.status.success();
    // Past its last comparison: a write then is the client's after the move.
    let after_run = |seen: &str| matches!(seen, "RemoveSource" | "VerifyRemoved" | "Done");
    assert!(
        log.iter().any(|(_, _, seen)| !after_run(seen)),
        "no write landed while the run was moving nodes: {}",
        text(&out)
    );
    let lost = |now: &std::collections::BTreeMap<(String, String), Vec<String>>, succeeded: bool| {
        let mut last: std::collections::BTreeMap<&str, (&Option<String>, &str)> = Default::default();
        for (id, v, seen) in &log {
            last.insert(id, (v, seen));
        }
        let (mut lost, mut late_deletes) = (Vec::new(), 0);
        for (id, (value, seen)) in last {
            let at = |l: &str| now.get(&(l.to_owned(), id.to_owned())).cloned().unwrap_or_default();
            let (s, t) = (at(src), at(tgt));
            let one = |v: &str, side: &Vec<String>| side.len() == 1 && side[0] == v;
            let ok = match value {
                Some(v) if succeeded && !after_run(seen) => one(v, &t) && s.is_empty(),
                Some(v) => (one(v, &s) && t.len() <= 1) || (s.is_empty() && one(v, &t)),
                None if s.is_empty() && t.is_empty() => true,
                None if s.is_empty() && t.len() == 1 => {
                    late_deletes += 1;
                    true
                }
                None => false,
            };
            if !ok {
                lost.push(format!("{id}: wrote {value:?} ({seen}), source {s:?}, target {t:?}"));
            }
        }
        (lost, late_deletes)
    };
    let now = descriptions(&g, &[src, tgt]).await;
    let (missing, late) = lost(&now, succeeded);
    assert!(
        missing.is_empty(),
        "{} writes lost: {missing:#?}\n{}",
        missing.len(),
        text(&out)
    );
    let duplicates: Vec<_> = now.iter().filter(|(_, d)| d.len() > 1).collect();
    assert!(duplicates.is_empty(), "duplicated entities: {duplicates:?}");
    if !succeeded {
        assert!(text(&out).contains("still being written"), "{}", text(&out));
        let again = migrate(src, tgt, proxy.port(), &state, &[]).output().expect("run");
        assert!(again.status.success(), "{}", text(&again));
        let now = descriptions(&g, &[src, tgt]).await;
        let (missing, _) = lost(&now, true);
        assert!(missing.is_empty(), "re-run: {missing:#?}");
        assert!(
            now.keys().all(|(l, _)| l == tgt),
            "left under the source label after the re-run"
        );
    }
    let stages: std::collections::BTreeSet<&str> = log.iter().map(|(_, _, s)| s.as_str()).collect();
    eprintln!(
        "{} writes during {stages:?}; first run {}; {late} deletes of entities that had moved",
        log.len(),
        if succeeded {
            "succeeded"
        } else {
            "stopped: source still written"
        }
    );
}

/// A Move killed in its removal (its `DROP INDEX` sent, never answered), after which a
/// client writes a new entity and an entity that had moved under the source label: the
/// resumed run starts in RemoveSource, and catches both up there — the new one moved,
/// the twin merged — instead of spending its passes on nodes no stage would move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_resumed_in_its_removal_moves_what_was_written_since() {
    let (src, tgt) = ("rm_siraya", "rm_target");
    loaded(src).await;
    let recorder = tenant_migrator_testkit::BoltRecorder::start(upstream()).expect("recorder");
    recorder.freeze_after(Some(("DROP INDEX", 1)));
    let state = state_dir("mg-resumed-removal");
    std::fs::create_dir_all(&state).expect("dir");
    let log = state.join("first.log");
    let out = std::fs::File::create(&log).expect("log");
    let mut child = migrate(src, tgt, recorder.port(), &state, &["--batch-size", "20"])
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !(recorder.froze() && memgraph_stage(&state, src, tgt) == "RemoveSource") {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the run ended before its removal hung: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(std::time::Instant::now() < deadline, "the removal never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let g = server().graph().await.expect("connect");
    let moved = format!("{src} entity 3");
    for (id, d) in [("written during removal", "new"), (moved.as_str(), "again")] {
        g.run(
            neo4rs::query(&format!(
                "MERGE (n:`{src}` {{entity_id: $id}}) SET n += {{description: $d}}"
            ))
            .param("id", id)
            .param("d", d),
        )
        .await
        .expect("client write");
    }
    // Through the same proxy (the state file records the URL); its freeze is spent.
    let out = migrate(src, tgt, recorder.port(), &state, &[]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out));
    let now = descriptions(&g, &[src, tgt]).await;
    assert!(now.keys().all(|(l, _)| l == tgt), "left under the source label");
    let at = |id: &str| now.get(&(tgt.to_owned(), id.to_owned())).cloned().unwrap_or_default();
    assert_eq!(at("written during removal"), vec!["new".to_owned()]);
    assert_eq!(
        at(&moved),
        vec!["again".to_owned()],
        "the twin is not merged into its entity"
    );
}

/// A tenant whose graph already holds an entity_id twice (two concurrent upserts of
/// one entity can leave that, with no uniqueness constraint) moves: the plan names it,
/// the run ends with nothing under the source label and no more duplicates than it
/// started with — each moved as it is, or merged into the first of them to move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_already_holds_an_entity_twice_moves() {
    let (src, tgt) = ("dup_siraya", "dup_target");
    loaded(src).await;
    let g = server().graph().await.expect("connect");
    let id = format!("{src} entity 1");
    g.run(
        neo4rs::query(&format!("CREATE (:`{src}` {{entity_id: $id, description: 'twice'}})")).param("id", id.as_str()),
    )
    .await
    .expect("duplicate");
    let state = state_dir("mg-dup");
    let out = migrate(src, tgt, server().port(), &state, &[]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("1 entity ids are held by more than one of the tenant's nodes"),
        "{}",
        text(&out)
    );
    let now = descriptions(&g, &[src, tgt]).await;
    assert!(now.keys().all(|(l, _)| l == tgt), "left under the source label");
    let held = now.get(&(tgt.to_owned(), id.clone())).map_or(0, Vec::len);
    assert!((1..=2).contains(&held), "{id} held {held} times");
    assert!(now.iter().filter(|(_, d)| d.len() > 1).count() <= 1, "{now:?}");
}
