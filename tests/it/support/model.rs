//! A model API on 127.0.0.1:0 (`/v1/chat/completions`, as OpenAI-compatible servers and Hermes's
//! API server serve it) whose answers a test scripts: whole JSON, a Server-Sent Events stream, or
//! a stream that stalls, noticing when the client goes away.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

use super::WAIT;

/// How the stub answers one request.
pub enum Answer {
    /// `application/json`: a chat.completion whose message content is this.
    Json(String),
    /// `text/event-stream`: these pieces written one at a time, then the body ends.
    Stream(Vec<String>),
    /// `text/event-stream`: this piece, then nothing more until the client closes the connection.
    /// Asked for whole JSON instead, it never answers and cannot tell when the client goes away:
    /// Hermes's API server then runs the turn to its end.
    Stall(String),
    /// `text/event-stream`: these pieces, each written once the test adds a permit to the gate
    /// (the test sees what one piece did before the next exists).
    Gated(Vec<String>, Arc<tokio::sync::Semaphore>),
}

/// One SSE event carrying a piece of the answer.
pub fn delta(text: &str) -> String {
    let chunk = json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
    format!("data: {chunk}\n\n")
}

/// The event that ends a stream.
pub const DONE: &str = "data: [DONE]\n\n";

type Script = Arc<dyn Fn(usize, &Value) -> Answer + Send + Sync>;

#[derive(Clone)]
struct Shared {
    calls: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
    script: Script,
    /// Stalled streams whose client went away.
    closed: Arc<AtomicUsize>,
    changed: Arc<Notify>,
}

pub struct ModelStub {
    /// Up to and including `/v1`.
    pub url: String,
    shared: Shared,
}

impl ModelStub {
    /// A stub answering request `n` (from 1) with `script(n, body)`.
    pub async fn start(script: impl Fn(usize, &Value) -> Answer + Send + Sync + 'static) -> Self {
        let shared = Shared {
            calls: Arc::default(),
            script: Arc::new(script),
            closed: Arc::default(),
            changed: Arc::default(),
        };
        let router = Router::new()
            .route("/v1/chat/completions", post(answer))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        ModelStub {
            url: format!("http://{addr}/v1"),
            shared,
        }
    }

    /// The requests so far: headers and JSON body, in order.
    pub fn calls(&self) -> Vec<(HeaderMap, Value)> {
        self.shared.calls.lock().unwrap().clone()
    }

    /// Wait until `n` requests came; fail after `WAIT`.
    pub async fn wait_for_calls(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.calls.lock().unwrap().len() >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for {n} requests to the model");
            }
        }
    }

    /// Wait until the client closed the connection of `n` stalled streams; fail after `WAIT`.
    pub async fn wait_for_closed(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.closed.load(Ordering::SeqCst) >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "timed out waiting for {n} stalled streams to be closed by the client; {} were",
                    self.shared.closed.load(Ordering::SeqCst)
                );
            }
        }
    }
}

async fn answer(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let n = {
        let mut calls = shared.calls.lock().unwrap();
        calls.push((headers, body.clone()));
        calls.len()
    };
    shared.changed.notify_waiters();
    let pieces = match (shared.script)(n, &body) {
        Answer::Json(text) => {
            return Json(json!({"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})).into_response();
        }
        Answer::Stream(pieces) => pieces,
        Answer::Gated(pieces, gate) => {
            let (tx, rx) = mpsc::channel::<Bytes>(1);
            tokio::spawn(async move {
                for piece in pieces {
                    let Ok(permit) = gate.acquire().await else {
                        return;
                    };
                    permit.forget();
                    if tx.send(Bytes::from(piece)).await.is_err() {
                        return;
                    }
                }
            });
            return sse(rx);
        }
        Answer::Stall(_) if body["stream"] != true => {
            return std::future::pending::<Response>().await;
        }
        Answer::Stall(first) => {
            let (tx, rx) = mpsc::channel::<Bytes>(1);
            tokio::spawn(async move {
                if tx.send(Bytes::from(first)).await.is_ok() {
                    // The body's receiver is dropped when the connection closes.
                    tx.closed().await;
                }
                shared.closed.fetch_add(1, Ordering::SeqCst);
                shared.changed.notify_waiters();
            });
            return sse(rx);
        }
    };
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    tokio::spawn(async move {
        for piece in pieces {
            if tx.send(Bytes::from(piece)).await.is_err() {
                return;
            }
        }
    });
    sse(rx)
}

/// A `text/event-stream` response whose body is what arrives on `rx`, each piece written alone.
fn sse(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let piece = rx.recv().await?;
        Some((Ok::<_, Infallible>(piece), rx))
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}
