//! The hand-off of invocations between the invoker side and the Runtime API side of one
//! execution environment.
//!
//! The invoker puts a [`Pending`] in the inbox and waits on its reply channel; the function's
//! `GET /next` takes it out and makes it an in-flight invocation; `POST …/response` or
//! `…/error` completes it, by its request id. An environment of a function with
//! `max_concurrency_per_environment` (Lambda Managed Instances) has that many in flight at
//! once, one per worker of its runtime, each worker with its own `/next` waiting. The environment's [`State`] is published on a watch channel so
//! that a waiting invoker also learns when the process dies or fails to initialise.

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

/// How an invocation ended, as reported through the Runtime API.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// `POST /runtime/invocation/{id}/response`.
    Response(Bytes),
    /// `POST /runtime/invocation/{id}/error`, or a response over the size limit.
    Error {
        /// Lambda's `errorType`.
        error_type: String,
        /// The error document handed back to the caller.
        body: Bytes,
    },
}

/// An invocation handed to an environment.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) request_id: String,
    pub(crate) payload: Bytes,
    pub(crate) deadline_ms: u64,
    pub(crate) trace_id: Option<String>,
    pub(crate) client_context: Option<String>,
    pub(crate) cognito_identity: Option<String>,
    /// The ARN the function was invoked by (an alias's or a version's, when named).
    pub(crate) invoked_arn: String,
    pub(crate) reply: oneshot::Sender<Outcome>,
}

/// Life cycle of an execution environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum State {
    /// Process started, init phase running (no `/next` yet).
    Starting,
    /// The function asked for work at least once.
    Ready,
    /// The function reported `/runtime/init/error`.
    InitFailed { error_type: String, message: String },
    /// The process is gone.
    Exited { status: String },
}

/// Result of completing an invocation through the Runtime API.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Completion {
    Accepted,
    /// No invocation with that id is in flight (unknown or already completed).
    UnknownRequest,
}

/// Shared between one environment's invoker side and its Runtime API server.
pub(crate) struct Exchange {
    inbox: tokio::sync::Mutex<mpsc::Receiver<Pending>>,
    /// The invocations the function is working on, by request id, and where their
    /// outcomes go.
    in_flight: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    state: watch::Sender<State>,
}

impl Exchange {
    /// A new exchange for an environment taking `concurrency` invocations at once, and the
    /// sender that feeds its inbox.
    pub(crate) fn new(concurrency: usize) -> (Self, mpsc::Sender<Pending>) {
        // The inbox never needs to hold more than the environment takes at once.
        let (tx, rx) = mpsc::channel(concurrency.max(1));
        let exchange = Self {
            inbox: tokio::sync::Mutex::new(rx),
            in_flight: Mutex::new(HashMap::new()),
            state: watch::Sender::new(State::Starting),
        };
        (exchange, tx)
    }

    /// Watches the environment's state.
    pub(crate) fn subscribe(&self) -> watch::Receiver<State> {
        self.state.subscribe()
    }

    /// The current state.
    pub(crate) fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// Records a state change. A dead or failed environment never comes back to life.
    pub(crate) fn set_state(&self, next: State) {
        self.state.send_if_modified(|s| {
            let allowed = match (&*s, &next) {
                (State::Exited { .. }, _) => false,
                (State::InitFailed { .. }, State::Exited { .. }) => true,
                (State::InitFailed { .. }, _) => false,
                (State::Ready, State::Starting) => false,
                (a, b) => a != b,
            };
            if allowed {
                *s = next;
            }
            allowed
        });
    }

    /// `GET /next`: waits for the next invocation (one caller at a time takes the inbox's
    /// next; concurrent workers queue for it).
    /// `None` when the environment is being torn down.
    pub(crate) async fn next(&self) -> Option<Pending> {
        self.set_state(State::Ready);
        let mut inbox = self.inbox.lock().await;
        inbox.recv().await
    }

    fn lock_in_flight(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Outcome>>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `request_id` as in flight, keeping its reply channel for the completion.
    pub(crate) fn start(&self, request_id: String, reply: oneshot::Sender<Outcome>) {
        self.lock_in_flight().insert(request_id, reply);
    }

    /// Whether `request_id` is in flight.
    pub(crate) fn is_in_flight(&self, request_id: &str) -> bool {
        self.lock_in_flight().contains_key(request_id)
    }

    /// Completes the in-flight invocation `request_id` with `outcome`.
    pub(crate) fn complete(&self, request_id: &str, outcome: Outcome) -> Completion {
        let taken = self.lock_in_flight().remove(request_id);
        match taken {
            Some(reply) => {
                // The invoker may have given up (timeout); the outcome is then dropped.
                let _ = reply.send(outcome);
                Completion::Accepted
            }
            None => Completion::UnknownRequest,
        }
    }
}
