//! The Extensions API (2020-01-01) of one execution environment: the extensions registered
//! with it, the events each waits for, and whether all are done.
//!
//! As Lambda runs them: external extensions are the executables in `/opt/extensions`, started
//! before the runtime; each registers under its file's name, for `INVOKE` and `SHUTDOWN`
//! events. An extension registered under any other name runs inside the runtime's process
//! (an internal extension) and may not ask for `SHUTDOWN`. Registration closes once the
//! init phase is over; at most [`MAX_EXTENSIONS`] register. An extension is done with an
//! event when it asks for the next one (`GET …/event/next`); the init phase ends, and an
//! invocation's environment is free again, only when the runtime and every extension are
//! done. `…/init/error` and `…/exit/error` report an extension's failure, which ends the
//! environment, as the death of an external extension does.
//!
//! Errors are Lambda's (the Runtime Interface Emulator's types): 403 with `errorType`
//! `Extension.*` for a request the state does not allow, `InvalidRequestFormat` for a body
//! that is not the register request.

use bytes::Bytes;
use http::StatusCode;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::{oneshot, watch};

/// Lambda's most extensions per function.
pub(crate) const MAX_EXTENSIONS: usize = 10;

/// Lambda's error types for an environment an extension failed.
pub(crate) const INIT_ERROR: &str = "Extension.InitError";
pub(crate) const EXIT_ERROR: &str = "Extension.ExitError";
pub(crate) const CRASH: &str = "Extension.Crash";

/// An event for extensions.
#[derive(Debug, Clone)]
pub(crate) enum Event<'a> {
    /// An invocation starts.
    Invoke {
        request_id: &'a str,
        deadline_ms: u64,
        function_arn: &'a str,
        trace_id: Option<&'a str>,
    },
    /// The environment is being shut down: `spindown`, `timeout` or `failure`.
    Shutdown { reason: &'a str, deadline_ms: u64 },
}

impl Event<'_> {
    fn document(&self) -> Bytes {
        let value = match self {
            Event::Invoke {
                request_id,
                deadline_ms,
                function_arn,
                trace_id,
            } => {
                let mut event = serde_json::json!({
                    "eventType": "INVOKE",
                    "deadlineMs": deadline_ms,
                    "requestId": request_id,
                    "invokedFunctionArn": function_arn,
                });
                if let Some(trace) = trace_id {
                    event["tracing"] =
                        serde_json::json!({"type": "X-Amzn-Trace-Id", "value": trace});
                }
                event
            }
            Event::Shutdown {
                reason,
                deadline_ms,
            } => serde_json::json!({
                "eventType": "SHUTDOWN",
                "shutdownReason": reason,
                "deadlineMs": deadline_ms,
            }),
        };
        Bytes::from(value.to_string())
    }

    fn is_invoke(&self) -> bool {
        matches!(self, Event::Invoke { .. })
    }
}

/// A refused Extensions API request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) error_type: &'static str,
    pub(crate) message: String,
}

fn forbidden(error_type: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status: StatusCode::FORBIDDEN,
        error_type,
        message: message.into(),
    }
}

/// What `register` answers besides the identifier.
pub(crate) struct FunctionInfo {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) handler: String,
    pub(crate) account_id: String,
}

/// How an extension reported its failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// `POST …/init/error`.
    Init,
    /// `POST …/exit/error`.
    Exit,
}

struct Agent {
    id: String,
    name: String,
    external: bool,
    invoke: bool,
    shutdown: bool,
    /// Waiting in `…/event/next` (or between having asked and being answered).
    ready: bool,
    /// Events it has not asked for yet.
    queued: VecDeque<Bytes>,
    /// Its `…/event/next` waiting for an event.
    waiter: Option<oneshot::Sender<Bytes>>,
}

