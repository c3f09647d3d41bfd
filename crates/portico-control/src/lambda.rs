//! The Lambda API's operations that change functions, as edits of `functions.NAME`:
//! `CreateFunction`, `UpdateFunctionCode`, `UpdateFunctionConfiguration`, `DeleteFunction`,
//! `PutFunctionConcurrency`, `DeleteFunctionConcurrency`, with Lambda's errors.
//!
//! Code comes as Lambda's `ZipFile` (kept in the store, by content), or as
//! `S3Bucket = "portico-local"` with `S3Key` a zip file or a directory given relative to the
//! configuration file (a checkout beside it, say); a path that leaves that directory is
//! refused, so that the API cannot show a function the node's other files. Layers are paths
//! under the same rule. Parameters portico has no use for (`Role`, `Description`,
//! `VpcConfig`, …) are taken and ignored, as what a deploy tool sends.

use crate::{ChangeError, Control, Edit};
use base64::Engine;
use portico_invoke::BoxFuture;
use portico_lambda::admin::{AdminError, FunctionAdmin, FunctionChange};
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Component, Path};
use std::sync::{Arc, Mutex};

/// Lambda's limit on a deployment package uploaded with the request: 50 MB, zipped.
pub const MAX_ZIP_BYTES: usize = 50 * 1024 * 1024;

/// The `S3Bucket` that names a path beside the configuration file.
pub const LOCAL_BUCKET: &str = "portico-local";

/// The Lambda API's changes, carried out by the control plane.
pub struct LambdaControl {
    control: Arc<Control>,
    region: String,
    /// Functions being changed now: another change of one is a conflict, as on Lambda.
    in_progress: Mutex<HashSet<String>>,
}

impl LambdaControl {
    /// Changes functions through `control`; ARNs in errors are in `region`.
    pub fn new(control: Arc<Control>, region: &str) -> Self {
        Self {
            control,
            region: region.to_owned(),
            in_progress: Mutex::default(),
        }
    }

    fn arn(&self, name: &str) -> String {
        portico_lambda::spec::function_arn(&self.region, name)
    }

    fn not_found(&self, name: &str) -> AdminError {
        AdminError::new(
            404,
            "ResourceNotFoundException",
            format!("Function not found: {}", self.arn(name)),
        )
    }

