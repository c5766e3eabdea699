//! `popgw.v1.IdentityGateway`: verification, minimised records, households, catalogue.
//!
//! Order of checks in every RPC: what the request claims is noted for its record →
//! admission (`admission.rs`: client identity → RPC granted → rate → procedure known
//! (INVALID_ARGUMENT) → procedure granted (PERMISSION_DENIED), as a typed permit) →
//! every other field validated → per-citizen lock → registry (only with a permit) →
//! matching / minimisation → audit → answer.

use crate::policy::Rpc;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument;

use super::{Disclosure, Gateway, Outcome, RequestCtx};
use crate::audit::Pseudonym;
use crate::catalogue::MatchingRule;
use crate::disclosure;
use crate::error::GatewayError;
use crate::limits::national::Settled;
use crate::limits::{Locked, Refused};
use crate::matching::{self, Declaration, FieldResult, NoMatchReason, Verification};
use crate::proto::gateway as pb;
use crate::proto::gateway::identity_gateway_server::IdentityGateway;
use crate::proto::registry::CitizenRecord;
use crate::registry::LookupKey;
use crate::validation::{self, DeclaredId, InvalidField};

/// The IdentityGateway service.
#[derive(Clone)]
pub struct GatewayService {
    gw: Arc<Gateway>,
}

impl GatewayService {
    /// A service over the shared gateway state.
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self { gw }
    }
}

fn pb_rule(rule: MatchingRule) -> pb::MatchingRule {
    match rule {
        MatchingRule::Exact => pb::MatchingRule::Exact,
        MatchingRule::Tolerant => pb::MatchingRule::Tolerant,
    }
}

fn pb_field(r: FieldResult) -> i32 {
    (match r {
        FieldResult::Match => pb::FieldResult::Match,
        FieldResult::Mismatch => pb::FieldResult::Mismatch,
        FieldResult::NotProvided => pb::FieldResult::NotProvided,
        FieldResult::NotCompared => pb::FieldResult::NotCompared,
    }) as i32
}

fn reason_name(r: NoMatchReason) -> (&'static str, pb::NoMatchReason) {
    match r {
        NoMatchReason::NotFound => ("NOT_FOUND", pb::NoMatchReason::NotFound),
        NoMatchReason::Deceased => ("DECEASED", pb::NoMatchReason::Deceased),
        NoMatchReason::FieldsDiffer => ("FIELDS_DIFFER", pb::NoMatchReason::FieldsDiffer),
        NoMatchReason::IdInconsistent => ("ID_INCONSISTENT", pb::NoMatchReason::IdInconsistent),
        NoMatchReason::Disappeared => ("DISAPPEARED", pb::NoMatchReason::Disappeared),
    }
}

impl Gateway {
    /// Records what a request claims — its subject, procedure and dossier — before any
    /// policy check, so that a refused attempt is found by a query on the citizen's id
    /// and still says which procedure and dossier it was for. An unknown procedure code
    /// is recorded as `?CODE` when of a safe shape, else `?`; the dossier number only as
    /// its keyed pseudonym (`Pseudonymizer::case_pseudonym`), whatever it holds.
    fn claim(&self, ctx: &mut RequestCtx, raw_id: &str, procedure_code: &str, case_id: &str) {
        let id = validation::parse_declared_id(raw_id, true).ok();
        ctx.subject = id.map(|id| self.subject(id.digits()));
        ctx.procedure = self.admission.catalogue().claim(procedure_code);
        ctx.case_id = (!case_id.trim().is_empty()).then(|| self.pseudonyms.case_pseudonym(case_id));
    }

