//! What the device tests share: the binary under test.
use std::process::Command;

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
