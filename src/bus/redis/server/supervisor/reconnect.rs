//! Losing the connection, and connecting (again): the new connection subscribes, reads the
//! state, and tells the receiver before any message it heard meanwhile.

use std::{convert::Infallible, sync::Arc};

use ::redis::{aio::MultiplexedConnection, AsyncConnectionConfig, PushInfo};
use tokio::time::{timeout, Instant};

use super::{Interrupt, Supervisor};
use crate::bus::{
    redis::{
        backoff::backoff,
        server::connection::{Command, Held, Receiver, MAX_HELD_BYTES, MAX_HELD_MESSAGES},
        state::State,
        SubscribeMode,
    },
    Topic,
};

impl<R: Receiver> Supervisor<R> {
    /// Forgets the broken connection; the backend keeps its state until the reconnect tells it
    /// what was missed.
    pub(super) fn lost(&mut self, reason: String) {
        tracing::warn!(
            address = %self.address,
            %reason,
            "lost the connection to Redis; reconnecting"
        );
        for topic in &self.subscribed {
            if !self.interest.contains_key(topic) {
                // Idle: it will not be subscribed again.
                self.receiver.not_listening(topic);
            }
        }
        self.subscribed.clear();
        self.idle.clear();
        self.conn = None;
        let mut link = self.shared.link();
        link.generation += 1;
        link.conn = None;
        link.held = None;
        link.problem = Some(format!("connection to Redis lost ({reason}); reconnecting"));
    }

    /// Tries to connect until it works, handling commands in between.
    pub(super) async fn reconnect(&mut self) -> Result<(), Interrupt> {
        let mut attempt: u32 = 0;
        loop {
            let delay = backoff(self.backoff_min, self.backoff_max, attempt);
            let wake_at = Instant::now() + delay;
            loop {
                let command = tokio::select! {
                    command = self.commands.recv() => command,
                    () = tokio::time::sleep_until(wake_at) => break,
                };
                match command {
                    Some(command) => self.handle_while_down(command)?,
                    None => return Err(Interrupt::Stop),
                }
            }
            match self.connect().await {
                Ok(()) => {
                    crate::metrics::redis_reconnected();
                    return Ok(());
                }
                Err(reason) => {
                    if attempt.is_multiple_of(10) {
                        tracing::warn!(%reason, attempt, "reconnecting to Redis failed");
                    } else {
                        tracing::debug!(%reason, attempt, "reconnecting to Redis failed");
                    }
                    self.shared.link().problem = Some(format!("{reason}; reconnecting"));
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// While disconnected, subscribers are counted and go ahead at once; the topics are
    /// subscribed to when the connection is back.
    fn handle_while_down(&mut self, command: Command) -> Result<(), Interrupt> {
        match command {
            Command::Want { topics, ready } => {
                let mut fresh = Vec::new();
                topics.into_iter().for_each(|t| self.want(t, &mut fresh));
                drop(ready);
            }
            Command::Release { topics } => topics.into_iter().for_each(|t| self.release(t)),
            Command::Lost { .. } => {}
            Command::Close => self.closing = true,
            Command::Stop => return Err(Interrupt::Stop),
        }
        Ok(())
    }

    /// Opens a connection, subscribes, reads the state, tells the receiver, and makes the
    /// connection available to requests.
    pub(super) async fn connect(&mut self) -> Result<(), String> {
        let generation = {
            let mut link = self.shared.link();
            link.generation += 1;
            link.held = Some(Held::default());
            link.generation
        };
        self.generation = generation;
        let result = self.try_connect(generation).await;
        if result.is_err() {
            let mut link = self.shared.link();
            if link.generation == generation {
                link.held = None;
            }
        }
        result
    }

    async fn try_connect(&mut self, generation: u64) -> Result<(), String> {
        let conn = self.open(generation).await?;
        let mut requests = conn.clone();
        let topics = self.subscribe_all(&mut requests).await?;
        let state = self.read_state(&mut requests).await?;
        self.go_live(conn.clone(), state, &topics)?;
        self.subscribed = topics.into_iter().collect();
        self.conn = Some(conn);
        tracing::info!(address = %self.address, "connected to Redis");
        Ok(())
    }

    /// Opens a connection whose pushes go to the receiver, tagged with `generation`.
    async fn open(&self, generation: u64) -> Result<MultiplexedConnection, String> {
        let shared = Arc::downgrade(&self.shared);
        let receiver = Arc::downgrade(&self.receiver);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None)
            .set_push_sender(move |info: PushInfo| -> Result<(), Infallible> {
                if let (Some(shared), Some(receiver)) = (shared.upgrade(), receiver.upgrade()) {
                    shared.on_push(&*receiver, generation, info);
                }
                Ok(())
            });
        let connecting = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        match timeout(self.connect_timeout, connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(format!("cannot connect to Redis at {}: {e}", self.address)),
            Err(_elapsed) => Err(format!(
                "cannot connect to Redis at {}: no answer within {:?}",
                self.address, self.connect_timeout
            )),
        }
    }

    /// Listens to what the mode says: the pattern, or every topic with local subscribers
    /// (returned).
    async fn subscribe_all(&self, conn: &mut MultiplexedConnection) -> Result<Vec<Topic>, String> {
        if self.closing {
            return Ok(Vec::new());
        }
        match self.mode {
            SubscribeMode::Pattern => {
                let pattern = self.shared.names.pattern.as_str();
                self.request("PSUBSCRIBE", conn.psubscribe(pattern)).await?;
                Ok(Vec::new())
            }
            SubscribeMode::Interest => {
                let topics: Vec<Topic> = self.interest.keys().cloned().collect();
                if !topics.is_empty() {
                    let channels = self.channels(&topics);
                    self.request("SUBSCRIBE", conn.subscribe(channels.as_slice()))
                        .await?;
                }
                Ok(topics)
            }
        }
    }

    /// Tells the receiver, passes on the messages held meanwhile, and lets requests use the
    /// connection, all under the link's lock.
    fn go_live(
        &self,
        conn: MultiplexedConnection,
        state: State,
        topics: &[Topic],
    ) -> Result<(), String> {
        let mut link = self.shared.link();
        let held = link.held.take().unwrap_or_default();
        if held.overflowed() {
            return Err(format!(
                "more than {MAX_HELD_MESSAGES} messages or {} MiB arrived while connecting",
                MAX_HELD_BYTES >> 20
            ));
        }
        self.receiver.connected(state, topics);
        for (topic, payload) in held.into_messages() {
            self.receiver.message(topic, payload, &conn);
        }
        link.conn = Some(conn);
        link.problem = None;
        Ok(())
    }
}
