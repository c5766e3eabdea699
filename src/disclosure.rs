//! Data minimisation: reduce a citizen record to the fields a procedure's profile
//! (and the caller's policy) allow, and say which fields actually left the gateway.
//!
//! Field names are the `CitizenRecord` proto field names (`full_name`,
//! `permanent_residence`, ...). Unknown names are ignored here; the catalogue rejects
//! them when it is loaded, so a typo in a profile never widens a disclosure.

use crate::proto::registry::CitizenRecord;

/// Every `CitizenRecord` field that can be disclosed, in proto field order.
/// `version` is internal bookkeeping and is never disclosed.
pub const CITIZEN_FIELDS: &[&str] = &[
    "personal_id",
    "full_name",
    "other_names",
    "date_of_birth",
    "sex",
    "place_of_birth",
    "birth_registration_place",
    "place_of_origin",
    "ethnicity",
    "religion",
    "nationality",
    "blood_group",
    "old_id_number",
    "id_cards",
    "father",
    "mother",
    "spouse",
    "children",
    "legal_representative",
    "permanent_residence",
    "temporary_residence",
    "current_residence",
    "temporary_absence",
    "residence_file_number",
    "marital_status",
    "household",
    "date_of_death",
    "date_of_disappearance",
    "phone",
    "email",
];

/// Is `name` a disclosable `CitizenRecord` field name (see [`CITIZEN_FIELDS`])?
pub fn is_known_field(name: &str) -> bool {
    CITIZEN_FIELDS.contains(&name)
}

/// Copies into `out` the field `name` of `src`; returns whether it holds a value
/// (an empty string, empty list, absent message or zero enum discloses nothing).
fn copy_field(src: &CitizenRecord, out: &mut CitizenRecord, name: &str) -> bool {
    macro_rules! string {
        ($f:ident) => {{
            out.$f = src.$f.clone();
            !out.$f.is_empty()
        }};
    }
    macro_rules! message {
        ($f:ident) => {{
            out.$f = src.$f.clone();
            out.$f.is_some()
        }};
    }
    macro_rules! scalar {
        ($f:ident) => {{
            out.$f = src.$f;
            out.$f != 0
        }};
    }
    match name {
        "personal_id" => string!(personal_id),
        "full_name" => string!(full_name),
        "other_names" => string!(other_names),
        "date_of_birth" => string!(date_of_birth),
        "sex" => scalar!(sex),
        "place_of_birth" => string!(place_of_birth),
        "birth_registration_place" => string!(birth_registration_place),
        "place_of_origin" => string!(place_of_origin),
        "ethnicity" => string!(ethnicity),
        "religion" => string!(religion),
        "nationality" => string!(nationality),
        "blood_group" => string!(blood_group),
        "old_id_number" => string!(old_id_number),
        "id_cards" => string!(id_cards),
        "father" => message!(father),
        "mother" => message!(mother),
        "spouse" => message!(spouse),
        "children" => string!(children),
        "legal_representative" => message!(legal_representative),
        "permanent_residence" => message!(permanent_residence),
        "temporary_residence" => message!(temporary_residence),
        "current_residence" => message!(current_residence),
        "temporary_absence" => string!(temporary_absence),
        "residence_file_number" => string!(residence_file_number),
        "marital_status" => scalar!(marital_status),
        "household" => message!(household),
        "date_of_death" => string!(date_of_death),
        "date_of_disappearance" => string!(date_of_disappearance),
        "phone" => string!(phone),
        "email" => string!(email),
        _ => false,
    }
}

