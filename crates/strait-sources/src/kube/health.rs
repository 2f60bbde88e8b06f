//! A client middleware that records the outcome of every API request in the cluster's status.
//!
//! A watch that resumes after an outage delivers nothing until something changes, so the
//! watcher's events alone cannot tell that a cluster is reachable again; the response to the
//! watch request can.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};

use super::status::ClusterReporter;

/// Wraps the client's service stack with [`HealthService`].
#[derive(Clone)]
pub(crate) struct HealthLayer {
    pub(crate) reporter: ClusterReporter,
}

impl<S> tower::Layer<S> for HealthLayer {
    type Service = HealthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HealthService {
            inner,
            reporter: self.reporter.clone(),
        }
    }
}

/// Reports each response's status code (or transport error) with the request's path.
#[derive(Clone)]
pub(crate) struct HealthService<S> {
    inner: S,
    reporter: ClusterReporter,
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for HealthService<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let path = req.uri().path().to_string();
        let reporter = self.reporter.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            match &res {
                Ok(r) => reporter.response(&path, r.status().as_u16()),
                Err(e) => reporter.transport_error(&path, &e.to_string()),
            }
            res
        })
    }
}
