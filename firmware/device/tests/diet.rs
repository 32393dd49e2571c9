//! The device binary on a diet (SPEC §8): `learn` without `--label`, `serve`'s unlabelled
//! samples, `end_time_step` and budget report, settings recorded in the folder.
#![cfg(unix)]

use serde_json::{json, Value};

mod common;
use common::{bin, image_arg as img, json_lines, Server};

#[test]
fn learn_without_a_label_needs_a_diet_and_trains_when_the_time_step_ends() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("learner");
    // Not a diet learner: unlabelled images are refused, nothing created for them.
    let o = bin()
        .args(["learn", "--cpu", "--state"])
        .arg(&state)
        .arg(img("red_square.png"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("--budget"), "{err}");

    // A diet of 5 steps, S* = 3, time steps of 3 images.
    let run = |args: &[&str], images: &[&str]| {
        let o = bin()
            .args(["learn", "--cpu", "--json", "--lr", "2e-3", "--state"])
            .arg(&state)
            .args(args)
            .args(images.iter().map(|i| img(i)))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        json_lines(&o.stdout)
    };
    let labelled = run(
        &[
            "--budget",
            "5",
            "--s-star",
            "3",
            "--time-step-samples",
            "3",
            "--label",
            "red",
        ],
        &["red_square.png", "red_square.png"],
    );
    assert_eq!(
        labelled.len(),
        3,
        "two samples and the time step ended at exit"
    );
    assert_eq!(
        labelled[0]["batch"], 0,
        "a diet learner trains when the time step ends"
    );
    assert!(labelled[1]["time_step"].is_null());
    let at_exit = &labelled[2]["time_step"];
    assert_eq!(at_exit["labelled"], 2);
    assert_eq!(at_exit["budget"]["used"], 5);
    assert_eq!(at_exit["budget"]["total"], 5);

    // Later runs keep the recorded settings without the flags.
    let unlabelled = run(
        &[],
        &["green_circle.png", "blue_triangle.png", "green_circle.png"],
    );
    assert_eq!(unlabelled[0]["unlabelled"], true);
    assert_eq!(unlabelled[0]["held"], 1);
    let ended = &unlabelled[2]["time_step"];
    assert_eq!(ended["index"], 1, "{unlabelled:?}");
    assert_eq!(ended["unlabelled"], 3);
    let b = &ended["budget"];
    // Below S* = 3: L_r and L_b share it (no labelled sample); beyond it, L_b at 0.1×.
    assert_eq!(
        (b["used"].as_u64(), b["masked"].as_u64()),
        (Some(5), Some(2)),
        "{b}"
    );
    assert_eq!(b["reduced_lr"], 2);
    assert_eq!(
        unlabelled.len(),
        3,
        "nothing held at exit, nothing more to end"
    );

    // The settings and the count are recorded in the folder.
    let diet: Value =
        serde_json::from_slice(&std::fs::read(state.join("diet.json")).unwrap()).unwrap();
    assert_eq!(diet["config"]["budget"], 5);
    assert_eq!(diet["config"]["s_star"], 3);
    assert_eq!(diet["config"]["window"], json!({"samples": 3}));
    assert_eq!(diet["time_steps"], 2);
    // A diet flag without its budget on a fresh folder is refused.
    let o = bin()
        .args([
            "learn", "--cpu", "--s-star", "2", "--label", "red", "--state",
        ])
        .arg(dir.path().join("other"))
        .arg(img("red_square.png"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--budget"));
}

#[test]
fn serve_takes_unlabelled_samples_and_reports_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("learner");
    let mut s = Server::start(
        &state,
        &["--lr", "2e-3", "--budget", "4", "--time-step-samples", "50"],
    );
    let r = s.ask(&json!({"learn": img("red_square.png"), "label": "red"}).to_string());
    assert_eq!(
        (r["ok"].as_bool(), r["batch"].as_u64()),
        (Some(true), Some(0)),
        "{r}"
    );
    for _ in 0..2 {
        let r = s.ask(&json!({"learn": img("green_circle.png")}).to_string());
        assert_eq!(r["unlabelled"], true, "{r}");
    }
    let stats = s.ask(r#"{"stats": true}"#);
    let d = &stats["diet"];
    assert_eq!(
        (d["budget"].as_u64(), d["s_star"].as_u64()),
        (Some(4), Some(4)),
        "{stats}"
    );
    assert_eq!(
        (d["labelled"].as_u64(), d["unlabelled"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(d["arrivals"], 3);
    assert!(d["last"].is_null());
    let r = s.ask(r#"{"end_time_step": true, "id": 7}"#);
    assert_eq!(r["id"], 7);
    let b = &r["time_step"]["budget"];
    assert_eq!(
        (b["used"].as_u64(), b["total"].as_u64()),
        (Some(4), Some(4)),
        "{r}"
    );
    assert!(b["current"].as_u64().unwrap() >= 1 && b["masked"].as_u64().unwrap() >= 1);
    let stats = s.ask(r#"{"stats": true}"#);
    assert_eq!(stats["diet"]["time_steps"], 1);
    assert_eq!(stats["diet"]["unlabelled"], 0, "gone with their time step");
    assert_eq!(stats["diet"]["last"]["budget"]["used"], 4);
    let bad = s.ask(&json!({"learn": img("green_circle.png"), "label": 3}).to_string());
    assert!(bad["error"].as_str().unwrap().contains("label"), "{bad}");
    // At the end of the input the time step in progress is spent.
    s.ask(&json!({"learn": img("blue_triangle.png")}).to_string());
    let (ok, err) = s.finish();
    assert!(ok, "{err}");
    assert!(err.contains("time step 1 ended"), "{err}");

    // A learner without a diet refuses unlabelled samples and time steps.
    let plain = dir.path().join("plain");
    let mut s = Server::start(&plain, &[]);
    let r = s.ask(&json!({"learn": img("green_circle.png")}).to_string());
    assert!(r["error"].as_str().unwrap().contains("diet"), "{r}");
    let r = s.ask(r#"{"end_time_step": true}"#);
    assert!(r["error"].as_str().unwrap().contains("diet"), "{r}");
    assert!(s.ask(r#"{"stats": true}"#)["diet"].is_null());
    let (ok, err) = s.finish();
    assert!(ok, "{err}");
}
