//! Container image functions: an OCI image layout (a directory, or a tar of one, as `skopeo
//! copy`, `buildah push` or `docker save` write them; Docker's own `manifest.json` archives
//! too), unpacked once into the code cache as the root filesystem of the function's
//! sandboxes, with its configuration's `Entrypoint`, `Cmd`, `WorkingDir` and `Env`.
//!
//! The layers are applied in order, with OCI's whiteouts (`.wh.NAME` removes `NAME`,
//! `.wh..wh..opq` empties the directory it is in). Every path is resolved inside the root
//! being built (`openat2` with `RESOLVE_IN_ROOT`), so a layer's symbolic link can never make
//! a later entry land outside it. The root is keyed by the image's configuration digest and
//! renamed into place when complete, as code packages are. Lambda's limit on an image's
//! uncompressed size (10 GB) holds.

use crate::package::PackageError;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Lambda's limit on an image's uncompressed size.
pub const MAX_IMAGE_BYTES: u64 = 10 * 1024 * 1024 * 1024;

/// An image unpacked and its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The root filesystem.
    pub rootfs: PathBuf,
    /// The image's identity: its configuration's SHA-256, hex.
    pub digest: String,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `WorkingDir` (empty when unset).
    pub working_dir: String,
    /// `Env`, as `NAME=value` pairs split.
    pub env: Vec<(String, String)>,
}

/// Why an image could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file of the image could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The image's layout or documents are not what OCI (or Docker) write.
    #[error("{path}: {why}")]
    Invalid {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A layer's entry names a path outside the root, or a type portico does not unpack.
    #[error("{path}: layer entry {entry:?}: {why}")]
    Entry {
        /// The image.
        path: PathBuf,
        /// The entry.
        entry: String,
        /// What is wrong.
        why: String,
    },
    /// Unpacked, the image is over Lambda's limit.
    #[error("{path}: unpacked size is over Lambda's limit of {limit} bytes")]
    TooLarge {
        /// The image.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// The cache could not be written.
    #[error(transparent)]
    Cache(#[from] PackageError),
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize, Clone)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    /// An index's entries, when the index points at another index.
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ContainerConfig>,
}

#[derive(Deserialize, Default)]
struct ContainerConfig {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
}

/// A layer to apply: its file, and whether it is gzip-compressed.
struct Layer {
    file: PathBuf,
    gzip: bool,
}

/// Unpacks the image at `path` (a layout directory or a tar of one) into `cache`, once.
pub fn unpack(path: &Path, cache: &Path) -> Result<Image, ImageError> {
    unpack_limited(path, cache, MAX_IMAGE_BYTES)
}

fn unpack_limited(path: &Path, cache: &Path, limit: u64) -> Result<Image, ImageError> {
    let invalid = |why: String| ImageError::Invalid {
        path: path.to_owned(),
        why,
    };
    crate::package::private_dir(cache)?;
    let layout = if path.is_dir() {
        path.to_owned()
    } else {
        // A tar of a layout: unpacked once, by its content.
        let digest = file_digest(path)?;
        let dir = cache.join(format!("image-archive-{digest}"));
        if !dir.is_dir() {
            let staging = partial(cache, &dir);
            let result = File::open(path)
                .map_err(|source| ImageError::Read {
                    path: path.to_owned(),
                    source,
                })
                .and_then(|f| apply_layer(path, f, &staging, &mut 0, limit));
            finish(result, &staging, &dir)?;
        }
        dir
    };
    let (config_digest, config, layers) = if layout.join("index.json").is_file() {
        oci(path, &layout)?
    } else if layout.join("manifest.json").is_file() {
        docker(path, &layout)?
    } else {
        return Err(invalid(
            "neither an OCI image layout (index.json) nor a Docker archive (manifest.json)".into(),
        ));
    };
    let container = config.config.unwrap_or_default();
    let key = config_digest.trim_start_matches("sha256:").to_owned();
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(format!("configuration digest {config_digest:?}")));
    }
    let rootfs = cache.join(format!("image-{key}"));
    let key = key.to_ascii_lowercase();
    if !rootfs.is_dir() {
        let staging = partial(cache, &rootfs);
        let mut written = 0;
        let mut result = Ok(());
        for layer in &layers {
            result = File::open(&layer.file)
                .map_err(|source| ImageError::Read {
                    path: layer.file.clone(),
                    source,
                })
                .and_then(|file| {
                    if layer.gzip {
                        apply_layer(
                            path,
                            flate2::read::GzDecoder::new(file),
                            &staging,
                            &mut written,
                            limit,
                        )
                    } else {
                        apply_layer(path, file, &staging, &mut written, limit)
                    }
                });
            if result.is_err() {
                break;
            }
        }
        // What the sandbox mounts over, and the host's name resolution.
        let result = result.and_then(|()| {
            for dir in [
                "proc",
                "dev",
                "tmp",
                "var/task",
                "var/runtime",
                "opt",
                "etc",
            ] {
                make_dir(path, &staging, dir)?;
            }
            for file in ["etc/resolv.conf", "etc/hosts"] {
                let target = staging.join(file);
                if fs::symlink_metadata(&target).is_err() {
                    let _ = File::create(&target);
                }
            }
            Ok(())
        });
        finish(result, &staging, &rootfs)?;
    }
    let env = container
        .env
        .unwrap_or_default()
        .into_iter()
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name.to_owned(), value.to_owned()))
        })
        .collect();
    Ok(Image {
        rootfs,
        digest: key,
        entrypoint: container.entrypoint.unwrap_or_default(),
        cmd: container.cmd.unwrap_or_default(),
        working_dir: container.working_dir.unwrap_or_default(),
        env,
    })
}

