//! The route table. Every route is declared once, with its permission and its schemas; the
//! axum router and the OpenAPI document are both built from this table, so a route cannot be
//! served without being documented and guarded.

mod accounts;
mod apps;
mod audit;
mod bus;
mod firewall;
mod keys;
mod objects;
mod system;
mod tokens;
mod watch;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use enjin_model::api::{
    BusMessage, CreateRequest, DeleteQuery, Health, JoinRequest, JoinResponse, JoinTokenCreateRequest,
    JoinTokenCreated, KeyInfo, KeyList, KeyPath, List, ListQuery, ObjectPath, Problem, RevokeDerivedRequest,
    RotateRequest, TailQuery, TokenCreateRequest, TokenCreated, TokenList, TokenPath, UpdateRequest,
    WatchBatch, WatchQuery,
};
use enjin_model::kinds::{Resource, Verb};
use enjin_model::{Kind, Object, Spec, with_spec_type};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use tracing::Instrument;

use crate::auth::{Auth, AuthError, Principal};
use crate::biscuits::{CheckFailure, RequestFacts};
use crate::limits::FailedAuthLimiter;
use crate::metrics::Metrics;
use crate::problem::ApiError;
use crate::registry::Registry;

/// Shared by every handler: cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub registry: Registry,
    pub auth: Auth,
    pub metrics: Arc<Metrics>,
    pub openapi: Arc<serde_json::Value>,
    /// Turns true when the server begins to shut down; endless responses (watches) end then.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// The keys-and-trust service and the ring bus, where this server runs them.
    pub bus: Option<Arc<crate::bus::BusAuthority>>,
    /// The platform (apps, packages), where this server runs it.
    pub platform: Option<Arc<crate::platform::Platform>>,
    /// Requests per principal (`limits.rs`); `None` when rate limiting is off.
    pub rate: Option<Arc<crate::limits::RateLimiter>>,
    /// Failed authentications per source address (`limits.rs`); `None` when not limited.
    pub failed_auth: Option<Arc<FailedAuthLimiter>>,
    /// Where mutating requests are recorded (`audit.rs`).
    pub audit: crate::audit::AuditLog,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// Anyone (only `/healthz`).
    Public,
    /// `verb` on `resource`. For an object kind, tokens and the OpenAPI document, holding it in some
    /// account lets the request through and the handler checks the account it acts in; any other
    /// resource must be held in the system account (an operator's permission).
    Require(Verb, Resource),
    /// `watch` on the kind named in the query; with none named, on at least one kind (the
    /// handler then sends only the events of kinds the caller may watch).
    WatchQuery,
    /// The permission, or a bearer biscuit acting on itself: the handler decides which (revoking
    /// a biscuit one holds only narrows what one can do).
    RequireOrSelf(Verb, Resource),
}

pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// What a route answers with on success.
#[derive(Debug, Clone, Copy)]
pub enum Success {
    /// JSON of this schema, with any of these statuses.
    Json(&'static [u16], SchemaFn),
    NoContent,
    /// Server-sent events: each listed event name with the schema of its JSON data; events
    /// named `None` carry plain text.
    EventStream(&'static [(&'static str, Option<SchemaFn>)]),
    Text,
}

/// What a route takes as its request body.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    /// JSON of this schema (`application/json`, at most [`enjin_model::api::MAX_BODY_BYTES`]).
    Json(SchemaFn),
    /// Bytes of any kind, at least one.
    Binary,
}

/// One route, as served and as documented.
#[derive(Debug)]
pub struct RouteDef {
    /// The HTTP method.
    pub method: Method,
    /// The path template as axum routes it and OpenAPI shows it, parameters in braces
    /// (`/v1/apps/{app}`).
    pub path: String,
    /// Who may call it, checked before any extractor runs.
    pub perm: Perm,
    /// The OpenAPI `operationId`, unique across the API (`createToken`; for a kind's routes the
    /// verb and the kind's title).
    pub operation_id: String,
    /// One line saying what the route does, for the OpenAPI document.
    pub summary: String,
    /// The OpenAPI tag the route is grouped under (a kind's title, or the area it serves).
    pub tag: String,
    /// The path parameters, as one object whose properties are named as in `path`.
    pub path_params: Option<SchemaFn>,
    /// The schema of the query string, as one object; `None` for a route that takes none.
    pub query: Option<SchemaFn>,
    /// What the request body must be; `None` for a route that takes none.
    pub body: Option<Body>,
    /// What a successful answer carries.
    pub success: Success,
    /// Error statuses this route's handler can answer with besides those that follow from the
    /// rest of the row (`openapi::implied_errors`: 401, 403 and 429 where guarded, 400 for a
    /// query or body, 404 for a path, 413 and 415 for a body).
    pub errors: Vec<u16>,
    /// The axum handler for `method` on `path`.
    pub handler: MethodRouter<AppState>,
}

