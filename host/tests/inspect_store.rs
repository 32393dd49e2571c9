//! `anytime-host inspect-store` on stores made with the runtime API: it prints the header,
//! the labels with their counts and the bytes used, verifies every CRC, reports a flipped bit
//! (with a logged warning and a failing exit status), refuses a file that is not a store, and
//! never modifies the file.

use std::path::Path;
use std::process::{Command, Output};

use anytime_runtime::store::{Store, StoreConfig};

fn inspect(path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_anytime-host"))
        .args(["inspect-store", "--records"])
        .arg(path)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running anytime-host")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A store with 3 labels (7 cat, 4 dog, 0 emu records) and a state blob; returns the bytes
/// used and the offset of the first record.
fn make_store(path: &Path) -> (u64, u32) {
    let config = StoreConfig {
        capacity: 64 * 1024,
        max_payload: 512,
        segment_size: Some(4096),
    };
    let mut s = Store::create(path, config).unwrap();
    let cat = s.label_id("cat").unwrap();
    let dog = s.label_id("dog").unwrap();
    s.label_id("emu").unwrap();
    for i in 0..11u32 {
        let l = if i % 3 == 1 { dog } else { cat };
        s.append(l, &i.to_le_bytes().repeat(20)).unwrap();
    }
    s.set_state(b"ocw state").unwrap();
    assert_eq!(s.counts(), vec![7, 4, 0]);
    (s.live_bytes(), s.records()[0].offset)
}

#[test]
fn inspect_store_prints_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.store");
    let (live, _) = make_store(&path);
    let before = std::fs::read(&path).unwrap();

    let out = inspect(&path);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("magic          ANYTSTOR"), "{stdout}");
    assert!(stdout.contains("format version 1"), "{stdout}");
    assert!(stdout.contains(&format!("live {live} bytes")), "{stdout}");
    assert!(stdout.contains("records        11"), "{stdout}");
    assert!(stdout.contains("state blob     9 bytes"), "{stdout}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    for (id, count, name) in [("0", "7", "cat"), ("1", "4", "dog"), ("2", "0", "emu")] {
        assert!(
            rows.iter().any(|r| r[..] == [id, count, name]),
            "label row {id} {count} {name} missing:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("11 live records re-read, 0 fail; at open: 0 corrupt skipped"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "inspect modified the file"
    );
}

#[test]
fn inspect_store_reports_a_flipped_bit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flipped.store");
    let (_, first) = make_store(&path);
    let mut bytes = std::fs::read(&path).unwrap();
    // One bit of the first record's payload (after its 20-byte header).
    bytes[first as usize + 20 + 3] ^= 0x08;
    std::fs::write(&path, &bytes).unwrap();

    let out = inspect(&path);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        !out.status.success(),
        "a corrupt record must fail:\n{stdout}"
    );
    assert!(
        stderr.contains("skipping corrupt record"),
        "no warning logged:\n{stderr}"
    );
    assert!(stdout.contains("records        10"), "{stdout}");
    assert!(stdout.contains("1 corrupt skipped"), "{stdout}");
    assert!(stderr.contains("1 corrupt records"), "{stderr}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "inspect modified the file"
    );
}

#[test]
fn inspect_store_refuses_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.bin");
    let junk = vec![0x42u8; 8192];
    std::fs::write(&path, &junk).unwrap();
    let out = inspect(&path);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not an anytime-edge store"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(&path).unwrap(), junk);

    let missing = inspect(&dir.path().join("missing.store"));
    assert!(!missing.status.success());
    assert!(text(&missing.stderr).contains("missing.store"));
}

