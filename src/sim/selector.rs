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
    /// (JSON pointer of the field path, value, equal?)
    fields: Vec<(String, String, bool)>,
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
                // Made into a JSON pointer once: a watch matches every change against it.
                let pointer = format!("/{}", path.trim().replace('.', "/"));
                sel.fields.push((pointer, value.trim().to_string(), equal));
            }
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
            && self.fields.iter().all(|(pointer, want, equal)| {
                let matched = match obj.pointer(pointer) {
                    Some(Value::String(s)) => s == want,
                    Some(Value::Null) | None => want.is_empty(),
                    Some(other) => {
                        let text = other.to_string();
                        text == *want
                    }
                };
                matched == *equal
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
}
