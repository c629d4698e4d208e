//! The OpenAPI 3.1 document, generated from the route table and the wire types' JSON Schemas
//! (OpenAPI 3.1 schemas are JSON Schema 2020-12, which schemars emits).

use enjin_model::api::Problem;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::routes::{Perm, RouteDef, Success};

pub fn document(routes: &[RouteDef]) -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    let mut generator = settings.into_generator();
    let mut inline = SchemaSettings::draft2020_12().with(|s| s.inline_subschemas = true).into_generator();
    let problem = generator.subschema_for::<Problem>();

    let mut paths: Map<String, Value> = Map::new();
    for r in routes {
        let mut op = Map::new();
        op.insert("operationId".into(), json!(r.operation_id));
        op.insert("summary".into(), json!(r.summary));
        op.insert("tags".into(), json!([r.tag]));
        let mut params = Vec::new();
        for name in path_params(&r.path) {
            params.push(json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}}));
        }
        if let Some(q) = r.query {
            let schema = q(&mut inline).to_value();
            let required: Vec<String> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, s) in props {
                    let mut p = json!({"name": name, "in": "query", "required": required.contains(name), "schema": s});
                    if let Some(d) = s.get("description") {
                        p["description"] = d.clone();
                    }
                    params.push(p);
                }
            }
        }
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        if let Some(body) = r.body {
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/json": {"schema": body(&mut generator)}}}),
            );
        }
        let mut responses = Map::new();
        match r.success {
            Success::Json(code, s) => {
                responses.insert(code.to_string(), json!({"description": "success", "content": {"application/json": {"schema": s(&mut generator)}}}));
            }
            Success::NoContent => {
                responses.insert("204".into(), json!({"description": "done"}));
            }
            Success::EventStream(s) => {
                responses.insert(
                    "200".into(),
                    json!({"description": "a stream of server-sent events; each `batch` event's data is the schema below",
                           "content": {"text/event-stream": {"schema": {"type": "string"}, "x-event-data": s(&mut generator)}}}),
                );
            }
            Success::Text => {
                responses.insert("200".into(), json!({"description": "success", "content": {"text/plain": {"schema": {"type": "string"}}}}));
            }
        }
        let mut errors = r.errors.clone();
        if r.perm == Perm::Public {
            op.insert("security".into(), json!([]));
        } else {
            errors.extend([401, 403]);
        }
        errors.sort_unstable();
        for code in errors {
            let reason = axum::http::StatusCode::from_u16(code)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("error");
            responses.insert(
                code.to_string(),
                json!({"description": reason, "content": {"application/problem+json": {"schema": problem}}}),
            );
        }
        op.insert("responses".into(), Value::Object(responses));
        let entry = paths.entry(r.path.clone()).or_insert_with(|| json!({}));
        entry[r.method.as_str().to_ascii_lowercase()] = Value::Object(op);
    }
    let schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    json!({
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
    })
}

fn path_params(path: &str) -> Vec<&str> {
    path.split('/').filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect()
}
