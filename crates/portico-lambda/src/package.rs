//! `.zip` deployment packages, unpacked once into a cache keyed by their content.
//!
//! A package is unpacked into `CACHE/<sha256 of the zip>/`. The unpacking goes to a
//! temporary directory next to it that is renamed into place when complete, so a crash
//! halfway never leaves a broken tree behind, and a package already unpacked is not unpacked
//! again, however many times portico starts. Lambda's limit on the unzipped size (250 MB) is
//! enforced while unpacking, so a zip bomb stops at the limit; entries that would land
//! outside the directory (`../`, absolute paths) are refused; Unix permissions (the
//! executable bit of `bootstrap`) are kept.

use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Lambda's limit on a deployment package's unzipped size.
pub const MAX_UNZIPPED_BYTES: u64 = 250 * 1024 * 1024;

/// Why a package could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// The zip file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The package.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The file is not a valid zip archive.
    #[error("{path} is not a valid zip archive: {source}")]
    Invalid {
        /// The package.
        path: PathBuf,
        /// What the zip reader said.
        source: zip::result::ZipError,
    },
    /// An entry's name would put it outside the code directory.
    #[error("{path}: entry {entry:?} would be written outside the code directory")]
    UnsafeEntry {
        /// The package.
        path: PathBuf,
        /// The entry's name.
        entry: String,
    },
    /// Unzipped, the package is over Lambda's limit.
    #[error("{path}: unzipped size is over Lambda's limit of {limit} bytes")]
    TooLarge {
        /// The package.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// The cache directory is not portico's alone: code in it could have been planted.
    #[error(
        "{dir}: {why}; the code cache must be portico's own (owned by its user, writable by no one else)"
    )]
    UnsafeCache {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The cache directory could not be written.
    #[error("cannot unpack into {dir}: {source}")]
    Cache {
        /// Where the package was being unpacked.
        dir: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
}

/// What Lambda reports of a function's code: the base64 SHA-256 of its deployment package
/// and the package's size in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint {
    /// `CodeSha256`: base64 of the SHA-256.
    pub sha256: String,
    /// `CodeSize`, in bytes.
    pub size: u64,
}

/// The fingerprint of `code`: a `.zip` package or a program, by its bytes; a directory by
/// each file's path (relative, in order) and bytes, a symbolic link by its target, so
/// that the same code gives the same fingerprint wherever it lies.
pub fn fingerprint(code: &Path) -> Result<Fingerprint, PackageError> {
    use base64::Engine as _;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let meta = fs::metadata(code).map_err(|source| PackageError::Read {
        path: code.to_owned(),
        source,
    })?;
    if meta.is_dir() {
        hash_dir(code, Path::new(""), &mut hasher, &mut size)?;
    } else {
        hash_file(code, &mut hasher, &mut size)?;
    }
    Ok(Fingerprint {
        sha256: base64::engine::general_purpose::STANDARD.encode(hasher.finalize()),
        size,
    })
}

fn hash_dir(
    root: &Path,
    relative: &Path,
    hasher: &mut Sha256,
    size: &mut u64,
) -> Result<(), PackageError> {
    let dir = root.join(relative);
    let read_err = |source| PackageError::Read {
        path: dir.clone(),
        source,
    };
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .map_err(read_err)?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    entries.sort();
    for name in entries {
        let path = relative.join(&name);
        let full = root.join(&path);
        let meta = fs::symlink_metadata(&full).map_err(|source| PackageError::Read {
            path: full.clone(),
            source,
        })?;
        hasher.update(path.as_os_str().as_encoded_bytes());
        hasher.update([0]);
        if meta.is_symlink() {
            let target = fs::read_link(&full).unwrap_or_default();
            hasher.update(b"->");
            hasher.update(target.as_os_str().as_encoded_bytes());
        } else if meta.is_dir() {
            hash_dir(root, &path, hasher, size)?;
        } else if meta.is_file() {
            hash_file(&full, hasher, size)?;
        }
    }
    Ok(())
}

fn hash_file(path: &Path, hasher: &mut Sha256, size: &mut u64) -> Result<(), PackageError> {
    let read_err = |source| PackageError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
        *size += n as u64;
    }
}

