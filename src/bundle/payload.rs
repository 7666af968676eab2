//! The bundle payload: which objects to apply, in which order of releases (`sequence`), until
//! when, and on which nodes. Only ever parsed from bytes whose signatures have verified.
//!
//! ```yaml
//! apiVersion: staticpod-puller.openyurt.io/v1
//! kind: Bundle
//! sequence: 42
//! issuedAt: "2025-01-01T00:00:00Z"
//! expiresAt: "2025-01-31T00:00:00Z"
//! targets:                      # optional; absent means every node
//!   nodes: [edge-1, edge-2]     # the node must be listed (when given)
//!   nodeSelector: "zone=a,!gpu" # and its labels must match (when given)
//! items:                        # as `kubectl get yss NAME -o yaml` prints them
//! - apiVersion: apps.openyurt.io/v1alpha1
//!   kind: YurtStaticSet
//!   metadata: {name: nginx, namespace: default}
//!   spec: {staticPodManifest: nginx, template: {...}}
//! ```
//!
//! The bundle's own fields are strict (an unknown field is refused, so a misspelt `targets`
//! never widens a bundle to every node); items are read as the cluster would, with `status`
//! and server-set metadata dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::resources::{StaticPod, YurtStaticSet};

/// The payload's `apiVersion`.
pub const API_VERSION: &str = "staticpod-puller.openyurt.io/v1";
/// The payload's `kind`.
pub const KIND: &str = "Bundle";
/// The `apiVersion` items must carry.
pub const ITEM_API_VERSION: &str = "apps.openyurt.io/v1alpha1";
/// Default cap on the number of items in one bundle.
pub const DEFAULT_MAX_ITEMS: usize = 256;

/// Metadata the API server sets; meaningless off the cluster, so dropped from items.
const SERVER_METADATA: [&str; 8] = [
    "resourceVersion",
    "uid",
    "managedFields",
    "creationTimestamp",
    "generation",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// Parsing or checking a payload failed.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("parsing the bundle payload: it is not UTF-8 text")]
    NotUtf8,
    #[error("parsing the bundle payload: {0}")]
    Syntax(String),
    #[error("parsing the bundle payload: apiVersion is {found:?}, expected {API_VERSION:?}")]
    ApiVersion { found: String },
    #[error("parsing the bundle payload: kind is {found:?}, expected {KIND:?}")]
    Kind { found: String },
    #[error("parsing the bundle payload: expiresAt {expires_at} is not after issuedAt {issued_at}")]
    Validity {
        issued_at: Timestamp,
        expires_at: Timestamp,
    },
    #[error("parsing the bundle payload: sequence must be at least 1, got 0")]
    SequenceZero,
    #[error("parsing the bundle payload: {count} items, over the limit of {limit}")]
    TooManyItems { count: usize, limit: usize },
    #[error("parsing the bundle payload: item {index}: {reason}")]
    Item { index: usize, reason: String },
    /// A well-formed item an agent would refuse to write (manifest name, template, strategy):
    /// the whole bundle is refused, so it is all or nothing.
    #[error("bundle item {index} would be refused: {reason}")]
    InvalidItem { index: usize, reason: String },
    #[error("serializing the bundle payload: {0}")]
    Serialize(String),
}

/// One object of the bundle, typed by its `kind`.
#[derive(Debug, Clone, PartialEq)]
pub enum BundleItem {
    StaticPod(StaticPod),
    YurtStaticSet(YurtStaticSet),
}

impl BundleItem {
    pub fn kind(&self) -> &'static str {
        match self {
            BundleItem::StaticPod(_) => "StaticPod",
            BundleItem::YurtStaticSet(_) => "YurtStaticSet",
        }
    }

    /// `metadata.namespace` (empty when the item names none).
    pub fn namespace(&self) -> &str {
        let meta = match self {
            BundleItem::StaticPod(o) => &o.metadata,
            BundleItem::YurtStaticSet(o) => &o.metadata,
        };
        meta.namespace.as_deref().unwrap_or_default()
    }

    /// Check the item as the agent checks objects from the cluster (manifest name, template,
    /// strategy); the reason names the object and field when it would be refused. The manifest
    /// itself is rendered only when an item is applied.
    pub fn check(&self) -> Result<(), String> {
        let checked = match self {
            BundleItem::StaticPod(o) => crate::resources::validate::check_static_pod(o),
            BundleItem::YurtStaticSet(o) => crate::resources::validate::check_yurt_static_set(o),
        };
        checked.map_err(|refusal| refusal.reason)
    }

    /// `metadata.name` (never empty: parsing requires it).
    pub fn name(&self) -> &str {
        let meta = match self {
            BundleItem::StaticPod(o) => &o.metadata,
            BundleItem::YurtStaticSet(o) => &o.metadata,
        };
        meta.name.as_deref().unwrap_or_default()
    }
}

