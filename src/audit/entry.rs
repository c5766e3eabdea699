//! What a caller hands the log for one record, typed: the RPC, the outcome, the code,
//! the name rule and the cache's part are enums, the people are [`Pseudonym`]s that only
//! the [`Pseudonymizer`](super::Pseudonymizer) makes. [`AuditEntry::into_body`] writes
//! them as the words of `docs/audit-format.md`, so the bytes on disk are what they were
//! when these fields were strings (a stored [`RecordBody`] stays strings: it reads any
//! log ever written).

use tonic::Code;

use super::RecordBody;
use crate::cache::CacheOutcome;
use crate::catalogue::{ClaimedProcedure, MatchingRule};
use crate::policy::Rpc;
use crate::telemetry::code_name;

/// A keyed pseudonym of a personal id or a dossier number (lowercase hex of an
/// HMAC-SHA-256 under the node's pseudonym key). Only
/// [`Pseudonymizer`](super::Pseudonymizer) makes one, so a value of this type is never an
/// id in clear: "the log holds pseudonyms, never ids" is a property of the type.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pseudonym(String);

impl Pseudonym {
    /// Made by the pseudonymiser only.
    pub(super) fn from_hex(hex: String) -> Pseudonym {
        Pseudonym(hex)
    }

    /// The hex text, as records and queries hold it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex text.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for Pseudonym {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a record's `rpc` names: a call to one of popgw's RPCs, or one of the two kinds of
/// record the gateway writes on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordedCall {
    /// A call (`VerifyIdentity`, `AuditLog.Query`, … or `unknown`).
    Rpc(Rpc),
    /// The summary of one identity's refusals counted in one second (`refusals`).
    Refusals,
    /// The note of a recovery that cut a torn tail (`audit.recovery`).
    Recovery,
}

impl RecordedCall {
    /// The word in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordedCall::Rpc(rpc) => rpc.name(),
            RecordedCall::Refusals => "refusals",
            RecordedCall::Recovery => "audit.recovery",
        }
    }
}

impl From<Rpc> for RecordedCall {
    fn from(rpc: Rpc) -> RecordedCall {
        RecordedCall::Rpc(rpc)
    }
}

/// A record's outcome: what an answer did, or the code of a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// VerifyIdentity: the declaration matches one living citizen.
    Match,
    /// VerifyIdentity: it does not (the reason is in the detail).
    NoMatch,
    /// GetCitizen / GetHousehold: fields disclosed.
    Disclosed,
    /// ListProcedures.
    Listed,
    /// AuditLog.Query.
    Queried,
    /// AuditLog.Watch.
    Watching,
    /// AuditLog.Head.
    Read,
    /// AuditLog.Verify: the folder verified intact.
    Intact,
    /// AuditLog.Verify: verification found a break (named in the detail).
    Broken,
    /// CitizenAccess.AccessReport.
    Reported,
    /// Limits.Unlock.
    Unlocked,
    /// Refused or failed with this gRPC code (written as the code's name).
    Refused(Code),
    /// A summary of refusals counted, not recorded one by one.
    Aggregated,
    /// Recovery cut a torn tail.
    TornTailCut,
}

impl Outcome {
    /// The word in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Match => "MATCH",
            Outcome::NoMatch => "NO_MATCH",
            Outcome::Disclosed => "DISCLOSED",
            Outcome::Listed => "LISTED",
            Outcome::Queried => "QUERIED",
            Outcome::Watching => "WATCHING",
            Outcome::Read => "READ",
            Outcome::Intact => "INTACT",
            Outcome::Broken => "BROKEN",
            Outcome::Reported => "REPORTED",
            Outcome::Unlocked => "UNLOCKED",
            Outcome::Refused(code) => code_name(code),
            Outcome::Aggregated => "AGGREGATED",
            Outcome::TornTailCut => "TORN_TAIL_CUT",
        }
    }
}

/// What the caller supplies for one request; the log adds seq, time, node and the
/// chain.
#[derive(Clone, Debug)]
pub struct AuditEntry {
    /// The id returned to the caller.
    pub request_id: String,
    /// The client identity (URI SAN), or why there is none.
    pub client: String,
    /// The call.
    pub rpc: RecordedCall,
    /// The procedure the request named.
    pub procedure: ClaimedProcedure,
    /// The dossier number's pseudonym, when the request named one.
    pub case_id: Option<Pseudonym>,
    /// The pseudonym of the person asked about, when the request named a readable id.
    pub subject: Option<Pseudonym>,
    /// Pseudonyms of other people whose data the answer disclosed (relatives, household).
    pub related: Vec<Pseudonym>,
    /// Names of the fields disclosed, never their values.
    pub fields: Vec<String>,
    /// What happened.
    pub outcome: Outcome,
    /// The gRPC code of the answer (none for the records the gateway writes on its own
    /// that answer nobody).
    pub code: Option<Code>,
    /// The name rule applied, once the procedure was known.
    pub rule: Option<MatchingRule>,
    /// What the cache did (none for records of no request).
    pub cache: Option<CacheOutcome>,
    /// Microseconds from the request's start to its record.
    pub latency_us: u64,
    /// What was compared, or why it was refused (never a personal value).
    pub detail: String,
}

