//! Policy: which client may call which RPC, for which procedures, seeing what.
//!
//! Invariant: deny by default. An identity missing from the policy, an RPC or a
//! procedure not granted, an RPC outside the client's role: all PERMISSION_DENIED.
//! The policy can only narrow what a procedure's profile allows, never widen it.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::disclosure;

/// An RPC of popgw's own services, as the policy and the audit log name it
/// (`VerifyIdentity`, `AuditLog.Query`, …), or a call to a method popgw does not serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rpc {
    /// `IdentityGateway/VerifyIdentity`.
    VerifyIdentity,
    /// `IdentityGateway/VerifyIdentityStream`.
    VerifyIdentityStream,
    /// `IdentityGateway/GetCitizen`.
    GetCitizen,
    /// `IdentityGateway/GetHousehold`.
    GetHousehold,
    /// `IdentityGateway/ListProcedures`.
    ListProcedures,
    /// `AuditLog/Query`.
    AuditQuery,
    /// `AuditLog/Watch`.
    AuditWatch,
    /// `AuditLog/Head`.
    AuditHead,
    /// `AuditLog/Verify`.
    AuditVerify,
    /// `CitizenAccess/AccessReport`.
    AccessReport,
    /// `Limits/Unlock`.
    LimitsUnlock,
    /// A method of popgw's services that does not exist, or another service: recorded,
    /// never granted.
    Unknown,
}

impl Rpc {
    /// Every RPC a policy can grant.
    pub const GRANTABLE: [Rpc; 11] = [
        Rpc::VerifyIdentity,
        Rpc::VerifyIdentityStream,
        Rpc::GetCitizen,
        Rpc::GetHousehold,
        Rpc::ListProcedures,
        Rpc::AuditQuery,
        Rpc::AuditWatch,
        Rpc::AuditHead,
        Rpc::AuditVerify,
        Rpc::AccessReport,
        Rpc::LimitsUnlock,
    ];

    /// Its name in the policy file, the audit log and the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Rpc::VerifyIdentity => "VerifyIdentity",
            Rpc::VerifyIdentityStream => "VerifyIdentityStream",
            Rpc::GetCitizen => "GetCitizen",
            Rpc::GetHousehold => "GetHousehold",
            Rpc::ListProcedures => "ListProcedures",
            Rpc::AuditQuery => "AuditLog.Query",
            Rpc::AuditWatch => "AuditLog.Watch",
            Rpc::AuditHead => "AuditLog.Head",
            Rpc::AuditVerify => "AuditLog.Verify",
            Rpc::AccessReport => "CitizenAccess.AccessReport",
            Rpc::LimitsUnlock => "Limits.Unlock",
            Rpc::Unknown => "unknown",
        }
    }

    /// The grantable RPC a policy names.
    pub fn parse(name: &str) -> Option<Rpc> {
        Rpc::GRANTABLE.into_iter().find(|rpc| rpc.name() == name)
    }

    /// The RPC a gRPC path names, `None` outside popgw's services (one match on the
    /// path, no allocation: this runs for every request).
    pub fn of_path(path: &str) -> Option<Rpc> {
        Some(match path {
            "/popgw.v1.IdentityGateway/VerifyIdentity" => Rpc::VerifyIdentity,
            "/popgw.v1.IdentityGateway/VerifyIdentityStream" => Rpc::VerifyIdentityStream,
            "/popgw.v1.IdentityGateway/GetCitizen" => Rpc::GetCitizen,
            "/popgw.v1.IdentityGateway/GetHousehold" => Rpc::GetHousehold,
            "/popgw.v1.IdentityGateway/ListProcedures" => Rpc::ListProcedures,
            "/popgw.v1.AuditLog/Query" => Rpc::AuditQuery,
            "/popgw.v1.AuditLog/Watch" => Rpc::AuditWatch,
            "/popgw.v1.AuditLog/Head" => Rpc::AuditHead,
            "/popgw.v1.AuditLog/Verify" => Rpc::AuditVerify,
            "/popgw.v1.CitizenAccess/AccessReport" => Rpc::AccessReport,
            "/popgw.v1.Limits/Unlock" => Rpc::LimitsUnlock,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Rpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A public-service portal backend: verification only.
    Portal,
    /// A ministry system: verification and minimised records.
    Ministry,
    /// An operator: the audit log, and lifting a citizen's lock.
    Operator,
    /// The citizen portal: a citizen's own access report, nothing else.
    #[serde(rename = "citizen_portal")]
    CitizenPortal,
}

impl Role {
    /// Whether this role may ever be granted `rpc`.
    pub fn may_be_granted(self, rpc: Rpc) -> bool {
        use Rpc::*;
        match self {
            Role::Portal => matches!(rpc, VerifyIdentity | VerifyIdentityStream | ListProcedures),
            Role::Ministry => matches!(
                rpc,
                VerifyIdentity | VerifyIdentityStream | GetCitizen | GetHousehold | ListProcedures
            ),
            Role::Operator => matches!(
                rpc,
                AuditQuery
                    | AuditWatch
                    | AuditHead
                    | AuditVerify
                    | AccessReport
                    | LimitsUnlock
                    | ListProcedures
            ),
            Role::CitizenPortal => matches!(rpc, AccessReport | ListProcedures),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default, rename = "client")]
    clients: Vec<ClientEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    identity: String,
    #[serde(default)]
    display_name: Option<String>,
    role: Role,
    rpcs: Vec<String>,
    #[serde(default)]
    procedures: Vec<String>,
    #[serde(default)]
    details: bool,
    #[serde(default)]
    fields: Option<Vec<String>>,
    #[serde(default)]
    rate_per_second: Option<u32>,
    #[serde(default)]
    burst: Option<u32>,
}

/// One client's grants.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The client's identity (URI SAN).
    pub identity: String,
    /// The agency's public name, shown to citizens in their access report (never the
    /// identity).
    pub display_name: Option<String>,
    /// Its role.
    pub role: Role,
    rpcs: BTreeSet<Rpc>,
    /// `None` = every procedure ("*").
    procedures: Option<BTreeSet<String>>,
    /// Whether per-field verification details and NO_MATCH reasons are shown.
    pub details: bool,
    /// `None` = every field the procedure's profile allows; otherwise the intersection.
    fields: Option<BTreeSet<String>>,
    /// Requests per second (`None`: `[limits] client_rate_per_second`).
    pub rate_per_second: Option<u32>,
    /// Burst (`None`: `[limits] client_burst`, or twice the client's own rate).
    pub burst: Option<u32>,
}

impl Grant {
    /// Whether `rpc` is granted.
    pub fn allows_rpc(&self, rpc: Rpc) -> bool {
        self.rpcs.contains(&rpc) && self.role.may_be_granted(rpc)
    }
    /// Whether `procedure` is granted.
    pub fn allows_procedure(&self, procedure: &str) -> bool {
        self.procedures
            .as_ref()
            .is_none_or(|p| p.contains(procedure))
    }
    /// The fields of `profile` this client may receive.
    pub fn readable_fields(&self, profile: &[String]) -> Vec<String> {
        profile
            .iter()
            .filter(|f| {
                self.fields
                    .as_ref()
                    .is_none_or(|allowed| allowed.contains(*f))
            })
            .cloned()
            .collect()
    }
}

/// Why access was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The identity is not in the policy.
    #[error("client is not in the policy")]
    UnknownClient,
    /// The RPC is not granted to this client.
    #[error("{0} is not granted to this client")]
    Rpc(Rpc),
    /// The procedure is not granted to this client.
    #[error("procedure {0} is not granted to this client")]
    Procedure(String),
}

