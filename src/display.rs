//! How the command-line client shows answers at a terminal (`popgw verify`,
//! `citizen`, `household`, `procedures`, `audit …`). Pure formatting: the binary's
//! commands (`cli/call.rs`, `cli/conn.rs`) make the calls and print what these functions
//! return. [`Progress`] shows a
//! long import: a bar on a terminal, a plain line now and then otherwise.

use std::fmt::Write as _;

use crate::audit::VerifyReport;
use crate::proto::gateway as pb;

/// A proto enum value's name without its type prefix (VERDICT_MATCH → MATCH).
pub fn enum_name(s: &str) -> &str {
    for prefix in [
        "VERDICT_",
        "FIELD_RESULT_",
        "NO_MATCH_REASON_",
        "MATCHING_RULE_",
    ] {
        if let Some(rest) = s.strip_prefix(prefix) {
            return rest;
        }
    }
    s
}

/// A verdict, and the per-field details when the caller was granted them.
pub fn verification(a: &pb::VerifyIdentityResponse) -> String {
    let mut out = format!(
        "{}  (request {})",
        enum_name(a.verdict().as_str_name()),
        a.request_id
    );
    if let Some(d) = &a.details {
        if d.reason != 0 {
            let _ = write!(
                out,
                "\n  reason:        {}",
                enum_name(d.reason().as_str_name())
            );
        }
        for (label, value) in [
            ("personal_id:  ", d.personal_id().as_str_name()),
            ("full_name:    ", d.full_name().as_str_name()),
            ("date_of_birth:", d.date_of_birth().as_str_name()),
            ("sex:          ", d.sex().as_str_name()),
            ("name rule:    ", d.rule().as_str_name()),
        ] {
            let _ = write!(out, "\n  {label} {}", enum_name(value));
        }
    }
    out
}

fn camel(field: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for c in field.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The disclosed fields of a minimised record, one per line, in the mask's order.
pub fn citizen(a: &pb::GetCitizenResponse) -> String {
    let mut out = format!("request {}", a.request_id);
    let record = serde_json::to_value(a.citizen.clone().unwrap_or_default()).unwrap_or_default();
    for field in &a.disclosed_fields {
        let value = record
            .get(camel(field))
            .cloned()
            .unwrap_or(serde_json::Value::String(String::new()));
        let _ = write!(out, "\n  {field:<26} {value}");
    }
    out
}

/// The household head, then the members.
pub fn household(a: &pb::GetHouseholdResponse) -> String {
    let mut out = format!("request {}", a.request_id);
    for m in a.head.iter().chain(a.members.iter()) {
        let _ = write!(
            out,
            "\n  {:<14} {:<12} {}",
            m.relation_to_head, m.personal_id, m.full_name
        );
    }
    out
}

/// The catalogue, three lines a procedure.
pub fn procedures(a: &pb::ListProceduresResponse) -> String {
    let mut out = String::new();
    for p in &a.procedures {
        if !out.is_empty() {
            out.push('\n');
        }
        let _ = write!(
            out,
            "{}  {:<8} {}  [{}]\n      {}\n      fields: {}",
            p.code,
            enum_name(p.matching_rule().as_str_name()),
            p.name_en,
            p.lead_agency,
            p.name_vi,
            p.readable_fields.join(", ")
        );
    }
    out
}

/// A value as printed on a terminal: control characters escaped, so that nothing read
/// from the log can move the cursor or forge a line.
fn shown(value: &str) -> std::borrow::Cow<'_, str> {
    if value.chars().any(char::is_control) {
        value.escape_default().to_string().into()
    } else {
        value.into()
    }
}

/// One audit record: its proto3 JSON (the chained line in its `json` field), or a
/// readable summary (subject shortened).
pub fn audit_record(r: &pb::AuditRecord, json: bool) -> String {
    if json {
        // The proto3 JSON mapping like every other --json (the chained line is its
        // `json` field); serialising a generated message cannot fail.
        return serde_json::to_string(r).unwrap_or_default();
    }
    let time = chrono::DateTime::from_timestamp_millis(r.time_unix_ms)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default();
    format!(
        "{:>8} {time} {} {} {} case={} subject={} {} {} cache={} fields=[{}]{}",
        r.seq,
        shown(&r.client),
        shown(&r.rpc),
        shown(&r.procedure),
        shown(&r.case_id),
        shown(r.subject.get(..12).unwrap_or(&r.subject)),
        shown(&r.outcome),
        shown(&r.code),
        if r.cache.is_empty() { "none" } else { &r.cache },
        shown(&r.fields.join(",")),
        if r.detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", shown(&r.detail))
        }
    )
}

