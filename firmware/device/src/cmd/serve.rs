//! `anytime-edge serve`: a long-running loop that keeps the model warm and answers
//! newline-delimited JSON requests, one JSON line each, on stdin/stdout or a Unix socket.
//!
//! Requests (an optional `"id"` is echoed back):
//! - `{"learn": "img.png", "label": "cat", "among": ["dog", "ship"]}` (`among`, optional: the
//!   task's other labels, as `learn --among`)
//! - `{"predict": "img.png", "labels": ["cat", "dog"], "mixing": "ocw", "none_threshold": 0.5, "none_rate": 0.05, "top": 5}`
//! - `{"learn": "img.png"}` without a label, on a diet learner (`--budget`): an unlabelled
//!   sample, kept in memory for its time step
//! - `{"end_time_step": true}` — on a diet learner: end the time step now, spend its budget
//! - `{"checkpoint": true}` — save the tuned weights now
//! - `{"consolidate": true}` — on a private learner (`--private`): consolidate now (snapshot,
//!   generator training, new period); answers the consolidation's report
//! - `{"stats": true}` — samples learned, labels and their stored counts, training backend,
//!   and on a diet learner its settings, the time step in progress and the last one's
//!   budget use, and on a private learner its mode, consolidations and per-label statistics
//!   sample counts
//!
//! A diet learner's answers to `learn` carry `"time_step"` when the request ended one (its
//! budget: steps used of `S`, by loss). A wall-clock time step (`--time-step-seconds`) also
//! ends on a once-a-second check while no request comes; at the end of the input the time
//! step in progress ends before the final checkpoint. A stop signal does not wait for a
//! time step's training: its samples are dropped (the labelled ones stay in the store).
//!
//! A request line is at most [`MAX_REQUEST`] bytes of UTF-8; a longer or invalid one gets an
//! error line and the loop goes on. On a socket every client has its own thread (at most
//! [`MAX_CLIENTS`]); requests take turns on the learner, images are read and decoded
//! outside it, so a silent or slow client holds up no other.
//!
//! SIGTERM or SIGINT: the request in progress finishes, the tuned weights are saved, and the
//! process exits 0. A request still running after `--stop-grace` seconds ([`STOP_GRACE`]
//! by default; a predict over thousands of new labels can take that long) is abandoned: the process
//! exits 1 without the final checkpoint (every acknowledged sample is in the store). After
//! SIGKILL the store and the last checkpoint are consistent (see the learner's
//! documentation).
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use anytime_runtime::encoder::{load_image, DynamicImage};
use anytime_runtime::learner::{Learner, Mixing, TimeWindow};
use anytime_runtime::predict::LabelSet;
use serde_json::{json, Value};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::predict::{prediction_json, NoneRule};
use super::{consolidation_json, parse_mixing, time_step_json, time_step_line, LearnerArgs};

/// Longest request line, in bytes.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a stop signal waits for the request in progress, unless `--stop-grace` says.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Most socket clients served at once; more are told so and closed.
pub const MAX_CLIENTS: usize = 32;
/// A socket client silent this long is closed.
const CLIENT_IDLE: Duration = Duration::from_secs(600);
/// A socket client that does not read its answer this long is closed.
const CLIENT_WRITE: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    learner: LearnerArgs,
    /// Listen on this Unix socket instead of stdin/stdout. A stale socket there is replaced;
    /// anything else there (a file, a socket a server listens on) is an error.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Seconds SIGTERM or SIGINT waits for the request in progress before the process exits
    /// 1 without the final checkpoint (0 to 3600).
    #[arg(long, default_value_t = STOP_GRACE.as_secs_f64(), value_parser = parse_grace)]
    stop_grace: f64,
}

fn parse_grace(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|g| (0.0..=3600.0).contains(g))
        .ok_or_else(|| format!("`{s}` is not a number of seconds from 0 to 3600"))
}

