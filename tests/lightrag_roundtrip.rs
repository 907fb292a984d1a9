//! LightRAG as the judge: a tenant written through LightRAG's own storage classes
//! (`lightrag-hku`: RedisKVStorage, RedisDocStatusStorage, QdrantVectorDBStorage,
//! MemgraphStorage; `tools/lightrag/judge.py`) is migrated by `tenant-migrator migrate`
//! and read back through the same classes under the target workspace: every KV record
//! by id, doc statuses by status and their index keys, vector points by id and by
//! similarity query, graph nodes, edges and degrees. After a Move the source workspace
//! reads empty; after a Copy it reads whole; look-alike tenants read whole either way.

mod common;

use std::process::{Command, Output};

use common::{bin, state_dir, text};
use tenant_migrator_testkit::{BoltServer, QdrantServer, RedisServer, qdrant_server};

const KEY: &str = "judge-k3y";
const PASSWORD: &str = "judge-s3cret";
const SOURCE: &str = "siraya";
/// Look-alikes: ids that contain the source's, which a substring match would take.
const LOOKALIKES: [&str; 2] = ["siraya_old", "old_siraya"];

struct Stores {
    redis: RedisServer,
    qdrant: QdrantServer,
    graph: BoltServer,
}

impl Stores {
    fn start() -> Self {
        Stores {
            redis: RedisServer::start().expect("redis-server"),
            qdrant: QdrantServer::start(Some(KEY)).expect("Qdrant test server (run tools/setup.sh)"),
            graph: BoltServer::start(PASSWORD).expect("Bolt test server (run tools/setup.sh)"),
        }
    }

    /// `judge.py write|check --workspace W …` against these stores.
    fn judge(&self, args: &[&str]) -> Output {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/lightrag/judge.py");
        Command::new(qdrant_server::python())
            .arg(script)
            .args(args)
            .args(["--redis-url", &format!("redis://127.0.0.1:{}/0", self.redis.port())])
            .args(["--qdrant-grpc", &format!("127.0.0.1:{}", self.qdrant.port())])
            .args(["--qdrant-api-key", KEY])
            .args(["--bolt-uri", &self.graph.uri()])
            .args(["--bolt-user", tenant_migrator_testkit::bolt_server::USER])
            .args(["--bolt-password", PASSWORD, "--bolt-database", "memgraph"])
            .output()
            .expect("run the LightRAG judge (run tools/setup.sh)")
    }

    fn write(&self, workspace: &str) {
        let out = self.judge(&["write", "--workspace", workspace]);
        assert!(
            out.status.success(),
            "LightRAG could not write {workspace}: {}",
            text(&out)
        );
    }

    /// LightRAG reads `workspace` as `expect` (`full` or `empty`).
    fn check(&self, workspace: &str, expect: &str) {
        let out = self.judge(&["check", "--workspace", workspace, "--expect", expect]);
        assert!(
            out.status.success(),
            "LightRAG reads {workspace} as not {expect}: {}",
            text(&out)
        );
    }

    fn migrate(&self, target: &str, mode: &str) -> Output {
        Command::new(bin())
            .args(["migrate", SOURCE, target, "--skip-config", "--mode", mode])
            .args([
                "--redis-port",
                &self.redis.port().to_string(),
                "--redis-host",
                "127.0.0.1",
            ])
            .args(["--qdrant-url", &self.qdrant.url()])
            .args(["--memgraph-uri", &self.graph.uri()])
            .arg("--state-dir")
            .arg(state_dir(&format!("lightrag-{mode}")))
            .env("QDRANT_API_KEY", KEY)
            .env("MEMGRAPH_USER", tenant_migrator_testkit::bolt_server::USER)
            .env("MEMGRAPH_PASSWORD", PASSWORD)
            .output()
            .expect("run tenant-migrator")
    }
}

fn loaded() -> Stores {
    let stores = Stores::start();
    stores.write(SOURCE);
    for l in LOOKALIKES {
        stores.write(l);
    }
    // The judge itself tells a tenant from its absence.
    stores.check(SOURCE, "full");
    stores.check("tenant_76920508", "empty");
    stores
}

#[test]
fn lightrag_reads_a_moved_tenant_under_its_new_id_and_nothing_under_the_old() {
    let stores = loaded();
    let out = stores.migrate("tenant_76920508", "move");
    assert!(out.status.success(), "{}", text(&out));
    stores.check("tenant_76920508", "full");
    stores.check(SOURCE, "empty");
    for l in LOOKALIKES {
        stores.check(l, "full");
    }
}

#[test]
fn lightrag_reads_a_copied_tenant_under_both_ids() {
    let stores = loaded();
    let out = stores.migrate("siraya_copy", "copy");
    assert!(out.status.success(), "{}", text(&out));
    stores.check("siraya_copy", "full");
    stores.check(SOURCE, "full");
    for l in LOOKALIKES {
        stores.check(l, "full");
    }
}
