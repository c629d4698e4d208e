//! `GET /v1/audit`: the audit log, newest first.

use axum::Json;
use axum::extract::{Query, RawQuery, State};
use chrono::{DateTime, Utc};
use enjin_model::api::{AUDIT_LIMIT_DEFAULT, AUDIT_LIMIT_MAX, AuditList, AuditQuery};

use super::AppState;
use crate::audit::{self, Filter};
use crate::problem::ApiError;

pub async fn list(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<AuditList>, ApiError> {
    let q = parse(raw.as_deref().unwrap_or(""))?;
    let filter = Filter {
        since: q.since,
        principal: q.principal,
        limit: q.limit.unwrap_or(AUDIT_LIMIT_DEFAULT) as usize,
    };
    // Records of requests answered before this one are read too.
    state.audit.flush().await;
    let items = audit::read(state.registry.store().as_ref(), &filter, Utc::now()).await?;
    Ok(Json(AuditList { items }))
}

/// The query, each bad value refused naming its parameter.
fn parse(raw: &str) -> Result<AuditQuery, ApiError> {
    let uri: axum::http::Uri = format!("/?{raw}")
        .parse()
        .map_err(|_| ApiError::bad_request("the query is not a valid URI query"))?;
    let pairs = Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?
        .0;
    let mut q = AuditQuery::default();
    for (name, value) in pairs {
        let bad = |detail: String| ApiError::bad_request(detail).with_field(name.clone());
        let seen = match name.as_str() {
            "since" => q.since.replace(since(&value).map_err(bad)?).is_some(),
            "principal" if value.is_empty() => return Err(bad("principal must not be empty".into())),
            "principal" => q.principal.replace(value).is_some(),
            "limit" => q.limit.replace(limit(&value).map_err(bad)?).is_some(),
            other => {
                return Err(bad(format!("unknown query parameter {other:?}: use since, principal or limit")));
            }
        };
        if seen {
            return Err(bad(format!("{name} is given more than once")));
        }
    }
    Ok(q)
}

fn since(value: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("since {value:?} is not an RFC 3339 time (2026-01-01T00:00:00Z): {e}"))
}

fn limit(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if (1..=AUDIT_LIMIT_MAX).contains(&n) => Ok(n),
        _ => Err(format!("limit {value:?} must be a number from 1 to {AUDIT_LIMIT_MAX}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse() {
        assert_eq!(parse("").expect("empty"), AuditQuery::default());
        let q = parse("since=2026-01-01T00:00:00Z&principal=bob&limit=5").expect("valid");
        assert_eq!(q.since, Some("2026-01-01T00:00:00Z".parse().expect("time")));
        assert_eq!(q.principal.as_deref(), Some("bob"));
        assert_eq!(q.limit, Some(5));
        let q = parse("since=2026-01-01T01:00:00%2B01:00").expect("an offset");
        assert_eq!(q.since, Some("2026-01-01T00:00:00Z".parse().expect("time")));
    }

    #[test]
    fn bad_queries_name_the_parameter() {
        for (raw, field) in [
            ("since=yesterday", "since"),
            ("since=1h", "since"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=-1", "limit"),
            ("limit=ten", "limit"),
            ("principal=", "principal"),
            ("limit=1&limit=2", "limit"),
            ("who=bob", "who"),
        ] {
            let err = parse(raw).expect_err(raw);
            assert_eq!(err.status.as_u16(), 400, "{raw}");
            assert_eq!(err.field.as_deref(), Some(field), "{raw}: {}", err.detail);
        }
    }
}