pub fn run(a: Args) -> Result<()> {
    // Signals are caught from here on, before the socket can be reached: a stop signal
    // that arrives before the handler thread runs waits for it instead of killing.
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("installing signal handlers")?;
    // The learner first: a second server on one learner is refused before any socket.
    let (learner, training) = a.learner.open_to_train()?;
    #[cfg(unix)]
    let listener = match &a.socket {
        Some(path) => Some(socket::bind(path)?),
        None => None,
    };
    #[cfg(not(unix))]
    if let Some(path) = &a.socket {
        anyhow::bail!("Unix sockets are not available here ({})", path.display());
    }
    eprintln!("serving; {training}");
    let learner = Arc::new(Mutex::new(learner));
    {
        let learner = Arc::clone(&learner);
        let grace = Duration::from_secs_f64(a.stop_grace);
        #[cfg(unix)]
        let bound = listener.as_ref().map(|(_, b)| b.clone());
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                stop(&learner, sig, grace, |code| {
                    #[cfg(unix)]
                    if let Some(b) = bound {
                        b.remove();
                    }
                    eprintln!("stopped on signal {sig}");
                    std::process::exit(code)
                });
            }
        });
    }
    if learner
        .lock()
        .ok()
        .and_then(|l| l.diet_status())
        .is_some_and(|d| matches!(d.config.window, TimeWindow::Seconds(_)))
    {
        let learner = Arc::clone(&learner);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let Ok(mut l) = learner.lock() else { return };
            match l.poll_time_step() {
                Ok(Some(t)) => eprintln!("{}", time_step_line(&t)),
                Ok(None) => {}
                Err(e) => eprintln!("error: ending a time step: {e}"),
            }
        });
    }
    #[cfg(unix)]
    let served = match listener {
        Some((l, _)) => socket::serve(&learner, l),
        None => serve_stdio(&learner),
    };
    #[cfg(not(unix))]
    let served = serve_stdio(&learner);
    // Saved even when the input failed: what was learned is not thrown away.
    let mut l = learner
        .lock()
        .map_err(|_| anyhow::anyhow!("a request panicked; the tuned weights are not saved"))?;
    // The time step's samples live only in this process: spent before it ends.
    if l.diet_status()
        .is_some_and(|s| s.labelled + s.unlabelled > 0)
    {
        match l.end_time_step() {
            Ok(t) => eprintln!("{} (at the end of the input)", time_step_line(&t)),
            Err(e) => eprintln!("error: ending the time step: {e}"),
        }
    }
    let saved = l.checkpoint().context("saving the tuned weights");
    served.and(saved)
}

fn serve_stdio(learner: &Mutex<Learner>) -> Result<()> {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    serve_stream(learner, stdin.lock(), stdout.lock())
}

/// Waits up to `grace` for the request in progress, saves, and ends the process
/// with `exit` (given the exit status; it does not return) while it still holds the
/// learner, so that no request starts after the final checkpoint.
fn stop(learner: &Mutex<Learner>, sig: i32, grace: Duration, exit: impl FnOnce(i32)) {
    let deadline = Instant::now() + grace;
    loop {
        match learner.try_lock() {
            Ok(mut l) => {
                let code = match l.checkpoint() {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("error: saving on signal {sig}: {e}");
                        1
                    }
                };
                return exit(code);
            }
            Err(TryLockError::Poisoned(_)) => {
                eprintln!("error: a request panicked; stopping without the final checkpoint");
                return exit(1);
            }
            Err(TryLockError::WouldBlock) if Instant::now() >= deadline => {
                eprintln!(
                    "error: a request still runs {} s after signal {sig}; stopping without the final checkpoint (every acknowledged sample is in the store)",
                    grace.as_secs_f64()
                );
                return exit(1);
            }
            Err(TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// One request line as read.
enum Line {
    /// A line (without its newline) is in the buffer.
    Complete,
    /// A line longer than the limit was skipped.
    TooLong,
    /// The input ended.
    End,
}

/// Reads one line of at most `max` bytes into `buf` (a longer one is consumed and
/// dropped, never held in memory whole).
fn read_line_bounded(
    input: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let avail = match input.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(match (any, too_long) {
                (false, _) => Line::End,
                (true, true) => Line::TooLong,
                (true, false) => Line::Complete,
            });
        }
        any = true;
        let (chunk, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (&avail[..i], Some(i + 1)),
            None => (avail, None),
        };
        if !too_long && buf.len() + chunk.len() <= max {
            buf.extend_from_slice(chunk);
        } else {
            too_long = true;
            buf.clear();
        }
        let used = done.unwrap_or(avail.len());
        input.consume(used);
        if done.is_some() {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
    }
}

fn serve_stream(
    learner: &Mutex<Learner>,
    mut input: impl BufRead,
    mut output: impl Write,
) -> Result<()> {
    let mut buf = Vec::new();
    loop {
        let reply = match read_line_bounded(&mut input, &mut buf, MAX_REQUEST)
            .context("reading a request")?
        {
            Line::End => return Ok(()),
            Line::TooLong => {
                json!({"error": format!("request line longer than {MAX_REQUEST} bytes; skipped")})
            }
            Line::Complete => match std::str::from_utf8(&buf) {
                Err(e) => json!({"error": format!("request is not UTF-8 ({e})")}),
                Ok(line) if line.trim().is_empty() => continue,
                Ok(line) => handle(learner, line),
            },
        };
        writeln!(output, "{reply}")?;
        output.flush()?;
    }
}

/// Answers one request line; errors become `{"error": ...}`.
pub fn handle(learner: &Mutex<Learner>, line: &str) -> Value {
    let req: Value = match serde_json::from_str(line) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return json!({"error": "a request is a JSON object"}),
        Err(e) => return json!({"error": format!("invalid JSON: {e}")}),
    };
    let mut reply = match answer(learner, &req) {
        Ok(v) => v,
        Err(e) => json!({"error": format!("{e:#}")}),
    };
    if let (Some(id), Value::Object(m)) = (req.get("id"), &mut reply) {
        m.insert("id".into(), id.clone());
    }
    reply
}

fn lock(learner: &Mutex<Learner>) -> Result<std::sync::MutexGuard<'_, Learner>> {
    learner
        .lock()
        .map_err(|_| anyhow::anyhow!("an earlier request panicked; the learner is unusable"))
}

