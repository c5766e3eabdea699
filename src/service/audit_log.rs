//! `popgw.v1.AuditLog`: the operators' view of the audit log (operator role only).
//! Reading the log is itself audited.

use crate::policy::Rpc;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Disclosure, Gateway, Outcome, RequestCtx};
use crate::audit::{self, StoredRecord};
use crate::cache::CacheOutcome;
use crate::error::{GatewayError, StreamEnd};
use crate::proto::gateway as pb;
use crate::proto::gateway::audit_log_server::AuditLog;
use crate::validation::{self};

/// The AuditLog service.
#[derive(Clone)]
pub struct AuditLogService {
    gw: Arc<Gateway>,
}

impl AuditLogService {
    /// A service over the shared gateway state.
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self { gw }
    }
}

/// A stored record as the API returns it.
pub fn to_pb(r: &StoredRecord) -> pb::AuditRecord {
    let b = &r.body;
    pb::AuditRecord {
        seq: b.seq,
        time_unix_ms: b.time_unix_ms,
        node: b.node.clone(),
        request_id: b.request_id.clone(),
        client: b.client.clone(),
        rpc: b.rpc.clone(),
        procedure: b.procedure.clone(),
        case_id: b.case_id.clone(),
        subject: b.subject.clone(),
        fields: b.fields.clone(),
        outcome: b.outcome.clone(),
        code: b.code.clone(),
        rule: b.rule.clone(),
        cache: b.cache.clone(),
        latency_us: b.latency_us,
        prev_hash: b.prev.clone(),
        hash: r.hash.clone(),
        detail: b.detail.clone(),
        json: r.json.clone(),
        related: b.related.clone(),
    }
}

pub use crate::audit::Filter;

type RecordStream = Pin<Box<dyn Stream<Item = Result<pb::AuditRecord, Status>> + Send + 'static>>;

impl Gateway {
    fn audit_filter(&self, req: &pb::AuditQueryRequest) -> Result<Filter, GatewayError> {
        let subject = if req.personal_id.trim().is_empty() {
            None
        } else {
            let id = validation::parse_declared_id(&req.personal_id, true)?;
            Some(self.subject(id.digits()))
        };
        if !req.cache.is_empty() && !CacheOutcome::WORDS.contains(&req.cache.as_str()) {
            return Err(validation::InvalidField {
                field: "cache",
                reason: "must be hit, miss, coalesced, stale or none".into(),
            }
            .into());
        }
        Ok(Filter {
            cache: req.cache.clone(),
            from_ms: req.from_unix_ms,
            to_ms: req.to_unix_ms,
            client: req.client.clone(),
            procedure: req.procedure.clone(),
            // Dossier numbers are recorded as pseudonyms: the query's is made the same way.
            case_id: (!req.case_id.trim().is_empty())
                .then(|| self.pseudonyms.case_pseudonym(&req.case_id)),
            subject,
            outcome: req.outcome.clone(),
        })
    }
}

#[tonic::async_trait]
impl AuditLog for AuditLogService {
    type QueryStream = RecordStream;

