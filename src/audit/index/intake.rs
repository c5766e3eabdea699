//! What a witness message must pass before its records are indexed (`records_of`,
//! `Intake`): no NATS and no PostgreSQL here.

use std::collections::HashMap;

use super::{IndexedRecord, MAX_TIME_MS, MIN_TIME_MS};
use crate::audit::format::{parse_line, Chain, ChainBreak};
use crate::audit::witness::Head;

/// Checks one witness message's lines and turns them into records: each line parses and
/// names the message's node, each hash is SHA-256(prev || json), the lines are
/// consecutive and chained, and the last is the message's head.
pub fn records_of(head: &Head) -> Result<Vec<IndexedRecord>, String> {
    let mut out: Vec<IndexedRecord> = Vec::with_capacity(head.lines.len());
    let mut chain = Chain::new((head.first_seq != 0).then_some(head.first_seq), None);
    for (i, line) in head.lines.iter().enumerate() {
        // The kind of error only: a JSON error's message can quote the value.
        let p = parse_line(line.as_bytes()).map_err(|e| format!("line {i}: {e}"))?;
        if p.seal.is_some() {
            return Err(format!(
                "line {i}: carries a seal (lines are shipped without)"
            ));
        }
        let b = &p.body;
        if b.node != head.node {
            return Err(format!("line {i}: a record of another node"));
        }
        // What PostgreSQL would refuse, refused here: one such message must not stop the
        // indexing of every node behind it.
        if !(MIN_TIME_MS..=MAX_TIME_MS).contains(&b.time_unix_ms) {
            return Err(format!("seq {}: time outside 2000–9999", b.seq));
        }
        if p.json.contains("\\u0000") {
            return Err(format!("seq {}: a NUL character in a field", b.seq));
        }
        if b.seq == 0 || b.seq > i64::MAX as u64 {
            return Err(format!("line {i}: seq out of range"));
        }
        // The words the index's problem table has always used.
        let follows = |seq: u64| match out.last() {
            Some(before) => format!(
                "seq {seq}: does not follow seq {} (gap or broken chain)",
                before.body.seq
            ),
            None => format!("seq {seq}: does not follow the chain"),
        };
        chain.link(&p).map_err(|e| match e {
            ChainBreak::OutOfOrder { expected, found } if out.is_empty() => {
                format!("first line is seq {found}, the message says {expected}")
            }
            ChainBreak::OutOfOrder { .. } | ChainBreak::PrevMismatch => follows(b.seq),
            ChainBreak::HashMismatch => format!("seq {}: hash does not match its JSON", b.seq),
            ChainBreak::Unparsable => format!("seq {}: prev is not a hash", b.seq),
            ChainBreak::SeqOutOfRange => format!("line {i}: seq out of range"),
        })?;
        out.push(IndexedRecord {
            body: p.body,
            hash: p.hash,
            json: p.json,
        });
    }
    match out.last() {
        Some(last) if last.body.seq != head.seq || last.hash != head.hash => Err(format!(
            "last line is seq {} but the message's head is seq {}",
            last.body.seq, head.seq
        )),
        _ => Ok(out),
    }
}

/// The checks a witness message passes before its records are indexed (no NATS, no
/// PostgreSQL here). Records are indexed only under a seal that verifies with their
/// node's key ([`FeedConfig::node_keys`](super::FeedConfig::node_keys); a node without one is refused): the seal signs its batch's last
/// record, and through the hash chain every record before it, so the unsealed first
/// parts of a batch sent in several messages are held until a sealed message whose
/// records chain back to them arrives — in any order, as redeliveries come — or until
/// the index already holds, under a seal, the record that follows them
/// ([`Intake::held_tails`], [`Intake::release_covered`]). A seal made with another key,
/// a node without a key, and held parts beyond [`MAX_HELD_PARTS`] are refused: whoever
/// can publish on the stream cannot put records into citizens' reports.
pub struct Intake {
    keys: HashMap<String, ed25519_dalek::VerifyingKey>,
    chains: HashMap<String, (u64, String)>,
    /// node → first seq of a held part → (its stream sequence, its records).
    held: HashMap<String, std::collections::BTreeMap<u64, (u64, Vec<IndexedRecord>)>>,
}

