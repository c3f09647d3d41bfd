//! `portico invoke`, `portico logs`, `portico status` and `portico ips`: the command-line
//! side of a running portico's Invoke API and admin API.
//!
//! The API's address comes from `--endpoint`, or from the `[invoke_api]` or `[admin_api]`
//! section of the topology file given with `--config` (the embedded demo's when neither is
//! given).

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use tokio::net::TcpStream;

/// Which of portico's APIs a command talks to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Api {
    /// The Lambda Invoke API (`[invoke_api]`).
    Invoke,
    /// The admin API (`[admin_api]`).
    Admin,
}

/// A running portico's API, and the key its requests are signed with.
pub(crate) struct Endpoint {
    /// Where it listens.
    pub(crate) address: SocketAddr,
    /// The signing scope's service: `lambda` or `elasticloadbalancing`.
    service: &'static str,
    /// The key requests are signed with: the first of the API's `access_keys` in the
    /// topology file, else `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`; none, unsigned.
    key: Option<portico_sigv4::AccessKey>,
}

/// The API `which` of a running portico: where it listens and how to sign for it.
pub(crate) fn endpoint(
    which: Api,
    endpoint: Option<&str>,
    config: Option<&Path>,
) -> anyhow::Result<Endpoint> {
    let service = match which {
        Api::Invoke => "lambda",
        Api::Admin => "elasticloadbalancing",
    };
    let from_environment = || {
        let id = std::env::var("AWS_ACCESS_KEY_ID").ok()?;
        let secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok()?;
        Some(portico_sigv4::AccessKey { id, secret })
    };
    if let Some(url) = endpoint {
        let authority = url
            .strip_prefix("http://")
            .unwrap_or(url)
            .trim_end_matches('/');
        let address = authority
            .parse()
            .with_context(|| format!("--endpoint {url:?}: expected http://ADDRESS:PORT"))?;
        let key = match config {
            Some(path) => section_key(&portico_config::load_file(path)?, which),
            None => None,
        };
        return Ok(Endpoint {
            address,
            service,
            key: key.or_else(from_environment),
        });
    }
    let config = match config {
        Some(path) => portico_config::load_file(path)?,
        None => portico_config::parse(crate::topology::DEFAULT_CONFIG, "embedded default")?,
    };
    let (section, enabled, address, port) = match which {
        Api::Invoke => {
            let api = &config.invoke_api;
            ("invoke_api", api.enabled, api.address, api.port.0)
        }
        Api::Admin => {
            let api = &config.admin_api;
            ("admin_api", api.enabled, api.address, api.port.0)
        }
    };
    if !enabled {
        bail!("the topology has this API disabled ([{section}] enabled = false)");
    }
    if port == 0 {
        bail!("the topology's [{section}] port is chosen at start (0): pass --endpoint");
    }
    // A wildcard bind is reached on loopback.
    let ip = match address {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(Endpoint {
        address: SocketAddr::new(ip, port),
        service,
        key: section_key(&config, which).or_else(from_environment),
    })
}

/// The first access key of the API's section of `config`.
fn section_key(config: &portico_config::Config, which: Api) -> Option<portico_sigv4::AccessKey> {
    let keys = match which {
        Api::Invoke => &config.invoke_api.access_keys,
        Api::Admin => &config.admin_api.access_keys,
    };
    keys.first().map(crate::topology::access_key)
}

/// GETs `path` from the admin API at `api`; the body of a 200.
async fn admin_get(api: &Endpoint, path: &str) -> anyhow::Result<Bytes> {
    let request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(http::header::HOST, api.address.to_string())
        .body(Full::new(Bytes::new()))?;
    let response = send(api, request).await?;
    if response.status() != StatusCode::OK {
        bail!("{}", refusal(&response));
    }
    Ok(response.into_body().collect().await?.to_bytes())
}

/// Prints the accelerator's static IPs as `ip-ranges.json`.
pub(crate) async fn ips(api: &Endpoint) -> anyhow::Result<()> {
    let body = admin_get(api, "/ip-ranges.json")
        .await
        .context("GET /ip-ranges.json (does this node run the accelerator?)")?;
    let doc: serde_json::Value =
        serde_json::from_slice(&body).context("ip-ranges.json is not JSON")?;
    writeln!(std::io::stdout().lock(), "{doc:#}")?;
    Ok(())
}

/// Prints what the admin API's `/status` reports: as JSON with `json`, else as a table.
/// The node's hold on the static IPs: its daemon, its verdict, each static IP, its peers.
fn print_ha(out: &mut impl Write, ha: &serde_json::Value) -> std::io::Result<()> {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    let daemon = &ha["daemon"];
    writeln!(
        out,
        "high availability {}  node {} ({})  {} {}  restarts {}",
        text(&ha["mode"]),
        text(&ha["node"]),
        text(&ha["address"]),
        text(&daemon["program"]),
        match daemon["pid"].as_u64() {
            Some(pid) => format!("running, pid {pid}"),
            None => "not running".to_owned(),
        },
        daemon["restarts"],
    )?;
    let health = &ha["health"];
    writeln!(
        out,
        "  health: {} ({}){}",
        if health["serving"].as_bool() == Some(true) {
            "serving"
        } else {
            "not serving"
        },
        text(&health["reason"]),
        if ha["released"].as_bool() == Some(true) {
            "; static IPs given up (stopping)"
        } else {
            ""
        }
    )?;
    if let Some(error) = ha["error"].as_str() {
        writeln!(out, "  error: {error}")?;
    }
    let vrrp = ha["mode"] == "vrrp";
    if vrrp {
        writeln!(
            out,
            "  {:<40} {:<8} {:<16} {:<16} {:>8}",
            "static IP", "state", "held by", "preferred node", "priority"
        )?;
    } else {
        writeln!(
            out,
            "  {:<40} {:<14} announced by",
            "static IP", "announced here"
        )?;
    }
    for ip in ha["static_ips"].as_array().into_iter().flatten() {
        if vrrp {
            writeln!(
                out,
                "  {:<40} {:<8} {:<16} {:<16} {:>8}",
                text(&ip["address"]),
                text(&ip["state"]),
                text(&ip["held_by"]),
                text(&ip["preferred_node"]),
                ip["priority"],
            )?;
        } else {
            let by: Vec<&str> = ip["announced_by"]
                .as_array()
                .map(|a| a.iter().filter_map(|n| n.as_str()).collect())
                .unwrap_or_default();
            writeln!(
                out,
                "  {:<40} {:<14} {}",
                text(&ip["address"]),
                if ip["announced_here"].as_bool() == Some(true) {
                    "yes"
                } else {
                    "no"
                },
                if by.is_empty() {
                    "-".to_owned()
                } else {
                    by.join(", ")
                }
            )?;
        }
    }
    for peer in ha["peers"].as_array().into_iter().flatten() {
        if vrrp {
            writeln!(
                out,
                "  peer node {} {} {}",
                text(&peer["node"]),
                text(&peer["address"]),
                if peer["present"].as_bool() == Some(true) {
                    "present"
                } else {
                    "not heard"
                }
            )?;
        } else {
            writeln!(
                out,
                "  peer {} AS{} {} {}",
                text(&peer["address"]),
                peer["asn"],
                text(&peer["state"]),
                text(&peer["info"])
            )?;
        }
    }
    let chance = &ha["second_chance"];
    if chance["enabled"].as_bool() == Some(true) {
        let live: Vec<&str> = chance["live"]
            .as_array()
            .map(|a| a.iter().filter_map(|n| n.as_str()).collect())
            .unwrap_or_default();
        writeln!(
            out,
            "  second chance: live nodes {}; stray packets go on to {}",
            live.join(", "),
            text(&chance["next"])
        )?;
    } else if chance["enabled"].as_bool() == Some(false) {
        writeln!(out, "  second chance: off")?;
    }
    Ok(())
}

pub(crate) async fn status(api: &Endpoint, json: bool) -> anyhow::Result<()> {
    let body = admin_get(api, "/status").await?;
    let doc: serde_json::Value = serde_json::from_slice(&body).context("status is not JSON")?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{doc:#}")?;
        return Ok(());
    }
    let ms = |v: &serde_json::Value| {
        v.as_f64()
            .map_or_else(|| "-".to_owned(), |m| format!("{m:.2} ms"))
    };
    if let Some(acc) = doc.get("accelerator").filter(|a| !a.is_null()) {
        let addresses: Vec<&str> = acc["static_addresses"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        writeln!(
            out,
            "accelerator {}  {}",
            acc["name"].as_str().unwrap_or("-"),
            addresses.join(", ")
        )?;
        for l in acc["listeners"].as_array().into_iter().flatten() {
            let ports: Vec<String> = l["ports"]
                .as_array()
                .map(|p| p.iter().map(ToString::to_string).collect())
                .unwrap_or_default();
            writeln!(
                out,
                "  listener {} {}",
                l["protocol"].as_str().unwrap_or("-"),
                ports.join(",")
            )?;
            writeln!(
                out,
                "  {:<16} {:<10} {:>10} {:>5} {:>7} {:>12}",
                "endpoint group", "health", "rtt", "dial", "share", "connections"
            )?;
            for g in l["endpoint_groups"].as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "  {:<16} {:<10} {:>10} {:>4}% {:>6.1}% {:>12}",
                    g["region"].as_str().unwrap_or("-"),
                    if g["healthy"].as_bool() == Some(true) {
                        "healthy"
                    } else {
                        "unhealthy"
                    },
                    ms(&g["rtt_ms"]),
                    g["traffic_dial_percentage"],
                    g["share_of_connections"].as_f64().unwrap_or(0.0) * 100.0,
                    g["connections"],
                )?;
                for e in g["endpoints"].as_array().into_iter().flatten() {
                    writeln!(
                        out,
                        "    {:<22} {:<10} {:>10} weight {:<3} {:>6} connections",
                        e["address"].as_str().unwrap_or("-"),
                        e["health"].as_str().unwrap_or("-"),
                        ms(&e["rtt_ms"]),
                        e["weight"],
                        e["connections"],
                    )?;
                }
            }
        }
    }
    if let Some(ha) = doc.get("ha").filter(|h| !h.is_null()) {
        print_ha(&mut out, ha)?;
    }
    writeln!(out, "target groups")?;
    for tg in doc["target_groups"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "  {} ({})",
            tg["name"].as_str().unwrap_or("-"),
            tg["target_type"].as_str().unwrap_or("-")
        )?;
        for t in tg["targets"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "    {:<40} {}",
                t["id"].as_str().unwrap_or("-"),
                t["health"].as_str().unwrap_or("-")
            )?;
        }
    }
    let limits = &doc["limits"];
    let descriptors = &limits["descriptors"];
    if descriptors.is_object() {
        writeln!(
            out,
            "client connections: {} of {} descriptors held ({} reserved), {} refused{}",
            descriptors["held"],
            descriptors["budget"],
            descriptors["reserve"],
            descriptors["refused"],
            match limits["per_client"].as_object() {
                Some(p) => format!(
                    "; at most {} per client on the static IPs, {} refused",
                    p["limit"], p["refused"]
                ),
                None => String::new(),
            }
        )?;
    }
    Ok(())
}

