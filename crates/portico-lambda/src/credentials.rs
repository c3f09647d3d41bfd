//! AWS credentials for functions. Lambda hands a function its execution role's credentials
//! in `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`; portico hands
//! it those of the user running portico, as `sam local` does, so that a function calling
//! an AWS service works as it does on Lambda.
//!
//! Where they come from, first found: the function's own `profile` (an error if that
//! profile has none); portico's environment (`AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY`, with `AWS_SESSION_TOKEN` if set); the profile `AWS_PROFILE`
//! names, or `default`, in the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`,
//! default `~/.aws/credentials`, sections `[name]`) or config file (`AWS_CONFIG_FILE`,
//! default `~/.aws/config`, sections `[profile name]` and `[default]`). Only static keys
//! are read: a profile that gets its credentials otherwise (SSO, a process, a role) has
//! none here, and the function gets none.

use std::path::{Path, PathBuf};

/// A set of static AWS credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The variables a function gets.
    pub fn variables(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            ("AWS_ACCESS_KEY_ID", self.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key.clone()),
        ];
        if let Some(token) = &self.session_token {
            vars.push(("AWS_SESSION_TOKEN", token.clone()));
        }
        vars
    }
}

/// Why a function's credentials could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The function names a profile that has no static credentials.
    #[error("profile {profile:?} has no aws_access_key_id and aws_secret_access_key in {files}")]
    NoProfile {
        /// The profile.
        profile: String,
        /// The files read.
        files: String,
    },
    /// A file exists but cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The credentials a function gets, from `profile` or else the default chain, with `env`
