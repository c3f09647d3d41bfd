//! Layers: up to five `.zip` files or directories, merged in order into one directory that a
//! sandbox shows at `/opt` (Lambda extracts a function's layers there, a later layer's files
//! over an earlier one's).
//!
//! The merge is made once, in the code cache, under a name keyed by the layers' contents, and
//! reused by every start until a layer changes. Lambda's limit on the unzipped size of a
//! function's code and layers together (250 MB) holds.

use crate::package::{self, MAX_UNZIPPED_BYTES, PackageError};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};

/// Merges `layers` (zip files or directories, in order) into one directory in `cache`;
/// `code` is the function's code directory, whose size counts against the limit with them.
pub fn merge(
    layers: &[PathBuf],
    code: Option<&Path>,
    cache: &Path,
) -> Result<PathBuf, PackageError> {
    merge_limited(layers, code, cache, MAX_UNZIPPED_BYTES)
}

fn merge_limited(
    layers: &[PathBuf],
    code: Option<&Path>,
    cache: &Path,
    limit: u64,
) -> Result<PathBuf, PackageError> {
    let mut trees = Vec::with_capacity(layers.len());
    let mut total = match code {
        Some(code) => package::fingerprint(code)?.size,
        None => 0,
    };
    let mut key = Sha256::new();
    for layer in layers {
        let tree = if layer.is_dir() {
            layer.clone()
        } else {
            package::unpack(layer, cache)?
        };
        let print = package::fingerprint(&tree)?;
        total += print.size;
        if total > limit {
            return Err(PackageError::TooLarge {
                path: layer.clone(),
                limit,
            });
        }
        key.update(print.sha256.as_bytes());
        key.update([0]);
        trees.push(tree);
    }
    let key: String = key.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let target = cache.join(format!("layers-{key}"));
    if target.is_dir() {
        return Ok(target);
    }
    let staging = cache.join(format!(".layers-{key}.{}.partial", std::process::id()));
    let cache_err = |dir: &Path| {
        let dir = dir.to_owned();
        move |source| PackageError::Cache { dir, source }
    };
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).map_err(cache_err(&staging))?;
    for tree in &trees {
        if let Err(error) = overlay(tree, &staging) {
            let _ = fs::remove_dir_all(&staging);
            return Err(error);
        }
    }
    package::rename_into_place(&staging, &target).map(|()| target)
}

/// Copies the tree `from` over `into`: a file replaces what was at its path, a directory is
/// merged with one already there; links are copied as links, permissions kept.
fn overlay(from: &Path, into: &Path) -> Result<(), PackageError> {
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| PackageError::Read { path, source }
    };
    let cache_err = |dir: &Path| {
        let dir = dir.to_owned();
        move |source| PackageError::Cache { dir, source }
    };
    for entry in fs::read_dir(from).map_err(read_err(from))? {
        let entry = entry.map_err(read_err(from))?;
        let source = entry.path();
        let dest = into.join(entry.file_name());
        let kind = entry.file_type().map_err(read_err(&source))?;
        let existing = fs::symlink_metadata(&dest).ok();
        if kind.is_dir() {
            if existing.as_ref().is_some_and(|m| !m.is_dir()) {
                fs::remove_file(&dest).map_err(cache_err(&dest))?;
            }
            fs::create_dir_all(&dest).map_err(cache_err(&dest))?;
            let mode = entry.metadata().map_err(read_err(&source))?.permissions();
            fs::set_permissions(&dest, mode).map_err(cache_err(&dest))?;
            overlay(&source, &dest)?;
            continue;
        }
        match existing {
            Some(m) if m.is_dir() => fs::remove_dir_all(&dest).map_err(cache_err(&dest))?,
            Some(_) => fs::remove_file(&dest).map_err(cache_err(&dest))?,
            None => {}
        }
        if kind.is_symlink() {
            let target = fs::read_link(&source).map_err(read_err(&source))?;
            std::os::unix::fs::symlink(target, &dest).map_err(cache_err(&dest))?;
        } else if kind.is_file() {
            fs::copy(&source, &dest).map_err(cache_err(&dest))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zip(path: &Path, files: &[(&str, &str)]) {
        let file = fs::File::create(path).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        for (name, body) in files {
            zip.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            zip.write_all(body.as_bytes()).unwrap();
        }
        zip.finish().unwrap();
    }

    #[test]
    fn layers_merge_in_order_a_later_one_winning() {
        let scratch = crate::package::tests::Dir::new("layers-merge");
        let dir = &scratch.0;
        let one = dir.join("one.zip");
        zip(
            &one,
            &[
                ("python/a.py", "one"),
                ("lib/x", "one"),
                ("bin/tool", "one"),
            ],
        );
        let two = dir.join("two");
        fs::create_dir_all(two.join("python")).unwrap();
        fs::write(two.join("python/a.py"), "two").unwrap();
        fs::write(two.join("lib"), "a file where a directory was").unwrap();
        let cache = dir.join("cache");
        let merged = merge(&[one.clone(), two.clone()], None, &cache).unwrap();
        assert_eq!(
            fs::read_to_string(merged.join("python/a.py")).unwrap(),
            "two"
        );
        assert_eq!(fs::read_to_string(merged.join("bin/tool")).unwrap(), "one");
        assert!(merged.join("lib").is_file());
        // Once merged, the same layers give the same directory.
        assert_eq!(
            merge(&[one.clone(), two.clone()], None, &cache).unwrap(),
            merged
        );
        // Another order is another merge.
        let other = merge(&[two, one], None, &cache).unwrap();
        assert_ne!(other, merged);
        assert_eq!(
            fs::read_to_string(other.join("python/a.py")).unwrap(),
            "one"
        );
    }

    #[test]
    fn code_and_layers_together_stay_within_lambda_s_limit() {
        let scratch = crate::package::tests::Dir::new("layers-limit");
        let dir = &scratch.0;
        let code = dir.join("code");
        fs::create_dir_all(&code).unwrap();
        fs::write(code.join("ninety"), [0u8; 90]).unwrap();
        let layer = dir.join("layer");
        fs::create_dir_all(&layer).unwrap();
        fs::write(layer.join("ten"), [1u8; 10]).unwrap();
        let cache = dir.join("cache");
        // At the limit (here 100 bytes) is fine; one byte over is not.
        merge_limited(std::slice::from_ref(&layer), Some(&code), &cache, 100).unwrap();
        fs::write(layer.join("one"), [2u8; 1]).unwrap();
        let error =
            merge_limited(std::slice::from_ref(&layer), Some(&code), &cache, 100).unwrap_err();
        assert!(
            matches!(error, PackageError::TooLarge { ref path, .. } if *path == layer),
            "{error}"
        );
    }
}
