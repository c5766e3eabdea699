//! The catalogue of the 25 essential procedures (Project 06): for each, its stable
//! code, names, lead agency, the fixed name-matching rule and the profile of record
//! fields it may read.
//!
//! Agencies and profiles change by decree, so the catalogue is data: the built-in
//! one ([`Catalogue::builtin`]) can be replaced by a TOML file ([`Catalogue::load`]),
//! written as `[[procedure]]` tables with the [`Procedure`] fields. A file
//! **replaces the built-in catalogue entirely** (no merging): a procedure missing
//! from the file does not exist for the gateway. `config/procedures.toml` is the
//! built-in catalogue written out ([`Catalogue::to_toml`]); a test keeps them equal.
//!
//! Profiles follow the minimisation principle (Law 91/2025/QH15, Decree 356/2025):
//! each lists only what the receiving agency needs to process the dossier.
//! Ethnicity is read by the birth-registration procedures only; religion by none.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::disclosure::is_known_field;

/// How a declared name is compared with the record's. The rule is a fixed property
/// of the procedure, never a caller's choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MatchingRule {
    /// Unicode NFC, case and white space folded; diacritics must agree.
    Exact,
    /// [`MatchingRule::Exact`] plus diacritics removed (đ→d), tone-mark placement
    /// and i/y folded: for names copied from other agencies' older records.
    Tolerant,
}

impl MatchingRule {
    /// The word in the audit log and the catalogue file.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchingRule::Exact => "EXACT",
            MatchingRule::Tolerant => "TOLERANT",
        }
    }
}

/// The procedure a request named, as its audit record keeps it — including a request
/// refused before the code was resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimedProcedure {
    /// None named (recorded as nothing).
    None,
    /// A procedure of the catalogue (its code).
    Known(String),
    /// A code the catalogue does not know, of a safe shape (at most 8 letters, digits,
    /// `-` or `_`, at most 4 of them digits: never room for an id): recorded as `?CODE`.
    Unknown(String),
    /// Anything else: recorded as `?`, since it may hold anything.
    Unreadable,
}

impl ClaimedProcedure {
    /// The code, when the catalogue knows it.
    pub fn known(&self) -> Option<&str> {
        match self {
            ClaimedProcedure::Known(code) => Some(code),
            _ => None,
        }
    }

    /// The record's text: the code, `?CODE`, `?` or nothing.
    pub fn into_record(self) -> String {
        match self {
            ClaimedProcedure::None => String::new(),
            ClaimedProcedure::Known(code) => code,
            ClaimedProcedure::Unknown(code) => format!("?{code}"),
            ClaimedProcedure::Unreadable => "?".into(),
        }
    }
}

/// One procedure of the catalogue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Procedure {
    /// Stable code, `P` and two digits (`P01`..`P25` for the built-in catalogue).
    pub code: String,
    /// Official Vietnamese name, with diacritics.
    pub name_vi: String,
    /// English name.
    pub name_en: String,
    /// The agency that handles the procedure (as of the catalogue's date).
    pub lead_agency: String,
    /// The name-matching rule of identity verification for this procedure.
    pub matching_rule: MatchingRule,
    /// `CitizenRecord` field names the procedure may read (see
    /// [`crate::disclosure::CITIZEN_FIELDS`]).
    pub readable_fields: Vec<String>,
    /// Whether the procedure may read the citizen's household (head and members).
    #[serde(default)]
    pub household_readable: bool,
    /// Whether the old 9-digit id (CMND) is accepted as a lookup key.
    #[serde(default)]
    pub old_id_accepted: bool,
}

/// The procedures known to the gateway, ordered by code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Catalogue {
    procedures: BTreeMap<String, Procedure>,
}

/// Why a catalogue file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    /// The file could not be read.
    #[error("cannot read procedure catalogue {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not have the catalogue's shape.
    #[error("invalid procedure catalogue: {0}")]
    Toml(#[from] toml::de::Error),
    /// A profile names a field that `CitizenRecord` does not have (or that is never disclosed).
    #[error("procedure {procedure}: unknown readable field {field:?}")]
    UnknownField {
        /// The procedure's code.
        procedure: String,
        /// The offending field name.
        field: String,
    },
    /// Two procedures share a code.
    #[error("duplicate procedure code {0}")]
    DuplicateCode(String),
    /// A code is not `P` followed by two digits.
    #[error("bad procedure code {0:?}: expected P and two digits, e.g. P07")]
    BadCode(String),
    /// The file defines no procedure at all.
    #[error("the procedure catalogue is empty")]
    Empty,
}

