//! What a deployment meets, on the release binary's commands: a second writer on a learner
//! (refused, naming the holder) and a reader beside the writer; a socket path that is not
//! the server's to take; request lines that are not UTF-8 or are too long; inputs that are
//! not regular files; a signal in the middle of `learn` (a failing exit status).
#![cfg(unix)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{bin, image, Server};

fn red() -> String {
    image("red_square.png").to_str().unwrap().to_string()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_second_writer_is_refused_and_a_reader_works_beside_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("learner");
    let mut s = Server::start(&state, &[]);
    let r = s.send(
        json!({"learn": red(), "label": "red"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r["ok"], true, "{r}");
    let pid = s.child.id();

    let o = bin()
        .args(["learn", "--cpu", "--label", "red", "--state"])
        .arg(&state)
        .arg(red())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains(&format!("in use by pid {pid}")), "{err}");
    // Said once: the message does not repeat itself.
    assert_eq!(err.matches("in use by").count(), 1, "{err}");

    let o = bin()
        .args(["predict", "--json", "--labels", "red,blue", "--state"])
        .arg(&state)
        .arg(red())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let p: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        p["ranked"][0]["p"].as_f64().is_some_and(f64::is_finite),
        "{p}"
    );

    let r = s.send(br#"{"stats": true}"#);
    assert_eq!(r["learned"], 1, "{r}");
    let (ok, err) = s.finish();
    assert!(ok, "{err}");
}

#[test]
fn serve_answers_bad_lines_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("learner");
    let mut s = Server::start(&state, &[]);
    let r = s.send(b"{\"stats\": \xff\xfe}");
    assert!(r["error"].as_str().unwrap().contains("not UTF-8"), "{r}");
    let long = format!(r#"{{"stats": true, "pad": "{}"}}"#, "x".repeat(200_000));
    let r = s.send(long.as_bytes());
    assert!(r["error"].as_str().unwrap().contains("longer than"), "{r}");
    let r = s.send(
        json!({"learn": red(), "label": "red"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r["ok"], true, "{r}");
    let (ok, err) = s.finish();
    assert!(ok, "{err}");
    assert!(state.join("tuned.safetensors").is_file(), "saved on EOF");
}

/// Waits until something listens on `sock` (or panics after a minute).
fn wait_listening(sock: &Path, child: &mut Child) {
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the server exited before listening"
        );
        assert!(start.elapsed() < Duration::from_secs(60), "never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn socket_server(state: &Path, sock: &Path) -> Command {
    let mut c = bin();
    c.args(["serve", "--cpu", "--state"])
        .arg(state)
        .arg("--socket")
        .arg(sock)
        .stderr(Stdio::piped());
    c
}

#[test]
fn the_socket_path_is_never_clobbered() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("edge.sock");
    // A file at the path is left alone.
    std::fs::write(&sock, b"precious").unwrap();
    let o = socket_server(&dir.path().join("a"), &sock)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a socket"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&sock).unwrap(), b"precious");
    std::fs::remove_file(&sock).unwrap();

    // A socket a server listens on is not taken over.
    let mut a = socket_server(&dir.path().join("a"), &sock).spawn().unwrap();
    wait_listening(&sock, &mut a);
    let o = socket_server(&dir.path().join("b"), &sock)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("another server is listening"),
        "{}",
        stderr(&o)
    );

    // A silent client does not hold up another.
    let _silent = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    writeln!(c, r#"{{"stats": true}}"#).unwrap();
    let mut line = String::new();
    BufReader::new(c.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("\"learned\""), "{line}");

    // At most 32 clients at once: one more is told so; once they leave, all is served.
    let mut held: Vec<_> = (0..30)
        .map(|_| std::os::unix::net::UnixStream::connect(&sock).unwrap())
        .collect();
    let one_more = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    one_more
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(one_more).read_line(&mut line).unwrap();
    assert!(line.contains("busy: 32 clients"), "{line}");
    held.clear();
    drop(_silent);
    let start = Instant::now();
    loop {
        let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        writeln!(c, r#"{{"stats": true}}"#).unwrap();
        let mut line = String::new();
        BufReader::new(c).read_line(&mut line).unwrap();
        if line.contains("\"learned\"") {
            break;
        }
        assert!(line.contains("busy"), "{line}");
        assert!(start.elapsed() < Duration::from_secs(30), "still busy");
        std::thread::sleep(Duration::from_millis(100));
    }

    // After a SIGKILL the stale socket is replaced.
    a.kill().unwrap();
    a.wait().unwrap();
    let mut b = socket_server(&dir.path().join("a"), &sock).spawn().unwrap();
    wait_listening(&sock, &mut b);
    assert!(Command::new("kill")
        .args(["-TERM", &b.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(b.wait().unwrap().success());
    assert!(!sock.exists(), "the server removes its own socket");
}

#[test]
fn inputs_that_are_not_regular_files_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.png");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let start = Instant::now();
    let o = bin()
        .args(["predict", "--labels", "a,b", "/dev/zero"])
        .arg(&fifo)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "a FIFO hung predict"
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.matches("not a regular file").count(), 3, "{err}");
    assert!(err.contains("3 of 3 images"), "{err}");
}

#[test]
fn learn_stopped_by_a_signal_fails_and_bad_rates_are_refused() {
    let o = bin()
        .args(["learn", "--cpu", "--lr", "NaN", "--label", "x", "--state"])
        .arg("/nonexistent/never-created")
        .arg(red())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a learning rate"), "{}", stderr(&o));

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("learner");
    let many: Vec<String> = (0..3000).map(|_| red()).collect();
    let mut child = bin()
        .args(["learn", "--cpu", "--label", "red", "--state"])
        .arg(&state)
        .args(&many)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("training on") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "learn ended early");
    }
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert!(!status.success(), "partial work is not success: {rest}");
    assert!(rest.contains("were not reached"), "{rest}");
    assert!(
        state.join("tuned.safetensors").is_file(),
        "saved what it learned"
    );
}

fn term(pid: u32) {
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

/// Waits for `child` at most `limit`; kills it and fails past that.
fn wait_at_most(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running {} s after SIGTERM", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM ends a server that runs no request at once, whatever its clients do (silent,
/// or half a line sent), saving the tuned weights: well within the 10 s it may wait for a
/// request in progress.
#[test]
fn sigterm_ends_the_server_in_time_whatever_its_clients_do() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("stdio");
    let mut s = Server::start(&state, &[]);
    let r = s.send(
        json!({"learn": red(), "label": "red"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r["ok"], true, "{r}");
    s.stdin.write_all(br#"{"stats": tr"#).unwrap();
    s.stdin.flush().unwrap();
    term(s.child.id());
    let status = wait_at_most(&mut s.child, Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(
        state.join("tuned.safetensors").is_file(),
        "saved on SIGTERM"
    );

    let state = dir.path().join("socket");
    let sock = dir.path().join("edge.sock");
    let mut b = socket_server(&state, &sock).spawn().unwrap();
    wait_listening(&sock, &mut b);
    let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    writeln!(c, "{}", json!({"learn": red(), "label": "red"})).unwrap();
    let mut line = String::new();
    BufReader::new(c.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("\"ok\":true"), "{line}");
    let _silent = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mut half = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    half.write_all(br#"{"predict": "#).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    term(b.id());
    let status = wait_at_most(&mut b, Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(
        state.join("tuned.safetensors").is_file(),
        "saved on SIGTERM"
    );
    assert!(!sock.exists(), "the server removes its own socket");
}

/// A predict over 7000 new labels encodes them without the learner's lock: SIGTERM in the
/// middle of it checkpoints and ends the server at once, exit 0.
#[test]
fn sigterm_during_a_long_predict_stops_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("learner");
    let labels: Vec<String> = (0..7000).map(|i| format!("t{i}")).collect();
    let (status, err, elapsed) = term_during(&state, json!({"predict": red(), "labels": labels}));
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!err.contains("still runs"), "{err}");
    assert!(elapsed < Duration::from_secs(5), "{err}");
    assert!(
        state.join("tuned.safetensors").is_file(),
        "saved on SIGTERM"
    );
    learned_one(&state);
}

/// A request that holds the learner longer than `--stop-grace` (a learn among 7000 new
/// labels, seconds on any machine in a debug build) is abandoned on SIGTERM: the process
/// ends within the grace, exits 1 saying so, and every acknowledged sample is still in the
/// store.
#[test]
fn sigterm_abandons_a_request_that_outlasts_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("learner");
    let among: Vec<String> = (0..7000).map(|i| format!("t{i}")).collect();
    let (status, err, elapsed) = term_during(
        &state,
        json!({"learn": red(), "label": "red", "among": among}),
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("still runs 0.5 s after signal"), "{err}");
    assert!(elapsed < Duration::from_secs(5), "{err}");
    learned_one(&state);
}

/// Starts `serve --stop-grace 0.5`, learns one sample, sends `request`, and SIGTERMs the
/// server 1 s plus twice that first learn's time later (past the image's decoding and
/// encoding outside the lock, on a slow or emulated machine too; a first learn also warms
/// the model, so it takes longer than any later image's encoding): its exit status,
/// stderr, and the time from signal to exit.
fn term_during(state: &Path, request: Value) -> (std::process::ExitStatus, String, Duration) {
    let mut child = bin()
        .args(["serve", "--cpu", "--stop-grace", "0.5", "--state"])
        .arg(state)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let first = Instant::now();
    writeln!(stdin, "{}", json!({"learn": red(), "label": "red"})).unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains("\"ok\":true"), "{line}");
    let first = first.elapsed();
    writeln!(stdin, "{request}").unwrap();
    std::thread::sleep(Duration::from_secs(1) + 2 * first);
    let start = Instant::now();
    term(child.id());
    let status = wait_at_most(&mut child, Duration::from_secs(10));
    let elapsed = start.elapsed();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, err, elapsed)
}

/// The learner at `state` reopens with its one acknowledged sample.
fn learned_one(state: &Path) {
    let o = bin()
        .args(["predict", "--json", "--labels", "red,blue", "--state"])
        .arg(state)
        .arg(red())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let mut s = Server::start(state, &[]);
    let r = s.send(br#"{"stats": true}"#);
    assert_eq!(r["learned"], 1, "the acknowledged sample is kept: {r}");
    let (ok, err) = s.finish();
    assert!(ok, "{err}");
}