fn kind_routes<S: Spec>() -> Vec<RouteDef> {
    let k = S::KIND;
    let coll = format!("/{}/{}", enjin_model::api::VERSION, k.plural());
    let item = format!("{coll}/{{uuid}}");
    let tag = k.title().to_string();
    let res = Resource::Kind(k);
    vec![
        RouteDef {
            method: Method::GET,
            path: coll.clone(),
            perm: Perm::Require(Verb::List, res),
            operation_id: format!("list{}", k.title()),
            summary: format!(
                "List {}s, filtered by ring, compartment, tier, label, parent or selector",
                k.name()
            ),
            tag: tag.clone(),
            path_params: None,
            query: Some(schema::<ListQuery>),
            body: None,
            success: Success::Json(&[200], schema::<List<S>>),
            errors: vec![],
            handler: get(objects::list::<S>),
        },
        RouteDef {
            method: Method::POST,
            path: coll.clone(),
            perm: Perm::Require(Verb::Create, res),
            operation_id: format!("create{}", k.title()),
            summary: format!("Create a {}", k.name()),
            tag: tag.clone(),
            path_params: None,
            query: None,
            body: Some(Body::Json(schema::<CreateRequest<S>>)),
            success: Success::Json(&[201], schema::<Object<S>>),
            errors: write_errors(k),
            handler: post(objects::create::<S>),
        },
        RouteDef {
            method: Method::GET,
            path: item.clone(),
            perm: Perm::Require(Verb::Get, res),
            operation_id: format!("get{}", k.title()),
            summary: format!("Get a {}", k.name()),
            tag: tag.clone(),
            path_params: Some(schema::<ObjectPath>),
            query: None,
            body: None,
            success: Success::Json(&[200], schema::<Object<S>>),
            errors: vec![],
            handler: get(objects::get::<S>),
        },
        RouteDef {
            method: Method::PUT,
            path: item.clone(),
            perm: Perm::Require(Verb::Update, res),
            operation_id: format!("update{}", k.title()),
            summary: format!(
                "Replace a {}'s label, labels and spec, if it is still at the given revision",
                k.name()
            ),
            tag: tag.clone(),
            path_params: Some(schema::<ObjectPath>),
            query: None,
            body: Some(Body::Json(schema::<UpdateRequest<S>>)),
            success: Success::Json(&[200], schema::<Object<S>>),
            errors: write_errors(k),
            handler: put(objects::update::<S>),
        },
        RouteDef {
            method: Method::DELETE,
            path: item,
            perm: Perm::Require(Verb::Delete, res),
            operation_id: format!("delete{}", k.title()),
            summary: format!("Delete a {}; refused while other objects refer to it", k.name()),
            tag,
            path_params: Some(schema::<ObjectPath>),
            query: Some(schema::<DeleteQuery>),
            body: None,
            success: Success::NoContent,
            errors: vec![409],
            handler: delete(objects::delete::<S>),
        },
    ]
}

/// What a create or update of `kind` can be refused with besides the implied statuses: a
/// conflict (label taken, stale revision, lost races) or a broken rule, and for nodes 503 when
/// every instance uid is taken.
fn write_errors(kind: Kind) -> Vec<u16> {
    let mut errors = vec![409, 422];
    if kind == Kind::Node {
        errors.push(503);
    }
    errors
}

/// The events of `GET /v1/watch`: one `batch` per store transaction, and a last `error` when
/// the watch cannot go on (410 when it fell behind compaction).
const WATCH_EVENTS: &[(&str, Option<SchemaFn>)] =
    &[("batch", Some(schema::<WatchBatch>)), ("error", Some(schema::<Problem>))];

/// The events of `GET /v1/bus/tail`: verified messages, and a note when the tail fell behind.
const TAIL_EVENTS: &[(&str, Option<SchemaFn>)] = &[("message", Some(schema::<BusMessage>)), ("lagged", None)];