/// Reads and decodes an image outside the learner's lock.
fn image(path: &str) -> Result<DynamicImage> {
    Ok(load_image(Path::new(path))?)
}

fn answer(learner: &Mutex<Learner>, req: &Value) -> Result<Value> {
    if let Some(path) = req.get("learn") {
        let path = path.as_str().context("\"learn\" must be an image path")?;
        let label = match req.get("label") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_str().context("\"label\" must be a string")?),
        };
        let Some(label) = label else {
            if lock(learner)?.diet_status().is_none() {
                anyhow::bail!("\"learn\" without a \"label\" is an unlabelled sample, which only a diet learner (--budget) takes");
            }
            let img = image(path)?;
            let encoder = lock(learner)?.encoder();
            let tokens = encoder.encode_images(&[img])?;
            let r = lock(learner)?.observe_unlabelled(&tokens)?;
            return Ok(
                json!({"ok": true, "unlabelled": true, "held": r.held, "dropped": r.dropped,
                             "time_step": r.time_step.as_ref().map(time_step_json)}),
            );
        };
        let among: Vec<String> = match req.get("among") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => v
                .as_array()
                .context("\"among\" must be a list of labels")?
                .iter()
                .map(|l| l.as_str().map(str::to_string).context("labels are strings"))
                .collect::<Result<_>>()?,
        };
        let img = image(path)?;
        // The trunk runs outside the lock: other clients' requests go on meanwhile.
        let encoder = lock(learner)?.encoder();
        let tokens = encoder.encode_images(&[img])?;
        let r = lock(learner)?.learn_tokens_in(&tokens, label, &among)?;
        return Ok(
            json!({"ok": true, "learned": r.learned, "label": r.label, "loss": r.loss,
                         "batch": r.batch, "labels": r.labels, "tuned_correct": r.tuned_correct,
                         "original_correct": r.original_correct,
                         "time_step": r.time_step.as_ref().map(time_step_json),
                         "consolidation": r.consolidation.as_ref().map(consolidation_json)}),
        );
    }
    if req.get("end_time_step").is_some() {
        let mut l = lock(learner)?;
        let t = l.end_time_step()?;
        return Ok(json!({"ok": true, "time_step": time_step_json(&t)}));
    }
    if let Some(path) = req.get("predict") {
        let path = path.as_str().context("\"predict\" must be an image path")?;
        let labels: Vec<String> = req
            .get("labels")
            .and_then(Value::as_array)
            .context("\"predict\" needs \"labels\": [..]")?
            .iter()
            .map(|l| l.as_str().map(str::to_string).context("labels are strings"))
            .collect::<Result<_>>()?;
        let mixing = match req.get("mixing").and_then(Value::as_str) {
            Some(m) => parse_mixing(m).map_err(anyhow::Error::msg)?,
            None => Mixing::Ocw,
        };
        let other = req
            .get("none_threshold")
            .and_then(Value::as_f64)
            .map(|t| t as f32);
        let rate = match req.get("none_rate") {
            None => None,
            Some(v) => Some(
                v.as_f64()
                    .map(|r| r as f32)
                    .filter(|r| *r > 0.0 && *r < 1.0)
                    .context("\"none_rate\" must be a share between 0 and 1")?,
            ),
        };
        let none = NoneRule::new(other, rate);
        let top = req.get("top").and_then(Value::as_u64).unwrap_or(5) as usize;
        let img = image(path)?;
        // Encoding the image and the labels, the costly part, holds no lock.
        let encoder = lock(learner)?.encoder();
        let set = LabelSet::embed(&encoder, &labels)?;
        let tokens = encoder.encode_images(&[img])?;
        let p = lock(learner)?
            .predict_tokens(&tokens, &set, mixing)?
            .remove(0);
        return Ok(prediction_json(
            path,
            &p,
            if top == 0 { labels.len() } else { top },
            &none,
        ));
    }
    if req.get("consolidate").is_some() {
        let mut l = lock(learner)?;
        if !l.is_private() {
            anyhow::bail!("\"consolidate\" is for a private learner (--private)");
        }
        let r = l.consolidate()?;
        return Ok(json!({"ok": true, "consolidation": consolidation_json(&r)}));
    }
    if req.get("checkpoint").is_some() {
        let mut l = lock(learner)?;
        l.checkpoint()?;
        return Ok(json!({"ok": true, "learned": l.learned()}));
    }
    if req.get("stats").is_some() {
        let mut l = lock(learner)?;
        let backend = l.training()?.backend;
        let learned = l.learned();
        let bad_reads = l.store().bad_reads();
        let labels: Vec<Value> = l
            .store()
            .labels()?
            .into_iter()
            .map(|l| json!({"label": l.name, "stored": l.count}))
            .collect();
        let diet = l.diet_status().map(|d| {
            json!({"budget": d.config.budget, "s_star": d.config.s_star,
                   "window": d.config.window, "time_steps": d.time_steps,
                   "arrivals": d.arrivals, "labelled": d.labelled, "unlabelled": d.unlabelled,
                   "elapsed_s": d.elapsed,
                   "last": d.last.as_ref().map(time_step_json)})
        });
        let private = l.private_status().map(|p| {
            let stats: Vec<Value> = p
                .labels
                .iter()
                .map(|(id, n, published)| json!({"id": id, "samples": n, "published": published}))
                .collect();
            json!({"consolidate_every": p.config.consolidate_every,
                   "consolidations": p.consolidations, "since": p.since,
                   "generator": p.generator, "statistics": stats,
                   "last": p.last.as_ref().map(consolidation_json)})
        });
        let mode = if private.is_some() {
            "private"
        } else {
            "normal"
        };
        return Ok(
            json!({"learned": learned, "training": backend, "mode": mode, "labels": labels,
                         "damaged_records_met": bad_reads, "diet": diet, "private": private}),
        );
    }
    anyhow::bail!("unknown request: expected \"learn\", \"predict\", \"end_time_step\", \"consolidate\", \"checkpoint\" or \"stats\"")
}