/// What `portico invoke` prints and how it ends.
pub(crate) struct Invoked {
    /// The function failed (`X-Amz-Function-Error`).
    pub(crate) function_failed: bool,
}

/// Invokes `function` synchronously with `payload` and writes its reply to stdout, and with
/// `tail` the end of its log to stderr.
pub(crate) async fn invoke(
    api: &Endpoint,
    function: &str,
    payload: Option<&str>,
    tail: bool,
) -> anyhow::Result<Invoked> {
    let payload = payload.unwrap_or("{}");
    serde_json::from_str::<serde::de::IgnoredAny>(payload).context("--payload must be JSON")?;
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("/2015-03-31/functions/{function}/invocations"))
        .header(http::header::HOST, api.address.to_string())
        .header("X-Amz-Invocation-Type", "RequestResponse")
        .header("X-Amz-Log-Type", if tail { "Tail" } else { "None" })
        .body(Full::new(Bytes::from(payload.to_owned())))?;
    let response = send(api, request).await?;
    let status = response.status();
    let function_error = response
        .headers()
        .get("X-Amz-Function-Error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let log = response
        .headers()
        .get("X-Amz-Log-Result")
        .and_then(|v| BASE64.decode(v.as_bytes()).ok());
    let refusal = refusal(&response);
    let body = response.into_body().collect().await?.to_bytes();
    if status != StatusCode::OK {
        bail!("{refusal}{}", message(&body));
    }
    if let Some(log) = log {
        std::io::stderr().write_all(&log)?;
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&body)?;
    out.write_all(b"\n")?;
    if let Some(kind) = &function_error {
        eprintln!("portico: function {function} failed ({kind})");
    }
    Ok(Invoked {
        function_failed: function_error.is_some(),
    })
}

