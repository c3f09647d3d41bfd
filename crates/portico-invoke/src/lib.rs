//! The boundary between callers of functions and the runtime that runs them.
//!
//! The load balancer calls functions only through [`Invoker`]: in-process when the runtime
//! lives in the same process, over the Invoke API when it lives on another node. Errors are
//! split the way Lambda splits them: an [`InvokeError`] means the invocation did not happen
//! (no such function, throttled, payload too large); a function that ran and failed (raised,
//! timed out, crashed) is a successful call whose [`InvokeOutput::function_error`] is set,
//! exactly like the Invoke API's `200` with `X-Amz-Function-Error: Unhandled`.

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;

/// A boxed future, so that [`Invoker`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One invocation of a function.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    /// The function's name.
    pub function: String,
    /// The event, usually JSON.
    pub payload: Bytes,
    /// X-Ray trace header to hand to the function (`Lambda-Runtime-Trace-Id`).
    pub trace_id: Option<String>,
    /// The caller's client context as JSON (`Lambda-Runtime-Client-Context`); the Invoke API
    /// receives it base64-encoded in `X-Amz-Client-Context`.
    pub client_context: Option<String>,
    /// The caller's Amazon Cognito identity as JSON (`Lambda-Runtime-Cognito-Identity`).
    pub cognito_identity: Option<String>,
    /// Whether the caller wants the end of the invocation's log back
    /// ([`InvokeOutput::log_tail`]), as `X-Amz-Log-Type: Tail` asks.
    pub tail_logs: bool,
}

/// What came back from a function that ran.
#[derive(Debug, Clone)]
pub struct InvokeOutput {
    /// The request id the function saw.
    pub request_id: String,
    /// The function's response, or its error document when `function_error` is set.
    pub payload: Bytes,
    /// Set when the function failed: raised, timed out, crashed or replied too much.
    pub function_error: Option<FunctionError>,
    /// The last 4 KB of the invocation's log (`START` to `REPORT`), when
    /// [`Invocation::tail_logs`] asked for it.
    pub log_tail: Option<String>,
}

/// Why a function that ran did not produce a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionError {
    /// Lambda's `errorType`, e.g. `Runtime.ExitError`, `Sandbox.Timedout`, or the function's own.
    pub error_type: String,
    /// Whether the failure was the function running out of time.
    pub timed_out: bool,
}

/// Why an invocation did not take place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    /// No function by that name (`ResourceNotFoundException`).
    #[error("function not found: {0}")]
    NotFound(String),
    /// The function is at a concurrency limit (`TooManyRequestsException`).
    #[error("rate exceeded: function {function} is at its {} of {limit}", reason.describe())]
    Throttled {
        /// The function's name.
        function: String,
        /// The limit that was hit.
        limit: usize,
        /// Which limit it was.
        reason: ThrottleReason,
    },
    /// The payload is over the synchronous limit (`RequestTooLargeException`).
    #[error("request payload of {size} bytes exceeds the limit of {limit} bytes")]
    RequestTooLarge {
        /// Size of the payload sent.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The function could not be initialised (`Runtime.InitError` and friends); the caller
    /// sees this like Lambda's `502` from the Invoke API.
    #[error("function {function} failed to initialise: {error_type}: {message}")]
    InitFailed {
        /// The function's name.
        function: String,
        /// Lambda's error type, e.g. `Runtime.InitError` or `Runtime.ExitError`.
        error_type: String,
        /// What happened.
        message: String,
    },
    /// The runtime is shutting down and takes no new invocations.
    #[error("the function runtime is shutting down")]
    ShuttingDown,
}

/// Which limit throttled an invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleReason {
    /// The function's reserved concurrency.
    ReservedConcurrency,
    /// The runtime-wide concurrency (Lambda's account limit).
    AccountConcurrency,
    /// The queue of asynchronous invocations is full.
    EventQueue,
    /// The node's memory for execution environments is held by busy ones.
    Memory,
}

impl ThrottleReason {
    /// The `Reason` Lambda puts in its `TooManyRequestsException`.
    pub fn aws_reason(self) -> &'static str {
        match self {
            Self::ReservedConcurrency => "ReservedFunctionConcurrentInvocationLimitExceeded",
            Self::AccountConcurrency => "ConcurrentInvocationLimitExceeded",
            Self::EventQueue => "FunctionInvocationRateLimitExceeded",
            // Lambda's nearest: the account's capacity, here the node's.
            Self::Memory => "ConcurrentInvocationLimitExceeded",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::ReservedConcurrency => "reserved concurrency",
            Self::AccountConcurrency => "global concurrency limit",
            Self::EventQueue => "queue of asynchronous invocations",
            Self::Memory => "memory budget for execution environments (MB)",
        }
    }
}

/// Something that runs functions.
pub trait Invoker: Send + Sync + 'static {
    /// Runs `invocation` to completion and returns the function's reply.
    fn invoke(&self, invocation: Invocation) -> BoxFuture<'_, Result<InvokeOutput, InvokeError>>;
}