/// What `popgw audit verify --index` found.
pub fn index_report(r: &crate::audit::index::IndexReport) -> String {
    let list = |seqs: &[u64]| {
        let shown: Vec<String> = seqs.iter().take(20).map(u64::to_string).collect();
        let more = seqs.len().saturating_sub(20);
        shown.join(", ")
            + &if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
    };
    let mut out = format!(
        "index against node {}: {} records identical",
        r.node, r.matched
    );
    if !r.missing.is_empty() {
        let _ = write!(out, "\n  MISSING from the index: seq {}", list(&r.missing));
    }
    for (seq, why) in r.altered.iter().take(20) {
        let _ = write!(out, "\n  ALTERED in the index: seq {seq}: {why}");
    }
    if r.altered.len() > 20 {
        let _ = write!(out, "\n  ALTERED: {} more", r.altered.len() - 20);
    }
    if !r.invented.is_empty() {
        let _ = write!(
            out,
            "\n  INVENTED in the index (no such record on the node): seq {}",
            list(&r.invented)
        );
    }
    if r.not_yet_indexed > 0 {
        let _ = write!(
            out,
            "\n  {} newest records not indexed yet: the index holds this node up to seq {} \
             (the indexer is behind by {} records, or stopped)",
            r.not_yet_indexed, r.indexed_up_to, r.not_yet_indexed
        );
    }
    if r.dropped > 0 {
        let _ = write!(
            out,
            "\n  {} records older than the index's retention, not compared",
            r.dropped
        );
    }
    out
}

/// A citizen's access report as `popgw access-report` prints it.
pub fn access_report(a: &pb::AccessReportResponse) -> String {
    let mut out = format!(
        "{} event(s) (from {}){}",
        a.events.len(),
        if a.source == "index" {
            let until = chrono::DateTime::from_timestamp_millis(a.complete_until_unix_ms)
                .filter(|_| a.complete_until_unix_ms > 0)
                .map(|t| t.to_rfc3339())
                .unwrap_or_else(|| "an unknown time".into());
            format!("every gateway node; complete at least up to {until}")
        } else {
            "this gateway node only".to_string()
        },
        if a.truncated {
            "; more in this period: narrow it"
        } else {
            ""
        }
    );
    for e in &a.events {
        let when = chrono::DateTime::from_timestamp_millis(e.time_unix_ms)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        let action = match pb::AccessAction::try_from(e.action) {
            Ok(pb::AccessAction::Verified) => "verified your identity",
            Ok(pb::AccessAction::Disclosed) if e.as_relative => {
                "saw your data as a relative or household member"
            }
            _ => "saw your data",
        };
        out.push_str(&format!(
            "\n{when}  {}  {action} for {} {} / {} ({})",
            e.agency, e.procedure_code, e.procedure_name_vi, e.procedure_name_en, e.outcome
        ));
        if !e.fields.is_empty() {
            out.push_str(&format!("\n    fields: {}", e.fields.join(", ")));
        }
    }
    out
}

/// A checkpoint as `popgw audit head` prints it.
pub fn checkpoint(h: &pb::AuditCheckpoint) -> String {
    format!(
        "seq {} head {} node {} at {}\n  signature {}\n  public key {}",
        h.seq,
        h.head_hash,
        h.node,
        chrono::DateTime::from_timestamp_millis(h.time_unix_ms)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default(),
        h.signature,
        h.public_key
    ) + &if h.witnessed {
        format!(
            "\n  witnessed up to seq {} ({} records not yet){}",
            h.witnessed_seq,
            h.witness_lag,
            if h.witness_alarm.is_empty() {
                String::new()
            } else {
                format!("\n  WITNESS ALARM: {}", h.witness_alarm)
            }
        )
    } else {
        "\n  no witness configured ([audit.witness])".to_string()
    }
}