    async fn query(
        &self,
        request: Request<pb::AuditQueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        let gw = self.gw.clone();
        let identity = super::early::reached(&request).identity;
        let request = request.into_inner();
        // Run to its record even if the operator gives up: the search is always recorded.
        let (permit, filter, limit) = super::detached(
            &self.gw,
            Rpc::AuditQuery,
            identity.clone(),
            String::new(),
            Box::pin(async move {
                let mut ctx: RequestCtx = gw.begin(Rpc::AuditQuery, identity, None);
                let admitted = gw
                    .admit(&ctx)
                    .and_then(|_| gw.audit_filter(&request))
                    .and_then(|filter| Ok((gw.operator_call()?, filter)));
                let result = admitted.map(|(permit, filter)| {
                    ctx.subject = filter.subject.clone();
                    // Capped server-side: 0 ("no limit") and anything above mean the cap.
                    let limit = match request.limit as usize {
                        0 => gw.max_query_results,
                        n => n.min(gw.max_query_results),
                    };
                    (
                        (permit, filter, limit),
                        Disclosure::of(Outcome::Queried, &["audit_records"]),
                    )
                });
                // The record is durable before the first result leaves.
                gw.finish(ctx, result).await
            }),
        )
        .await?;
        // Results stream as the files are read, one segment at a time, through a bounded
        // channel: memory holds a window, not every match; an operator who leaves stops
        // the scan at the next match.
        let (tx, rx) = mpsc::channel(256);
        if let Some(index) = self.gw.index.clone() {
            // The central index: every node's records, one indexed query.
            tokio::spawn(async move {
                let _permit = permit;
                let (rows_tx, mut rows) = mpsc::channel(256);
                let out = tx.clone();
                // Owns the receiving end: when the operator leaves, it is dropped and the
                // query stops at its next row, giving its connection back.
                let forward = async move {
                    while let Some(r) = rows.recv().await {
                        if out.send(Ok(to_pb(&r))).await.is_err() {
                            break;
                        }
                    }
                };
                let (queried, ()) = tokio::join!(
                    async move { index.query(&filter, limit, &rows_tx).await },
                    forward
                );
                if let Err(e) = queried {
                    tracing::warn!(error = %e, "AuditLog.Query: the audit index did not answer");
                    let _ = tx.send(Err(StreamEnd::IndexDown(e).into())).await;
                }
            });
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
        }
        let dir = self.gw.audit.dir().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut sent = 0usize;
            let scanned = audit::scan_records(&dir, 1, |r| {
                if !filter.accepts(&r.body) {
                    return !tx.is_closed();
                }
                if tx.blocking_send(Ok(to_pb(&r))).is_err() {
                    return false;
                }
                sent += 1;
                sent < limit
            });
            if scanned.is_err() {
                let _ = tx.blocking_send(Err(StreamEnd::LogUnreadable.into()));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchStream = RecordStream;

    async fn watch(
        &self,
        request: Request<pb::AuditWatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let ctx = self.gw.begin(
            Rpc::AuditWatch,
            super::early::reached(&request).identity,
            None,
        );
        let from = request.into_inner().from_seq;
        let result = self.gw.admit(&ctx).and_then(|_| {
            Ok((
                self.gw.operator_call()?,
                Disclosure::of(Outcome::Watching, &["audit_records"]),
            ))
        });
        // Subscribe before reading the backlog so nothing falls between the two.
        let mut live = self.gw.audit.subscribe();
        let permit = self.gw.finish(ctx, result).await?;
        let dir = self.gw.audit.dir().to_path_buf();
        let (tx, rx) = mpsc::channel(256);
        let mut stopping = self.gw.stopping.subscribe();
        tokio::spawn(async move {
            let _permit = permit;
            // The backlog, streamed from the files one segment at a time.
            let backlog_tx = tx.clone();
            let start = from.max(1);
            let backlog_stop = stopping.clone();
            let scanned = tokio::task::spawn_blocking(move || {
                let mut last = None;
                let result = audit::scan_records(&dir, start, |r| {
                    last = Some(r.body.seq);
                    // Waits for a slow reader (no polling); ends when the reader goes, or
                    // at shutdown, when the stream is dropped with its connection.
                    !*backlog_stop.borrow() && backlog_tx.blocking_send(Ok(to_pb(&r))).is_ok()
                });
                result.map(|()| last)
            })
            .await;
            let mut next = match scanned {
                Ok(Ok(last)) => last.map_or(start, |s| s + 1),
                _ => {
                    let _ = tx.send(Err(StreamEnd::LogUnreadable.into())).await;
                    return;
                }
            };
            if tx.is_closed() {
                return;
            }
            loop {
                let received = tokio::select! {
                    r = live.recv() => r,
                    // The operator left: give the permit back now, not at the next record.
                    _ = tx.closed() => return,
                    // The gateway is stopping: end the stream so shutdown is not held up.
                    _ = super::stopped(&mut stopping) => {
                        let _ = tx.send(Err(StreamEnd::ShuttingDown { resume: "resume with from_seq" }.into())).await;
                        return;
                    }
                };
                match received {
                    Ok(r) if r.body.seq < next => continue,
                    Ok(r) => {
                        next = r.body.seq + 1;
                        let sent = tokio::select! {
                            sent = tx.send(Ok(to_pb(&r))) => sent.is_ok(),
                            _ = super::stopped(&mut stopping) => false,
                        };
                        if !sent {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(StreamEnd::Lagged { behind: n, next }.into()))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn head(
        &self,
        request: Request<pb::AuditHeadRequest>,
    ) -> Result<Response<pb::AuditCheckpoint>, Status> {
        let ctx = self.gw.begin(
            Rpc::AuditHead,
            super::early::reached(&request).identity,
            None,
        );
        let result = self.gw.admit(&ctx).and_then(|_| {
            self.gw
                .audit
                .head()
                .map(|cp| (cp, Disclosure::of(Outcome::Read, &[])))
                .ok_or(GatewayError::NotFound("no checkpoint signed yet"))
        });
        let cp = self.gw.finish(ctx, result).await?;
        let public_key = self.gw.audit.public_key().to_string();
        let witnessed_seq = self.gw.witnessed.as_ref().map(|status| status.acked());
        let witness_alarm = self
            .gw
            .witnessed
            .as_ref()
            .and_then(|status| status.alarm())
            .unwrap_or_default();
        let witness_lag = witnessed_seq.map_or(0, |w| self.gw.audit.last_seq().saturating_sub(w));
        Ok(Response::new(pb::AuditCheckpoint {
            seq: cp.seq,
            head_hash: cp.head_hash,
            time_unix_ms: cp.time_unix_ms,
            node: cp.node,
            signature: cp.signature,
            public_key,
            witnessed: witnessed_seq.is_some(),
            witnessed_seq: witnessed_seq.unwrap_or(0),
            witness_lag,
            witness_alarm,
        }))
    }

    async fn verify(
        &self,
        request: Request<pb::AuditVerifyRequest>,
    ) -> Result<Response<pb::AuditVerifyReport>, Status> {
        super::unary(
            &self.gw,
            Rpc::AuditVerify,
            request,
            |_| "",
            |gw, ctx, _req| async move {
                let result = match gw.admit(&ctx) {
                    Ok(_) => gw.verify_folder().await,
                    Err(e) => Err(e),
                };
                (ctx, result)
            },
        )
        .await
    }
}

/// Readings of the folder, 200 ms apart, before a break is reported.
const VERIFY_READINGS: usize = 3;

impl Gateway {
    /// Verifies this node's audit folder against the key the log signs with in memory,
    /// one verification at a time. A break is an answer, recorded as BROKEN with what
    /// broke (the verifier's messages name seqs, files and hashes, never a value).
    async fn verify_folder(&self) -> Result<(pb::AuditVerifyReport, Disclosure), GatewayError> {
        let _permit = self
            .verify_calls
            .clone()
            .try_acquire_owned()
            .map_err(|_| GatewayError::VerifyRunning)?;
        let key = audit::parse_public_key(self.audit.public_key()).ok_or(GatewayError::Internal)?;
        let dir = self.audit.dir().to_path_buf();
        let started = std::time::Instant::now();
        let verdict = tokio::task::spawn_blocking(move || {
            // The folder is live: a batch caught half-written, or retention between the
            // reads of checkpoints.log and of the segments, looks like a break for a
            // moment. A break is one that stands in every reading.
            let mut verdict = audit::verify_dir(&dir, Some(&key));
            for _ in 1..VERIFY_READINGS {
                if verdict.is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
                verdict = audit::verify_dir(&dir, Some(&key));
            }
            verdict
        })
        .await
        .map_err(|_| GatewayError::Internal)?;
        let mut report = pb::AuditVerifyReport {
            node: self.audit.node().to_string(),
            took_ms: started.elapsed().as_millis() as u64,
            ..Default::default()
        };
        let disclosure = match verdict {
            Ok(v) => {
                report.intact = true;
                report.records = v.records;
                report.segments = v.segments as u64;
                report.checkpoints = v.checkpoints as u64;
                report.last_seq = v.last_seq;
                report.head_hash = v.head_hash;
                report.unsigned_tail = v.unsigned_tail;
                let mut d = Disclosure::of(Outcome::Intact, &[]);
                d.detail = format!("{} records up to seq {}", v.records, v.last_seq);
                d
            }
            Err(failure) => {
                report.failed_seq = failure.seq;
                report.failed_file = failure
                    .file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                report.failure = failure.reason;
                let mut d = Disclosure::of(Outcome::Broken, &[]);
                d.detail = format!(
                    "{}: record {}: {}",
                    report.failed_file, report.failed_seq, report.failure
                );
                d
            }
        };
        Ok((report, disclosure))
    }
}