/// The on-disk shape: `[[procedure]]` tables.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueFile {
    #[serde(default)]
    procedure: Vec<Procedure>,
}

/// Public Security, the operator of the population database.
const MPS: &str = "Bộ Công an (Public Security)";

/// One built-in row: code, Vietnamese name, English name, lead agency, rule,
/// readable fields, household readable, old id accepted.
type Row = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    MatchingRule,
    &'static [&'static str],
    bool,
    bool,
);

use MatchingRule::{Exact, Tolerant};

/// The built-in catalogue. Rule rationale: EXACT where Public Security issues or
/// keeps the document itself from the population database, or the citizen
/// declares their own name online (VNeID); TOLERANT where the declared name comes
/// from another agency's older records (civil-status books, social insurance,
/// tax, land, school, electricity), often typed without or with variant diacritics.
#[rustfmt::skip]
const BUILTIN: &[Row] = &[
    // Confirming the old CMND number: identity, the old number and the cards issued (date/place printed on the confirmation).
    ("P01", "Xác nhận số CMND khi đã được cấp thẻ CCCD", "Confirm the old 9-digit ID number of a CCCD holder", MPS, Exact,
     &["personal_id", "full_name", "date_of_birth", "sex", "old_id_number", "id_cards"], false, true),
    // The card prints name, dob, sex, nationality, origin, birth registration place and residence; previous cards for re-issue.
    ("P02", "Cấp lại, đổi thẻ Căn cước công dân", "Re-issue / renew the citizen ID card", MPS, Exact,
     &["personal_id", "full_name", "other_names", "date_of_birth", "sex", "birth_registration_place", "place_of_origin", "nationality", "permanent_residence", "current_residence", "id_cards"], false, false),
    // Joining a household at a new address: current residences, household and residence file.
    ("P03", "Đăng ký thường trú", "Permanent residence registration", MPS, Exact,
     &["personal_id", "full_name", "date_of_birth", "sex", "nationality", "permanent_residence", "temporary_residence", "current_residence", "residence_file_number", "household"], true, false),
    // Temporary residence: identity and the existing residences.
    ("P04", "Đăng ký tạm trú", "Temporary residence registration", MPS, Exact,
     &["personal_id", "full_name", "date_of_birth", "sex", "nationality", "permanent_residence", "temporary_residence", "current_residence"], false, false),
    // Temporary absence: identity, the residence left and any absence already declared.
    ("P05", "Khai báo tạm vắng", "Declaration of temporary absence", MPS, Exact,
     &["personal_id", "full_name", "date_of_birth", "sex", "permanent_residence", "temporary_residence", "temporary_absence"], false, false),
    // A host notifies a guest's stay: the guest's identity and home address only.
    ("P06", "Thông báo lưu trú", "Notification of a short stay", MPS, Exact,
     &["personal_id", "full_name", "date_of_birth", "sex", "permanent_residence"], false, false),
    // The registration certificate names the owner with dob and residence.
    ("P07", "Đăng ký, cấp biển số mô tô, xe gắn máy", "Motorcycle registration and plates", MPS, Exact,
     &["personal_id", "full_name", "date_of_birth", "sex", "permanent_residence", "current_residence"], false, false),
    // Paying a fine: the payer's name and address on the decision, nothing more.
    ("P08", "Thu tiền nộp phạt vi phạm giao thông qua thiết bị ghi hình", "Paying camera-detected traffic fines", MPS, Exact,
     &["personal_id", "full_name", "permanent_residence"], false, false),
    // The passport prints place of birth and nationality; cards for the identity-document history.
    ("P09", "Cấp, cấp lại, sửa đổi hộ chiếu phổ thông", "Ordinary passport issue / re-issue", MPS, Exact,
     &["personal_id", "full_name", "date_of_birth", "sex", "place_of_birth", "nationality", "permanent_residence", "current_residence", "id_cards"], false, false),
    // Seals: the organisation's legal representative as named in enterprise registration (another agency's data).
    ("P10", "Làm con dấu mới, cấp giấy chứng nhận mẫu dấu", "New official seal and seal-specimen certificate", MPS, Tolerant,
     &["personal_id", "full_name", "date_of_birth", "sex", "nationality", "permanent_residence"], false, false),
    // Same as P10.
    ("P11", "Làm con dấu thu nhỏ, dấu nổi, dấu xi", "Miniature / embossed / wax seals", MPS, Tolerant,
     &["personal_id", "full_name", "date_of_birth", "sex", "nationality", "permanent_residence"], false, false),
    // The criminal-record request names parents and spouse and all residences; ethnicity not needed to identify.
    ("P12", "Cấp Phiếu lý lịch tư pháp", "Criminal-record certificate", "Bộ Công an (Public Security; from Justice, 2025)", Exact,
     &["personal_id", "full_name", "other_names", "date_of_birth", "sex", "place_of_birth", "nationality", "father", "mother", "spouse", "permanent_residence", "temporary_residence", "current_residence"], false, false),
    // The licence prints name, dob, nationality and residence.
    ("P13", "Cấp đổi, cấp lại giấy phép lái xe", "Driving-licence exchange / re-issue", "Bộ Công an (Public Security; from Transport, 2025)", Exact,
     &["personal_id", "full_name", "date_of_birth", "sex", "nationality", "permanent_residence", "current_residence"], false, false),
    // Read on each parent: the birth certificate records the parents' ethnicity and the child's, which follows the parents' (Civil Code 2015 art. 29); marriage fixes paternity; parents declare their own names.
    ("P14", "Đăng ký khai sinh", "Birth registration", "UBND cấp xã (commune, Justice)", Exact,
     &["personal_id", "full_name", "date_of_birth", "nationality", "ethnicity", "permanent_residence", "current_residence", "marital_status", "spouse"], false, false),
    // The deceased's identity, last residence and any recorded death; the declarer types the name from old papers.
    ("P15", "Đăng ký khai tử", "Death registration", "UBND cấp xã (commune, Justice)", Tolerant,
     &["personal_id", "full_name", "date_of_birth", "sex", "nationality", "permanent_residence", "marital_status", "date_of_death"], false, false),
    // Both spouses: identity, residence and marital status (no existing spouse).
    ("P16", "Đăng ký kết hôn", "Marriage registration", "UBND cấp xã (commune, Justice)", Exact,
     &["personal_id", "full_name", "date_of_birth", "sex", "nationality", "permanent_residence", "current_residence", "marital_status", "spouse"], false, false),
    // P14 plus registering the child into the parents' household and a health-insurance card (Social Security records).
    ("P17", "Liên thông: khai sinh – thường trú – thẻ BHYT trẻ dưới 6 tuổi", "Linked: birth + residence + child health-insurance card", "UBND cấp xã + Bảo hiểm xã hội (commune + Social Security)", Tolerant,
     &["personal_id", "full_name", "date_of_birth", "sex", "nationality", "ethnicity", "permanent_residence", "current_residence", "marital_status", "spouse", "household"], true, false),
    // P15 plus removal from the household and the funeral allowance (Social Security records).
    ("P18", "Liên thông: khai tử – xóa thường trú – trợ cấp mai táng", "Linked: death + residence removal + funeral allowance", "UBND cấp xã + Bảo hiểm xã hội (commune + Social Security)", Tolerant,
     &["personal_id", "full_name", "date_of_birth", "sex", "nationality", "permanent_residence", "household", "date_of_death"], true, false),
    // Land certificates cite the old CMND number: the change replaces it with the 12-digit id (old land records).
    ("P19", "Đăng ký biến động quyền sử dụng đất (đổi thông tin người được cấp)", "Land-right change of the holder's details", "UBND cấp xã / Nông nghiệp và Môi trường (commune / Agriculture & Environment)", Tolerant,
     &["personal_id", "full_name", "date_of_birth", "old_id_number", "id_cards", "permanent_residence"], false, false),
    // Household health insurance: the members of the household and their identity (insurance records).
    ("P20", "Gia hạn thẻ BHYT theo hộ gia đình có giảm trừ mức đóng", "Household health-insurance renewal with reduction", "Bảo hiểm xã hội (Social Security)", Tolerant,
     &["personal_id", "full_name", "date_of_birth", "sex", "permanent_residence", "household"], true, false),
    // Tax registration: identity and addresses; the old number links existing tax records.
    ("P21", "Đăng ký thuế lần đầu / thay đổi thông tin cho hộ gia đình, cá nhân", "First or changed tax registration of individuals", "Bộ Tài chính (Finance)", Tolerant,
     &["personal_id", "full_name", "date_of_birth", "sex", "nationality", "old_id_number", "permanent_residence", "current_residence"], false, false),
    // Candidate identity, place of birth and residence (residence-based priority zones); minority priority is claimed with evidence, not read.
    ("P22", "Đăng ký dự thi tốt nghiệp THPT và xét tuyển đại học, cao đẳng", "School-leaving exam and university admission", "Bộ Giáo dục và Đào tạo (Education)", Tolerant,
     &["personal_id", "full_name", "date_of_birth", "sex", "place_of_birth", "permanent_residence"], false, false),
    // Unemployment benefit: identity and where the claimant lives (social insurance book records).
    ("P23", "Giải quyết hưởng trợ cấp thất nghiệp", "Unemployment-benefit claim", "Bộ Nội vụ (Home Affairs; was Labour)", Tolerant,
     &["personal_id", "full_name", "date_of_birth", "sex", "permanent_residence", "current_residence"], false, false),
    // Electricity contract: the customer's name and addresses only (EVN customer records).
    ("P24", "Cấp điện mới từ lưới điện hạ áp", "New low-voltage electricity connection", "Bộ Công Thương / EVN (Industry & Trade)", Tolerant,
     &["personal_id", "full_name", "permanent_residence", "current_residence"], false, false),
    // Same as P24 for the new holder.
    ("P25", "Thay đổi chủ thể hợp đồng mua bán điện", "Change of holder of an electricity contract", "Bộ Công Thương / EVN (Industry & Trade)", Tolerant,
     &["personal_id", "full_name", "permanent_residence", "current_residence"], false, false),
];