/// Writes `function`'s recent log to stdout; with `follow`, keeps writing new lines until
/// the server goes away.
pub(crate) async fn logs(api: &Endpoint, function: &str, follow: bool) -> anyhow::Result<()> {
    let request = Request::builder()
        .uri(format!(
            "/portico/v1/functions/{function}/logs{}",
            if follow { "?follow=true" } else { "" }
        ))
        .header(http::header::HOST, api.address.to_string())
        .body(Full::new(Bytes::new()))?;
    let response = send(api, request).await?;
    let status = response.status();
    let refusal = refusal(&response);
    let mut body = response.into_body();
    if status != StatusCode::OK {
        let text = body.collect().await?.to_bytes();
        bail!("{refusal}{}", message(&text));
    }
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            let mut out = std::io::stdout().lock();
            out.write_all(&data)?;
            out.flush()?;
        }
    }
    Ok(())
}

/// `STATUS ExceptionName: ` of an AWS error answer.
fn refusal(response: &http::Response<Incoming>) -> String {
    let kind = response
        .headers()
        .get("x-amzn-ErrorType")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("error");
    format!("{} {kind}: ", response.status().as_u16())
}

/// The `message` of an AWS error document, or the body as text.
fn message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|doc| doc.get("message")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim_end().to_owned())
}

/// Sends `request` to `api`, signed when there is a key.
async fn send(
    api: &Endpoint,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<http::Response<Incoming>> {
    let (mut parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    if let Some(key) = &api.key {
        let scope = ("us-east-1", api.service);
        portico_sigv4::sign(&mut parts, &body, key, scope, std::time::SystemTime::now());
    }
    let request = Request::from_parts(parts, Full::new(body));
    let address = api.address;
    let stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("cannot reach portico's API at {address}: is portico up?"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(error) = conn.await {
            tracing::debug!(%error, "invoke API connection ended");
        }
    });
    Ok(sender.send_request(request).await?)
}
