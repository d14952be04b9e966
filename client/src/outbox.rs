//! The producer's durable outbox: records that could not be delivered because the broker
//! was unreachable are appended to a local file and published again, in order, once it
//! is back. The file survives a restart of the producing process.
//!
//! Layout, in the outbox directory:
//! - `outbox.log`: entries appended in send order, each `length u32`, `crc32 u32` of the
//!   payload, payload (little-endian): topic (`u16` length and bytes), partition (`u8`
//!   flag and `u32`), timestamp `i64`, key and value (`u8` flag, `u32` length and bytes
//!   each), header count `u16`, then per header name (`u16` length and bytes) and value
//!   (`u32` length and bytes). Every append is `fdatasync`ed before the send is answered.
//! - `outbox.cursor`: the byte position up to which entries were published
//!   (`u64` + its CRC), replaced atomically. When it reaches the end, both files are
//!   emptied.
//!
//! On open, entries after the cursor are checked; a torn or damaged tail (a crash during
//! an append, which was then never answered) is cut off.
//!
//! The file is written with blocking calls from the producer's task: the outbox is the
//! slow path, taken only while the broker is unreachable.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::Record;

const LOG_FILE: &str = "outbox.log";
const CURSOR_FILE: &str = "outbox.cursor";
const LOCK_FILE: &str = "outbox.lock";
/// Largest entry accepted when reading back (a bound against a damaged length).
const ENTRY_BYTES_MAX: usize = 256 << 20;

/// A record read back from the outbox, with the position after its entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The record as it was sent (partition as the producer chose it, if it had).
    pub record: Record,
    /// Byte position after this entry: commit it once the record is delivered.
    pub end: u64,
}

/// An open outbox directory.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    /// Held (an exclusive `flock`) while open: one producer per outbox directory.
    _lock: File,
    log: File,
    cursor: u64,
    len: u64,
    /// A failed append could not be undone: the file may end in a partial entry.
    broken: bool,
}

