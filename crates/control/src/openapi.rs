//! The OpenAPI 3.1 document, generated from the route table and the wire types' JSON Schemas
//! (OpenAPI 3.1 schemas are JSON Schema 2020-12, which schemars emits).
//!
//! The document is meant to be exact: a client generated from it sends nothing the server
//! refuses as malformed, and expects every status the server can answer. What a row of the
//! route table implies (a guard, a query, a path, a body) becomes its statuses here, in
//! [`implied_errors`], rather than in hand-written lists; the schemas carry the formats,
//! patterns and ranges of the types, and [`exact_formats`] adds what schemars leaves out.
//! `crates/enjin/tests/openapi.rs` runs an OpenAPI fuzzer against the real server to keep it so.

use enjin_model::api::Problem;
use schemars::SchemaGenerator;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::routes::{Body, Perm, RouteDef, Success};

pub fn document(routes: &[RouteDef]) -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    let mut generator = settings.into_generator();
    let mut inline = SchemaSettings::draft2020_12().with(|s| s.inline_subschemas = true).into_generator();

    let mut paths: Map<String, Value> = Map::new();
    for r in routes {
        let op = operation(r, &mut generator, &mut inline);
        let entry = paths.entry(r.path.clone()).or_insert_with(|| json!({}));
        entry[r.method.as_str().to_ascii_lowercase()] = op;
    }
    let schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "enjin meta API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The control plane of an enjin cloud. Every route but /healthz needs `Authorization: Bearer <token>`."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        },
        "security": [{"bearer": []}]
    });
    exact_formats(&mut doc);
    doc
}

/// The statuses a route answers with besides its success, in order: those its row implies and
/// those its handler adds.
pub fn errors(r: &RouteDef) -> Vec<u16> {
    let mut codes = implied_errors(r);
    codes.extend(&r.errors);
    codes.sort_unstable();
    codes.dedup();
    codes
}

/// What a row of the route table implies: 401 and 403 from the guard, and 429 from the rate
/// limits in front of every guarded route (a principal's requests, a source's failed
/// authentications); 400 when a query string or body can be malformed;
/// 404 when a path parameter does not parse (an id that is no id names nothing); 413 and 415
/// for a JSON body (over [`enjin_model::api::MAX_BODY_BYTES`], or not `application/json`), 413
/// for a binary one; 408 for any body, when it does not arrive within the body timeout.
pub fn implied_errors(r: &RouteDef) -> Vec<u16> {
    let mut codes = Vec::new();
    if r.perm != Perm::Public {
        codes.extend([401, 403, 429]);
    }
    if r.query.is_some() || r.body.is_some() {
        codes.push(400);
    }
    if r.path_params.is_some() {
        codes.push(404);
    }
    match r.body {
        Some(Body::Json(_)) => codes.extend([408, 413, 415]),
        Some(Body::Binary) => codes.extend([408, 413]),
        None => {}
    }
    codes
}

fn operation(r: &RouteDef, generator: &mut SchemaGenerator, inline: &mut SchemaGenerator) -> Value {
    let mut op = Map::new();
    op.insert("operationId".into(), json!(r.operation_id));
    op.insert("summary".into(), json!(r.summary));
    op.insert("tags".into(), json!([r.tag]));
    let mut params = Vec::new();
    if let Some(p) = r.path_params {
        params.extend(parameters("path", &p(inline).to_value()));
    }
    if let Some(q) = r.query {
        params.extend(parameters("query", &q(inline).to_value()));
    }
    if !params.is_empty() {
        op.insert("parameters".into(), Value::Array(params));
    }
    match r.body {
        Some(Body::Json(body)) => {
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/json": {"schema": body(generator)}}}),
            );
        }
        Some(Body::Binary) => {
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/octet-stream": {
                    "schema": {"type": "string", "format": "binary", "minLength": 1}
                }}}),
            );
        }
        None => {}
    }
    if r.perm == Perm::Public {
        op.insert("security".into(), json!([]));
    }
    op.insert("responses".into(), Value::Object(responses(r, generator)));
    Value::Object(op)
}

/// One parameter per property of `schema` (a path or query struct's schema), required as the
/// struct requires it. Parameters are never `null` (an absent one is how a query says none),
/// so the `null` that schemars gives an `Option` is dropped.
fn parameters(location: &str, schema: &Value) -> Vec<Value> {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = schema.get("properties").and_then(Value::as_object) else { return Vec::new() };
    props
        .iter()
        .map(|(name, s)| {
            let mut s = s.clone();
            let description = s.as_object_mut().and_then(|o| o.remove("description"));
            let required = location == "path" || required.contains(&name.as_str());
            let mut p = json!({"name": name, "in": location, "required": required, "schema": not_null(s)});
            if let Some(d) = description {
                p["description"] = d;
            }
            p
        })
        .collect()
}

