//! Reading a population for import: JSON Lines (one proto3-JSON `CitizenRecord` per
//! line, as `popgw registry generate` writes), read as a stream so that memory stays
//! bounded whatever the size, each record checked before it is stored.
//!
//! A line that is not a record is an error naming its number; a record that fails
//! [`validation::check_record`] too, unless invalid records are skipped (and counted).
//! Messages never quote a value: they may reach a terminal or a log.

use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::proto::registry::CitizenRecord;
use crate::validation;

/// Why an import stopped. Nothing of it is served: the previous store stays.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A line of the input.
    #[error("line {line}: {message}")]
    Line {
        /// 1-based line number.
        line: u64,
        /// What is wrong (never a value).
        message: String,
    },
    /// The input could not be read.
    #[error("reading the input: {0}")]
    Read(std::io::Error),
    /// The store could not be written.
    #[error("{0}")]
    Store(String),
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Citizens imported.
    pub imported: u64,
    /// The version every imported record carries; the feed's floor.
    pub version: u64,
}

/// Records from JSON Lines, with their line numbers.
pub struct Records<R> {
    reader: R,
    line: u64,
    buf: String,
    skip_invalid: bool,
    skipped: Arc<AtomicU64>,
}

impl<R: BufRead> Records<R> {
    /// Reads `reader`; with `skip_invalid`, records failing validation are skipped and
    /// counted instead of stopping the import (malformed lines always stop it).
    pub fn new(reader: R, skip_invalid: bool) -> Self {
        Records {
            reader,
            line: 0,
            buf: String::new(),
            skip_invalid,
            skipped: Arc::default(),
        }
    }

    /// Invalid records skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// A counter of the invalid records skipped, readable after the records were
    /// handed to an import.
    pub fn skipped_counter(&self) -> Arc<AtomicU64> {
        self.skipped.clone()
    }
}

impl<R: BufRead> Iterator for Records<R> {
    type Item = Result<(u64, CitizenRecord), ImportError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buf.clear();
            match self.reader.read_line(&mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    return Some(Err(ImportError::Line {
                        line: self.line + 1,
                        message: "not UTF-8".into(),
                    }))
                }
                Err(e) => return Some(Err(ImportError::Read(e))),
            }
            self.line += 1;
            let text = self.buf.trim();
            if text.is_empty() {
                continue;
            }
            let line = self.line;
            let record: CitizenRecord = match serde_json::from_str(text) {
                Ok(r) => r,
                Err(e) => {
                    // serde_json's message may quote a value: give its kind and column only.
                    return Some(Err(ImportError::Line {
                        line,
                        message: format!(
                            "not a CitizenRecord in proto3 JSON ({:?} error at column {})",
                            e.classify(),
                            e.column()
                        ),
                    }));
                }
            };
            match validation::check_record(&record) {
                Ok(()) => return Some(Ok((line, record))),
                Err(_) if self.skip_invalid => {
                    self.skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(e) => {
                    return Some(Err(ImportError::Line {
                        line,
                        message: format!("invalid record: {e}"),
                    }))
                }
            }
        }
    }
}

/// Parses an all-digit id of exactly `len` digits into a number (the stores' key).
pub fn id_number(s: &str, len: usize) -> Option<u64> {
    if s.len() == len && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(n: u64) -> Vec<String> {
        let mut buf = Vec::new();
        popgw_population::generate(n, 3, &mut buf).unwrap();
        String::from_utf8(buf)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn reads_generated_records_with_line_numbers() {
        let text = lines(50).join("\n\n");
        let got: Vec<_> = Records::new(text.as_bytes(), false)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got.len(), 50);
        assert_eq!(got[1].0, 3, "blank lines count");
    }

    #[test]
    fn malformed_and_invalid_lines_are_named_without_values() {
        let mut l = lines(5);
        l.insert(3, "{\"personalId\": \"0010980123".into());
        let err = Records::new(l.join("\n").as_bytes(), true)
            .find_map(Result::err)
            .unwrap();
        assert!(
            err.to_string().starts_with("line 4: not a CitizenRecord"),
            "{err}"
        );
        assert!(!err.to_string().contains("0010980123"));

        let mut l = lines(5);
        let mut r: CitizenRecord = serde_json::from_str(&l[2]).unwrap();
        r.sex = if r.sex == 1 { 2 } else { 1 };
        l[2] = serde_json::to_string(&r).unwrap();
        let err = Records::new(l.join("\n").as_bytes(), false)
            .find_map(Result::err)
            .unwrap();
        assert_eq!(
            err.to_string(),
            "line 3: invalid record: sex: disagrees with the id's sex digit"
        );
        let text = l.join("\n");
        let mut records = Records::new(text.as_bytes(), true);
        assert_eq!(records.by_ref().filter(Result::is_ok).count(), 4);
        assert_eq!(records.skipped(), 1);
    }

    #[test]
    fn impossible_dates_are_invalid() {
        let l = lines(1);
        let mut r: CitizenRecord = serde_json::from_str(&l[0]).unwrap();
        r.date_of_birth = format!("{}-02-30", &r.date_of_birth[..4]);
        let text = serde_json::to_string(&r).unwrap();
        let err = Records::new(text.as_bytes(), false)
            .next()
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("date_of_birth"), "{err}");
    }
}
