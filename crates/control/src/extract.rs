//! Extractors whose rejections are problem documents naming what was wrong, instead of axum's
//! plain-text ones.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::problem::ApiError;

/// A JSON body; a decoding error names the field (`spec.ring`) where serde stopped.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned + Serialize, St: Send + Sync> FromRequest<St> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &St) -> Result<Self, Self::Rejection> {
        if let Some(ct) = req.headers().get(axum::http::header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or("");
            if !ct.starts_with("application/json") {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported-media-type",
                    format!("the body must be application/json, not {ct}"),
                ));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too-large",
                    format!("the body is larger than {} bytes", enjin_model::api::MAX_BODY_BYTES),
                )
            } else {
                ApiError::bad_request(format!("failed to read the body: {e}"))
            }
        })?;
        let mut value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
        integral_numbers(&mut value);
        let sent = value.clone();
        let decoded: T = match serde_path_to_error::deserialize(value) {
            Ok(v) => v,
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let err = ApiError::bad_request(format!("invalid JSON body: {inner}"));
                return Err(if path == "." { err } else { err.with_field(path) });
            }
        };
        let read = serde_json::to_value(&decoded)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
        if let Some(field) = array_for_object(&sent, &read, String::new()) {
            let err = ApiError::bad_request("invalid JSON body: an array where an object belongs");
            return Err(if field.is_empty() { err } else { err.with_field(field) });
        }
        Ok(ApiJson(decoded))
    }
}

/// Where the body sent an array that was read as an object: serde reads a struct from an
/// array of its fields in order too, so `[null, null]` would pass for an object whose fields
/// are all optional. The API's schemas allow objects only; this finds the first place where
/// the value as read (serialized again) has an object and the body as sent an array.
fn array_for_object(sent: &serde_json::Value, read: &serde_json::Value, path: String) -> Option<String> {
    use serde_json::Value;
    match (sent, read) {
        (Value::Array(_), Value::Object(_)) => Some(path),
        (Value::Array(sent), Value::Array(read)) => sent
            .iter()
            .zip(read)
            .enumerate()
            .find_map(|(i, (s, r))| array_for_object(s, r, format!("{path}[{i}]"))),
        (Value::Object(sent), Value::Object(read)) => sent.iter().find_map(|(k, s)| {
            let inner = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
            read.get(k).and_then(|r| array_for_object(s, r, inner))
        }),
        _ => None,
    }
}

/// JSON Schema's `integer` is any number without a fractional part, `2.0` as much as `2`, and
/// a client generated from the API document may send either; serde reads `2.0` only into a
/// float. So numbers that are whole and fit an `i64` or `u64` become integers before the
/// body is decoded (a float field takes an integer as well).
fn integral_numbers(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(whole) = n.as_f64().filter(|f| n.is_f64() && f.fract() == 0.0) {
                // `as` saturates; the comparisons keep out what would not round-trip.
                if whole >= i64::MIN as f64 && whole < i64::MAX as f64 {
                    *n = (whole as i64).into();
                } else if whole >= 0.0 && whole < u64::MAX as f64 {
                    *n = (whole as u64).into();
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(integral_numbers),
        _ => {}
    }
}

/// A query string.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, St: Send + Sync> FromRequestParts<St> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &St) -> Result<Self, Self::Rejection> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))
    }
}

/// Path parameters.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, St: Send + Sync> FromRequestParts<St> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state).await.map(|p| ApiPath(p.0)).map_err(|e| {
            ApiError::new(StatusCode::NOT_FOUND, "not-found", format!("no such object: {}", e.body_text()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_floats_become_integers() {
        let mut v = serde_json::json!({"a": 2.0, "b": [-3.0, 1.5], "c": 1e30, "d": 7, "e": 1.8e19});
        integral_numbers(&mut v);
        assert_eq!(v["a"], serde_json::json!(2));
        assert!(v["a"].is_i64());
        assert_eq!(v["b"], serde_json::json!([-3, 1.5]));
        assert!(v["c"].is_f64(), "too large for any integer type: left as it is");
        assert!(v["e"].is_u64());
        assert_eq!(v["d"], serde_json::json!(7));
    }

    /// A long whole number written with `.0` is read exactly (serde_json's default parser
    /// rounded this one to `…406.5`, and the body was refused as not an integer).
    #[test]
    fn long_whole_floats_are_read_exactly() {
        let mut v: serde_json::Value =
            serde_json::from_str(r#"{"revision": 4215484637112406.0}"#).expect("json");
        integral_numbers(&mut v);
        assert_eq!(v["revision"].as_i64(), Some(4_215_484_637_112_406));
    }

    #[test]
    fn arrays_read_as_objects_are_found() {
        let read = serde_json::json!({"spec": {"a": null, "b": {"c": 1}}, "list": [{"x": 1}]});
        assert_eq!(
            array_for_object(&serde_json::json!({"spec": [null, null]}), &read, String::new()),
            Some("spec".into())
        );
        assert_eq!(
            array_for_object(&serde_json::json!({"spec": {"b": [1]}}), &read, String::new()),
            Some("spec.b".into())
        );
        assert_eq!(
            array_for_object(&serde_json::json!({"list": [[1]]}), &read, String::new()),
            Some("list[0]".into())
        );
        assert_eq!(array_for_object(&serde_json::json!([1]), &read, String::new()), Some(String::new()));
        assert_eq!(array_for_object(&read, &read, String::new()), None);
    }
}