/// A verified, parsed bundle payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    pub sequence: u64,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub targets: Option<Targets>,
    pub items: Vec<BundleItem>,
}

/// Which nodes a bundle is for. Every given criterion must hold; none given means all nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Targets {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<NodeSelector>,
}

/// A bundle is not for this node, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not targeted at this node: {0}")]
pub struct NotTargeted(pub String);

impl Targets {
    /// Whether node `node` with `labels` is targeted.
    pub fn check(&self, node: &str, labels: &BTreeMap<String, String>) -> Result<(), NotTargeted> {
        if !self.nodes.is_empty() && !self.nodes.iter().any(|n| n == node) {
            return Err(NotTargeted(format!(
                "node {node} is not among the bundle's nodes ({})",
                self.nodes.join(", ")
            )));
        }
        match &self.node_selector {
            Some(selector) if !selector.matches(labels) => Err(NotTargeted(format!(
                "the labels of node {node} do not match nodeSelector {selector}"
            ))),
            _ => Ok(()),
        }
    }
}

impl Bundle {
    /// Whether this bundle is for node `node` with `labels`.
    pub fn check_target(
        &self,
        node: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), NotTargeted> {
        self.targets
            .as_ref()
            .map_or(Ok(()), |t| t.check(node, labels))
    }
}

/// An equality-based label selector: `k=v`, `k==v`, `k!=v`, `k` (exists), `!k` (absent),
/// comma-separated, all required. Set-based forms (`in`, `notin`) are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeSelector {
    text: String,
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

impl NodeSelector {
    pub fn parse(text: &str) -> Result<NodeSelector, String> {
        let requirements = text
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(parse_requirement)
            .collect::<Result<_, _>>()?;
        Ok(NodeSelector {
            text: text.trim().to_string(),
            requirements,
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
        })
    }
}

fn parse_requirement(r: &str) -> Result<Requirement, String> {
    let valid = |s: &str, what: &str, may_be_empty: bool| {
        let ok = (may_be_empty || !s.is_empty())
            && s.len() <= 317
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if ok {
            Ok(s.to_string())
        } else {
            Err(format!("nodeSelector {r:?}: invalid label {what} {s:?}"))
        }
    };
    if r.contains(" in ") || r.contains(" notin ") || r.contains('(') {
        return Err(format!(
            "nodeSelector {r:?}: set-based requirements are not supported; use k=v, k!=v, k or !k"
        ));
    }
    if let Some((k, v)) = r.split_once("!=") {
        return Ok(Requirement::NotEquals(
            valid(k.trim(), "key", false)?,
            valid(v.trim(), "value", true)?,
        ));
    }
    if let Some((k, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
        return Ok(Requirement::Equals(
            valid(k.trim(), "key", false)?,
            valid(v.trim(), "value", true)?,
        ));
    }
    match r.strip_prefix('!') {
        Some(k) => Ok(Requirement::Absent(valid(k.trim(), "key", false)?)),
        None => Ok(Requirement::Exists(valid(r, "key", false)?)),
    }
}

impl TryFrom<String> for NodeSelector {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        NodeSelector::parse(&text)
    }
}

impl From<NodeSelector> for String {
    fn from(s: NodeSelector) -> String {
        s.text
    }
}

impl fmt::Display for NodeSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The payload as written; items stay untyped until each is checked by its kind (`I` is
/// [`StrictJson`] when read by the JSON reader).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct PayloadDocument<I = Value> {
    pub api_version: String,
    pub kind: String,
    pub sequence: u64,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Targets>,
    pub items: Vec<I>,
}

/// A JSON value whose objects never repeat a key: the JSON reader refuses what the YAML
/// reader refuses, so both read a payload the same way.
#[derive(Debug)]
pub(super) struct StrictJson(Value);