impl Outbox {
    /// Opens (creating) the outbox in `dir`, cutting a damaged tail. Fails if another
    /// producer (in this or another process) has it open.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let lock = File::create(dir.join(LOCK_FILE))?;
        lock.try_lock().map_err(|_| {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("the outbox {} is in use by another producer", dir.display()),
            )
        })?;
        let mut log = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(dir.join(LOG_FILE))?;
        let cursor = read_cursor(dir)?;
        let mut bytes = Vec::new();
        log.seek(SeekFrom::Start(0))?;
        log.read_to_end(&mut bytes)?;
        let cursor = cursor.min(bytes.len() as u64);
        let mut valid = cursor as usize;
        while let Some((_, next)) = decode_entry(&bytes, valid) {
            valid = next;
        }
        if valid < bytes.len() {
            log.set_len(valid as u64)?;
            log.sync_data()?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            _lock: lock,
            log,
            cursor,
            len: valid as u64,
            broken: false,
        })
    }

    /// Whether every entry was published.
    pub fn is_empty(&self) -> bool {
        self.cursor >= self.len
    }

    /// Bytes of entries not yet published.
    pub fn pending_bytes(&self) -> u64 {
        self.len - self.cursor
    }

    /// Appends records durably (`fdatasync`) in order. A record without a timestamp gets
    /// the current time, as a send would have given it. If the write or the sync fails,
    /// the file is cut back to the entries before, so a partly written entry never sits
    /// in front of later ones; if even that fails, the outbox refuses further appends.
    pub fn append(&mut self, records: &[Record]) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other(
                "the outbox could not undo a failed append and takes no more records",
            ));
        }
        let now_ms = crate::producer::now_ms();
        records
            .iter()
            .try_for_each(|record| crate::accumulator::check_timestamp(record.timestamp_ms))
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
        let mut bytes = Vec::new();
        for record in records {
            encode_entry(record, now_ms, &mut bytes);
        }
        let written = self
            .log
            .write_all(&bytes)
            .and_then(|()| self.log.sync_data());
        if let Err(error) = written {
            if self.log.set_len(self.len).is_err() {
                self.broken = true;
            }
            return Err(error);
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Unpublished entries from the cursor, about `max_bytes` of them (at least one).
    /// Reads only those from the file, not the whole backlog.
    pub fn read(&mut self, max_bytes: usize) -> io::Result<Vec<OutboxEntry>> {
        let pending = (self.len - self.cursor) as usize;
        if pending == 0 {
            return Ok(Vec::new());
        }
        let mut window = pending.min(max_bytes.max(ENTRY_HEADER_BYTES));
        loop {
            let mut bytes = vec![0u8; window];
            self.log.seek(SeekFrom::Start(self.cursor))?;
            self.log.read_exact(&mut bytes)?;
            let mut entries = Vec::new();
            let mut at = 0;
            while at < bytes.len() && (entries.is_empty() || at < max_bytes) {
                if let Some((record, next)) = decode_entry(&bytes, at) {
                    at = next;
                    entries.push(OutboxEntry {
                        record,
                        end: self.cursor + at as u64,
                    });
                    continue;
                }
                // An entry running past the window (its header, or its payload) is left
                // for the next chunk, or read whole next time round if it is the first;
                // anything else is damage.
                let end = entry_end(&bytes, at);
                let past_window = match end {
                    Some(end) => end > window && end <= pending,
                    None => at + ENTRY_HEADER_BYTES > window && window < pending,
                };
                if !past_window {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("damaged outbox entry at byte {}", self.cursor + at as u64),
                    ));
                }
                match (entries.is_empty(), end) {
                    (true, Some(end)) => {
                        window = end;
                        break;
                    }
                    _ => return Ok(entries),
                }
            }
            if !entries.is_empty() {
                return Ok(entries);
            }
        }
    }

    /// Marks everything before `position` as published; empties the files once all is.
    pub fn commit(&mut self, position: u64) -> io::Result<()> {
        self.cursor = position.min(self.len);
        if self.cursor == self.len {
            self.log.set_len(0)?;
            self.log.sync_data()?;
            self.cursor = 0;
            self.len = 0;
        }
        write_cursor(&self.dir, self.cursor)
    }
}

fn read_cursor(dir: &Path) -> io::Result<u64> {
    match std::fs::read(dir.join(CURSOR_FILE)) {
        Ok(bytes) if bytes.len() == 12 => {
            let position = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
            let crc = u32::from_le_bytes(bytes[8..].try_into().expect("4 bytes"));
            if crc32fast::hash(&bytes[..8]) == crc {
                Ok(position)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "damaged outbox cursor",
                ))
            }
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "damaged outbox cursor",
        )),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(error),
    }
}

fn write_cursor(dir: &Path, position: u64) -> io::Result<()> {
    let mut bytes = position.to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
    let temporary = dir.join(format!("{CURSOR_FILE}.tmp"));
    let mut file = File::create(&temporary)?;
    file.write_all(&bytes)?;
    file.sync_data()?;
    std::fs::rename(&temporary, dir.join(CURSOR_FILE))?;
    File::open(dir)?.sync_all()
}

