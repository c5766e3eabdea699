use super::*;

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 25).unwrap()
}

#[test]
fn worked_example_from_the_domain_reference() {
    let id = parse_personal_id("026092008262").unwrap();
    assert_eq!(id.province, Some("Vĩnh Phúc"));
    assert_eq!(id.sex, Sex::Male);
    assert_eq!(id.birth_year, 1992);
}

#[test]
fn century_and_sex_digit() {
    let f2003 = parse_personal_id("001303000001").unwrap();
    assert_eq!((f2003.sex, f2003.birth_year), (Sex::Female, 2003));
    let m1955 = parse_personal_id("079055123456").unwrap();
    assert_eq!((m1955.sex, m1955.birth_year), (Sex::Male, 1955));
}

#[test]
fn unknown_prefix_is_unknown_origin_not_an_error() {
    let id = parse_personal_id("999092008262").unwrap();
    assert_eq!(id.province, None);
}

#[test]
fn id_is_trimmed_but_otherwise_strict() {
    assert!(parse_personal_id("  026092008262\t").is_ok());
    for bad in [
        "02609200826",
        "0260920082620",
        "02609200826a",
        "026 92008262",
        "",
        "０２６０９２００８２６２",
    ] {
        let e = parse_personal_id(bad).unwrap_err();
        assert_eq!(e.field, "personal_id", "{bad:?}");
        assert!(!e.to_string().contains(bad.trim()) || bad.trim().is_empty());
    }
}

#[test]
fn old_id_only_where_allowed() {
    assert_eq!(
        parse_declared_id("123456789", true).unwrap(),
        DeclaredId::Old("123456789".into())
    );
    assert!(parse_declared_id("123456789", false).is_err());
}

#[test]
fn dates() {
    assert_eq!(
        parse_birth_date("1992-02-29", today()).unwrap(),
        Some(BirthDate::Full(
            NaiveDate::from_ymd_opt(1992, 2, 29).unwrap()
        ))
    );
    assert_eq!(
        parse_birth_date("1990", today()).unwrap(),
        Some(BirthDate::Year(1990))
    );
    assert_eq!(parse_birth_date("", today()).unwrap(), None);
    for bad in [
        "1990-02-31",
        "1991-02-29",
        "1990-13-01",
        "90-01-01",
        "1990/01/01",
        "2026-11-26",
        "2027",
        "1850",
    ] {
        assert_eq!(
            parse_birth_date(bad, today()).unwrap_err().field,
            "date_of_birth",
            "{bad}"
        );
    }
}

#[test]
fn names() {
    assert!(check_full_name("Nguyễn Văn An").is_ok());
    assert!(check_full_name("H'Hen Niê").is_ok());
    assert!(check_full_name("").is_err());
    assert!(check_full_name("   ").is_err());
    assert!(check_full_name(&"A".repeat(101)).is_err());
    assert!(check_full_name(&"Â".repeat(100)).is_ok());
    assert!(check_full_name("Nguyễn\u{0007}An").is_err());
    assert!(check_full_name("Nguyen 2").is_err());
}

#[test]
fn case_ids() {
    assert_eq!(
        check_case_id(" H01.01-241125-0001 ").unwrap(),
        "H01.01-241125-0001"
    );
    assert!(check_case_id("").is_err());
    assert!(check_case_id(&"x".repeat(65)).is_err());
    assert!(check_case_id(&"x".repeat(64)).is_ok());
    assert!(check_case_id("a\nb").is_err());
}

#[test]
fn consistency() {
    let id = parse_personal_id("026092008262").unwrap();
    assert!(id_consistency(&id, Some(Sex::Male), Some(BirthDate::Year(1992))).is_ok());
    assert_eq!(id_consistency(&id, Some(Sex::Female), None), Err("sex"));
    assert_eq!(
        id_consistency(&id, None, Some(BirthDate::Year(1993))),
        Err("date_of_birth")
    );
}

#[test]
fn invisible_formatting_is_refused_but_zero_width_spaces_in_names_are_folded_later() {
    assert!(check_full_name("Nguyễn\u{202E}Văn An").is_err());
    assert!(check_full_name("Nguy\u{00AD}ễn Văn An").is_err());
    assert!(check_full_name("Nguyễn\u{200B} Văn An").is_ok());
    assert!(check_case_id("HS-1\u{202E}2").is_err());
    assert!(check_case_id("HS\u{200B}1").is_err());
}

#[test]
fn name_length_is_counted_composed() {
    use unicode_normalization::UnicodeNormalization;
    let composed = "Ễ".repeat(100);
    let decomposed: String = composed.nfd().collect();
    assert!(decomposed.chars().count() > 100);
    assert!(check_full_name(&decomposed).is_ok());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // Whatever a caller sends, validation answers Ok or a named error: it never panics,
        // and an error message never echoes the input.
        #[test]
        fn arbitrary_input_never_panics(s in "\\PC{0,40}", raw in any::<i32>()) {
            let today = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
            if let Err(e) = parse_declared_id(&s, true) {
                prop_assert_eq!(e.field, "personal_id");
            }
            let _ = parse_birth_date(&s, today);
            let _ = check_full_name(&s);
            let _ = check_case_id(&s);
            let _ = parse_sex(raw);
        }

        // Every well-formed id decodes to the sex and year its digits encode.
        #[test]
        fn well_formed_ids_round_trip(p in 0u32..1000, g in 0u8..10, yy in 0u8..100, r in 0u32..1_000_000) {
            let s = format!("{p:03}{g}{yy:02}{r:06}");
            let id = parse_personal_id(&s).unwrap();
            prop_assert_eq!(id.birth_year, 1900 + (g as i32 / 2) * 100 + yy as i32);
            prop_assert_eq!(id.sex, if g % 2 == 0 { Sex::Male } else { Sex::Female });
        }
    }
}
