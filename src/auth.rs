//! Authorization of subscribers and publishers.
//!
//! An [`Authorize`] policy decides, from the request (its headers, the extensions your own
//! authentication middleware set, its URI) and the topics asked for, whether a client may
//! subscribe to or publish on those topics. Give one to [`SseLayer::authorize`] or
//! [`SseService::authorize`] and every stream request is checked before it subscribes; call
//! [`Authorize::publish`] from the handler that publishes.
//!
//! A refusal is a [`Denied`]: `401 Unauthorized` (with `WWW-Authenticate: Bearer`) when the
//! client is not authenticated or its token is invalid, `403 Forbidden` when it is but a topic
//! is not allowed. A stream naming several topics is refused whole when any one of them is not
//! allowed. A policy may grant a stream only until an instant (when the client's token
//! expires, say): the stream then ends at that instant with a comment telling the client to
//! reconnect with a fresh token.
//!
//! Closures `Fn(&Parts, Action, &[Topic]) -> Result<(), Denied>` are policies; so is the
//! ready JWT policy `JwtPolicy` (feature `jwt`).
//!
//! [`SseLayer::authorize`]: crate::SseLayer::authorize
//! [`SseService::authorize`]: crate::SseService::authorize
//!
//! # Example
//!
//! A policy that trusts the user your own middleware put into the request's extensions:
//!
//! ```
//! use http::request::Parts;
//! use tower_sse::{auth::Action, Denied, EventBus, SseLayer, Topic};
//!
//! #[derive(Clone)]
//! struct User {
//!     org: String,
//! }
//!
//! let layer = SseLayer::new(EventBus::memory()).authorize(
//!     |req: &Parts, _action: Action, topics: &[Topic]| {
//!         let user = req
//!             .extensions
//!             .get::<User>()
//!             .ok_or_else(|| Denied::unauthenticated("log in first"))?;
//!         let own = format!("{}:", user.org);
//!         match topics.iter().find(|t| !t.as_str().starts_with(&own)) {
//!             Some(topic) => Err(Denied::forbidden(format!("{topic} belongs to another organisation"))),
//!             None => Ok(()),
//!         }
//!     },
//! );
//! # let _ = layer;
//! ```

use std::{borrow::Cow, error::Error as StdError, fmt, str::FromStr, sync::Arc, time::SystemTime};

use http::{header, request::Parts, HeaderValue, Response, StatusCode};

use crate::{
    bus::Topic,
    query::query_value,
    stream::{text_response, EventStream},
};

#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
mod jwt;

#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub use self::jwt::{Claims, InvalidKey, JwtPolicy};

/// The query parameter a token may come in, for clients that cannot set headers
/// (`EventSource`).
pub const TOKEN_QUERY_PARAM: &str = "access_token";

/// The cookie a token may come in.
pub const TOKEN_COOKIE: &str = "sse_token";

/// Decides whether a request may subscribe to or publish on topics.
///
/// Both methods see the request's [`Parts`]: its headers, its URI and the extensions set by the
/// middleware in front (an authenticated user, say). They must not block: they run on the
/// request's task, before the stream is opened.
///
/// Closures `Fn(&Parts, Action, &[Topic]) -> Result<(), Denied>` implement it (with no
/// expiry); implement it yourself to grant a stream until an instant.
///
/// # Where credentials come from
///
/// A subscriber may send its token in the `Authorization` header, the query or a cookie
/// ([`bearer_token`]): a browser's `EventSource` cannot set headers, and a stream only reads.
/// A publish should take credentials from the `Authorization` header only ([`header_token`]),
/// and refuse one that brings them only in a cookie or the query with `401`, telling to send
/// `Authorization: Bearer`: a page on another site can make a visitor's browser send a form
/// `POST` to your publish route, and the browser attaches the visitor's cookies to it (a URL
/// with a token in its query can be planted the same way), while no other site can set the
/// `Authorization` header. `JwtPolicy` (feature `jwt`) works this way; a policy of your
/// own that trusts a session cookie for publishing needs a CSRF defence of its own.
///
/// # Example
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::request::Parts;
/// use tower_sse::{Authorize, Denied, Grant, Topic};
///
/// /// Lets anyone read `public:` topics, for an hour at a time; nobody may publish.
/// struct PublicOnly;
///
/// impl Authorize for PublicOnly {
///     fn subscribe(&self, _req: &Parts, topics: &[Topic]) -> Result<Grant, Denied> {
///         if let Some(topic) = topics.iter().find(|t| !t.as_str().starts_with("public:")) {
///             return Err(Denied::forbidden(format!("topic {topic} is not public")));
///         }
///         Ok(Grant::until(SystemTime::now() + Duration::from_secs(3600)))
///     }
///
///     fn publish(&self, _req: &Parts, _topic: &Topic) -> Result<(), Denied> {
///         Err(Denied::forbidden("publishing is not allowed"))
///     }
/// }
/// ```
pub trait Authorize: Send + Sync + 'static {
    /// Whether the request may open a stream of `topics` (all of them: refuse the whole
    /// stream when any one is not allowed), and until when.
    ///
    /// # Errors
    ///
    /// A [`Denied`] saying why not; it becomes the response.
    fn subscribe(&self, request: &Parts, topics: &[Topic]) -> Result<Grant, Denied>;

    /// Whether the request may publish on `topic`. The bus does not call this itself (events
    /// are published by your code): call it from the handler that publishes. Take credentials
    /// from the `Authorization` header only (see above).
    ///
    /// # Errors
    ///
    /// A [`Denied`] saying why not.
    fn publish(&self, request: &Parts, topic: &Topic) -> Result<(), Denied>;
}

