//! ValidatingAdmissionPolicies and their bindings, evaluated as the API server evaluates them
//! for the requests this project makes: `matchConstraints` and the binding's
//! `matchResources` (resource rules, namespace and object selectors), `matchConditions`,
//! `variables`, `validations` with `message` / `messageExpression` / `reason`, the
//! `failurePolicy`, and the binding's `Deny` action. Not evaluated: `paramKind` (a policy
//! with parameters refuses what it matches, saying so), `auditAnnotations`, `authorizer`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ::cel::Value as CelValue;
use serde_json::{Value, json};

use super::cel::{self, Expression};
use super::{Admit, Proposed};
use crate::sim::error::ApiError;
use crate::sim::resource::ResourceType;
use crate::sim::selector::Selectors;

/// The variables that hold objects (costly to turn into CEL values).
const OBJECT_VARIABLES: [&str; 4] = ["object", "oldObject", "namespaceObject", "params"];

/// One policy, compiled.
#[derive(Debug)]
pub struct CompiledPolicy {
    name: String,
    /// `failurePolicy: Fail` (the default): an expression that errors refuses the request.
    fail_closed: bool,
    constraints: Matcher,
    conditions: Vec<(String, Expression)>,
    variables: Vec<(String, Expression)>,
    validations: Vec<Validation>,
    /// Why the policy cannot be evaluated (an expression that does not compile, parameters):
    /// with `Fail`, every request it matches is refused with this.
    broken: Option<String>,
}

#[derive(Debug)]
struct Validation {
    expression: Expression,
    message: Option<String>,
    message_expression: Option<Expression>,
    reason: Option<String>,
}

#[derive(Debug, Default)]
struct Matcher {
    namespaces: Selectors,
    objects: Selectors,
    rules: Vec<Rule>,
    excluded: Vec<Rule>,
    /// No `resourceRules` given: a binding's `matchResources` then narrows nothing.
    all_resources: bool,
}

#[derive(Debug)]
struct Rule {
    groups: Vec<String>,
    versions: Vec<String>,
    operations: Vec<String>,
    resources: Vec<String>,
    scope: String,
    names: Vec<String>,
}

/// The policies in force for one request, each with the binding that puts it in force.
pub struct PolicyAdmission {
    bound: Vec<(Arc<CompiledPolicy>, Arc<Binding>)>,
    username: String,
    groups: Vec<String>,
    namespace_object: Option<Value>,
}

/// One binding, parsed.
#[derive(Debug)]
struct Binding {
    name: String,
    policy: String,
    /// `validationActions` holds `Deny` (Warn and Audit refuse nothing).
    deny: bool,
    matcher: Matcher,
}

/// Compiled policies and parsed bindings by name, reused while their resourceVersion stays
/// the same.
#[derive(Default)]
pub struct PolicyCache {
    policies: Mutex<HashMap<String, (String, Arc<CompiledPolicy>)>>,
    bindings: Mutex<HashMap<String, (String, Arc<Binding>)>>,
}