/// Every route of the API.
pub fn table() -> Vec<RouteDef> {
    let v = enjin_model::api::VERSION;
    let mut routes = vec![RouteDef {
        method: Method::GET,
        path: "/healthz".into(),
        perm: Perm::Public,
        operation_id: "health".into(),
        summary: "Liveness; needs no token".into(),
        tag: "System".into(),
        path_params: None,
        query: None,
        body: None,
        success: Success::Json(&[200], schema::<Health>),
        errors: vec![],
        handler: get(system::health),
    }];
    for kind in Kind::ALL {
        routes.extend(with_spec_type!(kind, S => kind_routes::<S>()));
    }
    routes.extend([
        RouteDef {
            method: Method::GET,
            path: format!("/{v}/account-status"),
            perm: Perm::Require(Verb::Get, Resource::Kind(Kind::Account)),
            operation_id: "accountStatus".into(),
            summary: "Each account the caller may read, with its quota and what it uses".into(),
            tag: "Account".into(),
            query: None,
            body: None,
            success: Success::Json(&[200], schema::<enjin_model::api::AccountStatusList>),
            path_params: None,
            errors: vec![],
            handler: get(accounts::status),
        },
        RouteDef {
            method: Method::GET,
            path: format!("/{v}/nodes/{{uuid}}/effective-rules"),
            perm: Perm::Require(Verb::Get, Resource::Kind(Kind::Node)),
            operation_id: "effectiveRulesNode".into(),
            summary: "The access rules an instance's firewall applies beyond the defaults, in order, \
                      with app selectors resolved to addresses"
                .into(),
            tag: Kind::Node.title().to_string(),
            path_params: Some(schema::<ObjectPath>),
            query: None,
            body: None,
            success: Success::Json(&[200], schema::<enjin_model::api::EffectiveRules>),
            errors: vec![409],
            handler: get(firewall::effective),
        },
        RouteDef {
            method: Method::GET,
            path: format!("/{v}/watch"),
            perm: Perm::WatchQuery,
            operation_id: "watch".into(),
            summary: "Stream changes as server-sent events, one event per store transaction, \
                      with the revision as its id; resume with `from` or `Last-Event-ID`"
                .into(),
            tag: "Watch".into(),
            path_params: None,
            query: Some(schema::<WatchQuery>),
            body: None,
            success: Success::EventStream(WATCH_EVENTS),
            errors: vec![410],
            handler: get(watch::watch),
        },
        RouteDef {
            method: Method::GET,
            path: format!("/{v}/tokens"),
            perm: Perm::Require(Verb::List, Resource::Token),
            operation_id: "listTokens".into(),
            summary: "List API tokens (never their secrets)".into(),
            tag: "Token".into(),
            path_params: None,
            query: None,
            body: None,
            success: Success::Json(&[200], schema::<TokenList>),
            errors: vec![],
            handler: get(tokens::list),
        },
        RouteDef {
            method: Method::POST,
            path: format!("/{v}/tokens"),
            perm: Perm::Require(Verb::Create, Resource::Token),
            operation_id: "createToken".into(),
            summary: "Issue an API token for a principal; the secret is in this response only".into(),
            tag: "Token".into(),
            path_params: None,
            query: None,
            body: Some(Body::Json(schema::<TokenCreateRequest>)),
            success: Success::Json(&[201], schema::<TokenCreated>),
            errors: vec![409, 422],
            handler: post(tokens::create),
        },
        RouteDef {
            method: Method::DELETE,
            path: format!("/{v}/tokens/{{id}}"),
            perm: Perm::Require(Verb::Delete, Resource::Token),
            operation_id: "revokeToken".into(),
            summary: "Revoke an API token".into(),
            tag: "Token".into(),
            path_params: Some(schema::<TokenPath>),
            query: None,
            body: None,
            success: Success::NoContent,
            errors: vec![409],
            handler: delete(tokens::revoke),
        },
        RouteDef {
            method: Method::POST,
            path: format!("/{v}/tokens/revoke-derived"),
            perm: Perm::RequireOrSelf(Verb::Delete, Resource::Token),
            operation_id: "revokeDerivedToken".into(),
            summary: "Revoke a biscuit and every biscuit derived from it (not what it was derived from); \
                      needs `delete token` in its root token's account, or the biscuit itself as the bearer"
                .into(),
            tag: "Token".into(),
            query: None,
            body: Some(Body::Json(schema::<RevokeDerivedRequest>)),
            path_params: None,
            success: Success::NoContent,
            errors: vec![404, 422],
            handler: post(tokens::revoke_derived),
        },
        RouteDef {
            method: Method::GET,
            path: format!("/{v}/keys"),
            perm: Perm::Require(Verb::List, Resource::Key),
            operation_id: "listKeys".into(),
            summary: "List bus identities: public keys, roles and states".into(),
            tag: "Key".into(),
            path_params: None,
            query: None,
            body: None,
            success: Success::Json(&[200], schema::<KeyList>),
            errors: vec![503],
            handler: get(keys::list),
        },
        RouteDef {
            method: Method::POST,
            path: format!("/{v}/keys/{{id}}/rotate"),
            perm: Perm::Require(Verb::Update, Resource::Key),
            operation_id: "rotateKey".into(),
            summary: "Replace a key this machine holds; the old one stays accepted for the overlap".into(),
            tag: "Key".into(),
            path_params: Some(schema::<KeyPath>),
            query: None,
            body: Some(Body::Json(schema::<RotateRequest>)),
            success: Success::Json(&[200], schema::<KeyInfo>),
            errors: vec![409, 503],
            handler: post(keys::rotate),
        },
        RouteDef {
            method: Method::POST,
            path: format!("/{v}/keys/{{id}}/revoke"),
            perm: Perm::Require(Verb::Delete, Resource::Key),
            operation_id: "revokeKey".into(),
            summary: "Revoke a key: every node of its ring stops accepting it".into(),
            tag: "Key".into(),
            path_params: Some(schema::<KeyPath>),
            query: None,
            body: None,
            success: Success::Json(&[200], schema::<KeyInfo>),
            errors: vec![409, 503],
            handler: post(keys::revoke),
        },
        RouteDef {
            method: Method::POST,
            path: format!("/{v}/join-tokens"),
            perm: Perm::Require(Verb::Create, Resource::JoinToken),
            operation_id: "createJoinToken".into(),
            summary: "Issue a single-use, expiring token for a child to join a ring under a parent".into(),
            tag: "Key".into(),
            path_params: None,
            query: None,
            body: Some(Body::Json(schema::<JoinTokenCreateRequest>)),
            success: Success::Json(&[201], schema::<JoinTokenCreated>),
            errors: vec![409, 422],
            handler: post(keys::create_join_token),
        },
        RouteDef {
            method: Method::POST,
            path: format!("/{v}/join"),
            perm: Perm::Require(Verb::Create, Resource::Join),
            operation_id: "join".into(),
            summary:
                "Join a ring with a join token: whitelist a public key, sign a CSR, get the trust bundle"
                    .into(),
            tag: "Key".into(),
            path_params: None,
            query: None,
            body: Some(Body::Json(schema::<JoinRequest>)),
            success: Success::Json(&[200], schema::<JoinResponse>),
            errors: vec![409, 422, 503],
            handler: post(keys::join),
        },
        RouteDef {
            method: Method::GET,
            path: format!("/{v}/bus/tail"),
            perm: Perm::Require(Verb::Watch, Resource::Bus),
            operation_id: "tailBus".into(),
            summary: "Follow verified messages on a bus topic as server-sent events".into(),
            tag: "Bus".into(),
            path_params: None,
            query: Some(schema::<TailQuery>),
            body: None,
            success: Success::EventStream(TAIL_EVENTS),
            errors: vec![404],
            handler: get(bus::tail),
        },
        RouteDef {
            method: Method::GET,
            path: format!("/{v}/audit"),
            perm: Perm::Require(Verb::List, Resource::Audit),
            operation_id: "listAudit".into(),
            summary: "The audit log: authenticated changes (refused ones too), newest first, with who, \
                      from where, what and how it ended"
                .into(),
            tag: "Audit".into(),
            query: Some(schema::<enjin_model::api::AuditQuery>),
            body: None,
            success: Success::Json(&[200], schema::<enjin_model::api::AuditList>),
            path_params: None,
            errors: vec![400, 500, 503],
            handler: get(audit::list),
        },
        RouteDef {
            method: Method::GET,
            path: format!("/{v}/openapi.json"),
            perm: Perm::Require(Verb::Get, Resource::OpenApi),
            operation_id: "openapi".into(),
            summary: "This document".into(),
            tag: "System".into(),
            path_params: None,
            query: None,
            body: None,
            success: Success::Json(&[200], schema::<serde_json::Value>),
            errors: vec![],
            handler: get(system::openapi),
        },
        RouteDef {
            method: Method::GET,
            path: "/metrics".into(),
            perm: Perm::Require(Verb::Get, Resource::Metrics),
            operation_id: "metrics".into(),
            summary: "Prometheus metrics in text format".into(),
            tag: "System".into(),
            path_params: None,
            query: None,
            body: None,
            success: Success::Text,
            errors: vec![],
            handler: get(system::metrics),
        },
    ]);
    routes.extend(app_routes(v));

    routes
}

