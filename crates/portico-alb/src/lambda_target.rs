//! One request to a Lambda target group: body limit, event, invocation, reply.

use crate::access_log::Outcome;
use crate::body::{Body, boxed};
use crate::error::LbError;
use crate::event::{AlbEvent, RequestParts};
use crate::forwarded::{self, Origin};
use crate::reply;
use crate::target_group::LambdaTargetGroup;
use bytes::Bytes;
use http::{Request, Response, header};
use portico_invoke::{Invocation, Invoker};

/// Largest request body a Lambda target accepts: 1 MB.
pub const MAX_REQUEST_BODY_BYTES: usize = 1024 * 1024;

/// Invokes the group's function with the ALB event for `req` and turns its reply into the
/// response.
pub async fn forward(
    tg: &LambdaTargetGroup,
    (invoker, body_deadline): (&dyn Invoker, std::time::Duration),
    origin: Origin<'_>,
    req: Request<Body>,
    outcome: &mut Outcome,
) -> Result<Response<Body>, LbError> {
    if req.headers().contains_key(header::UPGRADE) {
        return Err(LbError::UpgradeRefused);
    }
    // A group whose function is not registered yet has no target, as ALB says it.
    if tg.function.is_empty() {
        return Err(LbError::NoTargets);
    }
    let (mut parts, body) = req.into_parts();
    let body = crate::handler::read_body(
        &parts.headers,
        body,
        (MAX_REQUEST_BODY_BYTES, body_deadline),
    )
    .await?;
    forwarded::apply(&mut parts.headers, origin);
    let trace_id = parts.headers.get(forwarded::X_AMZN_TRACE_ID).cloned();
    outcome.trace_id = trace_id.clone();
    // ALB fails the invocation (`LambdaBadRequest`) when headers or a text body are not
    // UTF-8: the event is JSON.
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            std::str::from_utf8(v.as_bytes())
                .map(|v| (k.as_str().to_owned(), v.to_owned()))
                .map_err(|_| LbError::NotUtf8("headers"))
        })
        .collect::<Result<_, _>>()?;
    let request = RequestParts {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers,
        body: &body,
    };
    if !body.is_empty()
        && crate::event::is_text_body(&request)
        && std::str::from_utf8(&body).is_err()
    {
        return Err(LbError::NotUtf8("body"));
    }
    let jwt = parts
        .extensions
        .get::<portico_gateway::Grant>()
        .and_then(|g| g.jwt.as_deref());
    let event = AlbEvent::new(&request, &tg.arn, tg.multi_value_headers)
        .with_jwt(jwt)
        .to_json();
    outcome.mark_dispatched();
    let output = invoker
        .invoke(Invocation {
            function: tg.function.clone(),
            payload: Bytes::from(event),
            trace_id: trace_id
                .as_ref()
                .and_then(|t| t.to_str().ok())
                .map(str::to_owned),
            ..Invocation::default()
        })
        .await;
    outcome.mark_answered();
    let output = output?;
    if let Some(failure) = output.function_error {
        return Err(LbError::FunctionFailed {
            error_type: failure.error_type,
        });
    }
    let response = reply::into_response(&output.payload, tg.multi_value_headers)?;
    outcome.target_status = Some(response.status().as_u16());
    Ok(boxed(response))
}

/// ALB's health check of a Lambda target group: the function gets a `GET` event for the
/// configured path with `user-agent: ELB-HealthChecker/2.0`, and is healthy when it replies
/// without an error with a status the matcher accepts.
pub struct LambdaProbe {
    /// The group checked.
    pub group: LambdaTargetGroup,
    /// How functions are called.
    pub invoker: std::sync::Arc<dyn Invoker>,
    /// The path in the event.
    pub path: String,
    /// Which statuses count as healthy.
    pub matcher: portico_config::Matcher,
}

impl LambdaProbe {
    /// Starts checking `group` with `settings` until `shutdown`.
    pub fn start(
        group: &LambdaTargetGroup,
        invoker: &std::sync::Arc<dyn Invoker>,
        settings: &portico_config::HealthCheckSettings,
        tasks: &tokio_util::task::TaskTracker,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> std::sync::Arc<portico_health::Status> {
        let probe = Self {
            group: group.clone(),
            invoker: invoker.clone(),
            path: settings.path.clone(),
            matcher: settings.matcher.clone(),
        };
        let status = std::sync::Arc::new(portico_health::Status::default());
        let (schedule, thresholds) = crate::target_group::check_plan(settings);
        tasks.spawn(portico_health::run(
            probe,
            status.clone(),
            schedule,
            thresholds,
            shutdown.clone(),
        ));
        status
    }
}

impl portico_health::Probe for LambdaProbe {
    async fn check(&self) -> Result<(), portico_health::Failure> {
        use portico_health::Failure;
        let request = RequestParts {
            method: "GET",
            path: &self.path,
            query: None,
            headers: vec![("user-agent".into(), portico_health::USER_AGENT.into())],
            body: &[],
        };
        let event = AlbEvent::new(&request, &self.group.arn, self.group.multi_value_headers);
        let output = self
            .invoker
            .invoke(Invocation {
                function: self.group.function.clone(),
                payload: Bytes::from(event.to_json()),
                ..Invocation::default()
            })
            .await
            .map_err(|e| Failure::Failed(e.to_string()))?;
        if let Some(failure) = output.function_error {
            return Err(Failure::Failed(format!(
                "function error {}",
                failure.error_type
            )));
        }
        let response = reply::into_response(&output.payload, self.group.multi_value_headers)
            .map_err(|e| Failure::Failed(e.to_string()))?;
        let status = response.status().as_u16();
        if self.matcher.accepts(status) {
            Ok(())
        } else {
            Err(Failure::Status(status))
        }
    }

    fn describe(&self) -> String {
        format!(
            "lambda target group {} ({})",
            self.group.name, self.group.function
        )
    }
}
