//! ALB's desync mitigation: every HTTP/1 request is classified by the classifier ALB itself
//! uses, AWS's `http_desync_guardian`, and the load balancer's
//! `desync_mitigation_mode` says what happens to it.
//!
//! | classification | monitor | defensive | strictest |
//! |---|---|---|---|
//! | Compliant  | forwarded | forwarded | forwarded |
//! | Acceptable | forwarded | forwarded | 400 |
//! | Ambiguous  | forwarded | forwarded, then the connections close | 400 |
//! | Severe     | forwarded | 400 | 400 |
//!
//! The classification and its reason go to the access log's `classification` and
//! `classification_reason` fields (`-` for a compliant request). The request is classified
//! as hyper parsed it: what hyper refuses outright (conflicting framing, a bad request
//! line, a lone unsupported transfer coding) never gets here. HTTP/2 requests are not
//! classified, as on ALB.

use http::Request;
use http_desync_guardian::request_analyzer::{HttpHeader, HttpRequestData};
use http_desync_guardian::{ClassificationReason, RequestSafetyTier};
use portico_config::model::DesyncMitigationMode;

/// How a request was classified, when it is not compliant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification {
    /// `Acceptable`, `Ambiguous` or `Severe`.
    pub tier: &'static str,
    /// The reason code ALB logs (`SpaceInUri`, `BadHeader`, …).
    pub reason: &'static str,
}

/// Marks a request forwarded under [`Verdict::ForwardAndClose`]: an HTTP target is asked to
/// close its connection after it too.
#[derive(Debug, Clone, Copy)]
pub struct CloseAfter;

/// What the mode does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forwarded.
    Forward,
    /// Forwarded, and the connections closed after it.
    ForwardAndClose,
    /// Refused with 400.
    Refuse,
}

/// Classifies `req` (HTTP/1 only: anything else is compliant) and decides by `mode`.
pub fn classify<B>(
    req: &Request<B>,
    mode: DesyncMitigationMode,
) -> (Verdict, Option<Classification>) {
    let version: &[u8] = match req.version() {
        http::Version::HTTP_11 => b"HTTP/1.1",
        http::Version::HTTP_10 => b"HTTP/1.0",
        http::Version::HTTP_09 => b"",
        _ => return (Verdict::Forward, None),
    };
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let mut data = HttpRequestData {
        method: req.method().as_str().as_bytes(),
        version,
        uri: target.as_bytes(),
        headers: req
            .headers()
            .iter()
            .map(|(name, value)| HttpHeader::new(name.as_str().as_bytes(), value.as_bytes()))
            .collect(),
    };
    let result = data.analyze_parsed_request();
    let tier = result.tier;
    let verdict = match (mode, tier) {
        (_, RequestSafetyTier::Compliant) | (DesyncMitigationMode::Monitor, _) => Verdict::Forward,
        (DesyncMitigationMode::Defensive, RequestSafetyTier::Acceptable) => Verdict::Forward,
        (DesyncMitigationMode::Defensive, RequestSafetyTier::Ambiguous) => Verdict::ForwardAndClose,
        (DesyncMitigationMode::Defensive, RequestSafetyTier::Severe)
        | (DesyncMitigationMode::Strictest, _) => Verdict::Refuse,
    };
    let classification = match tier {
        RequestSafetyTier::Compliant => None,
        RequestSafetyTier::Acceptable => Some("Acceptable"),
        RequestSafetyTier::Ambiguous => Some("Ambiguous"),
        RequestSafetyTier::Severe => Some("Severe"),
    }
    .map(|tier| Classification {
        tier,
        reason: reason_code(result.reason),
    });
    (verdict, classification)
}

