//! Reading a topic's stream on one server, for the pipeline's fills and for replays.

use std::{sync::Arc, time::Duration};

use crate::bus::{
    redis::{
        entries::{read_page, Numbering, Page, Read, StreamKeys},
        replay::Pages,
        server::connection::Shared,
    },
    Topic,
};

pub(super) struct StreamPages {
    pub(super) shared: Arc<Shared>,
    pub(super) idle_ttl: Duration,
    pub(super) timeout: Duration,
}

impl Pages for StreamPages {
    async fn read_page(&self, topic: &Topic, after: u64, count: usize) -> Result<Page, String> {
        let mut conn = self
            .shared
            .connection()
            .ok_or_else(|| "not connected to Redis".to_owned())?;
        let names = &self.shared.names;
        let stream = names.stream(topic);
        let keys = StreamKeys {
            stream: &stream,
            state: &names.state,
            clock: Some(&names.clock),
        };
        let read = Read {
            topic,
            after,
            count,
            idle_ttl: self.idle_ttl,
            timeout: self.timeout,
            numbering: Numbering::Global,
        };
        read_page(&mut conn, keys, read).await
    }
}
