//! The embedded registry: a whole population held in memory, loaded from a JSON
//! Lines file (one `CitizenRecord` per line, proto3 JSON, as written by
//! [`popgw_population::generate`]).
//!
//! Memory: each record is kept prost-encoded (a few hundred bytes) in a map keyed by
//! the numeric personal id and decoded on lookup, so a million citizens fit in well
//! under 2 GB. Households are built once at load time by grouping records on
//! `household.household_id`, and kept encoded too.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use prost::Message;

use super::household::{self, Member};
use super::{Deadline, Invalid, LookupKey, Registry, RegistryError, Unavailable};
use crate::proto::registry::{CitizenRecord, Household};

/// An in-memory registry with O(1) lookups by personal id, old id and household id.
#[derive(Debug, Default)]
pub struct EmbeddedRegistry {
    /// Numeric 12-digit id → prost-encoded `CitizenRecord`.
    citizens: HashMap<u64, Box<[u8]>>,
    /// Numeric 9-digit old id → numeric personal id.
    old_ids: HashMap<u64, u64>,
    /// Household id → prost-encoded `Household`.
    households: HashMap<String, Box<[u8]>>,
}

/// Parses an ASCII-digit string of exactly `len` digits.
fn parse_digits(s: &str, len: usize) -> Option<u64> {
    if s.len() == len && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// Accumulates records, checking ids, then assembles the households.
#[derive(Default)]
struct Builder {
    registry: EmbeddedRegistry,
    pending: HashMap<String, Vec<Member>>,
}

impl Builder {
    fn insert(&mut self, record: CitizenRecord) -> Result<(), String> {
        let id = parse_digits(&record.personal_id, 12)
            .ok_or_else(|| "personal_id is not 12 digits".to_string())?;
        if self.registry.citizens.contains_key(&id) {
            return Err("duplicate personal_id".to_string());
        }
        if !record.old_id_number.is_empty() {
            // Messages never carry the id itself: they may reach logs.
            let old = parse_digits(&record.old_id_number, 9)
                .ok_or_else(|| "old_id_number is not 9 digits".to_string())?;
            if self.registry.old_ids.contains_key(&old) {
                return Err("duplicate old_id_number".to_string());
            }
            self.registry.old_ids.insert(old, id);
        }
        if let Some((household_id, member)) = Member::of(&record) {
            self.pending.entry(household_id).or_default().push(member);
        }
        self.registry
            .citizens
            .insert(id, record.encode_to_vec().into_boxed_slice());
        Ok(())
    }

    fn finish(mut self) -> EmbeddedRegistry {
        self.registry.households.reserve(self.pending.len());
        for (household_id, members) in self.pending {
            if let Some(household) = household::assemble(&household_id, members) {
                self.registry
                    .households
                    .insert(household_id, household.encode_to_vec().into_boxed_slice());
            }
        }
        self.registry.citizens.shrink_to_fit();
        self.registry.old_ids.shrink_to_fit();
        self.registry
    }
}

impl EmbeddedRegistry {
    /// Loads a JSON Lines file, one proto3-JSON `CitizenRecord` per line (blank lines
    /// are skipped). An unreadable file is [`RegistryError::Unavailable`]; a line that
    /// is not a valid record, has a malformed id, or repeats an id or old id is
    /// [`RegistryError::Invalid`] naming the line number.
    pub fn load_jsonl(path: &Path) -> Result<Self, RegistryError> {
        let file = std::fs::File::open(path)
            .map_err(|e| RegistryError::from(Unavailable::file(path, e)))?;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        let mut builder = Builder::default();
        let mut line = String::new();
        let mut number = 0usize;
        loop {
            line.clear();
            if reader.read_line(&mut line).map_err(|e| Invalid::Line {
                path: path.to_path_buf(),
                line: number + 1,
                problem: e.to_string(),
            })? == 0
            {
                break;
            }
            number += 1;
            let text = line.trim();
            if text.is_empty() {
                continue;
            }
            let invalid = |problem: String| Invalid::Line {
                path: path.to_path_buf(),
                line: number,
                problem,
            };
            let record: CitizenRecord = serde_json::from_str(text).map_err(|e| {
                // serde_json's message may quote a value (personal data): give only
                // the kind of error and the column.
                invalid(format!(
                    "not a CitizenRecord in proto3 JSON ({:?} error at column {})",
                    e.classify(),
                    e.column()
                ))
            })?;
            builder.insert(record).map_err(invalid)?;
        }
        Ok(builder.finish())
    }

    /// Builds a registry from records. Records whose personal id is not 12 digits,
    /// whose old id is not 9 digits, or that repeat an earlier id or old id are
    /// skipped with a warning (the first one wins).
    pub fn from_records(records: impl IntoIterator<Item = CitizenRecord>) -> Self {
        let mut builder = Builder::default();
        for record in records {
            if let Err(e) = builder.insert(record) {
                tracing::warn!("embedded registry: record skipped: {e}");
            }
        }
        builder.finish()
    }

    /// Number of citizens held.
    pub fn len(&self) -> usize {
        self.citizens.len()
    }

    /// Whether the registry holds no citizen.
    pub fn is_empty(&self) -> bool {
        self.citizens.is_empty()
    }

    /// Number of households held.
    pub fn household_count(&self) -> usize {
        self.households.len()
    }

    /// Synchronous lookup of a citizen (what [`Registry::citizen`] answers). A key
    /// of the wrong shape finds nobody.
    pub fn get(&self, key: &LookupKey) -> Result<Option<CitizenRecord>, RegistryError> {
        let id = match key {
            LookupKey::PersonalId(s) => parse_digits(s, 12),
            LookupKey::OldId(s) => parse_digits(s, 9).and_then(|o| self.old_ids.get(&o).copied()),
        };
        let Some(bytes) = id.and_then(|id| self.citizens.get(&id)) else {
            return Ok(None);
        };
        CitizenRecord::decode(&bytes[..])
            .map(Some)
            .map_err(|e| Invalid::record(e).into())
    }

    /// Synchronous lookup of a household (what [`Registry::household`] answers).
    pub fn get_household(&self, household_id: &str) -> Result<Option<Household>, RegistryError> {
        let Some(bytes) = self.households.get(household_id) else {
            return Ok(None);
        };
        Household::decode(&bytes[..]).map(Some).map_err(|source| {
            Invalid::Undecodable {
                what: "household",
                source,
            }
            .into()
        })
    }

    /// Up to two living citizens with a full date of birth, to print as demo
    /// examples: the ones with the smallest personal ids, so the choice is
    /// deterministic for a given population.
    pub fn examples(&self) -> Vec<CitizenRecord> {
        let mut ids: Vec<u64> = self.citizens.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| CitizenRecord::decode(&self.citizens[&id][..]).ok())
            .filter(super::is_example)
            .take(2)
            .collect()
    }
}

