//! `GET /presence/{topic}`: how many streams follow the topic, on every instance.

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use tower_sse::{Authorize, EventBus, Topic};

use crate::routes::{text, App};

/// Answers `200` with `{"topic":"t","subscribers":N,"complete":true}`; `complete` is false when
/// the other instances' counts could not be read and `subscribers` is this instance's alone.
/// With `--jwt-secret` the token must allow subscribing to the topic.
pub(crate) async fn get(
    bus: &EventBus,
    req: Request<Incoming>,
    app: &App,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let topic = path.strip_prefix("/presence/").unwrap_or(path);
    let topic = percent_decode_str(topic).decode_utf8_lossy();
    let topic = match Topic::new(&topic) {
        Ok(topic) => topic,
        Err(e) => return text(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let (parts, _body) = req.into_parts();
    if let Some(policy) = &app.policy {
        if let Err(denied) = policy.subscribe(&parts, std::slice::from_ref(&topic)).await {
            return denied.into_response();
        }
    }
    let presence = match bus.presence(topic.as_str()).await {
        Ok(presence) => presence,
        Err(e) => return text(e.status_code(), &e.to_string()),
    };
    let body = format!(
        "{{\"topic\":\"{}\",\"subscribers\":{},\"complete\":{}}}",
        presence.topic().as_str(),
        presence.subscribers(),
        presence.is_complete()
    );
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
