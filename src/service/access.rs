//! `popgw.v1.CitizenAccess`: a citizen's own access report, for the citizen portal
//! (the `citizen_portal` role; an operator may be granted it too, to see in the console
//! what a citizen sees). It answers from the central audit index when there is one (every
//! node), otherwise from this node's log.
//!
//! What a citizen sees, for each answered verification or disclosure of their data: when,
//! which agency (the policy's `display_name`, never the certificate's identity), which
//! procedure (its Vietnamese and English names), verified or disclosed, the outcome, and
//! whether they were disclosed as someone's relative or household member. Never the
//! officer, the dossier number, the client's identity, the fields of other people, or
//! refused attempts (they disclosed nothing; operators still see them). An event where
//! the citizen was only a relative or household member shows the day (in Vietnam), not
//! the millisecond. Reports take a permit pool of their own (`limits.max_report_calls`)
//! and the citizen portal's rate, never the operators' slots. The call is audited like
//! any other, its subject the citizen.

use crate::policy::Rpc;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{Disclosure, Gateway, Outcome};
use crate::audit::{self, Filter, Pseudonym, RecordBody};
use crate::error::GatewayError;
use crate::proto::gateway as pb;
use crate::proto::gateway::citizen_access_server::CitizenAccess;
use crate::validation::{self, InvalidField};

/// Events in one report at most; beyond, `truncated` is set.
pub const MAX_REPORT_EVENTS: usize = 10_000;

/// The RPCs whose answers a citizen is told about.
pub const REPORTED_RPCS: [Rpc; 4] = [
    Rpc::VerifyIdentity,
    Rpc::VerifyIdentityStream,
    Rpc::GetCitizen,
    Rpc::GetHousehold,
];

/// The CitizenAccess service.
#[derive(Clone)]
pub struct CitizenAccessService {
    gw: Arc<Gateway>,
}

impl CitizenAccessService {
    /// A service over the shared gateway state.
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self { gw }
    }
}

/// One history event, before it is shown.
struct Event {
    record: RecordBody,
    related: bool,
}

impl Gateway {
    /// The citizen's answered verifications and disclosures (at most `limit`, oldest
    /// first), and where they come from.
    async fn history(
        &self,
        subject: &Pseudonym,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<(Vec<Event>, &'static str, i64), GatewayError> {
        // Reports have a pool of their own: a busy citizen portal cannot take the
        // operators' slots, nor hog the disk or the index.
        let permit = self.report_call()?;
        if let Some(index) = &self.index {
            // Read first: whatever the history then shows is at least as new.
            let complete_until = index.indexed_until().await?.unwrap_or(0);
            let events = index
                .history(
                    subject.as_str(),
                    from_ms,
                    to_ms,
                    &REPORTED_RPCS.map(Rpc::name),
                    limit,
                )
                .await?;
            let events = events
                .into_iter()
                .map(|e| Event {
                    record: e.record,
                    related: e.related,
                })
                .collect();
            return Ok((events, "index", complete_until));
        }
        // Without an index each report reads this node's whole log (production answers
        // from the index).
        let filter = Filter {
            from_ms,
            to_ms,
            subject: Some(subject.clone()),
            ..Filter::default()
        };
        let dir = self.audit.dir().to_path_buf();
        let subject = subject.as_str().to_string();
        let events = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut out = Vec::new();
            audit::scan_records(&dir, 1, |r| {
                if filter.accepts(&r.body)
                    && r.body.code == "OK"
                    && REPORTED_RPCS.iter().any(|rpc| rpc.name() == r.body.rpc)
                {
                    out.push(Event {
                        related: r.body.subject != subject,
                        record: r.body,
                    });
                }
                out.len() < limit
            })
            .map(|()| out)
        })
        .await
        .map_err(|_| GatewayError::Internal)??;
        Ok((events, "node", 0))
    }

    /// What the citizen is shown of one event (`policy` names the agencies).
    fn shown(&self, policy: &crate::policy::Policy, e: Event) -> pb::AccessEvent {
        let r = e.record;
        let agency = policy
            .display_name(&r.client)
            .unwrap_or("an agency without a public name in the gateway's policy")
            .to_string();
        let (name_vi, name_en) = self
            .admission
            .catalogue()
            .get(&r.procedure)
            .map(|p| (p.name_vi.clone(), p.name_en.clone()))
            .unwrap_or_default();
        let action = if r.rpc.starts_with("Verify") {
            pb::AccessAction::Verified
        } else {
            pb::AccessAction::Disclosed
        };
        pb::AccessEvent {
            // As a relative, the day only: the citizen learns that their data was
            // disclosed, not the timeline of the relative's own case.
            time_unix_ms: if e.related {
                day_in_vietnam(r.time_unix_ms)
            } else {
                r.time_unix_ms
            },
            agency,
            procedure_code: r.procedure,
            procedure_name_vi: name_vi,
            procedure_name_en: name_en,
            action: action as i32,
            outcome: r.outcome,
            as_relative: e.related,
            // Their own record's field names; nothing of the person asked about.
            fields: if e.related { Vec::new() } else { r.fields },
        }
    }
}

