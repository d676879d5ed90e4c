//! `sipcraft config check`, run as an operator would.

mod common;

use std::process::Command;

fn check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sipcraft.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(common::BIN)
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

const GOOD: &str = r#"
[server]
domain = "pbx.test"
runtime_dir = "rt"
state_dir = "state"

[[listen]]
transport = "udp"
address = "127.0.0.1:5060"
workers = 2

[[extension]]
number = "1001"
password = "a"

[[extension]]
number = "1002"
password = "b"
"#;

#[test]
fn a_valid_file_passes() {
    let (ok, text) = check(GOOD);
    assert!(ok, "{text}");
    assert!(text.contains("ok"), "{text}");
}

#[test]
fn every_problem_is_named_with_its_key_and_line() {
    let bad = GOOD
        .replace("workers = 2", "workers = 2\ncolour = \"blue\"")
        .replace("127.0.0.1:5060", "127.0.0.1:99999")
        .replace("number = \"1002\"", "number = \"1001\"");
    let (ok, text) = check(&bad);
    assert!(!ok, "a bad file must fail:\n{text}");
    assert!(text.contains("colour"), "unknown key named:\n{text}");
    assert!(
        text.contains("listen[0].address"),
        "bad address named:\n{text}"
    );
    assert!(
        text.contains("extension[1].number") && text.contains("already used"),
        "duplicate named:\n{text}"
    );
    // Lines: the unknown key is on line 11 of the file.
    assert!(text.contains(":11:"), "line of the unknown key:\n{text}");
    assert!(
        text.contains("3 problem"),
        "all three reported together:\n{text}"
    );
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = Command::new(common::BIN)
        .args(["config", "check", "/nonexistent/sipcraft.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/sipcraft.toml"));
}

#[test]
fn the_shipped_example_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/sipcraft.toml");
    let out = Command::new(common::BIN)
        .args(["config", "check", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn run_with_a_bad_file_exits_non_zero_with_the_problems() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sipcraft.toml");
    std::fs::write(&file, GOOD.replace("domain", "domian")).unwrap();
    let out = Command::new(common::BIN)
        .arg("run")
        .arg("-c")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("domian"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