impl AuditEntry {
    /// A record of `rpc` with `outcome` and nothing else yet (fill the rest with struct
    /// update syntax).
    pub fn new(rpc: impl Into<RecordedCall>, outcome: Outcome) -> AuditEntry {
        AuditEntry {
            request_id: String::new(),
            client: String::new(),
            rpc: rpc.into(),
            procedure: ClaimedProcedure::None,
            case_id: None,
            subject: None,
            related: Vec::new(),
            fields: Vec::new(),
            outcome,
            code: None,
            rule: None,
            cache: None,
            latency_us: 0,
            detail: String::new(),
        }
    }

    /// The record's JSON object: the entry's fields move into it as the format's words.
    pub fn into_body(self, seq: u64, time_unix_ms: i64, node: String, prev: String) -> RecordBody {
        RecordBody {
            seq,
            time_unix_ms,
            node,
            request_id: self.request_id,
            client: self.client,
            rpc: self.rpc.as_str().to_string(),
            procedure: self.procedure.into_record(),
            case_id: self.case_id.map(Pseudonym::into_string).unwrap_or_default(),
            subject: self.subject.map(Pseudonym::into_string).unwrap_or_default(),
            related: self
                .related
                .into_iter()
                .map(Pseudonym::into_string)
                .collect(),
            fields: self.fields,
            outcome: self.outcome.as_str().to_string(),
            code: self.code.map(code_name).unwrap_or_default().to_string(),
            rule: self
                .rule
                .map(|r| r.as_str())
                .unwrap_or_default()
                .to_string(),
            cache: self
                .cache
                .map(CacheOutcome::as_str)
                .unwrap_or_default()
                .to_string(),
            latency_us: self.latency_us,
            detail: self.detail,
            prev,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Pseudonymizer;

    /// The words the typed fields write are the words the string fields held: a record
    /// written now is byte for byte what the same answer was written as before.
    #[test]
    fn typed_fields_write_the_words_of_the_format() {
        let keys = Pseudonymizer::new([1; 32]);
        let subject = keys.pseudonym("001038047646");
        let case = keys.case_pseudonym("DEMO-1");
        let entry = AuditEntry {
            request_id: "r1".into(),
            client: "spiffe://popgw.dev/portal/dvcqg".into(),
            procedure: ClaimedProcedure::Known("P03".into()),
            case_id: Some(case.clone()),
            subject: Some(subject.clone()),
            fields: vec!["verdict".into()],
            code: Some(Code::Ok),
            rule: Some(MatchingRule::Exact),
            cache: Some(CacheOutcome::Hit),
            latency_us: 7,
            detail: "compared=id,name,dob".into(),
            ..AuditEntry::new(Rpc::VerifyIdentity, Outcome::NoMatch)
        };
        let json =
            serde_json::to_string(&entry.into_body(3, 1_700_000_000_000, "n".into(), "00".into()))
                .unwrap();
        assert_eq!(
            json,
            format!(
                "{{\"seq\":3,\"time_unix_ms\":1700000000000,\"node\":\"n\",\"request_id\":\"r1\",\
                 \"client\":\"spiffe://popgw.dev/portal/dvcqg\",\"rpc\":\"VerifyIdentity\",\
                 \"procedure\":\"P03\",\"case_id\":\"{case}\",\"subject\":\"{subject}\",\"related\":[],\
                 \"fields\":[\"verdict\"],\"outcome\":\"NO_MATCH\",\"code\":\"OK\",\"rule\":\"EXACT\",\
                 \"cache\":\"hit\",\"latency_us\":7,\"detail\":\"compared=id,name,dob\",\"prev\":\"00\"}}"
            )
        );
        let words = |e: AuditEntry| {
            let b = e.into_body(1, 0, String::new(), String::new());
            (
                b.rpc,
                b.procedure,
                b.outcome,
                b.code,
                b.rule,
                b.cache,
                b.subject,
                b.case_id,
            )
        };
        let s = String::new;
        // A refusal before the procedure was known, of an unknown code.
        assert_eq!(
            words(AuditEntry {
                procedure: ClaimedProcedure::Unknown("P99".into()),
                code: Some(Code::InvalidArgument),
                cache: Some(CacheOutcome::None),
                ..AuditEntry::new(Rpc::GetCitizen, Outcome::Refused(Code::InvalidArgument))
            }),
            (
                s() + "GetCitizen",
                s() + "?P99",
                s() + "INVALID_ARGUMENT",
                s() + "INVALID_ARGUMENT",
                s(),
                s() + "none",
                s(),
                s()
            )
        );
        // The gateway's own records.
        let summary = words(AuditEntry::new(RecordedCall::Refusals, Outcome::Aggregated));
        assert_eq!(
            (summary.0.as_str(), summary.2.as_str()),
            ("refusals", "AGGREGATED")
        );
        let recovery = words(AuditEntry::new(
            RecordedCall::Recovery,
            Outcome::TornTailCut,
        ));
        assert_eq!(
            (
                recovery.0.as_str(),
                recovery.2.as_str(),
                recovery.3.as_str()
            ),
            ("audit.recovery", "TORN_TAIL_CUT", "")
        );
        assert_eq!(
            words(AuditEntry {
                procedure: ClaimedProcedure::Unreadable,
                ..AuditEntry::new(Rpc::Unknown, Outcome::Refused(Code::Unimplemented))
            })
            .1,
            "?"
        );
    }
}