    async fn carry_out(&self, change: FunctionChange) -> Result<String, AdminError> {
        let name = match &change {
            FunctionChange::Create(request) => {
                let name = request
                    .get("FunctionName")
                    .and_then(Value::as_str)
                    .ok_or_else(|| AdminError::invalid("FunctionName is required"))?;
                portico_lambda::spec::split_function_name(name).0
            }
            FunctionChange::UpdateCode { name, .. }
            | FunctionChange::UpdateConfiguration { name, .. }
            | FunctionChange::Delete { name, .. }
            | FunctionChange::PutConcurrency { name, .. }
            | FunctionChange::DeleteConcurrency { name }
            | FunctionChange::PublishVersion { name, .. }
            | FunctionChange::CreateAlias { name, .. }
            | FunctionChange::UpdateAlias { name, .. }
            | FunctionChange::DeleteAlias { name, .. } => name.clone(),
        };
        check_name(&name)?;
        let _busy = self.begin(&name)?;
        let config = self.control.config();
        let function = config.functions.get(&name);
        let at = |key: &'static str| ["functions", name.as_str(), key];
        // What the answer shows: the function, or one of its versions or aliases.
        let mut changed = name.clone();
        let edits = match change {
            FunctionChange::Create(request) => {
                if function.is_some() {
                    return Err(AdminError::new(
                        409,
                        "ResourceConflictException",
                        format!("Function already exist: {name}"),
                    ));
                }
                let mut table = toml::Table::new();
                for edit in settings(&request)?.into_iter().chain(code(
                    &request.get("Code").cloned().unwrap_or(Value::Null),
                    self,
                )?) {
                    if let (Some(key), Some(value)) = (edit.path.last(), edit.value) {
                        table.insert(key.clone(), value);
                    }
                }
                vec![Edit::set(&["functions", &name], table)]
            }
            _ if function.is_none() => return Err(self.not_found(&name)),
            FunctionChange::UpdateCode { request, .. } => code(&request, self)?
                .into_iter()
                .map(|e| under(&name, e))
                .collect(),
            FunctionChange::UpdateConfiguration { request, .. } => settings(&request)?
                .into_iter()
                .map(|e| under(&name, e))
                .collect(),
            FunctionChange::Delete {
                qualifier: None, ..
            } => vec![Edit::remove(&["functions", &name])],
            FunctionChange::Delete {
                qualifier: Some(version),
                ..
            } => {
                let function = function.ok_or_else(|| self.not_found(&name))?;
                if !function.versions.contains_key(&version) {
                    return Err(self.version_not_found(&name, &version));
                }
                let users: Vec<&str> = function
                    .aliases
                    .iter()
                    .filter(|(_, a)| {
                        a.function_version == version || a.routing_config.contains_key(&version)
                    })
                    .map(|(alias, _)| alias.as_str())
                    .collect();
                if !users.is_empty() {
                    return Err(AdminError::new(
                        409,
                        "ResourceConflictException",
                        format!(
                            "Unable to delete version because the following aliases reference it: {users:?}"
                        ),
                    ));
                }
                vec![Edit::remove(&["functions", &name, "versions", &version])]
            }
            FunctionChange::PutConcurrency { request, .. } => {
                let reserved = request
                    .get("ReservedConcurrentExecutions")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| {
                        AdminError::invalid(
                            "ReservedConcurrentExecutions is required: a number of 0 or more",
                        )
                    })?;
                vec![Edit::set(&at("reserved_concurrency"), reserved as i64)]
            }
            FunctionChange::DeleteConcurrency { .. } => {
                vec![Edit::remove(&at("reserved_concurrency"))]
            }
            FunctionChange::PublishVersion { .. } => {
                let (version, edits) = self.publish(&name).await?;
                changed = format!("{name}:{version}");
                edits
            }
            FunctionChange::CreateAlias { request, .. } => {
                let alias = request
                    .get("Name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| AdminError::invalid("Name is required"))?
                    .to_owned();
                if function.is_some_and(|f| f.aliases.contains_key(&alias)) {
                    return Err(AdminError::new(
                        409,
                        "ResourceConflictException",
                        format!(
                            "Alias already exists: {}",
                            self.arn(&format!("{name}:{alias}"))
                        ),
                    ));
                }
                if request
                    .get("FunctionVersion")
                    .and_then(Value::as_str)
                    .is_none()
                {
                    return Err(AdminError::invalid("FunctionVersion is required"));
                }
                changed = format!("{name}:{alias}");
                alias_edits(&request)?
                    .into_iter()
                    .map(|e| under(&name, under_alias(&alias, e)))
                    .collect()
            }
            FunctionChange::UpdateAlias { alias, request, .. } => {
                if !function.is_some_and(|f| f.aliases.contains_key(&alias)) {
                    return Err(self.alias_not_found(&name, &alias));
                }
                changed = format!("{name}:{alias}");
                alias_edits(&request)?
                    .into_iter()
                    .map(|e| under(&name, under_alias(&alias, e)))
                    .collect()
            }
            FunctionChange::DeleteAlias { alias, .. } => {
                if !function.is_some_and(|f| f.aliases.contains_key(&alias)) {
                    return Err(self.alias_not_found(&name, &alias));
                }
                vec![Edit::remove(&["functions", &name, "aliases", &alias])]
            }
        };
        if !edits.is_empty() {
            self.control.change(edits).await.map_err(refused)?;
            tracing::info!(
                function = changed,
                "function changed through the Lambda API"
            );
        }
        Ok(changed)
    }

