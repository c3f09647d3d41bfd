//! Listener rule conditions, compiled once at load and matched per request, with ALB's rules:
//! the values of one condition are OR'ed, the conditions of one rule are AND'ed.
//!
//! | condition | compared with | case | wildcards |
//! |---|---|---|---|
//! | `host-header` | the `Host` header without its port | insensitive | `*` `?` |
//! | `path-pattern` | the path, without the query string | sensitive | `*` `?` |
//! | `http-header` | every value of the named header | insensitive (name and value) | in values |
//! | `http-request-method` | the method | sensitive | none |
//! | `query-string` | each `key=value` pair, key optional | insensitive | `*` `?` |
//! | `source-ip` | the client address (from PROXY v2 when the listener reads it) | — | CIDR |
//!
//! A `\` makes the next `*` or `?` literal. Nothing is parsed per request beyond splitting the
//! query string: patterns are compiled into [`Pattern`]s here.

use ipnet::IpNet;
use std::net::IpAddr;

/// A compiled wildcard pattern: `*` matches any run of characters (also none), `?` exactly
/// one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    tokens: Vec<Token>,
    case_insensitive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    AnyOne,
    AnyRun,
}

impl Pattern {
    /// Compiles `text`; with `case_insensitive`, letters match either case.
    pub fn new(text: &str, case_insensitive: bool) -> Self {
        let mut tokens = Vec::with_capacity(text.len());
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            tokens.push(match c {
                '\\' => match chars.next() {
                    Some(escaped) => Token::Literal(fold(escaped, case_insensitive)),
                    None => Token::Literal('\\'),
                },
                '*' => {
                    if tokens.last() == Some(&Token::AnyRun) {
                        continue;
                    }
                    Token::AnyRun
                }
                '?' => Token::AnyOne,
                c => Token::Literal(fold(c, case_insensitive)),
            });
        }
        Self {
            tokens,
            case_insensitive,
        }
    }

    /// Whether `text` matches the whole pattern. Linear in practice: one backtrack point (the
    /// last `*`) is kept, the classic greedy wildcard match.
    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text
            .chars()
            .map(|c| fold(c, self.case_insensitive))
            .collect();
        let (mut t, mut p) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match self.tokens.get(p) {
                Some(Token::AnyRun) => {
                    star = Some((p, t));
                    p += 1;
                }
                Some(Token::AnyOne) => {
                    t += 1;
                    p += 1;
                }
                Some(Token::Literal(c)) if *c == text[t] => {
                    t += 1;
                    p += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        p = sp + 1;
                        t = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        self.tokens
            .get(p..)
            .unwrap_or_default()
            .iter()
            .all(|t| *t == Token::AnyRun)
    }
}

fn fold(c: char, case_insensitive: bool) -> char {
    if case_insensitive {
        c.to_ascii_lowercase()
    } else {
        c
    }
}

/// One compiled condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `host-header`.
    HostHeader(Vec<Pattern>),
    /// `path-pattern`.
    PathPattern(Vec<Pattern>),
    /// `http-header`: the header name and value patterns.
    HttpHeader {
        /// The header's name.
        name: http::HeaderName,
        /// Patterns any value may match.
        values: Vec<Pattern>,
    },
    /// `http-request-method`: exact, case-sensitive names.
    HttpRequestMethod(Vec<String>),
    /// `query-string`: pairs, any of which may match one pair of the query.
    QueryString(Vec<QueryPair>),
    /// `source-ip`: networks the client address may be in.
    SourceIp(Vec<IpNet>),
}

/// One `key=value` pattern of a `query-string` condition; without a key, any key matches.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryPair {
    /// The key's pattern, if one is given.
    pub key: Option<Pattern>,
    /// The value's pattern.
    pub value: Pattern,
}

/// `path` with its dot segments removed (RFC 3986 §5.2.4), `%2e` counted as a dot: what
/// rules match, so that `..` cannot walk a request out of the prefix a rule names. Most paths
/// have none and are returned as they are.
pub fn normalize_path(path: &str) -> std::borrow::Cow<'_, str> {
    // Without allocating: this looks at every request's path.
    let dot = |b: &[u8]| b == b"." || b.eq_ignore_ascii_case(b"%2e");
    let is_dot = |segment: &str| dot(segment.as_bytes());
    let is_dot_dot = |segment: &str| {
        let b = segment.as_bytes();
        [1, 3]
            .into_iter()
            .any(|k| b.len() > k && dot(&b[..k]) && dot(&b[k..]))
    };
    if !path
        .split('/')
        .any(|segment| is_dot(segment) || is_dot_dot(segment))
    {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut kept: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, segment) in segments.iter().enumerate() {
        if is_dot(segment) {
            trailing_slash = i == last;
        } else if is_dot_dot(segment) {
            kept.pop();
            trailing_slash = i == last;
        } else {
            kept.push(segment);
            trailing_slash = false;
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    std::borrow::Cow::Owned(out)
}

/// What a condition looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The method.
    pub method: &'a str,
    /// The path, without the query string.
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    /// The headers.
    pub headers: &'a http::HeaderMap,
    /// The client's address.
    pub source: IpAddr,
}