/// What a request wants to do with its topics; passed to closure policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// Open an event stream of the topics.
    Subscribe,
    /// Publish an event on the topic.
    Publish,
}

impl<F> Authorize for F
where
    F: Fn(&Parts, Action, &[Topic]) -> Result<(), Denied> + Send + Sync + 'static,
{
    fn subscribe(&self, request: &Parts, topics: &[Topic]) -> Result<Grant, Denied> {
        self(request, Action::Subscribe, topics).map(|()| Grant::new())
    }

    fn publish(&self, request: &Parts, topic: &Topic) -> Result<(), Denied> {
        self(request, Action::Publish, std::slice::from_ref(topic))
    }
}

impl<A: Authorize + ?Sized> Authorize for Arc<A> {
    fn subscribe(&self, request: &Parts, topics: &[Topic]) -> Result<Grant, Denied> {
        (**self).subscribe(request, topics)
    }

    fn publish(&self, request: &Parts, topic: &Topic) -> Result<(), Denied> {
        (**self).publish(request, topic)
    }
}

/// Permission to open a stream, from [`Authorize::subscribe`]: for as long as the stream lasts,
/// or until an instant (when the client's credentials expire).
///
/// # Example
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_sse::Grant;
///
/// assert_eq!(Grant::new().expires_at(), None);
/// let at = SystemTime::now() + Duration::from_secs(60);
/// assert_eq!(Grant::until(at).expires_at(), Some(at));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Grant {
    expires_at: Option<SystemTime>,
}

impl Grant {
    /// Permission without an end.
    pub fn new() -> Self {
        Self::default()
    }

    /// Permission until `at`: the stream ends then, with a comment telling the client to
    /// reconnect with fresh credentials.
    pub fn until(at: SystemTime) -> Self {
        Self {
            expires_at: Some(at),
        }
    }

    /// When the permission ends, if it does.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }
}

/// A refusal from an [`Authorize`] policy: `401` or `403` with a message for the client.
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
/// fn check(policy: &impl Authorize, req: &Parts, topic: &Topic) -> Option<Response<Full<Bytes>>> {
///     policy.publish(req, topic).err().map(|denied| denied.into_response())
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
        let mut message = self.message.to_string();
        message.push('\n');
        let mut response = Response::new(B::from(message));
        self.decorate(&mut response);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
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

/// A topic selector: an exact topic (`org1:orders`), every topic (`*`), or every topic under a
/// prefix (`org1:*`).
///
/// The rule, so that a selector never grants a topic its author did not mean:
///
/// - without `*`, a selector is a topic and matches that topic only;
/// - `*` alone matches every topic;
/// - otherwise `*` comes last, directly after a separator, one of `: . - _ @ =`, and matches
///   every topic that starts with what comes before it: `org1:*` matches `org1:a` and
///   `org1:b:c`, but not `org10:secrets`. `org1*` is refused (it would match `org10`), as is
///   a `*` anywhere but at the end.
///
/// What comes before `*` follows the topic rule (ASCII letters, digits and `_ - . : @ =`, at
/// most 256 characters).
///
/// # Example
///
/// ```
/// use tower_sse::Selector;
///
/// let org = Selector::new("org1:*")?;
/// assert!(org.matches("org1:orders") && org.matches("org1:eu:orders"));
/// assert!(!org.matches("org10:secrets"));
/// assert!(Selector::new("org1:orders")?.matches("org1:orders"));
/// assert!(Selector::new("*")?.matches("anything"));
/// let refused = Selector::new("org1*").unwrap_err();
/// assert!(refused.to_string().contains("write `org1:*`"));
/// assert!(Selector::new("org1:*:x").is_err());
/// # Ok::<_, tower_sse::InvalidSelector>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Selector {
    /// The topic, or the prefix without its `*`.
    text: Box<str>,
    prefix: bool,
}

