//! A real HTTP backend for the hook tests: a hyper server on 127.0.0.1:0 that records every
//! request it gets and answers what the test's function says (after any delay it chooses).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;

/// One request the backend got.
#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub headers: HeaderMap,
    /// The body as sent.
    pub raw: Bytes,
    /// The body as JSON (Null when it is not JSON).
    pub json: Value,
}

/// The backend's answer: status and body.
pub type Answer = (u16, String);

type Handler = Arc<dyn Fn(Call) -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync>;

/// A running backend.
pub struct Backend {
    pub addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    /// TCP connections accepted so far.
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Starts a backend answering with `answer`.
    pub async fn start<F, Fut>(answer: F) -> Backend
    where
        F: Fn(Call) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Answer> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |c| Box::pin(answer(c)));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let recorded = calls.clone();
        let accepted: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let counted = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let handler = handler.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let handler = handler.clone();
                        let recorded = recorded.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let headers = req.headers().clone();
                            let raw = req
                                .into_body()
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let json = serde_json::from_slice(&raw).unwrap_or(Value::Null);
                            let call = Call {
                                path,
                                headers,
                                raw,
                                json,
                            };
                            recorded.lock().unwrap().push(call.clone());
                            let (status, body) = handler(call).await;
                            let mut r = Response::new(Full::new(Bytes::from(body)));
                            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            r.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            addr,
            calls,
            accepted,
            task,
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every request so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Requests so far whose `"event"` is `event`.
    pub fn events(&self, event: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.json["event"] == event)
            .collect()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}