impl Condition {
    /// Whether `request` satisfies this condition (any of its values).
    pub fn matches(&self, request: &RequestView<'_>) -> bool {
        match self {
            Self::HostHeader(patterns) => {
                let Some(host) = request
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                else {
                    return false;
                };
                let host = strip_port(host);
                patterns.iter().any(|p| p.matches(host))
            }
            Self::PathPattern(patterns) => patterns.iter().any(|p| p.matches(request.path)),
            Self::HttpHeader { name, values } => request
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| values.iter().any(|p| p.matches(v))),
            Self::HttpRequestMethod(methods) => methods.iter().any(|m| m == request.method),
            Self::QueryString(pairs) => request.query.is_some_and(|query| {
                query.split('&').filter(|s| !s.is_empty()).any(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    pairs.iter().any(|want| {
                        want.key.as_ref().is_none_or(|k| k.matches(key))
                            && want.value.matches(value)
                    })
                })
            }),
            Self::SourceIp(networks) => {
                let source = match request.source {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
                    v4 => v4,
                };
                networks.iter().any(|n| n.contains(&source))
            }
        }
    }
}

/// `host` without a trailing `:port` (an IPv6 literal keeps its brackets).
pub fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i)
            if !host[i..].contains(']') && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            &host[..i]
        }
        _ => host,
    }
}

/// A rule's conditions; all must hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Conditions(pub Vec<Condition>);

impl Conditions {
    /// Compiles a rule's configured conditions (validated: limits are ALB's). Fails only on
    /// a header name that is not a valid HTTP token.
    pub fn compile(conditions: &[portico_config::RuleCondition]) -> Result<Self, String> {
        use portico_config::RuleCondition as C;
        let patterns =
            |values: &[String], ci: bool| values.iter().map(|v| Pattern::new(v, ci)).collect();
        conditions
            .iter()
            .map(|c| {
                Ok(match c {
                    C::HostHeader { values } => Condition::HostHeader(patterns(values, true)),
                    C::PathPattern { values } => Condition::PathPattern(patterns(values, false)),
                    C::HttpHeader { name, values } => Condition::HttpHeader {
                        name: http::HeaderName::from_bytes(name.as_bytes())
                            .map_err(|_| format!("{name:?} is not a header name"))?,
                        values: patterns(values, true),
                    },
                    C::HttpRequestMethod { values } => Condition::HttpRequestMethod(values.clone()),
                    C::QueryString { values } => Condition::QueryString(
                        values
                            .iter()
                            .map(|q| QueryPair {
                                key: q.key.as_deref().map(|k| Pattern::new(k, true)),
                                value: Pattern::new(&q.value, true),
                            })
                            .collect(),
                    ),
                    C::SourceIp { values } => Condition::SourceIp(values.clone()),
                })
            })
            .collect::<Result<_, String>>()
            .map(Self)
    }