/// `schema` without `null` among its types.
fn not_null(mut schema: Value) -> Value {
    if let Some(types) = schema.get_mut("type").and_then(Value::as_array_mut) {
        types.retain(|t| t != "null");
        if let [only] = types.as_slice() {
            let only = only.clone();
            schema["type"] = only;
        }
    }
    if let Some(any_of) = schema.get("anyOf").and_then(Value::as_array) {
        let rest: Vec<&Value> = any_of.iter().filter(|s| s.get("type") != Some(&json!("null"))).collect();
        if let [only] = rest.as_slice() {
            let only = (*only).clone();
            if let Some(o) = schema.as_object_mut() {
                o.remove("anyOf");
            }
            if let (Some(o), Value::Object(inner)) = (schema.as_object_mut(), only) {
                o.extend(inner);
            }
        }
    }
    schema
}

fn responses(r: &RouteDef, generator: &mut SchemaGenerator) -> Map<String, Value> {
    let mut responses = Map::new();
    match r.success {
        Success::Json(codes, s) => {
            let schema = s(generator);
            for code in codes {
                responses.insert(
                    code.to_string(),
                    json!({"description": "success", "content": {"application/json": {"schema": schema}}}),
                );
            }
        }
        Success::NoContent => {
            responses.insert("204".into(), json!({"description": "done"}));
        }
        Success::EventStream(events) => {
            responses.insert(
                "200".into(),
                json!({"description": "a stream of server-sent events, each one of those in `itemSchema` (OpenAPI 3.2's way to describe a stream's items)",
                       "content": {"text/event-stream": {"itemSchema": event_schema(events, generator)}}}),
            );
        }
        Success::Text => {
            responses.insert(
                "200".into(),
                json!({"description": "success", "content": {"text/plain": {"schema": {"type": "string"}}}}),
            );
        }
    }
    let problem = generator.subschema_for::<Problem>();
    for code in errors(r) {
        let reason =
            axum::http::StatusCode::from_u16(code).ok().and_then(|s| s.canonical_reason()).unwrap_or("error");
        responses.insert(
            code.to_string(),
            json!({"description": reason, "content": {"application/problem+json": {"schema": problem}}}),
        );
    }
    responses
}

/// One server-sent event, as OpenAPI 3.2 describes them (`event`, `data`, `id`, `retry`), of
/// one of the named kinds, with its JSON data's schema where it has one.
fn event_schema(
    events: &[(&str, Option<crate::routes::SchemaFn>)],
    generator: &mut SchemaGenerator,
) -> Value {
    let kinds: Vec<Value> = events
        .iter()
        .map(|(name, data)| {
            let data = match data {
                Some(s) => json!({"type": "string", "contentMediaType": "application/json", "contentSchema": s(generator)}),
                None => json!({"type": "string"}),
            };
            json!({
                "type": "object",
                "required": ["event", "data"],
                "properties": {
                    "event": {"const": name},
                    "data": data,
                    "id": {"type": "string"},
                    "retry": {"type": "integer", "minimum": 0}
                }
            })
        })
        .collect();
    json!({"oneOf": kinds})
}

/// What schemars leaves out of its formats, for every schema in the document: the bounds of
/// sized integers (`uint32` has a `minimum` but no `maximum`, yet the server refuses a value
/// above it), and `ip`, which is no JSON Schema format: an address is `ipv4` or `ipv6`.
pub fn exact_formats(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if o.get("format").and_then(Value::as_str) == Some("ip") {
                o.remove("format");
                o.insert("anyOf".into(), json!([{"format": "ipv4"}, {"format": "ipv6"}]));
            }
            let bounds = o.get("format").and_then(Value::as_str).and_then(integer_bounds);
            if let Some((min, max)) = bounds {
                let tighter_min =
                    o.get("minimum").and_then(Value::as_f64).is_some_and(|m| m > min.as_f64().unwrap_or(m));
                if !tighter_min {
                    o.insert("minimum".into(), Value::Number(min));
                }
                let tighter_max =
                    o.get("maximum").and_then(Value::as_f64).is_some_and(|m| m < max.as_f64().unwrap_or(m));
                if !tighter_max {
                    o.insert("maximum".into(), Value::Number(max));
                }
            }
            o.values_mut().for_each(exact_formats);
        }
        Value::Array(a) => a.iter_mut().for_each(exact_formats),
        _ => {}
    }
}