/// An OCI layout: `index.json` → manifest (through nested indexes, the first linux/amd64
/// or only entry) → configuration and layers.
fn oci(path: &Path, layout: &Path) -> Result<(String, ConfigFile, Vec<Layer>), ImageError> {
    let invalid = |why: String| ImageError::Invalid {
        path: path.to_owned(),
        why,
    };
    let index: Index = read_json(&layout.join("index.json"))?;
    let mut descriptor = index
        .manifests
        .first()
        .cloned()
        .ok_or_else(|| invalid("index.json lists no manifest".into()))?;
    for _ in 0..4 {
        let manifest: Manifest = read_json(&blob(path, layout, &descriptor.digest)?)?;
        if manifest.media_type.ends_with("image.index.v1+json")
            || descriptor.media_type.ends_with("image.index.v1+json")
            || (manifest.config.is_none() && !manifest.manifests.is_empty())
        {
            descriptor = manifest
                .manifests
                .first()
                .cloned()
                .ok_or_else(|| invalid("an image index lists no manifest".into()))?;
            continue;
        }
        let config = manifest
            .config
            .ok_or_else(|| invalid("the manifest has no config".into()))?;
        let config_file: ConfigFile = read_json(&blob(path, layout, &config.digest)?)?;
        let layers = manifest
            .layers
            .iter()
            .map(|l| {
                let gzip = if l.media_type.ends_with("+gzip") || l.media_type.ends_with(".gzip") {
                    true
                } else if l.media_type.ends_with(".tar") || l.media_type.ends_with("tar") {
                    false
                } else {
                    return Err(invalid(format!(
                        "layer {} has media type {:?}: only tar and tar+gzip layers are unpacked",
                        l.digest, l.media_type
                    )));
                };
                Ok(Layer {
                    file: blob(path, layout, &l.digest)?,
                    gzip,
                })
            })
            .collect::<Result<_, _>>()?;
        return Ok((config.digest, config_file, layers));
    }
    Err(invalid("image indexes nested too deep".into()))
}

/// A Docker archive: `manifest.json` → configuration and layer files (gzip or not, told by
/// their first bytes).
fn docker(path: &Path, layout: &Path) -> Result<(String, ConfigFile, Vec<Layer>), ImageError> {
    let entries: Vec<DockerEntry> = read_json(&layout.join("manifest.json"))?;
    let entry = entries
        .into_iter()
        .next()
        .ok_or_else(|| ImageError::Invalid {
            path: path.to_owned(),
            why: "manifest.json lists no image".into(),
        })?;
    let config_path = inside(path, layout, &entry.config)?;
    let config: ConfigFile = read_json(&config_path)?;
    let digest = format!("sha256:{}", file_digest(&config_path)?);
    let layers = entry
        .layers
        .iter()
        .map(|l| {
            let file = inside(path, layout, l)?;
            let mut magic = [0u8; 2];
            let gzip = File::open(&file)
                .and_then(|mut f| f.read_exact(&mut magic))
                .is_ok()
                && magic == [0x1f, 0x8b];
            Ok(Layer { file, gzip })
        })
        .collect::<Result<_, ImageError>>()?;
    Ok((digest, config, layers))
}