fn valid_code(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() == 3 && b[0] == b'P' && b[1].is_ascii_digit() && b[2].is_ascii_digit()
}

impl Catalogue {
    /// The built-in catalogue of the 25 procedures P01–P25.
    pub fn builtin() -> Catalogue {
        let procedures =
            BUILTIN
                .iter()
                .map(
                    |&(code, vi, en, agency, rule, fields, household, old_id)| Procedure {
                        code: code.into(),
                        name_vi: vi.into(),
                        name_en: en.into(),
                        lead_agency: agency.into(),
                        matching_rule: rule,
                        readable_fields: fields.iter().map(|f| f.to_string()).collect(),
                        household_readable: household,
                        old_id_accepted: old_id,
                    },
                );
        Self::from_procedures(procedures).expect("the built-in catalogue is valid")
    }

    /// Checks and orders procedures: codes well formed and unique, fields known.
    fn from_procedures(
        procedures: impl IntoIterator<Item = Procedure>,
    ) -> Result<Catalogue, CatalogueError> {
        let mut map = BTreeMap::new();
        for p in procedures {
            if !valid_code(&p.code) {
                return Err(CatalogueError::BadCode(p.code));
            }
            if let Some(field) = p.readable_fields.iter().find(|f| !is_known_field(f)) {
                return Err(CatalogueError::UnknownField {
                    procedure: p.code.clone(),
                    field: field.clone(),
                });
            }
            if map.contains_key(&p.code) {
                return Err(CatalogueError::DuplicateCode(p.code));
            }
            map.insert(p.code.clone(), p);
        }
        if map.is_empty() {
            return Err(CatalogueError::Empty);
        }
        Ok(Catalogue { procedures: map })
    }

