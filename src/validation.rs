//! Checks every field of a request before any lookup: personal ids (12 digits, the
//! province/century/sex/year structure, the old 9-digit id), names, dates, case ids.

/// The 63 historical province codes (PPP of the 12-digit id) and their names (kept
/// beside the contracts, in `popgw-proto`: the population generator draws from it too).
pub use crate::proto::PROVINCES;

use chrono::{Datelike, NaiveDate};
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

use crate::proto::registry::Sex;

/// Longest accepted full name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Longest accepted case id (dossier number), in characters.
pub const MAX_CASE_ID_CHARS: usize = 64;

/// A request field that failed validation. The message names the field and the
/// rule, never the value (it may be personal data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    /// The request field's name.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field,
        reason: reason.into(),
    }
}

/// A parsed 12-digit personal id: PPP G YY RRRRRR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonalId {
    /// The 12 digits.
    pub digits: String,
    /// The province of birth registration, `None` for an unknown prefix (births
    /// abroad use codes not in the table: unknown origin, not forgery).
    pub province: Option<&'static str>,
    /// Sex encoded by digit 4.
    pub sex: Sex,
    /// Birth year encoded by digit 4 (century) and digits 5-6.
    pub birth_year: i32,
}

/// A personal id as declared: the 12-digit id, or the old 9-digit CMND where the
/// procedure accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeclaredId {
    /// The 12-digit personal id.
    Personal(PersonalId),
    /// The old 9-digit id (its prefix cannot be validated).
    Old(String),
}

impl DeclaredId {
    /// The digits.
    pub fn digits(&self) -> &str {
        match self {
            DeclaredId::Personal(p) => &p.digits,
            DeclaredId::Old(d) => d,
        }
    }
}

/// Parses a 12-digit personal id (surrounding ASCII white space trimmed).
pub fn parse_personal_id(raw: &str) -> Result<PersonalId, InvalidField> {
    let s = raw.trim_ascii();
    if s.is_empty() {
        return Err(invalid("personal_id", "required"));
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("personal_id", "must contain only ASCII digits"));
    }
    if s.len() != 12 {
        return Err(invalid("personal_id", "must be exactly 12 digits"));
    }
    let b = s.as_bytes();
    let g = (b[3] - b'0') as i32;
    let yy = ((b[4] - b'0') * 10 + (b[5] - b'0')) as i32;
    let prefix = &s[..3];
    Ok(PersonalId {
        digits: s.to_string(),
        province: PROVINCES
            .iter()
            .find(|(code, _)| *code == prefix)
            .map(|(_, name)| *name),
        sex: if g % 2 == 0 { Sex::Male } else { Sex::Female },
        birth_year: 1900 + (g / 2) * 100 + yy,
    })
}

/// Parses a declared id: 12 digits always; 9 digits only when `old_id_accepted`.
pub fn parse_declared_id(raw: &str, old_id_accepted: bool) -> Result<DeclaredId, InvalidField> {
    let s = raw.trim_ascii();
    if s.len() == 9 && s.bytes().all(|b| b.is_ascii_digit()) {
        return if old_id_accepted {
            Ok(DeclaredId::Old(s.to_string()))
        } else {
            Err(invalid(
                "personal_id",
                "the old 9-digit id is not accepted for this procedure; give the 12-digit id",
            ))
        };
    }
    parse_personal_id(s).map(DeclaredId::Personal)
}

/// A declared date of birth: a full date, or only a year.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BirthDate {
    /// YYYY-MM-DD.
    Full(NaiveDate),
    /// YYYY only.
    Year(i32),
}

impl BirthDate {
    /// The year.
    pub fn year(&self) -> i32 {
        match self {
            BirthDate::Full(d) => d.year(),
            BirthDate::Year(y) => *y,
        }
    }
}

/// Parses "YYYY-MM-DD" or "YYYY" without judging it against today (used for records too).
pub fn parse_date_shape(s: &str) -> Option<BirthDate> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(|c| c.is_ascii_digit());
    match b.len() {
        4 if digits(0..4) => s.parse().ok().map(BirthDate::Year),
        10 if digits(0..4) && b[4] == b'-' && digits(5..7) && b[7] == b'-' && digits(8..10) => {
            let y = s[0..4].parse().ok()?;
            let m = s[5..7].parse().ok()?;
            let d = s[8..10].parse().ok()?;
            NaiveDate::from_ymd_opt(y, m, d).map(BirthDate::Full)
        }
        _ => None,
    }
}