/// Unpacks the zip at `package` into `cache` (once) and returns the directory holding its
/// files.
pub fn unpack(package: &Path, cache: &Path) -> Result<PathBuf, PackageError> {
    unpack_limited(package, cache, MAX_UNZIPPED_BYTES)
}

fn unpack_limited(package: &Path, cache: &Path, limit: u64) -> Result<PathBuf, PackageError> {
    let read_err = |source| PackageError::Read {
        path: package.to_owned(),
        source,
    };
    let digest = {
        let mut file = File::open(package).map_err(read_err)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).map_err(read_err)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        hasher.finalize()
    };
    let key: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let cache_err = |dir: &Path| {
        let dir = dir.to_owned();
        move |source| PackageError::Cache { dir, source }
    };
    private_dir(cache)?;
    let target = cache.join(&key);
    // What the tree looked like when it was unpacked: a tree changed since (by a function
    // writing into its own code, or by hand) is unpacked again.
    let tree = cache.join(format!("{key}.tree"));
    if target.is_dir() {
        let recorded = fs::read_to_string(&tree).unwrap_or_default();
        if fingerprint(&target).is_ok_and(|now| now.sha256 == recorded.trim()) {
            return Ok(target);
        }
        tracing::warn!(dir = %target.display(), "the unpacked code changed since it was unpacked: unpacking it again");
        let _ = fs::remove_dir_all(&target);
    }
    let staging = cache.join(format!(".{key}.{}.partial", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir(&staging).map_err(cache_err(&staging))?;
    let extracted = extract(package, &staging, limit);
    if let Err(error) = extracted {
        let _ = fs::remove_dir_all(&staging);
        return Err(error);
    }
    let recorded = fingerprint(&staging)?;
    fs::write(&tree, &recorded.sha256).map_err(cache_err(&tree))?;
    rename_into_place(&staging, &target).map(|()| target)
}

/// Moves a complete `staging` tree of the cache to `target`. Another portico that put the
/// same content there first wins: theirs is as good as ours, and `staging` goes.
pub(crate) fn rename_into_place(staging: &Path, target: &Path) -> Result<(), PackageError> {
    match fs::rename(staging, target) {
        Ok(()) => Ok(()),
        Err(_) if target.is_dir() => {
            let _ = fs::remove_dir_all(staging);
            Ok(())
        }
        Err(source) => {
            let _ = fs::remove_dir_all(staging);
            Err(PackageError::Cache {
                dir: target.to_owned(),
                source,
            })
        }
    }
}

fn extract(package: &Path, into: &Path, limit: u64) -> Result<(), PackageError> {
    let file = File::open(package).map_err(|source| PackageError::Read {
        path: package.to_owned(),
        source,
    })?;
    let invalid = |source| PackageError::Invalid {
        path: package.to_owned(),
        source,
    };
    let mut archive = zip::ZipArchive::new(file).map_err(invalid)?;
    let mut written: u64 = 0;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(invalid)?;
        let unsafe_entry = |entry: &zip::read::ZipFile<'_, File>| PackageError::UnsafeEntry {
            path: package.to_owned(),
            entry: entry.name().to_owned(),
        };
        let Some(relative) = entry.enclosed_name() else {
            return Err(unsafe_entry(&entry));
        };
        if entry.is_symlink() {
            return Err(unsafe_entry(&entry));
        }
        let dest = into.join(relative);
        let cache_err = |source| PackageError::Cache {
            dir: dest.clone(),
            source,
        };
        if entry.is_dir() {
            fs::create_dir_all(&dest).map_err(cache_err)?;
            continue;
        }
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(cache_err)?;
        }
        let mut out = File::create(&dest).map_err(cache_err)?;
        // One byte more than the budget left tells an entry over the limit from one at it.
        let budget = limit - written;
        let copied =
            io::copy(&mut (&mut entry).take(budget + 1), &mut out).map_err(|e| match e.kind() {
                io::ErrorKind::InvalidData => invalid(zip::result::ZipError::Io(e)),
                _ => cache_err(e),
            })?;
        if copied > budget {
            return Err(PackageError::TooLarge {
                path: package.to_owned(),
                limit,
            });
        }
        written += copied;
        if let Some(mode) = entry.unix_mode() {
            fs::set_permissions(&dest, fs::Permissions::from_mode(mode & 0o777))
                .map_err(cache_err)?;
        }
    }
    Ok(())
}