fn integer_bounds(format: &str) -> Option<(serde_json::Number, serde_json::Number)> {
    Some(match format {
        "uint8" => (0.into(), u8::MAX.into()),
        "uint16" => (0.into(), u16::MAX.into()),
        "uint32" => (0.into(), u32::MAX.into()),
        "uint64" => (0.into(), u64::MAX.into()),
        "int8" => (i8::MIN.into(), i8::MAX.into()),
        "int16" => (i16::MIN.into(), i16::MAX.into()),
        "int32" => (i32::MIN.into(), i32::MAX.into()),
        "int64" => (i64::MIN.into(), i64::MAX.into()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    //! Structural facts of the document, read from the document itself (not from the route
    //! table that made it), so that a change to either that breaks them fails here, quickly.
    //! Whether the server really behaves so is `crates/enjin/tests/openapi.rs`'s to find.

    use std::collections::BTreeSet;

    use serde_json::Value;

    fn doc() -> Value {
        super::document(&crate::routes::table())
    }

    /// Every operation: (method, path, operation).
    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                ops.push((method.clone(), path.clone(), op.clone()));
            }
        }
        ops
    }

    fn documents(op: &Value, code: u16) -> bool {
        op["responses"].get(code.to_string()).is_some()
    }

    fn params_in<'a>(op: &'a Value, location: &str) -> Vec<&'a Value> {
        op["parameters"].as_array().into_iter().flatten().filter(|p| p["in"] == location).collect()
    }

    #[test]
    fn every_route_documents_the_statuses_its_shape_implies() {
        let doc = doc();
        let ops = operations(&doc);
        assert!(ops.len() > 80, "{} operations", ops.len());
        for (method, path, op) in &ops {
            let name = format!("{} {path}", method.to_uppercase());
            let guarded = op.get("security") != Some(&serde_json::json!([]));
            if guarded {
                for code in [401, 403, 429] {
                    assert!(documents(op, code), "{name} is guarded but does not document {code}");
                }
            }
            let body = op.get("requestBody");
            if !params_in(op, "query").is_empty() || body.is_some() {
                assert!(documents(op, 400), "{name} takes a query or body but does not document 400");
            }
            if body.is_some_and(|b| b["content"].get("application/json").is_some()) {
                for code in [413, 415] {
                    assert!(documents(op, code), "{name} takes a JSON body but does not document {code}");
                }
            }
            let in_path: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .collect();
            let declared: BTreeSet<&str> =
                params_in(op, "path").iter().filter_map(|p| p["name"].as_str()).collect();
            assert_eq!(in_path, declared, "{name}: path parameters");
            if !in_path.is_empty() {
                assert!(documents(op, 404), "{name} has a path parameter but does not document 404");
            }
            for p in params_in(op, "query").iter().chain(&params_in(op, "path")) {
                let types = &p["schema"]["type"];
                assert!(
                    types != "null" && !types.as_array().is_some_and(|t| t.contains(&"null".into())),
                    "{name}: parameter {} may be null",
                    p["name"]
                );
            }
            let success = op["responses"].as_object().into_iter().flatten().any(|(c, _)| c.starts_with('2'));
            assert!(success, "{name} documents no success");
        }
    }

    #[test]
    fn operation_ids_are_unique() {
        let doc = doc();
        let mut seen = BTreeSet::new();
        for (method, path, op) in operations(&doc) {
            let id = op["operationId"].as_str().unwrap_or_default().to_string();
            assert!(!id.is_empty(), "{method} {path} has no operationId");
            assert!(seen.insert(id.clone()), "operationId {id} is used twice");
        }
    }

    #[test]
    fn every_schema_reference_resolves() {
        fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::Object(o) => {
                    if let Some(r) = o.get("$ref").and_then(Value::as_str) {
                        out.push(r);
                    }
                    o.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let doc = doc();
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("{r} is not a local reference"));
            assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        }
    }

    #[test]
    fn named_kinds_require_a_label_and_sized_integers_are_bounded() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        let create = &schemas["CreateRequest_NodeSpec"];
        assert!(create["required"].as_array().is_some_and(|r| r.contains(&"label".into())), "{create}");
        assert_eq!(create["properties"]["label"]["type"], "string");
        assert_eq!(create["properties"]["label"]["pattern"], enjin_model::LABEL_PATTERN);
        let unnamed = &schemas["CreateRequest_MembershipSpec"];
        assert!(!unnamed["required"].as_array().is_some_and(|r| r.contains(&"label".into())), "{unnamed}");
        let revision = &schemas["UpdateRequest_NodeSpec"]["properties"]["revision"];
        assert_eq!(revision["format"], "int64");
        assert_eq!(revision["minimum"], 1);
        assert_eq!(revision["maximum"], i64::MAX);
        let version = &schemas["RollbackRequest"]["properties"]["version"];
        assert_eq!(version["maximum"], u32::MAX, "{version}");
    }
}
