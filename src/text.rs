//! Plain-text answers: what every refusal and error the crate writes looks like.

use http::{header, HeaderValue, Response, StatusCode};

/// A `text/plain` response with `message` (and a final newline) as its body.
pub(crate) fn plain_text<B: From<String>>(
    status: StatusCode,
    message: impl Into<String>,
) -> Response<B> {
    let mut message = message.into();
    message.push('\n');
    let mut response = Response::new(B::from(message));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
