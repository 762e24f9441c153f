//! `POST /publish/{topic}`: the body is the event's data, `?event=NAME` its type.

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use tower_sse::{Authorize, Event, EventBus, Topic};

use crate::routes::{text, App};

pub(crate) async fn publish(
    bus: &EventBus,
    topic: &str,
    req: Request<Incoming>,
    app: &App,
) -> Response<Full<Bytes>> {
    let max_event_bytes = app.max_event_bytes;
    let event_type = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "event")
            .map(|(_, v)| v.into_owned())
    });
    let topic = match Topic::new(topic) {
        Ok(topic) => topic,
        Err(e) => return text(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let (parts, body) = req.into_parts();
    if let Some(policy) = &app.policy {
        if let Err(denied) = policy.publish(&parts, &topic).await {
            return denied.into_response();
        }
    }
    let body = match Limited::new(body, max_event_bytes).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("event data is larger than the limit of {max_event_bytes} bytes"),
            )
        }
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("cannot read body: {e}")),
    };
    let Ok(data) = String::from_utf8(body.to_vec()) else {
        return text(StatusCode::BAD_REQUEST, "event data must be UTF-8 text");
    };
    let mut event = Event::new(data);
    if let Some(name) = event_type.filter(|n| !n.is_empty()) {
        event = match event.event(name) {
            Ok(event) => event,
            Err(e) => return text(StatusCode::BAD_REQUEST, &e.to_string()),
        };
    }
    match bus.publish(topic, event).await {
        Ok(published) => {
            let body = format!(
                "{{\"id\":\"{}\",\"local_only\":{}}}",
                published.id(),
                published.is_local_only()
            );
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = StatusCode::ACCEPTED;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => text(e.status_code(), &e.to_string()),
    }
}
