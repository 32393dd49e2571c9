//! `anytime-edge serve`: a long-running loop that keeps the model warm and answers
//! newline-delimited JSON requests, one JSON line each, on stdin/stdout or a Unix socket.
//!
//! Requests (an optional `"id"` is echoed back):
//! - `{"learn": "img.png", "label": "cat", "among": ["dog", "ship"]}` (`among`, optional: the
//!   task's other labels, as `learn --among`)
//! - `{"predict": "img.png", "labels": ["cat", "dog"], "mixing": "ocw", "none_threshold": 0.5, "none_rate": 0.05, "top": 5}`
//! - `{"checkpoint": true}` — save the tuned weights now
//! - `{"stats": true}` — samples learned, labels and their stored counts, training backend
//!
//! SIGTERM or SIGINT: the request in progress finishes, the tuned weights are saved, and the
//! process exits 0. After SIGKILL the store and the last checkpoint are consistent (see the
//! learner's documentation).
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use anytime_runtime::encoder::load_image;
use anytime_runtime::learner::{Learner, Mixing};
use serde_json::{json, Value};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::predict::{prediction_json, NoneRule};
use super::{parse_mixing, LearnerArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    learner: LearnerArgs,
    /// Listen on this Unix socket instead of stdin/stdout.
    #[arg(long)]
    socket: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let (learner, training) = a.learner.open_to_train()?;
    eprintln!("serving; {training}");
    let learner = Arc::new(Mutex::new(learner));
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("installing signal handlers")?;
    {
        let learner = Arc::clone(&learner);
        let socket = a.socket.clone();
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                // Waits for the request in progress, then saves and leaves.
                let code = match learner.lock() {
                    Ok(mut l) => match l.checkpoint() {
                        Ok(()) => 0,
                        Err(e) => {
                            eprintln!("error: saving on signal {sig}: {e:#}");
                            1
                        }
                    },
                    Err(_) => 1,
                };
                if let Some(s) = socket {
                    let _ = std::fs::remove_file(s);
                }
                eprintln!("stopped on signal {sig}");
                std::process::exit(code);
            }
        });
    }
    match &a.socket {
        None => {
            let stdin = std::io::stdin();
            let stdout = std::io::stdout();
            serve_stream(&learner, stdin.lock(), stdout.lock())?;
        }
        Some(path) => {
            #[cfg(unix)]
            {
                let _ = std::fs::remove_file(path);
                let listener = std::os::unix::net::UnixListener::bind(path)
                    .with_context(|| format!("binding {}", path.display()))?;
                for stream in listener.incoming() {
                    let stream = stream.context("accepting a connection")?;
                    let reader = BufReader::new(stream.try_clone()?);
                    if let Err(e) = serve_stream(&learner, reader, stream) {
                        log::warn!("connection ended: {e:#}");
                    }
                }
            }
            #[cfg(not(unix))]
            anyhow::bail!("Unix sockets are not available here ({})", path.display());
        }
    }
    learner
        .lock()
        .map_err(|_| anyhow::anyhow!("learner lock poisoned"))?
        .checkpoint()
        .context("saving the tuned weights")?;
    Ok(())
}

fn serve_stream(
    learner: &Mutex<Learner>,
    input: impl BufRead,
    mut output: impl Write,
) -> Result<()> {
    for line in input.lines() {
        let line = line.context("reading a request")?;
        if line.trim().is_empty() {
            continue;
        }
        let reply = {
            let mut l = learner
                .lock()
                .map_err(|_| anyhow::anyhow!("learner lock poisoned"))?;
            handle(&mut l, &line)
        };
        writeln!(output, "{reply}")?;
        output.flush()?;
    }
    Ok(())
}

/// Answers one request line; errors become `{"error": ...}`.
pub fn handle(learner: &mut Learner, line: &str) -> Value {
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

fn answer(learner: &mut Learner, req: &Value) -> Result<Value> {
    if let Some(path) = req.get("learn") {
        let path = path.as_str().context("\"learn\" must be an image path")?;
        let label = req
            .get("label")
            .and_then(Value::as_str)
            .context("\"learn\" needs a string \"label\"")?;
        let among: Vec<String> = match req.get("among") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => v
                .as_array()
                .context("\"among\" must be a list of labels")?
                .iter()
                .map(|l| l.as_str().map(str::to_string).context("labels are strings"))
                .collect::<Result<_>>()?,
        };
        let img = load_image(path.as_ref())?;
        let r = learner.learn_image_in(&img, label, &among)?;
        return Ok(
            json!({"ok": true, "learned": r.learned, "label": r.label, "loss": r.loss,
                         "batch": r.batch, "labels": r.labels, "tuned_correct": r.tuned_correct,
                         "original_correct": r.original_correct}),
        );
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
        let set = learner.label_set(&labels)?;
        let img = load_image(path.as_ref())?;
        let p = learner.predict_images(&[img], &set, mixing)?.remove(0);
        return Ok(prediction_json(
            path,
            &p,
            if top == 0 { labels.len() } else { top },
            &none,
        ));
    }
    if req.get("checkpoint").is_some() {
        learner.checkpoint()?;
        return Ok(json!({"ok": true, "learned": learner.learned()}));
    }
    if req.get("stats").is_some() {
        let backend = learner.training()?.backend;
        let learned = learner.learned();
        let labels: Vec<Value> = learner
            .store()
            .labels()?
            .into_iter()
            .map(|l| json!({"label": l.name, "stored": l.count}))
            .collect();
        return Ok(json!({"learned": learned, "training": backend, "labels": labels}));
    }
    anyhow::bail!("unknown request: expected \"learn\", \"predict\", \"checkpoint\" or \"stats\"")
}
