//! Refusals recorded without becoming a weapon.
//!
//! Every refused call leaves an audit record — but a client refused ten thousand times
//! a second (a certificate missing from the policy, a flood of malformed calls) would
//! otherwise write ten thousand records a second, fsynced, to the log, the witness and
//! the index (issue 25 measured 10,000 records, 11.5 MB, from one connection in 6 s).
//! So, per client identity and second: the first `limits.refusals_recorded_per_second`
//! refusals (a tenth of that, at least one, for an identity the policy does not know, or
//! none at all) are recorded one by one as before; the rest are answered at once and
//! only counted, and one summary record per identity and second — how many, with which
//! codes and RPCs — is written by [`Refusals::flush`] within about a second. Nothing is
//! lost (every refusal is in a record or a count) and the log grows by a bounded amount
//! per identity and second.
//!
//! What is aggregated: refusals that disclosed nothing and consulted nothing —
//! unauthenticated, denied, invalid, rate-limited, locked, shed, undecodable. Answers
//! ("could not check", NOT_FOUND) and audit or internal failures are always recorded
//! one by one. Invariant: a summary holds counts, codes and RPC names only, never a
//! subject, a dossier or a request's content.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use tonic::Code;

use crate::audit::{AuditEntry, Outcome, RecordedCall};
use crate::error::{code_name, GatewayError};
use crate::policy::Rpc;

/// One identity's refusals within one second.
#[derive(Debug, Default)]
struct Window {
    second: i64,
    written: u32,
    held: u32,
    codes: BTreeMap<&'static str, (Code, u32)>,
    rpcs: BTreeMap<&'static str, u32>,
}

/// Refusals held (counted, not recorded one by one) from one identity in one second:
/// what its summary record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The identity (as a record's `client` would name it).
    pub client: String,
    /// The second (Unix seconds).
    pub second: i64,
    /// Refusals counted.
    pub count: u32,
    /// By gRPC code name (the code beside its count).
    pub codes: BTreeMap<&'static str, (Code, u32)>,
    /// By RPC name.
    pub rpcs: BTreeMap<&'static str, u32>,
}