impl Selector {
    /// Validates `selector`.
    ///
    /// # Errors
    ///
    /// When `selector` is empty, has `*` anywhere but at the end or after something other than
    /// a separator, or its topic (or prefix) breaks the topic rule.
    pub fn new(selector: &str) -> Result<Self, InvalidSelector> {
        let (text, prefix) = match selector.strip_suffix('*') {
            Some(prefix) => (prefix, true),
            None => (selector, false),
        };
        if text.contains('*') {
            return Err(InvalidSelector::new("`*` may only come last"));
        }
        // `*` alone selects every topic; anything else follows the topic rule.
        if !(prefix && text.is_empty()) {
            Topic::new(text).map_err(InvalidSelector::topic)?;
        }
        if prefix && !text.is_empty() && !text.ends_with(is_separator) {
            return Err(InvalidSelector::unanchored(text));
        }
        Ok(Self {
            text: text.into(),
            prefix,
        })
    }

    /// Whether `topic` is selected: equal to the topic, or starting with the prefix (which ends
    /// with a separator).
    pub fn matches(&self, topic: impl AsRef<str>) -> bool {
        let topic = topic.as_ref();
        if self.prefix {
            topic.starts_with(&*self.text)
        } else {
            topic == &*self.text
        }
    }

    /// Whether this selects every topic with a prefix (it ends with `*`), rather than one topic.
    pub fn is_prefix(&self) -> bool {
        self.prefix
    }
}

/// The characters after which a selector may end in `*`: every topic character that is not a
/// letter or a digit.
fn is_separator(c: char) -> bool {
    matches!(c, ':' | '.' | '-' | '_' | '@' | '=')
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Selector({self})")
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        if self.prefix {
            f.write_str("*")?;
        }
        Ok(())
    }
}

impl FromStr for Selector {
    type Err = InvalidSelector;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for Selector {
    type Error = InvalidSelector;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

/// A string that is not a topic [`Selector`].
#[derive(Clone, PartialEq, Eq)]
pub struct InvalidSelector {
    problem: Cow<'static, str>,
}

impl InvalidSelector {
    fn new(problem: &'static str) -> Self {
        Self {
            problem: Cow::Borrowed(problem),
        }
    }

    fn topic(e: crate::InvalidTopic) -> Self {
        Self {
            problem: Cow::Owned(e.to_string()),
        }
    }

    /// `prefix*` where `prefix` (a valid topic) does not end with a separator.
    fn unanchored(prefix: &str) -> Self {
        Self {
            problem: Cow::Owned(format!(
                "`*` must stand alone or follow a separator, one of `: . - _ @ =`, so that \
                 `{prefix}*` cannot select `{prefix}0` or any longer name; write `{prefix}:*` \
                 for every topic under `{prefix}:`, or `{prefix}` for that topic alone"
            )),
        }
    }
}

impl fmt::Debug for InvalidSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("InvalidSelector")
            .field(&self.problem)
            .finish()
    }
}

impl fmt::Display for InvalidSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid topic selector ({}); a selector is a topic, `*` alone, or a prefix ending \
             in a separator followed by `*`",
            self.problem
        )
    }
}

impl StdError for InvalidSelector {}

