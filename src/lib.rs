//! Server-Sent Events for tower and hyper services.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod bus;
mod error;
mod event;
mod last_event_id;

#[doc(inline)]
pub use self::{
    bus::{
        Builder, BusStats, EncodedEvent, EventBus, GapReason, Health, Message, Published,
        ResetReason, ResumeStatus, Subscription, Topic,
    },
    error::{BusError, InvalidEvent, InvalidEventId, InvalidTopic},
    event::Event,
    last_event_id::EventId,
};
