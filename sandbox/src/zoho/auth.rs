//! Authorising API calls: `Authorization: Zoho-oauthtoken <token>` for a live token of
//! this data centre (no header: 401 `AUTHENTICATION_FAILURE`; another scheme such as
//! `Bearer`, an unknown, expired or other-DC token: 401 `INVALID_TOKEN`), then the
//! concurrency place and one credit, then the scope each handler checks (401
//! `OAUTH_SCOPE_MISMATCH`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::dc::DataCentre;
use super::error::ApiError;
use super::schema::Module;
use super::store::now_ms;
use super::{base_url, ZohoSandbox};

/// What a scope must grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Create,
    Update,
    Delete,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Read => "READ",
            Op::Create => "CREATE",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
        }
    }
}

/// The authorised caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token: String,
    pub scope: Arc<str>,
    /// This data centre's API domain as the caller reached it.
    pub api_domain: String,
}

/// Whether a comma-separated list of scopes grants `op` on `service` (and
/// `resource`): `ZohoCRM.modules.ALL`, `ZohoCRM.modules.READ`,
/// `ZohoCRM.modules.contacts.READ`, `ZohoCRM.coql.READ`,
/// `ZohoCRM.notifications.ALL`, ...
pub fn grants(scopes: &str, service: &str, resource: Option<&str>, op: Op) -> bool {
    scopes
        .split([',', ' '])
        .filter(|s| !s.is_empty())
        .any(|scope| {
            let parts: Vec<&str> = scope.split('.').collect();
            let (granted_resource, granted_op) = match parts.as_slice() {
                [crm, svc, op]
                    if crm.eq_ignore_ascii_case("ZohoCRM") && svc.eq_ignore_ascii_case(service) =>
                {
                    (None, *op)
                }
                [crm, svc, res, op]
                    if crm.eq_ignore_ascii_case("ZohoCRM") && svc.eq_ignore_ascii_case(service) =>
                {
                    (Some(*res), *op)
                }
                _ => return false,
            };
            let op_ok = granted_op.eq_ignore_ascii_case("ALL")
                || granted_op.eq_ignore_ascii_case(op.name());
            let resource_ok = match (granted_resource, resource) {
                (None, _) => true,
                (Some(g), Some(want)) => g.eq_ignore_ascii_case(want),
                (Some(_), None) => false,
            };
            op_ok && resource_ok
        })
}

impl Caller {
    pub fn require_module(&self, module: Module, op: Op) -> Result<(), ApiError> {
        if grants(&self.scope, "modules", Some(&module.scope_name()), op) {
            Ok(())
        } else {
            Err(ApiError::scope_mismatch())
        }
    }

    pub fn require(&self, service: &str, op: Op) -> Result<(), ApiError> {
        if grants(&self.scope, service, None, op) {
            Ok(())
        } else {
            Err(ApiError::scope_mismatch())
        }
    }
}

fn authorise(sb: &ZohoSandbox, request: &Request) -> Result<Caller, ApiError> {
    let prefix = request
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    let dc = DataCentre::parse(prefix)
        .filter(|d| d.suffix() == prefix)
        .ok_or_else(ApiError::invalid_url)?;
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .ok_or_else(ApiError::authentication_failure)?
        .to_str()
        .map_err(|_| ApiError::invalid_token())?
        .trim();
    let (scheme, token) = header.split_once(' ').ok_or_else(ApiError::invalid_token)?;
    if !scheme.eq_ignore_ascii_case("Zoho-oauthtoken") {
        return Err(ApiError::invalid_token());
    }
    let token = token.trim();
    let access = sb
        .tokens()
        .access(token)
        .filter(|a| a.dc == dc && a.expires > now_ms())
        .cloned()
        .ok_or_else(ApiError::invalid_token)?;
    Ok(Caller {
        token: token.to_owned(),
        scope: access.scope,
        api_domain: dc.api_domain(&base_url(request.headers())),
    })
}

/// Middleware on every API route.
pub async fn guard(
    State(sb): State<Arc<ZohoSandbox>>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = match authorise(&sb, &request) {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    let slot = match sb.limits.enter(&caller.token) {
        Ok(slot) => slot,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = sb.limits.charge(1) {
        return e.into_response();
    }
    sb.limits.wait_while_held().await;
    request.extensions_mut().insert(caller);
    let response = next.run(request).await;
    drop(slot);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_grant_by_service_resource_and_operation() {
        let all = "ZohoCRM.modules.ALL,ZohoCRM.coql.READ";
        assert!(grants(all, "modules", Some("deals"), Op::Delete));
        assert!(grants(all, "coql", None, Op::Read));
        assert!(!grants(all, "notifications", None, Op::Read));
        let narrow = "ZohoCRM.modules.contacts.READ ZohoCRM.notifications.CREATE";
        assert!(grants(narrow, "modules", Some("contacts"), Op::Read));
        assert!(!grants(narrow, "modules", Some("contacts"), Op::Update));
        assert!(!grants(narrow, "modules", Some("deals"), Op::Read));
        assert!(grants(narrow, "notifications", None, Op::Create));
        assert!(grants(
            "zohocrm.modules.read",
            "modules",
            Some("leads"),
            Op::Read
        ));
    }
}