/// The blob `digest` of the layout.
fn blob(path: &Path, layout: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let Some(hex) = digest.strip_prefix("sha256:") else {
        return Err(ImageError::Invalid {
            path: path.to_owned(),
            why: format!("digest {digest:?} is not sha256"),
        });
    };
    inside(path, layout, &format!("blobs/sha256/{hex}"))
}

/// `relative` in the layout, refused if it would leave it.
fn inside(path: &Path, layout: &Path, relative: &str) -> Result<PathBuf, ImageError> {
    let clean = Path::new(relative)
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    if !clean {
        return Err(ImageError::Invalid {
            path: path.to_owned(),
            why: format!("{relative:?} is not a path inside the image"),
        });
    }
    Ok(layout.join(relative))
}

fn read_json<T: serde::de::DeserializeOwned>(file: &Path) -> Result<T, ImageError> {
    let text = fs::read(file).map_err(|source| ImageError::Read {
        path: file.to_owned(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|e| ImageError::Invalid {
        path: file.to_owned(),
        why: e.to_string(),
    })
}

fn file_digest(path: &Path) -> Result<String, ImageError> {
    let read = |source| ImageError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(read)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn partial(cache: &Path, target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = cache.join(format!(".{name}.{}.partial", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    let _ = fs::create_dir_all(&staging);
    let _ = fs::set_permissions(&staging, fs::Permissions::from_mode(0o755));
    staging
}

/// Renames a complete `staging` into place, or removes it.
fn finish(result: Result<(), ImageError>, staging: &Path, target: &Path) -> Result<(), ImageError> {
    if let Err(error) = result {
        let _ = fs::remove_dir_all(staging);
        return Err(error);
    }
    Ok(crate::package::rename_into_place(staging, target)?)
}

/// Applies one layer (a tar stream) onto `root`, counting what it writes in `written`.
fn apply_layer(
    image: &Path,
    reader: impl Read,
    root: &Path,
    written: &mut u64,
    limit: u64,
) -> Result<(), ImageError> {
    let broken = |e: io::Error| ImageError::Invalid {
        path: image.to_owned(),
        why: format!("a layer is not a valid tar: {e}"),
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(broken)? {
        let mut entry = entry.map_err(broken)?;
        let name = entry.path().map_err(broken)?.into_owned();
        let shown = name.display().to_string();
        let fail = |why: String| ImageError::Entry {
            path: image.to_owned(),
            entry: shown.clone(),
            why,
        };
        // Relative to the root: a leading `/` or `./` is dropped; `..` is refused.
        let mut relative = PathBuf::new();
        for component in name.components() {
            match component {
                Component::Normal(part) => relative.push(part),
                Component::RootDir | Component::CurDir => {}
                _ => return Err(fail("a path that leaves the image's root".into())),
            }
        }
        let Some(file_name) = relative
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
        else {
            continue;
        };
        let parent_rel = relative.parent().map(Path::to_path_buf).unwrap_or_default();
        let parent = resolve_dir(root, &parent_rel).map_err(|e| fail(e.to_string()))?;
        // Whiteouts.
        if file_name == ".wh..wh..opq" {
            for child in fs::read_dir(&parent).map_err(|e| fail(e.to_string()))? {
                let child = child.map_err(|e| fail(e.to_string()))?;
                remove(&child.path()).map_err(|e| fail(e.to_string()))?;
            }
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(".wh.") {
            remove(&parent.join(hidden)).map_err(|e| fail(e.to_string()))?;
            continue;
        }
        let target = parent.join(&file_name);
        let header = entry.header().clone();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let kind = header.entry_type();
        if kind.is_dir() {
            if !fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
                remove(&target).map_err(|e| fail(e.to_string()))?;
                fs::create_dir(&target).map_err(|e| fail(e.to_string()))?;
            }
            fs::set_permissions(&target, fs::Permissions::from_mode(mode & 0o7777))
                .map_err(|e| fail(e.to_string()))?;
            continue;
        }
        remove(&target).map_err(|e| fail(e.to_string()))?;
        if kind.is_symlink() {
            let link = entry
                .link_name()
                .map_err(broken)?
                .ok_or_else(|| fail("a link without a target".into()))?;
            std::os::unix::fs::symlink(link.as_ref(), &target).map_err(|e| fail(e.to_string()))?;
        } else if kind.is_hard_link() {
            let link = entry
                .link_name()
                .map_err(broken)?
                .ok_or_else(|| fail("a link without a target".into()))?;
            let source_rel = Path::new(link.as_ref())
                .strip_prefix("/")
                .unwrap_or(Path::new(link.as_ref()))
                .to_path_buf();
            let source_parent = resolve_dir(root, source_rel.parent().unwrap_or(Path::new("")))
                .map_err(|e| fail(e.to_string()))?;
            let source = source_parent.join(source_rel.file_name().unwrap_or_default());
            fs::hard_link(&source, &target).map_err(|e| fail(e.to_string()))?;
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc_o_nofollow())
                .mode(mode)
                .open(&target)
                .map_err(|e| fail(e.to_string()))?;
            let budget = limit.saturating_sub(*written);
            let copied = io::copy(&mut (&mut entry).take(budget + 1), &mut out).map_err(broken)?;
            if copied > budget {
                return Err(ImageError::TooLarge {
                    path: image.to_owned(),
                    limit,
                });
            }
            *written += copied;
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                .map_err(|e| fail(e.to_string()))?;
        }
        // Devices, FIFOs and the like are not unpacked: a sandbox has its own /dev.
    }
    Ok(())
}

/// `O_NOFOLLOW`: a file is never created through a link at its own name.
fn libc_o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// The host path of directory `relative` in `root`, every link on the way resolved inside
/// `root` (`RESOLVE_IN_ROOT`), the directories made as need be.
fn resolve_dir(root: &Path, relative: &Path) -> io::Result<PathBuf> {
    use rustix::fs::{Mode, OFlags, ResolveFlags, openat2};
    let root_fd = File::open(root)?;
    let mut done = PathBuf::new();
    for component in relative.components() {
        done.push(component);
        let open = |p: &Path| {
            openat2(
                &root_fd,
                p,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT,
            )
        };
        if open(&done).is_err() {
            // Missing: made in its (resolved) parent.
            let parent = match done.parent() {
                Some(p) if !p.as_os_str().is_empty() => real_path(&open(p)?)?,
                _ => root.to_owned(),
            };
            let made = parent.join(done.file_name().unwrap_or_default());
            fs::create_dir(&made).or_else(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    // A dangling link or a file in the way: replaced by a directory.
                    remove(&made)?;
                    fs::create_dir(&made)
                } else {
                    Err(e)
                }
            })?;
        }
    }
    if relative.as_os_str().is_empty() {
        return Ok(root.to_owned());
    }
    let fd = openat2(
        &root_fd,
        relative,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT,
    )?;
    real_path(&fd)
}

/// Where an open directory is on the host.
fn real_path(fd: &impl std::os::fd::AsRawFd) -> io::Result<PathBuf> {
    fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Removes what is at `path` (a link itself, not its target), if anything.
fn remove(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes directory `relative` in `root` (links resolved inside it).
fn make_dir(image: &Path, root: &Path, relative: &str) -> Result<(), ImageError> {
    resolve_dir(root, Path::new(relative))
        .map(|_| ())
        .map_err(|e| ImageError::Entry {
            path: image.to_owned(),
            entry: relative.to_owned(),
            why: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::tests::Dir;

    /// A tar layer of `entries`: (path, Some(body)) files, (path, None) directories, and
    /// links given as "path -> target".
    fn layer(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, body) in entries {
            let mut header = tar::Header::new_gnu();
            if let Some((link, target)) = path.split_once(" -> ") {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                header.set_mode(0o777);
                builder.append_link(&mut header, link, target).unwrap();
                continue;
            }
            match body {
                Some(body) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(body.len() as u64);
                    header.set_mode(0o755);
                    builder
                        .append_data(&mut header, path, body.as_bytes())
                        .unwrap();
                }
                None => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    header.set_mode(0o755);
                    builder.append_data(&mut header, path, &[][..]).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    /// Writes an OCI layout of `layers` (gzip for the first) and `config` into `dir`.
    fn layout(dir: &Path, layers: &[Vec<u8>], config: &serde_json::Value) {
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        let put = |bytes: &[u8]| {
            let digest: String = Sha256::digest(bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            fs::write(blobs.join(&digest), bytes).unwrap();
            (format!("sha256:{digest}"), bytes.len())
        };
        let config = put(config.to_string().as_bytes());
        let layers: Vec<serde_json::Value> = layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let (bytes, media) = if i == 0 {
                    (gzip(l), "application/vnd.oci.image.layer.v1.tar+gzip")
                } else {
                    (l.clone(), "application/vnd.oci.image.layer.v1.tar")
                };
                let (digest, size) = put(&bytes);
                serde_json::json!({"mediaType": media, "digest": digest, "size": size})
            })
            .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
            "layers": layers,
        });
        let manifest = put(manifest.to_string().as_bytes());
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest.0, "size": manifest.1}],
        });
        fs::write(dir.join("index.json"), index.to_string()).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts_and_links_stay_inside() {
        let scratch = Dir::new("image-layers");
        let image = scratch.0.join("image");
        let first = layer(&[
            ("usr/", None),
            ("usr/lib/", None),
            // An absolute link, as merged-/usr images have: resolved inside the root.
            ("lib -> /usr/lib", None),
            ("var/task/old.txt", Some("old")),
            ("var/task/keep.txt", Some("keep")),
            ("cache/a", Some("a")),
        ]);
        let second = layer(&[
            ("lib/through-the-link.so", Some("in /usr/lib")),
            ("var/task/.wh.old.txt", Some("")),
            ("cache/.wh..wh..opq", Some("")),
            ("cache/b", Some("b")),
            ("var/task/bootstrap", Some("#!/bin/sh\n")),
        ]);
        let config = serde_json::json!({"config": {
            "Entrypoint": ["/lambda-entrypoint.sh"], "Cmd": ["app.handler"],
            "WorkingDir": "/var/task", "Env": ["PATH=/usr/bin:/bin", "FROM_IMAGE=yes"]}});
        layout(&image, &[first, second], &config);
        let unpacked = unpack(&image, &scratch.0.join("cache")).unwrap();
        let root = &unpacked.rootfs;
        assert_eq!(unpacked.entrypoint, ["/lambda-entrypoint.sh"]);
        assert_eq!(unpacked.cmd, ["app.handler"]);
        assert_eq!(unpacked.working_dir, "/var/task");
        assert!(unpacked.env.contains(&("FROM_IMAGE".into(), "yes".into())));
        assert_eq!(
            fs::read_to_string(root.join("usr/lib/through-the-link.so")).unwrap(),
            "in /usr/lib"
        );
        assert!(!Path::new("/usr/lib/through-the-link.so").exists());
        assert!(!root.join("var/task/old.txt").exists(), "whited out");
        assert!(root.join("var/task/keep.txt").exists());
        assert!(!root.join("cache/a").exists(), "an opaque directory");
        assert!(root.join("cache/b").exists());
        assert!(root.join("proc").is_dir() && root.join("tmp").is_dir());
        // Once unpacked, it is reused.
        assert_eq!(unpack(&image, &scratch.0.join("cache")).unwrap(), unpacked);
    }

    #[test]
    fn an_entry_leaving_the_root_and_an_oversized_image_are_refused() {
        let scratch = Dir::new("image-bad");
        let image = scratch.0.join("image");
        let config = serde_json::json!({"config": {}});
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // `append_data` refuses `..`; write the name in the header directly.
        header.as_old_mut().name[..12].copy_from_slice(b"../escape.sh");
        header.set_cksum();
        builder.append(&header, &b"x"[..]).unwrap();
        layout(&image, &[builder.into_inner().unwrap()], &config);
        let error = unpack(&image, &scratch.0.join("cache"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("leaves the image's root"), "{error}");

        let big = scratch.0.join("big");
        layout(
            &big,
            &[layer(&[("data", Some("0123456789"))])],
            &serde_json::json!({"config": {"Cmd": ["x"]}}),
        );
        let error = unpack_limited(&big, &scratch.0.join("cache"), 5).unwrap_err();
        assert!(matches!(error, ImageError::TooLarge { .. }), "{error}");
        let error = unpack(&scratch.0, &scratch.0.join("cache"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("neither an OCI image layout"), "{error}");
    }
}
