//! Households assembled from their members' records: one rule for every store.
//!
//! A household is not stored as such: each member's record names its household, its
//! head and its relation to the head. The embedded registry assembles households at
//! load; the disk and PostgreSQL stores at lookup, from the members' current records
//! (so a member's changed name or the head's new address shows at once).

use crate::proto::registry::{Address, CitizenRecord, Household, HouseholdMember};

/// What a household needs of one member's record.
#[derive(Clone, Debug)]
pub struct Member {
    member: HouseholdMember,
    is_head: bool,
    date_of_birth: String,
    address: Option<Address>,
    head_personal_id: String,
    head_full_name: String,
}

impl Member {
    /// The member part of a record; `None` when the record names no household.
    pub fn of(record: &CitizenRecord) -> Option<(String, Member)> {
        let h = record
            .household
            .as_ref()
            .filter(|h| !h.household_id.is_empty())?;
        let is_head = h.relation_to_head == "head" || h.head_personal_id == record.personal_id;
        Some((
            h.household_id.clone(),
            Member {
                member: HouseholdMember {
                    personal_id: record.personal_id.clone(),
                    full_name: record.full_name.clone(),
                    relation_to_head: if is_head {
                        "head".into()
                    } else {
                        h.relation_to_head.clone()
                    },
                },
                is_head,
                date_of_birth: record.date_of_birth.clone(),
                address: record.permanent_residence.clone(),
                head_personal_id: h.head_personal_id.clone(),
                head_full_name: h.head_full_name.clone(),
            },
        ))
    }
}

/// Assembles a household: the head first, then spouse, children and others, each
/// group oldest first; the head's permanent residence is the household's address.
/// `None` for no members.
pub fn assemble(household_id: &str, mut members: Vec<Member>) -> Option<Household> {
    fn rank(p: &Member) -> u8 {
        match (p.is_head, p.member.relation_to_head.as_str()) {
            (true, _) => 0,
            (_, "spouse") => 1,
            (_, "child") => 2,
            _ => 3,
        }
    }
    members.sort_by(|a, b| {
        rank(a)
            .cmp(&rank(b))
            .then_with(|| a.date_of_birth.cmp(&b.date_of_birth))
            .then_with(|| a.member.personal_id.cmp(&b.member.personal_id))
    });
    let first = members.first()?;
    let head = if first.is_head {
        first.member.clone()
    } else {
        HouseholdMember {
            personal_id: first.head_personal_id.clone(),
            full_name: first.head_full_name.clone(),
            relation_to_head: "head".into(),
        }
    };
    let address = first.address.clone();
    Some(Household {
        household_id: household_id.to_string(),
        head: Some(head),
        address,
        members: members.into_iter().map(|p| p.member).collect(),
    })
}

/// Assembles the household `household_id` from records (those of other households are
/// ignored).
pub fn from_records<'a>(
    household_id: &str,
    records: impl IntoIterator<Item = &'a CitizenRecord>,
) -> Option<Household> {
    let members = records
        .into_iter()
        .filter_map(Member::of)
        .filter(|(id, _)| id == household_id)
        .map(|(_, m)| m)
        .collect();
    assemble(household_id, members)
}