/// Today's date in Vietnam (UTC+7), the reference for "future" birth dates.
pub fn today_in_vietnam() -> NaiveDate {
    (chrono::Utc::now() + chrono::Duration::hours(7)).date_naive()
}

/// Parses a declared date of birth; `Ok(None)` when not provided (empty).
pub fn parse_birth_date(raw: &str, today: NaiveDate) -> Result<Option<BirthDate>, InvalidField> {
    let s = raw.trim_ascii();
    if s.is_empty() {
        return Ok(None);
    }
    let date = parse_date_shape(s).ok_or_else(|| {
        invalid(
            "date_of_birth",
            "must be a real date as YYYY-MM-DD, or a year as YYYY",
        )
    })?;
    if date.year() < 1900 {
        return Err(invalid("date_of_birth", "year before 1900"));
    }
    let future = match date {
        BirthDate::Full(d) => d > today,
        BirthDate::Year(y) => y > today.year(),
    };
    if future {
        return Err(invalid("date_of_birth", "is in the future"));
    }
    Ok(Some(date))
}

/// Whether `s` is certainly in NFC already (the quick check: most names arrive composed,
/// and normalising them again would only cost time).
pub(crate) fn is_nfc(s: &str) -> bool {
    is_nfc_quick(s.chars()) == IsNormalized::Yes
}

/// Checks a declared full name: required, at most 100 characters, no control
/// characters, at least one letter.
pub fn check_full_name(raw: &str) -> Result<(), InvalidField> {
    if raw.trim().is_empty() {
        return Err(invalid("full_name", "required"));
    }
    // A cheap bound on the raw bytes first: NFC of a huge string (up to the message size
    // limit) costs time before any limit applies. Vietnamese letters take at most three
    // code points decomposed (base, vowel mark, tone mark), each at most 3 bytes in UTF-8.
    // Then counted after NFC: a name sent decomposed (NFD) is not longer than the same
    // name composed.
    let nfc_chars = || {
        if is_nfc(raw) {
            raw.chars().count()
        } else {
            raw.nfc().count()
        }
    };
    if raw.len() > MAX_NAME_CHARS * 9 || nfc_chars() > MAX_NAME_CHARS {
        return Err(invalid(
            "full_name",
            format!("longer than {MAX_NAME_CHARS} characters"),
        ));
    }
    if raw
        .chars()
        .any(|c| c.is_control() || is_invisible_format(c))
    {
        return Err(invalid(
            "full_name",
            "contains control or invisible formatting characters",
        ));
    }
    if raw.chars().any(|c| c.is_ascii_digit()) {
        return Err(invalid("full_name", "contains digits"));
    }
    if !raw.chars().any(char::is_alphabetic) {
        return Err(invalid("full_name", "contains no letter"));
    }
    Ok(())
}

/// Zero-width characters that name matching folds away (they slip into copied names).
fn is_zero_width(c: char) -> bool {
    matches!(
        c,
        '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}'
    )
}

/// Invisible formatting characters (bidirectional overrides, soft hyphen...) that could
/// disguise what an operator reads in the audit log; zero-width spaces are tolerated in
/// names only.
fn is_invisible_format(c: char) -> bool {
    !is_zero_width(c)
        && matches!(c, '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}' | '\u{180B}'..='\u{180F}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2061}'..='\u{206F}' | '\u{FE00}'..='\u{FE0F}' | '\u{FFF9}'..='\u{FFFB}')
}

/// Checks the case id (dossier number): required, 1-64 printable characters.
pub fn check_case_id(raw: &str) -> Result<String, InvalidField> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(invalid("case_id", "required (the dossier number)"));
    }
    if s.chars().count() > MAX_CASE_ID_CHARS {
        return Err(invalid(
            "case_id",
            format!("longer than {MAX_CASE_ID_CHARS} characters"),
        ));
    }
    if s.chars()
        .any(|c| c.is_control() || is_invisible_format(c) || is_zero_width(c))
    {
        return Err(invalid("case_id", "contains non-printable characters"));
    }
    Ok(s.to_string())
}

