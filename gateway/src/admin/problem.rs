//! Answers of the control API: JSON, and `application/problem+json` errors
//! that say what was wrong and what to send instead.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

pub(super) type ApiResponse = Response<Full<Bytes>>;

/// An error answer: status, stable code, what was wrong, what to do.
pub(super) struct Problem {
    status: StatusCode,
    pub(super) code: &'static str,
    detail: String,
    hint: Option<String>,
    /// More members of the answer (a conflict's current version, a policy's
    /// located errors).
    extra: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    pub(super) fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            code,
            detail: detail.into(),
            hint: None,
            extra: serde_json::Map::new(),
        }
    }

    pub(super) fn with(mut self, key: &str, value: serde_json::Value) -> Problem {
        self.extra.insert(key.to_string(), value);
        self
    }

    pub(super) fn hint(mut self, hint: impl Into<String>) -> Problem {
        self.hint = Some(hint.into());
        self
    }

    pub(super) fn bad(detail: impl Into<String>, hint: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "invalid_request", detail).hint(hint)
    }

    pub(super) fn into_response(self) -> ApiResponse {
        let mut body = serde_json::json!({
            "type": format!("https://clawgress.dev/problems/{}", self.code),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "reason": self.code,
            "detail": self.detail,
        });
        if let Some(hint) = self.hint {
            body["hint"] = hint.into();
        }
        for (key, value) in self.extra {
            body[key] = value;
        }
        let mut response = json_response(self.status, &body);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"clawgress-admin\""),
            );
        }
        response
    }
}

pub(super) fn json_response(status: StatusCode, body: &serde_json::Value) -> ApiResponse {
    let mut bytes = serde_json::to_vec_pretty(body).unwrap_or_default();
    bytes.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