/// The axum router for a table of routes.
pub fn router(state: AppState, routes: Vec<RouteDef>) -> Router {
    let mut router = Router::new();
    for r in routes {
        let handler = match r.perm {
            Perm::Public => r.handler,
            perm => r.handler.route_layer(middleware::from_fn_with_state((state.clone(), perm), authorize)),
        };
        router = router.route(&r.path, handler);
    }
    router
        .fallback(|| async { ApiError::new(axum::http::StatusCode::NOT_FOUND, "not-found", "no such route") })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(axum::extract::DefaultBodyLimit::max(enjin_model::api::MAX_BODY_BYTES))
        .with_state(state)
}

/// Authenticate, then authorize against the route's permission, before any extractor runs:
/// a caller without the right learns nothing about bodies, paths or objects.
async fn authorize(State((state, perm)): State<(AppState, Perm)>, mut req: Request, next: Next) -> Response {
    // A source that keeps failing to authenticate is refused before its token is looked at
    // (limits.rs); one that succeeds is never slowed by it.
    let source = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(peer)| peer.ip());
    let failures = state.failed_auth.as_deref().zip(source);
    if let Some((limiter, source)) = failures
        && let Err(limited) = limiter.admit(source, Instant::now())
    {
        state.metrics.failed_auth_limited();
        return limited.into_response();
    }
    let header = req.headers().get(header::AUTHORIZATION).and_then(|h| h.to_str().ok());
    let principal = match state.auth.authenticate(header).await {
        Ok(p) => p,
        Err(e) => return unauthenticated(&state, failures, e),
    };
    // Only a biscuit's checks need the request's facts.
    let facts = match principal.attenuation {
        Some(_) => Some(request_facts(&mut req, perm).await),
        None => None,
    };
    let verdict = facts.as_ref().and_then(|f| principal.attenuation_refuses(f));
    // An expired biscuit is no credential any more: refused like an unknown token, before
    // anything is counted or recorded against its principal.
    if let Some(CheckFailure::Expired(why)) = verdict {
        return unauthenticated(&state, failures, AuthError::BiscuitExpired(why));
    }
    // Limits at the door (limits.rs): a principal over its rate is refused before anything else.
    if let Some(limiter) = &state.rate
        && let Err(limited) = limiter.check(&principal.name, Instant::now())
    {
        state.metrics.rate_limited();
        return limited.into_response();
    }
    // From here on the caller is known: its mutating requests are recorded, refusals included.
    let audit = crate::audit::Pending::begin(&req, &principal, perm, chrono::Utc::now());
    // Objects and tokens belong to accounts: here the caller needs the permission in some
    // account, and the handler checks it in the object's own. The rest (keys, join tokens,
    // the bus, metrics, the audit log) is the system account's.
    let allowed = match perm {
        Perm::Public => true,
        Perm::Require(verb, resource @ (Resource::Kind(_) | Resource::Token | Resource::OpenApi)) => {
            principal.allows_somewhere(verb, resource)
        }
        Perm::Require(verb, resource) => principal.allows(verb, resource, principal.system),
        Perm::RequireOrSelf(verb, resource) => {
            principal.attenuation.is_some() || principal.allows_somewhere(verb, resource)
        }
        Perm::WatchQuery => match watch::kind_in_query(req.uri().query()) {
            Ok(Some(kind)) => principal.allows_somewhere(Verb::Watch, Resource::Kind(kind)),
            // Malformed queries are the handler's to report, once the caller may watch at all.
            Ok(None) | Err(()) => {
                Kind::ALL.into_iter().any(|k| principal.allows_somewhere(Verb::Watch, Resource::Kind(k)))
            }
        },
    };
    if !allowed {
        state.metrics.auth_failure("forbidden");
        let what = match perm {
            Perm::Require(verb, resource) | Perm::RequireOrSelf(verb, resource) => {
                format!("{} {resource}", verb.name())
            }
            _ => "watch these kinds".to_string(),
        };
        let refused = ApiError::forbidden(format!("principal {} may not {what}", principal.name));
        return state.audit.record(audit, refused.into_response()).await;
    }
    // A biscuit's checks come on top of the permission, never instead of it. On a route that
    // lets a biscuit act on itself, the handler runs them when it acts on something else.
    if let Some(refused) = attenuation_refuses(&principal, perm, verdict) {
        state.metrics.auth_failure("attenuated");
        return state.audit.record(audit, refused.into_response()).await;
    }
    if let Some(facts) = facts {
        req.extensions_mut().insert(facts);
    }
    req.extensions_mut().insert(principal);
    let resp = next.run(req).await;
    state.audit.record(audit, resp).await
}

