use super::*;
use unicode_normalization::UnicodeNormalization;

#[test]
fn nfc_and_nfd_of_the_same_name_match_exactly() {
    let nfc: String = "Nguyễn Thị Thuỷ".nfc().collect();
    let nfd: String = "Nguyễn Thị Thuỷ".nfd().collect();
    assert_ne!(nfc, nfd);
    assert!(names_match(MatchingRule::Exact, &nfd, &nfc));
}

#[test]
fn case_and_white_space_fold() {
    assert!(names_match(
        MatchingRule::Exact,
        "  nguyễn\u{00A0}\u{00A0}văn   AN\u{200B} ",
        "NGUYỄN VĂN AN"
    ));
}

#[test]
fn exact_keeps_diacritics_and_tone_placement() {
    assert!(!names_match(
        MatchingRule::Exact,
        "Nguyen Van An",
        "NGUYỄN VĂN AN"
    ));
    assert!(!names_match(
        MatchingRule::Exact,
        "Lê Thị Hoà",
        "LÊ THỊ HÒA"
    ));
    assert!(!names_match(
        MatchingRule::Exact,
        "Dang Van Duc",
        "ĐẶNG VĂN ĐỨC"
    ));
}

#[test]
fn tolerant_folds_diacritics_d_bar_tone_placement_and_i_y() {
    assert!(names_match(
        MatchingRule::Tolerant,
        "Dang Van Duc",
        "ĐẶNG VĂN ĐỨC"
    ));
    assert!(names_match(
        MatchingRule::Tolerant,
        "Lê Thị Hoà",
        "LÊ THỊ HÒA"
    ));
    assert!(names_match(
        MatchingRule::Tolerant,
        "Trần Thuý Lí",
        "TRẦN THÚY LÝ"
    ));
    // The look-alike eth is treated as đ.
    assert!(names_match(
        MatchingRule::Tolerant,
        "Ðặng Văn Ðức",
        "ĐẶNG VĂN ĐỨC"
    ));
}

#[test]
fn tolerant_still_compares_the_whole_name() {
    assert!(!names_match(
        MatchingRule::Tolerant,
        "Nguyễn An",
        "NGUYỄN VĂN AN"
    ));
    assert!(!names_match(
        MatchingRule::Tolerant,
        "Nguyễn Văn",
        "NGUYỄN VĂN AN"
    ));
    assert!(names_match(
        MatchingRule::Tolerant,
        "h'hen niê",
        "H'HEN NIÊ"
    ));
}

fn record(dob: &str, dead: bool) -> CitizenRecord {
    CitizenRecord {
        personal_id: "026092008262".into(),
        full_name: "NGUYỄN VĂN AN".into(),
        date_of_birth: dob.into(),
        sex: Sex::Male as i32,
        date_of_death: if dead {
            "2020-01-01".into()
        } else {
            String::new()
        },
        ..Default::default()
    }
}

fn declared(dob: Option<BirthDate>) -> Declaration<'static> {
    Declaration {
        full_name: "Nguyễn Văn An",
        date_of_birth: dob,
        sex: Some(Sex::Male),
    }
}

#[test]
fn verdicts() {
    let full = parse_date_shape("1992-05-17");
    let r = record("1992-05-17", false);
    assert!(verify(MatchingRule::Exact, &declared(full), Some(&r)).is_match());
    let wrong = parse_date_shape("1992-05-18");
    let v = verify(MatchingRule::Exact, &declared(wrong), Some(&r));
    assert_eq!(v.no_match, Some(NoMatchReason::FieldsDiffer));
    assert_eq!(v.date_of_birth, FieldResult::Mismatch);
    assert_eq!(v.full_name, FieldResult::Match);
    let dead = record("1992-05-17", true);
    assert_eq!(
        verify(MatchingRule::Exact, &declared(full), Some(&dead)).no_match,
        Some(NoMatchReason::Deceased)
    );
    assert_eq!(
        verify(MatchingRule::Exact, &declared(full), None).no_match,
        Some(NoMatchReason::NotFound)
    );
}

#[test]
fn year_only_dates_match_only_year_only_records() {
    let year = parse_date_shape("1992");
    assert!(verify(
        MatchingRule::Exact,
        &declared(year),
        Some(&record("1992", false))
    )
    .is_match());
    assert!(!verify(
        MatchingRule::Exact,
        &declared(year),
        Some(&record("1992-05-17", false))
    )
    .is_match());
}

#[test]
fn a_disappeared_citizen_never_verifies() {
    let full = parse_date_shape("1992-05-17");
    let mut r = record("1992-05-17", false);
    r.date_of_disappearance = "2019-07-01".into();
    assert_eq!(
        verify(MatchingRule::Exact, &declared(full), Some(&r)).no_match,
        Some(NoMatchReason::Disappeared)
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Vietnamese-looking names: letters with and without diacritics, đ, spaces.
    fn name() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("Nguyễn"),
                Just("Trần"),
                Just("Lê"),
                Just("Đặng"),
                Just("Thị"),
                Just("Văn"),
                Just("Hoà"),
                Just("Hòa"),
                Just("Thuỷ"),
                Just("Thúy"),
                Just("Lý"),
                Just("Lí"),
                Just("H'Hen"),
                Just("Niê"),
                Just("Ê"),
                Just("Đức"),
                Just("an")
            ],
            1..5,
        )
        .prop_map(|parts| parts.join(" "))
    }

    proptest! {
        #[test]
        fn rules_are_reflexive_and_blind_to_nfc_nfd_case_and_spacing(n in name()) {
            let nfd: String = n.nfd().collect();
            let shouted = format!("  {}  ", n.to_uppercase().replace(' ', "\u{00A0} "));
            for rule in [MatchingRule::Exact, MatchingRule::Tolerant] {
                prop_assert!(names_match(rule, &n, &n));
                prop_assert!(names_match(rule, &nfd, &n));
                prop_assert!(names_match(rule, &shouted, &n));
            }
        }

        #[test]
        fn exact_implies_tolerant(a in name(), b in name()) {
            if names_match(MatchingRule::Exact, &a, &b) {
                prop_assert!(names_match(MatchingRule::Tolerant, &a, &b));
            }
            prop_assert_eq!(normalise_exact(&normalise_exact(&a)), normalise_exact(&a));
            prop_assert_eq!(normalise_tolerant(&normalise_tolerant(&a)), normalise_tolerant(&a));
        }
    }
}
