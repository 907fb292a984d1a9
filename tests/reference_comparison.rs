//! The reference script and tenant-migrator on the same fixture: the reference's
//! `SCAN MATCH *siraya*` migrates look-alike tenants (`siraya2`, `siraya_old`,
//! `xsiraya`) and keys of no tenant; tenant-migrator's exact prefixes do not.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

/// Python with the reference's packages: `$TM_PYTHON`, or the virtualenv `tools/setup.sh` makes.
fn python() -> PathBuf {
    let p = tenant_migrator_testkit::qdrant_server::python();
    assert!(
        p.exists() || std::env::var_os("TM_PYTHON").is_some(),
        "no Python for the reference script at {}: run `bash tools/setup.sh`, or set TM_PYTHON",
        p.display()
    );
    p
}

#[test]
fn the_reference_migrates_lookalike_tenants_and_ours_does_not() {
    let (theirs, _) = loaded_redis(0.02);
    let (ours, _) = loaded_redis(0.02);
    let ours_before = snapshot(&ours);

    let reference = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/reference/migrate_tenant.py");
    let out = Command::new(python())
        .args([
            reference,
            SOURCE,
            TARGET,
            "--skip-config",
            "--skip-qdrant",
            "--skip-memgraph",
        ])
        .args(["--redis-host", "127.0.0.1", "--redis-port", &theirs.port().to_string()])
        .output()
        .expect("run the reference script");
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Migration completed"));
    let theirs_after = snapshot(&theirs);
    // Substring matching renamed other tenants' keys into new, wrong tenants.
    for wrong in [
        "tenant_b2_full_docs:",
        "tenant_b_old_full_docs:",
        "xtenant_b_full_docs:",
        "cache:tenant_b:lookup",
    ] {
        assert!(
            theirs_after.keys().any(|k| k.starts_with(wrong.as_bytes())),
            "expected the reference to create {wrong}…"
        );
    }

    let out = run(migrate_cmd(ours.port(), &state_dir("reference"), &["--mode", "copy"]));
    assert!(out.status.success(), "{}", text(&out));
    let ours_after = snapshot(&ours);
    for wrong in ["tenant_b2_", "tenant_b_old_", "xtenant_b_", "cache:tenant_b:"] {
        assert!(
            !ours_after.keys().any(|k| k.starts_with(wrong.as_bytes())),
            "tenant-migrator touched a look-alike: {wrong}"
        );
    }
    assert_migrated(&ours_before, &ours_after, false);
    assert_eq!(digest_outside(&ours_before), digest_outside(&ours_after));
}
