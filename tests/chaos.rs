//! The fault-injection suite (`tenant_migrator_testkit::chaos`, also `testkit chaos`)
//! on a small sample: CLI runs over all four stores SIGKILLed at points drawn from
//! every stage of every store and resumed, and Redis (AOF on), the Qdrant test server
//! and the graph server crashed and restarted mid-phase, and every connection to one
//! of them cut mid-phase. Every trial must end exact
//! by content with nothing outside its tenants touched. `TM_CHAOS_SEED` picks other
//! points; `testkit chaos` runs the full sample and prints the table.

use tenant_migrator_testkit::chaos;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_injected_kill_and_store_restart_ends_exact_and_touches_nothing_else() {
    let seed = std::env::var("TM_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let plan = chaos::Plan {
        seed,
        kill_trials: 4,
        kills_per_trial: 3,
        restart_trials: 3,
        cut_trials: 3,
        scale: 0.02,
        migrator: env!("CARGO_BIN_EXE_tenant-migrator").into(),
        work: std::env::temp_dir().join(format!("tm-test-chaos-{}", std::process::id())),
    };
    let figures = chaos::run(&plan).await.expect("the suite's servers");
    let table = figures.table();
    eprintln!("{table}");
    assert!(figures.failures.is_empty(), "{table}");
    assert_eq!(figures.foreign_touched, 0, "{table}");
    assert_eq!(figures.kills_survived, figures.kills_tried, "{table}");
    assert_eq!(figures.restarts_survived, figures.restarts_tried, "{table}");
    // Not vacuous: most faults landed (a point can lie past a run's end only when an
    // earlier kill landed late).
    assert!(figures.kills_tried >= 8, "too few kills landed: {table}");
    assert_eq!(figures.restarts_tried, 3, "every restart must land: {table}");
    assert_eq!(figures.cuts_survived, figures.cuts_tried, "{table}");
    assert_eq!(figures.cuts_tried, 3, "every cut must land: {table}");
    let _ = std::fs::remove_dir_all(&plan.work);
}