#[test]
fn inspect_store_reports_a_lost_segment_header_and_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.store");
    let (_, first) = make_store(&path);
    let mut bytes = std::fs::read(&path).unwrap();
    // Zero the header of the segment holding every record (4096-byte segments).
    let seg = first as usize / 4096 * 4096;
    bytes[seg..seg + 20].fill(0);
    std::fs::write(&path, &bytes).unwrap();

    let out = inspect(&path);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("records        0"), "{stdout}");
    assert!(
        stdout.contains("1 segments have an unreadable header: the 15 intact records"),
        "{stdout}"
    );
    assert!(stderr.contains("--repair"), "{stderr}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "inspect modified the file"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_anytime-host"))
        .args(["inspect-store", "--repair"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("11 records kept (11 from unreadable segments), 3 labels"),
        "{stdout}"
    );
    assert!(stdout.contains("records        11"), "{stdout}");
    assert!(stdout.contains("state blob     9 bytes"), "{stdout}");
    assert!(stdout.contains("damage         none"), "{stdout}");
    assert_eq!(
        std::fs::read(dir.path().join("tokens.store.damaged")).unwrap(),
        bytes,
        "the damaged file is kept"
    );
}

#[test]
fn inspect_store_shows_a_diet_learners_settings_and_last_time_step() {
    use anytime_runtime::learner::{DietConfig, Learner, LearnerConfig, TimeWindow};
    use anytime_runtime::predict::Predictor;
    use anytime_runtime::train::BackendChoice;
    let dir = tempfile::tempdir().unwrap();
    let cfg = LearnerConfig {
        store_capacity: 1 << 20,
        backend: BackendChoice::Cpu,
        diet: Some(DietConfig::new(6, 4, TimeWindow::Samples(40))),
        ..LearnerConfig::default()
    };
    let mut l = Learner::open("tiny-clip", dir.path(), cfg).unwrap();
    let p = Predictor::load("tiny-clip").unwrap();
    let img = anytime_runtime::encoder::load_image(
        &anytime_runtime::assets::bundled_models_dir().join("tiny-clip/images/red_square.png"),
    )
    .unwrap();
    let tokens = p.encoder.encode_images(&[img]).unwrap();
    l.learn_tokens(&tokens, "red").unwrap();
    l.observe_unlabelled(&tokens).unwrap();
    l.end_time_step().unwrap();
    drop(l);
    let out = inspect(&dir.path().join("tokens.store"));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains(
            "S = 6 steps (batch 32) a time step, S* = 4; a time step: 40 arriving samples"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 ended; the last: 6 of 6 steps used (L_m 2, L_r 1, L_b 3; 2 at 0.1x lr), 1 labelled, 1 unlabelled"),
        "{stdout}"
    );
}

#[test]
fn inspect_store_shows_a_private_learners_mode_and_statistics_counts() {
    use anytime_runtime::learner::{Learner, LearnerConfig, PrivateConfig};
    use anytime_runtime::predict::Predictor;
    use anytime_runtime::train::BackendChoice;
    let dir = tempfile::tempdir().unwrap();
    let cfg = LearnerConfig {
        store_capacity: 1 << 20,
        backend: BackendChoice::Cpu,
        private: Some(PrivateConfig::default()),
        ..LearnerConfig::default()
    };
    let mut l = Learner::open("tiny-clip", dir.path(), cfg).unwrap();
    let p = Predictor::load("tiny-clip").unwrap();
    let img = anytime_runtime::encoder::load_image(
        &anytime_runtime::assets::bundled_models_dir().join("tiny-clip/images/red_square.png"),
    )
    .unwrap();
    let tokens = p.encoder.encode_images(&[img]).unwrap();
    // Red's statistics reach 8 samples and are written; blue's one sample stays in the
    // learner's memory (never written: fewer than 8) and is gone with it.
    for _ in 0..9 {
        l.learn_tokens(&tokens, "red").unwrap();
    }
    l.learn_tokens(&tokens, "blue").unwrap();
    drop(l);
    let out = inspect(&dir.path().join("tokens.store"));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("mode           private"), "{stdout}");
    assert!(stdout.contains("consolidations 0"), "{stdout}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|w: &Vec<&str>| w.len() == 4 && (w[3] == "red" || w[3] == "blue"))
        .collect();
    assert_eq!(
        rows,
        [["0", "0", "9", "red"], ["1", "0", "0", "blue"]],
        "{stdout}"
    );
}
