//! The device binary on bad input: a clear message, a failing exit code, no crash.
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;

use anytime_testkit::close;

mod common;
use common::{bin, json_lines};

fn image(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/tiny-clip/images")
        .join(name)
}

fn predict(labels: &str, images: &[&OsStr]) -> Output {
    bin()
        .args(["predict", "--model", "tiny-clip", "--labels", labels])
        .args(images)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A BMP header announcing a 20000 × 20000 picture, with no pixels behind it.
fn huge_bmp() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"BM");
    b.extend_from_slice(&70u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&54u32.to_le_bytes());
    b.extend_from_slice(&40u32.to_le_bytes());
    b.extend_from_slice(&20_000i32.to_le_bytes());
    b.extend_from_slice(&20_000i32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    b.extend_from_slice(&[0u8; 24]);
    b.extend_from_slice(&[0u8; 16]);
    b
}

#[test]
fn predicts_ranked_labels_and_json() {
    let car = image("red_square.png");
    let o = predict("red square,green circle,blue triangle", &[car.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    for l in ["red square", "green circle", "blue triangle"] {
        assert!(out.contains(l), "{out}");
    }
    let o = bin()
        .args([
            "predict",
            "--json",
            "--labels",
            "red square,green circle,blue triangle",
        ])
        .arg(&car)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ranked = v["ranked"].as_array().unwrap();
    assert_eq!(ranked.len(), 3);
    let total: f64 = ranked.iter().map(|r| r["p"].as_f64().unwrap()).sum();
    assert!(close(total, 1.0, 1e-4, 0.0));
    let ps: Vec<f64> = ranked.iter().map(|r| r["p"].as_f64().unwrap()).collect();
    assert!(ps.windows(2).all(|w| w[0] >= w[1]), "not ranked: {ps:?}");
}

#[test]
fn bad_images_are_reported_and_the_rest_still_classified() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.png");
    let corrupt = tmp.path().join("corrupt.png");
    let mut png = std::fs::read(image("red_square.png")).unwrap();
    png.truncate(60);
    std::fs::write(&corrupt, png).unwrap();
    let text = tmp.path().join("notes.jpg");
    std::fs::write(&text, "just text, not a picture").unwrap();
    let huge = tmp.path().join("huge.bmp");
    std::fs::write(&huge, huge_bmp()).unwrap();
    let good = image("green_circle.png");

    let o = bin()
        .args(["predict", "--json", "--labels", "red square,green circle"])
        .args([&missing, &corrupt, &text, &huge, &good])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("4 of 5 images"), "{}", stderr(&o));
    let lines = json_lines(&o.stdout);
    assert_eq!(lines.len(), 5);
    let err = |i: usize| lines[i]["error"].as_str().unwrap_or_default().to_string();
    assert!(err(0).contains("cannot read"), "{}", err(0));
    assert!(err(1).contains("cannot decode"), "{}", err(1));
    assert!(err(2).contains("not an image"), "{}", err(2));
    assert!(err(3).contains("too large"), "{}", err(3));
    assert!(lines[4]["ranked"].is_array());
}

#[test]
fn bad_label_sets_are_refused() {
    let car = image("red_square.png");
    let car = car.as_os_str();
    let o = predict("", &[car]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("empty"), "{}", stderr(&o));
    let o = bin()
        .args(["predict", "--model", "tiny-clip"])
        .arg(car)
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("the label set is empty"),
        "{}",
        stderr(&o)
    );
    let long = "x".repeat(10 * 1024);
    let o = predict(&format!("cat,{long}"), &[car]);
    assert!(stderr(&o).contains("too long"), "{}", stderr(&o));
    let o = predict("cat,dog,Cat", &[car]);
    assert!(stderr(&o).contains("more than once"), "{}", stderr(&o));
    let o = bin()
        .args(["predict", "--model", "no-such-model", "--labels", "a,b"])
        .arg(car)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));
}

#[cfg(unix)]
#[test]
fn non_utf8_paths_work() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let odd = tmp.path().join(OsStr::from_bytes(b"caf\xe9-\xff.png"));
    std::fs::copy(image("red_square.png"), &odd).unwrap();
    let o = predict("red square,green circle", &[odd.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("caf\u{FFFD}-\u{FFFD}.png"));
}