    /// Whether every condition holds for `request`.
    pub fn match_all(&self, request: &RequestView<'_>) -> bool {
        self.0.iter().all(|c| c.matches(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Pattern {
        Pattern::new(text, false)
    }

    #[test]
    fn wildcards_match_runs_and_single_characters() {
        assert!(p("/static/*").matches("/static/a/b.css"));
        assert!(p("/static/*").matches("/static/"));
        assert!(!p("/static/*").matches("/static"));
        assert!(p("/img/?.png").matches("/img/a.png"));
        assert!(!p("/img/?.png").matches("/img/ab.png"));
        assert!(p("*.example.com").matches("api.example.com"));
        assert!(p("a*b*c").matches("aXXbYYc"));
        assert!(!p("a*b*c").matches("aXXbYY"));
        assert!(p("*").matches(""));
        assert!(p("**x").matches("x"));
        assert!(p("/exact").matches("/exact"));
        assert!(!p("/exact").matches("/exact/"));
    }

    #[test]
    fn escapes_make_wildcards_literal_and_case_folds_when_asked() {
        assert!(p(r"what\?").matches("what?"));
        assert!(!p(r"what\?").matches("whatX"));
        assert!(p(r"\*").matches("*"));
        assert!(!p(r"\*").matches("x"));
        assert!(Pattern::new("API.Example.COM", true).matches("api.example.com"));
        assert!(!p("/Path").matches("/path"));
    }

    #[test]
    fn long_adversarial_input_is_linear_enough() {
        let text = "a".repeat(10_000);
        assert!(!p("*a*a*a*a*b").matches(&text));
    }

    fn view<'a>(headers: &'a http::HeaderMap, query: Option<&'a str>) -> RequestView<'a> {
        RequestView {
            method: "GET",
            path: "/orders/7",
            query,
            headers,
            source: "10.1.2.3".parse().unwrap(),
        }
    }

    #[test]
    fn each_condition_type_matches_as_alb_does() {
        let mut headers = http::HeaderMap::new();
        headers.insert("host", "API.example.com:8080".parse().unwrap());
        headers.append("x-tenant", "Blue".parse().unwrap());
        headers.append("x-tenant", "green".parse().unwrap());
        let v = view(&headers, Some("Version=V2&debug&k=a%20b"));

        let host = Condition::HostHeader(vec![Pattern::new("api.example.com", true)]);
        assert!(host.matches(&v));
        let other = Condition::HostHeader(vec![Pattern::new("*.other.com", true)]);
        assert!(!other.matches(&v));

        assert!(Condition::PathPattern(vec![p("/orders/*")]).matches(&v));
        assert!(!Condition::PathPattern(vec![p("/Orders/*")]).matches(&v));

        let header = |value: &str| Condition::HttpHeader {
            name: http::HeaderName::from_static("x-tenant"),
            values: vec![Pattern::new(value, true)],
        };
        assert!(header("blue").matches(&v));
        assert!(header("GREEN").matches(&v), "any value of the header");
        assert!(!header("red").matches(&v));

        assert!(Condition::HttpRequestMethod(vec!["POST".into(), "GET".into()]).matches(&v));
        assert!(!Condition::HttpRequestMethod(vec!["get".into()]).matches(&v));

        let q = |key: Option<&str>, value: &str| {
            Condition::QueryString(vec![QueryPair {
                key: key.map(|k| Pattern::new(k, true)),
                value: Pattern::new(value, true),
            }])
        };
        assert!(q(Some("version"), "v2").matches(&v));
        assert!(q(None, "V?").matches(&v));
        assert!(q(Some("debug"), "").matches(&v));
        assert!(q(Some("k"), "a%20b").matches(&v), "compared as sent");
        assert!(!q(Some("version"), "v3").matches(&v));
        assert!(!q(Some("version"), "v2").matches(&view(&headers, None)));

        let nets = |n: &[&str]| Condition::SourceIp(n.iter().map(|s| s.parse().unwrap()).collect());
        assert!(nets(&["10.0.0.0/8"]).matches(&v));
        assert!(!nets(&["192.168.0.0/16", "2001:db8::/32"]).matches(&v));
        let mut mapped = v;
        mapped.source = "::ffff:10.1.2.3".parse().unwrap();
        assert!(nets(&["10.1.2.3/32"]).matches(&mapped));
    }

    #[test]
    fn conditions_are_anded_values_ored() {
        let mut headers = http::HeaderMap::new();
        headers.insert("host", "a.example.com".parse().unwrap());
        let v = view(&headers, None);
        let both = Conditions(vec![
            Condition::HostHeader(vec![
                Pattern::new("b.example.com", true),
                Pattern::new("a.*", true),
            ]),
            Condition::PathPattern(vec![p("/orders/*")]),
        ]);
        assert!(both.match_all(&v));
        let one_fails = Conditions(vec![
            Condition::HostHeader(vec![Pattern::new("a.*", true)]),
            Condition::PathPattern(vec![p("/users/*")]),
        ]);
        assert!(!one_fails.match_all(&v));
        assert!(Conditions::default().match_all(&v));
    }

    #[test]
    fn ports_are_stripped_from_hosts_but_not_from_ipv6_literals() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}

#[cfg(test)]
mod normalize_tests {
    use super::normalize_path;

    #[test]
    fn dot_segments_are_resolved_before_rules_match() {
        for (raw, seen) in [
            ("/ip/x", "/ip/x"),
            ("/ip/a/../../etc/passwd", "/etc/passwd"),
            ("/ip/%2e%2e/admin", "/admin"),
            ("/ip/%2E%2e/admin", "/admin"),
            ("/a/./b/.", "/a/b/"),
            ("/..", "/"),
            ("/a/b/..", "/a/"),
            ("/a..b/c", "/a..b/c"),
        ] {
            assert_eq!(normalize_path(raw), seen, "{raw}");
        }
    }
}
