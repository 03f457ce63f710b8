//! The engines compared, behind one interface: load warm keys, look up, claim and complete.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use idemstore::{Key, Store};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::workload::{
    CLAIM_BYTES, FINGERPRINT, LEASE_MS, OUTCOME, RECORD_BYTES, RETENTION_MS, Res, key, run_all,
};
pub use crate::workload::{LOAD_THREADS, idem_claim_complete};

/// What one thread holds: a connection, a read transaction, or just a reference.
pub trait Worker {
    /// Looks `key` up; whether it was found (with its outcome read).
    fn get(&mut self, key: &Key) -> Res<bool>;
    /// Claims the new key `key` and then completes it with `OUTCOME`, each step durable in the
    /// engine's configured mode.
    fn claim_complete(&mut self, key: &Key) -> Res<()>;
}

pub trait Engine: Sync {
    fn worker(&self) -> Res<Box<dyn Worker + '_>>;
    /// Loads keys `0..n` with completed outcomes.
    fn load(&self, n: u64) -> Res<Duration>;
    /// Finishes the work the engine deferred past the acknowledgement of the writes just
    /// measured, which it would otherwise do while later writes run; `false` if it defers
    /// none that the harness can wait for.
    fn catch_up(&self) -> Res<bool> {
        Ok(false)
    }
}

// ---------------------------------------------------------------- idemstore

pub struct Idem {
    pub store: Store,
}

struct IdemWorker<'a>(&'a Store);

impl Worker for IdemWorker<'_> {
    fn get(&mut self, key: &Key) -> Res<bool> {
        Ok(self.0.get(key)?.is_some())
    }
    fn claim_complete(&mut self, key: &Key) -> Res<()> {
        idem_claim_complete(self.0, key)
    }
}

impl Engine for Idem {
    fn worker(&self) -> Res<Box<dyn Worker + '_>> {
        Ok(Box::new(IdemWorker(&self.store)))
    }
    fn load(&self, n: u64) -> Res<Duration> {
        let took = run_all(LOAD_THREADS, n, |i| {
            idem_claim_complete(&self.store, &key(i))
        })?;
        self.store.checkpoint()?;
        Ok(took)
    }
    /// Applies the acknowledged changes still waiting for the index (`stats` does that first).
    fn catch_up(&self) -> Res<bool> {
        self.store.stats()?;
        Ok(true)
    }
}

// ---------------------------------------------------------------- raw redb

const REDB_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("idempotency");

pub struct Redb {
    pub db: Database,
    /// Lookups reuse one read transaction per thread (else one per lookup).
    pub reuse_read: bool,
}

impl Redb {
    pub fn create(path: &Path, cache_size: usize) -> Res<Database> {
        let mut builder = Database::builder();
        builder.set_cache_size(cache_size);
        let db = builder.create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(REDB_TABLE)?;
        txn.commit()?;
        Ok(db)
    }
}

struct RedbWorker<'a> {
    db: &'a Database,
    table: Option<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>,
}

impl Worker for RedbWorker<'_> {
    fn get(&mut self, key: &Key) -> Res<bool> {
        let found = match &self.table {
            Some(table) => table.get(key.as_bytes())?.map(|v| v.value().to_vec()),
            None => {
                let table = self.db.begin_read()?.open_table(REDB_TABLE)?;
                table.get(key.as_bytes())?.map(|v| v.value().to_vec())
            }
        };
        Ok(found.is_some())
    }

    fn claim_complete(&mut self, key: &Key) -> Res<()> {
        let k = key.as_bytes();
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(REDB_TABLE)?;
            if table.get(k)?.is_some() {
                return Err("raw redb: key already present".into());
            }
            table.insert(k, &[1u8; CLAIM_BYTES][..])?;
        }
        txn.commit()?; // redb's default durability: Immediate
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(REDB_TABLE)?;
            table.insert(k, &[2u8; RECORD_BYTES][..])?;
        }
        txn.commit()?;
        Ok(())
    }
}

impl Engine for Redb {
    fn worker(&self) -> Res<Box<dyn Worker + '_>> {
        let table = if self.reuse_read {
            Some(self.db.begin_read()?.open_table(REDB_TABLE)?)
        } else {
            None
        };
        Ok(Box::new(RedbWorker {
            db: &self.db,
            table,
        }))
    }

    fn load(&self, n: u64) -> Res<Duration> {
        let started = std::time::Instant::now();
        let value = [2u8; RECORD_BYTES];
        let mut i = 0;
        while i < n {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(redb::Durability::None)?;
            {
                let mut table = txn.open_table(REDB_TABLE)?;
                for j in i..(i + 20_000).min(n) {
                    table.insert(key(j).as_bytes(), &value[..])?;
                }
            }
            txn.commit()?;
            i += 20_000;
        }
        // One durable commit makes the non-durable ones durable.
        self.db.begin_write()?.commit()?;
        Ok(started.elapsed())
    }
}

