//! The resource endpoints: get, list, watch, create, update, patch, delete and
//! deletecollection on `/api/v1/...` and `/apis/{group}/{version}/...`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Query;
use bytes::Bytes;
use http::{Method, Response, StatusCode, header, request::Parts};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::authz::{self, Attributes};
use super::faults::Verb;
use super::route::{Format, ResourcePath, negotiate};
use super::{Identity, Shared, json_response, table, watch};
use crate::sim::admission::Admit;
use crate::sim::admission::policy::PolicyAdmission;
use crate::sim::error::ApiError;
use crate::sim::patch::PatchKind;
use crate::sim::resource::{ResourceKey, ResourceType};
use crate::sim::selector::Selectors;
use crate::sim::store::{Subresource, WatchFrom};

/// The largest request body accepted (the real API server's limit is 3 MiB for most objects).
const MAX_BODY: usize = 8 << 20;

/// What the request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

impl Action {
    /// The verb RBAC and the 403 messages use.
    fn verb(self) -> &'static str {
        match self {
            Action::Get => "get",
            Action::List => "list",
            Action::Watch => "watch",
            Action::Create => "create",
            Action::Update => "update",
            Action::Patch => "patch",
            Action::Delete => "delete",
            Action::DeleteCollection => "deletecollection",
        }
    }

    fn fault_verb(self) -> Verb {
        match self {
            Action::Get => Verb::Get,
            Action::List => Verb::List,
            Action::Watch => Verb::Watch,
            Action::Create => Verb::Create,
            Action::Update => Verb::Update,
            Action::Patch => Verb::Patch,
            Action::Delete | Action::DeleteCollection => Verb::Delete,
        }
    }
}

pub(super) async fn handle(
    shared: &Arc<Shared>,
    id: &Identity,
    path: ResourcePath,
    parts: Parts,
    body: Incoming,
) -> Response<Body> {
    match serve(shared, id, &path, parts, body).await {
        Ok(res) => res,
        Err(e) => super::error_response(&e),
    }
}