#[tonic::async_trait]
impl Registry for EmbeddedRegistry {
    async fn citizen(
        &self,
        key: &LookupKey,
        _deadline: Deadline,
    ) -> Result<Option<CitizenRecord>, RegistryError> {
        self.get(key)
    }

    async fn household(
        &self,
        household_id: &str,
        _deadline: Deadline,
    ) -> Result<Option<Household>, RegistryError> {
        self.get_household(household_id)
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use popgw_population::generate;
    use std::io::Write;

    fn population(count: u64, seed: u64) -> (Vec<u8>, Vec<CitizenRecord>) {
        let mut buf = Vec::new();
        generate(count, seed, &mut buf).unwrap();
        let records = buf
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        (buf, records)
    }

    #[tokio::test]
    async fn load_jsonl_round_trips_generated_population() {
        let (buf, records) = population(5_000, 11);
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&buf).unwrap();
        let reg = EmbeddedRegistry::load_jsonl(file.path()).unwrap();
        assert_eq!(reg.len(), records.len());
        assert_eq!(reg.kind(), "embedded");
        let mut old = 0;
        for r in &records {
            let got = reg
                .citizen(
                    &LookupKey::PersonalId(r.personal_id.clone()),
                    Deadline::after(std::time::Duration::from_secs(10)),
                )
                .await
                .unwrap();
            assert_eq!(got.as_ref(), Some(r));
            if !r.old_id_number.is_empty() {
                old += 1;
                let got = reg
                    .citizen(
                        &LookupKey::OldId(r.old_id_number.clone()),
                        Deadline::after(std::time::Duration::from_secs(10)),
                    )
                    .await
                    .unwrap();
                assert_eq!(got.as_ref(), Some(r));
            }
        }
        assert!(old > 0);
        assert_eq!(
            reg.citizen(
                &LookupKey::PersonalId("001099999999x".into()),
                Deadline::after(std::time::Duration::from_secs(10))
            )
            .await
            .unwrap(),
            None
        );
        assert_eq!(
            reg.citizen(
                &LookupKey::OldId("12345678".into()),
                Deadline::after(std::time::Duration::from_secs(10))
            )
            .await
            .unwrap(),
            None
        );
        assert!(reg
            .household("nope", Deadline::after(std::time::Duration::from_secs(10)))
            .await
            .unwrap()
            .is_none());
    }