/// Returns a copy of `record` holding only the `allowed` fields (every other field
/// at its default), and the names of the fields actually disclosed, in
/// [`CITIZEN_FIELDS`] order. Every allowed field is listed, even when the record holds
/// nothing there: the list is the field mask that lets a caller tell "empty" (listed,
/// default value) from "not disclosed" (not listed). Unknown names in `allowed` are
/// ignored; `version` is never copied.
pub fn minimise(record: &CitizenRecord, allowed: &[String]) -> (CitizenRecord, Vec<String>) {
    let mut out = CitizenRecord::default();
    let mut disclosed = Vec::new();
    for &field in CITIZEN_FIELDS {
        if allowed.iter().any(|a| a == field) {
            copy_field(record, &mut out, field);
            disclosed.push(field.to_string());
        }
    }
    (out, disclosed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::registry::{Address, Relative, Sex};

    fn full_record() -> CitizenRecord {
        CitizenRecord {
            personal_id: "026092008262".into(),
            full_name: "NGUYỄN VĂN AN".into(),
            other_names: vec!["BA".into()],
            date_of_birth: "1992-03-04".into(),
            sex: Sex::Male as i32,
            place_of_birth: "Vĩnh Phúc".into(),
            ethnicity: "Kinh".into(),
            religion: "Không".into(),
            nationality: "Việt Nam".into(),
            father: Some(Relative {
                full_name: "NGUYỄN VĂN BÌNH".into(),
                ..Default::default()
            }),
            permanent_residence: Some(Address {
                line: "Số 1".into(),
                ..Default::default()
            }),
            marital_status: 1,
            phone: "x".into(),
            version: 7,
            ..Default::default()
        }
    }

    fn allow(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_allowed_fields_appear() {
        let r = full_record();
        let (m, disclosed) = minimise(&r, &allow(&["full_name", "permanent_residence", "sex"]));
        assert_eq!(m.full_name, r.full_name);
        assert_eq!(m.permanent_residence, r.permanent_residence);
        assert_eq!(m.sex, r.sex);
        assert!(m.personal_id.is_empty());
        assert!(m.date_of_birth.is_empty());
        assert!(m.father.is_none());
        assert!(m.other_names.is_empty());
        assert!(m.phone.is_empty());
        assert_eq!(m.marital_status, 0);
        assert_eq!(m.version, 0);
        assert_eq!(
            disclosed,
            allow(&["full_name", "sex", "permanent_residence"])
        );
        // Rebuilding from the disclosed list gives the same record.
        assert_eq!(minimise(&r, &disclosed).0, m);
    }

    #[test]
    fn unknown_names_and_version_are_ignored() {
        let r = full_record();
        let (m, disclosed) = minimise(&r, &allow(&["nonsense", "version", "FULL_NAME"]));
        assert_eq!(m, CitizenRecord::default());
        assert!(disclosed.is_empty());
        assert!(!is_known_field("version"));
        assert!(!is_known_field("nonsense"));
        assert!(is_known_field("ethnicity"));
    }

    #[test]
    fn sensitive_fields_never_leak_unless_allowed() {
        let r = full_record();
        let everything_else: Vec<String> = CITIZEN_FIELDS
            .iter()
            .filter(|f| **f != "ethnicity" && **f != "religion")
            .map(|f| f.to_string())
            .collect();
        let (m, disclosed) = minimise(&r, &everything_else);
        assert!(m.ethnicity.is_empty() && m.religion.is_empty());
        assert!(!disclosed
            .iter()
            .any(|f| f == "ethnicity" || f == "religion"));
        let (m, disclosed) = minimise(&r, &allow(&["ethnicity"]));
        assert_eq!(m.ethnicity, "Kinh");
        assert_eq!(disclosed, allow(&["ethnicity"]));
    }

    #[test]
    fn allowed_empty_fields_are_listed_so_empty_differs_from_withheld() {
        let r = full_record();
        let (m, disclosed) = minimise(&r, &allow(&["email", "spouse", "full_name"]));
        assert_eq!(disclosed, allow(&["full_name", "spouse", "email"]));
        assert!(m.spouse.is_none() && m.email.is_empty());
    }

    #[test]
    fn field_list_matches_the_record() {
        // Every listed field is copyable, and a fully allowed copy equals the
        // record minus its version.
        let r = full_record();
        let all: Vec<String> = CITIZEN_FIELDS.iter().map(|s| s.to_string()).collect();
        let (m, _) = minimise(&r, &all);
        assert_eq!(
            m,
            CitizenRecord {
                version: 0,
                ..r.clone()
            }
        );
        assert_eq!(CITIZEN_FIELDS.len(), 30);
    }
}