    /// Parses a catalogue from TOML (`[[procedure]]` tables with the [`Procedure`]
    /// fields). The result **replaces** the built-in catalogue entirely: it is not
    /// merged with it. Unknown keys, unknown field names, malformed or duplicate
    /// codes and an empty file are errors.
    pub fn from_toml_str(s: &str) -> Result<Catalogue, CatalogueError> {
        let file: CatalogueFile = toml::from_str(s)?;
        Self::from_procedures(file.procedure)
    }

    /// Reads a catalogue file; see [`Catalogue::from_toml_str`]. The file replaces
    /// the built-in catalogue entirely.
    pub fn load(path: &Path) -> Result<Catalogue, CatalogueError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogueError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// The procedure with this code, if any.
    pub fn get(&self, code: &str) -> Option<&Procedure> {
        self.procedures.get(code)
    }

    /// What a request naming `raw` claims (see [`ClaimedProcedure`]).
    pub fn claim(&self, raw: &str) -> ClaimedProcedure {
        let code = raw.trim();
        if code.is_empty() {
            return ClaimedProcedure::None;
        }
        if let Some(p) = self.get(code) {
            return ClaimedProcedure::Known(p.code.clone());
        }
        let safe = code.len() <= 8
            && code
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && code.bytes().filter(u8::is_ascii_digit).count() <= 4;
        if safe {
            ClaimedProcedure::Unknown(code.to_string())
        } else {
            ClaimedProcedure::Unreadable
        }
    }