    #[test]
    fn households_group_correctly() {
        let (_, records) = population(3_000, 5);
        let reg = EmbeddedRegistry::from_records(records.clone());
        let mut by_household: HashMap<String, Vec<&CitizenRecord>> = HashMap::new();
        for r in &records {
            let h = r.household.as_ref().unwrap();
            by_household
                .entry(h.household_id.clone())
                .or_default()
                .push(r);
        }
        assert_eq!(reg.household_count(), by_household.len());
        for (id, members) in &by_household {
            let h = reg.get_household(id).unwrap().unwrap();
            assert_eq!(&h.household_id, id);
            assert_eq!(h.members.len(), members.len());
            let head = h.head.as_ref().unwrap();
            assert_eq!(head.relation_to_head, "head");
            assert_eq!(h.members[0], *head);
            let head_record = members
                .iter()
                .find(|r| r.personal_id == head.personal_id)
                .unwrap();
            assert_eq!(h.address, head_record.permanent_residence);
            for r in members {
                assert_eq!(
                    r.household.as_ref().unwrap().head_personal_id,
                    head.personal_id
                );
                assert!(h
                    .members
                    .iter()
                    .any(|m| m.personal_id == r.personal_id && m.full_name == r.full_name));
            }
        }
    }

    #[test]
    fn malformed_line_is_named() {
        let (buf, _) = population(10, 1);
        let mut text = String::from_utf8(buf).unwrap();
        text.push_str("\n{\"personalId\": \"123\"}\n");
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        let err = EmbeddedRegistry::load_jsonl(file.path()).unwrap_err();
        assert!(matches!(err, RegistryError::Invalid(_)));
        assert!(err.to_string().contains("line 12"), "{err}");

        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"\n{not json\n").unwrap();
        let err = EmbeddedRegistry::load_jsonl(file.path()).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");

        let (buf, _) = population(3, 1);
        let first = buf.split(|b| *b == b'\n').next().unwrap().to_vec();
        let mut dup = buf.clone();
        dup.extend_from_slice(&first);
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&dup).unwrap();
        let err = EmbeddedRegistry::load_jsonl(file.path()).unwrap_err();
        assert!(err.to_string().contains("line 4") && err.to_string().contains("duplicate"));

        let err = EmbeddedRegistry::load_jsonl(Path::new("/nonexistent/x.jsonl")).unwrap_err();
        assert!(matches!(err, RegistryError::Unavailable(_)));
    }

    #[test]
    fn from_records_skips_bad_and_duplicate_ids() {
        let (_, records) = population(5, 2);
        let mut bad = records[0].clone();
        bad.personal_id = "12".into();
        let mut dup = records[1].clone();
        dup.full_name = "OTHER".into();
        let reg = EmbeddedRegistry::from_records(records.iter().cloned().chain([bad, dup]));
        assert_eq!(reg.len(), records.len());
        let got = reg
            .get(&LookupKey::PersonalId(records[1].personal_id.clone()))
            .unwrap()
            .unwrap();
        assert_eq!(got.full_name, records[1].full_name);
    }

    #[test]
    fn examples_are_living_with_full_dates_and_deterministic() {
        let (_, records) = population(2_000, 9);
        let a = EmbeddedRegistry::from_records(records.clone()).examples();
        let b = EmbeddedRegistry::from_records(records.into_iter().rev()).examples();
        assert_eq!(a.len(), 2);
        assert_eq!(a, b);
        for r in &a {
            assert!(r.date_of_death.is_empty());
            assert_eq!(r.date_of_birth.len(), 10);
        }
        assert!(EmbeddedRegistry::default().examples().is_empty());
    }
}
