//! Matching: compares what a citizen declared with the record, by the procedure's
//! fixed name rule (never the caller's choice), and decides the verdict.
//!
//! - EXACT: Unicode NFC, case folded, white space (including no-break and zero-width
//!   spaces) collapsed.
//! - TOLERANT: EXACT, then diacritics removed (đ/Đ and the look-alike ð/Ð mapped to d
//!   explicitly, since they do not decompose), which also makes tone-mark placement
//!   (hòa/hoà) irrelevant, and y folded to i (Lý/Lí).
//!
//! Invariant: a deceased or disappeared citizen never verifies; an unfound id is NO_MATCH only when
//! the registry answered "no such citizen" (a registry error is "could not check").

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

use crate::catalogue::MatchingRule;
use crate::proto::registry::{CitizenRecord, Sex};
use crate::validation::{is_nfc, parse_date_shape, BirthDate};

/// Normalises a name for EXACT comparison.
pub fn normalise_exact(name: &str) -> String {
    if is_nfc(name) {
        fold(name.chars())
    } else {
        fold(name.nfc())
    }
}

/// Case folds and collapses the white space of a name's NFC characters.
fn fold(chars: impl Iterator<Item = char>) -> String {
    let mut out = String::with_capacity(chars.size_hint().0);
    let mut pending_space = false;
    for c in chars {
        if matches!(
            c,
            '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}'
        ) {
            continue;
        }
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.extend(c.to_lowercase());
    }
    // Lower-casing can produce decomposed sequences; recompose.
    if is_nfc(&out) {
        out
    } else {
        out.nfc().collect()
    }
}

/// Normalises a name for TOLERANT comparison.
pub fn normalise_tolerant(name: &str) -> String {
    normalise_exact(name)
        .nfd()
        .filter(|c| !is_combining_mark(*c))
        .map(|c| match c {
            'đ' | 'ð' | 'ɖ' => 'd',
            'y' => 'i',
            c => c,
        })
        .collect()
}

/// Whether two names are the same under `rule`.
pub fn names_match(rule: MatchingRule, declared: &str, recorded: &str) -> bool {
    match rule {
        MatchingRule::Exact => normalise_exact(declared) == normalise_exact(recorded),
        MatchingRule::Tolerant => normalise_tolerant(declared) == normalise_tolerant(recorded),
    }
}

/// The result of comparing one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldResult {
    /// Compared and equal.
    Match,
    /// Compared and different.
    Mismatch,
    /// The caller did not declare it.
    NotProvided,
    /// Not compared (no record to compare with).
    NotCompared,
}

/// Why the verdict is NO_MATCH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoMatchReason {
    /// No citizen has this id.
    NotFound,
    /// The citizen is recorded as deceased.
    Deceased,
    /// The citizen is recorded as disappeared.
    Disappeared,
    /// At least one declared field differs from the record.
    FieldsDiffer,
    /// The id's digits contradict the declared sex or birth year (no lookup made).
    IdInconsistent,
}

/// The outcome of one verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// `None` for MATCH.
    pub no_match: Option<NoMatchReason>,
    /// Per-field results: personal id, full name, date of birth, sex.
    pub personal_id: FieldResult,
    /// Full name.
    pub full_name: FieldResult,
    /// Date of birth.
    pub date_of_birth: FieldResult,
    /// Sex.
    pub sex: FieldResult,
}

impl Verification {
    /// Whether the verdict is MATCH.
    pub fn is_match(&self) -> bool {
        self.no_match.is_none()
    }

    /// NO_MATCH before any lookup because the id contradicts the declaration.
    pub fn id_inconsistent(field: &str, sex_declared: bool, dob_declared: bool) -> Self {
        let declared = |d: bool| {
            if d {
                FieldResult::NotCompared
            } else {
                FieldResult::NotProvided
            }
        };
        let mut v = Verification {
            no_match: Some(NoMatchReason::IdInconsistent),
            personal_id: FieldResult::Mismatch,
            full_name: FieldResult::NotCompared,
            date_of_birth: declared(dob_declared),
            sex: declared(sex_declared),
        };
        match field {
            "sex" => v.sex = FieldResult::Mismatch,
            _ => v.date_of_birth = FieldResult::Mismatch,
        }
        v
    }
}

/// What the caller declared, validated.
#[derive(Debug, Clone)]
pub struct Declaration<'a> {
    /// Full name as declared.
    pub full_name: &'a str,
    /// Date of birth, if declared.
    pub date_of_birth: Option<BirthDate>,
    /// Sex, if declared.
    pub sex: Option<Sex>,
}

/// Compares a declaration with the registry's answer (`None`: no such citizen).
///
/// Dates compare at the precision declared: a full date matches only the same full
/// date; a year-only declaration matches only a record that itself holds only that
/// year (a year-only claim must not verify a record that knows the full date).
pub fn verify(
    rule: MatchingRule,
    declared: &Declaration<'_>,
    record: Option<&CitizenRecord>,
) -> Verification {
    let Some(record) = record else {
        return Verification {
            no_match: Some(NoMatchReason::NotFound),
            personal_id: FieldResult::Mismatch,
            full_name: FieldResult::NotCompared,
            date_of_birth: FieldResult::NotCompared,
            sex: FieldResult::NotCompared,
        };
    };
    let cmp = |ok: bool| {
        if ok {
            FieldResult::Match
        } else {
            FieldResult::Mismatch
        }
    };
    let full_name = cmp(names_match(rule, declared.full_name, &record.full_name));
    let date_of_birth = match declared.date_of_birth {
        None => FieldResult::NotProvided,
        Some(d) => cmp(parse_date_shape(&record.date_of_birth) == Some(d)),
    };
    let sex = match declared.sex {
        None => FieldResult::NotProvided,
        Some(s) => cmp(record.sex == s as i32),
    };
    let differ = [full_name, date_of_birth, sex].contains(&FieldResult::Mismatch);
    let no_match = if !record.date_of_death.is_empty() {
        Some(NoMatchReason::Deceased)
    } else if !record.date_of_disappearance.is_empty() {
        Some(NoMatchReason::Disappeared)
    } else if differ {
        Some(NoMatchReason::FieldsDiffer)
    } else {
        None
    };
    Verification {
        no_match,
        personal_id: FieldResult::Match,
        full_name,
        date_of_birth,
        sex,
    }
}

#[cfg(test)]
mod tests;
