//! RED for every gRPC call: a tower layer around all services that counts each call by method,
//! status code and calling PSP, and times it from request to trailers.
//!
//! A gRPC call's status is known only at its end: in the response headers when the handler
//! refused it ("trailers-only"), otherwise in the trailers after the last message. So the layer
//! wraps the response body and records when it sees the status, or, if the body is dropped
//! before any status (the client went away), records CANCELLED. For streams the duration is the
//! stream's whole life.
//!
//! The calling PSP comes from the connection's verified client certificate, through the same
//! cache `auth` uses, so the layer costs no certificate parsing per call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::{Metrics, CODE_NAMES};
use crate::tls::Caller;

/// The layer: `Server::builder().layer(MeteredLayer::new(metrics))`.
#[derive(Clone)]
pub struct MeteredLayer {
    metrics: Arc<Metrics>,
}

impl MeteredLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        MeteredLayer { metrics }
    }
}

impl<S> tower_layer::Layer<S> for MeteredLayer {
    type Service = Metered<S>;
    fn layer(&self, inner: S) -> Metered<S> {
        Metered { inner, metrics: Arc::clone(&self.metrics) }
    }
}

#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// What to record when the call ends.
struct Call {
    metrics: Arc<Metrics>,
    method: usize,
    psp: Option<String>,
    started: Instant,
}

impl Call {
    fn finish(self, code: usize) {
        let elapsed = self.started.elapsed();
        self.metrics.method(self.method).record(code, elapsed);
        if let Some(psp) = &self.psp {
            self.metrics.with_psp(psp, |cells| cells.requests.record(code, elapsed));
        }
    }
}

impl<S, RequestBody, ResponseBody> tower_service::Service<Request<RequestBody>> for Metered<S>
where
    S: tower_service::Service<Request<RequestBody>, Response = Response<ResponseBody>>,
    S::Future: Send + 'static,
    ResponseBody: Body + Unpin,
{
    type Response = Response<MeteredBody<ResponseBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        let psp = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs())
            .and_then(|certificates| crate::auth::caller_of_certificates(&certificates))
            .and_then(|caller| match caller {
                Caller::Psp(psp) => Some(psp),
                Caller::Operator(_) => None,
            });
        let call = Call {
            metrics: Arc::clone(&self.metrics),
            method: Metrics::method_index(request.uri().path()),
            psp,
            started: Instant::now(),
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let (parts, body) = response.into_parts();
            let call = match status_code(&parts.headers) {
                // Trailers-only: the call is over (a refusal, or an empty stream).
                Some(code) => {
                    call.finish(code);
                    None
                }
                None => Some(call),
            };
            Ok(Response::from_parts(parts, MeteredBody { inner: body, call }))
        })
    }
}

/// The `grpc-status` of headers or trailers, as a code number (unknown codes as UNKNOWN).
fn status_code(headers: &HeaderMap) -> Option<usize> {
    let value = headers.get("grpc-status")?;
    let code = value.to_str().ok().and_then(|text| text.parse::<usize>().ok()).unwrap_or(2);
    Some(if code < CODE_NAMES.len() { code } else { 2 })
}

/// A response body that records its call when the trailers pass, or when dropped without them.
pub struct MeteredBody<B> {
    inner: B,
    call: Option<Call>,
}

impl<B: Body + Unpin> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(context);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(code) = frame.trailers_ref().and_then(status_code) {
                if let Some(call) = self.call.take() {
                    call.finish(code);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        // Ended without a status: the client cancelled, or the connection went.
        if let Some(call) = self.call.take() {
            call.finish(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_come_from_grpc_status_and_garbage_is_unknown() {
        let mut headers = HeaderMap::new();
        assert_eq!(status_code(&headers), None);
        headers.insert("grpc-status", "8".parse().unwrap());
        assert_eq!(status_code(&headers), Some(8));
        headers.insert("grpc-status", "99".parse().unwrap());
        assert_eq!(status_code(&headers), Some(2));
        headers.insert("grpc-status", "x".parse().unwrap());
        assert_eq!(status_code(&headers), Some(2));
    }
}