    /// `PublishVersion`: the version's number, and the edits that make it (none when
    /// `$LATEST` is the last version published, as Lambda answers with that one). A
    /// version's code is copied into the store, so that it does not change with the
    /// directory or file `$LATEST` names.
    async fn publish(&self, name: &str) -> Result<(String, Vec<Edit>), AdminError> {
        let table = self.control.table().await;
        let latest = table
            .get("functions")
            .and_then(|f| f.get(name))
            .and_then(toml::Value::as_table)
            .ok_or_else(|| self.not_found(name))?;
        let mut snapshot = latest.clone();
        for key in ["versions", "aliases", "reserved_concurrency"] {
            snapshot.remove(key);
        }
        if let Some(code) = snapshot.get("code").and_then(toml::Value::as_str) {
            let path = self.control.base().join(code);
            let store = self.control.store();
            let kept = if path.is_dir() {
                store.put_tree(&path)
            } else {
                std::fs::read(&path)
                    .map_err(crate::store::io("reading", &path))
                    .and_then(|bytes| store.put_package(&bytes))
            };
            let kept = kept.map_err(|e| AdminError::new(500, "ServiceException", e.to_string()))?;
            snapshot.insert("code".into(), kept.display().to_string().into());
        }
        let versions = latest.get("versions").and_then(toml::Value::as_table);
        let numbers = versions
            .map(|v| {
                v.keys()
                    .filter_map(|k| k.parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let last = numbers.iter().max().copied();
        if let Some(last) = last {
            let same = versions
                .and_then(|v| v.get(&last.to_string()))
                .and_then(toml::Value::as_table)
                .is_some_and(|previous| *previous == snapshot);
            if same {
                return Ok((last.to_string(), Vec::new()));
            }
        }
        let version = (last.unwrap_or(0) + 1).to_string();
        let edit = Edit::set(&["functions", name, "versions", &version], snapshot);
        Ok((version, vec![edit]))
    }

    fn version_not_found(&self, name: &str, version: &str) -> AdminError {
        AdminError::new(
            404,
            "ResourceNotFoundException",
            format!(
                "Function not found: {}",
                self.arn(&format!("{name}:{version}"))
            ),
        )
    }

    fn alias_not_found(&self, name: &str, alias: &str) -> AdminError {
        AdminError::new(
            404,
            "ResourceNotFoundException",
            format!("Alias not found: {}", self.arn(&format!("{name}:{alias}"))),
        )
    }

    /// Marks `name` as being changed, until the guard is dropped; a conflict if it is.
    fn begin(&self, name: &str) -> Result<InProgress<'_>, AdminError> {
        let mut busy = self
            .in_progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !busy.insert(name.to_owned()) {
            return Err(AdminError::new(
                409,
                "ResourceConflictException",
                format!(
                    "The operation cannot be performed at this time. An update is in progress for resource: {}",
                    self.arn(name)
                ),
            ));
        }
        Ok(InProgress {
            set: &self.in_progress,
            name: name.to_owned(),
        })
    }
}

impl FunctionAdmin for LambdaControl {
    fn change(&self, change: FunctionChange) -> BoxFuture<'_, Result<String, AdminError>> {
        Box::pin(self.carry_out(change))
    }
}

/// A function being changed; no longer when dropped.
struct InProgress<'a> {
    set: &'a Mutex<HashSet<String>>,
    name: String,
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.name);
    }
}

/// Lambda's answer to a change the control plane did not make.
fn refused(error: ChangeError) -> AdminError {
    match error {
        ChangeError::Starting => AdminError::new(503, "ServiceException", error.reason()),
        error if error.is_refusal() => AdminError::invalid(error.reason()),
        error => AdminError::new(500, "ServiceException", error.reason()),
    }
}

/// `edit`'s path under `aliases.ALIAS` (of a function).
fn under_alias(alias: &str, mut edit: Edit) -> Edit {
    let mut path = vec!["aliases".to_owned(), alias.to_owned()];
    path.append(&mut edit.path);
    edit.path = path;
    edit
}

/// The edits (relative to the alias) that `CreateAlias`'s or `UpdateAlias`'s body makes.
fn alias_edits(request: &Value) -> Result<Vec<Edit>, AdminError> {
    let mut edits = Vec::new();
    if let Some(version) = request.get("FunctionVersion").filter(|v| !v.is_null()) {
        let version = version
            .as_str()
            .ok_or_else(|| AdminError::invalid("FunctionVersion: a string"))?;
        edits.push(Edit::set(&["function_version"], version));
    }
    if let Some(description) = request.get("Description").and_then(Value::as_str) {
        edits.push(Edit::set(&["description"], description));
    }
    if let Some(routing) = request.get("RoutingConfig").filter(|v| !v.is_null()) {
        let mut weights = toml::Table::new();
        if let Some(given) = routing
            .get("AdditionalVersionWeights")
            .filter(|v| !v.is_null())
        {
            let given = given.as_object().ok_or_else(|| {
                AdminError::invalid("RoutingConfig.AdditionalVersionWeights: a map of weights")
            })?;
            for (version, weight) in given {
                let weight = weight.as_f64().ok_or_else(|| {
                    AdminError::invalid(format!(
                        "RoutingConfig.AdditionalVersionWeights.{version}: a number from 0 to 1"
                    ))
                })?;
                weights.insert(version.clone(), weight.into());
            }
        }
        edits.push(Edit::set(&["routing_config"], weights));
    }
    Ok(edits)
}

