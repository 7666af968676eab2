//! Validating admission, as the API server runs it after a write is computed and before it is
//! stored: a CRD's validation rules (`crd_rules`) and ValidatingAdmissionPolicies with their
//! bindings (`policy`), both in CEL (`cel`).

pub mod cel;
pub mod crd_rules;
pub mod policy;

use serde_json::{Value, json};

use super::error::ApiError;
use super::resource::ResourceType;

/// A write as admission sees it.
#[derive(Debug, Clone, Copy)]
pub struct Proposed<'a> {
    pub operation: Operation,
    /// `status` for a write to the status subresource.
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    /// The object as it would be stored (absent on delete).
    pub object: Option<&'a Value>,
    /// The object as it is stored (absent on create).
    pub old_object: Option<&'a Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }
}

/// Decides whether a computed write may be stored; runs under the store's lock, so it must
/// not call back into the store.
pub trait Admit {
    fn admit(&self, rt: &ResourceType, write: &Proposed<'_>) -> Result<(), ApiError>;
}

/// Admits everything: the writes of the dev cluster's own parts (the simulated kubelet).
impl Admit for () {
    fn admit(&self, _: &ResourceType, _: &Proposed<'_>) -> Result<(), ApiError> {
        Ok(())
    }
}

/// One invalid field, as the API server words it (`spec.x: Invalid value: "string": why`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    /// `FieldValueInvalid`, `FieldValueForbidden`, `FieldValueRequired`, ...
    pub reason: String,
    /// The message without the field (`Invalid value: "string": why`).
    pub message: String,
}

impl FieldError {
    /// A failed rule's error: the wording follows the rule's `reason`; an invalid value is
    /// named by its schema type, as the API server does for CEL rules.
    pub fn for_reason(field: &str, reason: &str, type_: &str, detail: String) -> FieldError {
        let (reason, message) = match reason {
            "FieldValueForbidden" => ("FieldValueForbidden", format!("Forbidden: {detail}")),
            "FieldValueRequired" => ("FieldValueRequired", format!("Required value: {detail}")),
            "FieldValueDuplicate" => (
                "FieldValueDuplicate",
                format!("Duplicate value: \"{type_}\""),
            ),
            _ => (
                "FieldValueInvalid",
                format!("Invalid value: \"{type_}\": {detail}"),
            ),
        };
        FieldError {
            field: field.to_string(),
            reason: reason.to_string(),
            message,
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// 422 Invalid listing `errors`, as the API server answers a write that fails validation:
/// `StaticPod.apps.openyurt.io "x" is invalid: spec.a: ...` (several in brackets).
pub fn invalid(rt: &ResourceType, name: &str, errors: &[FieldError]) -> ApiError {
    let qualified = if rt.group.is_empty() {
        rt.kind.clone()
    } else {
        format!("{}.{}", rt.kind, rt.group)
    };
    let listed: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let summary = match listed.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    let mut details = json!({
        "name": name,
        "kind": rt.kind,
        "causes": errors.iter().map(|e| json!({
            "reason": e.reason, "message": e.message, "field": e.field,
        })).collect::<Vec<_>>(),
    });
    if !rt.group.is_empty() {
        details["group"] = json!(rt.group);
    }
    ApiError::with_details(
        422,
        "Invalid",
        format!("{qualified} \"{name}\" is invalid: {summary}"),
        details,
    )
}