/// Unsealed parts held per node at most (the oldest beyond are refused).
pub const MAX_HELD_PARTS: usize = 64;

/// What follows from one message.
#[derive(Debug, Default)]
pub struct Step {
    /// Records to index now.
    pub ready: Vec<IndexedRecord>,
    /// Stream sequences of the messages now settled (indexed or refused): to acknowledge
    /// once the commit is done. A held message is not settled yet.
    pub settled: Vec<u64>,
    /// Problems to keep: (node, stream sequence, what; never a record's content).
    pub problems: Vec<(String, u64, String)>,
}

impl Step {
    fn refuse(&mut self, node: &str, stream_seq: u64, why: String) {
        self.problems.push((node.to_string(), stream_seq, why));
        self.settled.push(stream_seq);
    }
}

impl Intake {
    /// Checks with these node keys (a node without one is never indexed), continuing the chains the
    /// index already holds (node → newest seq and hash).
    pub fn new(
        keys: HashMap<String, ed25519_dalek::VerifyingKey>,
        chains: HashMap<String, (u64, String)>,
    ) -> Intake {
        Intake {
            keys,
            chains,
            held: HashMap::new(),
        }
    }

    /// Takes the message at `stream_seq`, published on `subject`.
    pub fn take(&mut self, stream_seq: u64, subject: &str, payload: &[u8]) -> Step {
        let mut step = Step::default();
        let subject_node = subject.rsplit('.').next().unwrap_or_default().to_string();
        let head: Head = match serde_json::from_slice(payload) {
            Ok(h) => h,
            Err(e) => {
                // The error's kind and place only: serde's message can quote the value.
                let why = format!(
                    "not a witness message ({:?} error at line {} column {})",
                    e.classify(),
                    e.line(),
                    e.column()
                );
                step.refuse(&subject_node, stream_seq, why);
                return step;
            }
        };
        let node = head.node.clone();
        if node != subject_node {
            step.refuse(
                &subject_node,
                stream_seq,
                "a message of another node than its subject's".into(),
            );
            return step;
        }
        let records = match records_of(&head) {
            Ok(r) => r,
            Err(problem) => {
                step.refuse(&node, stream_seq, problem);
                return step;
            }
        };
        // Only what the node sealed is indexed: whoever can publish on the stream could
        // otherwise put chain-consistent records into citizens' reports.
        let Some(key) = self.keys.get(&node) else {
            step.refuse(
                &node,
                stream_seq,
                "no key for this node in the index's node_keys: not indexed".into(),
            );
            return step;
        };
        if head.seal.is_empty() {
            if records.is_empty() {
                step.settled.push(stream_seq);
                return step;
            }
            let held = self.held.entry(node.clone()).or_default();
            // A redelivered part replaces itself.
            held.insert(records[0].body.seq, (stream_seq, records));
            while held.len() > MAX_HELD_PARTS {
                if let Some((_, (s, _))) = held.pop_first() {
                    step.refuse(&node, s, "part of a batch whose seal never came".into());
                }
            }
            return step;
        }
        if let Err(e) =
            crate::audit::format::check_seal(key, &node, head.seq, &head.hash, &head.seal)
        {
            step.refuse(&node, stream_seq, format!("{e} (not the node's key)"));
            return step;
        }
        // The seal covers the message's last record (its head) and every record the
        // chain leads back through: the held parts that end where this one begins.
        let (seq, hash) = match records.first() {
            Some(first) => (first.body.seq.saturating_sub(1), first.body.prev.clone()),
            None => (head.seq, head.hash.clone()),
        };
        let mut ready = self.release(&node, seq, &hash, &mut step);
        ready.extend(records);
        step.settled.push(stream_seq);
        self.advance(&node, stream_seq, ready, &mut step);
        step
    }