/// `edit`'s path under `functions.NAME`.
fn under(name: &str, mut edit: Edit) -> Edit {
    let mut path = vec!["functions".to_owned(), name.to_owned()];
    path.append(&mut edit.path);
    edit.path = path;
    edit
}

/// Lambda's rule for a function name: 1 to 64 letters, digits, `-` and `_`.
fn check_name(name: &str) -> Result<(), AdminError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(AdminError::new(
            400,
            "ValidationException",
            format!(
                "1 validation error detected: Value '{name}' at 'functionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9-_]+ and have length between 1 and 64"
            ),
        ))
    }
}

/// A path given through the API: relative to the configuration file, and staying under
/// its directory.
fn local_path(given: &str, what: &str) -> Result<String, AdminError> {
    let path = Path::new(given);
    let inside = !given.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if inside {
        Ok(given.to_owned())
    } else {
        Err(AdminError::invalid(format!(
            "{what} {given:?}: a path relative to the configuration file's directory, and inside it"
        )))
    }
}

/// The edits (relative to the function) that set its code from `code` (`UpdateFunctionCode`'s
/// body, or `CreateFunction`'s `Code`).
fn code(code: &Value, lambda: &LambdaControl) -> Result<Vec<Edit>, AdminError> {
    let text = |key: &str| code.get(key).and_then(Value::as_str);
    let path = if let Some(zip) = text("ZipFile") {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(zip)
            .map_err(|_| AdminError::invalid("ZipFile: not base64"))?;
        if bytes.len() > MAX_ZIP_BYTES {
            return Err(AdminError::new(
                413,
                "RequestEntityTooLargeException",
                format!(
                    "Request must be smaller than {MAX_ZIP_BYTES} bytes for the UpdateFunctionCode operation"
                ),
            ));
        }
        if !(bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")) {
            return Err(AdminError::invalid(
                "Could not unzip uploaded file. Please check your file, then try to upload again.",
            ));
        }
        let stored = lambda
            .control
            .store()
            .put_package(&bytes)
            .map_err(|e| AdminError::new(500, "ServiceException", e.to_string()))?;
        stored.display().to_string()
    } else if let (Some(bucket), Some(key)) = (text("S3Bucket"), text("S3Key")) {
        if bucket != LOCAL_BUCKET {
            return Err(AdminError::invalid(format!(
                "S3Bucket {bucket:?}: portico takes code as ZipFile, or as S3Bucket {LOCAL_BUCKET:?} with S3Key a path beside the configuration file"
            )));
        }
        local_path(key, "S3Key")?
    } else if text("ImageUri").is_some() {
        return Err(AdminError::invalid(
            "ImageUri: container images are configured in the file (image = PATH) for now",
        ));
    } else {
        return Err(AdminError::invalid(
            "Code: ZipFile, or S3Bucket and S3Key, is required",
        ));
    };
    Ok(vec![
        Edit::set(&["code"], path),
        Edit::remove(&["command"]),
        Edit::remove(&["image"]),
        Edit::remove(&["image_config"]),
    ])
}