    /// Pseudonyms of the other people a minimised record names (relatives, household
    /// head), so that their own "who saw data about me" finds this disclosure.
    fn related_subjects(&self, disclosed: &CitizenRecord) -> Vec<Pseudonym> {
        let mut ids: Vec<&str> = Vec::new();
        for r in [
            &disclosed.father,
            &disclosed.mother,
            &disclosed.spouse,
            &disclosed.legal_representative,
        ]
        .into_iter()
        .flatten()
        .chain(disclosed.children.iter())
        {
            ids.push(&r.personal_id);
        }
        if let Some(h) = &disclosed.household {
            ids.push(&h.head_personal_id);
        }
        let mut out: Vec<Pseudonym> = ids
            .into_iter()
            .filter(|id| !id.is_empty() && *id != disclosed.personal_id)
            .map(|id| self.subject(id))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// After a lookup by the old 9-digit id, the subject becomes the citizen's
    /// 12-digit id, the one they will ask about. (For a 12-digit id `claim`
    /// already named it: no second HMAC.)
    fn found_subject(&self, ctx: &mut RequestCtx, id: &DeclaredId, record: Option<&CitizenRecord>) {
        if let (DeclaredId::Old(_), Some(r)) = (id, record) {
            if !r.personal_id.is_empty() {
                ctx.subject = Some(self.subject(&r.personal_id));
            }
        }
    }

    fn lookup_key(id: &DeclaredId) -> LookupKey {
        match id {
            DeclaredId::Personal(p) => LookupKey::PersonalId(p.digits.clone()),
            DeclaredId::Old(d) => LookupKey::OldId(d.clone()),
        }
    }

    /// One verification, shared by the unary and the streaming RPC.
    pub(crate) async fn verify(
        &self,
        ctx: &mut RequestCtx,
        req: pb::VerifyIdentityRequest,
    ) -> Result<(pb::VerifyIdentityResponse, Disclosure), GatewayError> {
        self.claim(ctx, &req.personal_id, &req.procedure_code, &req.case_id);
        let permit = self.admit_procedure(ctx, &req.procedure_code)?;
        let (grant, procedure) = (permit.grant(), permit.procedure());
        let case_id = validation::check_case_id(&req.case_id)?;
        let id = validation::parse_declared_id(&req.personal_id, procedure.old_id_accepted)?;
        validation::check_case_not_id(&case_id, id.digits())?;
        validation::check_full_name(&req.full_name)?;
        // The birth date is required: id and name alone must never verify anyone.
        let dob = validation::parse_birth_date(&req.date_of_birth, validation::today_in_vietnam())?
            .ok_or(InvalidField {
                field: "date_of_birth",
                reason: "required (YYYY-MM-DD, or YYYY when only the year is recorded)".into(),
            })?;
        let dob = Some(dob);
        let sex = validation::parse_sex(req.sex)?;
        let key = Self::lookup_key(&id);
        // What was compared goes into the audit record (names of fields, never values).
        let compared = if sex.is_some() {
            "compared=id,name,dob,sex"
        } else {
            "compared=id,name,dob"
        };

        // While the deployment's national count answers, it decides (limits::national);
        // else this node's count does.
        let national = self
            .national
            .as_ref()
            .filter(|n| n.is_up() || n.probe_due());
        // The person the tries are counted against (named by `claim`, which read the id).
        let mut subject = ctx
            .subject
            .clone()
            .unwrap_or_else(|| self.subject(id.digits()));
        // A citizen locked after too many failed verifications is not checked at all.
        if national.is_none() {
            self.subjects
                .check(subject.as_str())
                .map_err(GatewayError::SubjectLocked)?;
        }
        let reserve = |client: &str, subject: &Pseudonym| match national {
            Some(_) => self.subjects.hold(client, subject.as_str()),
            None => self.subjects.reserve(client, subject.as_str()),
        };
        let verification = match &id {
            DeclaredId::Personal(p) => match validation::id_consistency(p, sex, dob) {
                Err(field) => Some(Verification::id_inconsistent(
                    field,
                    sex.is_some(),
                    dob.is_some(),
                )),
                Ok(()) => None,
            },
            DeclaredId::Old(_) => None,
        };
        // A declaration that will consult the registry reserves its try first; its verdict
        // comes out only within the allowance, so a burst gets no more verdicts than that.
        let client = grant.identity.clone();
        let mut tries = Vec::with_capacity(2);
        let verification = match verification {
            Some(v) => v,
            None => {
                tries.push(reserve(&client, &subject)?);
                let record = self.lookup(&permit, ctx, &key).await?;
                self.found_subject(ctx, &id, record.as_deref());
                if let (DeclaredId::Old(_), Some(found)) = (&id, &ctx.subject) {
                    // Now named by the 12-digit id: the same allowance applies.
                    subject = found.clone();
                    tries.push(reserve(&client, &subject)?);
                }
                let declared = Declaration {
                    full_name: &req.full_name,
                    date_of_birth: dob,
                    sex,
                };
                matching::verify(procedure.matching_rule, &declared, record.as_deref())
            }
        };
        let (verdict, outcome) = if verification.is_match() {
            (pb::Verdict::Match, Outcome::Match)
        } else {
            (pb::Verdict::NoMatch, Outcome::NoMatch)
        };
        let reason = verification.no_match.map(reason_name);
        let mut detail = match reason {
            Some((name, _)) => format!("{name}; {compared}"),
            None => compared.to_string(),
        };
        let consulted = !tries.is_empty();
        // The verdict comes out only within the allowance (see limits::Try::finish):
        // this node's, then the deployment's when it has a national count.
        let mut here: Result<Option<Locked>, Refused> = Ok(None);
        for attempt in tries {
            here = match (attempt.finish(verification.is_match()), here) {
                (Err(refused), _) | (_, Err(refused)) => Err(refused),
                (Ok(a), Ok(b)) => Ok(a.or(b)),
            };
        }
        let locked = match (national, consulted) {
            (Some(national), true) => {
                match national
                    .settle(&client, subject.as_str(), verification.is_match())
                    .await
                {
                    Settled::Answer(locked) => locked,
                    Settled::Refused(refused) => return Err(refused.into()),
                    // Fail closed: this verdict may be one the other nodes already spent.
                    Settled::Unsettled => {
                        return Err(Refused::Spent(std::time::Duration::from_secs(1)).into())
                    }
                }
            }
            (None, true) if self.national.is_some() => {
                detail.push_str("; tries counted on this node only (national count unreachable)");
                here?
            }
            _ => here?,
        };
        if let Some(locked) = locked {
            // The lock-out is audited, by the request that caused it.
            detail.push_str(&format!(
                "; subject locked for {} s after {} NO_MATCH answers from {} clients",
                locked.lockout.as_secs(),
                locked.failures,
                locked.clients
            ));
            self.metrics.subject_locks.inc();
            tracing::warn!(request_id = %ctx.request_id, "a citizen's verification locked for every client after NO_MATCH answers from several clients");
        }
        let details = grant.details.then(|| pb::VerificationDetails {
            personal_id: pb_field(verification.personal_id),
            full_name: pb_field(verification.full_name),
            date_of_birth: pb_field(verification.date_of_birth),
            sex: pb_field(verification.sex),
            reason: reason.map_or(0, |(_, r)| r as i32),
            rule: pb_rule(procedure.matching_rule) as i32,
        });
        // Only the verdict is disclosed; the per-field results when granted.
        let fields: &[&str] = if details.is_some() {
            &["verdict", "verification_details"]
        } else {
            &["verdict"]
        };
        Ok((
            pb::VerifyIdentityResponse {
                verdict: verdict as i32,
                request_id: ctx.request_id.clone(),
                details,
            },
            Disclosure {
                detail,
                ..Disclosure::of(outcome, fields)
            },
        ))
    }

    async fn citizen(
        &self,
        ctx: &mut RequestCtx,
        req: pb::GetCitizenRequest,
    ) -> Result<(pb::GetCitizenResponse, Disclosure), GatewayError> {
        self.claim(ctx, &req.personal_id, &req.procedure_code, &req.case_id);
        let permit = self.admit_procedure(ctx, &req.procedure_code)?;
        let (grant, procedure) = (permit.grant(), permit.procedure());
        let case_id = validation::check_case_id(&req.case_id)?;
        let id = validation::parse_declared_id(&req.personal_id, procedure.old_id_accepted)?;
        validation::check_case_not_id(&case_id, id.digits())?;
        let key = Self::lookup_key(&id);
        let record = self
            .lookup(&permit, ctx, &key)
            .await?
            .ok_or(GatewayError::NotFound("no citizen has this personal_id"))?;
        self.found_subject(ctx, &id, Some(&record));
        let allowed = grant.readable_fields(&procedure.readable_fields);
        let (citizen, disclosed) = disclosure::minimise(&record, &allowed);
        let related = self.related_subjects(&citizen);
        Ok((
            pb::GetCitizenResponse {
                request_id: ctx.request_id.clone(),
                citizen: Some(citizen),
                disclosed_fields: disclosed.clone(),
            },
            Disclosure {
                outcome: Outcome::Disclosed,
                fields: disclosed,
                related,
                detail: String::new(),
            },
        ))
    }

    async fn household(
        &self,
        ctx: &mut RequestCtx,
        req: pb::GetHouseholdRequest,
    ) -> Result<(pb::GetHouseholdResponse, Disclosure), GatewayError> {
        self.claim(ctx, &req.personal_id, &req.procedure_code, &req.case_id);
        let permit = self.admit_procedure(ctx, &req.procedure_code)?;
        let procedure = permit.procedure();
        let case_id = validation::check_case_id(&req.case_id)?;
        let id = validation::parse_declared_id(&req.personal_id, procedure.old_id_accepted)?;
        validation::check_case_not_id(&case_id, id.digits())?;
        // Checked before the citizen is looked up (and again where the household is).
        super::household_allowed(&permit)?;
        let key = Self::lookup_key(&id);
        let record = self
            .lookup(&permit, ctx, &key)
            .await?
            .ok_or(GatewayError::NotFound("no citizen has this personal_id"))?;
        self.found_subject(ctx, &id, Some(&record));
        let household_id = record
            .household
            .as_ref()
            .map(|h| h.household_id.clone())
            .unwrap_or_default();
        if household_id.is_empty() {
            return Err(GatewayError::NotFound(
                "the citizen belongs to no household",
            ));
        }
        let household = self
            .household_of(&permit, ctx, &household_id)
            .await?
            .ok_or(GatewayError::NotFound(
                "the citizen belongs to no household",
            ))?;
        let related = household
            .head
            .iter()
            .chain(household.members.iter())
            .map(|m| m.personal_id.as_str())
            .filter(|id| !id.is_empty() && *id != record.personal_id)
            .map(|id| self.subject(id))
            .collect();
        let head_id = household
            .head
            .as_ref()
            .map(|h| h.personal_id.clone())
            .unwrap_or_default();
        let members = household
            .members
            .into_iter()
            .filter(|m| m.personal_id != head_id)
            .collect();
        Ok((
            pb::GetHouseholdResponse {
                request_id: ctx.request_id.clone(),
                head: household.head,
                members,
            },
            Disclosure {
                related,
                ..Disclosure::of(Outcome::Disclosed, &["household.head", "household.members"])
            },
        ))
    }

    fn procedures(
        &self,
        ctx: &mut RequestCtx,
    ) -> Result<(pb::ListProceduresResponse, Disclosure), GatewayError> {
        self.admit(ctx)?;
        let procedures = self
            .admission
            .catalogue()
            .procedures()
            .map(|p| pb::Procedure {
                code: p.code.clone(),
                name_vi: p.name_vi.clone(),
                name_en: p.name_en.clone(),
                lead_agency: p.lead_agency.clone(),
                matching_rule: pb_rule(p.matching_rule) as i32,
                readable_fields: p.readable_fields.clone(),
                household_readable: p.household_readable,
                old_id_accepted: p.old_id_accepted,
            })
            .collect();
        Ok((
            pb::ListProceduresResponse { procedures },
            Disclosure::of(Outcome::Listed, &[]),
        ))
    }
}

type VerifyStream =
    Pin<Box<dyn Stream<Item = Result<pb::VerifyIdentityStreamResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl IdentityGateway for GatewayService {
    async fn verify_identity(
        &self,
        request: Request<pb::VerifyIdentityRequest>,
    ) -> Result<Response<pb::VerifyIdentityResponse>, Status> {
        super::unary(
            &self.gw,
            Rpc::VerifyIdentity,
            request,
            |r| &r.personal_id,
            |gw, mut ctx, request| async move {
                let result = gw.verify(&mut ctx, request).await;
                (ctx, result)
            },
        )
        .await
    }

    type VerifyIdentityStreamStream = VerifyStream;

    async fn verify_identity_stream(
        &self,
        request: Request<Streaming<pb::VerifyIdentityStreamRequest>>,
    ) -> Result<Response<Self::VerifyIdentityStreamStream>, Status> {
        let identity = super::early::reached(&request).identity;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let gw = self.gw.clone();
        let mut stopping = self.gw.stopping.subscribe();
        self.gw.tasks.spawn(
            async move {
            let mut items = 0u64;
            loop {
                // An idle stream must not hold up a graceful shutdown.
                let item = tokio::select! {
                    item = inbound.next() => item,
                    _ = super::stopped(&mut stopping) => {
                        let _ = tx.try_send(Err(crate::error::StreamEnd::ShuttingDown {
                            resume: "resend the items not answered",
                        }
                        .into()));
                        break;
                    }
                };
                let Some(item) = item else { break };
                let item = match item {
                    Ok(item) => item,
                    Err(status) => {
                        tracing::debug!(code = ?status.code(), "verification stream ended by transport");
                        // An item that does not decode (not a client going away) is a
                        // refused request like any other: it leaves its record.
                        if !matches!(status.code(), Code::Cancelled | Code::Unknown) {
                            let ctx = gw.begin(Rpc::VerifyIdentityStream, identity.clone(), None);
                            let refused = Err(GatewayError::Undecodable(status.code()));
                            if let Err(answer) = gw.finish::<()>(ctx, refused).await {
                                let _ = tx.send(Err(answer)).await;
                            }
                        }
                        break;
                    }
                };
                items += 1;
                let over = items > gw.max_stream_items;
                // Each item is a request of its own, with a span of its own for its id and
                // outcome: recorded on the stream's one span, they would pile up there
                // (the fmt layer appends a recorded field) for as many items as it sends.
                let item_span = crate::telemetry::request_span(Rpc::VerifyIdentityStream.name());
                let answered = async {
                    // One deadline for a whole stream says nothing about one item: the cap.
                    let mut ctx = gw.begin(Rpc::VerifyIdentityStream, identity.clone(), None);
                    let result = match item.request {
                        _ if over => Err(GatewayError::StreamItems(gw.max_stream_items)),
                        Some(req) => gw.verify(&mut ctx, req).await,
                        None => Err(InvalidField {
                            field: "request",
                            reason: "required".into(),
                        }
                        .into()),
                    };
                    gw.finish(ctx, result).await
                }
                .instrument(item_span)
                .await;
                let result = match answered {
                    Ok(resp) => pb::verify_identity_stream_response::Result::Response(resp),
                    Err(status) => {
                        pb::verify_identity_stream_response::Result::Error(pb::ItemError {
                            code: status.code() as i32,
                            message: status.message().to_string(),
                        })
                    }
                };
                let answer = pb::VerifyIdentityStreamResponse {
                    correlation_id: item.correlation_id,
                    result: Some(result),
                };
                // A client that stops reading must not hold up shutdown either.
                let sent = tokio::select! {
                    sent = tx.send(Ok(answer)) => sent.is_ok(),
                    _ = super::stopped(&mut stopping) => false,
                };
                if !sent || over {
                    break;
                }
            }
            }
            .in_current_span(),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_citizen(
        &self,
        request: Request<pb::GetCitizenRequest>,
    ) -> Result<Response<pb::GetCitizenResponse>, Status> {
        super::unary(
            &self.gw,
            Rpc::GetCitizen,
            request,
            |r| &r.personal_id,
            |gw, mut ctx, request| async move {
                let result = gw.citizen(&mut ctx, request).await;
                (ctx, result)
            },
        )
        .await
    }

    async fn get_household(
        &self,
        request: Request<pb::GetHouseholdRequest>,
    ) -> Result<Response<pb::GetHouseholdResponse>, Status> {
        super::unary(
            &self.gw,
            Rpc::GetHousehold,
            request,
            |r| &r.personal_id,
            |gw, mut ctx, request| async move {
                let result = gw.household(&mut ctx, request).await;
                (ctx, result)
            },
        )
        .await
    }

    async fn list_procedures(
        &self,
        request: Request<pb::ListProceduresRequest>,
    ) -> Result<Response<pb::ListProceduresResponse>, Status> {
        let mut ctx = self.gw.begin(
            Rpc::ListProcedures,
            super::early::reached(&request).identity,
            None,
        );
        let result = self.gw.procedures(&mut ctx);
        self.gw.finish(ctx, result).await.map(Response::new)
    }
}
