//! The canonical request: what a signature covers, in the form AWS defines it.
//!
//! ```text
//! METHOD
//! /path, each byte but unreserved ones and `/` percent-encoded (again)
//! name=value&… of the query, decoded, encoded strictly and sorted
//! name:value lines of the signed headers, lowercase, values trimmed
//! signed;header;names
//! hex(SHA-256(body))
//! ```

use crate::{Refusal, Signable, hex};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use ring::digest;

/// What SigV4 leaves unencoded: letters, digits and `-._~`.
const STRICT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The same, and `/`: for paths.
const PATH: &AsciiSet = &STRICT.remove(b'/');

/// The canonical request of `request` with `signed_headers` (lowercase, sorted as the
/// client listed them).
pub(crate) fn request(request: Signable<'_>, signed_headers: &[&str]) -> Result<String, Refusal> {
    let mut out = String::with_capacity(256);
    out.push_str(request.method);
    out.push('\n');
    let path = if request.path.is_empty() {
        "/"
    } else {
        request.path
    };
    out.extend(utf8_percent_encode(path, PATH));
    out.push('\n');
    out.push_str(&query(request.query.unwrap_or("")));
    out.push('\n');
    for name in signed_headers {
        let values: Vec<String> = request
            .headers
            .get_all(*name)
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        if values.is_empty() {
            return Err(Refusal::Malformed(format!(
                "signed header {name:?} is not in the request"
            )));
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(&hex(digest::digest(&digest::SHA256, request.body).as_ref()));
    Ok(out)
}

/// The canonical query: each name and value decoded and encoded strictly, sorted.
fn query(raw: &str) -> String {
    let encode = |text: &str| -> String {
        let decoded = percent_decode_str(text).collect::<Vec<u8>>();
        percent_encoding::percent_encode(&decoded, STRICT).to_string()
    };
    let mut pairs: Vec<(String, String)> = raw
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            (encode(name), encode(value))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_query_is_decoded_encoded_strictly_and_sorted() {
        assert_eq!(query(""), "");
        assert_eq!(
            query("b=2&a=x%2Fy&a=1&c&d=%7e%20"),
            "a=1&a=x%2Fy&b=2&c=&d=~%20"
        );
    }
}
