//! The OpenAPI document of every HTTP route, generated from the routes themselves.
//!
//! Routes are registered through [`Documented`], whose methods take a route's
//! description beside its handler: a route cannot be served without being described,
//! nor described with another method than it is served with. `/openapi.json` serves
//! what they built (a test also checks that no `.route(` call bypasses this).

use axum::handler::Handler;
use axum::Router;
use serde_json::{json, Map, Value};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (probes, OAuth redirects).
    Public,
    /// The control API: `Authorization: Bearer $CRM_API_TOKEN`.
    Bearer,
    /// A provider, proven by its signature or channel token.
    Signed,
}

/// One operation's description.
#[derive(Debug, Clone)]
pub struct Op {
    pub summary: &'static str,
    pub access: Access,
    /// Query parameters: (name, required, description).
    pub query: Vec<(&'static str, bool, &'static str)>,
    /// What the JSON body holds, if it takes one.
    pub body: Option<&'static str>,
    /// The success status.
    pub ok: u16,
    /// Failure statuses beyond those every route of its kind has.
    pub errors: Vec<u16>,
}

/// A control-API operation.
pub fn bearer(summary: &'static str) -> Op {
    Op {
        summary,
        access: Access::Bearer,
        query: Vec::new(),
        body: None,
        ok: 200,
        errors: Vec::new(),
    }
}

/// An operation anyone may call.
pub fn public(summary: &'static str) -> Op {
    Op {
        access: Access::Public,
        ..bearer(summary)
    }
}

/// A provider's signed delivery.
pub fn signed(summary: &'static str) -> Op {
    Op {
        access: Access::Signed,
        ..bearer(summary)
    }
}

impl Op {
    pub fn query(mut self, name: &'static str, description: &'static str) -> Self {
        self.query.push((name, false, description));
        self
    }

    pub fn required(mut self, name: &'static str, description: &'static str) -> Self {
        self.query.push((name, true, description));
        self
    }

    pub fn body(mut self, description: &'static str) -> Self {
        self.body = Some(description);
        self
    }

    pub fn ok(mut self, status: u16) -> Self {
        self.ok = status;
        self
    }

    pub fn errors(mut self, statuses: &[u16]) -> Self {
        self.errors.extend_from_slice(statuses);
        self
    }
}

/// A route's method, path and description.
#[derive(Debug, Clone)]
pub struct Described {
    pub method: &'static str,
    pub path: &'static str,
    pub op: Op,
}

/// A router whose every route is described.
pub struct Documented<S> {
    router: Router<S>,
    described: Vec<Described>,
}

impl<S> std::fmt::Debug for Documented<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Documented")
            .field("described", &self.described)
            .finish_non_exhaustive()
    }
}

impl<S: Clone + Send + Sync + 'static> Default for Documented<S> {
    fn default() -> Self {
        Self {
            router: Router::new(),
            described: Vec::new(),
        }
    }
}

macro_rules! method {
    ($name:ident, $verb:literal) => {
        pub fn $name<H, T>(mut self, path: &'static str, op: Op, handler: H) -> Self
        where
            H: Handler<T, S>,
            T: 'static,
        {
            self.router = self.router.route(path, axum::routing::$name(handler));
            self.described.push(Described {
                method: $verb,
                path,
                op,
            });
            self
        }
    };
}

impl<S: Clone + Send + Sync + 'static> Documented<S> {
    method!(get, "get");
    method!(post, "post");
    method!(put, "put");
    method!(delete, "delete");

    /// Adds `other`'s routes and descriptions.
    pub fn merge(mut self, other: Documented<S>) -> Self {
        self.router = self.router.merge(other.router);
        self.described.extend(other.described);
        self
    }

    /// The routes described so far.
    pub fn described(&self) -> &[Described] {
        &self.described
    }

    /// The router, with `state` (read the descriptions first: [`Self::described`]).
    pub fn with_state<S2>(self, state: S) -> Router<S2>
    where
        S2: Clone + Send + Sync + 'static,
    {
        self.router.with_state(state)
    }
}

fn error_text(status: u16) -> &'static str {
    match status {
        400 => "the request is malformed or a field is wrong (`error.fields` says which)",
        401 => "the bearer token or the signature is missing or wrong",
        404 => "no such record, connection or route target",
        409 => "the request contradicts the current state",
        413 => "the body is larger than accepted",
        415 => "the body is not JSON",
        503 => "a dependency (NATS, Postgres, the CRM) is unavailable; retry after the Retry-After",
        _ => "see the error's message",
    }
}

/// The OpenAPI 3.1 document of `described`.
pub fn document(described: &[Described], version: &str) -> Value {
    let mut paths = Map::new();
    for d in described {
        let mut parameters = Vec::new();
        for segment in d.path.split('/') {
            if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                parameters.push(json!({
                    "name": name, "in": "path", "required": true,
                    "schema": {"type": "string"},
                }));
            }
        }
        for (name, required, description) in &d.op.query {
            parameters.push(json!({
                "name": name, "in": "query", "required": required,
                "description": description, "schema": {"type": "string"},
            }));
        }
        let mut errors: Vec<u16> = d.op.errors.clone();
        if d.op.access != Access::Public {
            errors.push(401);
        }
        if !d.op.query.is_empty() || d.op.body.is_some() {
            errors.push(400);
        }
        if d.op.body.is_some() {
            // Over the body limit; not declared as JSON.
            errors.extend([413, 415]);
        }
        errors.push(503);
        errors.sort_unstable();
        errors.dedup();
        let error_body =
            json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}});
        let mut responses = Map::new();
        responses.insert(
            d.op.ok.to_string(),
            json!({"description": "success", "content": {"application/json": {}}}),
        );
        for status in errors {
            responses.insert(
                status.to_string(),
                json!({"description": error_text(status), "content": error_body}),
            );
        }
        let mut operation = json!({
            "summary": d.op.summary,
            "operationId": format!("{}{}", d.method, d.path.replace(['/', '{', '}', '-'], "_")),
            "parameters": parameters,
            "responses": responses,
        });
        if let Some(body) = d.op.body {
            operation["requestBody"] = json!({
                "description": body, "required": true,
                "content": {"application/json": {"schema": {"type": "object"}}},
            });
        }
        if d.op.access == Access::Bearer {
            operation["security"] = json!([{"bearer": []}]);
        }
        let item = paths.entry(d.path.to_owned()).or_insert_with(|| json!({}));
        item[d.method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "crmsync",
            "version": version,
            "description": "Event-sourced CRM sync engine: webhooks, OAuth, sync control, projections and call outcome pushes.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "CRM_API_TOKEN"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                            "fields": {"type": "array", "items": {"type": "object"}},
                        },
                    }},
                },
            },
        },
    })
}
