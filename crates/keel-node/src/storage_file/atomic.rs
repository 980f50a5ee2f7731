//! Durable whole-file replacement and directory fsync, for the small files (hard state,
//! snapshots, new segment headers).
//!
//! `write_atomically(dir, name, bytes)` writes `<name>.tmp`, fsyncs it, renames it over
//! `<name>` and fsyncs `dir`. After a crash the file holds either its old or its new
//! contents, never a mix; a leftover `*.tmp` is an unfinished write and is deleted on open.

use crate::storage::StorageError;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const TEMP_SUFFIX: &str = ".tmp";

/// Where `write_atomically(dir, name, ..)` stages `name` before the rename.
pub fn temp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{TEMP_SUFFIX}"))
}

pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, StorageError> {
    write_temp(dir, name, &[bytes])?;
    rename_temp(dir, name)
}

/// The first half of `write_atomically`: `<name>.tmp` holds `parts`, one after another,
/// durably. Returns the temp file's path.
pub fn write_temp(dir: &Path, name: &str, parts: &[&[u8]]) -> Result<PathBuf, StorageError> {
    let temp_path = temp_path(dir, name);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp_path)
        .map_err(|error| StorageError::io("create", &temp_path, error))?;
    for part in parts {
        file.write_all(part).map_err(|error| StorageError::io("write", &temp_path, error))?;
    }
    file.sync_all().map_err(|error| StorageError::io("fsync", &temp_path, error))?;
    Ok(temp_path)
}

/// The second half: the synced `<name>.tmp` replaces `<name>`, durably.
pub fn rename_temp(dir: &Path, name: &str) -> Result<PathBuf, StorageError> {
    let temp_path = temp_path(dir, name);
    let final_path = dir.join(name);
    fs::rename(&temp_path, &final_path).map_err(|error| StorageError::io("rename", &final_path, error))?;
    sync_directory(dir)?;
    Ok(final_path)
}

/// Makes the directory's entries (creations, renames, deletions) durable.
pub fn sync_directory(dir: &Path) -> Result<(), StorageError> {
    let handle = File::open(dir).map_err(|error| StorageError::io("open directory", dir, error))?;
    handle.sync_all().map_err(|error| StorageError::io("fsync directory", dir, error))
}

pub fn remove_file(path: &Path) -> Result<(), StorageError> {
    fs::remove_file(path).map_err(|error| StorageError::io("remove", path, error))
}

/// Names of the plain files in `dir`, sorted. Names that are not UTF-8 are returned lossily
/// and so never match a pattern this crate writes.
pub fn list_files(dir: &Path) -> Result<Vec<String>, StorageError> {
    let mut names = Vec::new();
    let listing = fs::read_dir(dir).map_err(|error| StorageError::io("list", dir, error))?;
    for item in listing {
        let item = item.map_err(|error| StorageError::io("list", dir, error))?;
        let file_type = item.file_type().map_err(|error| StorageError::io("stat", item.path(), error))?;
        if file_type.is_file() {
            names.push(item.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Deletes leftover `*.tmp` files in `dir`: writes that never reached their rename.
pub fn remove_temp_files(dir: &Path) -> Result<(), StorageError> {
    for name in list_files(dir)? {
        if name.ends_with(TEMP_SUFFIX) {
            tracing::warn!(file = %dir.join(&name).display(), "removing unfinished temporary file");
            remove_file(&dir.join(&name))?;
        }
    }
    Ok(())
}

pub fn read_file(path: &Path) -> Result<Vec<u8>, StorageError> {
    fs::read(path).map_err(|error| StorageError::io("read", path, error))
}