/// The 401 for a request whose token is no credential, counted against its source. A store
/// failure while authenticating is the server's fault, not the caller's, and is not counted.
fn unauthenticated(
    state: &AppState,
    failures: Option<(&FailedAuthLimiter, IpAddr)>,
    e: AuthError,
) -> Response {
    state.metrics.auth_failure("unauthenticated");
    if let Some((limiter, source)) = failures
        && !matches!(e, AuthError::Registry(_))
    {
        limiter.failed(source, Instant::now());
    }
    ApiError::from(e).into_response()
}

/// The facts a biscuit's checks see about this request: the time, the route's permission as
/// `operation` and `resource`, the route template, and the `{app}` the path names.
async fn request_facts(req: &mut Request, perm: Perm) -> RequestFacts {
    use axum::extract::{FromRequestParts, RawPathParams};
    let (operation, resource) = match perm {
        Perm::Require(verb, resource) | Perm::RequireOrSelf(verb, resource) => {
            (Some(verb), Some(resource.to_string()))
        }
        Perm::WatchQuery => {
            let kind = watch::kind_in_query(req.uri().query()).ok().flatten();
            (Some(Verb::Watch), kind.map(|k| Resource::Kind(k).to_string()))
        }
        Perm::Public => (None, None),
    };
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string());
    let (mut parts, body) = std::mem::take(req).into_parts();
    let app = match RawPathParams::from_request_parts(&mut parts, &()).await {
        Ok(params) => params.iter().find(|(k, _)| *k == "app").map(|(_, v)| v.to_string()),
        Err(_) => None,
    };
    *req = Request::from_parts(parts, body);
    RequestFacts { now: chrono::Utc::now(), operation, resource, route, app }
}