async fn serve(
    shared: &Arc<Shared>,
    id: &Identity,
    path: &ResourcePath,
    parts: Parts,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let store = &shared.store;
    let not_found = || ApiError::not_found_path(&path.describe());
    let rt = store
        .resource_type(&ResourceKey::new(&path.group, &path.plural))
        .filter(|t| t.version == path.version)
        .ok_or_else(not_found)?;
    if path.namespace.is_some() && !rt.namespaced {
        return Err(not_found());
    }
    if rt.namespaced && path.namespace.is_none() && path.name.is_some() {
        return Err(not_found());
    }
    let sub = match path.subresource.as_deref() {
        None => Subresource::Main,
        Some("status") if rt.has_status => Subresource::Status,
        Some(_) => return Err(not_found()),
    };
    let query: HashMap<String, String> = Query::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let q = |k: &str| query.get(k).map(String::as_str).filter(|v| !v.is_empty());

    let action = match (&parts.method, path.name.is_some()) {
        (&Method::GET, true) => Action::Get,
        (&Method::GET, false) if matches!(q("watch"), Some("true" | "1")) => Action::Watch,
        (&Method::GET, false) => Action::List,
        (&Method::POST, false) if sub == Subresource::Main => Action::Create,
        (&Method::PUT, true) => Action::Update,
        (&Method::PATCH, true) => Action::Patch,
        (&Method::DELETE, true) if sub == Subresource::Main => Action::Delete,
        (&Method::DELETE, false) => Action::DeleteCollection,
        (method, _) => {
            return Err(ApiError::method_not_allowed(&format!(
                "the server does not allow this method on the requested resource ({method} {})",
                path.describe()
            )));
        }
    };
    if shared.faults.should_fail(action.fault_verb()) {
        return Err(ApiError::injected(
            action.verb(),
            shared.faults.error_code(),
        ));
    }
    if q("dryRun").is_some() {
        return Err(dry_run_unsupported());
    }

    let bytes = match action {
        Action::Create
        | Action::Update
        | Action::Patch
        | Action::Delete
        | Action::DeleteCollection => read_body(body).await?,
        _ => Bytes::new(),
    };
    let object: Option<Value> = match action {
        Action::Create | Action::Update => Some(parse_object(&bytes, &parts, &rt)?),
        _ => None,
    };
    let delete_options: Option<Value> = match action {
        Action::Delete | Action::DeleteCollection if !bytes.is_empty() => {
            Some(serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::bad_request(&format!("the DeleteOptions body is not valid JSON: {e}"))
            })?)
        }
        _ => None,
    };
    if delete_options
        .as_ref()
        .and_then(|o| o.get("dryRun"))
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        return Err(dry_run_unsupported());
    }

    let ns = path.namespace.as_deref();
    let name = path.name.as_deref();
    authz::authorize(
        store,
        id,
        &Attributes {
            verb: action.verb(),
            rt: &rt,
            subresource: path.subresource.as_deref(),
            namespace: ns,
            name,
            body: object.as_ref(),
        },
    )?;

    let accept = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = negotiate(accept, q("includeObject"));
    let admission = match action {
        Action::Create
        | Action::Update
        | Action::Patch
        | Action::Delete
        | Action::DeleteCollection => Some(policy_admission(shared, id, ns)?),
        _ => None,
    };
    let admit: &dyn Admit = match &admission {
        Some(a) => a,
        None => &(),
    };
    let selectors = || {
        Selectors::parse(q("labelSelector"), q("fieldSelector"))
            .map_err(|e| ApiError::bad_request(&e))
    };
    let name = name.unwrap_or_default();
    match action {
        Action::Get => {
            let obj = store.get(&rt.key(), ns, name)?;
            let rv = crate::sim::store::meta_str(&obj, "resourceVersion")
                .unwrap_or_default()
                .to_string();
            Ok(match format {
                Format::Json => json_response(StatusCode::OK, &obj),
                Format::Metadata => json_response(StatusCode::OK, &table::partial_metadata(&obj)),
                Format::Table(include) => {
                    json_response(StatusCode::OK, &table::table(&rt, &[obj], &rv, include))
                }
            })
        }
        Action::List => {
            let (items, rv) = store.list(&rt.key(), ns, &selectors()?)?;
            Ok(list_response(&rt, &items, rv, format))
        }
        Action::Watch => {
            let rv = q("resourceVersion");
            let send_initial = q("sendInitialEvents") == Some("true");
            let from = match rv {
                None | Some("0") => WatchFrom::Current,
                _ if send_initial => WatchFrom::Current,
                Some(rv) => WatchFrom::Version(rv.parse().map_err(|_| {
                    ApiError::bad_request(&format!("invalid resourceVersion {rv:?}"))
                })?),
            };
            let timeout = q("timeoutSeconds")
                .map(|t| {
                    t.parse::<u64>().map_err(|_| {
                        ApiError::bad_request(&format!("invalid timeoutSeconds {t:?}"))
                    })
                })
                .transpose()?
                .map(Duration::from_secs);
            watch::start(
                shared,
                watch::WatchRequest {
                    rt: rt.clone(),
                    namespace: path.namespace.clone(),
                    selectors: selectors()?,
                    from,
                    bookmarks: q("allowWatchBookmarks") == Some("true"),
                    initial_events_end: send_initial,
                    timeout,
                    format,
                    user: id.user.clone(),
                },
            )
        }
        Action::Create => {
            let mut obj = object.unwrap_or(Value::Null);
            if rt.key() == ResourceKey::core("pods") {
                super::service_account::admit_pod(&mut obj)?;
            }
            let created = store.create(&rt.key(), ns, obj, admit)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        Action::Update => {
            let obj = object.unwrap_or(Value::Null);
            let updated = store.update(&rt.key(), ns, name, obj, sub, admit)?;
            Ok(json_response(StatusCode::OK, &updated))
        }
        Action::Patch => {
            let content_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let kind = PatchKind::from_content_type(content_type)
                .ok_or_else(|| unsupported_patch(content_type))?;
            let patched = store.patch(&rt.key(), ns, name, kind, &bytes, sub, admit)?;
            Ok(json_response(StatusCode::OK, &patched))
        }
        Action::Delete => {
            let preconditions = delete_options.as_ref().and_then(|o| o.get("preconditions"));
            let deleted = store.delete(&rt.key(), ns, name, preconditions, admit)?;
            Ok(json_response(StatusCode::OK, &deleted))
        }
        Action::DeleteCollection => {
            let (items, _) = store.list(&rt.key(), ns, &selectors()?)?;
            let mut deleted = Vec::with_capacity(items.len());
            for item in items {
                let item_ns =
                    crate::sim::store::meta_str(&item, "namespace").filter(|n| !n.is_empty());
                let item_name = crate::sim::store::meta_str(&item, "name").unwrap_or_default();
                match store.delete(&rt.key(), item_ns, item_name, None, admit) {
                    Ok(obj) => deleted.push(obj),
                    // Deleted meanwhile by someone else: nothing left to do.
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(list_response(
                &rt,
                &deleted,
                store.current_rv(),
                Format::Json,
            ))
        }
    }
}

/// The ValidatingAdmissionPolicies bound in the cluster, for a write by `id` in namespace `ns`.
fn policy_admission(
    shared: &Shared,
    id: &Identity,
    ns: Option<&str>,
) -> Result<PolicyAdmission, ApiError> {
    let store = &shared.store;
    let everything = Selectors::default();
    let group = "admissionregistration.k8s.io";
    let (policies, _) = store.list(
        &ResourceKey::new(group, "validatingadmissionpolicies"),
        None,
        &everything,
    )?;
    let (bindings, _) = store.list(
        &ResourceKey::new(group, "validatingadmissionpolicybindings"),
        None,
        &everything,
    )?;
    let namespace_object = match ns {
        Some(ns) if !bindings.is_empty() => store
            .get(&ResourceKey::core("namespaces"), None, ns)
            .ok()
            .map(|o| (*o).clone()),
        _ => None,
    };
    Ok(shared
        .policies
        .admission(&policies, &bindings, &id.user, &id.groups, namespace_object))
}

fn dry_run_unsupported() -> ApiError {
    ApiError::bad_request(
        "dryRun is not supported by the dev cluster (nothing was changed); retry without --dry-run=server",
    )
}

fn unsupported_patch(content_type: &str) -> ApiError {
    let what = if content_type.starts_with("application/apply-patch") {
        "server-side apply is not supported by the dev cluster; use client-side `kubectl apply` or a merge, strategic merge or JSON patch"
    } else {
        "the body of the request was in an unknown format"
    };
    ApiError::unsupported_media_type(&format!(
        "{what} (Content-Type {content_type:?}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json"
    ))
}

async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(if e.is::<http_body_util::LengthLimitError>() {
            ApiError {
                code: 413,
                reason: "RequestEntityTooLarge",
                message: format!("the request body is larger than {MAX_BODY} bytes"),
                details: json!({}),
            }
        } else {
            ApiError::bad_request(&format!("reading the request body: {e}"))
        }),
    }
}

