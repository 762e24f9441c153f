//! The demo's own routes (the layer answers `/events...`): the page, health, metrics, and
//! publishing through the library's `PublishService`.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use tower::ServiceExt;
use tower_sse::{EventBus, JwtPolicy, PublishService};

const PAGE: &str = include_str!("page.html");

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct App {
    /// `POST /publish/{topic}`, with the same policy as the streams.
    pub(crate) publish: PublishService,
    /// Who may read presence counts (with `--jwt-secret`).
    pub(crate) policy: Option<JwtPolicy>,
    pub(crate) metrics: PrometheusHandle,
}

pub(crate) async fn handle(
    req: Request<Incoming>,
    app: App,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // The layer put the bus into the request's extensions.
    let bus = req
        .extensions()
        .get::<EventBus>()
        .expect("SseLayer inserts the bus")
        .clone();
    let path = req.uri().path().to_owned();
    Ok(match (req.method(), path.as_str()) {
        (&Method::GET, "/") => {
            let mut r = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        (&Method::GET, "/healthz") => {
            let health = bus.health();
            match health.problem() {
                None => text(StatusCode::OK, "ok"),
                Some(problem) => text(StatusCode::SERVICE_UNAVAILABLE, problem),
            }
        }
        (&Method::GET, "/metrics") => {
            tower_sse::metrics::record_stats(&bus.stats());
            app.metrics.run_upkeep();
            let mut r = Response::new(Full::new(Bytes::from(app.metrics.render())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (_, p) if p.starts_with("/publish/") => match app.publish.oneshot(req).await {
            Ok(answer) => answer,
            Err(never) => match never {},
        },
        (_, "/publish") => text(StatusCode::NOT_FOUND, "publish with POST /publish/{topic}"),
        (&Method::GET, p) if p.starts_with("/presence/") => {
            crate::presence::get(&bus, req, &app).await
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    })
}

pub(crate) fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