fn encode_entry(record: &Record, now_ms: i64, out: &mut Vec<u8>) {
    let mut payload = Vec::new();
    put_bytes16(&mut payload, record.topic.as_bytes());
    match record.partition {
        Some(partition) => {
            payload.push(1);
            payload.extend_from_slice(&partition.to_le_bytes());
        }
        None => payload.extend_from_slice(&[0; 5]),
    }
    payload.extend_from_slice(&record.timestamp_ms.unwrap_or(now_ms).to_le_bytes());
    for field in [&record.key, &record.value] {
        match field {
            Some(bytes) => {
                payload.push(1);
                put_bytes32(&mut payload, bytes);
            }
            None => payload.extend_from_slice(&[0; 5]),
        }
    }
    payload.extend_from_slice(&(record.headers.len() as u16).to_le_bytes());
    for (name, value) in &record.headers {
        put_bytes16(&mut payload, name.as_bytes());
        put_bytes32(&mut payload, value);
    }
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

fn put_bytes16(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_bytes32(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The length and CRC in front of each entry.
const ENTRY_HEADER_BYTES: usize = 8;

/// Where the entry at `at` ends by its length, if its header is there and the length
/// is within bounds.
fn entry_end(bytes: &[u8], at: usize) -> Option<usize> {
    let length = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
    (length <= ENTRY_BYTES_MAX).then_some(at + ENTRY_HEADER_BYTES + length)
}

/// The entry at `at` and the position after it; `None` if it is torn or damaged.
fn decode_entry(bytes: &[u8], at: usize) -> Option<(Record, usize)> {
    let length = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
    if length > ENTRY_BYTES_MAX {
        return None;
    }
    let crc = u32::from_le_bytes(bytes.get(at + 4..at + 8)?.try_into().ok()?);
    let payload = bytes.get(at + 8..at + 8 + length)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let mut reader = Reader(payload);
    let topic = String::from_utf8(reader.bytes16()?.to_vec()).ok()?;
    let partition = match (reader.u8()?, reader.u32()?) {
        (0, _) => None,
        (_, partition) => Some(partition),
    };
    let timestamp_ms = Some(i64::from_le_bytes(reader.take(8)?.try_into().ok()?));
    let key = reader.optional32()?;
    let value = reader.optional32()?;
    let count = u16::from_le_bytes(reader.take(2)?.try_into().ok()?);
    let mut headers = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let name = String::from_utf8(reader.bytes16()?.to_vec()).ok()?;
        let length = reader.u32()? as usize;
        headers.push((name, reader.take(length)?.to_vec()));
    }
    let record = Record {
        topic,
        partition,
        key,
        value,
        headers,
        timestamp_ms,
    };
    Some((record, at + 8 + length))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        let taken = self.0.get(..count)?;
        self.0 = &self.0[count..];
        Some(taken)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn bytes16(&mut self) -> Option<&'a [u8]> {
        let length = u16::from_le_bytes(self.take(2)?.try_into().ok()?);
        self.take(usize::from(length))
    }

    fn optional32(&mut self) -> Option<Option<Vec<u8>>> {
        let present = self.u8()?;
        let length = self.u32()? as usize;
        match present {
            0 => Some(None),
            _ => Some(Some(self.take(length)?.to_vec())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(index: u32) -> Record {
        Record::new("orders", format!("value-{index}"))
            .with_key(format!("key-{index}"))
            .with_header("h", vec![index as u8])
            .with_timestamp(1_000 + i64::from(index))
    }

    /// Every record not yet published.
    fn pending(outbox: &mut Outbox) -> Vec<Record> {
        let entries = outbox.read(usize::MAX).unwrap();
        entries.into_iter().map(|entry| entry.record).collect()
    }

    #[test]
    fn entries_survive_reopen_in_order_and_are_removed_once_published() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path()).unwrap();
        assert!(outbox.is_empty());
        assert!(outbox.read(1_000).unwrap().is_empty());
        outbox
            .append(&(0..5).map(record).collect::<Vec<_>>())
            .unwrap();
        let mut tombstone = Record::new("orders", "").with_partition(3);
        tombstone.value = None;
        outbox.append(std::slice::from_ref(&tombstone)).unwrap();
        drop(outbox);

        let mut outbox = Outbox::open(dir.path()).unwrap();
        let entries = outbox.read(usize::MAX).unwrap();
        let records: Vec<Record> = entries.iter().map(|entry| entry.record.clone()).collect();
        let mut expected: Vec<Record> = (0..5).map(record).collect();
        // Without a timestamp of its own it was stamped when queued.
        let stamped = records[5].timestamp_ms.unwrap();
        assert!(
            (crate::producer::now_ms() - stamped).abs() < 60_000,
            "{stamped}"
        );
        expected.push(Record {
            timestamp_ms: Some(stamped),
            ..tombstone
        });
        assert_eq!(records, expected);

        outbox.commit(entries[1].end).unwrap();
        drop(outbox);
        let mut outbox = Outbox::open(dir.path()).unwrap();
        let rest = outbox.read(1).unwrap();
        assert_eq!(rest.len(), 1, "at least one, about max_bytes");
        assert_eq!(rest[0].record, record(2));
        outbox.commit(entries.last().unwrap().end).unwrap();
        assert!(outbox.is_empty());
        assert_eq!(
            std::fs::metadata(dir.path().join(LOG_FILE)).unwrap().len(),
            0
        );
    }

    #[test]
    fn one_producer_per_outbox_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = Outbox::open(dir.path()).unwrap();
        let second = Outbox::open(dir.path()).unwrap_err();
        assert!(second.to_string().contains("in use"), "{second}");
        drop(first);
        Outbox::open(dir.path()).unwrap();
    }

    #[test]
    fn a_torn_tail_is_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path()).unwrap();
        outbox.append(&[record(0), record(1)]).unwrap();
        drop(outbox);
        let path = dir.path().join(LOG_FILE);
        let length = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(length - 3)
            .unwrap();
        let mut outbox = Outbox::open(dir.path()).unwrap();
        let entries = outbox.read(usize::MAX).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].record, record(0));
        // Appends continue after the cut.
        outbox.append(&[record(2)]).unwrap();
        assert_eq!(pending(&mut outbox), vec![record(0), record(2)]);
    }

    /// A chunk reads about `max_bytes` from the file, not the backlog; an entry larger
    /// than that comes whole; chunk after chunk gives every entry once, in order.
    #[test]
    fn chunks_read_about_max_bytes_and_a_large_entry_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path()).unwrap();
        let mut sent: Vec<Record> = (0..200).map(record).collect();
        sent.insert(
            100,
            Record::new("orders", vec![7u8; 10_000]).with_timestamp(5),
        );
        outbox.append(&sent).unwrap();
        let mut read = Vec::new();
        let (mut chunks, mut start) = (0, 0);
        while !outbox.is_empty() {
            let entries = outbox.read(1_000).unwrap();
            let end = entries.last().unwrap().end;
            // Past 1,000 bytes only by the entry that crossed it, or a single large one.
            assert!(entries.len() == 1 || end - start < 1_200, "{}", end - start);
            outbox.commit(end).unwrap();
            read.extend(entries.into_iter().map(|entry| entry.record));
            (chunks, start) = (chunks + 1, end);
        }
        assert_eq!(read, sent);
        assert!(chunks > 10, "{chunks}");
    }

    /// A failed append that cannot be undone leaves the outbox refusing appends, and the
    /// entries before it readable.
    #[test]
    fn an_append_that_fails_and_cannot_be_undone_stops_further_appends() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path()).unwrap();
        outbox.append(&[record(0)]).unwrap();
        // A handle that can neither write nor truncate.
        let writable = std::mem::replace(
            &mut outbox.log,
            File::open(dir.path().join(LOG_FILE)).unwrap(),
        );
        assert!(outbox.append(&[record(1)]).is_err());
        outbox.log = writable;
        let refused = outbox.append(&[record(2)]).unwrap_err();
        assert!(refused.to_string().contains("takes no more"), "{refused}");
        assert_eq!(pending(&mut outbox), vec![record(0)]);
    }

    /// Records with a timestamp before the epoch are refused whole, before anything is
    /// written: the producer could never publish them.
    #[test]
    fn appends_with_a_negative_timestamp_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path()).unwrap();
        let refused = outbox
            .append(&[record(0), record(1).with_timestamp(-1)])
            .unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::InvalidInput);
        assert!(refused.to_string().contains("negative"), "{refused}");
        assert!(outbox.is_empty());
        outbox.append(&[record(2)]).unwrap();
        assert_eq!(pending(&mut outbox), vec![record(2)]);
    }
}