/// `object` built by `build`, or as built before while its resourceVersion is unchanged.
fn cached<T>(
    cache: &Mutex<HashMap<String, (String, Arc<T>)>>,
    object: &Value,
    build: impl FnOnce(&Value) -> T,
) -> Arc<T> {
    let text = |pointer: &str| {
        object
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (name, rv) = (text("/metadata/name"), text("/metadata/resourceVersion"));
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    match cache.get(&name) {
        Some((seen, built)) if *seen == rv => built.clone(),
        _ => {
            let built = Arc::new(build(object));
            cache.insert(name, (rv, built.clone()));
            built
        }
    }
}

impl PolicyCache {
    /// The policies `bindings` put in force (`policies` and `bindings` as stored), for a
    /// request by `username` in `groups`; `namespace_object` is the request's namespace.
    pub fn admission(
        &self,
        policies: &[Arc<Value>],
        bindings: &[Arc<Value>],
        username: &str,
        groups: &[String],
        namespace_object: Option<Value>,
    ) -> PolicyAdmission {
        let by_name: HashMap<String, Arc<CompiledPolicy>> = policies
            .iter()
            .map(|p| cached(&self.policies, p, CompiledPolicy::compile))
            .map(|c| (c.name.clone(), c))
            .collect();
        let bound = bindings
            .iter()
            .map(|b| cached(&self.bindings, b, Binding::parse))
            .filter(|b| b.deny)
            .filter_map(|b| Some((by_name.get(&b.policy)?.clone(), b)))
            .collect();
        PolicyAdmission {
            bound,
            username: username.to_string(),
            groups: groups.to_vec(),
            namespace_object,
        }
    }
}

impl Binding {
    fn parse(binding: &Value) -> Binding {
        let spec = &binding["spec"];
        let name = binding
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let matcher = match spec.get("matchResources") {
            Some(m) if !m.is_null() => Matcher::parse(m).unwrap_or_else(|e| {
                // The API server refuses such a binding when it is written; the dev cluster
                // stores it, so it is logged and matches nothing.
                tracing::warn!(binding = %name, "binding matchResources: {e}");
                Matcher::default()
            }),
            _ => Matcher {
                all_resources: true,
                ..Matcher::default()
            },
        };
        Binding {
            policy: spec["policyName"].as_str().unwrap_or_default().to_string(),
            deny: spec["validationActions"]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v == "Deny")),
            matcher,
            name,
        }
    }
}

impl CompiledPolicy {
    fn compile(policy: &Value) -> CompiledPolicy {
        let spec = &policy["spec"];
        let mut broken = Vec::new();
        let mut expressions = |list: &str, field: &str| -> Vec<(String, Expression)> {
            let mut out = Vec::new();
            for (i, item) in spec[list].as_array().into_iter().flatten().enumerate() {
                let name = item["name"].as_str().unwrap_or_default().to_string();
                match Expression::compile(item[field].as_str().unwrap_or_default()) {
                    Ok(e) => out.push((name, e)),
                    Err(e) => broken.push(format!("spec.{list}[{i}].{field}: {e}")),
                }
            }
            out
        };
        let conditions = expressions("matchConditions", "expression");
        let variables = expressions("variables", "expression");
        let mut validations = Vec::new();
        for (i, v) in spec["validations"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let expression = match Expression::compile(v["expression"].as_str().unwrap_or_default())
            {
                Ok(e) => e,
                Err(e) => {
                    broken.push(format!("spec.validations[{i}].expression: {e}"));
                    continue;
                }
            };
            let message_expression = match v["messageExpression"].as_str().map(Expression::compile)
            {
                Some(Err(e)) => {
                    broken.push(format!("spec.validations[{i}].messageExpression: {e}"));
                    None
                }
                Some(Ok(e)) => Some(e),
                None => None,
            };
            validations.push(Validation {
                expression,
                message: v["message"].as_str().map(str::to_string),
                message_expression,
                reason: v["reason"].as_str().map(str::to_string),
            });
        }
        if spec.get("paramKind").is_some_and(|p| !p.is_null()) {
            broken.push(
                "spec.paramKind: policies with parameters are not evaluated by the dev cluster"
                    .into(),
            );
        }
        let constraints = Matcher::parse(&spec["matchConstraints"]).unwrap_or_else(|e| {
            broken.push(format!("spec.matchConstraints: {e}"));
            Matcher::default()
        });
        CompiledPolicy {
            name: policy
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            fail_closed: spec["failurePolicy"].as_str() != Some("Ignore"),
            constraints,
            conditions,
            variables,
            validations,
            broken: (!broken.is_empty()).then(|| broken.join("; ")),
        }
    }
}

impl Matcher {
    fn parse(m: &Value) -> Result<Matcher, String> {
        let selector = |field: &str| match m.get(field) {
            Some(s) if !s.is_null() => {
                Selectors::from_label_selector(s).map_err(|e| format!("{field}: {e}"))
            }
            _ => Ok(Selectors::default()),
        };
        let rules = |field: &str| -> Vec<Rule> {
            m[field]
                .as_array()
                .into_iter()
                .flatten()
                .map(Rule::parse)
                .collect()
        };
        Ok(Matcher {
            namespaces: selector("namespaceSelector")?,
            objects: selector("objectSelector")?,
            rules: rules("resourceRules"),
            excluded: rules("excludeResourceRules"),
            all_resources: false,
        })
    }

