//! Authorization of subscribers and publishers.
//!
//! An [`Authorize`] policy decides, from the request (its headers, the extensions your own
//! authentication middleware set, its URI) and the topics asked for, whether a client may
//! subscribe to or publish on those topics. Give one to [`SseLayer::authorize`] or
//! [`SseService::authorize`] and every stream request is checked before it subscribes; await
//! [`Authorize::publish`] in the handler that publishes.
//!
//! A policy answers with a future, so it may ask a database or a session store; one that only
//! reads the request answers at once ([`std::future::Ready`]), as `JwtPolicy` does. Closures
//! `Fn(&Parts, Action, &[Topic]) -> Result<(), Denied>` are policies that answer at once;
//! [`async_fn`] makes one from a closure returning a future.
//!
//! A refusal is a [`Denied`]: `401 Unauthorized` (with `WWW-Authenticate: Bearer`) when the
//! client is not authenticated or its token is invalid, `403 Forbidden` when it is but a topic
//! is not allowed. A stream naming several topics is refused whole when any one of them is not
//! allowed. A policy may grant a stream only until an instant (when the client's token
//! expires, say): the stream then ends at that instant with a comment telling the client to
//! reconnect with a fresh token.
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

use std::{
    fmt,
    future::{ready, Future, Ready},
    pin::Pin,
    sync::Arc,
    time::SystemTime,
};

use http::request::Parts;

use crate::bus::Topic;

mod denied;
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
mod jwt;
mod selector;
mod token;

pub use self::{
    denied::Denied,
    selector::{InvalidSelector, Selector},
    token::{bearer_token, header_token, TOKEN_COOKIE, TOKEN_QUERY_PARAM},
};

#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub use self::jwt::{Claims, InvalidKey, JwtPolicy};

/// A boxed answer of a policy, for policies that await something.
pub type BoxAnswer<T> = Pin<Box<dyn Future<Output = Result<T, Denied>> + Send + 'static>>;

/// Decides whether a request may subscribe to or publish on topics.
///
/// Both methods see the request's [`Parts`]: its headers, its URI and the extensions set by the
/// middleware in front (an authenticated user, say), and answer with a future. Take what you
/// need from the request before the future starts (the future outlives the borrow); a policy
/// that needs nothing else answers with [`std::future::ready`].
///
/// Closures `Fn(&Parts, Action, &[Topic]) -> Result<(), Denied>` implement it (with no
/// expiry), and [`async_fn`] turns a closure returning a future into a policy; implement it
/// yourself to grant a stream until an instant.
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
/// A policy that asks a session store, which it awaits:
///
/// ```
/// use std::{sync::Arc, time::SystemTime};
/// use http::request::Parts;
/// use tower_sse::{auth::BoxAnswer, Authorize, Denied, Grant, Topic};
///
/// # #[derive(Clone)] struct Sessions;
/// # impl Sessions {
/// #     async fn user(&self, _session: &str) -> Option<(String, SystemTime)> { None }
/// # }
/// /// Lets a logged-in user read their own `user:NAME` topic until their session ends.
/// struct OwnTopic {
///     sessions: Sessions,
/// }
///
/// impl Authorize for OwnTopic {
///     type Subscribe = BoxAnswer<Grant>;
///     type Publish = std::future::Ready<Result<(), Denied>>;
///
///     fn subscribe(&self, req: &Parts, topics: &[Topic]) -> Self::Subscribe {
///         let session = tower_sse::auth::bearer_token(req).map(|s| s.into_owned());
///         let (sessions, topics) = (self.sessions.clone(), topics.to_vec());
///         Box::pin(async move {
///             let session = session.ok_or_else(|| Denied::unauthenticated("log in first"))?;
///             let (user, ends) = sessions
///                 .user(&session)
///                 .await
///                 .ok_or_else(|| Denied::invalid_token("unknown session"))?;
///             let own = format!("user:{user}");
///             match topics.iter().find(|t| t.as_str() != own) {
///                 Some(t) => Err(Denied::forbidden(format!("topic {t} is not yours"))),
///                 None => Ok(Grant::until(ends)),
///             }
///         })
///     }
///
///     fn publish(&self, _req: &Parts, _topic: &Topic) -> Self::Publish {
///         std::future::ready(Err(Denied::forbidden("publishing is not allowed")))
///     }
/// }
/// ```
pub trait Authorize: Send + Sync + 'static {
    /// The answer to a stream request.
    type Subscribe: Future<Output = Result<Grant, Denied>> + Send + 'static;
    /// The answer to a publish request.
    type Publish: Future<Output = Result<(), Denied>> + Send + 'static;

    /// Whether the request may open a stream of `topics` (all of them: refuse the whole
    /// stream when any one is not allowed), and until when. The answer is a [`Denied`]
    /// saying why not, or the [`Grant`].
    fn subscribe(&self, request: &Parts, topics: &[Topic]) -> Self::Subscribe;

    /// Whether the request may publish on `topic`. The bus does not call this itself (events
    /// are published by your code): await it in the handler that publishes. Take credentials
    /// from the `Authorization` header only (see above).
    fn publish(&self, request: &Parts, topic: &Topic) -> Self::Publish;
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
    type Subscribe = Ready<Result<Grant, Denied>>;
    type Publish = Ready<Result<(), Denied>>;

    fn subscribe(&self, request: &Parts, topics: &[Topic]) -> Self::Subscribe {
        ready(self(request, Action::Subscribe, topics).map(|()| Grant::new()))
    }

    fn publish(&self, request: &Parts, topic: &Topic) -> Self::Publish {
        ready(self(request, Action::Publish, std::slice::from_ref(topic)))
    }
}

