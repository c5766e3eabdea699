//! Admission: one step from a request to what it may do, as a typed permit.
//!
//! [`Gateway::admit`] names the client (resolved once per connection, see
//! `tls::Peer`), finds its grant for the RPC (deny by default: unknown identity, RPC
//! not granted or outside the role → PERMISSION_DENIED) and takes one request from its
//! rate; [`Gateway::admit_procedure`] adds the procedure, known (else
//! INVALID_ARGUMENT) and granted (else PERMISSION_DENIED). The permits' fields are
//! private to this module: a handler cannot reach the registry ([`Gateway::lookup`]
//! takes a [`ProcedurePermit`]) or read a grant without going through here.

use std::sync::Arc;

use super::{Gateway, RequestCtx};
use crate::catalogue::Procedure;
use crate::error::GatewayError;
use crate::policy::Grant;
use crate::validation::InvalidField;

/// Admission to an RPC.
#[derive(Debug, Clone)]
pub struct Permit {
    grant: Arc<Grant>,
}

impl Permit {
    /// The client's grant (as the policy stood when the request was admitted: a reload
    /// applies to the next request).
    pub fn grant(&self) -> &Grant {
        &self.grant
    }
}

/// Admission to an RPC for a procedure.
#[derive(Debug, Clone)]
pub struct ProcedurePermit<'a> {
    grant: Arc<Grant>,
    procedure: &'a Procedure,
}

impl<'a> ProcedurePermit<'a> {
    /// The client's grant.
    pub fn grant(&self) -> &Grant {
        &self.grant
    }
    /// The procedure, known and granted.
    pub fn procedure(&self) -> &'a Procedure {
        self.procedure
    }
}

impl Gateway {
    /// Admits the request to its RPC, or says why not.
    pub fn admit(&self, ctx: &RequestCtx) -> Result<Permit, GatewayError> {
        let identity = ctx.identity.as_ref().map_err(|e| e.clone())?;
        let access = self.access.load();
        let grant = access.policy.authorize_rpc(identity, ctx.rpc)?;
        access
            .rates
            .take(identity)
            .map_err(GatewayError::RateLimited)?;
        Ok(Permit { grant })
    }

    /// Admits the request to its RPC for the procedure `code`: known, then granted.
    /// Records the procedure and its name rule in `ctx` once known.
    pub fn admit_procedure(
        &self,
        ctx: &mut RequestCtx,
        code: &str,
    ) -> Result<ProcedurePermit<'_>, GatewayError> {
        let grant = self.admit(ctx)?.grant;
        let code = code.trim();
        if code.is_empty() {
            return Err(InvalidField {
                field: "procedure_code",
                reason: "required".into(),
            }
            .into());
        }
        let procedure = self.catalogue.get(code).ok_or_else(|| InvalidField {
            field: "procedure_code",
            reason: "unknown procedure (see ListProcedures)".into(),
        })?;
        ctx.procedure = crate::catalogue::ClaimedProcedure::Known(procedure.code.clone());
        ctx.rule = Some(procedure.matching_rule);
        if !grant.allows_procedure(&procedure.code) {
            return Err(crate::policy::Denied::Procedure(procedure.code.clone()).into());
        }
        Ok(ProcedurePermit { grant, procedure })
    }
}