    fn matches(&self, rt: &ResourceType, write: &Proposed<'_>, namespace: Option<&Value>) -> bool {
        let resource_ok = if self.all_resources {
            true
        } else {
            self.rules.iter().any(|r| r.matches(rt, write))
                && !self.excluded.iter().any(|r| r.matches(rt, write))
        };
        // A namespace selector applies to namespaced requests only, as the API server's does.
        let namespace_ok = write
            .namespace
            .is_none_or(|_| namespace.is_none_or(|ns| self.namespaces.matches(ns)));
        let objects_ok = [write.object, write.old_object]
            .into_iter()
            .flatten()
            .any(|o| self.objects.matches(o));
        resource_ok && namespace_ok && objects_ok
    }
}

impl Rule {
    fn parse(r: &Value) -> Rule {
        let strings = |field: &str| -> Vec<String> {
            r[field]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        };
        Rule {
            groups: strings("apiGroups"),
            versions: strings("apiVersions"),
            operations: strings("operations"),
            resources: strings("resources"),
            scope: r["scope"].as_str().unwrap_or("*").to_string(),
            names: strings("resourceNames"),
        }
    }

    fn matches(&self, rt: &ResourceType, write: &Proposed<'_>) -> bool {
        let any = |list: &[String], want: &str| list.iter().any(|v| v == "*" || v == want);
        let sub = write.subresource.unwrap_or_default();
        // `pods` is the resource alone, `pods/status` one subresource, `pods/*` all of them,
        // `*` every resource without subresources, `*/*` everything.
        let resource_ok = self.resources.iter().any(|r| match r.split_once('/') {
            None => sub.is_empty() && (r == "*" || *r == rt.plural),
            Some((res, s)) => (res == "*" || res == rt.plural) && (s == "*" || s == sub),
        });
        let scope_ok = match self.scope.as_str() {
            "Cluster" => !rt.namespaced,
            "Namespaced" => rt.namespaced,
            _ => true,
        };
        any(&self.groups, &rt.group)
            && any(&self.versions, &rt.version)
            && any(&self.operations, write.operation.as_str())
            && resource_ok
            && scope_ok
            && (self.names.is_empty() || self.names.iter().any(|n| n == write.name))
    }
}

impl Admit for PolicyAdmission {
    fn admit(&self, rt: &ResourceType, write: &Proposed<'_>) -> Result<(), ApiError> {
        for (policy, binding) in &self.bound {
            let ns = self.namespace_object.as_ref();
            if !policy.constraints.matches(rt, write, ns) || !binding.matcher.matches(rt, write, ns)
            {
                continue;
            }
            if let Some(refusal) = self.evaluate(policy, rt, write) {
                return Err(refused(rt, write, &policy.name, &binding.name, refusal));
            }
        }
        Ok(())
    }
}

/// Why a policy refuses a request: its message and reason.
struct Refusal {
    message: String,
    reason: Option<String>,
}

