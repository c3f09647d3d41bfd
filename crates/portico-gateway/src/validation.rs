//! Request validation: required headers and query parameters, and a JSON Schema (draft
//! 2020-12) for the body. Messages follow API Gateway's (`Missing required request
//! parameters: [...]`, `Invalid request body`) and add which field failed and why.

use http::HeaderMap;
use http::header::HeaderName;
use portico_config::Validation;

/// At most this many schema violations are named in one answer.
pub const MAX_REPORTED_ERRORS: usize = 5;

/// Why a validator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A required header name is not a header name.
    #[error("{0:?} is not a header name")]
    HeaderName(String),
    /// The schema is not a valid draft 2020-12 schema.
    #[error("not a valid JSON Schema (draft 2020-12): {0}")]
    Schema(String),
}

/// One rule's or listener's validation.
pub struct RequestValidator {
    headers: Vec<HeaderName>,
    query: Vec<String>,
    schema: Option<jsonschema::Validator>,
}

impl std::fmt::Debug for RequestValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestValidator")
            .field("headers", &self.headers)
            .field("query", &self.query)
            .field("schema", &self.schema.is_some())
            .finish()
    }
}

impl RequestValidator {
    /// The validator for `spec`, with its body schema already read.
    pub fn new(spec: &Validation, schema: Option<&serde_json::Value>) -> Result<Self, SchemaError> {
        let headers = spec
            .required_headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .map_err(|_| SchemaError::HeaderName(h.clone()))
            })
            .collect::<Result<_, _>>()?;
        let schema = schema
            .map(|s| {
                jsonschema::draft202012::options()
                    .should_validate_formats(true)
                    .build(s)
                    .map_err(|e| SchemaError::Schema(e.to_string()))
            })
            .transpose()?;
        Ok(Self {
            headers,
            query: spec.required_query_parameters.clone(),
            schema,
        })
    }

    /// Whether the body must be read to validate it.
    pub fn wants_body(&self) -> bool {
        self.schema.is_some()
    }

    /// Checks that every required header and query parameter is present; the message
    /// names the missing ones.
    pub fn check_head(&self, headers: &HeaderMap, query: Option<&str>) -> Result<(), String> {
        let mut missing: Vec<&str> = self
            .headers
            .iter()
            .filter(|h| !headers.contains_key(*h))
            .map(HeaderName::as_str)
            .collect();
        if !self.query.is_empty() {
            let present: Vec<_> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(k, _)| k)
                .collect();
            missing.extend(
                self.query
                    .iter()
                    .filter(|q| !present.iter().any(|p| p == q.as_str()))
                    .map(String::as_str),
            );
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "Missing required request parameters: [{}]",
                missing.join(", ")
            ))
        }
    }

    /// Checks the body against the schema; the message names each failing field (as a
    /// JSON pointer) and why, up to [`MAX_REPORTED_ERRORS`].
    pub fn check_body(&self, body: &[u8]) -> Result<(), String> {
        let Some(schema) = &self.schema else {
            return Ok(());
        };
        let instance: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
            if body.iter().all(u8::is_ascii_whitespace) {
                "Invalid request body: the body is empty, and JSON is expected".to_owned()
            } else {
                format!("Invalid request body: not JSON: {e}")
            }
        })?;
        let problems: Vec<String> = schema
            .iter_errors(&instance)
            .take(MAX_REPORTED_ERRORS)
            .map(|e| {
                let at = e.instance_path().as_str();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{at}: {e}")
                }
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("Invalid request body: {}", problems.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn validator() -> RequestValidator {
        let spec = Validation {
            required_headers: vec!["X-Request-Id".into()],
            required_query_parameters: vec!["version".into()],
            body_schema: Some("order.json".into()),
        };
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "required": ["sku", "quantity"],
            "properties": {
                "sku": { "type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$" },
                "quantity": { "type": "integer", "minimum": 1 },
                "items": { "type": "array", "prefixItems": [{ "type": "string" }] }
            },
            "additionalProperties": false
        });
        RequestValidator::new(&spec, Some(&schema)).unwrap()
    }

    #[test]
    fn missing_headers_and_parameters_are_named() {
        let v = validator();
        let mut headers = HeaderMap::new();
        assert_eq!(
            v.check_head(&headers, Some("a=1")).unwrap_err(),
            "Missing required request parameters: [x-request-id, version]"
        );
        headers.insert("x-request-id", "1".parse().unwrap());
        assert!(v.check_head(&headers, Some("a=1&version")).is_ok());
        assert!(v.check_head(&headers, Some("ver%73ion=2")).is_ok());
    }

    #[test]
    fn body_errors_name_the_field() {
        let v = validator();
        assert!(v.check_body(br#"{"sku":"ABC-1234","quantity":2}"#).is_ok());
        let e = v
            .check_body(br#"{"sku":"ABC-1234","quantity":0}"#)
            .unwrap_err();
        assert!(
            e.starts_with("Invalid request body: /quantity: 0 is less than the minimum of 1"),
            "{e}"
        );
        let e = v.check_body(br#"{"quantity":1}"#).unwrap_err();
        assert!(e.contains("\"sku\" is a required property"), "{e}");
        let e = v
            .check_body(br#"{"sku":"x","quantity":1,"items":[3]}"#)
            .unwrap_err();
        assert!(e.contains("/sku:") && e.contains("/items/0:"), "{e}");
        let e = v.check_body(b"{\"sku\": ").unwrap_err();
        assert!(e.starts_with("Invalid request body: not JSON"), "{e}");
        let e = v.check_body(b"").unwrap_err();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn bad_schemas_are_refused() {
        let spec = Validation::default();
        let e = RequestValidator::new(&spec, Some(&json!({"type": 12}))).unwrap_err();
        assert!(matches!(e, SchemaError::Schema(_)), "{e}");
        let spec = Validation {
            required_headers: vec!["bad header".into()],
            ..Validation::default()
        };
        assert!(RequestValidator::new(&spec, None).is_err());
    }
}