    /// Every procedure, ordered by code.
    pub fn procedures(&self) -> impl Iterator<Item = &Procedure> {
        self.procedures.values()
    }

    /// Number of procedures.
    pub fn len(&self) -> usize {
        self.procedures.len()
    }

    /// Whether the catalogue has no procedure (never true for a loaded one).
    pub fn is_empty(&self) -> bool {
        self.procedures.is_empty()
    }

    /// The catalogue as a TOML file that [`Catalogue::from_toml_str`] reads back
    /// unchanged (used to write `config/procedures.toml` from the built-in one).
    pub fn to_toml(&self) -> String {
        let file = CatalogueFile {
            procedure: self.procedures.values().cloned().collect(),
        };
        let body = toml::to_string(&file).expect("a catalogue always serialises to TOML");
        format!(
            "# popgw procedure catalogue: one [[procedure]] table per procedure.\n\
             # Loading this file REPLACES the built-in catalogue entirely (no merging):\n\
             # a procedure absent here is unknown to the gateway.\n\
             # readable_fields are CitizenRecord field names; matching_rule is EXACT or TOLERANT.\n\
             # Generated from Catalogue::builtin() (see src/catalogue.rs for each profile's rationale).\n\n{body}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/procedures.toml");

    #[test]
    fn a_claimed_code_is_recorded_only_when_it_cannot_hold_an_id() {
        let c = Catalogue::builtin();
        let record = |raw: &str| c.claim(raw).into_record();
        assert_eq!(record(" P03 "), "P03");
        assert_eq!(record(""), "");
        assert_eq!(record("P99"), "?P99");
        assert_eq!(record("tax-2026"), "?tax-2026");
        // Room for an id, or characters of anything else: only "?".
        assert_eq!(record("079123456789"), "?");
        assert_eq!(record("P12345"), "?");
        assert_eq!(record("P 03\n"), "?");
        assert_eq!(c.claim("P03").known(), Some("P03"));
        assert_eq!(c.claim("P99").known(), None);
    }

    #[test]
    fn builtin_has_the_25_procedures_in_order() {
        let c = Catalogue::builtin();
        let codes: Vec<&str> = c.procedures().map(|p| p.code.as_str()).collect();
        let expected: Vec<String> = (1..=25).map(|i| format!("P{i:02}")).collect();
        assert_eq!(codes, expected);
        assert_eq!(c.len(), 25);
        for p in c.procedures() {
            assert!(!p.readable_fields.is_empty(), "{}", p.code);
            assert!(p.readable_fields.iter().any(|f| f == "full_name"));
            assert!(
                !p.readable_fields.iter().any(|f| f == "religion"),
                "{}",
                p.code
            );
            assert!(!p.name_vi.is_empty() && !p.name_en.is_empty() && !p.lead_agency.is_empty());
        }
    }

    #[test]
    fn sensitive_data_and_old_id_are_narrow() {
        let c = Catalogue::builtin();
        let ethnicity: Vec<&str> = c
            .procedures()
            .filter(|p| p.readable_fields.iter().any(|f| f == "ethnicity"))
            .map(|p| p.code.as_str())
            .collect();
        assert_eq!(ethnicity, ["P14", "P17"]);
        let old: Vec<&str> = c
            .procedures()
            .filter(|p| p.old_id_accepted)
            .map(|p| p.code.as_str())
            .collect();
        assert_eq!(old, ["P01"]);
        for code in ["P01", "P02", "P09", "P12", "P13"] {
            assert_eq!(c.get(code).unwrap().matching_rule, MatchingRule::Exact);
        }
        for code in ["P20", "P21", "P24", "P25"] {
            assert_eq!(c.get(code).unwrap().matching_rule, MatchingRule::Tolerant);
        }
        assert!(c.get("P26").is_none());
    }

    #[test]
    fn toml_round_trips() {
        let c = Catalogue::builtin();
        assert_eq!(Catalogue::from_toml_str(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn config_file_matches_builtin() {
        let loaded = Catalogue::load(Path::new(CONFIG)).expect("config/procedures.toml loads");
        assert_eq!(
            loaded,
            Catalogue::builtin(),
            "config/procedures.toml drifted from the built-in catalogue; regenerate with \
             `popgw procedures --builtin-toml > config/procedures.toml`"
        );
    }

    const ONE: &str = r#"
[[procedure]]
code = "P07"
name_vi = "Đăng ký xe"
name_en = "Vehicle registration"
lead_agency = "Bộ Công an"
matching_rule = "EXACT"
readable_fields = ["full_name", "permanent_residence"]
"#;

    #[test]
    fn file_replaces_builtin_and_defaults_apply() {
        let c = Catalogue::from_toml_str(ONE).unwrap();
        assert_eq!(c.len(), 1);
        let p = c.get("P07").unwrap();
        assert!(!p.household_readable && !p.old_id_accepted);
        assert_eq!(p.matching_rule, MatchingRule::Exact);
        assert!(c.get("P01").is_none());
    }

    #[test]
    fn errors_are_specific() {
        let unknown = ONE.replace("\"permanent_residence\"", "\"home_address\"");
        match Catalogue::from_toml_str(&unknown) {
            Err(e @ CatalogueError::UnknownField { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("P07") && msg.contains("home_address"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        let version = ONE.replace("\"permanent_residence\"", "\"version\"");
        assert!(matches!(
            Catalogue::from_toml_str(&version),
            Err(CatalogueError::UnknownField { .. })
        ));
        let dup = format!("{ONE}{ONE}");
        assert!(matches!(
            Catalogue::from_toml_str(&dup),
            Err(CatalogueError::DuplicateCode(c)) if c == "P07"
        ));
        for bad in ["p07", "P7", "P007", "X07", ""] {
            let s = ONE.replace("\"P07\"", &format!("{bad:?}"));
            assert!(
                matches!(
                    Catalogue::from_toml_str(&s),
                    Err(CatalogueError::BadCode(_))
                ),
                "{bad}"
            );
        }
        let rule = ONE.replace("EXACT", "FUZZY");
        assert!(matches!(
            Catalogue::from_toml_str(&rule),
            Err(CatalogueError::Toml(_))
        ));
        let typo = ONE.replace("readable_fields", "readable_field");
        assert!(matches!(
            Catalogue::from_toml_str(&typo),
            Err(CatalogueError::Toml(_))
        ));
        assert!(matches!(
            Catalogue::from_toml_str(""),
            Err(CatalogueError::Empty)
        ));
        assert!(matches!(
            Catalogue::load(Path::new("/nonexistent/procedures.toml")),
            Err(CatalogueError::Unreadable { .. })
        ));
    }

    proptest::proptest! {
        // Whatever a caller names as its procedure, the record holds a catalogue code, or
        // `?` and at most 8 characters with at most 4 digits: never room for an id.
        #[test]
        fn a_claimed_procedure_never_records_room_for_an_id(raw in "\\PC{0,40}") {
            let c = Catalogue::builtin();
            let recorded = c.claim(&raw).into_record();
            if c.get(&recorded).is_none() && !recorded.is_empty() {
                let code = recorded.strip_prefix('?').expect("an unknown code is marked");
                proptest::prop_assert!(code.len() <= 8, "{:?}", recorded);
                proptest::prop_assert!(code.bytes().filter(u8::is_ascii_digit).count() <= 4, "{:?}", recorded);
                proptest::prop_assert!(code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            }
        }
    }
}
