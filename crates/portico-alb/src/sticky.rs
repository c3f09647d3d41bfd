//! ALB's stickiness cookies: `AWSALB` (which target of a group) and `AWSALBTG` (which group
//! of a weighted forward), each with a `…CORS` twin carrying `SameSite=None; Secure` for
//! cross-origin requests. The load balancer sets both on every response it routes by them,
//! with an expiry of now plus the configured duration, and reads either.
//!
//! Values are opaque to clients: a 16-hex-digit hash of what was chosen. A forged value can
//! only name another member of the same group, which the client could have been sent to
//! anyway.

use http::header::{COOKIE, HeaderMap, HeaderValue};
use std::time::{Duration, SystemTime};

/// A stickiness cookie pair.
#[derive(Debug, Clone, Copy)]
pub struct Cookie {
    /// The main name (`AWSALB`, `AWSALBTG`).
    pub name: &'static str,
    /// Its CORS twin (`AWSALBCORS`, `AWSALBTGCORS`).
    pub cors_name: &'static str,
}

/// Target stickiness within a target group.
pub const TARGET: Cookie = Cookie {
    name: "AWSALB",
    cors_name: "AWSALBCORS",
};

/// Group stickiness within a weighted forward.
pub const GROUP: Cookie = Cookie {
    name: "AWSALBTG",
    cors_name: "AWSALBTGCORS",
};

impl Cookie {
    /// The value the client sent in either cookie, main one first.
    pub fn read(self, headers: &HeaderMap) -> Option<u64> {
        let mut cors = None;
        for header in headers.get_all(COOKIE) {
            let Ok(text) = header.to_str() else { continue };
            for pair in text.split(';') {
                let Some((name, value)) = pair.trim().split_once('=') else {
                    continue;
                };
                let Ok(value) = u64::from_str_radix(value.trim(), 16) else {
                    continue;
                };
                if name == self.name {
                    return Some(value);
                }
                if name == self.cors_name {
                    cors = Some(value);
                }
            }
        }
        cors
    }

    /// The two `Set-Cookie` values for `value`, valid for `duration`.
    pub fn set(self, value: u64, duration: Duration) -> [HeaderValue; 2] {
        let expires = httpdate::fmt_http_date(SystemTime::now() + duration);
        let main = format!("{}={value:016x}; Expires={expires}; Path=/", self.name);
        let cors = format!(
            "{}={value:016x}; Expires={expires}; Path=/; SameSite=None; Secure",
            self.cors_name
        );
        // Both are built from hex digits and an HTTP date: always valid header values.
        [main, cors]
            .map(|v| HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_either_cookie_and_prefers_the_main_one() {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, "a=1; AWSALBCORS=00000000000000ff".parse().unwrap());
        assert_eq!(TARGET.read(&h), Some(0xff));
        h.append(COOKIE, "AWSALB=0000000000000010".parse().unwrap());
        assert_eq!(TARGET.read(&h), Some(0x10));
        assert_eq!(GROUP.read(&h), None);
        h.insert(COOKIE, "AWSALB=zz".parse().unwrap());
        assert_eq!(TARGET.read(&h), None, "garbage is ignored");
    }

    #[test]
    fn sets_both_cookies_with_an_expiry() {
        let [main, cors] = GROUP.set(0xab, Duration::from_secs(60));
        let main = main.to_str().unwrap();
        assert!(
            main.starts_with("AWSALBTG=00000000000000ab; Expires="),
            "{main}"
        );
        assert!(main.ends_with("GMT; Path=/"), "{main}");
        assert!(cors.to_str().unwrap().ends_with("; SameSite=None; Secure"));
    }
}
