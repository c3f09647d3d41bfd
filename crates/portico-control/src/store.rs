//! Where the changes made through the APIs are kept, so that they outlive a restart: behind
//! [`Store`], so that a shared store can take the place of the directory beside the
//! configuration file ([`DirStore`]) that a single node keeps.

use crate::overlay::Overlay;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The recorded changes could not be read back.
    #[error(
        "{path}: not a record of changes ({reason}); move it aside to start from the file alone"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Keeps the changes, and the code packages they name.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The changes recorded (none when nothing was ever recorded).
    fn load(&self) -> Result<Overlay, StoreError>;
    /// Records `overlay` in place of what was there, durably, at once (a crash leaves the
    /// old record or the new, never a mix); packages it no longer names may go.
    fn save(&self, overlay: &Overlay) -> Result<(), StoreError>;
    /// Keeps a code package (a zip file's bytes) and says where it is; the same bytes give
    /// the same path.
    fn put_package(&self, bytes: &[u8]) -> Result<PathBuf, StoreError>;
    /// Keeps a copy of the directory `dir` (a function's code, published as a version,
    /// which must not change with the directory) and says where it is; the same contents
    /// give the same path.
    fn put_tree(&self, dir: &Path) -> Result<PathBuf, StoreError>;
    /// Where it is, for logs and `portico status`.
    fn describe(&self) -> String;
}

/// A failed `what` on `path`, for `map_err`.
pub(crate) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io { what, path, source }
}

/// The record's format version.
const VERSION: u32 = 1;

/// The record as written.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    version: u32,
    #[serde(flatten)]
    overlay: Overlay,
}

/// A directory beside the configuration file: `changes.json` (the record) and `packages/`
/// (code uploaded through the APIs, by content).
#[derive(Debug)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    /// The store of the configuration file `config`: `NAME.state/` beside `NAME.toml`.
    pub fn beside(config: &Path) -> Self {
        let stem = config
            .file_stem()
            .map_or_else(|| "portico".into(), |s| s.to_string_lossy());
        Self::at(&config.with_file_name(format!("{stem}.state")))
    }

    /// The store in `dir` (made when first written).
    pub fn at(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    fn record(&self) -> PathBuf {
        self.dir.join("changes.json")
    }

    fn packages(&self) -> PathBuf {
        self.dir.join("packages")
    }

    /// Writes `bytes` to `path` through a temporary file, synced, renamed into place, and
    /// the directory synced.
    fn write_durably(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let dir = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(dir).map_err(io("making", dir))?;
        let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
        let mut file = std::fs::File::create(&temporary).map_err(io("writing", &temporary))?;
        file.write_all(bytes).map_err(io("writing", &temporary))?;
        file.sync_all().map_err(io("syncing", &temporary))?;
        std::fs::rename(&temporary, path).map_err(io("renaming into", path))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing", dir))
    }
}

