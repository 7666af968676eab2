//! API errors as the API server reports them: an HTTP code and a `Status` body.

use serde_json::{Value, json};

use super::resource::ResourceType;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String, details: Value) -> Self {
        ApiError {
            code,
            reason,
            message,
            details,
        }
    }

    /// An error as admission words it: its own code, reason, message and details.
    pub fn with_details(code: u16, reason: &'static str, message: String, details: Value) -> Self {
        Self::new(code, reason, message, details)
    }

    fn details(rt: &ResourceType, name: &str) -> Value {
        let mut d = json!({"name": name, "kind": rt.plural});
        if !rt.group.is_empty() {
            d["group"] = json!(rt.group);
        }
        d
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", rt.qualified()),
            Self::details(rt, name),
        )
    }

    /// 404 for a path that names no resource.
    pub fn not_found_path(what: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({what})"),
            json!({}),
        )
    }

    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", rt.qualified()),
            Self::details(rt, name),
        )
    }

    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                rt.qualified()
            ),
            Self::details(rt, name),
        )
    }

    pub fn conflict_precondition(rt: &ResourceType, name: &str, field: &str, want: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: {field}: {want}",
                rt.qualified()
            ),
            Self::details(rt, name),
        )
    }

    pub fn invalid(rt: &ResourceType, name: &str, cause: &str) -> Self {
        Self::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {cause}", rt.kind),
            Self::details(rt, name),
        )
    }

    pub fn bad_request(message: &str) -> Self {
        Self::new(400, "BadRequest", message.to_string(), json!({}))
    }

    pub fn gone(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
            json!({}),
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized".to_string(), json!({}))
    }

    pub fn forbidden(
        user: &str,
        verb: &str,
        resource: &str,
        ns: Option<&str>,
        reason: &str,
    ) -> Self {
        let scope = match ns {
            Some(ns) => format!(" in the namespace \"{ns}\""),
            None => " at the cluster scope".to_string(),
        };
        Self::new(
            403,
            "Forbidden",
            format!(
                "{resource} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\"{scope}: {reason}"
            ),
            json!({"kind": resource}),
        )
    }

    /// 403 worded as the API server's authorizer words it:
    /// `pods "p" is forbidden: User "u" cannot patch resource "pods/status" in API group "" in
    /// the namespace "default"`, with the admission plugin's reason appended when there is one.
    pub fn forbidden_request(
        user: &str,
        verb: &str,
        group: &str,
        resource: &str,
        name: Option<&str>,
        ns: Option<&str>,
        reason: Option<&str>,
    ) -> Self {
        let plural = resource.split('/').next().unwrap_or(resource);
        let qualified = if group.is_empty() {
            plural.to_string()
        } else {
            format!("{plural}.{group}")
        };
        let subject = match name {
            Some(name) => format!("{qualified} \"{name}\""),
            None => qualified,
        };
        let scope = match ns {
            Some(ns) => format!(" in the namespace \"{ns}\""),
            None => " at the cluster scope".to_string(),
        };
        let reason = reason.map(|r| format!(": {r}")).unwrap_or_default();
        let mut details = json!({"kind": plural});
        if let Some(name) = name {
            details["name"] = json!(name);
        }
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        Self::new(
            403,
            "Forbidden",
            format!(
                "{subject} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{group}\"{scope}{reason}"
            ),
            details,
        )
    }

    pub fn method_not_allowed(message: &str) -> Self {
        Self::new(405, "MethodNotAllowed", message.to_string(), json!({}))
    }

    pub fn unsupported_media_type(message: &str) -> Self {
        Self::new(415, "UnsupportedMediaType", message.to_string(), json!({}))
    }

    /// An injected fault: a transient server error a client must retry.
    /// An injected fault: 503 ServiceUnavailable, or 500 InternalError.
    pub fn injected(verb: &str, code: u16) -> Self {
        let (code, reason) = if code == 500 {
            (500, "InternalError")
        } else {
            (503, "ServiceUnavailable")
        };
        Self::new(
            code,
            reason,
            format!("injected fault: {verb} failed (the dev cluster's fault injection)"),
            json!({}),
        )
    }

    /// The `Status` object sent as the response body.
    pub fn status_body(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        })
    }
}