impl<'de> Deserialize<'de> for StrictJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictJson)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut list = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(StrictJson(v)) = seq.next_element()? {
            list.push(v);
        }
        Ok(Value::Array(list))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictJson(value) = map.next_value()?;
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "duplicate key {key:?}"
                )));
            }
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Read the payload document. JSON (what `bundle sign` writes) goes through the JSON reader,
/// many times faster than the YAML reader on a large bundle and with the same reading; other
/// YAML, or text the JSON reader cannot read as JSON, through the YAML reader.
fn read_document(text: &str) -> Result<PayloadDocument, PayloadError> {
    if text.trim_start().starts_with('{') {
        let mut reader = serde_json::Deserializer::from_str(text);
        let read = serde_path_to_error::deserialize::<_, PayloadDocument<StrictJson>>(&mut reader);
        match read {
            Ok(doc) if reader.end().is_ok() => {
                return Ok(PayloadDocument {
                    api_version: doc.api_version,
                    kind: doc.kind,
                    sequence: doc.sequence,
                    issued_at: doc.issued_at,
                    expires_at: doc.expires_at,
                    targets: doc.targets,
                    items: doc.items.into_iter().map(|StrictJson(v)| v).collect(),
                });
            }
            // Valid JSON with a wrong field: say which field.
            Err(e) if e.inner().is_data() => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let message = if path == "." || path.is_empty() {
                    inner.to_string()
                } else {
                    format!("{path}: {inner}")
                };
                return Err(PayloadError::Syntax(message));
            }
            // Not JSON after all (YAML flow style, trailing text, or broken): the YAML
            // reader says why.
            Ok(_) | Err(_) => {}
        }
    }
    serde_saphyr::from_str_with_options(text, yaml_options())
        .map_err(|e| PayloadError::Syntax(e.to_string()))
}

/// YAML options for untrusted-shaped input: Kubernetes' YAML 1.1 reading of octal numbers
/// (`defaultMode: 0644`), tighter alias replay than the default, one-line errors.
pub(super) fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.legacy_octal_numbers = true;
    options.alias_limits.max_total_replayed_events = 100_000;
    options.with_snippet = false;
    options
}

/// Parse a payload (YAML or JSON) into a bundle, refusing more than `max_items` items.
pub fn parse(bytes: &[u8], max_items: usize) -> Result<Bundle, PayloadError> {
    let text = std::str::from_utf8(bytes).map_err(|_| PayloadError::NotUtf8)?;
    let doc = read_document(text)?;
    if doc.api_version != API_VERSION {
        return Err(PayloadError::ApiVersion {
            found: doc.api_version,
        });
    }
    if doc.kind != KIND {
        return Err(PayloadError::Kind { found: doc.kind });
    }
    if doc.sequence == 0 {
        return Err(PayloadError::SequenceZero);
    }
    if doc.expires_at <= doc.issued_at {
        return Err(PayloadError::Validity {
            issued_at: doc.issued_at,
            expires_at: doc.expires_at,
        });
    }
    let items = parse_items(doc.items, max_items)?;
    Ok(Bundle {
        sequence: doc.sequence,
        issued_at: doc.issued_at,
        expires_at: doc.expires_at,
        targets: doc.targets,
        items,
    })
}

/// Type each item by its kind, refusing other kinds, duplicates, and items an agent would not
/// write (checked as the agent checks objects from the cluster: manifest name, template,
/// strategy, rendering).
pub(super) fn parse_items(
    items: Vec<Value>,
    max_items: usize,
) -> Result<Vec<BundleItem>, PayloadError> {
    if items.len() > max_items {
        return Err(PayloadError::TooManyItems {
            count: items.len(),
            limit: max_items,
        });
    }
    let mut seen = BTreeSet::new();
    items
        .into_iter()
        .enumerate()
        .map(|(index, value)| {
            let item_error = |reason: String| PayloadError::Item { index, reason };
            let item = parse_item(value).map_err(item_error)?;
            let key = (
                item.kind(),
                item.namespace().to_string(),
                item.name().to_string(),
            );
            if !seen.insert(key) {
                return Err(item_error(format!(
                    "{} {}/{} appears more than once",
                    item.kind(),
                    item.namespace(),
                    item.name()
                )));
            }
            item.check()
                .map_err(|reason| PayloadError::InvalidItem { index, reason })?;
            Ok(item)
        })
        .collect()
}