/// The 403 a caller's biscuit answers for this request, if its checks (`verdict`) refuse it.
/// Biscuits cannot mint credentials at all: a new token or join token would not carry their
/// checks.
fn attenuation_refuses(principal: &Principal, perm: Perm, verdict: Option<CheckFailure>) -> Option<ApiError> {
    principal.attenuation.as_ref()?;
    if matches!(perm, Perm::Require(Verb::Create, Resource::Token | Resource::JoinToken)) {
        return Some(ApiError::forbidden(crate::auth::ATTENUATED_MINT));
    }
    if matches!(perm, Perm::RequireOrSelf(..)) {
        return None;
    }
    match verdict? {
        CheckFailure::Refused(why) => {
            Some(ApiError::forbidden(format!("the token's attenuation refused this request: {why}")))
        }
        CheckFailure::Expired(why) => Some(AuthError::BiscuitExpired(why).into()),
    }
}

/// Count and time every request, inside a span carrying its method and route.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let method = req.method().clone();
    let span = tracing::debug_span!("request", %method, route = %route);
    let started = Instant::now();
    let resp = next.run(req).instrument(span).await;
    state.metrics.request(method.as_str(), &route, resp.status().as_u16(), started.elapsed());
    resp
}

#[allow(
    clippy::too_many_arguments,
    reason = "one row of the route table, as the other routes spell them out"
)]
fn app_route(
    method: Method,
    path: String,
    perm: (Verb, Kind),
    id: &str,
    summary: &str,
    body: Option<Body>,
    success: Success,
    errors: Vec<u16>,
    handler: MethodRouter<AppState>,
) -> RouteDef {
    let path_params = path.contains("{app}").then_some(schema::<enjin_model::api::AppPath> as SchemaFn);
    RouteDef {
        method,
        path,
        perm: Perm::Require(perm.0, Resource::Kind(perm.1)),
        operation_id: id.into(),
        summary: summary.into(),
        tag: "App".into(),
        path_params,
        query: None,
        body,
        success,
        errors,
        handler,
    }
}

