//! CEL as the API server evaluates it for CRD validation rules and admission policies: the
//! standard library with the strings extension, over JSON values turned into CEL values the
//! way the API server types them (integers as `int`, objects as maps).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use cel::{Context, Env, Program, Value as CelValue};
use serde_json::Value;

/// One compiled expression and its source (errors quote it, as the API server does).
#[derive(Debug)]
pub struct Expression {
    pub source: String,
    program: Program,
}

/// The environment every expression compiles in: CEL's standard library and the strings
/// extension (`substring`, `lowerAscii`, `split`, ...), which Kubernetes' CEL includes.
fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Env::stdlib();
        // The strings extension declares functions under fixed names; declaring them twice is
        // the only way this fails, and this runs once.
        let _ = env.add_extension(cel::extensions::strings);
        Arc::new(env)
    })
}

impl Expression {
    /// Compile `source`; the error is the parser's, as a sentence.
    pub fn compile(source: &str) -> Result<Expression, String> {
        let program = env()
            .compile(source)
            .map_err(|e| format!("compilation failed: {e}"))?;
        Ok(Expression {
            source: source.to_string(),
            program,
        })
    }

    /// Evaluate with `bindings` as the variables (`self`, `object`, `request`, ...).
    pub fn eval(&self, bindings: &[(&str, CelValue)]) -> Result<CelValue, String> {
        let mut context = Context::with_env(env().clone());
        for (name, value) in bindings {
            context.add_variable_from_value(*name, value.clone());
        }
        self.program.execute(&context).map_err(|e| e.to_string())
    }

    /// Evaluate an expression that must give a bool (a rule, a condition, a validation).
    pub fn eval_bool(&self, bindings: &[(&str, CelValue)]) -> Result<bool, String> {
        match self.eval(bindings)? {
            CelValue::Bool(b) => Ok(b),
            other => Err(format!(
                "expression '{}' gave a {}, not a bool",
                self.source,
                other.type_of()
            )),
        }
    }

    /// Evaluate an expression that must give a string (a `messageExpression`).
    pub fn eval_string(&self, bindings: &[(&str, CelValue)]) -> Result<String, String> {
        match self.eval(bindings)? {
            CelValue::String(s) => Ok(s.to_string()),
            other => Err(format!(
                "messageExpression '{}' gave a {}, not a string",
                self.source,
                other.type_of()
            )),
        }
    }

    /// Whether the expression names `variable` (a rule using `oldSelf` is a transition rule).
    pub fn mentions(&self, variable: &str) -> bool {
        self.source.match_indices(variable).any(|(at, _)| {
            let before = self.source[..at].chars().next_back();
            let after = self.source[at + variable.len()..].chars().next();
            let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            !ident(before) && !ident(after)
        })
    }
}

/// A JSON value as CEL sees it: numbers that are integers as `int`, others as `double`,
/// objects as maps (so `has()` tests for a key).
pub fn value(json: &Value) -> CelValue {
    match json {
        Value::Null => CelValue::Null,
        Value::Bool(b) => CelValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => CelValue::Int(i),
            None => CelValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => CelValue::String(Arc::new(s.clone())),
        Value::Array(items) => CelValue::List(Arc::new(items.iter().map(value).collect())),
        Value::Object(fields) => {
            // A null field is an absent one, as the API server decodes objects (a built-in
            // type's nil pointer, a custom resource's pruned null): `has()` is false for it.
            let map: HashMap<String, CelValue> = fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), value(v)))
                .collect();
            CelValue::from(map)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(source: &str, this: Value) -> Result<bool, String> {
        Expression::compile(source)?.eval_bool(&[("self", value(&this))])
    }

    #[test]
    fn integers_are_ints_and_objects_are_maps() {
        assert_eq!(
            eval("type(self.a) == int && self.a >= 0", json!({"a": 3})),
            Ok(true)
        );
        assert_eq!(eval("has(self.a)", json!({"b": 1})), Ok(false));
        assert_eq!(eval("has(self.a)", json!({"a": null})), Ok(false));
        assert_eq!(eval("type(self) == string", json!("10%")), Ok(true));
    }

    #[test]
    fn the_strings_extension_is_there() {
        assert_eq!(
            eval(
                "self.substring(22) == 'n1'",
                json!("staticpod-puller:node:n1")
            ),
            Ok(true)
        );
        assert_eq!(eval("self.lowerAscii() == 'ota'", json!("OTA")), Ok(true));
    }

    #[test]
    fn errors_name_what_went_wrong() {
        let missing = eval("self.a == 1", json!({})).expect_err("no such key");
        assert!(missing.contains('a'), "{missing}");
        let not_bool = eval("self", json!(1)).expect_err("not a bool");
        assert!(not_bool.contains("not a bool"), "{not_bool}");
        assert!(Expression::compile("self.(").is_err());
    }

    #[test]
    fn a_rule_mentions_old_self_only_as_a_name() {
        let rule = Expression::compile("self == oldSelf").expect("compiles");
        assert!(rule.mentions("oldSelf"));
        let other = Expression::compile("self.oldSelfish == 1").expect("compiles");
        assert!(!other.mentions("oldSelf"));
    }
}
