//! The Lambda API's operations that change functions (`CreateFunction`, `UpdateFunctionCode`,
//! `UpdateFunctionConfiguration`, `DeleteFunction`, `PutFunctionConcurrency`,
//! `DeleteFunctionConcurrency`): the Invoke API reads them, a [`FunctionAdmin`] (the control
//! plane) carries them out, and the Invoke API answers with the function as it then runs.

use portico_invoke::BoxFuture;
use serde_json::Value;

/// A change of functions asked through the Lambda API, with the request's JSON body.
#[derive(Debug, Clone)]
pub enum FunctionChange {
    /// `CreateFunction`: the body names the function.
    Create(Value),
    /// `UpdateFunctionCode`.
    UpdateCode {
        /// The function.
        name: String,
        /// The request.
        request: Value,
    },
    /// `UpdateFunctionConfiguration`.
    UpdateConfiguration {
        /// The function.
        name: String,
        /// The request.
        request: Value,
    },
    /// `DeleteFunction`: the function, or one of its published versions.
    Delete {
        /// The function.
        name: String,
        /// The version (`?Qualifier=`), when only it goes.
        qualifier: Option<String>,
    },
    /// `PublishVersion`.
    PublishVersion {
        /// The function.
        name: String,
        /// The request.
        request: Value,
    },
    /// `CreateAlias`.
    CreateAlias {
        /// The function.
        name: String,
        /// The request (its `Name` is the alias's).
        request: Value,
    },
    /// `UpdateAlias`.
    UpdateAlias {
        /// The function.
        name: String,
        /// The alias.
        alias: String,
        /// The request.
        request: Value,
    },
    /// `DeleteAlias`.
    DeleteAlias {
        /// The function.
        name: String,
        /// The alias.
        alias: String,
    },
    /// `PutFunctionConcurrency`.
    PutConcurrency {
        /// The function.
        name: String,
        /// The request.
        request: Value,
    },
    /// `DeleteFunctionConcurrency`.
    DeleteConcurrency {
        /// The function.
        name: String,
    },
}

/// Lambda's answer to a change it refused: the HTTP status, the exception's name and its
/// message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminError {
    /// The HTTP status.
    pub status: u16,
    /// The exception, as `x-amzn-ErrorType` names it (`ResourceConflictException`, …).
    pub error_type: String,
    /// The message.
    pub message: String,
}

impl AdminError {
    /// An error of `status` and `error_type`.
    pub fn new(status: u16, error_type: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            error_type: error_type.to_owned(),
            message: message.into(),
        }
    }

    /// `InvalidParameterValueException` (400).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "InvalidParameterValueException", message)
    }
}

/// Carries out changes of functions.
pub trait FunctionAdmin: Send + Sync {
    /// Carries out `change` (the function runs as changed when it returns): what it changed,
    /// `NAME` or `NAME:QUALIFIER` (a version published, an alias made or changed).
    fn change(&self, change: FunctionChange) -> BoxFuture<'_, Result<String, AdminError>>;
}
