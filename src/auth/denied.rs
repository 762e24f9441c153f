//! [`Denied`]: a policy's refusal, and the response it becomes.

use std::{borrow::Cow, error::Error as StdError, fmt};

use http::{header, HeaderValue, Response, StatusCode};

use crate::stream::{text_response, EventStream};

/// A refusal from an [`Authorize`](super::Authorize) policy: `401` or `403` with a message for
/// the client.
///
/// # Example
///
/// In a handler that publishes:
///
/// ```
/// use bytes::Bytes;
/// use http::{request::Parts, Response};
/// use http_body_util::Full;
/// use tower_sse::{Authorize, Topic};
///
/// async fn check(
///     policy: &impl Authorize,
///     req: &Parts,
///     topic: &Topic,
/// ) -> Option<Response<Full<Bytes>>> {
///     policy.publish(req, topic).await.err().map(|denied| denied.into_response())
/// }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Denied {
    kind: DeniedKind,
    message: Cow<'static, str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeniedKind {
    /// No credentials at all.
    Unauthenticated,
    /// Credentials that are not valid (malformed, wrongly signed, expired).
    InvalidToken,
    /// Valid credentials that do not allow what was asked.
    Forbidden,
}

impl Denied {
    /// The request carries no credentials: `401` with `WWW-Authenticate: Bearer`.
    pub fn unauthenticated(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(DeniedKind::Unauthenticated, message)
    }

    /// The request's credentials are not valid (malformed, wrongly signed, expired): `401`
    /// with `WWW-Authenticate: Bearer error="invalid_token"`.
    pub fn invalid_token(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(DeniedKind::InvalidToken, message)
    }

    /// The request is authenticated but may not do this: `403`.
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(DeniedKind::Forbidden, message)
    }

    fn new(kind: DeniedKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Whether the client is not (validly) authenticated: a `401`.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self.kind,
            DeniedKind::Unauthenticated | DeniedKind::InvalidToken
        )
    }

    /// Whether the client is authenticated but not allowed: a `403`.
    pub fn is_forbidden(&self) -> bool {
        self.kind == DeniedKind::Forbidden
    }

    /// `401 Unauthorized` or `403 Forbidden`.
    pub fn status_code(&self) -> StatusCode {
        if self.is_forbidden() {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        }
    }

    /// The message for the client.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The `WWW-Authenticate` header a `401` carries (RFC 6750); `None` for a `403`.
    pub fn www_authenticate(&self) -> Option<HeaderValue> {
        match self.kind {
            DeniedKind::Unauthenticated => Some(HeaderValue::from_static("Bearer")),
            DeniedKind::InvalidToken => {
                Some(HeaderValue::from_static(r#"Bearer error="invalid_token""#))
            }
            DeniedKind::Forbidden => None,
        }
    }

    /// A `text/plain` response: the status, `WWW-Authenticate` for a `401`, and the message
    /// (with a final newline) as the body.
    pub fn into_response<B: From<String>>(self) -> Response<B> {
        let mut response = crate::text::plain_text(self.status_code(), self.message.to_string());
        self.decorate(&mut response);
        response
    }

    /// The response an event stream route answers with.
    pub(crate) fn stream_response(&self) -> Response<EventStream> {
        let mut response = text_response(self.status_code(), self.message.to_string());
        self.decorate(&mut response);
        response
    }

    fn decorate<B>(&self, response: &mut Response<B>) {
        *response.status_mut() = self.status_code();
        if let Some(value) = self.www_authenticate() {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
    }
}

impl fmt::Debug for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Denied")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .finish()
    }
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for Denied {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denied_responses() {
        let r: Response<String> = Denied::unauthenticated("who?").into_response();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        assert_eq!(r.body(), "who?\n");
        let r: Response<String> = Denied::invalid_token("expired").into_response();
        assert_eq!(
            r.headers()["www-authenticate"],
            r#"Bearer error="invalid_token""#
        );
        let r: Response<String> = Denied::forbidden("no").into_response();
        assert_eq!(r.status(), 403);
        assert!(!r.headers().contains_key("www-authenticate"));
    }
}
