//! The systemd unit passes `systemd-analyze verify` and scores ≤ 2.0 in
//! `systemd-analyze security --offline=true` (via scripts/check-systemd-unit). Where
//! systemd-analyze is not installed the check is skipped with a notice, unless
//! `TWS_REQUIRE_SYSTEMD=1` (set by CI, which installs it): then a missing tool fails.

#[test]
fn systemd_unit_verifies_and_scores_ok() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/check-systemd-unit");
    let o = std::process::Command::new(script).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    if o.status.code() == Some(77) {
        let required = std::env::var("TWS_REQUIRE_SYSTEMD").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "TWS_REQUIRE_SYSTEMD=1 but the check was skipped: {err}"
        );
        eprintln!("skipped: {err}");
        return;
    }
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.contains("verify: ok") && out.contains("security: ok"),
        "{out}"
    );
    eprintln!("{out}");
}

#[test]
fn sysusers_file_declares_the_units_user() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/");
    let unit = std::fs::read_to_string(format!("{dir}tapis-webodm-sync.service")).unwrap();
    let users = std::fs::read_to_string(format!("{dir}tapis-webodm-sync.sysusers")).unwrap();
    let user = unit
        .lines()
        .find_map(|l| l.strip_prefix("User="))
        .expect("User= in the unit");
    assert!(
        users.lines().any(|l| l.starts_with(&format!("u {user} "))),
        "{users}"
    );
}