/// The platform's routes: deploying and running apps. Deploys, rollbacks, restarts and
/// scaling make releases and tasks, and need the right to create releases.
fn app_routes(v: &str) -> Vec<RouteDef> {
    use enjin_model::api::{
        AppList, AppStatus, DeployRequest, LogsQuery, LogsReply, PackageUploaded, ReleaseList,
        RollbackRequest, RolloutStarted, ScaleRequest,
    };
    let started = Success::Json(&[202], schema::<RolloutStarted>);
    let change = vec![409, 422, 503];
    let mut upload = app_route(
        Method::POST,
        format!("/{v}/packages"),
        (Verb::Create, Kind::Release),
        "uploadPackage",
        "Store an app package (tar + zstd) in the content-addressed package store; identical bytes are kept once (200 instead of 201)",
        Some(Body::Binary),
        Success::Json(&[200, 201], schema::<PackageUploaded>),
        vec![503],
        post(apps::upload).layer(axum::extract::DefaultBodyLimit::max(crate::platform::MAX_PACKAGE_BYTES)),
    );
    upload.query = Some(schema::<enjin_model::api::UploadQuery>);
    let mut logs = app_route(
        Method::GET,
        format!("/{v}/apps/{{app}}/logs"),
        (Verb::Get, Kind::Release),
        "appLogs",
        "Lines the app's instances wrote, with times and instance ids, from the hosts that run them",
        None,
        Success::Json(&[200], schema::<LogsReply>),
        vec![422, 503, 504],
        get(apps::logs),
    );
    logs.query = Some(schema::<LogsQuery>);
    vec![
        upload,
        app_route(
            Method::POST,
            format!("/{v}/apps/{{app}}/deploys"),
            (Verb::Create, Kind::Release),
            "deployApp",
            "Deploy a new release from an uploaded package: a rollout task starts it beside the live one",
            Some(Body::Json(schema::<DeployRequest>)),
            started,
            change.clone(),
            post(apps::deploy),
        ),
        app_route(
            Method::POST,
            format!("/{v}/apps/{{app}}/rollback"),
            (Verb::Create, Kind::Release),
            "rollbackApp",
            "Deploy an earlier release's code and configuration again, as a new release",
            Some(Body::Json(schema::<RollbackRequest>)),
            started,
            change.clone(),
            post(apps::rollback),
        ),
        app_route(
            Method::POST,
            format!("/{v}/apps/{{app}}/restart"),
            (Verb::Create, Kind::Release),
            "restartApp",
            "Replace every instance of the live release, without downtime",
            None,
            started,
            change.clone(),
            post(apps::restart),
        ),
        app_route(
            Method::POST,
            format!("/{v}/apps/{{app}}/scale"),
            (Verb::Update, Kind::Release),
            "scaleApp",
            "Set the instance counts of the live release's process types",
            Some(Body::Json(schema::<ScaleRequest>)),
            started,
            change,
            post(apps::scale),
        ),
        app_route(
            Method::GET,
            format!("/{v}/apps"),
            (Verb::List, Kind::Release),
            "listApps",
            "Every app with its live release and instances",
            None,
            Success::Json(&[200], schema::<AppList>),
            vec![503],
            get(apps::list),
        ),
        app_route(
            Method::GET,
            format!("/{v}/apps/{{app}}"),
            (Verb::Get, Kind::Release),
            "appStatus",
            "An app's live release, instances (health, host, address, CPU and memory) and traffic",
            None,
            Success::Json(&[200], schema::<AppStatus>),
            vec![503],
            get(apps::status),
        ),
        app_route(
            Method::GET,
            format!("/{v}/apps/{{app}}/releases"),
            (Verb::List, Kind::Release),
            "listAppReleases",
            "An app's releases, newest first",
            None,
            Success::Json(&[200], schema::<ReleaseList>),
            vec![503],
            get(apps::releases),
        ),
        logs,
    ]
}