/// A successful `audit verify`.
pub fn verify_report(r: &VerifyReport) -> String {
    format!(
        "OK: {} records in {} segments, {} checkpoints; last seq {}, head {}; {} records after the last checkpoint (signed by their batch seals){}",
        r.records,
        r.segments,
        r.checkpoints,
        r.last_seq,
        r.head_hash,
        r.unsigned_tail,
        if r.torn_checkpoint_bytes > 0 {
            format!(
                "; checkpoints.log ends with an unterminated line of {} bytes (an interrupted write, cut at the next start)",
                r.torn_checkpoint_bytes
            )
        } else {
            String::new()
        }
    )
}

/// A gRPC error as the user sees it: code name, message, and a hint when the
/// connection itself failed.
pub fn status(status: &tonic::Status) -> String {
    let hint = if status.message().contains("transport error") {
        " (the connection failed: is the gateway running at this address, and is your \
         certificate signed by its client CA and still valid?)"
    } else {
        ""
    };
    format!(
        "{}: {}{hint}",
        crate::error::code_name(status.code()),
        status.message()
    )
}

/// Progress of a long-running count (an import), on standard error: an indicatif
/// spinner with the count and rate on a terminal; otherwise a plain line every
/// `every` items, so that logs and pipes get something readable.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    every: u64,
    next: u64,
    started: std::time::Instant,
    what: &'static str,
}

impl Progress {
    /// Starts showing progress of `what` (e.g. "citizens").
    pub fn new(what: &'static str, every: u64) -> Progress {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {human_pos} {msg} ({per_sec}, {elapsed})",
                )
                .expect("static template"),
            );
            bar.set_message(what);
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            bar
        });
        Progress {
            bar,
            every: every.max(1),
            next: every.max(1),
            started: std::time::Instant::now(),
            what,
        }
    }

    /// `done` items so far.
    pub fn update(&mut self, done: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(done),
            None if done >= self.next => {
                eprintln!("{}", self.line(done));
                self.next = (done / self.every + 1) * self.every;
            }
            None => {}
        }
    }

    fn line(&self, done: u64) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        format!(
            "{done} {} in {secs:.1} s ({:.0}/s)",
            self.what,
            done as f64 / secs.max(1e-9)
        )
    }

    /// Clears the bar.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_verdict_shows_no_details() {
        let a = pb::VerifyIdentityResponse {
            verdict: pb::Verdict::NoMatch as i32,
            request_id: "r1".into(),
            details: None,
        };
        assert_eq!(verification(&a), "NO_MATCH  (request r1)");
    }

    #[test]
    fn details_name_the_reason_and_each_field() {
        let a = pb::VerifyIdentityResponse {
            verdict: pb::Verdict::NoMatch as i32,
            request_id: "r2".into(),
            details: Some(pb::VerificationDetails {
                personal_id: pb::FieldResult::Match as i32,
                full_name: pb::FieldResult::Match as i32,
                date_of_birth: pb::FieldResult::Mismatch as i32,
                sex: pb::FieldResult::NotProvided as i32,
                reason: pb::NoMatchReason::FieldsDiffer as i32,
                rule: pb::MatchingRule::Tolerant as i32,
            }),
        };
        let text = verification(&a);
        assert!(text.contains("reason:        FIELDS_DIFFER"), "{text}");
        assert!(text.contains("date_of_birth: MISMATCH"), "{text}");
        assert!(text.contains("sex:           NOT_PROVIDED"), "{text}");
        assert!(text.contains("name rule:     TOLERANT"), "{text}");
    }

    #[test]
    fn only_disclosed_fields_are_printed() {
        let a = pb::GetCitizenResponse {
            request_id: "r3".into(),
            citizen: Some(crate::proto::registry::CitizenRecord {
                full_name: "LÊ THỊ HOA".into(),
                ..Default::default()
            }),
            disclosed_fields: vec!["full_name".into(), "temporary_residence".into()],
        };
        let text = citizen(&a);
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.contains("\"LÊ THỊ HOA\""));
    }
}
