//! The JSONPath subset CRD printer columns use.

use serde_json::Value;

#[derive(Debug, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    All,
    /// `[?(@.key=="value")]`
    Filter(Vec<String>, String),
}

/// Evaluate the simple JSONPaths printer columns use: `.a.b`, `.a[0]`, `.a[*].b`,
/// `.a[?(@.type=="Ready")].status`, optionally wrapped in `{}`.
pub(super) fn json_path<'a>(obj: &'a Value, path: &str) -> Vec<&'a Value> {
    let Some(steps) = parse_path(path) else {
        return Vec::new();
    };
    let mut current = vec![obj];
    for step in &steps {
        let mut next = Vec::new();
        for v in current {
            match step {
                Step::Field(f) => next.extend(v.get(f.as_str())),
                Step::Index(i) => next.extend(v.get(*i)),
                Step::All => match v {
                    Value::Array(items) => next.extend(items.iter()),
                    Value::Object(map) => next.extend(map.values()),
                    _ => {}
                },
                Step::Filter(key, want) => {
                    for item in v.as_array().into_iter().flatten() {
                        let mut field = Some(item);
                        for k in key {
                            field = field.and_then(|f| f.get(k.as_str()));
                        }
                        let matches = match field {
                            Some(Value::String(s)) => s == want,
                            Some(other) => other.to_string().as_str() == want.as_str(),
                            None => false,
                        };
                        if matches {
                            next.push(item);
                        }
                    }
                }
            }
        }
        current = next;
    }
    current
}

fn parse_path(path: &str) -> Option<Vec<Step>> {
    let path = path.trim();
    let path = path
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(path);
    let mut steps = Vec::new();
    let mut rest = path.strip_prefix('$').unwrap_or(path);
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end > 0 {
                steps.push(Step::Field(r[..end].to_string()));
            }
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = r[..end].trim();
            rest = &r[end + 1..];
            if inner == "*" {
                steps.push(Step::All);
            } else if let Ok(i) = inner.parse() {
                steps.push(Step::Index(i));
            } else if let Some(filter) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')'))
            {
                let (lhs, rhs) = filter.split_once("==")?;
                let key = lhs
                    .trim()
                    .strip_prefix("@.")?
                    .split('.')
                    .map(str::to_string)
                    .collect();
                let want = rhs
                    .trim()
                    .trim_matches(|c| c == '"' || c == '\'')
                    .to_string();
                steps.push(Step::Filter(key, want));
            } else {
                let quoted = inner.trim_matches(|c| c == '"' || c == '\'');
                steps.push(Step::Field(quoted.to_string()));
            }
        } else {
            // A path not starting with `.`: treat the first segment as a field.
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            steps.push(Step::Field(rest[..end].to_string()));
            rest = &rest[end..];
        }
    }
    Some(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_paths_printer_columns_use() {
        let obj = json!({"status": {"totalNumber": 3, "conditions": [
            {"type": "Ready", "status": "True"}, {"type": "Other", "status": "False"}]},
            "spec": {"items": [{"n": 1}, {"n": 2}]}});
        assert_eq!(json_path(&obj, ".status.totalNumber"), vec![&json!(3)]);
        assert_eq!(
            json_path(&obj, "{.status.conditions[?(@.type==\"Other\")].status}"),
            vec![&json!("False")]
        );
        assert_eq!(json_path(&obj, ".spec.items[1].n"), vec![&json!(2)]);
        assert_eq!(
            json_path(&obj, ".spec.items[*].n"),
            vec![&json!(1), &json!(2)]
        );
        assert!(json_path(&obj, ".status.missing").is_empty());
    }
}
