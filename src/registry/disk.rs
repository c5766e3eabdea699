//! The on-disk store: a national population in one redb file, opened in well under a
//! second whatever its size, read without holding it in memory.
//!
//! # Layout
//! A store is a folder. Each import writes a new *generation*, `registry-<version>.redb`,
//! beside the one being served (first as `….redb.partial`), fsyncs it, and only then
//! points the folder's `CURRENT` file at it (written to a temporary file, fsynced,
//! renamed, folder fsynced). An import that stops half-way, `kill -9` included, leaves
//! `CURRENT` and the generation it names untouched. A running server notices the new
//! `CURRENT` within about a second and switches to it. The previous generation is kept
//! (the next import removes older ones).
//!
//! Tables of a generation (keys are the ids as numbers, big-endian, so that
//! key order is id order):
//! - `citizens`: personal id → prost-encoded `CitizenRecord` (with its `version`);
//! - `old_ids`: old 9-digit id → personal id;
//! - `household_members`: (household id, personal id) → (), one range scan per household;
//! - `changes`: version → the record as that change left it (the change feed);
//! - `meta`: `head`, `floor` (oldest resumable version), `count`.
//!
//! The file is opened in redb's multi-process mode, so that `popgw registry update` can
//! change a record while `popgw registry serve` or `popgw serve` has the store open; each
//! update is one durable write transaction that bumps `head`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prost::Message;
use redb::{ConcurrencyMode, Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::household;
use super::import::{id_number, ImportError, ImportSummary};
use super::{
    check_resume, import_version_base, polled_feed, Change, ChangeStream, Deadline, Invalid,
    LookupKey, Registry, RegistryError, Store, StoreOptions, Unavailable, Versions,
};
use crate::proto::registry::{CitizenRecord, Household};

const CITIZENS: TableDefinition<u64, &[u8]> = TableDefinition::new("citizens");
const OLD_IDS: TableDefinition<u64, u64> = TableDefinition::new("old_ids");
const HOUSEHOLDS: TableDefinition<(&str, u64), ()> = TableDefinition::new("household_members");
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The file naming the generation in use.
const CURRENT: &str = "CURRENT";
/// An import reports progress every this many records.
const PROGRESS_EVERY: u64 = 10_000;
/// redb's page cache for a served store.
const SERVE_CACHE_BYTES: usize = 256 << 20;

fn db_err(e: impl Into<redb::Error>) -> RegistryError {
    RegistryError::from(e.into())
}

fn import_db_err(e: impl Into<redb::Error>) -> ImportError {
    ImportError::Store(format!("store: {}", e.into()))
}

struct Generation {
    name: String,
    db: Database,
}

/// A population on disk (see the module documentation). Every call runs on the
/// blocking pool under the store's timeout: a read waits on a file lock while another
/// process commits, and a cold page is a disk read — neither may stall the async threads.
#[derive(Clone)]
pub struct DiskStore {
    inner: Arc<Inner>,
    timeout: Duration,
}

/// The open store, shared with the blocking tasks.
struct Inner {
    dir: PathBuf,
    current: ArcSwap<Generation>,
    changes_kept: u64,
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore")
            .field("dir", &self.inner.dir)
            .field("generation", &self.inner.current.load().name)
            .finish()
    }
}

/// Reads the generation name from `CURRENT`; `None` when there is no store yet.
fn current_name(dir: &Path) -> Result<Option<String>, RegistryError> {
    match std::fs::read_to_string(dir.join(CURRENT)) {
        Ok(s) => {
            let name = s.trim().to_string();
            if name.is_empty()
                || name.contains('/')
                || !name.starts_with("registry-")
                || !name.ends_with(".redb")
            {
                return Err(Invalid::NotAGeneration {
                    path: dir.join(CURRENT),
                }
                .into());
            }
            Ok(Some(name))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Unavailable::file(dir.join(CURRENT), e).into()),
    }
}

fn open_generation(dir: &Path, name: &str) -> Result<Generation, RegistryError> {
    let path = dir.join(name);
    if !path.is_file() {
        return Err(Unavailable::GenerationMissing { path }.into());
    }
    let db = Database::builder()
        .set_cache_size(SERVE_CACHE_BYTES)
        .set_concurrency_mode(ConcurrencyMode::MultiWriter)
        .open(&path)
        .map_err(db_err)?;
    Ok(Generation {
        name: name.to_string(),
        db,
    })
}