impl Summary {
    /// The summary's audit record.
    pub fn entry(&self) -> AuditEntry {
        let list = |m: Vec<(&str, u32)>| {
            m.iter()
                .map(|(k, n)| format!("{k}×{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // In the order of the names, as these records have always listed them.
        let codes = self.codes.iter().map(|(k, (_, n))| (*k, *n)).collect();
        let rpcs = self.rpcs.iter().map(|(k, n)| (*k, *n)).collect();
        // The commonest code (the last of equals in the names' order).
        let code = self.codes.values().max_by_key(|(_, n)| *n).map(|(c, _)| *c);
        AuditEntry {
            request_id: format!("refusals-{}", self.second),
            client: self.client.clone(),
            code,
            detail: format!(
                "{} refusals in second {} counted, not recorded one by one: {}; {}",
                self.count,
                self.second,
                list(codes),
                list(rpcs)
            ),
            ..AuditEntry::new(RecordedCall::Refusals, Outcome::Aggregated)
        }
    }
}

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recording {
    /// Record it one by one, as any request.
    Record,
    /// Count it into its identity's summary for this second.
    Count,
}

/// The per-identity, per-second refusal windows (see the module documentation).
#[derive(Debug)]
pub struct Refusals {
    windows: Mutex<HashMap<String, Window>>,
    ready: Mutex<Vec<Summary>>,
    per_second: u32,
}

/// Whether a refusal may be counted rather than recorded one by one.
pub fn aggregable(e: &GatewayError) -> bool {
    !matches!(
        e,
        GatewayError::Upstream(_)
            | GatewayError::NotFound(_)
            | GatewayError::Audit(_)
            | GatewayError::Index(_)
            | GatewayError::Internal
    )
}

impl Refusals {
    /// Windows recording `per_second` refusals one by one per known identity.
    pub fn new(per_second: u32) -> Refusals {
        Refusals {
            windows: Mutex::new(HashMap::new()),
            ready: Mutex::new(Vec::new()),
            per_second,
        }
    }

    /// Decides for one refusal by `client` (`known`: the policy lists it) at Unix second
    /// `second`.
    pub fn admit(&self, client: &str, known: bool, rpc: Rpc, code: Code, second: i64) -> Recording {
        let allowance = if known {
            self.per_second
        } else {
            (self.per_second / 10).max(1).min(self.per_second)
        };
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let window = windows.entry(client.to_string()).or_default();
        if window.second != second {
            let old = std::mem::take(window);
            if old.held > 0 {
                self.ready
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(summary(client, old));
            }
            window.second = second;
        }
        if window.written < allowance {
            window.written += 1;
            return Recording::Record;
        }
        window.held += 1;
        window.codes.entry(code_name(code)).or_insert((code, 0)).1 += 1;
        *window.rpcs.entry(rpc.name()).or_default() += 1;
        Recording::Count
    }

    /// The summaries of every second before `second` that held refusals (to be written
    /// now); windows of past seconds are forgotten.
    pub fn flush(&self, second: i64) -> Vec<Summary> {
        let mut out = std::mem::take(&mut *self.ready.lock().unwrap_or_else(|p| p.into_inner()));
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows.retain(|client, w| {
            if w.second >= second {
                return true;
            }
            if w.held > 0 {
                out.push(summary(client, std::mem::take(w)));
            }
            false
        });
        out
    }
}

fn summary(client: &str, w: Window) -> Summary {
    Summary {
        client: client.to_string(),
        second: w.second,
        count: w.held,
        codes: w.codes,
        rpcs: w.rpcs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beyond_the_allowance_refusals_are_counted_and_summarised_per_second() {
        let r = Refusals::new(3);
        let rec = |second| {
            r.admit(
                "spiffe://a",
                true,
                Rpc::VerifyIdentity,
                Code::PermissionDenied,
                second,
            )
        };
        assert_eq!(
            (0..5).map(|_| rec(100)).collect::<Vec<_>>(),
            [
                Recording::Record,
                Recording::Record,
                Recording::Record,
                Recording::Count,
                Recording::Count
            ]
        );
        assert!(r.flush(100).is_empty(), "the second is not over");
        // The next second starts a new allowance; the last one's summary is ready.
        assert_eq!(rec(101), Recording::Record);
        let s = r.flush(101);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].second, s[0].count), (100, 2));
        assert!(s[0].entry().detail.starts_with("2 refusals in second 100"));
        assert!(r.flush(102).is_empty(), "nothing held in second 101");
    }

    #[test]
    fn an_identity_the_policy_does_not_know_gets_the_tightest_allowance() {
        let r = Refusals::new(20);
        let recorded = (0..20)
            .filter(|_| {
                r.admit(
                    "spiffe://x",
                    false,
                    Rpc::VerifyIdentity,
                    Code::PermissionDenied,
                    7,
                ) == Recording::Record
            })
            .count();
        assert_eq!(recorded, 2);
    }

    /// A summary's words are what they have always been: codes and RPCs by name, in
    /// alphabetical order, and the commonest code (the last of equals) as its code.
    #[test]
    fn a_summary_lists_codes_and_rpcs_by_name() {
        let r = Refusals::new(1);
        assert_eq!(
            r.admit("c", true, Rpc::ListProcedures, Code::Unauthenticated, 5),
            Recording::Record
        );
        for (rpc, code) in [
            (Rpc::VerifyIdentity, Code::PermissionDenied),
            (Rpc::GetCitizen, Code::InvalidArgument),
        ] {
            assert_eq!(r.admit("c", true, rpc, code, 5), Recording::Count);
        }
        let s = r.flush(6);
        let entry = s[0].entry();
        assert_eq!(
            entry.detail,
            "2 refusals in second 5 counted, not recorded one by one: \
             INVALID_ARGUMENT×1, PERMISSION_DENIED×1; GetCitizen×1, VerifyIdentity×1"
        );
        assert_eq!(entry.code, Some(Code::PermissionDenied));
    }
}
