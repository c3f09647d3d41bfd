//! Reading a target's response head: parsed with httparse, held to ALB's limits, and
//! turned into an `http::Response` whose header values share the bytes read.
//!
//! The framing of the body that follows is decided here, as RFC 9112 §6.3 says: none for
//! a `HEAD` request, 204 and 304; chunked when `Transfer-Encoding` ends with `chunked`;
//! to the end of the connection for any other transfer coding; else `Content-Length`
//! (whose values must agree); else to the end of the connection.

use crate::error::Error;
use bytes::{Buf, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Version, header};
use std::mem::MaybeUninit;

/// Largest response head (status line and header fields): ALB's "entire response header"
/// quota, 32 KB.
pub const MAX_HEAD: usize = 32 * 1024;

/// Most header fields in a response.
pub const MAX_HEADERS: usize = 100;

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// This many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the target closes the connection.
    UntilClose,
}

/// A parsed final response head.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) response: Response<()>,
    pub(crate) framing: Framing,
    /// The connection may carry another request after this response.
    pub(crate) keep_alive: bool,
}

/// What the front of the buffer holds.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A `1xx` interim response, now consumed.
    Interim,
    /// The final response head, now consumed.
    Final(Head),
}

/// Parses the response head at the front of `buf`, consuming it when whole. `head_request`:
/// the request was `HEAD`, so the response has no body whatever it says. A final head's
/// headers go into `spare` (emptied and taken), whose allocation is used when it has one.
pub(crate) fn parse(
    buf: &mut BytesMut,
    head_request: bool,
    spare: &mut HeaderMap,
) -> Result<Parsed, Error> {
    let mut fields = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let length = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(Error::HeadTooLarge { limit: MAX_HEAD });
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Error::TooManyHeaders { limit: MAX_HEADERS });
        }
        Err(e) => return Err(Error::MalformedHead(e)),
    };
    if length > MAX_HEAD {
        return Err(Error::HeadTooLarge { limit: MAX_HEAD });
    }
    let code = parsed.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| Error::BadStatus(code))?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(Error::UnexpectedSwitch);
        }
        buf.advance(length);
        return Ok(Parsed::Interim);
    }
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let reason = parsed
        .reason
        .filter(|r| Some(*r) != status.canonical_reason() && !r.is_empty())
        .and_then(|r| hyper::ext::ReasonPhrase::try_from(r.as_bytes().to_vec()).ok());
    // Where each field lies in the head, so that values can share its bytes once frozen.
    // The head is at most MAX_HEAD (32 KB) bytes, so offsets fit in u16; the array is kept
    // small because it is zeroed for every response.
    let base = buf.as_ptr() as usize;
    let offset = |at: usize| u16::try_from(at).map_err(|_| Error::HeadTooLarge { limit: MAX_HEAD });
    let mut spans = [(0u16, 0u16, 0u16, 0u16); MAX_HEADERS];
    let count = parsed.headers.len();
    for (span, field) in spans.iter_mut().zip(parsed.headers.iter()) {
        let name = field.name.as_ptr() as usize - base;
        let value = field.value.as_ptr() as usize - base;
        *span = (
            offset(name)?,
            offset(field.name.len())?,
            offset(value)?,
            offset(field.value.len())?,
        );
    }
    let bytes = buf.split_to(length).freeze();
    let mut headers = std::mem::take(spare);
    // The spare comes emptied (`Outgoing` clears it); clearing an empty map would still
    // rewrite its whole index, so only a map that holds something is cleared.
    if !headers.is_empty() {
        headers.clear();
    }
    headers.reserve(count);
    let mut length_seen: Option<u64> = None;
    // Whether the last transfer coding is chunked, when there is any: only that one decides
    // (several `Transfer-Encoding` fields make one list).
    let mut final_coding_chunked: Option<bool> = None;
    let (mut close, mut keep_alive_token) = (false, false);
    for &(name_at, name_len, value_at, value_len) in &spans[..count] {
        let (name_at, name_len) = (usize::from(name_at), usize::from(name_len));
        let (value_at, value_len) = (usize::from(value_at), usize::from(value_len));
        let name_bytes = &bytes[name_at..name_at + name_len];
        let name = HeaderName::from_bytes(name_bytes)
            .map_err(|_| Error::BadHeader(String::from_utf8_lossy(name_bytes).into_owned()))?;
        let value_bytes = bytes.slice(value_at..value_at + value_len);
        let value = HeaderValue::from_maybe_shared(value_bytes)
            .map_err(|_| Error::BadHeader(name.as_str().to_owned()))?;
        if name == header::CONTENT_LENGTH {
            let n = content_length(value.as_bytes())?;
            if length_seen.is_some_and(|seen| seen != n) {
                return Err(Error::BadContentLength);
            }
            length_seen = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            let last = value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .unwrap_or(b"");
            final_coding_chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        headers.append(name, value);
    }
    let mut keep_alive = match version {
        Version::HTTP_10 => keep_alive_token && !close,
        _ => !close,
    };
    let framing =
        if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::Empty
        } else {
            match (final_coding_chunked, length_seen) {
                (Some(true), length) => {
                    // Both framings at once is a smuggling smell: answer, but close afterwards.
                    keep_alive &= length.is_none();
                    Framing::Chunked
                }
                (Some(false), _) | (None, None) => Framing::UntilClose,
                (None, Some(0)) => Framing::Empty,
                (None, Some(n)) => Framing::Length(n),
            }
        };
    if framing == Framing::UntilClose {
        keep_alive = false;
    }
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    if let Some(reason) = reason {
        response.extensions_mut().insert(reason);
    }
    Ok(Parsed::Final(Head {
        response,
        framing,
        keep_alive,
    }))
}

