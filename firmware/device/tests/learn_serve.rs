//! The device binary as a learner: `learn`, `predict --state`, `serve` (stdin and Unix
//! socket), a clean stop on SIGTERM and a consistent state after SIGKILL.
#![cfg(unix)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

const LABELS: [&str; 3] = ["red square", "green circle", "blue triangle"];
const FILES: [&str; 3] = ["red_square.png", "green_circle.png", "blue_triangle.png"];

mod common;
use common::{bin, image, json_lines, Server};

fn img(i: usize) -> String {
    image(FILES[i]).to_str().unwrap().to_string()
}

fn learn(s: &mut Server, i: usize) -> Value {
    let r = s.ask(&json!({"learn": img(i), "label": LABELS[i]}).to_string());
    assert_eq!(r["ok"], true, "{r}");
    r
}

fn stored(stats: &Value, label: &str) -> u64 {
    stats["labels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["label"] == label)
        .map(|l| l["stored"].as_u64().unwrap())
        .unwrap_or(0)
}

#[test]
fn learn_a_folder_then_predict_with_the_learner() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("samples");
    for (label, file) in LABELS.iter().zip(FILES) {
        std::fs::create_dir_all(root.join(label)).unwrap();
        std::fs::copy(image(file), root.join(label).join(file)).unwrap();
    }
    let state = dir.path().join("learner");
    // The tiny random model needs a larger step than its manifest's to move in three
    // passes over three pictures.
    let learn_folder = || {
        bin()
            .args(["learn", "--cpu", "--json", "--lr", "2e-3", "--state"])
            .arg(&state)
            .arg("--folder")
            .arg(&root)
            .output()
            .unwrap()
    };
    let o = learn_folder();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("training on cpu"), "{err}");
    let lines = json_lines(&o.stdout);
    assert_eq!(lines.len(), 3);
    // Folders are taken in name order: blue, green, red.
    let learned: Vec<(&str, u64)> = lines
        .iter()
        .map(|l| (l["label"].as_str().unwrap(), l["learned"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        learned,
        [("blue triangle", 1), ("green circle", 2), ("red square", 3)]
    );
    let label_sets: Vec<u64> = lines
        .iter()
        .map(|l| l["labels"].as_u64().unwrap())
        .collect();
    assert_eq!(label_sets, [1, 2, 3], "the stored labels and the new one");
    for l in &lines {
        assert!(l["loss"].as_f64().unwrap().is_finite(), "{l}");
    }

    // What each picture is called, by `mixing`.
    let named = |mixing: &str| -> Vec<Value> {
        let o = bin()
            .args(["predict", "--cpu", "--json", "--mixing", mixing, "--state"])
            .arg(&state)
            .args(["--labels", &LABELS.join(","), &img(0), &img(1), &img(2)])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        json_lines(&o.stdout)
    };
    let top = |preds: &[Value]| -> Vec<String> {
        preds
            .iter()
            .map(|p| p["ranked"][0]["label"].as_str().unwrap().to_string())
            .collect()
    };
    // The random tiny model names the three pictures alike: at most one right.
    let zero_shot = top(&named("original"));
    let right = |names: &[String]| names.iter().zip(LABELS).filter(|(n, l)| n == l).count();
    assert!(right(&zero_shot) <= 1, "{zero_shot:?}");
    // Two more passes: the learner names every picture right.
    for _ in 0..2 {
        let o = learn_folder();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let preds = named("ocw");
    assert_eq!(top(&preds), LABELS, "{preds:?}");
    for p in &preds {
        let other = p["other"].as_f64().expect("the learner reports P(other)");
        assert!((0.0..=1.0).contains(&other), "{p}");
        assert_eq!(p["ranked"].as_array().unwrap().len(), 3, "{p}");
    }

    // `--among` adds the task's other labels to the step's label set.
    let o = bin()
        .args(["learn", "--cpu", "--json", "--state"])
        .arg(&state)
        .args([
            "--label",
            LABELS[0],
            "--among",
            "cat, green circle",
            &img(0),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(line["labels"], 4, "three stored labels and cat: {line}");

    // A state folder that is not a learner is refused, and nothing is created in it.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = bin()
        .args(["predict", "--state"])
        .arg(&empty)
        .args(["--labels", "a,b", &img(0)])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a learner folder"));
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
}

#[test]
fn serve_answers_every_request_line_and_saves_on_eof() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("learner");
    let mut s = Server::start(&state, &[]);
    for i in 0..3 {
        let r = learn(&mut s, i);
        assert_eq!(r["learned"], (i + 1) as u64, "{r}");
    }
    let r = s.ask(
        &json!({"id": 7, "predict": img(1), "labels": LABELS, "none_threshold": 1.0}).to_string(),
    );
    assert_eq!(r["id"], 7, "{r}");
    assert_eq!(r["ranked"].as_array().unwrap().len(), 3, "{r}");
    assert_ne!(r["answer"], "none", "{r}");
    // "none" is answered exactly when P(other) exceeds the threshold asked for.
    let other = r["other"].as_f64().expect("the learner reports P(other)");
    assert!(other > 0.0 && other < 1.0, "{r}");
    let ask_none = |s: &mut Server, threshold: f64| {
        s.ask(
            &json!({"predict": img(1), "labels": LABELS, "none_threshold": threshold}).to_string(),
        )
    };
    let r = ask_none(&mut s, other * 0.5);
    assert_eq!(
        r["answer"], "none",
        "P(other) {other} above half of itself: {r}"
    );
    let r = ask_none(&mut s, (other + 1.0) / 2.0);
    assert_eq!(r["answer"], r["ranked"][0]["label"], "{r}");
    // Bad requests get an error line each and the loop goes on.
    for bad in [
        "not json",
        "[1, 2]",
        r#"{"learn": "/no/such/image.png", "label": "x"}"#,
        &json!({"learn": img(0), "label": ""}).to_string(),
        &json!({"predict": img(0), "labels": []}).to_string(),
        r#"{"dance": true}"#,
        &json!({"learn": img(0), "label": "x", "among": "y"}).to_string(),
        &json!({"learn": img(0), "label": "x", "among": [""]}).to_string(),
    ] {
        let r = s.ask(bad);
        assert!(r["error"].is_string(), "{bad} -> {r}");
    }
    // The task's other labels join the step's label set, and are not stored.
    let r = s.ask(
        &json!({"learn": img(0), "label": LABELS[0], "among": ["cat", LABELS[1]]}).to_string(),
    );
    assert_eq!(r["labels"], 4, "three stored labels and cat: {r}");
    let st = s.ask(r#"{"stats": true}"#);
    assert_eq!(st["learned"], 4, "{st}");
    assert_eq!(stored(&st, "cat"), 0, "{st}");
    assert_eq!(st["training"], "cpu", "{st}");
    for (i, l) in LABELS.iter().enumerate() {
        assert_eq!(stored(&st, l), 1 + u64::from(i == 0), "{st}");
    }
    assert!(s.finish().0);
    assert!(state.join("tuned.safetensors").is_file());
}

#[test]
fn sigterm_saves_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("learner");
    let mut s = Server::start(&state, &["--checkpoint-every", "100"]);
    learn(&mut s, 0);
    learn(&mut s, 1);
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let (ok, err) = s.wait();
    assert!(ok, "{err}");
    assert!(err.contains("stopped on signal"), "{err}");

    // The tuned weights were saved on the signal: a new server starts from two steps
    // without any warning about lost steps.
    let mut s = Server::start(&state, &[]);
    let st = s.ask(r#"{"stats": true}"#);
    assert_eq!(st["learned"], 2, "{st}");
    let (ok, err) = s.finish();
    assert!(ok, "{err}");
    assert!(!err.contains("were lost"), "{err}");
}

#[test]
fn sigkill_leaves_a_consistent_learner() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("learner");
    let mut s = Server::start(&state, &["--checkpoint-every", "2"]);
    for i in [0, 1, 2, 0, 1] {
        learn(&mut s, i);
    }
    // A sixth request is in flight (or not yet read) when the server is killed.
    writeln!(s.stdin, "{}", json!({"learn": img(2), "label": LABELS[2]})).unwrap();
    s.stdin.flush().unwrap();
    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();

    // The tuned weights on disk are a checkpoint's (every 2 steps: 4, or 6 if the sixth
    // sample got through and was checkpointed), and readable.
    let assets = anytime_runtime::assets::ModelAssets::find("tiny-clip").unwrap();
    let (tuned, _, _) = anytime_runtime::train::load_tuned(
        &state.join("tuned.safetensors"),
        &assets.dims().block(),
    )
    .unwrap();
    let step = tuned.optim.step;
    assert!(step == 4 || step == 6, "checkpoint step {step}");

    // Every acknowledged sample is in the store and counted (the sixth at most once,
    // counted if stored); the learner goes on learning and predicting.
    let mut s = Server::start(&state, &[]);
    let st = s.ask(r#"{"stats": true}"#);
    let learned = st["learned"].as_u64().unwrap();
    assert!(learned == 5 || learned == 6, "{st}");
    assert_eq!(stored(&st, "red square"), 2, "{st}");
    assert_eq!(stored(&st, "green circle"), 2, "{st}");
    assert_eq!(stored(&st, "blue triangle"), learned - 4, "{st}");
    let r = learn(&mut s, 2);
    assert_eq!(r["learned"], learned + 1, "{r}");
    let r = s.ask(&json!({"predict": img(2), "labels": LABELS}).to_string());
    assert!(r["ranked"].is_array(), "{r}");
    let (ok, err) = s.finish();
    assert!(ok, "{err}");
}

#[test]
fn serve_on_a_unix_socket() {
    use std::os::unix::net::UnixStream;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("learner");
    let sock = dir.path().join("edge.sock");
    let mut child = bin()
        .args(["serve", "--cpu", "--state"])
        .arg(&state)
        .arg("--socket")
        .arg(&sock)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut conn = None;
    for _ in 0..600 {
        if let Ok(c) = UnixStream::connect(&sock) {
            conn = Some(c);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut conn = conn.expect("the server never listened");
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut ask = |req: String| {
        writeln!(conn, "{req}").unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        serde_json::from_str::<Value>(&line).unwrap()
    };
    let r = ask(json!({"learn": img(0), "label": "red square", "id": "a"}).to_string());
    assert_eq!(
        (r["ok"].clone(), r["id"].clone()),
        (json!(true), json!("a"))
    );
    let r = ask(json!({"stats": true}).to_string());
    assert_eq!(r["learned"], 1, "{r}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(!sock.exists(), "the socket file is removed on exit");
}
