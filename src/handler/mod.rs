//! [`Streams`]: serving event streams from your own handlers with the layer's settings.

use std::{fmt, sync::Arc};

use crate::{
    bus::{EventBus, Subscription},
    route::Route,
    stream::EventStream,
};

pub(crate) mod error;

pub use self::error::StreamError;

/// What a handler needs to serve event streams as the [`SseLayer`](crate::SseLayer) in front of
/// it does: its bus, its stream settings (keep-alive, retry, write delay, write timeout) and a
/// slot under its [`max_streams`](crate::SseLayer::max_streams) limit, shared with the layer's
/// own route. The layer puts one into every request's extensions.
///
/// A handler authorizes the request itself (it knows its users), subscribes through
/// [`subscribe`](Self::subscribe), and shapes the stream further with
/// [`EventStream::expires_at`] (the end of the client's grant), [`EventStream::filter`] or
/// [`EventStream::map_events`] (what this client may see).
///
/// # Example
///
/// ```
/// use http::{Request, Response};
/// use tower_sse::{EventStream, Streams};
///
/// async fn my_notifications<B>(req: Request<B>) -> Response<EventStream> {
///     let streams = req.extensions().get::<Streams>().expect("behind SseLayer").clone();
///     let user = "alice"; // from your own authentication
///     let resume = tower_sse::last_event_id(req.headers(), req.uri());
///     match streams.subscribe([format!("user:{user}")], resume.as_deref()).await {
///         Ok(stream) => stream.into_response(),
///         Err(e) => e.into_response(),
///     }
/// }
/// # let _ = my_notifications::<()>;
/// ```
#[derive(Clone)]
pub struct Streams {
    route: Arc<Route>,
}

impl Streams {
    pub(crate) fn new(route: Arc<Route>) -> Self {
        Self { route }
    }

    /// The bus.
    pub fn bus(&self) -> &EventBus {
        &self.route.bus
    }

    /// Takes a slot under the stream limit, subscribes to `topics` (resuming after
    /// `resume_from`, a `Last-Event-ID`) and returns the stream with the layer's settings.
    ///
    /// # Errors
    ///
    /// When the stream limit is reached, or the bus refuses the subscription (see
    /// [`EventBus::subscribe`]); [`StreamError::into_response`] answers either.
    pub async fn subscribe<I>(
        &self,
        topics: I,
        resume_from: Option<&str>,
    ) -> Result<EventStream, StreamError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let permit = self.route.slot()?;
        let subscription = self.route.bus.subscribe(topics, resume_from).await?;
        Ok(self.route.open(subscription, permit))
    }

    /// The stream of a subscription made elsewhere, with the layer's settings and a slot under
    /// its stream limit.
    ///
    /// # Errors
    ///
    /// When the stream limit is reached.
    pub fn stream(&self, subscription: Subscription) -> Result<EventStream, StreamError> {
        let permit = self.route.slot()?;
        Ok(self.route.open(subscription, permit))
    }
}

impl fmt::Debug for Streams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streams")
            .field("bus", &self.route.bus)
            .finish()
    }
}