/// The reason code as ALB's access log spells it.
fn reason_code(reason: ClassificationReason) -> &'static str {
    use ClassificationReason as R;
    match reason {
        R::Compliant => "-",
        R::EmptyHeader => "EmptyHeader",
        R::SuspiciousHeader => "SuspiciousHeader",
        R::NonCompliantHeader => "NonCompliantHeader",
        R::BadHeader => "BadHeader",
        R::AmbiguousUri => "AmbiguousUri",
        R::SpaceInUri => "SpaceInUri",
        R::BadUri => "BadUri",
        R::NonCompliantVersion => "NonCompliantVersion",
        R::BadVersion => "BadVersion",
        R::GetHeadZeroContentLength => "GetHeadZeroContentLength",
        R::UndefinedContentLengthSemantics => "UndefinedContentLengthSemantics",
        R::MultipleContentLength => "MultipleContentLength",
        R::DuplicateContentLength => "DuplicateContentLength",
        R::BadContentLength => "BadContentLength",
        R::UndefinedTransferEncodingSemantics => "UndefinedTransferEncodingSemantics",
        R::MultipleTransferEncodingChunked => "MultipleTransferEncodingChunked",
        R::BadTransferEncoding => "BadTransferEncoding",
        R::BothTeClPresent => "BothTeClPresent",
        R::BadMethod => "BadMethod",
        R::NonCrLfLineTermination => "NonCrLfLineTermination",
        R::MultilineHeader => "MultilineHeader",
        R::PartialHeaderLine => "PartialHeaderLine",
        R::MissingLastEmptyLine => "MissingLastEmptyLine",
        R::MissingHeaderColon => "MissingHeaderColon",
        R::MissingUri => "MissingUri",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use DesyncMitigationMode::{Defensive, Monitor, Strictest};

    fn request(method: &str, target: &str, headers: &[(&str, &[u8])]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(target);
        for (name, value) in headers {
            builder = builder.header(*name, http::HeaderValue::from_bytes(value).unwrap());
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn each_mode_treats_each_tier_as_alb_does() {
        let compliant = request("GET", "/", &[("host", b"a.example")]);
        // A GET with a body length of zero: acceptable.
        let acceptable = request(
            "GET",
            "/",
            &[("host", b"a.example"), ("content-length", b"0")],
        );
        // A header whose name is a near miss of Transfer-Encoding: ambiguous.
        let ambiguous = request(
            "POST",
            "/",
            &[("host", b"a.example"), ("transfer_encoding", b"chunked")],
        );
        // Chunked twice: severe.
        let severe = request(
            "POST",
            "/",
            &[
                ("host", b"a.example"),
                ("transfer-encoding", b"chunked, chunked"),
            ],
        );
        for (req, tier) in [
            (&acceptable, "Acceptable"),
            (&ambiguous, "Ambiguous"),
            (&severe, "Severe"),
        ] {
            let (_, classification) = classify(req, Monitor);
            assert_eq!(classification.map(|c| c.tier), Some(tier), "{req:?}");
        }
        let verdicts =
            |req: &Request<()>| [Monitor, Defensive, Strictest].map(|mode| classify(req, mode).0);
        use Verdict::{Forward, ForwardAndClose, Refuse};
        assert_eq!(verdicts(&compliant), [Forward, Forward, Forward]);
        assert_eq!(classify(&compliant, Defensive).1, None);
        assert_eq!(verdicts(&acceptable), [Forward, Forward, Refuse]);
        assert_eq!(verdicts(&ambiguous), [Forward, ForwardAndClose, Refuse]);
        assert_eq!(
            classify(&ambiguous, Monitor).1.map(|c| c.reason),
            Some("SuspiciousHeader")
        );
        assert_eq!(verdicts(&severe), [Forward, Refuse, Refuse]);
    }

    #[test]
    fn http2_requests_are_not_classified() {
        let mut req = request("POST", "/", &[("transfer_encoding", b"chunked")]);
        *req.version_mut() = http::Version::HTTP_2;
        assert_eq!(classify(&req, Strictest), (Verdict::Forward, None));
    }
}