/// standing for portico's environment. `None` when there are none anywhere.
pub fn resolve(
    profile: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Credentials>, CredentialsError> {
    let files = Files::from(env);
    if let Some(profile) = profile {
        return files
            .profile(profile)?
            .map(Some)
            .ok_or_else(|| CredentialsError::NoProfile {
                profile: profile.to_owned(),
                files: files.describe(),
            });
    }
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    if let (Some(access_key_id), Some(secret_access_key)) =
        (set("AWS_ACCESS_KEY_ID"), set("AWS_SECRET_ACCESS_KEY"))
    {
        return Ok(Some(Credentials {
            access_key_id,
            secret_access_key,
            session_token: set("AWS_SESSION_TOKEN"),
        }));
    }
    let profile = set("AWS_PROFILE").unwrap_or_else(|| "default".to_owned());
    files.profile(&profile)
}

/// The shared credentials and config files.
struct Files {
    credentials: Option<PathBuf>,
    config: Option<PathBuf>,
}

impl Files {
    fn from(env: &dyn Fn(&str) -> Option<String>) -> Self {
        let home = env("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
        let file = |var: &str, default: &str| {
            env(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
        };
        Self {
            credentials: file("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
            config: file("AWS_CONFIG_FILE", "config"),
        }
    }

    fn describe(&self) -> String {
        [&self.credentials, &self.config]
            .into_iter()
            .flatten()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" or ")
    }

    /// `profile`'s static credentials: each key from the credentials file, else from the
    /// config file.
    fn profile(&self, profile: &str) -> Result<Option<Credentials>, CredentialsError> {
        let from_credentials = match &self.credentials {
            Some(path) => section(&read(path)?, profile),
            None => Vec::new(),
        };
        let config_section = if profile == "default" {
            "default".to_owned()
        } else {
            format!("profile {profile}")
        };
        let from_config = match &self.config {
            Some(path) => section(&read(path)?, &config_section),
            None => Vec::new(),
        };
        let key = |name: &str| {
            [&from_credentials, &from_config]
                .into_iter()
                .flat_map(|pairs| pairs.iter())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        Ok(
            match (key("aws_access_key_id"), key("aws_secret_access_key")) {
                (Some(access_key_id), Some(secret_access_key)) => Some(Credentials {
                    access_key_id,
                    secret_access_key,
                    session_token: key("aws_session_token"),
                }),
                _ => None,
            },
        )
    }
}

/// A file's text; a missing file is empty.
fn read(path: &Path) -> Result<String, CredentialsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(CredentialsError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// The `key = value` pairs of section `[name]` of an INI text, as the AWS CLI reads its
/// files: `#` and `;` start comments, indented lines continue a nested value (skipped).
fn section(text: &str, name: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = header.split_whitespace().collect::<Vec<_>>().join(" ") == name;
            continue;
        }
        if inside {
            if let Some((key, value)) = line.split_once('=') {
                pairs.push((key.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::package::tests::Dir;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn files(credentials: &str, config: &str) -> (Dir, Vec<(&'static str, String)>) {
        let dir = Dir::new("credentials");
        std::fs::write(dir.0.join("credentials"), credentials).unwrap();
        std::fs::write(dir.0.join("config"), config).unwrap();
        let vars = vec![
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                dir.0.join("credentials").display().to_string(),
            ),
            (
                "AWS_CONFIG_FILE",
                dir.0.join("config").display().to_string(),
            ),
        ];
        (dir, vars)
    }

    const CREDENTIALS: &str = "# keys\n[default]\naws_access_key_id = AKDEFAULT\naws_secret_access_key = sdefault\n\n[dev]\naws_access_key_id=AKDEV\naws_secret_access_key=sdev\naws_session_token = tdev\n";
    const CONFIG: &str = "[default]\nregion = eu-west-1\n[profile ops]\nregion = us-east-2\naws_access_key_id = AKOPS\naws_secret_access_key = sops\ns3 =\n  aws_access_key_id = nested\n[profile sso]\nsso_session = corp\n";

    fn with(extra: &[(&str, &str)]) -> Result<Option<Credentials>, CredentialsError> {
        let (_dir, vars) = files(CREDENTIALS, CONFIG);
        let mut all: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(extra);
        resolve(None, &env(&all))
    }

    #[test]
    fn portico_s_environment_comes_first() {
        let got = with(&[
            ("AWS_ACCESS_KEY_ID", "AKENV"),
            ("AWS_SECRET_ACCESS_KEY", "senv"),
            ("AWS_SESSION_TOKEN", "tenv"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(got.access_key_id, "AKENV");
        assert_eq!(got.session_token.as_deref(), Some("tenv"));
        assert_eq!(
            got.variables(),
            [
                ("AWS_ACCESS_KEY_ID", "AKENV".to_owned()),
                ("AWS_SECRET_ACCESS_KEY", "senv".to_owned()),
                ("AWS_SESSION_TOKEN", "tenv".to_owned()),
            ]
        );
    }

    #[test]
    fn then_the_profile_aws_profile_names_or_default() {
        assert_eq!(with(&[]).unwrap().unwrap().access_key_id, "AKDEFAULT");
        let dev = with(&[("AWS_PROFILE", "dev")]).unwrap().unwrap();
        assert_eq!(dev.access_key_id, "AKDEV");
        assert_eq!(dev.session_token.as_deref(), Some("tdev"));
        // From the config file's `[profile ops]`; the nested s3 key is not the profile's.
        let ops = with(&[("AWS_PROFILE", "ops")]).unwrap().unwrap();
        assert_eq!(ops.access_key_id, "AKOPS");
        // A profile without static keys, or none at all: no credentials, no error.
        assert_eq!(with(&[("AWS_PROFILE", "sso")]).unwrap(), None);
        assert_eq!(resolve(None, &env(&[])).unwrap(), None);
    }

    #[test]
    fn a_function_s_profile_wins_and_must_exist() {
        let (_dir, vars) = files(CREDENTIALS, CONFIG);
        let mut all: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.push(("AWS_ACCESS_KEY_ID", "AKENV"));
        all.push(("AWS_SECRET_ACCESS_KEY", "senv"));
        let got = resolve(Some("dev"), &env(&all)).unwrap().unwrap();
        assert_eq!(got.access_key_id, "AKDEV");
        let err = resolve(Some("nowhere"), &env(&all))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("profile \"nowhere\" has no aws_access_key_id"),
            "{err}"
        );
        assert!(err.contains("credentials or "), "{err}");
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let got = with(&[]).unwrap().unwrap();
        let shown = format!("{got:?}");
        assert!(
            shown.contains("AKDEFAULT") && !shown.contains("sdefault"),
            "{shown}"
        );
    }
}