/// Errors in a policy file: all of them, reported at once.
#[derive(Debug, thiserror::Error)]
#[error("policy {path}: {}", problems.join("; "))]
pub struct PolicyError {
    /// The file.
    pub path: String,
    /// Every problem found.
    pub problems: Vec<String>,
}

/// The loaded policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    clients: HashMap<String, Arc<Grant>>,
}

impl Policy {
    /// Loads and checks a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            path: path.display().to_string(),
            problems: vec![e.to_string()],
        })?;
        Self::from_toml(&text).map_err(|problems| PolicyError {
            path: path.display().to_string(),
            problems,
        })
    }

    /// Parses and checks a policy; every problem is returned.
    pub fn from_toml(text: &str) -> Result<Policy, Vec<String>> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let mut problems = Vec::new();
        let mut clients = HashMap::new();
        for c in file.clients {
            let who = c.identity.clone();
            if !c.identity.contains("://") {
                problems.push(format!("client {who:?}: identity must be a URI SAN"));
            }
            let mut rpcs = BTreeSet::new();
            for name in &c.rpcs {
                match Rpc::parse(name) {
                    None => problems.push(format!("client {who}: unknown rpc {name:?}")),
                    Some(rpc) if !c.role.may_be_granted(rpc) => problems.push(format!(
                        "client {who}: role {:?} may not be granted {rpc}",
                        c.role
                    )),
                    Some(rpc) => {
                        rpcs.insert(rpc);
                    }
                }
            }
            let procedures = if c.procedures.iter().any(|p| p == "*") {
                None
            } else {
                for p in &c.procedures {
                    if !is_procedure_code(p) {
                        problems.push(format!("client {who}: bad procedure code {p:?}"));
                    }
                }
                Some(c.procedures.iter().cloned().collect())
            };
            let fields = match c.fields {
                Some(f) if !f.iter().any(|x| x == "*") => {
                    for x in &f {
                        if !disclosure::is_known_field(x) {
                            problems.push(format!("client {who}: unknown field {x:?}"));
                        }
                    }
                    Some(f.into_iter().collect())
                }
                _ => None,
            };
            if c.display_name.as_deref().is_some_and(|n| {
                n.trim().is_empty() || n.len() > 200 || n.chars().any(char::is_control)
            }) {
                problems.push(format!(
                    "client {who}: display_name must be 1 to 200 characters, no control characters"
                ));
            }
            let grant = Grant {
                identity: c.identity.clone(),
                display_name: c.display_name,
                role: c.role,
                rpcs,
                procedures,
                details: c.details,
                fields,
                rate_per_second: c.rate_per_second,
                burst: c.burst,
            };
            if c.rate_per_second == Some(0) || c.burst == Some(0) {
                problems.push(format!(
                    "client {who}: rate_per_second and burst must be at least 1"
                ));
            }
            if clients.insert(c.identity, Arc::new(grant)).is_some() {
                problems.push(format!("client {who}: listed twice"));
            }
        }
        if problems.is_empty() {
            Ok(Policy { clients })
        } else {
            Err(problems)
        }
    }

    /// The grant of `identity` if it may call `rpc`.
    pub fn authorize_rpc(&self, identity: &str, rpc: Rpc) -> Result<Arc<Grant>, Denied> {
        let grant = self.clients.get(identity).ok_or(Denied::UnknownClient)?;
        if !grant.allows_rpc(rpc) {
            return Err(Denied::Rpc(rpc));
        }
        Ok(grant.clone())
    }

    /// The public name of the agency behind `identity`, if the policy gives one.
    pub fn display_name(&self, identity: &str) -> Option<&str> {
        self.clients.get(identity)?.display_name.as_deref()
    }

    /// Whether the policy lists this identity at all.
    pub fn knows(&self, identity: &str) -> bool {
        self.clients.contains_key(identity)
    }

    /// Every client's grant.
    pub fn grants(&self) -> impl Iterator<Item = &Grant> {
        self.clients.values().map(|g| &**g)
    }

    /// Number of clients.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether no client is listed (everything is then denied).
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