#[derive(Default)]
struct Registry {
    /// Registration is open (the init phase).
    open: bool,
    /// Why the environment will be shut down: `spindown`, unless it timed out or failed.
    shutdown_reason: Option<&'static str>,
    /// The external extensions started, by name.
    launched: Vec<String>,
    agents: Vec<Agent>,
    /// The first failure, as Lambda's error type and a message.
    fatal: Option<(&'static str, String)>,
}

/// The extensions of one environment.
pub(crate) struct Extensions {
    registry: Mutex<Registry>,
    /// Bumped on every change waiters look at.
    changed: watch::Sender<u64>,
}

impl Extensions {
    /// Extensions for an environment whose external extensions `launched` are starting.
    pub(crate) fn new(launched: Vec<String>) -> Self {
        Self {
            registry: Mutex::new(Registry {
                open: true,
                launched,
                ..Registry::default()
            }),
            changed: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// `POST /2020-01-01/extension/register`: the identifier and the response document.
    pub(crate) fn register(
        &self,
        name: &str,
        body: &[u8],
        accept_feature: Option<&str>,
        function: &FunctionInfo,
    ) -> Result<(String, Bytes), Refusal> {
        if name.is_empty() {
            return Err(forbidden(
                "Extension.InvalidExtensionName",
                "Empty extension name",
            ));
        }
        #[derive(serde::Deserialize)]
        struct Request {
            #[serde(default)]
            events: Vec<String>,
        }
        let request: Request = serde_json::from_slice(body)
            .map_err(|e| forbidden("InvalidRequestFormat", e.to_string()))?;
        let mut registry = self.lock();
        let external = registry.launched.iter().any(|l| l == name);
        let (mut invoke, mut shutdown) = (false, false);
        for event in &request.events {
            match event.as_str() {
                "INVOKE" => invoke = true,
                "SHUTDOWN" if external => shutdown = true,
                "SHUTDOWN" => {
                    return Err(forbidden(
                        "Extension.InvalidEventType",
                        "SHUTDOWN: internal extensions cannot register for the SHUTDOWN event",
                    ));
                }
                other => {
                    return Err(forbidden(
                        "Extension.InvalidEventType",
                        format!("{other}: ErrorInvalidEventType"),
                    ));
                }
            }
        }
        if !registry.open {
            return Err(forbidden(
                "Extension.RegistrationClosed",
                "Extension registration closed already",
            ));
        }
        if registry.agents.iter().any(|a| a.name == name) {
            return Err(forbidden(
                "Extension.InvalidExtensionState",
                "Extension with this name already registered",
            ));
        }
        if registry.agents.len() >= MAX_EXTENSIONS {
            return Err(forbidden(
                "Extension.TooManyExtensions",
                format!("Extension limit ({MAX_EXTENSIONS}) reached"),
            ));
        }
        let id = uuid::Uuid::new_v4().to_string();
        registry.agents.push(Agent {
            id: id.clone(),
            name: name.to_owned(),
            external,
            invoke,
            shutdown,
            ready: false,
            queued: VecDeque::new(),
            waiter: None,
        });
        drop(registry);
        self.notify();
        let mut document = serde_json::json!({
            "functionName": function.name,
            "functionVersion": function.version,
            "handler": function.handler,
        });
        let wants_account =
            accept_feature.is_some_and(|f| f.split(',').any(|f| f.trim() == "accountId"));
        if wants_account {
            document["accountId"] = serde_json::Value::from(function.account_id.clone());
        }
        Ok((id, Bytes::from(document.to_string())))
    }

    /// `GET /2020-01-01/extension/event/next`: the extension is done with its last event;
    /// resolves with its next one. Pending forever once the environment is ending (no more
    /// events come; the process is ended with it).
    pub(crate) async fn next(&self, id: &str) -> Result<Bytes, Refusal> {
        let waiting = {
            let mut registry = self.lock();
            let agent = find(&mut registry, id)?;
            if agent.waiter.is_some() {
                return Err(forbidden(
                    "Extension.InvalidExtensionState",
                    format!("extension {} is already waiting for an event", agent.name),
                ));
            }
            match agent.queued.pop_front() {
                Some(event) => Ok(event),
                None => {
                    let (send, receive) = oneshot::channel();
                    agent.waiter = Some(send);
                    agent.ready = true;
                    Err(receive)
                }
            }
        };
        match waiting {
            Ok(event) => Ok(event),
            Err(receive) => {
                self.notify();
                match receive.await {
                    Ok(event) => Ok(event),
                    Err(_) => std::future::pending().await,
                }
            }
        }
    }

    /// `POST …/init/error` or `…/exit/error` with the extension's error type: the
    /// environment has failed.
    pub(crate) fn failed(
        &self,
        id: &str,
        failure: Failure,
        error_type: &str,
    ) -> Result<(), Refusal> {
        let mut registry = self.lock();
        let open = registry.open;
        let name = find(&mut registry, id)?.name.clone();
        if failure == Failure::Init && !open {
            return Err(forbidden(
                "Extension.InvalidExtensionState",
                "init/error after the init phase",
            ));
        }
        let kind = match failure {
            Failure::Init => INIT_ERROR,
            Failure::Exit => EXIT_ERROR,
        };
        registry
            .fatal
            .get_or_insert((kind, format!("extension {name} reported {error_type}")));
        drop(registry);
        self.notify();
        Ok(())
    }

    /// An external extension's process ended (`status` as Lambda words it).
    pub(crate) fn exited(&self, name: &str, status: &str) {
        let mut registry = self.lock();
        registry
            .fatal
            .get_or_insert((CRASH, format!("extension {name} exited: {status}")));
        drop(registry);
        self.notify();
    }

    /// The name extension `id` registered under.
    pub(crate) fn name_of(&self, id: &str) -> Option<String> {
        self.lock()
            .agents
            .iter()
            .find(|a| a.id == id)
            .map(|a| a.name.clone())
    }

    /// The registered extensions, with the events each asked for (Lambda's
    /// `platform.extension` events).
    pub(crate) fn registered_events(&self) -> Vec<(String, Vec<&'static str>)> {
        self.lock()
            .agents
            .iter()
            .map(|a| {
                let events = [("INVOKE", a.invoke), ("SHUTDOWN", a.shutdown)]
                    .into_iter()
                    .filter_map(|(name, on)| on.then_some(name))
                    .collect();
                (a.name.clone(), events)
            })
            .collect()
    }

    /// The failure that ended the environment, if one did.
    pub(crate) fn fatal(&self) -> Option<(&'static str, String)> {
        self.lock().fatal.clone()
    }

    /// Waits until every external extension started has registered; the failure if one
    /// failed first.
    pub(crate) async fn registered(&self) -> Result<(), (&'static str, String)> {
        self.wait_for(|r| {
            r.launched
                .iter()
                .all(|name| r.agents.iter().any(|a| &a.name == name))
        })
        .await
    }

    /// Closes registration: the init phase is over.
    pub(crate) fn close(&self) {
        self.lock().open = false;
    }

    /// Waits until every extension is done with its last event (waiting for the next); the
    /// failure if one failed first.
    pub(crate) async fn ready(&self) -> Result<(), (&'static str, String)> {
        self.wait_for(|r| r.agents.iter().all(|a| a.ready)).await
    }

    async fn wait_for(
        &self,
        done: impl Fn(&Registry) -> bool,
    ) -> Result<(), (&'static str, String)> {
        let mut changed = self.changed.subscribe();
        loop {
            {
                let registry = self.lock();
                if let Some(fatal) = &registry.fatal {
                    return Err(fatal.clone());
                }
                if done(&registry) {
                    return Ok(());
                }
            }
            if changed.changed().await.is_err() {
                return Ok(());
            }
        }
    }

    /// Hands `event` to the extensions registered for it; how many.
    pub(crate) fn dispatch(&self, event: &Event<'_>) -> usize {
        let document = event.document();
        let mut registry = self.lock();
        let mut handed = 0;
        for agent in &mut registry.agents {
            let wanted = if event.is_invoke() {
                agent.invoke
            } else {
                agent.shutdown
            };
            if !wanted {
                continue;
            }
            handed += 1;
            agent.ready = false;
            match agent.waiter.take() {
                Some(waiter) => {
                    if let Err(unsent) = waiter.send(document.clone()) {
                        agent.queued.push_back(unsent);
                    }
                }
                None => agent.queued.push_back(document.clone()),
            }
        }
        handed
    }

    /// Why the environment is shut down, as `SHUTDOWN` says: `spindown` (no longer
    /// needed), `timeout` or `failure`.
    pub(crate) fn shutdown_reason(&self) -> &'static str {
        self.lock().shutdown_reason.unwrap_or("spindown")
    }

    /// Records why the environment is being retired (the first reason stands).
    pub(crate) fn set_shutdown_reason(&self, reason: &'static str) {
        self.lock().shutdown_reason.get_or_insert(reason);
    }

    /// Whether any extension is registered for `INVOKE`.
    pub(crate) fn any_for_invoke(&self) -> bool {
        self.lock().agents.iter().any(|a| a.invoke)
    }

    /// How many extensions registered, and how many of them are external ones that asked
    /// for `SHUTDOWN`.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let registry = self.lock();
        let shutdown = registry
            .agents
            .iter()
            .filter(|a| a.external && a.shutdown)
            .count();
        (registry.agents.len(), shutdown)
    }
}

fn find<'a>(registry: &'a mut Registry, id: &str) -> Result<&'a mut Agent, Refusal> {
    registry
        .agents
        .iter_mut()
        .find(|a| a.id == id)
        .ok_or_else(|| {
            forbidden(
                "Extension.UnknownExtensionIdentifier",
                format!("Unknown extension {id}"),
            )
        })
}