/// A `Content-Length` value: digits, or a list of equal ones (RFC 9110 §8.6).
fn content_length(value: &[u8]) -> Result<u64, Error> {
    let mut found = None;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(Error::BadContentLength);
        }
        let n = part.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return Err(Error::BadContentLength);
        }
        found = Some(n);
    }
    found.ok_or(Error::BadContentLength)
}

/// The head of a response as bytes, for tests.
#[cfg(test)]
pub(crate) fn parse_all(text: &[u8], head_request: bool) -> Result<Parsed, Error> {
    parse(
        &mut BytesMut::from(text),
        head_request,
        &mut HeaderMap::new(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        match parse_all(text.as_bytes(), false) {
            Ok(Parsed::Final(head)) => head,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    fn error(text: &[u8]) -> Error {
        match parse_all(text, false) {
            Err(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn a_plain_response_keeps_its_headers_in_order_and_shares_their_bytes() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\n");
        assert_eq!(h.response.status(), 200);
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        let values: Vec<_> = h.response.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert!(
            h.response
                .extensions()
                .get::<hyper::ext::ReasonPhrase>()
                .is_none()
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert_eq!(head("HTTP/1.1 200 OK\r\n\r\n").framing, Framing::UntilClose);
        assert!(!head("HTTP/1.1 200 OK\r\n\r\n").keep_alive);
        let chunked = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n");
        assert_eq!(chunked.framing, Framing::Chunked);
        assert!(chunked.keep_alive);
        let gzip = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!(gzip.framing, Framing::UntilClose);
        // Two fields are one list: the last coding decides, whichever field it is in.
        let split = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(split.framing, Framing::Chunked);
        let after = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
        );
        assert_eq!(after.framing, Framing::UntilClose);
        let both =
            head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(both.framing, Framing::Chunked);
        assert!(!both.keep_alive, "closed after a response framed twice");
        assert_eq!(
            head("HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n").framing,
            Framing::Empty
        );
        assert_eq!(
            head("HTTP/1.1 304 Not Modified\r\n\r\n").framing,
            Framing::Empty
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").framing,
            Framing::Empty
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n").framing,
            Framing::Length(7)
        );
        match parse_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true) {
            Ok(Parsed::Final(h)) => assert_eq!(h.framing, Framing::Empty),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_tokens() {
        assert!(
            !head("HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n").keep_alive
        );
        assert!(!head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(
            head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
                .keep_alive
        );
    }

    #[test]
    fn interim_responses_are_skipped_and_a_switch_is_refused() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"[..],
        );
        let mut spare = HeaderMap::new();
        assert!(matches!(
            parse(&mut buf, false, &mut spare),
            Ok(Parsed::Interim)
        ));
        assert!(
            matches!(parse(&mut buf, false, &mut spare), Ok(Parsed::Final(h)) if h.response.status() == 201)
        );
        assert!(buf.is_empty());
        assert!(matches!(
            error(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
            Error::UnexpectedSwitch
        ));
    }

    #[test]
    fn a_custom_reason_phrase_is_kept() {
        let h = head("HTTP/1.1 200 Fine Thanks\r\nContent-Length: 0\r\n\r\n");
        let reason = h
            .response
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .unwrap();
        assert_eq!(reason.as_bytes(), b"Fine Thanks");
    }

    #[test]
    fn the_spare_map_holds_the_headers_and_nothing_it_had() {
        let mut spare = HeaderMap::with_capacity(24);
        let capacity = spare.capacity();
        spare.insert("x-left-over", HeaderValue::from_static("from the request"));
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n"[..]);
        let Ok(Parsed::Final(head)) = parse(&mut buf, false, &mut spare) else {
            panic!("no head");
        };
        let headers = head.response.headers();
        assert_eq!(headers.len(), 2);
        assert_eq!(headers["x-a"], "1");
        assert!(!headers.contains_key("x-left-over"));
        // The map's allocation went with it: no new one per response.
        assert_eq!(headers.capacity(), capacity);
        assert_eq!(spare.capacity(), 0);
    }

    #[test]
    fn a_partial_head_waits_for_more() {
        assert!(matches!(
            parse_all(b"HTTP/1.1 200 OK\r\nContent-Le", false),
            Ok(Parsed::Partial)
        ));
    }

    #[test]
    fn malformed_and_oversized_heads_are_errors() {
        assert!(matches!(
            error(b"HTTP/1.1 2x0 OK\r\n\r\n"),
            Error::MalformedHead(_)
        ));
        assert!(matches!(
            error(b"SMTP ready\r\n\r\n"),
            Error::MalformedHead(_)
        ));
        assert!(matches!(
            error(b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n"),
            Error::MalformedHead(_)
        ));
        for bad in ["abc", "-1", "", "1 2", "5, 6", "99999999999999999999"] {
            let text = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
            assert!(
                matches!(error(text.as_bytes()), Error::BadContentLength),
                "{bad:?}"
            );
        }
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert!(matches!(error(two), Error::BadContentLength));
        let mut many = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("x-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert!(matches!(
            error(many.as_bytes()),
            Error::TooManyHeaders { limit: MAX_HEADERS }
        ));
        // Over ALB's 32 KB, whole or still arriving.
        let big = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(error(big.as_bytes()), Error::HeadTooLarge { .. }));
        let endless = format!("HTTP/1.1 200 OK\r\nx-big: {}", "a".repeat(MAX_HEAD + 1));
        assert!(matches!(
            error(endless.as_bytes()),
            Error::HeadTooLarge { .. }
        ));
        assert!(matches!(
            error(b"HTTP/1.1 1000 Too Big\r\n\r\n"),
            Error::MalformedHead(_) | Error::BadStatus(_)
        ));
    }
}
