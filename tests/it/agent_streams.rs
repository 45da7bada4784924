//! Agents that stream their answer: the http agent's server-sent events and JSON lines, and the
//! command agent's stdout lines, shown on the turn's `partial` while the agent still writes.
//! Through the library API, against a real HTTP server and a real child process; the server or
//! the script writes its next part only once the test has seen the one before.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::routing::post;
use axum::Router;
use secrecy::SecretString;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use wecom_gateway::agent::command::CommandAgent;
use wecom_gateway::agent::http::HttpAgent;
use wecom_gateway::agent::{Agent, AgentError, Partial, Turn};
use wecom_gateway::config::{CommandAgentConfig, HttpAgentConfig};
use wecom_gateway::conversation::Channel;
use wecom_gateway::message::InboundMessage;
use wecom_gateway::wecom::AppMessage;

type Reply = Result<Vec<AppMessage>, AgentError>;

/// Runs `agent` on a text turn whose `partial` the returned receiver watches.
fn run(agent: Arc<dyn Agent>) -> (JoinHandle<Reply>, watch::Receiver<String>) {
    let (partial, seen) = Partial::new();
    let task = tokio::spawn(async move {
        let xml = "<xml><ToUserName>ww1</ToUserName><FromUserName>zhangsan</FromUserName><CreateTime>1700000000</CreateTime><MsgType>text</MsgType><Content>你好</Content><MsgId>1</MsgId><AgentID>5</AgentID></xml>";
        let message = InboundMessage::parse(xml).unwrap();
        let channel = Channel::App("alpha".into());
        let turn = Turn {
            channel: &channel,
            corp_id: "ww1",
            user_id: "zhangsan",
            user_key: "ww1:zhangsan",
            message: &message,
            media: None,
            chat_id: None,
            partial: Some(&partial),
        };
        agent.reply(turn).await
    });
    (task, seen)
}

/// Waits until the partial text is `expected` (the bound only turns a hang into a failure).
async fn shown(seen: &mut watch::Receiver<String>, expected: &str) {
    let wait = async {
        while *seen.borrow_and_update() != expected {
            if seen.changed().await.is_err() {
                break;
            }
        }
    };
    let waited = tokio::time::timeout(Duration::from_secs(30), wait).await;
    let last = seen.borrow().clone();
    assert!(
        waited.is_ok() && last == expected,
        "partial never showed {expected:?}; last: {last:?}"
    );
}

