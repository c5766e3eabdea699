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

use arc_swap::ArcSwap;

use super::{Gateway, RequestCtx};
use crate::catalogue::{Catalogue, Procedure};
use crate::error::GatewayError;
use crate::limits::LimitOptions;
use crate::policy::{Grant, Policy};
use crate::validation::InvalidField;

/// What admission decides from: the policy with its rate buckets (swapped whole by a
/// reload), the catalogue, and what buckets are built from. The fields are private: the
/// policy changes only through [`Admission::replace_policy`], the catalogue never.
pub struct Admission {
    access: ArcSwap<Access>,
    limit_options: LimitOptions,
    catalogue: Arc<Catalogue>,
}

impl Admission {
    /// `policy` with fresh buckets, over `catalogue`.
    pub fn new(policy: Policy, catalogue: Catalogue, limit_options: LimitOptions) -> Admission {
        Admission {
            access: ArcSwap::from_pointee(Access::new(policy, &limit_options)),
            limit_options,
            catalogue: Arc::new(catalogue),
        }
    }

    /// Whether the policy lists this identity.
    pub fn knows(&self, identity: &str) -> bool {
        self.access.load().policy.knows(identity)
    }

    /// The policy and buckets as they stand now.
    pub fn access(&self) -> Arc<Access> {
        self.access.load_full()
    }

    /// The procedures and their field profiles.
    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// What rates and budgets are built from.
    pub fn limit_options(&self) -> &LimitOptions {
        &self.limit_options
    }

    /// Replaces the policy (a reload): the next request is admitted by the new one; a
    /// client whose rate did not change keeps its bucket as it was.
    pub fn replace_policy(&self, policy: Policy) {
        let previous = self.access.load_full();
        self.access.store(Arc::new(Access::reloaded(
            policy,
            &self.limit_options,
            Some(&previous),
        )));
    }
}

/// The policy and the rate buckets built from it.
pub struct Access {
    /// Who may do what.
    pub policy: Policy,
    /// A token bucket per client the policy lists.
    pub rates: crate::limits::ClientRates,
}

impl Access {
    /// The policy with fresh buckets for its clients.
    pub fn new(policy: Policy, options: &LimitOptions) -> Access {
        Self::reloaded(policy, options, None)
    }

    /// The policy, keeping from `previous` the buckets of clients whose rate did not
    /// change (a reload refills nobody's allowance).
    pub fn reloaded(policy: Policy, options: &LimitOptions, previous: Option<&Access>) -> Access {
        let rates = crate::limits::ClientRates::carried_over(
            policy
                .grants()
                .map(|g| (g.identity.as_str(), g.rate_per_second, g.burst)),
            options,
            previous.map(|p| &p.rates),
        );
        Access { policy, rates }
    }
}

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
        let access = self.admission.access.load();
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
        let procedure = self
            .admission
            .catalogue
            .get(code)
            .ok_or_else(|| InvalidField {
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