impl PolicyAdmission {
    fn evaluate(
        &self,
        policy: &CompiledPolicy,
        rt: &ResourceType,
        write: &Proposed<'_>,
    ) -> Option<Refusal> {
        let failed = |message: String| {
            policy.fail_closed.then_some(Refusal {
                message,
                reason: None,
            })
        };
        if let Some(broken) = &policy.broken {
            return failed(broken.clone());
        }
        // The request alone decides most conditions (who is asking); the objects are turned
        // into CEL values only for a request a condition lets through.
        let request = ("request", cel::value(&self.request(rt, write)));
        for (name, condition) in &policy.conditions {
            let decided = if OBJECT_VARIABLES.iter().any(|v| condition.mentions(v)) {
                condition.eval_bool(&self.bindings(write, request.clone()))
            } else {
                condition.eval_bool(std::slice::from_ref(&request))
            };
            match decided {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    return failed(format!("failed to evaluate matchCondition {name:?}: {e}"));
                }
            }
        }
        let mut bindings = self.bindings(write, request);
        // Variables in order, each seeing the ones before; one that errors is left out, so
        // only an expression that uses it fails.
        let mut variables: HashMap<String, CelValue> = HashMap::new();
        for (name, expression) in &policy.variables {
            let mut with_variables = bindings.clone();
            with_variables.push(("variables", CelValue::from(variables.clone())));
            if let Ok(v) = expression.eval(&with_variables) {
                variables.insert(name.clone(), v);
            }
        }
        bindings.push(("variables", CelValue::from(variables)));
        for v in &policy.validations {
            match v.expression.eval_bool(&bindings) {
                Ok(true) => {}
                Ok(false) => {
                    let message = v
                        .message_expression
                        .as_ref()
                        .and_then(|m| m.eval_string(&bindings).ok())
                        .filter(|m| !m.trim().is_empty())
                        .or_else(|| v.message.clone())
                        .unwrap_or_else(|| format!("failed expression: {}", v.expression.source));
                    return Some(Refusal {
                        message,
                        reason: v.reason.clone(),
                    });
                }
                Err(e) => {
                    if let Some(r) = failed(format!(
                        "expression '{}' resulted in error: {e}",
                        v.expression.source
                    )) {
                        return Some(r);
                    }
                }
            }
        }
        None
    }

    /// Every variable but `variables`.
    fn bindings(
        &self,
        write: &Proposed<'_>,
        request: (&'static str, CelValue),
    ) -> Vec<(&'static str, CelValue)> {
        vec![
            ("object", write.object.map_or(CelValue::Null, cel::value)),
            (
                "oldObject",
                write.old_object.map_or(CelValue::Null, cel::value),
            ),
            request,
            ("params", CelValue::Null),
            (
                "namespaceObject",
                self.namespace_object
                    .as_ref()
                    .map_or(CelValue::Null, cel::value),
            ),
        ]
    }

    /// The `request` variable: what the API server's admission attributes say of the request.
    fn request(&self, rt: &ResourceType, write: &Proposed<'_>) -> Value {
        let kind = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
        let resource = json!({"group": rt.group, "version": rt.version, "resource": rt.plural});
        json!({
            "kind": kind,
            "resource": resource,
            "subResource": write.subresource.unwrap_or_default(),
            "requestKind": kind,
            "requestResource": resource,
            "requestSubResource": write.subresource.unwrap_or_default(),
            "name": write.name,
            "namespace": write.namespace.unwrap_or_default(),
            "operation": write.operation.as_str(),
            "userInfo": {"username": self.username, "groups": self.groups},
            "dryRun": false,
        })
    }
}

