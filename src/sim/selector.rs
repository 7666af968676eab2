//! Label and field selectors, as list and watch take them.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector` and `fieldSelector`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selectors {
    labels: Vec<LabelRequirement>,
    /// (the field path's segments, value, equal?)
    fields: Vec<(Vec<String>, String, bool)>,
}

/// What an indexed watch wants: the object's value at `path` equal to `value`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexKey {
    pub path: Vec<String>,
    pub value: String,
}

/// The value at `path` as selectors compare it: a string as is, a missing field or null as
/// the empty string, anything else as its JSON text.
pub fn field_text<'a>(obj: &'a Value, path: &[String]) -> std::borrow::Cow<'a, str> {
    let mut at = Some(obj);
    for segment in path {
        at = at.and_then(|v| v.get(segment));
    }
    match at {
        Some(Value::String(s)) => std::borrow::Cow::Borrowed(s),
        Some(Value::Null) | None => std::borrow::Cow::Borrowed(""),
        Some(other) => std::borrow::Cow::Owned(other.to_string()),
    }
}

impl Selectors {
    pub fn parse(label: Option<&str>, field: Option<&str>) -> Result<Self, String> {
        let mut sel = Selectors::default();
        if let Some(label) = label {
            for req in split_top_level(label) {
                sel.labels.push(parse_label_requirement(&req)?);
            }
        }
        if let Some(field) = field {
            for req in field.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (path, value, equal) = if let Some((k, v)) = req.split_once("!=") {
                    (k, v, false)
                } else if let Some((k, v)) = req.split_once("==") {
                    (k, v, true)
                } else if let Some((k, v)) = req.split_once('=') {
                    (k, v, true)
                } else {
                    return Err(format!(
                        "invalid field selector {req:?}: expected field=value"
                    ));
                };
                // Split once: a watch matches every change against it.
                let path = path.trim().split('.').map(str::to_string).collect();
                sel.fields.push((path, value.trim().to_string(), equal));
            }
        }
        Ok(sel)
    }

    /// A `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`), as admission
    /// bindings and policies write them; absent or empty selects everything.
    pub fn from_label_selector(selector: &Value) -> Result<Self, String> {
        let mut sel = Selectors::default();
        if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in labels {
                let v = v
                    .as_str()
                    .ok_or_else(|| format!("matchLabels.{k}: expected a string"))?;
                sel.labels
                    .push(LabelRequirement::Equals(k.clone(), v.to_string()));
            }
        }
        for (i, e) in selector
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let key = e["key"]
                .as_str()
                .ok_or_else(|| format!("matchExpressions[{i}].key: required"))?
                .to_string();
            let values: Vec<String> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            sel.labels.push(match e["operator"].as_str() {
                Some("In") => LabelRequirement::In(key, values),
                Some("NotIn") => LabelRequirement::NotIn(key, values),
                Some("Exists") => LabelRequirement::Exists(key),
                Some("DoesNotExist") => LabelRequirement::NotExists(key),
                other => {
                    return Err(format!(
                        "matchExpressions[{i}].operator: expected In, NotIn, Exists or DoesNotExist, got {other:?}"
                    ));
                }
            });
        }
        Ok(sel)
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|r| match r {
            LabelRequirement::Equals(k, v) => label(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            LabelRequirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelRequirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            LabelRequirement::Exists(k) => label(k).is_some(),
            LabelRequirement::NotExists(k) => label(k).is_none(),
        });
        labels_ok
            && self
                .fields
                .iter()
                .all(|(path, want, equal)| (field_text(obj, path) == want.as_str()) == *equal)
    }

    /// An equality these selectors require, to index a watch by: every object they match has
    /// `value` at `path` (by [`field_text`]). None when they require no equality.
    pub fn index_key(&self) -> Option<IndexKey> {
        let label = self.labels.iter().find_map(|r| match r {
            LabelRequirement::Equals(k, v) => Some(IndexKey {
                path: vec!["metadata".into(), "labels".into(), k.clone()],
                value: v.clone(),
            }),
            _ => None,
        });
        label.or_else(|| {
            self.fields
                .iter()
                .find(|(_, _, equal)| *equal)
                .map(|(path, value, _)| IndexKey {
                    path: path.clone(),
                    value: value.clone(),
                })
        })
    }
}