// ---------------------------------------------------------------- SQLite

pub struct Sqlite {
    pub path: PathBuf,
    /// `FULL` or `NORMAL`.
    pub synchronous: &'static str,
}

const SQLITE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS idempotency (
    key BLOB PRIMARY KEY,
    fingerprint BLOB NOT NULL,
    state INTEGER NOT NULL,
    token INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    outcome BLOB
) WITHOUT ROWID";
const SQLITE_CLAIM: &str = "INSERT INTO idempotency (key, fingerprint, state, token, expires_at)
    VALUES (?1, ?2, 1, ?3, ?4) ON CONFLICT (key) DO NOTHING";
const SQLITE_COMPLETE: &str = "UPDATE idempotency SET state = 2, outcome = ?2, expires_at = ?3
    WHERE key = ?1 AND token = ?4";
const SQLITE_GET: &str = "SELECT state, outcome FROM idempotency WHERE key = ?1";

impl Sqlite {
    fn connect(&self) -> Res<rusqlite::Connection> {
        let conn = rusqlite::Connection::open(&self.path)?;
        conn.busy_timeout(Duration::from_secs(30))?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(format!("SQLite refused WAL mode: {mode}").into());
        }
        conn.execute_batch(&format!("PRAGMA synchronous = {}", self.synchronous))?;
        conn.execute_batch(SQLITE_SCHEMA)?;
        Ok(conn)
    }
}

struct SqliteWorker {
    conn: rusqlite::Connection,
    token: i64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Worker for SqliteWorker {
    fn get(&mut self, key: &Key) -> Res<bool> {
        let mut stmt = self.conn.prepare_cached(SQLITE_GET)?;
        let mut rows = stmt.query([key.as_bytes()])?;
        match rows.next()? {
            Some(row) => {
                let _state: i64 = row.get(0)?;
                let _outcome: Option<Vec<u8>> = row.get(1)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn claim_complete(&mut self, key: &Key) -> Res<()> {
        self.token += 1;
        let k = key.as_bytes();
        let claimed = self
            .conn
            .prepare_cached(SQLITE_CLAIM)?
            .execute(rusqlite::params![
                k,
                &FINGERPRINT[..],
                self.token,
                now_ms() + (LEASE_MS + RETENTION_MS) as i64
            ])?;
        if claimed != 1 {
            return Err("SQLite: key already present".into());
        }
        let done = self
            .conn
            .prepare_cached(SQLITE_COMPLETE)?
            .execute(rusqlite::params![
                k,
                &OUTCOME[..],
                now_ms() + RETENTION_MS as i64,
                self.token
            ])?;
        if done != 1 {
            return Err("SQLite: completion updated no row".into());
        }
        Ok(())
    }
}

impl Engine for Sqlite {
    fn worker(&self) -> Res<Box<dyn Worker + '_>> {
        Ok(Box::new(SqliteWorker {
            conn: self.connect()?,
            // Tokens only need to be unique per key: each thread writes its own new keys.
            token: 0,
        }))
    }

    fn load(&self, n: u64) -> Res<Duration> {
        let started = std::time::Instant::now();
        let mut conn = self.connect()?;
        let txn = conn.transaction()?;
        {
            let mut stmt = txn.prepare(
                "INSERT INTO idempotency (key, fingerprint, state, token, expires_at, outcome)
                 VALUES (?1, ?2, 2, ?3, ?4, ?5)",
            )?;
            let expires = now_ms() + RETENTION_MS as i64;
            for i in 0..n {
                stmt.execute(rusqlite::params![
                    key(i).as_bytes(),
                    &FINGERPRINT[..],
                    i as i64,
                    expires,
                    &OUTCOME[..]
                ])?;
            }
        }
        txn.commit()?;
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        Ok(started.elapsed())
    }
}

// ---------------------------------------------------------------- Redis

pub struct Redis {
    pub client: redis::Client,
    /// Prefix of every key this run writes, so that cleanup removes exactly those.
    pub prefix: Vec<u8>,
}

impl Redis {
    fn k(&self, key: &Key) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(key.as_bytes());
        k
    }

    /// Removes every key this run wrote.
    pub fn cleanup(&self) -> Res<u64> {
        let mut con = self.client.get_connection()?;
        let mut pattern = self.prefix.clone();
        pattern.push(b'*');
        let mut cursor = 0u64;
        let mut removed = 0u64;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(10_000)
                .query(&mut con)?;
            if !keys.is_empty() {
                removed += redis::cmd("UNLINK").arg(&keys).query::<u64>(&mut con)?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}

struct RedisWorker<'a> {
    engine: &'a Redis,
    con: redis::Connection,
}

impl Worker for RedisWorker<'_> {
    fn get(&mut self, key: &Key) -> Res<bool> {
        let v: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.engine.k(key))
            .query(&mut self.con)?;
        Ok(v.is_some())
    }

    fn claim_complete(&mut self, key: &Key) -> Res<()> {
        let k = self.engine.k(key);
        let claimed: Option<String> = redis::cmd("SET")
            .arg(&k)
            .arg(&[1u8; CLAIM_BYTES][..])
            .arg("NX")
            .arg("PX")
            .arg(LEASE_MS)
            .query(&mut self.con)?;
        if claimed.is_none() {
            return Err("Redis: key already present".into());
        }
        let done: Option<String> = redis::cmd("SET")
            .arg(&k)
            .arg(&[2u8; RECORD_BYTES][..])
            .arg("XX")
            .arg("PX")
            .arg(RETENTION_MS)
            .query(&mut self.con)?;
        if done.is_none() {
            return Err("Redis: completion found no claim".into());
        }
        Ok(())
    }
}

impl Engine for Redis {
    fn worker(&self) -> Res<Box<dyn Worker + '_>> {
        Ok(Box::new(RedisWorker {
            engine: self,
            con: self.client.get_connection()?,
        }))
    }