impl<A: Authorize + ?Sized> Authorize for Arc<A> {
    type Subscribe = A::Subscribe;
    type Publish = A::Publish;

    fn subscribe(&self, request: &Parts, topics: &[Topic]) -> Self::Subscribe {
        (**self).subscribe(request, topics)
    }

    fn publish(&self, request: &Parts, topic: &Topic) -> Self::Publish {
        (**self).publish(request, topic)
    }
}

/// A policy from a closure that answers with a future; see [`async_fn`].
#[derive(Clone)]
pub struct AsyncFn<F> {
    f: F,
}

/// Makes a policy of `f`, called with the request, what it wants and its topics, which returns
/// a future (it may await a database). Take what you need from the request before the future
/// starts.
///
/// # Example
///
/// ```
/// use http::request::Parts;
/// use tower_sse::{auth::{self, Action}, Denied, EventBus, Grant, SseLayer, Topic};
///
/// # async fn allowed(_user: Option<String>, _topics: Vec<Topic>) -> bool { true }
/// let policy = auth::async_fn(|req: &Parts, _action: Action, topics: &[Topic]| {
///     let user = req.headers.get("x-user").and_then(|v| v.to_str().ok()).map(str::to_owned);
///     let topics = topics.to_vec();
///     async move {
///         if allowed(user, topics).await {
///             Ok(Grant::new())
///         } else {
///             Err(Denied::forbidden("not allowed"))
///         }
///     }
/// });
/// let layer = SseLayer::new(EventBus::memory()).authorize(policy);
/// # let _ = layer;
/// ```
pub fn async_fn<F, Fut>(f: F) -> AsyncFn<F>
where
    F: Fn(&Parts, Action, &[Topic]) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Grant, Denied>> + Send + 'static,
{
    AsyncFn { f }
}

impl<F, Fut> Authorize for AsyncFn<F>
where
    F: Fn(&Parts, Action, &[Topic]) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Grant, Denied>> + Send + 'static,
{
    type Subscribe = Fut;
    type Publish = BoxAnswer<()>;

    fn subscribe(&self, request: &Parts, topics: &[Topic]) -> Self::Subscribe {
        (self.f)(request, Action::Subscribe, topics)
    }

    fn publish(&self, request: &Parts, topic: &Topic) -> Self::Publish {
        let answer = (self.f)(request, Action::Publish, std::slice::from_ref(topic));
        Box::pin(async move { answer.await.map(|_| ()) })
    }
}

impl<F> fmt::Debug for AsyncFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AsyncFn")
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

/// Any policy, with its answers boxed: what a route keeps.
trait Erased: Send + Sync + 'static {
    fn subscribe(&self, request: &Parts, topics: &[Topic]) -> BoxAnswer<Grant>;
    fn publish(&self, request: &Parts, topic: &Topic) -> BoxAnswer<()>;
}

impl<A: Authorize> Erased for A {
    fn subscribe(&self, request: &Parts, topics: &[Topic]) -> BoxAnswer<Grant> {
        Box::pin(Authorize::subscribe(self, request, topics))
    }

    fn publish(&self, request: &Parts, topic: &Topic) -> BoxAnswer<()> {
        Box::pin(Authorize::publish(self, request, topic))
    }
}

/// The policy a route checks, shared by every clone of a layer or service.
#[derive(Clone)]
pub(crate) struct Policy(Arc<dyn Erased>);

impl Policy {
    pub(crate) fn new(policy: impl Authorize) -> Self {
        Self(Arc::new(policy))
    }

    pub(crate) fn subscribe(&self, request: &Parts, topics: &[Topic]) -> BoxAnswer<Grant> {
        self.0.subscribe(request, topics)
    }

    pub(crate) fn publish(&self, request: &Parts, topic: &Topic) -> BoxAnswer<()> {
        self.0.publish(request, topic)
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Authorize")
    }
}