/// Where packages are unpacked: `$XDG_CACHE_HOME/portico/code`, `~/.cache/portico/code`, or
/// the temporary directory when neither is set.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".cache"))
        })
        .map(|base| base.join("portico"))
        // No home: a directory of this user's own in the shared temporary directory (which
        // `private_dir` checks before anything is unpacked there).
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("portico-{}", rustix::process::geteuid().as_raw()))
        })
        .join("code")
}

/// Makes `dir` (and its parent, portico's) if need be, readable by portico's user only,
/// and refuses one that another user owns or may write to.
pub(crate) fn private_dir(dir: &Path) -> Result<(), PackageError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let unsafe_cache = |dir: &Path, why: String| PackageError::UnsafeCache {
        dir: dir.to_owned(),
        why,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PackageError::Cache {
            dir: dir.to_owned(),
            source,
        })?;
    let me = rustix::process::geteuid().as_raw();
    for checked in [Some(dir), dir.parent()].into_iter().flatten() {
        let meta = fs::symlink_metadata(checked).map_err(|source| PackageError::Cache {
            dir: checked.to_owned(),
            source,
        })?;
        if meta.file_type().is_symlink() {
            return Err(unsafe_cache(checked, "a symbolic link".into()));
        }
        if meta.uid() != me {
            return Err(unsafe_cache(
                checked,
                format!("owned by user {}", meta.uid()),
            ));
        }
        if meta.mode() & 0o022 != 0 {
            // portico's own directory, made by an older portico or under a loose umask:
            // closed to others, and what it holds is checked before use.
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(checked, fs::Permissions::from_mode(0o700)).map_err(|e| {
                unsafe_cache(
                    checked,
                    format!(
                        "writable by others (mode {:o}) and cannot be closed: {e}",
                        meta.mode() & 0o777
                    ),
                )
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    /// A scratch directory for a test, removed on drop; shared by the crate's unit tests.
    pub(crate) struct Dir(pub(crate) PathBuf);
    impl Dir {
        pub(crate) fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "portico-{tag}-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ));
            fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn zip_of(path: &Path, entries: &[(&str, &[u8], u32)]) {
        let mut w = zip::ZipWriter::new(File::create(path).unwrap());
        for (name, data, mode) in entries {
            let opts = SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored)
                .unix_permissions(*mode);
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn a_fingerprint_is_the_code_s_sha256_and_size() {
        use base64::Engine as _;
        let d = Dir::new("fingerprint");
        let zip = d.0.join("fn.zip");
        zip_of(&zip, &[("bootstrap", b"#!/bin/sh\n", 0o755)]);
        let bytes = fs::read(&zip).unwrap();
        let expected = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&bytes));
        let print = fingerprint(&zip).unwrap();
        assert_eq!(print.sha256, expected);
        assert_eq!(print.size, bytes.len() as u64);
        // A directory: the same files give the same print wherever they are; a change of
        // content or name changes it.
        let one = Dir::new("fp-one");
        let two = Dir::new("fp-two");
        for dir in [&one, &two] {
            fs::create_dir_all(dir.0.join("lib")).unwrap();
            fs::write(dir.0.join("app.py"), "x = 1\n").unwrap();
            fs::write(dir.0.join("lib/util.py"), "y = 2\n").unwrap();
        }
        let first = fingerprint(&one.0).unwrap();
        assert_eq!(first, fingerprint(&two.0).unwrap());
        assert_eq!(first.size, 12);
        fs::write(two.0.join("lib/util.py"), "y = 3\n").unwrap();
        assert_ne!(first.sha256, fingerprint(&two.0).unwrap().sha256);
        assert!(fingerprint(&one.0.join("missing")).is_err());
    }

    #[test]
    fn unpacks_once_keeps_modes_and_reuses_the_cache() {
        let d = Dir::new("ok");
        let zip = d.0.join("fn.zip");
        zip_of(
            &zip,
            &[
                ("bootstrap", b"#!/bin/sh\n", 0o755),
                ("lib/data.txt", b"data", 0o644),
            ],
        );
        let cache = d.0.join("cache");
        let dir = unpack(&zip, &cache).unwrap();
        let mode = fs::metadata(dir.join("bootstrap"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(fs::read(dir.join("lib/data.txt")).unwrap(), b"data");
        // Same content, same directory; nothing is unpacked again.
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let before = inode(&dir);
        assert_eq!(unpack(&zip, &cache).unwrap(), dir);
        assert_eq!(inode(&dir), before);
        // A tree changed since (a function writing into its code, a planted file) is
        // unpacked again.
        fs::write(dir.join("lib/data.txt"), b"planted").unwrap();
        fs::write(dir.join("extra"), b"").unwrap();
        assert_eq!(unpack(&zip, &cache).unwrap(), dir);
        assert_eq!(fs::read(dir.join("lib/data.txt")).unwrap(), b"data");
        assert!(!dir.join("extra").exists());
        // The cache is private; no staging directory is left behind (the tree and its
        // record).
        let mode = fs::metadata(&cache).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let entries: Vec<_> = fs::read_dir(&cache).unwrap().collect();
        assert_eq!(entries.len(), 2);
    }

    #[test]
    fn a_cache_another_user_owns_is_refused_and_an_open_one_of_ours_is_closed() {
        let d = Dir::new("shared");
        let zip = d.0.join("fn.zip");
        zip_of(&zip, &[("bootstrap", b"#!/bin/sh\n", 0o755)]);
        // Ours, but open to everyone: closed, then used.
        let cache = d.0.join("open");
        fs::create_dir_all(&cache).unwrap();
        fs::set_permissions(&cache, fs::Permissions::from_mode(0o777)).unwrap();
        unpack(&zip, &cache).unwrap();
        let mode = fs::metadata(&cache).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Another user's (tests run as root, which can give it away): refused.
        if rustix::process::geteuid().is_root() {
            let theirs = d.0.join("theirs");
            fs::create_dir_all(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let err = unpack(&zip, &theirs).unwrap_err();
            assert!(matches!(err, PackageError::UnsafeCache { .. }), "{err}");
            assert!(err.to_string().contains("owned by user 65534"), "{err}");
        }
    }

    #[test]
    fn bad_packages_are_refused_and_leave_nothing() {
        let d = Dir::new("bad");
        let cache = d.0.join("cache");

        let garbage = d.0.join("garbage.zip");
        fs::write(&garbage, b"this is not a zip file").unwrap();
        assert!(matches!(
            unpack(&garbage, &cache),
            Err(PackageError::Invalid { .. })
        ));

        let missing = d.0.join("missing.zip");
        assert!(matches!(
            unpack(&missing, &cache),
            Err(PackageError::Read { .. })
        ));

        let escape = d.0.join("escape.zip");
        zip_of(&escape, &[("../evil", b"x", 0o644)]);
        let err = unpack(&escape, &cache).unwrap_err();
        assert!(
            matches!(&err, PackageError::UnsafeEntry { entry, .. } if entry == "../evil"),
            "{err}"
        );
        assert!(!d.0.join("evil").exists());

        let big = d.0.join("big.zip");
        zip_of(
            &big,
            &[("a", &[0u8; 600], 0o644), ("b", &[0u8; 600], 0o644)],
        );
        let err = unpack_limited(&big, &cache, 1000).unwrap_err();
        assert!(
            matches!(err, PackageError::TooLarge { limit: 1000, .. }),
            "{err}"
        );
        // At the limit exactly is fine.
        let at = d.0.join("at.zip");
        zip_of(&at, &[("a", &[0u8; 500], 0o644), ("b", &[0u8; 500], 0o644)]);
        unpack_limited(&at, &cache, 1000).unwrap();

        let mut left: Vec<_> = fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        // The one good package's tree and its record; nothing of the refused ones.
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(!left[0].starts_with('.'));
        assert_eq!(left[1], format!("{}.tree", left[0]));
    }
}