/// Strip what the server set, then parse by kind.
fn parse_item(mut value: Value) -> Result<BundleItem, String> {
    strip_server_fields(&mut value);
    let Value::Object(object) = value else {
        return Err("is not an object".into());
    };
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("has no kind")?
        .to_string();
    if kind != "StaticPod" && kind != "YurtStaticSet" {
        return Err(format!("kind {kind:?} is not StaticPod or YurtStaticSet"));
    }
    let api_version = object.get("apiVersion").and_then(Value::as_str);
    if api_version != Some(ITEM_API_VERSION) {
        return Err(format!(
            "apiVersion is {api_version:?}, expected {ITEM_API_VERSION:?}"
        ));
    }
    let named = |name: Option<&String>| match name {
        Some(n) if !n.is_empty() => Ok(()),
        _ => Err(String::from("metadata.name is required")),
    };
    let object = Value::Object(object);
    if kind == "StaticPod" {
        let item: StaticPod = typed(object)?;
        named(item.metadata.name.as_ref())?;
        Ok(BundleItem::StaticPod(item))
    } else {
        let item: YurtStaticSet = typed(object)?;
        named(item.metadata.name.as_ref())?;
        Ok(BundleItem::YurtStaticSet(item))
    }
}

/// Drop `status` and server-set metadata from an item object (anything else is left alone).
pub(super) fn strip_server_fields(item: &mut Value) {
    let Value::Object(object) = item else {
        return;
    };
    object.remove("status");
    if let Some(Value::Object(metadata)) = object.get_mut("metadata") {
        strip_metadata(metadata);
    }
}

fn strip_metadata(metadata: &mut Map<String, Value>) {
    for field in SERVER_METADATA {
        metadata.remove(field);
    }
}

/// Deserialize with the failing field's path in the message.
fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A YurtStaticSet as `kubectl get yss nginx -o yaml` prints it.
    pub const KUBECTL_YSS: &str = r#"
  apiVersion: apps.openyurt.io/v1alpha1
  kind: YurtStaticSet
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {"apiVersion":"apps.openyurt.io/v1alpha1","kind":"YurtStaticSet"}
    creationTimestamp: "2025-01-01T00:00:00Z"
    generation: 3
    managedFields:
    - apiVersion: apps.openyurt.io/v1alpha1
      fieldsType: FieldsV1
      fieldsV1: {f:spec: {}}
      manager: kubectl
      operation: Update
    name: nginx
    namespace: default
    resourceVersion: "12345"
    uid: 0f6f3c2e-1111-2222-3333-444455556666
  spec:
    staticPodManifest: nginx
    upgradeStrategy:
      type: AdvancedRollingUpdate
      maxUnavailable: 10%
    template:
      metadata:
        labels: {app: nginx}
      spec:
        containers:
        - image: nginx:1.25
          name: web
          volumeMounts:
          - {name: conf, mountPath: /etc/nginx}
        volumes:
        - name: conf
          hostPath: {path: /etc/nginx}
        - name: info
          downwardAPI: {defaultMode: 0644, items: []}
  status:
    observedGeneration: 3
    readyNumber: 1
    totalNumber: 2
    upgradedNumber: 1
    somethingNew: {a: 1}