/// The object of a create or update: JSON, of this resource's kind when it says.
fn parse_object(bytes: &[u8], parts: &Parts, rt: &ResourceType) -> Result<Value, ApiError> {
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if !content_type.starts_with("application/json") && !content_type.starts_with("*/*") {
        return Err(ApiError::unsupported_media_type(&format!(
            "the body of the request was in an unknown format (Content-Type {content_type:?}) - the dev cluster accepts application/json"
        )));
    }
    let obj: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(&format!("the request body is not valid JSON: {e}")))?;
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    if let Some(kind) = obj.get("kind").and_then(Value::as_str)
        && kind != rt.kind
    {
        return Err(ApiError::bad_request(&format!(
            "the kind in the body ({kind}) does not match the resource ({}, kind {})",
            rt.qualified(),
            rt.kind
        )));
    }
    if let Some(api_version) = obj.get("apiVersion").and_then(Value::as_str)
        && api_version != rt.api_version()
    {
        return Err(ApiError::bad_request(&format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            rt.api_version()
        )));
    }
    Ok(obj)
}

/// A list in the requested representation. Items are serialized one by one rather than
/// copied into one big `Value`: lists of pods can be large.
fn list_response(
    rt: &ResourceType,
    items: &[Arc<Value>],
    rv: u64,
    format: Format,
) -> Response<Body> {
    let rv = rv.to_string();
    if let Format::Table(include) = format {
        return json_response(StatusCode::OK, &table::table(rt, items, &rv, include));
    }
    let (kind, api_version) = match format {
        Format::Metadata => (
            "PartialObjectMetadataList".to_string(),
            "meta.k8s.io/v1".to_string(),
        ),
        _ => (format!("{}List", rt.kind), rt.api_version()),
    };
    let head =
        json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv}});
    let mut buf = serde_json::to_vec(&head).unwrap_or_default();
    // Re-open the head object to append `items`.
    buf.pop();
    buf.extend_from_slice(b",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        let written = match format {
            Format::Metadata => serde_json::to_writer(&mut buf, &table::partial_metadata(item)),
            _ => serde_json::to_writer(&mut buf, &**item),
        };
        debug_assert!(
            written.is_ok(),
            "serializing a JSON value into memory cannot fail"
        );
    }
    buf.extend_from_slice(b"]}");
    super::bytes_response(StatusCode::OK, buf)
}
