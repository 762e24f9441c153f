//! Server-Sent Events for tower and hyper services.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
pub mod bus;
mod error;
mod event;
mod future;
mod last_event_id;
mod layer;
mod route;
mod service;
mod stream;

#[doc(inline)]
pub use self::{
    body::SseBody,
    bus::{
        Builder, BusStats, EncodedEvent, EventBus, GapReason, Health, Message, Published,
        ResetReason, ResumeStatus, Subscription, Topic,
    },
    error::{BusError, InvalidEvent, InvalidEventId, InvalidTopic},
    event::Event,
    future::{ResponseFuture, StreamFuture},
    last_event_id::EventId,
    layer::SseLayer,
    service::{Sse, SseService},
    stream::{EventStream, STATUS_EVENT},
};