    fn load(&self, n: u64) -> Res<Duration> {
        let started = std::time::Instant::now();
        let mut con = self.client.get_connection()?;
        let value = [2u8; RECORD_BYTES];
        let mut i = 0;
        while i < n {
            let mut pipe = redis::pipe();
            for j in i..(i + 1000).min(n) {
                pipe.cmd("SET")
                    .arg(self.k(&key(j)))
                    .arg(&value[..])
                    .arg("PX")
                    .arg(RETENTION_MS)
                    .ignore();
            }
            pipe.query::<()>(&mut con)?;
            i += 1000;
        }
        Ok(started.elapsed())
    }
}

// ---------------------------------------------------------------- PostgreSQL

pub struct Postgres {
    pub config: String,
    pub table: String,
}

struct PgWorker {
    client: postgres::Client,
    get: postgres::Statement,
    claim: postgres::Statement,
    complete: postgres::Statement,
    token: i64,
}

impl Postgres {
    pub fn connect(&self) -> Res<postgres::Client> {
        let mut client = postgres::Client::connect(&self.config, postgres::NoTls)?;
        client.batch_execute("SET synchronous_commit = on")?;
        Ok(client)
    }

    pub fn create_table(&self) -> Res<()> {
        let mut client = self.connect()?;
        client.batch_execute(&format!(
            "DROP TABLE IF EXISTS {t};
             CREATE TABLE {t} (
                 key bytea PRIMARY KEY,
                 fingerprint bytea NOT NULL,
                 state smallint NOT NULL,
                 token bigint NOT NULL,
                 expires_at bigint NOT NULL,
                 outcome bytea
             )",
            t = self.table
        ))?;
        Ok(())
    }

    pub fn drop_table(&self) -> Res<()> {
        self.connect()?
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", self.table))?;
        Ok(())
    }
}

fn hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b"\\\\x");
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 15)]);
    }
}

impl Worker for PgWorker {
    fn get(&mut self, key: &Key) -> Res<bool> {
        let row = self.client.query_opt(&self.get, &[&key.as_bytes()])?;
        Ok(
            row.is_some_and(|r| {
                r.get::<_, Option<Vec<u8>>>(1).is_some() || r.get::<_, i16>(0) == 1
            }),
        )
    }

    fn claim_complete(&mut self, key: &Key) -> Res<()> {
        self.token += 1;
        let k = key.as_bytes();
        let claimed = self.client.execute(
            &self.claim,
            &[
                &k,
                &&FINGERPRINT[..],
                &self.token,
                &(now_ms() + (LEASE_MS + RETENTION_MS) as i64),
            ],
        )?;
        if claimed != 1 {
            return Err("PostgreSQL: key already present".into());
        }
        let done = self.client.execute(
            &self.complete,
            &[
                &k,
                &&OUTCOME[..],
                &(now_ms() + RETENTION_MS as i64),
                &self.token,
            ],
        )?;
        if done != 1 {
            return Err("PostgreSQL: completion updated no row".into());
        }
        Ok(())
    }
}

