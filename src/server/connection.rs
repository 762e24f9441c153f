//! One accepted connection: its IO wrapped with the timeouts, served by hyper over HTTP/1.1
//! or (auto) HTTP/1.1 and HTTP/2, watched for graceful shutdown.

use std::{
    error::Error as StdError,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::Watcher},
};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite};
use tower_service::Service;

use super::{Config, TimeoutIo};

type BoxError = Box<dyn StdError + Send + Sync>;

/// hyper's builders, configured once.
#[derive(Debug, Clone)]
pub(super) enum Protocols {
    Http1(hyper::server::conn::http1::Builder),
    Auto(auto::Builder<TokioExecutor>),
}

impl Protocols {
    pub(super) fn new(config: &Config) -> Self {
        if config.http1_only {
            let mut http1 = hyper::server::conn::http1::Builder::new();
            http1
                .timer(TokioTimer::new())
                .header_read_timeout(config.header_read_timeout);
            if let Some(max) = config.http1_max_buf_size {
                http1.max_buf_size(max);
            }
            return Self::Http1(http1);
        }
        let mut builder = auto::Builder::new(TokioExecutor::new());
        let mut http1 = builder.http1();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout);
        if let Some(max) = config.http1_max_buf_size {
            http1.max_buf_size(max);
        }
        builder.http2().timer(TokioTimer::new());
        Self::Auto(builder)
    }

    /// The future that serves `io` with `service` until the connection ends, or ends it
    /// gracefully once `watcher` signals shutdown.
    pub(super) fn serve<I, S, B>(
        &self,
        io: I,
        config: &Config,
        service: S,
        watcher: Watcher,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let io = TokioIo::new(
            TimeoutIo::new(io)
                .idle_timeout(config.idle_timeout)
                .write_timeout(config.write_timeout),
        );
        let service = HyperService(service);
        match self {
            Self::Http1(http1) => {
                let connection = http1.serve_connection(io, service);
                Box::pin(Ended::new(watcher.watch(connection)))
            }
            Self::Auto(auto) => {
                let connection = auto.serve_connection(io, service).into_owned();
                Box::pin(Ended::new(watcher.watch(connection)))
            }
        }
    }
}

/// A tower service as a hyper service. Each request's future is boxed: hyper keeps room for
/// one per connection for as long as the connection lives, and boxed that room is a pointer.
#[derive(Debug, Clone)]
struct HyperService<S>(S);

impl<S, B> hyper::service::Service<Request<Incoming>> for HyperService<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, S::Error>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let mut service = self.0.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
            service.call(request).await
        })
    }
}

pin_project! {
    /// A connection's future whose end (and its error, if any) is logged rather than returned.
    struct Ended<F> {
        #[pin]
        connection: F,
    }
}

impl<F> Ended<F> {
    fn new(connection: F) -> Self {
        Self { connection }
    }
}

impl<F, E> Future for Ended<F>
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Err(e) = std::task::ready!(self.project().connection.poll(cx)) {
            tracing::debug!(error = %e, "connection ended with an error");
        }
        Poll::Ready(())
    }
}
