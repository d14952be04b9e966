//! Producer ids for idempotent produce, unique for the life of a data directory.
//!
//! Shard 0 hands them out in order. Before using a block of [`BLOCK_SIZE`] ids it
//! persists the block's end in `<data_dir>/producer_ids.meta`, so after a crash or
//! restart allocation resumes above every id that may have been handed out (a restart
//! skips the rest of the block; ids are plentiful).
//!
//! Format (little-endian, 16 bytes): magic `FLPI`, CRC-32 `u32` of the next 8 bytes,
//! the reserved block end `i64`. Replaced atomically.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use super::CatalogError;
use crate::shard::LocalMutex;
use crate::storage::{read_small_file, write_file_atomically, StorageError};

/// The file holding the end of the reserved block.
pub const PRODUCER_IDS_FILE: &str = "producer_ids.meta";

/// Ids reserved per write of the file.
pub const BLOCK_SIZE: i64 = 1_000;

const MAGIC: [u8; 4] = *b"FLPI";

/// Hands out producer ids; lives on shard 0.
#[derive(Debug)]
pub struct ProducerIdAllocator {
    path: PathBuf,
    /// `None` until the file was read.
    next: Cell<Option<i64>>,
    reserved_until: Cell<i64>,
    lock: LocalMutex,
}

impl ProducerIdAllocator {
    /// An allocator for `data_dir`; the file is read on first use.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(PRODUCER_IDS_FILE),
            next: Cell::new(None),
            reserved_until: Cell::new(0),
            lock: LocalMutex::new(),
        }
    }

    /// A new producer id, never handed out before from this data directory.
    pub async fn allocate(&self) -> Result<i64, CatalogError> {
        let _guard = self.lock.lock().await;
        let next = match self.next.get() {
            Some(next) => next,
            None => {
                let start = self.read_reserved().await?;
                self.reserved_until.set(start);
                start
            }
        };
        if next >= self.reserved_until.get() {
            let until = next + BLOCK_SIZE;
            let mut bytes = Vec::with_capacity(16);
            bytes.extend_from_slice(&MAGIC);
            bytes.extend_from_slice(&crc32fast::hash(&until.to_le_bytes()).to_le_bytes());
            bytes.extend_from_slice(&until.to_le_bytes());
            write_file_atomically(&self.path, &bytes)
                .await
                .map_err(|error| StorageError::io("writing", &self.path, error))?;
            self.reserved_until.set(until);
        }
        self.next.set(Some(next + 1));
        Ok(next)
    }

    /// The end of the block reserved last (0 without a file).
    async fn read_reserved(&self) -> Result<i64, CatalogError> {
        let bytes = read_small_file(&self.path)
            .await
            .map_err(|error| StorageError::io("reading", &self.path, error))?;
        let Some(bytes) = bytes else {
            return Ok(0);
        };
        let until = bytes
            .get(8..16)
            .map(|until| i64::from_le_bytes(until.try_into().expect("8 bytes")));
        match until {
            Some(until)
                if bytes.len() == 16
                    && bytes[..4] == MAGIC
                    && bytes[4..8] == crc32fast::hash(&bytes[8..16]).to_le_bytes()
                    && until >= 0 =>
            {
                Ok(until)
            }
            _ => Err(CatalogError::Corrupt {
                path: self.path.display().to_string(),
                reason: "damaged producer id file".into(),
            }),
        }
    }
}