impl Engine for Postgres {
    fn worker(&self) -> Res<Box<dyn Worker + '_>> {
        let mut client = self.connect()?;
        let t = &self.table;
        let get = client.prepare(&format!("SELECT state, outcome FROM {t} WHERE key = $1"))?;
        let claim = client.prepare(&format!(
            "INSERT INTO {t} (key, fingerprint, state, token, expires_at)
             VALUES ($1, $2, 1, $3, $4) ON CONFLICT (key) DO NOTHING"
        ))?;
        let complete = client.prepare(&format!(
            "UPDATE {t} SET state = 2, outcome = $2, expires_at = $3 WHERE key = $1 AND token = $4"
        ))?;
        Ok(Box::new(PgWorker {
            client,
            get,
            claim,
            complete,
            token: 0,
        }))
    }

    fn load(&self, n: u64) -> Res<Duration> {
        use std::io::Write;
        let started = std::time::Instant::now();
        let mut client = self.connect()?;
        let mut writer = client.copy_in(&format!(
            "COPY {} (key, fingerprint, state, token, expires_at, outcome) FROM STDIN",
            self.table
        ))?;
        let expires = now_ms() + RETENTION_MS as i64;
        let mut line = Vec::with_capacity(1024);
        for i in 0..n {
            line.clear();
            hex(&mut line, key(i).as_bytes());
            line.push(b'\t');
            hex(&mut line, &FINGERPRINT);
            line.extend_from_slice(format!("\t2\t{i}\t{expires}\t").as_bytes());
            hex(&mut line, &OUTCOME);
            line.push(b'\n');
            writer.write_all(&line)?;
        }
        writer.finish()?;
        client.batch_execute(&format!("VACUUM ANALYZE {}", self.table))?;
        Ok(started.elapsed())
    }
}

// ---------------------------------------------------------------- std HashMap

/// The in-memory ceiling for lookups (no durability, no writes measured).
pub struct Map(pub HashMap<Vec<u8>, Vec<u8>>);

struct MapWorker<'a>(&'a HashMap<Vec<u8>, Vec<u8>>);

impl Worker for MapWorker<'_> {
    fn get(&mut self, key: &Key) -> Res<bool> {
        Ok(self.0.get(key.as_bytes()).is_some())
    }
    fn claim_complete(&mut self, _key: &Key) -> Res<()> {
        Err("the HashMap baseline measures lookups only".into())
    }
}

impl Engine for Map {
    fn worker(&self) -> Res<Box<dyn Worker + '_>> {
        Ok(Box::new(MapWorker(&self.0)))
    }
    fn load(&self, _n: u64) -> Res<Duration> {
        Err("build the map directly".into())
    }
}

// ---------------------------------------------------------------- the physical limit

/// Bytes of idemstore's log frames for one claim and one completion of a 48-byte key with a
/// 200-byte outcome (28-byte frame header, 3-byte entry header, key, record).
pub const FRAME_BYTES: [usize; 2] = [28 + 3 + 48 + CLAIM_BYTES, 28 + 3 + 48 + RECORD_BYTES];

/// A log file that grows by appends (as idemstore's segments do), or a preallocated one that
/// is overwritten in place (so fdatasync need not commit a new file size).
pub struct LogFile {
    file: File,
    offset: u64,
    preallocated: bool,
    path: PathBuf,
}

impl LogFile {
    pub fn create(path: &Path, preallocate: u64) -> Res<LogFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        if preallocate > 0 {
            // Written once with real bytes and synced: a later overwrite changes no metadata.
            let chunk = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < preallocate {
                file.write_all_at(&chunk, at)?;
                at += chunk.len() as u64;
            }
            file.sync_all()?;
        }
        Ok(LogFile {
            file,
            offset: 0,
            preallocated: preallocate > 0,
            path: path.to_path_buf(),
        })
    }

    /// Writes `records` records (alternating claim and completion sizes) with one write(2),
    /// then one fdatasync.
    pub fn append_sync(&mut self, records: usize, buf: &mut Vec<u8>) -> Res<()> {
        buf.clear();
        for r in 0..records {
            buf.resize(buf.len() + FRAME_BYTES[r % 2], 0xa5);
        }
        if self.preallocated && self.offset + buf.len() as u64 > self.file.metadata()?.len() {
            self.offset = 0;
        }
        self.file.write_all_at(buf, self.offset)?;
        self.offset += buf.len() as u64;
        self.file.sync_data()?;
        Ok(())
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
