//! Errors as RFC 9457 `application/problem+json`, each saying whose fault it was through its
//! status and which field was at fault where one was.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use enjin_model::api::Problem;
use enjin_store::StoreError;

use crate::auth::AuthError;
use crate::bus::BusError;
use crate::registry::RegistryError;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// An error answer of the API, rendered as a problem document (and logged at `error` when it is
/// a 5xx: a server fault someone must look at). Every handler's error converts into one; the
/// conversions from [`RegistryError`], [`AuthError`], [`StoreError`] and [`BusError`] decide
/// whose fault each failure is.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status: 4xx when the caller is at fault, 5xx when the server is.
    pub status: StatusCode,
    /// A short stable name for the kind of problem (`not-found`, `conflict`, `too-large`): the
    /// document's `type` is `urn:enjin:problem:<slug>`, which clients may match on.
    pub slug: &'static str,
    /// What went wrong, for a person, naming the object.
    pub detail: String,
    /// The request field at fault, as a path into the body (`spec.cidr`) or a query parameter;
    /// `None` when no single field is.
    pub field: Option<String>,
}

impl ApiError {
    /// An error with no field at fault.
    pub fn new(status: StatusCode, slug: &'static str, detail: impl Into<String>) -> Self {
        ApiError { status, slug, detail: detail.into(), field: None }
    }

    /// Name the field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 400 `bad-request`: the request is malformed (a query, a header, a body that does not parse).
    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    /// 403 `forbidden`: the caller is authenticated but lacks a permission; `detail` should say
    /// which.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// The RFC 9457 document sent as the body: `title` is the status's reason phrase, `instance`
    /// is never set.
    pub fn problem(&self) -> Problem {
        Problem {
            problem_type: format!("urn:enjin:problem:{}", self.slug),
            title: self.status.canonical_reason().unwrap_or("error").to_string(),
            status: self.status.as_u16(),
            detail: Some(self.detail.clone()),
            instance: None,
            field: self.field.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, detail = %self.detail, "request failed");
        }
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"enjin\""));
        }
        resp
    }
}

impl From<enjin_model::FieldError> for ApiError {
    fn from(f: enjin_model::FieldError) -> Self {
        RegistryError::Invalid(f).into()
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound { .. } | RegistryError::TokenNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not-found", e.to_string())
            }
            RegistryError::Invalid(f) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", f.message).with_field(f.field)
            }
            RegistryError::Conflict { field, detail } => {
                ApiError { status: StatusCode::CONFLICT, slug: "conflict", detail, field }
            }
            RegistryError::GuardMoved(d) => ApiError::new(StatusCode::CONFLICT, "conflict", d),
            RegistryError::Fenced(d) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", d),
            RegistryError::StillReferenced { detail } => {
                ApiError::new(StatusCode::CONFLICT, "still-referenced", detail)
            }
            RegistryError::Corrupt { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
            RegistryError::Unavailable(d) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", d),
            RegistryError::Forbidden(d) => ApiError::forbidden(d),
            RegistryError::Store(s) => s.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Compacted { .. } => ApiError::new(StatusCode::GONE, "compacted", e.to_string()),
            StoreError::Invalid(_) | StoreError::FutureRevision { .. } => {
                ApiError::bad_request(e.to_string())
            }
            // The store did not answer (an etcd member without a quorum, a timeout): worth
            // trying again, maybe through another server.
            StoreError::Closed | StoreError::Backend(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string())
            }
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing
            | AuthError::Invalid
            | AuthError::Expired
            | AuthError::Biscuit(_)
            | AuthError::Revoked
            | AuthError::BiscuitExpired(_) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
            }
            AuthError::Registry(r) => r.into(),
        }
    }
}

impl From<BusError> for ApiError {
    fn from(e: BusError) -> Self {
        match e {
            BusError::NoSuchKey(..) => ApiError::new(StatusCode::NOT_FOUND, "not-found", e.to_string()),
            BusError::Refused(d) => ApiError::new(StatusCode::CONFLICT, "conflict", d),
            BusError::Invalid { field, message } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message).with_field(field)
            }
            BusError::NoHub => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
            BusError::Timeout(d) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", d),
            BusError::Store(s) => s.into(),
            BusError::Registry(r) => r.into(),
            BusError::File { .. }
            | BusError::Pki(_)
            | BusError::Generate(_)
            | BusError::LoadKey(_)
            | BusError::SaveKey(_)
            | BusError::Member(_)
            | BusError::Bundle(_)
            | BusError::Seal(_)
            | BusError::Transport(_)
            | BusError::Request(_)
            | BusError::Encode(_) => {
                // The server's own files and keys: logged in full here, not shown to the client.
                tracing::error!(error = %e, "the ring bus failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the ring bus failed; see the server's log".to_string(),
                )
            }
        }
    }
}