/// The edits (relative to the function) that `UpdateFunctionConfiguration`'s (or
/// `CreateFunction`'s) settings make.
fn settings(request: &Value) -> Result<Vec<Edit>, AdminError> {
    let mut edits = Vec::new();
    let text = |key: &str| -> Result<Option<String>, AdminError> {
        match request.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(AdminError::invalid(format!("{key}: a string"))),
        }
    };
    let number = |key: &str| -> Result<Option<i64>, AdminError> {
        match request.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| AdminError::invalid(format!("{key}: a number"))),
        }
    };
    if let Some(runtime) = text("Runtime")? {
        edits.push(Edit::set(&["runtime"], runtime));
    }
    if let Some(handler) = text("Handler")? {
        edits.push(Edit::set(&["handler"], handler));
    }
    if let Some(memory) = number("MemorySize")? {
        edits.push(Edit::set(&["memory_size_mb"], memory));
    }
    if let Some(timeout) = number("Timeout")? {
        edits.push(Edit::set(&["timeout_seconds"], timeout));
    }
    if let Some(environment) = request.get("Environment").filter(|v| !v.is_null()) {
        let mut table = toml::Table::new();
        if let Some(variables) = environment.get("Variables").filter(|v| !v.is_null()) {
            let variables = variables
                .as_object()
                .ok_or_else(|| AdminError::invalid("Environment.Variables: a map of strings"))?;
            for (key, value) in variables {
                let value = value.as_str().ok_or_else(|| {
                    AdminError::invalid(format!("Environment.Variables.{key}: a string"))
                })?;
                table.insert(key.clone(), value.into());
            }
        }
        edits.push(Edit::set(&["environment"], table));
    }
    if let Some(storage) = request.get("EphemeralStorage").filter(|v| !v.is_null()) {
        let size = storage
            .get("Size")
            .and_then(Value::as_i64)
            .ok_or_else(|| AdminError::invalid("EphemeralStorage.Size: a number"))?;
        edits.push(Edit::set(&["ephemeral_storage_mb"], size));
    }
    if let Some(logging) = request.get("LoggingConfig").filter(|v| !v.is_null()) {
        let mut table = toml::Table::new();
        for (from, to) in [
            ("LogFormat", "log_format"),
            ("ApplicationLogLevel", "application_log_level"),
            ("SystemLogLevel", "system_log_level"),
        ] {
            if let Some(value) = logging.get(from).and_then(Value::as_str) {
                table.insert(to.into(), value.into());
            }
        }
        edits.push(Edit::set(&["logging_config"], table));
    }
    if let Some(layers) = request.get("Layers").filter(|v| !v.is_null()) {
        let layers = layers
            .as_array()
            .ok_or_else(|| AdminError::invalid("Layers: a list"))?
            .iter()
            .map(|l| {
                l.as_str()
                    .ok_or_else(|| AdminError::invalid("Layers: a list of strings"))
                    .and_then(|l| local_path(l, "Layers:"))
                    .map(toml::Value::from)
            })
            .collect::<Result<Vec<_>, _>>()?;
        edits.push(Edit::set(&["layers"], layers));
    }
    Ok(edits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_lambda_s() {
        let short = |given: &str| portico_lambda::spec::split_function_name(given).0;
        assert_eq!(short("orders"), "orders");
        assert_eq!(
            short("arn:aws:lambda:us-east-1:000000000000:function:orders:live"),
            "orders"
        );
        assert_eq!(short("000000000000:function:orders"), "orders");
        assert!(check_name("orders-v2_x").is_ok());
        for bad in ["", "a b", "a/b", &"x".repeat(65)] {
            assert_eq!(
                check_name(bad).unwrap_err().error_type,
                "ValidationException"
            );
        }
    }

    #[test]
    fn paths_given_through_the_api_stay_beside_the_configuration() {
        assert!(local_path("build/app.zip", "S3Key").is_ok());
        assert!(local_path("./code", "S3Key").is_ok());
        for bad in ["/etc", "../secrets", "code/../../x", ""] {
            assert!(local_path(bad, "S3Key").is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_become_the_configuration_s_keys() {
        let edits = settings(&json!({
            "Runtime": "python3.12",
            "MemorySize": 512,
            "Timeout": 30,
            "Environment": { "Variables": { "STAGE": "prod" } },
            "EphemeralStorage": { "Size": 1024 },
            "LoggingConfig": { "LogFormat": "JSON", "ApplicationLogLevel": "DEBUG" },
            "Role": "ignored",
            "Description": "ignored",
        }))
        .unwrap();
        let keys: Vec<&str> = edits.iter().map(|e| e.path[0].as_str()).collect();
        assert_eq!(
            keys,
            [
                "runtime",
                "memory_size_mb",
                "timeout_seconds",
                "environment",
                "ephemeral_storage_mb",
                "logging_config"
            ]
        );
        assert_eq!(
            settings(&json!({ "MemorySize": "big" }))
                .unwrap_err()
                .error_type,
            "InvalidParameterValueException"
        );
        // Environment without variables empties it, as Lambda does.
        let edits = settings(&json!({ "Environment": {} })).unwrap();
        assert_eq!(edits[0].value, Some(toml::Value::Table(toml::Table::new())));
    }
}