fn is_procedure_code(p: &str) -> bool {
    p.len() == 3 && p.starts_with('P') && p[1..].bytes().all(|b| b.is_ascii_digit())
}

/// The demo policy written on first start, for the development PKI's clients.
pub const DEMO_POLICY: &str = include_str!("../config/policy.dev.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_policy_parses_and_denies_by_default() {
        let p = Policy::from_toml(DEMO_POLICY).unwrap();
        assert!(p
            .authorize_rpc("spiffe://nobody/x", Rpc::VerifyIdentity)
            .is_err());
        let portal = p
            .authorize_rpc(crate::pki::PORTAL_ID, Rpc::VerifyIdentity)
            .unwrap();
        assert!(!portal.details);
        assert_eq!(
            p.authorize_rpc(crate::pki::PORTAL_ID, Rpc::GetCitizen)
                .unwrap_err(),
            Denied::Rpc(Rpc::GetCitizen)
        );
        assert!(p
            .authorize_rpc(crate::pki::MINISTRY_ID, Rpc::AuditQuery)
            .is_err());
        assert!(p
            .authorize_rpc(crate::pki::OPERATOR_ID, Rpc::AuditQuery)
            .is_ok());
    }

    #[test]
    fn the_citizen_portal_may_ask_for_access_reports_and_nothing_else() {
        let p = Policy::from_toml(DEMO_POLICY).unwrap();
        assert!(p
            .authorize_rpc(crate::pki::CITIZEN_ID, Rpc::AccessReport)
            .is_ok());
        assert!(p
            .authorize_rpc(crate::pki::MINISTRY_ID, Rpc::AccessReport)
            .is_err());
        assert_eq!(
            p.display_name(crate::pki::MINISTRY_ID),
            Some("Bộ Tư pháp (Ministry of Justice)")
        );
        let errs = Policy::from_toml(
            r#"[[client]]
identity = "spiffe://x/citizen"
display_name = "  "
role = "citizen_portal"
rpcs = ["CitizenAccess.AccessReport", "GetCitizen", "AuditLog.Query", "VerifyIdentity"]

[[client]]
identity = "spiffe://x/ministry"
role = "ministry"
rpcs = ["CitizenAccess.AccessReport"]
"#,
        )
        .unwrap_err();
        assert_eq!(errs.len(), 5, "{errs:?}");
    }

    #[test]
    fn a_role_cannot_be_widened_by_the_file() {
        let errs = Policy::from_toml(
            r#"[[client]]
identity = "spiffe://x/portal"
role = "portal"
rpcs = ["GetCitizen", "AuditLog.Query", "Nope"]
procedures = ["P1"]
fields = ["shoe_size"]
"#,
        )
        .unwrap_err();
        assert_eq!(errs.len(), 5, "{errs:?}");
    }
}