/// Split on commas outside parentheses: `a in (x,y),b` → [`a in (x,y)`, `b`].
fn split_top_level(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

fn parse_label_requirement(req: &str) -> Result<LabelRequirement, String> {
    let set = |rest: &str| -> Result<Vec<String>, String> {
        let inner = rest
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| {
                format!("invalid label selector {req:?}: expected a list in parentheses")
            })?;
        Ok(inner
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect())
    };
    if let Some(key) = req.strip_prefix('!') {
        return Ok(LabelRequirement::NotExists(key.trim().to_string()));
    }
    if let Some((k, v)) = req.split_once("!=") {
        return Ok(LabelRequirement::NotEquals(
            k.trim().into(),
            v.trim().into(),
        ));
    }
    if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
        return Ok(LabelRequirement::Equals(k.trim().into(), v.trim().into()));
    }
    if let Some((k, rest)) = req.split_once(" notin ") {
        return Ok(LabelRequirement::NotIn(k.trim().into(), set(rest)?));
    }
    if let Some((k, rest)) = req.split_once(" in ") {
        return Ok(LabelRequirement::In(k.trim().into(), set(rest)?));
    }
    if req.contains(char::is_whitespace) || req.contains(['(', ')']) {
        return Err(format!("invalid label selector {req:?}"));
    }
    Ok(LabelRequirement::Exists(req.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value, node: &str) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default", "labels": labels}, "spec": {"nodeName": node}})
    }

    #[test]
    fn label_selectors_match_like_the_api_server() {
        let p = pod(json!({"app": "nginx", "tier": "edge"}), "n1");
        let cases = [
            ("app=nginx", true),
            ("app==nginx", true),
            ("app!=nginx", false),
            ("app in (nginx, web)", true),
            ("app notin (nginx)", false),
            ("tier", true),
            ("!tier", false),
            ("missing!=x", true),
            ("app=nginx,tier=cloud", false),
        ];
        for (sel, want) in cases {
            let s = Selectors::parse(Some(sel), None).unwrap();
            assert_eq!(s.matches(&p), want, "selector {sel:?}");
        }
    }

    #[test]
    fn field_selectors_read_the_object() {
        let p = pod(json!({}), "n1");
        for (sel, want) in [
            ("spec.nodeName=n1", true),
            ("spec.nodeName=n2", false),
            ("spec.nodeName!=n2", true),
            ("metadata.name=p,metadata.namespace=default", true),
            ("metadata.namespace=kube-system", false),
        ] {
            let s = Selectors::parse(None, Some(sel)).unwrap();
            assert_eq!(s.matches(&p), want, "selector {sel:?}");
        }
        assert!(Selectors::parse(None, Some("nonsense")).is_err());
    }

    #[test]
    fn every_object_a_selector_matches_has_its_index_value() {
        let objects = [
            pod(json!({"app": "nginx", "node": "n1"}), "n1"),
            pod(json!({"app": "web"}), "n2"),
            pod(json!({}), ""),
            json!({"metadata": {"name": "p"}}),
        ];
        let selectors = [
            (Some("app=nginx"), None),
            (Some("app!=nginx,node=n1"), None),
            (None, Some("spec.nodeName=n1")),
            (None, Some("spec.nodeName=")),
            (None, Some("spec.nodeName!=n1,metadata.name=p")),
            (Some("app in (web)"), None),
        ];
        for (label, field) in selectors {
            let s = Selectors::parse(label, field).unwrap();
            let key = s.index_key();
            if label == Some("app in (web)") {
                assert_eq!(key, None, "no equality to index by");
            }
            for o in &objects {
                if let (true, Some(key)) = (s.matches(o), &key) {
                    assert_eq!(
                        field_text(o, &key.path),
                        key.value,
                        "{label:?} {field:?} on {o}"
                    );
                }
            }
        }
    }
}