impl Store for DirStore {
    fn load(&self) -> Result<Overlay, StoreError> {
        let path = self.record();
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Overlay::default()),
            Err(source) => return Err(io("reading", &path)(source)),
        };
        let record: Record = serde_json::from_slice(&text).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if record.version != VERSION {
            return Err(StoreError::Corrupt {
                path,
                reason: format!(
                    "format version {}, this portico reads {VERSION}",
                    record.version
                ),
            });
        }
        Ok(record.overlay)
    }

    fn save(&self, overlay: &Overlay) -> Result<(), StoreError> {
        let record = Record {
            version: VERSION,
            overlay: overlay.clone(),
        };
        let text = serde_json::to_vec_pretty(&record).map_err(|e| StoreError::Corrupt {
            path: self.record(),
            reason: e.to_string(),
        })?;
        self.write_durably(&self.record(), &text)?;
        // Packages no change names any more go.
        let named: std::collections::HashSet<&str> = overlay.strings().into_iter().collect();
        if let Ok(entries) = std::fs::read_dir(self.packages()) {
            for entry in entries.flatten() {
                let path = entry.path();
                if !path.to_str().is_some_and(|p| named.contains(p)) {
                    let _ = match path.is_dir() {
                        true => std::fs::remove_dir_all(&path),
                        false => std::fs::remove_file(&path),
                    };
                }
            }
        }
        Ok(())
    }

    fn put_package(&self, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(bytes);
        let name: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let path = self.packages().join(format!("{name}.zip"));
        if !path.is_file() {
            self.write_durably(&path, bytes)?;
        }
        Ok(path)
    }

    fn put_tree(&self, dir: &Path) -> Result<PathBuf, StoreError> {
        let files = tree::files(dir).map_err(io("reading", dir))?;
        let name = tree::digest(dir, &files).map_err(io("reading", dir))?;
        let target = self.packages().join(&name);
        if target.is_dir() {
            return Ok(target);
        }
        // Copied aside, then renamed into place: a copy is whole or absent.
        let partial = self
            .packages()
            .join(format!("{name}.partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&partial);
        tree::copy(dir, &files, &partial).map_err(io("copying into", &partial))?;
        std::fs::rename(&partial, &target).map_err(io("renaming into", &target))?;
        Ok(target)
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

/// Copies of directories, named by their contents.
mod tree {
    use std::path::{Path, PathBuf};

    /// Lambda's limit on code unzipped: what a copy may hold.
    const MAX_BYTES: u64 = 250 * 1024 * 1024;

    /// The files and links under `dir`, relative, sorted.
    pub(super) fn files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut total = 0u64;
        let mut stack = vec![PathBuf::new()];
        while let Some(relative) = stack.pop() {
            for entry in std::fs::read_dir(dir.join(&relative))? {
                let entry = entry?;
                let path = relative.join(entry.file_name());
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    stack.push(path.clone());
                } else {
                    total += entry.metadata()?.len();
                }
                out.push(path);
            }
        }
        if total > MAX_BYTES {
            return Err(std::io::Error::other(format!(
                "{total} bytes, over Lambda's limit of {MAX_BYTES} for code unzipped"
            )));
        }
        out.sort();
        Ok(out)
    }

    /// A name for the contents of `files` under `dir`: the hex SHA-256 of each one's path,
    /// kind and bytes (a link's target).
    pub(super) fn digest(dir: &Path, files: &[PathBuf]) -> std::io::Result<String> {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for relative in files {
            let path = dir.join(relative);
            let kind = std::fs::symlink_metadata(&path)?.file_type();
            hasher.update(relative.as_os_str().as_encoded_bytes());
            if kind.is_symlink() {
                hasher.update(b"\0link\0");
                hasher.update(std::fs::read_link(&path)?.as_os_str().as_encoded_bytes());
            } else if kind.is_dir() {
                hasher.update(b"\0dir\0");
            } else {
                hasher.update(b"\0file\0");
                hasher.update(std::fs::read(&path)?);
            }
            hasher.update([0]);
        }
        Ok(hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }

    /// Copies `files` of `dir` into `target`, with their permissions.
    pub(super) fn copy(dir: &Path, files: &[PathBuf], target: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(target)?;
        for relative in files {
            let (from, to) = (dir.join(relative), target.join(relative));
            let kind = std::fs::symlink_metadata(&from)?.file_type();
            if kind.is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
            } else if kind.is_dir() {
                std::fs::create_dir_all(&to)?;
            } else {
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::copy(&from, &to)?;
            }
        }
        Ok(())
    }
}

/// Changes kept in memory only (the embedded demo configuration, which has no file): they
/// last until portico stops.
#[derive(Debug, Default)]
pub struct MemoryStore {
    overlay: std::sync::Mutex<Overlay>,
    packages: PathBuf,
}

impl MemoryStore {
    /// Packages go to `packages` (a directory that is not kept).
    pub fn new(packages: &Path) -> Self {
        Self {
            overlay: Default::default(),
            packages: packages.to_owned(),
        }
    }
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Overlay, StoreError> {
        Ok(self
            .overlay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone())
    }

    fn save(&self, overlay: &Overlay) -> Result<(), StoreError> {
        *self
            .overlay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = overlay.clone();
        Ok(())
    }

    fn put_package(&self, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        DirStore::at(&self.packages).put_package(bytes)
    }

    fn put_tree(&self, dir: &Path) -> Result<PathBuf, StoreError> {
        DirStore::at(&self.packages).put_tree(dir)
    }

    fn describe(&self) -> String {
        "memory (not kept)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::Edit;

    fn dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("portico-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn changes_and_packages_outlive_the_store_and_unnamed_packages_go() {
        let dir = dir("round");
        let store = DirStore::at(&dir);
        assert_eq!(store.load().unwrap(), Overlay::default());
        let first = store.put_package(b"PK first").unwrap();
        let second = store.put_package(b"PK second").unwrap();
        assert_eq!(store.put_package(b"PK first").unwrap(), first);
        let mut overlay = Overlay::default();
        overlay.push(Edit::set(
            &["functions", "a", "code"],
            first.display().to_string(),
        ));
        store.save(&overlay).unwrap();
        // Read back by another store of the same directory (a restart).
        assert_eq!(DirStore::at(&dir).load().unwrap(), overlay);
        assert!(first.is_file());
        assert!(!second.exists(), "a package no change names is removed");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_record_is_refused_with_what_to_do() {
        let dir = dir("bad");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("changes.json"), "{not json").unwrap();
        let error = DirStore::at(&dir).load().unwrap_err().to_string();
        assert!(error.contains("move it aside"), "{error}");
        std::fs::write(dir.join("changes.json"), r#"{"version": 99, "edits": []}"#).unwrap();
        let error = DirStore::at(&dir).load().unwrap_err().to_string();
        assert!(error.contains("format version 99"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_store_of_a_file_is_beside_it() {
        let store = DirStore::beside(Path::new("/etc/portico/edge.toml"));
        assert_eq!(store.describe(), "/etc/portico/edge.state");
    }
}