/// The token of the request's `Authorization: Bearer TOKEN` header, if any: the only place a
/// publish should take its token from (see [`Authorize`]).
///
/// # Example
///
/// ```
/// use http::Request;
/// use tower_sse::auth::header_token;
///
/// let (parts, ()) = Request::post("/publish/t")
///     .header("authorization", "Bearer abc")
///     .body(())
///     .unwrap()
///     .into_parts();
/// assert_eq!(header_token(&parts), Some("abc"));
///
/// let (parts, ()) = Request::post("/publish/t")
///     .header("cookie", "sse_token=xyz")
///     .body(())
///     .unwrap()
///     .into_parts();
/// assert_eq!(header_token(&parts), None);
/// ```
pub fn header_token(request: &Parts) -> Option<&str> {
    request
        .headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .find_map(|value| {
            let (scheme, token) = value.to_str().ok()?.trim().split_once(' ')?;
            let token = token.trim();
            (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
        })
}

/// The bearer token a request presents to subscribe: in an `Authorization: Bearer TOKEN` header, else in
/// an [`access_token`](TOKEN_QUERY_PARAM) query parameter (for `EventSource`, which cannot set
/// headers), else in a cookie named [`sse_token`](TOKEN_COOKIE).
///
/// Tokens in URLs end up in access logs: prefer short-lived ones there. Do not read a
/// publisher's token with this: use [`header_token`] (see [`Authorize`]).
///
/// # Example
///
/// ```
/// use http::Request;
/// use tower_sse::auth::bearer_token;
///
/// let (parts, ()) = Request::get("/events/t?access_token=abc").body(()).unwrap().into_parts();
/// assert_eq!(bearer_token(&parts).as_deref(), Some("abc"));
///
/// let (parts, ()) = Request::get("/events/t")
///     .header("cookie", "theme=dark; sse_token=xyz")
///     .body(())
///     .unwrap()
///     .into_parts();
/// assert_eq!(bearer_token(&parts).as_deref(), Some("xyz"));
/// ```
pub fn bearer_token(request: &Parts) -> Option<Cow<'_, str>> {
    if let Some(token) = header_token(request) {
        return Some(Cow::Borrowed(token));
    }
    if let Some(token) = query_value(&request.uri, TOKEN_QUERY_PARAM) {
        return Some(token);
    }
    for value in request.headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for cookie in value.split(';') {
            let Some((name, token)) = cookie.split_once('=') else {
                continue;
            };
            if name.trim() != TOKEN_COOKIE {
                continue;
            }
            let token = token.trim();
            let token = token
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or(token);
            if !token.is_empty() {
                return Some(Cow::Borrowed(token));
            }
        }
    }
    None
}

/// The policy a route checks, shared by every clone of a layer or service.
#[derive(Clone)]
pub(crate) struct Policy(Arc<dyn Authorize>);

impl Policy {
    pub(crate) fn new(policy: impl Authorize) -> Self {
        Self(Arc::new(policy))
    }

    pub(crate) fn subscribe(&self, request: &Parts, topics: &[Topic]) -> Result<Grant, Denied> {
        self.0.subscribe(request, topics)
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Authorize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = http::Request::get(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn selectors() {
        let all = Selector::new("*").unwrap();
        assert!(all.matches("anything") && all.is_prefix());
        let exact = Selector::new("a:b").unwrap();
        assert!(exact.matches("a:b") && !exact.matches("a:bc") && !exact.is_prefix());
        let prefix = Selector::new("a:*").unwrap();
        assert!(prefix.matches("a:") && prefix.matches("a:b") && !prefix.matches("b:a"));
        assert!(prefix.matches("a:b:c") && !prefix.matches("ab"));
        assert_eq!(prefix.to_string(), "a:*");
        assert!(Selector::new(&format!("{}:*", "x".repeat(255))).is_ok());
        for bad in ["", "**", "a*b", "*a", "a b*", "é*", &"x".repeat(257)] {
            let err = Selector::new(bad).unwrap_err().to_string();
            assert!(err.contains("invalid topic selector"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_star_follows_a_separator() {
        for sep in [':', '.', '-', '_', '@', '='] {
            let selector = Selector::new(&format!("org1{sep}*")).unwrap();
            assert!(selector.matches(format!("org1{sep}x")), "{sep}");
            assert!(!selector.matches("org10:x"), "{sep}");
        }
        for bad in [
            "org1*",
            "a*",
            "org1:x*",
            "9*",
            &format!("{}*", "x".repeat(256)),
        ] {
            let err = Selector::new(bad).unwrap_err().to_string();
            assert!(
                err.contains("must stand alone or follow a separator"),
                "{bad}: {err}"
            );
        }
        let err = Selector::new("org1*").unwrap_err().to_string();
        assert!(err.contains("write `org1:*`"), "{err}");
    }

    #[test]
    fn token_sources_in_order() {
        let p = parts(
            "/e?access_token=q",
            &[("authorization", "Bearer h"), ("cookie", "sse_token=c")],
        );
        assert_eq!(bearer_token(&p).as_deref(), Some("h"));
        let p = parts(
            "/e?access_token=q",
            &[("authorization", "Basic xyz"), ("cookie", "sse_token=c")],
        );
        assert_eq!(bearer_token(&p).as_deref(), Some("q"));
        let p = parts("/e?x=1", &[("cookie", "a=b; sse_token=\"c\"")]);
        assert_eq!(bearer_token(&p).as_deref(), Some("c"));
        let p = parts("/e", &[("authorization", "bearer   t  ")]);
        assert_eq!(bearer_token(&p).as_deref(), Some("t"));
        assert_eq!(bearer_token(&parts("/e?access_token=", &[])), None);
        assert_eq!(
            bearer_token(&parts("/e", &[("cookie", "sse_token=")])),
            None
        );
    }

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