/// A `meta` value (`head`, `floor`, `count`), 0 when absent.
fn meta_value(meta: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64, redb::Error> {
    Ok(meta.get(key)?.map(|v| v.value()).unwrap_or(0))
}

/// The feed's head and floor from a `meta` table.
fn versions_in(meta: &impl ReadableTable<&'static str, u64>) -> Result<Versions, RegistryError> {
    Ok(Versions {
        head: meta_value(meta, "head").map_err(db_err)?,
        floor: meta_value(meta, "floor").map_err(db_err)?,
    })
}

fn meta(db: &Database) -> Result<Versions, RegistryError> {
    let txn = db.begin_read().map_err(db_err)?;
    versions_in(&txn.open_table(META).map_err(db_err)?)
}

fn decode(bytes: &[u8]) -> Result<CitizenRecord, RegistryError> {
    CitizenRecord::decode(bytes).map_err(|e| Invalid::record(e).into())
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl DiskStore {
    /// Whether `dir` holds a store (a `CURRENT` file).
    pub fn exists(dir: &Path) -> bool {
        dir.join(CURRENT).is_file()
    }

    /// The name of the generation served now (`registry-<version>.redb`), if any.
    pub fn generation(dir: &Path) -> Result<Option<String>, RegistryError> {
        current_name(dir)
    }

    /// Opens the store in `dir`: the generation `CURRENT` names. Does not read the
    /// records: opening takes the same time whatever the size.
    pub fn open(dir: &Path, options: &StoreOptions) -> Result<DiskStore, RegistryError> {
        let name = current_name(dir)?.ok_or_else(|| Unavailable::NoStore {
            dir: dir.to_path_buf(),
        })?;
        let generation = open_generation(dir, &name)?;
        Ok(DiskStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                current: ArcSwap::from_pointee(generation),
                changes_kept: options.changes_kept.max(1),
            }),
            timeout: options.timeout,
        })
    }

    /// Runs `f` on the blocking pool, giving up at `deadline` ("could not check").
    async fn run<T: Send + 'static>(
        &self,
        deadline: Deadline,
        f: impl FnOnce(&Inner) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<T, RegistryError> {
        let inner = self.inner.clone();
        deadline
            .run("the disk store", async move {
                tokio::task::spawn_blocking(move || f(&inner))
                    .await
                    .map_err(RegistryError::from)?
            })
            .await
    }

    fn own_deadline(&self) -> Deadline {
        Deadline::after(self.timeout)
    }

    /// Imports `records` into a new generation of the store in `dir` (created if
    /// needed) and makes it current; see the module documentation for atomicity.
    /// A duplicate personal id or old id stops the import, naming its line.
    /// `progress` is called with the number of records written so far.
    pub fn import(
        dir: &Path,
        records: impl Iterator<Item = Result<(u64, CitizenRecord), ImportError>>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ImportSummary, ImportError> {
        let io = |what: &str, p: &Path, e: std::io::Error| {
            ImportError::Store(format!("{what} {}: {e}", p.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
        // One import at a time per folder.
        let lock_path = dir.join("import.lock");
        let lock = File::create(&lock_path).map_err(|e| io("creating", &lock_path, e))?;
        if lock.try_lock().is_err() {
            return Err(ImportError::Store(format!(
                "another import into {} is running",
                dir.display()
            )));
        }
        // Leftovers of imports that were stopped.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().ends_with(".redb.partial") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let store_err = |e: RegistryError| ImportError::Store(e.to_string());
        let previous = current_name(dir).map_err(store_err)?;
        let previous_head = match &previous {
            Some(name) => {
                let g = open_generation(dir, name).map_err(store_err)?;
                meta(&g.db).map_err(store_err)?.head
            }
            None => 0,
        };
        let version = import_version_base(previous_head);
        let name = format!("registry-{version}.redb");
        let partial = dir.join(format!("{name}.partial"));
        let result = Self::build(&partial, version, records, progress);
        let summary = match result {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        };
        let path = dir.join(&name);
        std::fs::rename(&partial, &path).map_err(|e| io("renaming", &partial, e))?;
        fsync_dir(dir).map_err(|e| io("syncing", dir, e))?;
        // Updates to the previous generation are held off while CURRENT switches (its write
        // lock), and one made since the import began fails the import: it would be lost.
        let _hold = match &previous {
            Some(prev) => {
                let g = open_generation(dir, prev).map_err(store_err)?;
                let txn = g.db.begin_write().map_err(import_db_err)?;
                let head = meta_value(&txn.open_table(META).map_err(import_db_err)?, "head")
                    .map_err(import_db_err)?;
                if head != previous_head {
                    let _ = std::fs::remove_file(&path);
                    return Err(ImportError::Store(format!(
                        "the store was updated {} times during the import; nothing was switched \
                         (import again, or stop the updates first)",
                        head.saturating_sub(previous_head)
                    )));
                }
                Some((txn, g))
            }
            None => None,
        };
        let tmp = dir.join("CURRENT.tmp");
        let mut f = File::create(&tmp).map_err(|e| io("creating", &tmp, e))?;
        f.write_all(format!("{name}\n").as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| io("writing", &tmp, e))?;
        std::fs::rename(&tmp, dir.join(CURRENT)).map_err(|e| io("renaming", &tmp, e))?;
        fsync_dir(dir).map_err(|e| io("syncing", dir, e))?;
        // Keep the new generation and the previous one (a server may still read it).
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n.starts_with("registry-")
                    && n.ends_with(".redb")
                    && n != name
                    && Some(&n) != previous.as_ref()
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(summary)
    }

    fn build(
        path: &Path,
        version: u64,
        records: impl Iterator<Item = Result<(u64, CitizenRecord), ImportError>>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ImportSummary, ImportError> {
        let db = Database::builder()
            .set_cache_size(512 << 20)
            .create(path)
            .map_err(import_db_err)?;
        // One write transaction for the whole import: a page is copied once, at its first
        // change, then changed in place; redb writes dirty pages beyond its cache out to
        // the file, so memory stays bounded. (Committing every million records instead
        // copied most of the tree at each commit: the cost grew with the square of the
        // size, and so did the file.)
        let mut count = 0u64;
        let mut buf = Vec::with_capacity(1024);
        let mut txn = db.begin_write().map_err(import_db_err)?;
        {
            let mut citizens = txn.open_table(CITIZENS).map_err(import_db_err)?;
            let mut old_ids = txn.open_table(OLD_IDS).map_err(import_db_err)?;
            let mut households = txn.open_table(HOUSEHOLDS).map_err(import_db_err)?;
            for item in records {
                let (line, mut record) = item?;
                let dup = |what: &str| ImportError::Line {
                    line,
                    message: format!("duplicate {what}"),
                };
                let Some(id) = id_number(&record.personal_id, 12) else {
                    // Records come checked by validation; refuse rather than guess.
                    return Err(ImportError::Line {
                        line,
                        message: "personal_id is not 12 digits".into(),
                    });
                };
                record.version = version;
                buf.clear();
                record.encode(&mut buf).expect("Vec grows");
                if citizens
                    .insert(id, buf.as_slice())
                    .map_err(import_db_err)?
                    .is_some()
                {
                    return Err(dup("personal_id"));
                }
                if let Some(old) = id_number(&record.old_id_number, 9) {
                    if old_ids.insert(old, id).map_err(import_db_err)?.is_some() {
                        return Err(dup("old_id_number"));
                    }
                }
                if let Some(h) = record.household.as_ref() {
                    if !h.household_id.is_empty() {
                        households
                            .insert((h.household_id.as_str(), id), ())
                            .map_err(import_db_err)?;
                    }
                }
                count += 1;
                if count.is_multiple_of(PROGRESS_EVERY) {
                    progress(count);
                }
            }
            let mut meta = txn.open_table(META).map_err(import_db_err)?;
            meta.insert("head", version).map_err(import_db_err)?;
            meta.insert("floor", version).map_err(import_db_err)?;
            meta.insert("count", count).map_err(import_db_err)?;
            txn.open_table(CHANGES).map_err(import_db_err)?;
        }
        txn.set_quick_repair(true);
        txn.commit().map_err(import_db_err)?;
        progress(count);
        drop(db);
        // The rename that follows must not reach the disk before the data.
        File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(|e| ImportError::Store(format!("syncing {}: {e}", path.display())))?;
        Ok(ImportSummary {
            imported: count,
            version,
        })
    }
}

impl Inner {
    fn get(&self, key: &LookupKey) -> Result<Option<CitizenRecord>, RegistryError> {
        let generation = self.current.load();
        let txn = generation.db.begin_read().map_err(db_err)?;
        let citizens = txn.open_table(CITIZENS).map_err(db_err)?;
        let id = match key {
            LookupKey::PersonalId(s) => id_number(s, 12),
            LookupKey::OldId(s) => match id_number(s, 9) {
                Some(old) => {
                    let old_ids = txn.open_table(OLD_IDS).map_err(db_err)?;
                    old_ids.get(old).map_err(db_err)?.map(|v| v.value())
                }
                None => None,
            },
        };
        let Some(id) = id else { return Ok(None) };
        match citizens.get(id).map_err(db_err)? {
            Some(v) => decode(v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn get_many(&self, ids: &[String]) -> Result<Vec<CitizenRecord>, RegistryError> {
        let generation = self.current.load();
        let txn = generation.db.begin_read().map_err(db_err)?;
        let citizens = txn.open_table(CITIZENS).map_err(db_err)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids.iter().filter_map(|s| id_number(s, 12)) {
            if let Some(v) = citizens.get(id).map_err(db_err)? {
                out.push(decode(v.value())?);
            }
        }
        Ok(out)
    }

    fn get_household(&self, household_id: &str) -> Result<Option<Household>, RegistryError> {
        let generation = self.current.load();
        let txn = generation.db.begin_read().map_err(db_err)?;
        let index = txn.open_table(HOUSEHOLDS).map_err(db_err)?;
        let citizens = txn.open_table(CITIZENS).map_err(db_err)?;
        let mut records = Vec::new();
        for entry in index
            .range((household_id, 0u64)..=(household_id, u64::MAX))
            .map_err(db_err)?
        {
            let (key, _) = entry.map_err(db_err)?;
            if let Some(v) = citizens.get(key.value().1).map_err(db_err)? {
                records.push(decode(v.value())?);
            }
        }
        Ok(household::from_records(household_id, &records))
    }

    fn apply(
        &self,
        personal_id: &str,
        change: &Change,
    ) -> Result<Option<CitizenRecord>, RegistryError> {
        let Some(id) = id_number(personal_id, 12) else {
            return Ok(None);
        };
        let generation = self.current.load();
        let mut txn = generation.db.begin_write().map_err(db_err)?;
        // An import may have switched the store while this waited for the write lock:
        // a change to a generation no longer served would be lost.
        if current_name(&self.dir)?.as_deref() != Some(generation.name.as_str()) {
            return Err(Unavailable::Replaced.into());
        }
        txn.set_quick_repair(true);
        let record = {
            let mut citizens = txn.open_table(CITIZENS).map_err(db_err)?;
            let mut changes = txn.open_table(CHANGES).map_err(db_err)?;
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let Some(mut record) = citizens
                .get(id)
                .map_err(db_err)?
                .map(|v| decode(v.value()))
                .transpose()?
            else {
                return Ok(None);
            };
            change
                .apply(&mut record)
                .map_err(|e| RegistryError::from(Invalid::Change(e)))?;
            let Versions { head, floor } = versions_in(&meta)?;
            let version = head + 1;
            record.version = version;
            let bytes = record.encode_to_vec();
            citizens.insert(id, bytes.as_slice()).map_err(db_err)?;
            changes.insert(version, bytes.as_slice()).map_err(db_err)?;
            meta.insert("head", version).map_err(db_err)?;
            // Compaction: keep the newest `changes_kept` changes.
            if version - floor > self.changes_kept {
                let new_floor = version - self.changes_kept;
                for v in floor + 1..=new_floor {
                    changes.remove(v).map_err(db_err)?;
                }
                meta.insert("floor", new_floor).map_err(db_err)?;
            }
            record
        };
        txn.commit().map_err(db_err)?;
        Ok(Some(record))
    }

    fn changes(&self, after: u64, limit: usize) -> Result<Vec<CitizenRecord>, RegistryError> {
        let generation = self.current.load();
        let txn = generation.db.begin_read().map_err(db_err)?;
        check_resume(after, versions_in(&txn.open_table(META).map_err(db_err)?)?)?;
        let changes = txn.open_table(CHANGES).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in changes.range(after + 1..).map_err(db_err)?.take(limit) {
            let (_, v) = entry.map_err(db_err)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    fn first_living(&self, n: usize) -> Result<Vec<CitizenRecord>, RegistryError> {
        let generation = self.current.load();
        let txn = generation.db.begin_read().map_err(db_err)?;
        let citizens = txn.open_table(CITIZENS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in citizens.iter().map_err(db_err)? {
            if out.len() >= n {
                break;
            }
            let (_, v) = entry.map_err(db_err)?;
            let r = decode(v.value())?;
            if super::is_example(&r) {
                out.push(r);
            }
        }
        Ok(out)
    }

    fn count_sync(&self) -> Result<u64, RegistryError> {
        let generation = self.current.load();
        let txn = generation.db.begin_read().map_err(db_err)?;
        meta_value(&txn.open_table(META).map_err(db_err)?, "count").map_err(db_err)
    }

    fn reload_if_swapped(&self) -> Result<(), RegistryError> {
        let Some(name) = current_name(&self.dir)? else {
            return Ok(());
        };
        if name != self.current.load().name {
            let generation = open_generation(&self.dir, &name)?;
            tracing::info!(generation = %name, "registry store: switched to a new import");
            self.current.store(Arc::new(generation));
        }
        Ok(())
    }
}

/// Updates wait for a durable commit: a longer bound than lookups.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(30);

#[tonic::async_trait]
impl Registry for DiskStore {
    async fn citizen(
        &self,
        key: &LookupKey,
        deadline: Deadline,
    ) -> Result<Option<CitizenRecord>, RegistryError> {
        let key = key.clone();
        self.run(deadline.capped(self.timeout), move |s| s.get(&key))
            .await
    }

    async fn household(
        &self,
        household_id: &str,
        deadline: Deadline,
    ) -> Result<Option<Household>, RegistryError> {
        let id = household_id.to_string();
        self.run(deadline.capped(self.timeout), move |s| s.get_household(&id))
            .await
    }

    async fn citizens(
        &self,
        personal_ids: &[String],
        deadline: Deadline,
    ) -> Result<Vec<CitizenRecord>, RegistryError> {
        let ids = personal_ids.to_vec();
        self.run(deadline.capped(self.timeout), move |s| s.get_many(&ids))
            .await
    }

    async fn changes(&self, from: u64) -> Result<ChangeStream, RegistryError> {
        Ok(polled_feed(Arc::new(self.clone()), from))
    }

    fn kind(&self) -> &'static str {
        "disk"
    }
}

#[tonic::async_trait]
impl Store for DiskStore {
    async fn versions(&self) -> Result<Versions, RegistryError> {
        self.run(self.own_deadline(), |s| meta(&s.current.load().db))
            .await
    }

    async fn changes_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<CitizenRecord>, RegistryError> {
        self.run(self.own_deadline(), move |s| s.changes(after, limit))
            .await
    }

    async fn update(
        &self,
        personal_id: &str,
        change: &Change,
    ) -> Result<Option<CitizenRecord>, RegistryError> {
        let (id, change) = (personal_id.to_string(), change.clone());
        self.run(
            Deadline::after(UPDATE_TIMEOUT.max(self.timeout)),
            move |s| s.apply(&id, &change),
        )
        .await
    }

    async fn count(&self) -> Result<u64, RegistryError> {
        self.run(self.own_deadline(), |s| s.count_sync()).await
    }

    async fn examples(&self, n: usize) -> Result<Vec<CitizenRecord>, RegistryError> {
        self.run(self.own_deadline(), move |s| s.first_living(n))
            .await
    }

    async fn refresh(&self) -> Result<(), RegistryError> {
        self.run(self.own_deadline(), |s| s.reload_if_swapped())
            .await
    }
}