/// The external extensions of `spec`: the files in its layers' `extensions` directory, by
/// name, in order.
pub(crate) fn external(spec: &crate::spec::FunctionSpec) -> Vec<(String, std::path::PathBuf)> {
    let Some(opt) = &spec.opt_dir else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(opt.join("extensions")) else {
        return Vec::new();
    };
    let mut found: Vec<(String, std::path::PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> FunctionInfo {
        FunctionInfo {
            name: "f".into(),
            version: "$LATEST".into(),
            handler: "app.handler".into(),
            account_id: "000000000000".into(),
        }
    }

    #[test]
    fn registration_follows_lambda_s_rules() {
        let ext = Extensions::new(vec!["agent".into()]);
        let body = br#"{"events":["INVOKE","SHUTDOWN"]}"#;
        let (id, doc) = ext
            .register("agent", body, Some("accountId"), &info())
            .unwrap();
        assert_eq!(id.len(), 36);
        let doc: serde_json::Value = serde_json::from_slice(&doc).unwrap();
        assert_eq!(doc["functionName"], "f");
        assert_eq!(doc["accountId"], "000000000000");
        // Twice under one name; an internal one asking for SHUTDOWN; no name; bad body.
        let twice = ext.register("agent", body, None, &info()).unwrap_err();
        assert_eq!(twice.error_type, "Extension.InvalidExtensionState");
        let internal = ext.register("inside", body, None, &info()).unwrap_err();
        assert_eq!(internal.error_type, "Extension.InvalidEventType");
        let nameless = ext.register("", body, None, &info()).unwrap_err();
        assert_eq!(nameless.error_type, "Extension.InvalidExtensionName");
        let bad = ext.register("x", b"{", None, &info()).unwrap_err();
        assert_eq!(
            (bad.status, bad.error_type),
            (StatusCode::FORBIDDEN, "InvalidRequestFormat")
        );
        let unknown = ext
            .register("x", br#"{"events":["BOOT"]}"#, None, &info())
            .unwrap_err();
        assert_eq!(unknown.error_type, "Extension.InvalidEventType");
        // Ten at most, then closed after init.
        for i in 0..9 {
            ext.register(&format!("i{i}"), br#"{"events":["INVOKE"]}"#, None, &info())
                .unwrap();
        }
        let eleventh = ext.register("one-more", b"{}", None, &info()).unwrap_err();
        assert_eq!(eleventh.error_type, "Extension.TooManyExtensions");
        ext.close();
        let late = ext.register("late", b"{}", None, &info()).unwrap_err();
        assert_eq!(late.error_type, "Extension.RegistrationClosed");
    }

    #[tokio::test]
    async fn an_invocation_is_done_when_every_extension_asks_for_its_next_event() {
        let ext = std::sync::Arc::new(Extensions::new(vec!["agent".into()]));
        let (id, _) = ext
            .register("agent", br#"{"events":["INVOKE"]}"#, None, &info())
            .unwrap();
        ext.registered().await.unwrap();
        let waiting = tokio::spawn({
            let ext = ext.clone();
            let id = id.clone();
            async move { ext.next(&id).await }
        });
        ext.ready().await.unwrap();
        let event = Event::Invoke {
            request_id: "r1",
            deadline_ms: 1,
            function_arn: "arn",
            trace_id: Some("Root=1-2-3"),
        };
        assert_eq!(ext.dispatch(&event), 1);
        let got: serde_json::Value =
            serde_json::from_slice(&waiting.await.unwrap().unwrap()).unwrap();
        assert_eq!(got["eventType"], "INVOKE");
        assert_eq!(got["requestId"], "r1");
        assert_eq!(got["tracing"]["value"], "Root=1-2-3");
        // Not done until it asks again.
        let not_yet = tokio::time::timeout(std::time::Duration::from_millis(50), ext.ready()).await;
        assert!(not_yet.is_err());
        let again = tokio::spawn({
            let ext = ext.clone();
            async move { ext.next(&id).await }
        });
        ext.ready().await.unwrap();
        again.abort();
        // A failure ends the wait.
        ext.exited("agent", "exit status 1");
        assert_eq!(ext.ready().await.unwrap_err().0, CRASH);
    }

    #[tokio::test]
    async fn an_unknown_identifier_is_refused() {
        let ext = Extensions::new(Vec::new());
        let refused = ext.next("nobody").await.unwrap_err();
        assert_eq!(refused.error_type, "Extension.UnknownExtensionIdentifier");
        let refused = ext.failed("nobody", Failure::Exit, "Boom").unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
    }
}
