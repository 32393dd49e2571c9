//! The device binary in private mode (SPEC §7): `learn --private` on a new state only, the
//! mode kept without the flag, `serve`'s `consolidate` and `stats`, `predict --state`.
#![cfg(unix)]

use serde_json::json;

mod common;
use common::{bin, image_arg as img, json_lines, Server};

#[test]
fn a_private_learner_learns_consolidates_and_predicts_and_keeps_its_mode() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("learner");
    let learn = |args: &[&str], label: &str| {
        bin()
            .args(["learn", "--cpu", "--json", "--lr", "2e-3", "--state"])
            .arg(&state)
            .args(args)
            .args(["--label", label, &img("red_square.png")])
            .output()
            .unwrap()
    };
    let o = learn(&["--private"], "red");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line = &json_lines(&o.stdout)[0];
    assert_eq!(
        (line["record_bytes"].as_u64(), line["batch"].as_u64()),
        (Some(0), Some(1))
    );
    // Later runs keep the mode without the flag.
    let o = learn(&[], "red");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!state.join("diet.json").exists());

    let mut s = Server::start(&state, &["--lr", "2e-3"]);
    let r = s.ask(&json!({"learn": img("green_circle.png"), "label": "green"}).to_string());
    assert_eq!(r["ok"], true, "{r}");
    let stats = s.ask(r#"{"stats": true}"#);
    assert_eq!(stats["mode"], "private", "{stats}");
    assert_eq!(stats["learned"], 3);
    let counts: Vec<u64> = stats["private"]["statistics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["samples"].as_u64().unwrap())
        .collect();
    // Red's two samples, each learned by a process that then ended, were never written:
    // statistics of fewer than 8 samples live in memory only.
    assert_eq!(counts, [1], "{stats}");
    assert!(stats["labels"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["stored"] == 0));
    // The restyled replay (the default) trains no generator; the period still ends.
    let r = s.ask(r#"{"consolidate": true, "id": 3}"#);
    assert_eq!(r["id"], 3);
    let c = &r["consolidation"];
    assert_eq!(
        (
            c["index"].as_u64(),
            c["labels"].as_u64(),
            c["generator_steps"].as_u64()
        ),
        (Some(0), Some(2), Some(0)),
        "{r}"
    );
    assert!(c["peak_bytes"].as_u64().unwrap() > 0);
    assert_eq!(s.ask(r#"{"stats": true}"#)["private"]["consolidations"], 1);
    let (ok, err) = s.finish();
    assert!(ok, "{err}");
    assert!(state.join("snapshot.safetensors").is_file());

    let o = bin()
        .args(["predict", "--json", "--state"])
        .arg(&state)
        .args(["--labels", "red,green", &img("red_square.png")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json_lines(&o.stdout).len(), 1);

    // A normal learner: --private is refused with the reason, and so is consolidate.
    let normal = dir.path().join("normal");
    let plain = |extra: &[&str]| {
        bin()
            .args(["learn", "--cpu", "--state"])
            .arg(&normal)
            .args(extra)
            .args(["--label", "red", &img("red_square.png")])
            .output()
            .unwrap()
    };
    assert!(plain(&[]).status.success());
    let o = plain(&["--private"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("normal learner") && err.contains("private"),
        "{err}"
    );
    assert!(!normal.join("stats.bin").exists());
    let mut s = Server::start(&normal, &[]);
    let r = s.ask(r#"{"consolidate": true}"#);
    assert!(r["error"].as_str().unwrap().contains("private"), "{r}");
    assert_eq!(s.ask(r#"{"stats": true}"#)["mode"], "normal");
    let (ok, err) = s.finish();
    assert!(ok, "{err}");
}