/// The start (Unix milliseconds) of the day in Vietnam (UTC+7, no daylight saving) that
/// holds `ms`.
fn day_in_vietnam(ms: i64) -> i64 {
    const DAY: i64 = 86_400_000;
    const OFFSET: i64 = 7 * 3_600_000;
    (ms + OFFSET).div_euclid(DAY) * DAY - OFFSET
}

fn check_period(from: i64, to: i64) -> Result<(), InvalidField> {
    if from < 0 {
        return Err(InvalidField {
            field: "from_unix_ms",
            reason: "must not be negative".into(),
        });
    }
    if to < 0 || (to != 0 && to < from) {
        return Err(InvalidField {
            field: "to_unix_ms",
            reason: "must be 0 (until now) or not before from_unix_ms".into(),
        });
    }
    Ok(())
}

#[tonic::async_trait]
impl CitizenAccess for CitizenAccessService {
    async fn access_report(
        &self,
        request: Request<pb::AccessReportRequest>,
    ) -> Result<Response<pb::AccessReportResponse>, Status> {
        // Runs to its record even if the portal gives up.
        super::unary(
            &self.gw,
            Rpc::AccessReport,
            request,
            |r| &r.personal_id,
            |gw, mut ctx, request| async move {
                let result = async {
                    gw.admit(&ctx)?;
                    let id = validation::parse_declared_id(&request.personal_id, false)?;
                    let subject = gw.subject(id.digits());
                    ctx.subject = Some(subject.clone());
                    check_period(request.from_unix_ms, request.to_unix_ms)?;
                    let (mut events, source, complete_until) = gw
                        .history(
                            &subject,
                            request.from_unix_ms,
                            request.to_unix_ms,
                            MAX_REPORT_EVENTS + 1,
                        )
                        .await?;
                    let truncated = events.len() > MAX_REPORT_EVENTS;
                    events.truncate(MAX_REPORT_EVENTS);
                    let access = gw.admission.access();
                    let events: Vec<pb::AccessEvent> = events
                        .into_iter()
                        .map(|e| gw.shown(&access.policy, e))
                        .collect();
                    let mut disclosure = Disclosure::of(Outcome::Reported, &["access_report"]);
                    disclosure.detail = format!("{} events from the {source}", events.len());
                    Ok((
                        pb::AccessReportResponse {
                            events,
                            truncated,
                            source: source.to_string(),
                            complete_until_unix_ms: complete_until,
                        },
                        disclosure,
                    ))
                }
                .await;
                (ctx, result)
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_relatives_event_shows_the_day_in_vietnam() {
        // 2026-11-26T14:02:11.532Z is 21:02 in Hanoi: the day began at 2026-11-25T17:00Z.
        assert_eq!(super::day_in_vietnam(1_795_701_731_532), 1_795_626_000_000);
        // 2026-11-26T18:30Z is already the 27th in Hanoi.
        assert_eq!(super::day_in_vietnam(1_795_717_800_000), 1_795_712_400_000);
    }
}
