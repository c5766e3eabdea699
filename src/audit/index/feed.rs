//! The indexer: a durable consumer of the witness stream feeding the index (`Indexer`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures::StreamExt;

use super::{feed, month_of, AuditIndex, IndexError, Intake, Step};
use crate::telemetry::Metrics;

/// Feeds the index from the witness stream (see the module documentation).
pub struct Indexer {
    index: Arc<AuditIndex>,
    /// The connection to NATS.
    link: crate::link::nats::NatsLink,
    /// The witness stream.
    stream: String,
    /// The durable consumer's name (one per index database).
    consumer: String,
    /// Drop months older than this many (0: keep all).
    retain_months: u32,
    node_keys: HashMap<String, ed25519_dalek::VerifyingKey>,
    metrics: Arc<Metrics>,
}

/// The witness stream and consumer an [`Indexer`] reads.
#[derive(Clone, Debug)]
pub struct FeedConfig {
    /// The connection to NATS (URL, TLS, credentials).
    pub link: crate::link::nats::NatsLink,
    /// The witness stream (`POPGW_AUDIT`).
    pub stream: String,
    /// The durable consumer (`popgw-index`): one per index database.
    pub consumer: String,
    /// Months of records kept (0: all).
    pub retain_months: u32,
    /// Each node's checkpoint public key: only records under a seal made by their node's
    /// key are indexed (see [`Intake`]); a node without a key is never indexed.
    pub node_keys: HashMap<String, ed25519_dalek::VerifyingKey>,
}

/// Messages indexed in one transaction at most.
const MESSAGES_PER_COMMIT: usize = 256;

impl Indexer {
    /// An indexer feeding `index` from `feed`.
    pub fn new(index: Arc<AuditIndex>, feed: FeedConfig, metrics: Arc<Metrics>) -> Indexer {
        Indexer {
            index,
            link: feed.link,
            stream: feed.stream,
            consumer: feed.consumer,
            retain_months: feed.retain_months,
            node_keys: feed.node_keys,
            metrics,
        }
    }