    /// Releases the held parts of `node` that chain back from the record (`seq`, `hash`),
    /// oldest first.
    fn release(
        &mut self,
        node: &str,
        mut seq: u64,
        hash: &str,
        step: &mut Step,
    ) -> Vec<IndexedRecord> {
        let mut hash = hash.to_string();
        let mut parts = Vec::new();
        if let Some(held) = self.held.get_mut(node) {
            while let Some((&first, (_, part))) = held.range(..=seq).next_back() {
                let ends_here = part
                    .last()
                    .is_some_and(|last| last.body.seq == seq && last.hash == hash);
                if !ends_here {
                    break;
                }
                let (stream_seq, part) = held.remove(&first).expect("just seen");
                step.settled.push(stream_seq);
                seq = first.saturating_sub(1);
                hash = part[0].body.prev.clone();
                parts.push(part);
            }
        }
        parts.into_iter().rev().flatten().collect()
    }

    /// Notes the chain's progress (a gap or fork against what the index holds is kept as
    /// a problem; the records are still indexed: verify --index tells which copy is the
    /// node's) and hands `ready` to the step.
    fn advance(&mut self, node: &str, stream_seq: u64, ready: Vec<IndexedRecord>, step: &mut Step) {
        if let (Some(first), Some((seq, hash))) = (ready.first(), self.chains.get(node)) {
            if first.body.seq == seq + 1 && &first.body.prev != hash {
                step.problems.push((
                    node.to_string(),
                    stream_seq,
                    format!(
                        "seq {} does not chain to the indexed seq {seq}",
                        first.body.seq
                    ),
                ));
            }
        }
        if let Some(last) = ready.last() {
            let entry = self
                .chains
                .entry(node.to_string())
                .or_insert((0, String::new()));
            if last.body.seq > entry.0 {
                *entry = (last.body.seq, last.hash.clone());
            }
        }
        step.ready.extend(ready);
    }

    /// For each held part: its node, the seq of the record that would follow it, and
    /// the hash that record's `prev` must name. If the index already holds that record
    /// (indexed under a seal), [`Intake::release_covered`] releases the part.
    pub fn held_tails(&self) -> Vec<(String, u64, String)> {
        self.held
            .iter()
            .flat_map(|(node, parts)| {
                parts.values().filter_map(move |(_, part)| {
                    let last = part.last()?;
                    Some((node.clone(), last.body.seq + 1, last.hash.clone()))
                })
            })
            .collect()
    }

    /// Refuses `node`'s held part that ends just before `seq`: the index holds, under a
    /// seal, a record `seq` that does not follow it — the part forks from the node's
    /// chain and no seal will ever cover it.
    pub fn refuse_forked(&mut self, node: &str, seq: u64) -> Step {
        let mut step = Step::default();
        if let Some(parts) = self.held.get_mut(node) {
            let forked: Vec<u64> = parts
                .iter()
                .filter(|(_, (_, part))| part.last().is_some_and(|l| l.body.seq + 1 == seq))
                .map(|(first, _)| *first)
                .collect();
            for first in forked {
                if let Some((stream_seq, _)) = parts.remove(&first) {
                    step.refuse(
                        node,
                        stream_seq,
                        "forks from the node's sealed chain".into(),
                    );
                }
            }
        }
        step
    }

    /// Releases `node`'s held parts that chain back from an indexed record at `seq`
    /// whose `prev` is `prev`.
    pub fn release_covered(&mut self, node: &str, seq: u64, prev: &str) -> Step {
        let mut step = Step::default();
        let ready = self.release(node, seq.saturating_sub(1), prev, &mut step);
        let stream_seq = step.settled.last().copied().unwrap_or(0);
        self.advance(node, stream_seq, ready, &mut step);
        step
    }
}
