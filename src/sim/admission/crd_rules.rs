//! A CRD's validation rules (`x-kubernetes-validations`), compiled in the shape of its schema
//! and checked on every create and update of its objects, as the API server does: each rule
//! sees its node as `self` (and the node's previous value as `oldSelf` in a transition rule,
//! on update); a value left unchanged by an update is not re-checked (validation ratcheting).

use std::collections::BTreeMap;

use serde_json::Value;

use super::FieldError;
use super::cel::{self, Expression};

/// The rules of one version's schema; only the parts of the schema that hold rules.
#[derive(Debug, Default)]
pub struct SchemaRules {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    /// The node's `type` (`string`, `object`, ...): the API server names it in its errors.
    type_: String,
    rules: Vec<Rule>,
    properties: BTreeMap<String, Node>,
    items: Option<Box<Node>>,
    additional: Option<Box<Node>>,
}

#[derive(Debug)]
struct Rule {
    expression: Expression,
    message: Option<String>,
    message_expression: Option<Expression>,
    /// `FieldValueInvalid` (the default), `FieldValueForbidden`, `FieldValueRequired`,
    /// `FieldValueDuplicate`.
    reason: String,
    /// Where the error points, relative to the node (`.secret`).
    field_path: Option<String>,
    /// The rule uses `oldSelf`: checked on update only, against the previous value.
    transition: bool,
}

impl SchemaRules {
    /// Compile the rules in `crd`'s schema for `version`. `Ok(None)`: it has none. An error
    /// names the rule that does not compile, as the API server refuses such a CRD.
    pub fn compile(crd: &Value, version: &str) -> Result<Option<SchemaRules>, String> {
        let versions = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let Some((index, schema)) = versions.iter().enumerate().find_map(|(i, v)| {
            (v["name"] == version)
                .then(|| v.pointer("/schema/openAPIV3Schema").map(|s| (i, s)))
                .flatten()
        }) else {
            return Ok(None);
        };
        let path = format!("spec.versions[{index}].schema.openAPIV3Schema");
        Ok(compile_node(schema, &path)?.map(|root| SchemaRules { root }))
    }

    /// Check `new` (and, on update, `old`): every rule that fails, as a field error.
    pub fn validate(&self, new: &Value, old: Option<&Value>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        self.root.validate(String::new(), new, old, &mut errors);
        errors
    }
}

fn compile_node(schema: &Value, path: &str) -> Result<Option<Node>, String> {
    let mut node = Node {
        type_: schema["type"].as_str().unwrap_or_default().to_string(),
        ..Node::default()
    };
    for (i, rule) in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        node.rules.push(compile_rule(rule).map_err(|e| {
            format!("{path}.x-kubernetes-validations[{i}].rule: Invalid value: {e}")
        })?);
    }
    if let Some(properties) = schema["properties"].as_object() {
        for (name, child) in properties {
            if let Some(child) = compile_node(child, &format!("{path}.properties[{name}]"))? {
                node.properties.insert(name.clone(), child);
            }
        }
    }
    if schema["items"].is_object() {
        node.items = compile_node(&schema["items"], &format!("{path}.items"))?.map(Box::new);
    }
    if schema["additionalProperties"].is_object() {
        node.additional = compile_node(
            &schema["additionalProperties"],
            &format!("{path}.additionalProperties"),
        )?
        .map(Box::new);
    }
    let empty = node.rules.is_empty()
        && node.properties.is_empty()
        && node.items.is_none()
        && node.additional.is_none();
    Ok((!empty).then_some(node))
}

fn compile_rule(rule: &Value) -> Result<Rule, String> {
    let source = rule["rule"]
        .as_str()
        .ok_or_else(|| "\"\": rule is required".to_string())?;
    let expression = Expression::compile(source).map_err(|e| format!("{source:?}: {e}"))?;
    let message_expression = rule["messageExpression"]
        .as_str()
        .map(Expression::compile)
        .transpose()
        .map_err(|e| format!("messageExpression: {e}"))?;
    let transition = expression.mentions("oldSelf");
    Ok(Rule {
        expression,
        message: rule["message"].as_str().map(str::to_string),
        message_expression,
        reason: rule["reason"]
            .as_str()
            .unwrap_or("FieldValueInvalid")
            .to_string(),
        field_path: rule["fieldPath"].as_str().map(str::to_string),
        transition,
    })
}