#[cfg(unix)]
mod socket {
    use std::io::BufReader;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// The socket this server bound: removed on exit only if it is still this one.
    #[derive(Debug, Clone)]
    pub struct Bound {
        path: PathBuf,
        dev_ino: Option<(u64, u64)>,
    }

    impl Bound {
        pub fn remove(&self) {
            let same = std::fs::symlink_metadata(&self.path)
                .map(|m| Some((m.dev(), m.ino())) == self.dev_ino)
                .unwrap_or(false);
            if same {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }

    /// Binds `path`: free, or a stale socket nobody listens on (replaced). A socket a
    /// server listens on, or anything that is not a socket, is an error and left alone.
    pub fn bind(path: &Path) -> Result<(UnixListener, Bound)> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
                Ok(_) => anyhow::bail!(
                    "{}: another server is listening on this socket",
                    path.display()
                ),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    log::info!("{}: replacing a stale socket", path.display());
                    std::fs::remove_file(path)
                        .with_context(|| format!("removing the stale socket {}", path.display()))?;
                }
                Err(e) => anyhow::bail!(
                    "{}: a socket that cannot be probed ({e}); not replacing it",
                    path.display()
                ),
            },
            Ok(_) => anyhow::bail!(
                "{} exists and is not a socket; not replacing it",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        let dev_ino = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Ok((
            listener,
            Bound {
                path: path.to_path_buf(),
                dev_ino,
            },
        ))
    }

    /// Serves every client in its own thread until the process is stopped.
    pub fn serve(learner: &Arc<Mutex<Learner>>, listener: UnixListener) -> Result<()> {
        let clients = Arc::new(AtomicUsize::new(0));
        for stream in listener.incoming() {
            let mut stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    log::warn!("accepting a connection: {e}");
                    continue;
                }
            };
            if clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                clients.fetch_sub(1, Ordering::SeqCst);
                let _ = stream.set_write_timeout(Some(CLIENT_WRITE));
                let _ = writeln!(
                    stream,
                    "{}",
                    json!({"error": format!("busy: {MAX_CLIENTS} clients are connected")})
                );
                continue;
            }
            let (learner, clients) = (Arc::clone(learner), Arc::clone(&clients));
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(CLIENT_IDLE));
                let _ = stream.set_write_timeout(Some(CLIENT_WRITE));
                match stream.try_clone() {
                    Ok(read) => {
                        if let Err(e) = serve_stream(&learner, BufReader::new(read), stream) {
                            log::info!("connection ended: {e:#}");
                        }
                    }
                    Err(e) => log::warn!("connection: {e}"),
                }
                clients.fetch_sub(1, Ordering::SeqCst);
            });
        }
        Ok(())
    }
}