/// The body of one answer: its content type and the parts the test writes into it. Dropping the
/// sender ends the body.
type Queued = Arc<Mutex<VecDeque<(&'static str, mpsc::UnboundedReceiver<String>)>>>;

/// A local agent server: each POST answers 200 with the next queued body, streamed as the test
/// writes it. Returns the URL, the queue, and how many requests came.
async fn stream_server() -> (String, Queued, Arc<Mutex<usize>>) {
    let queued: Queued = Arc::default();
    let requests = Arc::new(Mutex::new(0));
    let state = (queued.clone(), requests.clone());
    let router = Router::new()
        .route(
            "/agent",
            post(
                |State((queued, requests)): State<(Queued, Arc<Mutex<usize>>)>| async move {
                    *requests.lock().unwrap() += 1;
                    let (content_type, parts) = queued.lock().unwrap().pop_front().unwrap();
                    let body = futures::stream::unfold(parts, |mut parts| async move {
                        let part = parts.recv().await?;
                        Some((Ok::<_, Infallible>(part), parts))
                    });
                    ([(CONTENT_TYPE, content_type)], Body::from_stream(body))
                },
            ),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}/agent"), queued, requests)
}

fn queue(queued: &Queued, content_type: &'static str) -> mpsc::UnboundedSender<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    queued.lock().unwrap().push_back((content_type, rx));
    tx
}

fn http_agent(url: String, retries: u32) -> Arc<dyn Agent> {
    Arc::new(
        HttpAgent::new(HttpAgentConfig {
            url,
            timeout: Duration::from_secs(30),
            retries,
            headers: vec![("Authorization".into(), SecretString::from("Bearer x"))],
        })
        .unwrap(),
    )
}

#[tokio::test]
async fn http_agent_streams_server_sent_events_and_answers_with_the_last_document() {
    let (url, queued, _) = stream_server().await;
    let body = queue(&queued, "text/event-stream; charset=utf-8");
    let (reply, mut seen) = run(http_agent(url, 0));

    body.send("data: {\"delta\":\"Hel\"}\n\n".into()).unwrap();
    shown(&mut seen, "Hel").await;
    assert!(!reply.is_finished(), "the agent is still writing");
    // A comment, then the rest of a delta cut mid-event.
    body.send(": keep-alive\n\ndata: {\"del".into()).unwrap();
    body.send("ta\":\"lo\"}\n\n".into()).unwrap();
    shown(&mut seen, "Hello").await;
    body.send("data: {\"text\":\"Hello, world\"}\n\n".into())
        .unwrap();
    shown(&mut seen, "Hello, world").await;
    assert!(!reply.is_finished(), "the agent is still writing");
    body.send("data: {\"reply\":\"the final answer\"}\n\ndata: [DONE]\n\n".into())
        .unwrap();
    drop(body);

    let answer = reply.await.unwrap().unwrap();
    assert_eq!(answer, vec![AppMessage::text("the final answer")]);
}

#[tokio::test]
async fn http_agent_streams_json_lines_and_answers_with_the_joined_text() {
    let (url, queued, _) = stream_server().await;
    let body = queue(&queued, "application/x-ndjson");
    let (reply, mut seen) = run(http_agent(url, 0));

    body.send("{\"delta\":\"第一句。\"}\n".into()).unwrap();
    shown(&mut seen, "第一句。").await;
    assert!(!reply.is_finished(), "the agent is still writing");
    body.send("\n{\"delta\":\"第二句".into()).unwrap();
    body.send("。\"}\n".into()).unwrap();
    shown(&mut seen, "第一句。第二句。").await;
    assert!(!reply.is_finished(), "the agent is still writing");
    // The last line needs no newline.
    body.send("{\"delta\":\" 完\"}".into()).unwrap();
    drop(body);

    let answer = reply.await.unwrap().unwrap();
    assert_eq!(answer, vec![AppMessage::text("第一句。第二句。 完")]);
    assert_eq!(*seen.borrow(), "第一句。第二句。 完");
}

#[tokio::test]
async fn a_broken_stream_is_a_failure_that_names_what_broke_and_is_not_retried() {
    let (url, queued, requests) = stream_server().await;
    // Retries are for a server that could not answer, not for an answer that broke midway.
    let agent = http_agent(url, 2);
    let failure = |reply: Reply| match reply {
        Err(AgentError::Failed(why)) => why,
        other => panic!("expected a failure, got {other:?}"),
    };

    // An SSE stream that closes before data: [DONE] is not a whole answer.
    let body = queue(&queued, "text/event-stream");
    let (reply, mut seen) = run(agent.clone());
    body.send("data: {\"delta\":\"half an\"}\n\n".into())
        .unwrap();
    shown(&mut seen, "half an").await;
    drop(body);
    let why = failure(reply.await.unwrap());
    assert!(why.contains("ended before data: [DONE]"), "{why}");

    // A line that is not JSON is named.
    let body = queue(&queued, "application/x-ndjson");
    body.send("{\"delta\":\"fine\"}\nnot json\n".into())
        .unwrap();
    drop(body);
    let why = failure(run(agent.clone()).0.await.unwrap());
    assert!(why.contains("line 2") && why.contains("not JSON"), "{why}");

    // The agent's own error, reported inside the stream.
    let body = queue(&queued, "application/x-ndjson");
    body.send("{\"error\":{\"message\":\"model overloaded\"}}\n".into())
        .unwrap();
    drop(body);
    let why = failure(run(agent.clone()).0.await.unwrap());
    assert!(why.contains("model overloaded"), "{why}");

    // An object that is none of the known shapes.
    let body = queue(&queued, "text/event-stream");
    body.send("data: {\"delta\":\"a\"}\n\ndata: {\"progress\":0.5}\n\n".into())
        .unwrap();
    drop(body);
    let why = failure(run(agent).0.await.unwrap());
    assert!(why.contains("line 3") && why.contains("\"delta\""), "{why}");

    assert_eq!(*requests.lock().unwrap(), 4, "no broken stream was retried");
}

fn shell_script(dir: &std::path::Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

fn command_agent(program: String, env: Vec<(String, String)>) -> Arc<dyn Agent> {
    Arc::new(CommandAgent::new(CommandAgentConfig {
        program,
        args: Vec::new(),
        timeout: Duration::from_secs(30),
        env,
        working_dir: None,
    }))
}

#[tokio::test]
async fn command_agent_shows_each_line_while_it_runs_and_answers_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("go");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // The second line is written only once the test has seen the first and opened the fifo.
    let program = shell_script(
        dir.path(),
        "lines.sh",
        "cat >/dev/null\necho 'first line'\nread go < \"$GO\"\necho 'second line'\n",
    );
    let env = vec![("GO".into(), fifo.display().to_string())];
    let (reply, mut seen) = run(command_agent(program, env));
    shown(&mut seen, "first line").await;
    assert!(!reply.is_finished(), "the program is still writing");
    tokio::task::spawn_blocking(move || std::fs::write(&fifo, "go\n"))
        .await
        .unwrap()
        .unwrap();
    let answer = reply.await.unwrap().unwrap();
    assert_eq!(answer, vec![AppMessage::text("first line\nsecond line")]);
    assert_eq!(*seen.borrow(), "first line\nsecond line");

    // A program that prints an answer document at the end: read as one, never shown as text.
    let program = shell_script(
        dir.path(),
        "document.sh",
        "cat >/dev/null\necho '{\"reply\": \"from a document\"}'\n",
    );
    let (reply, seen) = run(command_agent(program, Vec::new()));
    let answer = reply.await.unwrap().unwrap();
    assert_eq!(answer, vec![AppMessage::text("from a document")]);
    assert_eq!(*seen.borrow(), "", "the JSON was not shown");
}