/// Refuses a dossier number that contains the request's personal id (`id_digits`, 9 or
/// 12 digits): the dossier number is written in clear to the audit log, which promises
/// pseudonyms.
pub fn check_case_not_id(case_id: &str, id_digits: &str) -> Result<(), InvalidField> {
    if id_digits.len() >= 9 && case_id.contains(id_digits) {
        return Err(invalid(
            "case_id",
            "must not contain the personal id (it would be written in clear to the audit log)",
        ));
    }
    Ok(())
}

/// The declared sex: `None` when not provided; an unknown enum value is an error.
pub fn parse_sex(raw: i32) -> Result<Option<Sex>, InvalidField> {
    match Sex::try_from(raw) {
        Ok(Sex::Unspecified) => Ok(None),
        Ok(s) => Ok(Some(s)),
        Err(_) => Err(invalid("sex", "unknown value")),
    }
}

/// Whether the id's sex/century digit and year digits agree with what was declared.
/// Returns the first inconsistency found, as a field name.
pub fn id_consistency(
    id: &PersonalId,
    sex: Option<Sex>,
    birth: Option<BirthDate>,
) -> Result<(), &'static str> {
    if let Some(sex) = sex {
        if sex != id.sex {
            return Err("sex");
        }
    }
    if let Some(b) = birth {
        if b.year() != id.birth_year {
            return Err("date_of_birth");
        }
    }
    Ok(())
}

/// Checks a record as a registry holds it, before it is stored (import, update) or
/// trusted (an answer from a remote registry): the id's structure, its sex and year
/// digits against the record's sex and date of birth, real dates not in the future,
/// a name, and the shape of the old id and household id. The first problem is
/// returned, naming the record field, never its value.
pub fn check_record(r: &crate::proto::registry::CitizenRecord) -> Result<(), InvalidField> {
    let id = parse_personal_id(&r.personal_id)?;
    if id.digits != r.personal_id {
        return Err(invalid("personal_id", "has surrounding white space"));
    }
    let sex = match Sex::try_from(r.sex) {
        Ok(Sex::Male) => Sex::Male,
        Ok(Sex::Female) => Sex::Female,
        _ => return Err(invalid("sex", "must be male or female")),
    };
    if sex != id.sex {
        return Err(invalid("sex", "disagrees with the id's sex digit"));
    }
    let today = today_in_vietnam();
    let birth = parse_birth_date(&r.date_of_birth, today)?
        .ok_or_else(|| invalid("date_of_birth", "required"))?;
    if birth.year() != id.birth_year {
        return Err(invalid(
            "date_of_birth",
            "year disagrees with the id's year digits",
        ));
    }
    check_full_name(&r.full_name)?;
    let old = &r.old_id_number;
    if !old.is_empty() && (old.len() != 9 || !old.bytes().all(|b| b.is_ascii_digit())) {
        return Err(invalid(
            "old_id_number",
            "must be empty or exactly 9 digits",
        ));
    }
    for (field, date) in [
        ("date_of_death", &r.date_of_death),
        ("date_of_disappearance", &r.date_of_disappearance),
    ] {
        if date.is_empty() {
            continue;
        }
        match parse_date_shape(date) {
            Some(BirthDate::Full(d)) if d > today => {
                return Err(invalid(field, "is in the future"));
            }
            Some(BirthDate::Full(d))
                if match birth {
                    BirthDate::Full(b) => d < b,
                    BirthDate::Year(y) => d.year() < y,
                } =>
            {
                return Err(invalid(field, "is before the date of birth"));
            }
            Some(BirthDate::Full(_)) => {}
            _ => return Err(invalid(field, "must be a real date as YYYY-MM-DD")),
        }
    }
    if let Some(h) = &r.household {
        if !h.household_id.is_empty() {
            check_household_id(&h.household_id)?;
        }
    }
    Ok(())
}

/// Checks a household id: 1-64 ASCII letters, digits, '-' or '_'.
pub fn check_household_id(raw: &str) -> Result<(), InvalidField> {
    if raw.is_empty() || raw.len() > 64 {
        return Err(invalid("household_id", "must be 1 to 64 characters"));
    }
    if !raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(invalid(
            "household_id",
            "may hold only ASCII letters, digits, '-' and '_'",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