impl Node {
    fn validate(
        &self,
        path: String,
        new: &Value,
        old: Option<&Value>,
        errors: &mut Vec<FieldError>,
    ) {
        if old == Some(new) || new.is_null() {
            // Ratcheting: an unchanged value passes, even under rules added since. A null is
            // not checked: its parent's rules say whether it may be absent.
            return;
        }
        for rule in &self.rules {
            self.check(rule, &path, new, old, errors);
        }
        let child = |name: &str| {
            if path.is_empty() {
                name.to_string()
            } else {
                format!("{path}.{name}")
            }
        };
        if let Value::Object(fields) = new {
            for (name, value) in fields {
                let schema = self.properties.get(name).or_else(|| {
                    self.additional
                        .as_deref()
                        .filter(|_| !self.properties.contains_key(name))
                });
                if let Some(schema) = schema {
                    let old_value = old.and_then(|o| o.get(name));
                    schema.validate(child(name), value, old_value, errors);
                }
            }
        }
        if let (Value::Array(items), Some(schema)) = (new, &self.items) {
            // Items of a plain list do not correlate with the old list's: all are checked.
            for (i, item) in items.iter().enumerate() {
                schema.validate(format!("{path}[{i}]"), item, None, errors);
            }
        }
    }

    fn check(
        &self,
        rule: &Rule,
        path: &str,
        new: &Value,
        old: Option<&Value>,
        errors: &mut Vec<FieldError>,
    ) {
        let this = cel::value(new);
        let mut bindings = vec![("self", this)];
        if rule.transition {
            let Some(old) = old else {
                return;
            };
            bindings.push(("oldSelf", cel::value(old)));
        }
        let field = match &rule.field_path {
            Some(relative) => format!("{path}{relative}"),
            None => path.to_string(),
        };
        let detail = match rule.expression.eval_bool(&bindings) {
            Ok(true) => return,
            Ok(false) => rule
                .message_expression
                .as_ref()
                .and_then(|m| m.eval_string(&bindings).ok())
                .filter(|m| !m.trim().is_empty())
                .or_else(|| rule.message.clone())
                .unwrap_or_else(|| format!("failed rule: {}", rule.expression.source)),
            Err(e) => format!("rule evaluation error: {e}"),
        };
        errors.push(FieldError::for_reason(
            &field,
            &rule.reason,
            &self.type_,
            detail,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crd(schema: Value) -> Value {
        json!({"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": schema}}]}})
    }

    fn rules(schema: Value) -> SchemaRules {
        SchemaRules::compile(&crd(schema), "v1")
            .expect("the rules compile")
            .expect("there are rules")
    }

    fn messages(errors: &[FieldError]) -> Vec<String> {
        errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn a_failing_rule_names_its_field_and_message() {
        let r = rules(
            json!({"type": "object", "properties": {"spec": {"type": "object",
            "properties": {"name": {"type": "string", "x-kubernetes-validations": [
                {"rule": "!self.contains('/')", "message": "must be a plain file name"}]}}}}}),
        );
        let errors = r.validate(&json!({"spec": {"name": "../x"}}), None);
        assert_eq!(
            messages(&errors),
            ["spec.name: Invalid value: \"string\": must be a plain file name"]
        );
        assert!(r.validate(&json!({"spec": {"name": "x"}}), None).is_empty());
    }

    #[test]
    fn list_items_are_checked_each_with_its_index_and_field_path() {
        let r = rules(
            json!({"type": "object", "properties": {"volumes": {"type": "array",
            "items": {"type": "object", "x-kubernetes-validations": [{"rule": "!has(self.secret)",
            "fieldPath": ".secret", "reason": "FieldValueForbidden", "message": "no secrets"}]}}}}),
        );
        let errors = r.validate(
            &json!({"volumes": [{"emptyDir": {}}, {"secret": {}}]}),
            None,
        );
        assert_eq!(
            messages(&errors),
            ["volumes[1].secret: Forbidden: no secrets"]
        );
    }

    #[test]
    fn transition_rules_run_on_update_only_and_unchanged_values_are_not_rechecked() {
        let r = rules(
            json!({"type": "object", "properties": {"n": {"type": "integer",
            "x-kubernetes-validations": [
                {"rule": "self >= oldSelf", "message": "may not decrease"},
                {"rule": "self < 10", "message": "must be under 10"}]}}}),
        );
        assert!(
            r.validate(&json!({"n": 5}), None).is_empty(),
            "create: no oldSelf"
        );
        assert_eq!(
            messages(&r.validate(&json!({"n": 4}), Some(&json!({"n": 5})))),
            ["n: Invalid value: \"integer\": may not decrease"]
        );
        assert!(
            r.validate(&json!({"n": 12, "m": 1}), Some(&json!({"n": 12})))
                .is_empty(),
            "ratcheting: n unchanged"
        );
    }

    #[test]
    fn a_rule_that_does_not_compile_is_refused_with_its_place() {
        let bad = crd(json!({"type": "object", "x-kubernetes-validations": [{"rule": "self.("}]}));
        let e = SchemaRules::compile(&bad, "v1").expect_err("does not compile");
        assert!(
            e.starts_with(
                "spec.versions[0].schema.openAPIV3Schema.x-kubernetes-validations[0].rule"
            ),
            "{e}"
        );
        assert!(
            SchemaRules::compile(&crd(json!({"type": "object"})), "v1")
                .expect("no rules is fine")
                .is_none()
        );
    }
}