    /// Indexes until `stop` resolves; NATS or PostgreSQL going away is retried with
    /// backoff (one warning per outage), never fatal.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        futures::pin_mut!(stop);
        let mut backoff = Duration::from_millis(200);
        let mut warned = false;
        loop {
            let session = self.session(&mut warned);
            tokio::select! {
                _ = &mut stop => return,
                result = session => {
                    let Err(e) = result;
                    self.metrics.index_up.set(0);
                    if !warned {
                        tracing::warn!(error = %e, "audit indexer interrupted; retrying");
                        warned = true;
                    }
                }
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Runs the retention once (and then hourly from [`Indexer::run`]).
    async fn retention(&self) -> Result<(), IndexError> {
        if self.retain_months == 0 {
            return Ok(());
        }
        let now = month_of(chrono::Utc::now().timestamp_millis());
        let dropped = self
            .index
            .drop_months_before(now - self.retain_months as i32)
            .await?;
        if !dropped.is_empty() {
            tracing::info!(tables = ?dropped, "audit index retention dropped whole months");
        }
        Ok(())
    }

    async fn session(&self, warned: &mut bool) -> Result<std::convert::Infallible, IndexError> {
        self.index.migrate().await?;
        let client = self
            .link
            .connect(&format!("popgw indexer {}", self.consumer))
            .await
            .map_err(feed("connect"))?;
        let js = jetstream::new(client);
        let stream = js
            .get_stream(&self.stream)
            .await
            .map_err(|e| feed("stream")(format!("{}: {e}", self.stream)))?;
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                &self.consumer,
                pull::Config {
                    durable_name: Some(self.consumer.clone()),
                    description: Some("popgw central audit index".into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    // A message taken by an indexer that died unacknowledged comes back
                    // after this (a commit takes milliseconds).
                    ack_wait: Duration::from_secs(10),
                    max_ack_pending: 100_000,
                    deliver_policy: jetstream::consumer::DeliverPolicy::All,
                    ..Default::default()
                },
            )
            .await
            .map_err(feed("consumer"))?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(MESSAGES_PER_COMMIT)
            .messages()
            .await
            .map_err(feed("consume"))?;
        let mut intake = Intake::new(self.node_keys.clone(), self.index.heads().await?);
        // Messages taken and not yet acknowledged (held parts of a batch among them).
        let mut waiting = HashMap::new();
        self.retention().await?;
        let mut last_retention = tokio::time::Instant::now();
        if std::mem::take(warned) {
            tracing::info!("audit indexer running again");
        }
        self.metrics.index_up.set(1);
        let mut last_pending = tokio::time::Instant::now() - Duration::from_secs(1);
        loop {
            // Held parts whose following record is already indexed (they came back after
            // their sealed successor was committed) are released.
            for (node, seq, prev) in intake.held_tails() {
                let step = match self.index.prev_of(&node, seq).await? {
                    Some(indexed) if indexed == prev => intake.release_covered(&node, seq, &prev),
                    Some(_) => intake.refuse_forked(&node, seq),
                    None => continue, // its seal may still come
                };
                self.commit(step, &mut waiting).await?;
            }
            // How far behind the stream the index is, at most once a second.
            if last_pending.elapsed() >= Duration::from_secs(1) {
                if let Ok(info) = consumer.get_info().await {
                    let pending = info.num_pending + info.num_ack_pending as u64;
                    self.metrics.index_pending.set(pending as i64);
                }
                last_pending = tokio::time::Instant::now();
            }
            let first = tokio::time::timeout(Duration::from_secs(1), messages.next()).await;
            let first = match first {
                Err(_) => continue, // quiet: nothing to index
                Ok(None) => return Err(feed("consume")("the stream ended")),
                Ok(Some(m)) => m.map_err(feed("consume"))?,
            };
            let mut batch = vec![first];
            // Whatever else is already here, up to a commit's worth.
            while batch.len() < MESSAGES_PER_COMMIT {
                match tokio::time::timeout(Duration::from_millis(5), messages.next()).await {
                    Ok(Some(m)) => batch.push(m.map_err(feed("consume"))?),
                    Ok(None) => return Err(feed("consume")("the stream ended")),
                    Err(_) => break,
                }
            }
            let mut all = Step::default();
            for message in batch {
                let stream_seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
                let step = intake.take(stream_seq, message.subject.as_str(), &message.payload);
                all.ready.extend(step.ready);
                all.problems.extend(step.problems);
                all.settled.extend(step.settled);
                waiting.insert(stream_seq, message);
            }
            self.commit(all, &mut waiting).await?;
            if last_retention.elapsed() > Duration::from_secs(3600) {
                self.retention().await?;
                last_retention = tokio::time::Instant::now();
            }
        }
    }

    /// Indexes a step's records and problems in one transaction, then acknowledges the
    /// messages it settled (a crash before the acknowledgement redelivers them, and the
    /// redelivery inserts nothing new).
    async fn commit(
        &self,
        step: Step,
        waiting: &mut HashMap<u64, jetstream::Message>,
    ) -> Result<(), IndexError> {
        for (node, stream_seq, problem) in &step.problems {
            // Node ids and reasons only: never a record's content.
            tracing::warn!(node = %node, stream_seq, problem = %problem, "audit index: message not indexed");
        }
        let started = std::time::Instant::now();
        let inserted = self.index.insert(&step.ready, &step.problems).await?;
        self.metrics.index_records.inc_by(inserted);
        self.metrics
            .index_commit_seconds
            .observe(started.elapsed().as_secs_f64());
        for stream_seq in step.settled {
            if let Some(message) = waiting.remove(&stream_seq) {
                message.ack_with(AckKind::Ack).await.map_err(feed("ack"))?;
            }
        }
        Ok(())
    }
}