/// The API server's refusal: `leases.coordination.k8s.io "x" is forbidden:
/// ValidatingAdmissionPolicy 'p' with binding 'b' denied request: <message>`, with the code
/// of the validation's reason (422 Invalid when it gives none).
fn refused(
    rt: &ResourceType,
    write: &Proposed<'_>,
    policy: &str,
    binding: &str,
    refusal: Refusal,
) -> ApiError {
    let denial = format!(
        "ValidatingAdmissionPolicy '{policy}' with binding '{binding}' denied request: {}",
        refusal.message
    );
    let (code, reason) = match refusal.reason.as_deref() {
        Some("Forbidden") => (403, "Forbidden"),
        Some("Unauthorized") => (401, "Unauthorized"),
        Some("RequestEntityTooLarge") => (413, "RequestEntityTooLarge"),
        _ => (422, "Invalid"),
    };
    let qualified = if rt.group.is_empty() {
        rt.plural.clone()
    } else {
        format!("{}.{}", rt.plural, rt.group)
    };
    let mut details =
        json!({"name": write.name, "kind": rt.plural, "causes": [{"message": denial}]});
    if !rt.group.is_empty() {
        details["group"] = json!(rt.group);
    }
    ApiError::with_details(
        code,
        reason,
        format!("{qualified} \"{}\" is forbidden: {denial}", write.name),
        details,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::admission::Operation;

    fn leases() -> ResourceType {
        crate::sim::resource::builtin_types()
            .into_iter()
            .find(|t| t.plural == "leases")
            .expect("leases are built in")
    }

    fn policy(validation: Value) -> Arc<Value> {
        Arc::new(json!({
            "metadata": {"name": "p", "resourceVersion": "1"},
            "spec": {
                "matchConstraints": {"resourceRules": [{"apiGroups": ["coordination.k8s.io"],
                    "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["leases"]}]},
                "matchConditions": [{"name": "agents", "expression": "request.userInfo.groups.exists(g, g == 'agents')"}],
                "variables": [{"name": "node", "expression": "request.userInfo.username.substring(5)"}],
                "validations": [validation],
            }
        }))
    }

    fn binding(actions: Value) -> Arc<Value> {
        Arc::new(
            json!({"metadata": {"name": "b"}, "spec": {"policyName": "p", "validationActions": actions}}),
        )
    }

    fn update<'a>(old: &'a Value, new: &'a Value) -> Proposed<'a> {
        Proposed {
            operation: Operation::Update,
            subresource: None,
            namespace: Some("ns"),
            name: "grant",
            object: Some(new),
            old_object: Some(old),
        }
    }

    const OWN: &str = "object.spec.holderIdentity == variables.node";

    fn admission(p: &Arc<Value>, actions: Value, groups: &str) -> PolicyAdmission {
        PolicyCache::default().admission(
            std::slice::from_ref(p),
            &[binding(actions)],
            "node:a",
            &[groups.to_string()],
            None,
        )
    }

    #[test]
    fn a_failing_validation_refuses_with_the_policy_message_and_reason() {
        let p = policy(json!({"expression": OWN, "reason": "Forbidden",
            "messageExpression": "'node ' + variables.node + ' may only hold its own grants'"}));
        let admission = admission(&p, json!(["Deny"]), "agents");
        let old = json!({"spec": {"holderIdentity": "b"}});
        let new = json!({"spec": {"holderIdentity": "b"}});
        let e = admission
            .admit(&leases(), &update(&old, &new))
            .expect_err("refused");
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "leases.coordination.k8s.io \"grant\" is forbidden: ValidatingAdmissionPolicy 'p' with binding 'b' denied request: node a may only hold its own grants"
        );
        let mine = json!({"spec": {"holderIdentity": "a"}});
        assert!(admission.admit(&leases(), &update(&old, &mine)).is_ok());
    }

    #[test]
    fn match_conditions_actions_and_operations_limit_what_is_checked() {
        let p = policy(json!({"expression": OWN}));
        let old = json!({"spec": {"holderIdentity": "b"}});
        let other = json!({"spec": {"holderIdentity": "b"}});
        let not_agent = admission(&p, json!(["Deny"]), "admins");
        assert!(not_agent.admit(&leases(), &update(&old, &other)).is_ok());
        let warn_only = admission(&p, json!(["Warn"]), "agents");
        assert!(warn_only.admit(&leases(), &update(&old, &other)).is_ok());
        let agent = admission(&p, json!(["Deny"]), "agents");
        let e = agent
            .admit(&leases(), &update(&old, &other))
            .expect_err("refused");
        assert_eq!(
            (e.code, e.reason),
            (422, "Invalid"),
            "no reason given: Invalid"
        );
        assert!(
            e.message.ends_with(&format!("failed expression: {OWN}")),
            "{}",
            e.message
        );
        let create = Proposed {
            operation: Operation::Create,
            old_object: None,
            ..update(&old, &other)
        };
        assert!(
            agent.admit(&leases(), &create).is_ok(),
            "the policy matches updates only"
        );
    }

    #[test]
    fn an_expression_that_errors_refuses_when_the_policy_fails_closed() {
        let p = policy(json!({"expression": "object.spec.missing == 'x'"}));
        let agent = admission(&p, json!(["Deny"]), "agents");
        let old = json!({"spec": {}});
        let e = agent
            .admit(&leases(), &update(&old, &old))
            .expect_err("refused");
        assert!(e.message.contains("resulted in error"), "{}", e.message);
    }
}
