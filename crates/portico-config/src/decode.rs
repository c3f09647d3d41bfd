//! TOML text to [`Config`], reporting every unknown key and type error with its path.
//!
//! serde stops at the first error of a value, so each named entry (`functions.hello`,
//! `load_balancers.web`, the accelerator) is decoded on its own: one broken entry does not
//! hide the problems of the others. Within one entry, type errors after the first are not
//! seen until it is fixed (serde cannot go on past a wrong type). Unknown keys are collected with `serde_ignored` rather
//! than `deny_unknown_fields`, so that all of them are reported in one pass.

use crate::error::{ConfigError, LoadError};
use crate::gateway::{ApiKey, ApiKeyFile};
use crate::model::Config;
use crate::validate::validate;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::Path;

/// Largest configuration file accepted, in bytes: a topology is text, not data.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Reads, decodes and validates the file at `path`.
pub fn load_file(path: &Path) -> Result<Config, LoadError> {
    parse(&read_text(path)?, &path.display().to_string())
}

/// The text of the file at `path`, refused above [`MAX_CONFIG_BYTES`].
fn read_text(path: &Path) -> Result<String, LoadError> {
    let read_err = |source| LoadError::Read {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_CONFIG_BYTES {
        return Err(LoadError::Invalid {
            origin: path.display().to_string(),
            errors: vec![ConfigError::new(
                "",
                format!("file is {len} bytes, over the limit of {MAX_CONFIG_BYTES}"),
            )],
        });
    }
    std::fs::read_to_string(path).map_err(read_err)
}

/// `text` as a TOML table; `origin` names it in the syntax error.
fn parse_table(text: &str, origin: &str) -> Result<toml::Table, LoadError> {
    text.parse()
        .map_err(|e: toml::de::Error| LoadError::Syntax {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
}

/// Decodes and validates `text`; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Config, LoadError> {
    from_table(parse_table(text, origin)?, origin)
}

/// The file at `path` as a TOML table, before decoding (its size and syntax checked): what
/// changes made through the APIs are laid over.
pub fn load_table(path: &Path) -> Result<toml::Table, LoadError> {
    parse_table(&read_text(path)?, &path.display().to_string())
}

/// Decodes and validates `table`; `origin` names it in errors.
pub fn from_table(table: toml::Table, origin: &str) -> Result<Config, LoadError> {
    let mut errors = Vec::new();
    let config = decode_table(table, &mut errors);
    errors.extend(validate(&config));
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(LoadError::Invalid {
            origin: origin.to_owned(),
            errors,
        })
    }
}

/// Reads an API key file (`[[keys]]` entries, at most [`MAX_CONFIG_BYTES`]) and checks its keys against `config`: each
/// error names the file and the key's index.
pub fn load_api_key_file(path: &Path, config: &Config) -> Result<Vec<ApiKey>, LoadError> {
    let origin = path.display().to_string();
    let table = parse_table(&read_text(path)?, &origin)?;
    let mut errors = Vec::new();
    let file: Option<ApiKeyFile> = decode_value(toml::Value::Table(table), "", &mut errors);
    let keys = file.map(|f| f.keys).unwrap_or_default();
    // The inline keys claim their values and names first; their own problems are
    // reported when the file is validated.
    let mut seen = std::collections::HashSet::new();
    let _ = crate::validate::api_keys("", &config.api_keys.keys, config, &mut seen);
    errors.extend(crate::validate::api_keys("keys", &keys, config, &mut seen));
    if errors.is_empty() {
        Ok(keys)
    } else {
        Err(LoadError::Invalid { origin, errors })
    }
}

fn decode_table(table: toml::Table, errors: &mut Vec<ConfigError>) -> Config {
    let mut config = Config::default();
    for (key, value) in table {
        match key.as_str() {
            "accelerator" => config.accelerator = decode_value(value, &key, errors),
            "load_balancers" => config.load_balancers = decode_named(value, &key, errors),
            "target_groups" => config.target_groups = decode_named(value, &key, errors),
            "functions" => config.functions = decode_named(value, &key, errors),
            "runtime" => {
                if let Some(settings) = decode_value(value, &key, errors) {
                    config.runtime = settings;
                }
            }
            "limits" => {
                if let Some(limits) = decode_value(value, &key, errors) {
                    config.limits = limits;
                }
            }
            "invoke_api" => {
                if let Some(api) = decode_value(value, &key, errors) {
                    config.invoke_api = api;
                }
            }
            "authorizers" => config.authorizers = decode_named(value, &key, errors),
            "usage_plans" => config.usage_plans = decode_named(value, &key, errors),
            "api_keys" => {
                if let Some(keys) = decode_value(value, &key, errors) {
                    config.api_keys = keys;
                }
            }
            "admin_api" => {
                if let Some(api) = decode_value(value, &key, errors) {
                    config.admin_api = api;
                }
            }
            _ => errors.push(ConfigError::new(key, "unknown key")),
        }
    }
    config
}

/// Decodes a table of named entries, each on its own.
fn decode_named<T: DeserializeOwned>(
    value: toml::Value,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, T> {
    let toml::Value::Table(entries) = value else {
        errors.push(ConfigError::new(path, "expected a table of named entries"));
        return BTreeMap::new();
    };
    entries
        .into_iter()
        .filter_map(|(name, v)| {
            let item = decode_value(v, &format!("{path}.{name}"), errors)?;
            Some((name, item))
        })
        .collect()
}

/// Decodes one value, recording unknown keys and the first type error under `path`.
fn decode_value<T: DeserializeOwned>(
    value: toml::Value,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let mut unknown = Vec::new();
    let mut on_unknown = |p: serde_ignored::Path<'_>| unknown.push(join(path, &ignored_path(&p)));
    let ignored = serde_ignored::Deserializer::new(value, &mut on_unknown);
    let result: Result<T, _> = serde_path_to_error::deserialize(ignored);
    errors.extend(
        unknown
            .into_iter()
            .map(|p| ConfigError::new(p, "unknown key")),
    );
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let inner = if inner == "." { String::new() } else { inner };
            errors.push(ConfigError::new(
                join(path, &inner),
                e.into_inner().message(),
            ));
            None
        }
    }
}

fn join(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty()) {
        (_, true) => prefix.to_owned(),
        (true, false) => rest.to_owned(),
        (false, false) if rest.starts_with('[') => format!("{prefix}{rest}"),
        (false, false) => format!("{prefix}.{rest}"),
    }
}

/// Formats a `serde_ignored` path the way the rest of our errors do: `a.b[0].c`.
fn ignored_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match p {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        P::Map { parent, key } => join(&ignored_path(parent), key),
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}
