//! What `portico up` prints once everything is listening: the static addresses and the
//! routes behind them, in a form a person reads at a glance.

use std::fmt::Write;
use std::net::SocketAddr;

/// The facts gathered while binding, printed once at start.
#[derive(Debug, Default)]
pub(crate) struct Banner {
    pub(crate) accelerator: Option<String>,
    /// `(address, protocol)` of every static address and port.
    pub(crate) static_addresses: Vec<(SocketAddr, &'static str)>,
    /// One line per hop, already worded.
    pub(crate) routes: Vec<String>,
    /// Load balancer listeners: `(load balancer, address)`.
    pub(crate) load_balancers: Vec<(String, &'static str, SocketAddr)>,
    /// Where the Lambda Invoke API listens, when it is enabled.
    pub(crate) invoke_api: Option<SocketAddr>,
    /// Where the admin API listens, when it is enabled.
    pub(crate) admin_api: Option<SocketAddr>,
    /// A function to show in the example commands.
    pub(crate) example_function: Option<String>,
}

impl Banner {
    /// The text printed to stdout.
    pub(crate) fn render(&self) -> String {
        let mut out = String::from("portico is up\n");
        if let Some(name) = &self.accelerator {
            let _ = writeln!(out, "\n  accelerator {name:?}");
            for (addr, proto) in &self.static_addresses {
                let _ = writeln!(out, "    static address  {addr}  ({proto})");
            }
        }
        let _ = writeln!(out, "\n  load balancers");
        for (name, scheme, addr) in &self.load_balancers {
            let _ = writeln!(out, "    load balancer {name}  {scheme}://{addr}");
        }
        if let Some(addr) = self.invoke_api {
            let _ = writeln!(out, "\n  Lambda Invoke API (aws lambda --endpoint-url)");
            let _ = writeln!(out, "    invoke api  http://{addr}");
        }
        if let Some(addr) = self.admin_api {
            let _ = writeln!(out, "\n  admin API (aws elbv2 --endpoint-url)");
            let _ = writeln!(out, "    admin api  http://{addr}");
        }
        let _ = writeln!(out, "\n  routes");
        for route in &self.routes {
            let _ = writeln!(out, "    {route}");
        }
        // A blank line always closes the routes, so a reader knows the banner is complete.
        out.push('\n');
        if let Some((addr, _)) = self.static_addresses.first() {
            let _ = writeln!(out, "  try:  curl 'http://{addr}/hello?name=world'");
        }
        if let (Some(api), Some(function)) = (self.invoke_api, &self.example_function) {
            let _ = writeln!(
                out,
                "        portico invoke {function} --payload '{{\"hi\":1}}' --endpoint http://{api}"
            );
            let _ = writeln!(
                out,
                "        aws lambda invoke --endpoint-url http://{api} --function-name {function} --payload '{{\"hi\":1}}' --cli-binary-format raw-in-base64-out /dev/stdout   # AWS CLI v2"
            );
        }
        out
    }
}
