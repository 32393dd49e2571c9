//! What the device tests share: the binary under test, the tiny model's pictures and a
//! `serve` process to talk to. Each test file uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::Value;

/// The `anytime-edge` binary, on the tiny model unless a test names another
/// (`ANYTIME_EDGE_MODEL`). When `ANYTIME_EDGE_TEST_RUNNER` is set (for example
/// `qemu-aarch64-static -L /usr/aarch64-linux-gnu` for a cross build), the binary runs
/// through it, as cargo runs the test harness itself.
pub fn bin() -> Command {
    let mut c = runner();
    c.env("ANYTIME_EDGE_MODEL", "tiny-clip");
    c
}

fn runner() -> Command {
    let exe = env!("CARGO_BIN_EXE_anytime-edge");
    let runner = std::env::var("ANYTIME_EDGE_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(exe);
            c
        }
        None => Command::new(exe),
    }
}

/// A picture of the tiny model (`models/tiny-clip/images/NAME`).
pub fn image(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/tiny-clip/images")
        .join(name)
}

/// [`image`] as a command-line argument.
pub fn image_arg(name: &str) -> String {
    image(name).to_str().unwrap().to_string()
}

/// Every line of `out` as JSON (a line that is not fails the test).
pub fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `serve --cpu` on a learner folder, talking over stdin/stdout.
pub struct Server {
    pub child: Child,
    pub stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Server {
    pub fn start(state: &Path, extra: &[&str]) -> Self {
        let mut child = bin()
            .args(["serve", "--cpu", "--state"])
            .arg(state)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one request line (any bytes) and parses the answer line.
    pub fn send(&mut self, bytes: &[u8]) -> Value {
        self.stdin.write_all(bytes).unwrap();
        self.stdin.write_all(b"\n").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "the server closed its output");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// [`Server::send`] of a text request.
    pub fn ask(&mut self, req: &str) -> Value {
        self.send(req.as_bytes())
    }

    /// Closes the input, waits for the exit and returns (success, status and stderr).
    pub fn finish(self) -> (bool, String) {
        let Self { child, stdin, .. } = self;
        drop(stdin);
        Self::exit(child)
    }

    /// Waits for the exit with the input still open (a signal must end it).
    pub fn wait(self) -> (bool, String) {
        let Self { child, stdin, .. } = self;
        let r = Self::exit(child);
        drop(stdin);
        r
    }

    fn exit(mut child: Child) -> (bool, String) {
        let status = child.wait().unwrap();
        let ok = status.success();
        let mut s = String::new();
        child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
        (ok, format!("{status:?}; stderr: {s}"))
    }
}