"#;

    /// The bundle's own fields, up to `items:`.
    pub fn header(sequence: u64, extra: &str) -> String {
        format!(
            "apiVersion: {API_VERSION}\nkind: Bundle\nsequence: {sequence}\n\
             issuedAt: 2025-01-01T00:00:00Z\nexpiresAt: 2025-02-01T00:00:00Z\n{extra}items:\n"
        )
    }

    /// A payload with the kubectl-printed YurtStaticSet as its only item.
    pub fn payload(sequence: u64, extra: &str) -> String {
        format!("{}- {}", header(sequence, extra), KUBECTL_YSS.trim_start())
    }

    fn err(text: &str) -> String {
        parse(text.as_bytes(), DEFAULT_MAX_ITEMS)
            .expect_err(text)
            .to_string()
    }

    #[test]
    fn parses_items_as_kubectl_prints_them() {
        let text = payload(7, "");
        let bundle = parse(text.as_bytes(), DEFAULT_MAX_ITEMS).expect("parses");
        assert_eq!(bundle.sequence, 7);
        assert_eq!(bundle.issued_at.to_string(), "2025-01-01T00:00:00Z");
        assert_eq!(bundle.expires_at.to_string(), "2025-02-01T00:00:00Z");
        assert_eq!(bundle.targets, None);
        let [BundleItem::YurtStaticSet(yss)] = bundle.items.as_slice() else {
            panic!("expected one YurtStaticSet, got {:?}", bundle.items);
        };
        assert_eq!(yss.spec.static_pod_manifest, "nginx");
        assert_eq!(yss.status, None, "status dropped");
        let meta = &yss.metadata;
        assert_eq!(
            (meta.name.as_deref(), meta.namespace.as_deref()),
            (Some("nginx"), Some("default"))
        );
        assert!(
            meta.uid.is_none()
                && meta.resource_version.is_none()
                && meta.managed_fields.is_none()
                && meta.creation_timestamp.is_none()
                && meta.generation.is_none(),
            "server metadata dropped: {meta:?}"
        );
        let volumes = yss
            .spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone());
        let mode = volumes
            .and_then(|v| v.get(1).cloned())
            .and_then(|v| v.downward_api)
            .and_then(|c| c.default_mode);
        assert_eq!(mode, Some(0o644), "0644 read as Kubernetes reads it");
    }

    #[test]
    fn json_payloads_parse_too() {
        let text = payload(3, "");
        let value: Value =
            serde_saphyr::from_str_with_options(&text, yaml_options()).expect("yaml");
        let json = serde_json::to_string(&value).expect("json");
        let bundle = parse(json.as_bytes(), DEFAULT_MAX_ITEMS).expect("JSON parses");
        assert_eq!(bundle.sequence, 3);
        let static_pod = json.replace("YurtStaticSet", "StaticPod");
        let bundle = parse(static_pod.as_bytes(), DEFAULT_MAX_ITEMS).expect("StaticPod parses");
        assert_eq!(bundle.items[0].kind(), "StaticPod");
    }

    #[test]
    fn the_json_reader_reads_as_the_yaml_reader_does() {
        let text = payload(3, "");
        let value: Value =
            serde_saphyr::from_str_with_options(&text, yaml_options()).expect("yaml");
        let json = serde_json::to_string_pretty(&value).expect("json");
        let from_yaml = parse(text.as_bytes(), DEFAULT_MAX_ITEMS).expect("YAML parses");
        let from_json = parse(json.as_bytes(), DEFAULT_MAX_ITEMS).expect("JSON parses");
        assert_eq!(from_yaml, from_json);
        // A repeated key is refused by both readers, never "last wins".
        let twice = json.replacen(
            "\"name\": \"nginx\"",
            "\"name\": \"nginx\", \"name\": \"evil\"",
            1,
        );
        assert!(twice.contains("evil"), "{twice}");
        assert!(
            err(&twice).contains("duplicate key \"name\""),
            "{}",
            err(&twice)
        );
        let yaml_twice = text.replacen("    name: nginx\n", "    name: nginx\n    name: evil\n", 1);
        assert!(
            err(&yaml_twice).contains("duplicate"),
            "{}",
            err(&yaml_twice)
        );
        // A wrong field in JSON is named.
        let wrong = json.replacen("\"sequence\": 3", "\"sequence\": \"three\"", 1);
        assert!(
            err(&wrong).contains("sequence: invalid type: string \"three\""),
            "{}",
            err(&wrong)
        );
        // YAML flow style starts with `{` too: not JSON, read as YAML.
        let flow = format!(
            "{{apiVersion: {API_VERSION}, kind: Bundle, sequence: 1, \
             issuedAt: '2025-01-01T00:00:00Z', expiresAt: '2025-02-01T00:00:00Z', items: []}}"
        );
        assert_eq!(parse(flow.as_bytes(), 1).expect("flow YAML").sequence, 1);
        // Trailing text after the JSON: handed to the YAML reader, which refuses it.
        assert!(parse(format!("{json} trailing").as_bytes(), DEFAULT_MAX_ITEMS).is_err());
    }

    #[test]
    fn refusals_name_the_item_and_field() {
        let text = payload(1, "");
        for (from, to, expected) in [
            (
                "kind: YurtStaticSet",
                "kind: Deployment",
                "item 0: kind \"Deployment\" is not StaticPod or YurtStaticSet",
            ),
            (
                "apps.openyurt.io/v1alpha1\n  kind",
                "apps/v1\n  kind",
                "item 0: apiVersion is Some(\"apps/v1\"), expected \"apps.openyurt.io/v1alpha1\"",
            ),
            ("    name: nginx\n", "", "item 0: metadata.name is required"),
            (
                "staticPodManifest: nginx",
                "staticPodManifest: [a]",
                "item 0: spec.staticPodManifest: invalid type",
            ),
            (
                "kind: Bundle",
                "kind: Other",
                "kind is \"Other\", expected \"Bundle\"",
            ),
            (
                "expiresAt: 2025-02-01T00:00:00Z",
                "expiresAt: 2024-02-01T00:00:00Z",
                "expiresAt 2024-02-01T00:00:00Z is not after issuedAt",
            ),
            (
                "sequence: 1\n",
                "",
                "parsing the bundle payload: missing field `sequence`",
            ),
            (
                "sequence: 1",
                "sequence: -1",
                "parsing the bundle payload: ",
            ),
            (
                "sequence: 1",
                "sequence: 1\ntarget: {nodes: [a]}",
                "unknown field `target`",
            ),
        ] {
            assert!(text.contains(from), "fixture lacks {from:?}");
            let message = err(&text.replacen(from, to, 1));
            assert!(message.contains(expected), "{from:?} → {to:?}: {message}");
        }
        let twice = format!("{text}- {}", KUBECTL_YSS.trim_start());
        assert!(err(&twice).contains("item 1: YurtStaticSet default/nginx appears more than once"));
        assert_eq!(
            parse(text.as_bytes(), 0).expect_err("cap").to_string(),
            "parsing the bundle payload: 1 items, over the limit of 0"
        );
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused() {
        // Inside an item (an untyped value), where expansion would really happen.
        let mut bomb = String::from("- a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            bomb.push_str(&format!(
                "  a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let message = err(&format!("{}{bomb}", header(1, "")));
        assert!(
            message.starts_with("parsing the bundle payload: alias replay limit exceeded"),
            "{message}"
        );
        let deep = format!("- {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
        let message = err(&format!("{}{deep}", header(1, "")));
        assert!(
            message.starts_with("parsing the bundle payload: recursion limit exceeded"),
            "{message}"
        );
    }

    #[test]
    fn targeting() {
        let labels: BTreeMap<String, String> = [("zone", "a"), ("tier", "edge")]
            .map(|(k, v)| (k.into(), v.into()))
            .into();
        let targets = |nodes: &[&str], selector: Option<&str>| Targets {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            node_selector: selector.map(|s| NodeSelector::parse(s).expect("selector")),
        };
        for (t, ok) in [
            (targets(&[], None), true),
            (targets(&["edge-1"], None), true),
            (targets(&["edge-2", "edge-1"], None), true),
            (targets(&["edge-2"], None), false),
            (targets(&[], Some("zone=a")), true),
            (targets(&[], Some("zone==a, tier")), true),
            (targets(&[], Some("zone=b")), false),
            (targets(&[], Some("zone!=b,!gpu")), true),
            (targets(&[], Some("gpu")), false),
            (targets(&["edge-1"], Some("zone=b")), false),
            (targets(&["edge-2"], Some("zone=a")), false),
        ] {
            assert_eq!(t.check("edge-1", &labels).is_ok(), ok, "{t:?}");
        }
        let refused = targets(&["edge-2", "edge-3"], None)
            .check("edge-1", &labels)
            .expect_err("not listed");
        assert_eq!(
            refused.to_string(),
            "not targeted at this node: node edge-1 is not among the bundle's nodes (edge-2, edge-3)"
        );
        let refused = targets(&[], Some("zone=b"))
            .check("edge-1", &labels)
            .expect_err("no match");
        assert_eq!(
            refused.to_string(),
            "not targeted at this node: the labels of node edge-1 do not match nodeSelector zone=b"
        );
        assert!(NodeSelector::parse("zone in (a,b)").is_err());
        assert!(NodeSelector::parse("=a").is_err());
        assert!(NodeSelector::parse("zo ne=a").is_err());
        let text = payload(
            1,
            "targets:\n  nodes: [edge-1]\n  nodeSelector: \"zone=a,!gpu\"\n",
        );
        let bundle = parse(text.as_bytes(), DEFAULT_MAX_ITEMS).expect("parses");
        assert!(bundle.check_target("edge-1", &labels).is_ok());
        assert!(bundle.check_target("edge-2", &labels).is_err());
        let bad = payload(1, "targets: {nodeSelector: \"zone in (a)\"}\n");
        assert!(
            err(&bad).contains("set-based requirements are not supported"),
            "{}",
            err(&bad)
        );
        let typo = payload(1, "targets: {node: [edge-1]}\n");
        assert!(
            err(&typo).contains("unknown field `node`"),
            "{}",
            err(&typo)
        );
    }
}
