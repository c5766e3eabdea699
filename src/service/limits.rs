//! `popgw.v1.Limits`: the operators' control over the limits against enumeration
//! (`operator` role only).
//!
//! `Unlock` lifts a citizen's lock for everyone and forgets the NO_MATCH answers counted
//! about them in the window: for when a lock caught a citizen's own procedures. It is
//! audited like any other call — the operator, the citizen's pseudonym, the ticket's
//! pseudonym, and what was lifted (never the id). On this node, and in the shared
//! national budget when the deployment has one.

use crate::policy::Rpc;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{Disclosure, Gateway, Outcome};
use crate::proto::gateway as pb;
use crate::proto::gateway::limits_server::Limits;
use crate::validation;

/// The Limits service.
#[derive(Clone)]
pub struct LimitsService {
    gw: Arc<Gateway>,
}

impl LimitsService {
    /// A service over the shared gateway state.
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self { gw }
    }
}

#[tonic::async_trait]
impl Limits for LimitsService {
    async fn unlock(
        &self,
        request: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        // Runs to its record even if the operator's client gives up.
        super::unary(
            &self.gw,
            Rpc::LimitsUnlock,
            request,
            |r| &r.personal_id,
            |gw, mut ctx, request| async move {
                if let Ok(id) = validation::parse_declared_id(&request.personal_id, false) {
                    ctx.subject = Some(gw.subject(id.digits()));
                }
                if !request.case_id.trim().is_empty() {
                    ctx.case_id = Some(gw.pseudonyms.case_pseudonym(&request.case_id));
                }
                let result = async {
                    gw.admit(&ctx)?;
                    let id = validation::parse_declared_id(&request.personal_id, false)?;
                    validation::check_case_id(&request.case_id)?;
                    let subject = ctx
                        .subject
                        .clone()
                        .unwrap_or_else(|| gw.subject(id.digits()));
                    let lifted = gw.subjects.unlock(subject.as_str());
                    let national = match &gw.national {
                        Some(national) => national.unlock(subject.as_str()).await,
                        None => false,
                    };
                    let mut disclosure = Disclosure::of(Outcome::Unlocked, &[]);
                    disclosure.detail = format!(
                        "lock {}; {} NO_MATCH answers forgotten{}",
                        if lifted.was_locked { "lifted" } else { "none" },
                        lifted.failures,
                        if national {
                            "; national budget reset"
                        } else {
                            ""
                        }
                    );
                    Ok((
                        pb::UnlockResponse {
                            was_locked: lifted.was_locked,
                            failures_forgotten: lifted.failures,
                            national,
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
