//! The `redirect` action: a `Location` built from a template of the request's parts.
//!
//! Each part (protocol, host, port, path, query) may use `#{protocol}`, `#{host}`,
//! `#{port}`, `#{path}` and `#{query}`. ALB's `#{path}` is the original path **without** its
//! leading `/` (the default path template is `/#{path}`); `#{host}` is the `Host` header
//! without its port; `#{port}` is the listener's port. The `Location` always carries the port
//! (`https://example.com:443/…`), and `?query` only when the query is not empty.

use crate::body::{Body, boxed};
use crate::error::error_page;
use http::{HeaderValue, Response, StatusCode, header};

/// A compiled redirect.
#[derive(Debug, Clone, PartialEq)]
pub struct Redirect {
    protocol: Template,
    host: Template,
    port: Template,
    path: Template,
    query: Template,
    status: StatusCode,
}

/// What the placeholders stand for in one request.
#[derive(Debug, Clone, Copy)]
pub struct Original<'a> {
    /// `http` or `https`.
    pub protocol: &'a str,
    /// The `Host` header without its port.
    pub host: &'a str,
    /// The listener's port.
    pub port: u16,
    /// The path, with its leading `/`.
    pub path: &'a str,
    /// The query string, without `?`.
    pub query: &'a str,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Protocol,
    Host,
    Port,
    Path,
    Query,
}

#[derive(Debug, Clone, PartialEq)]
struct Template(Vec<Piece>);

impl Template {
    fn compile(text: &str) -> Self {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("#{") {
            let Some(len) = rest[start..].find('}') else {
                break;
            };
            let piece = match &rest[start + 2..start + len] {
                "protocol" => Piece::Protocol,
                "host" => Piece::Host,
                "port" => Piece::Port,
                "path" => Piece::Path,
                "query" => Piece::Query,
                _ => {
                    // Not a placeholder: keep the text up to and including `#{`.
                    pieces.push(Piece::Text(rest[..start + 2].to_owned()));
                    rest = &rest[start + 2..];
                    continue;
                }
            };
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_owned()));
            }
            pieces.push(piece);
            rest = &rest[start + len + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Self(pieces)
    }

    fn expand(&self, original: &Original<'_>, out: &mut String) {
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Protocol => out.push_str(original.protocol),
                Piece::Host => out.push_str(original.host),
                Piece::Port => out.push_str(&original.port.to_string()),
                Piece::Path => {
                    out.push_str(original.path.strip_prefix('/').unwrap_or(original.path))
                }
                Piece::Query => out.push_str(original.query),
            }
        }
    }
}

impl Redirect {
    /// Compiles the configured redirect.
    pub fn compile(config: &portico_config::Redirect) -> Self {
        Self {
            protocol: Template::compile(&config.protocol),
            host: Template::compile(&config.host),
            port: Template::compile(&config.port),
            path: Template::compile(&config.path),
            query: Template::compile(&config.query),
            status: StatusCode::from_u16(config.status_code.code())
                .unwrap_or(StatusCode::MOVED_PERMANENTLY),
        }
    }

    /// The `Location` for a request.
    pub fn location(&self, original: &Original<'_>) -> String {
        let mut protocol = String::new();
        self.protocol.expand(original, &mut protocol);
        let mut url = protocol.to_ascii_lowercase();
        url.push_str("://");
        self.host.expand(original, &mut url);
        url.push(':');
        self.port.expand(original, &mut url);
        self.path.expand(original, &mut url);
        let mut query = String::new();
        self.query.expand(original, &mut query);
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query);
        }
        url
    }

    /// The redirect response for a request: ALB's page for the status, with `Location`.
    pub fn respond(&self, original: &Original<'_>) -> Response<Body> {
        let mut response = boxed(error_page(self.status));
        let location = self.location(original);
        match HeaderValue::from_str(&location) {
            Ok(value) => {
                response.headers_mut().insert(header::LOCATION, value);
                response
            }
            // Only a request whose own parts cannot form a URL ends here.
            Err(_) => boxed(error_page(StatusCode::BAD_REQUEST)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_config::RedirectStatus;

    fn redirect(edit: impl FnOnce(&mut portico_config::Redirect)) -> Redirect {
        let mut config = portico_config::Redirect {
            protocol: "#{protocol}".into(),
            host: "#{host}".into(),
            port: "#{port}".into(),
            path: "/#{path}".into(),
            query: "#{query}".into(),
            status_code: RedirectStatus::Permanent,
        };
        edit(&mut config);
        Redirect::compile(&config)
    }

    const ORIGINAL: Original<'static> = Original {
        protocol: "http",
        host: "example.com",
        port: 8080,
        path: "/old/x",
        query: "k=v",
    };

    #[test]
    fn path_placeholder_has_no_leading_slash() {
        let r = redirect(|c| c.path = "/new/#{path}".into());
        assert_eq!(
            r.location(&ORIGINAL),
            "http://example.com:8080/new/old/x?k=v"
        );
    }

    #[test]
    fn https_upgrade_keeps_the_rest_and_empty_query_has_no_question_mark() {
        let r = redirect(|c| {
            c.protocol = "HTTPS".into();
            c.port = "443".into();
            c.status_code = RedirectStatus::Temporary;
        });
        let mut o = ORIGINAL;
        o.query = "";
        assert_eq!(r.location(&o), "https://example.com:443/old/x");
        assert_eq!(r.respond(&o).status(), 302);
    }

    #[test]
    fn placeholders_mix_with_text_and_unknown_ones_stay() {
        let r = redirect(|c| {
            c.host = "www.#{host}".into();
            c.query = "from=#{port}&#{query}&x=#{nope}".into();
        });
        assert_eq!(
            r.location(&ORIGINAL),
            "http://www.example.com:8080/old/x?from=8080&k=v&x=#{nope}"
        );
    }
}
