//! The `StaticPod` and `YurtStaticSet` resources (apps.openyurt.io/v1alpha1): the same spec
//! and status under two kinds, as OpenYurt serves them; the upgrade strategy; the budget.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod object;
mod schema;
pub mod validate;

pub use object::{Kind, ObjectKey, Refusal};

/// Both spec structs have the same fields; only the kind (and the struct doc) differ.
macro_rules! spec_struct {
    ($(#[$attr:meta])* $name:ident) => {
        #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
        $(#[$attr])*
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            /// The manifest file name in the node's manifest directory, without `.yaml`.
            #[schemars(schema_with = "schema::manifest_name")]
            pub static_pod_manifest: String,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub upgrade_strategy: Option<UpgradeStrategy>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(schema_with = "schema::history_limit")]
            pub revision_history_limit: Option<i32>,
            /// The static pod's template; its name and namespace are the object's.
            #[schemars(schema_with = "schema::template")]
            pub template: PodTemplateSpec,
        }
    };
}

spec_struct! {
    /// OpenYurt's original kind.
    #[kube(
        group = "apps.openyurt.io",
        version = "v1alpha1",
        kind = "StaticPod",
        namespaced,
        status = "StaticPodStatus",
        derive = "PartialEq",
        shortname = "sp",
        printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
        printcolumn(
            name = "TotalNumber",
            type_ = "integer",
            json_path = ".status.totalNumber",
            description = "The total number of static pods"
        ),
        printcolumn(
            name = "ReadyNumber",
            type_ = "integer",
            json_path = ".status.readyNumber",
            description = "The number of ready static pods"
        ),
        printcolumn(
            name = "UpgradedNumber",
            type_ = "integer",
            json_path = ".status.upgradedNumber",
            description = "The number of static pods that have been upgraded"
        ),
        printcolumn(
            name = "Failed",
            type_ = "integer",
            json_path = ".status.failedNumber",
            description = "Members that rolled the new template back",
            priority = 1
        ),
        printcolumn(
            name = "Phase",
            type_ = "string",
            json_path = ".status.phase",
            description = "Where the rollout stands",
            priority = 1
        )
    )]
    StaticPodSpec
}

spec_struct! {
    /// The kind current OpenYurt serves.
    #[kube(
        group = "apps.openyurt.io",
        version = "v1alpha1",
        kind = "YurtStaticSet",
        namespaced,
        status = "StaticPodStatus",
        derive = "PartialEq",
        shortname = "yss",
        printcolumn(
            name = "Total",
            type_ = "integer",
            json_path = ".status.totalNumber",
            description = "The total number of static pods"
        ),
        printcolumn(
            name = "Ready",
            type_ = "integer",
            json_path = ".status.readyNumber",
            description = "The number of ready static pods"
        ),
        printcolumn(
            name = "Upgraded",
            type_ = "integer",
            json_path = ".status.upgradedNumber",
            description = "The number of static pods that have been upgraded"
        ),
        printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
        printcolumn(
            name = "Failed",
            type_ = "integer",
            json_path = ".status.failedNumber",
            description = "Members that rolled the new template back",
            priority = 1
        ),
        printcolumn(
            name = "Phase",
            type_ = "string",
            json_path = ".status.phase",
            description = "Where the rollout stands",
            priority = 1
        )
    )]
    YurtStaticSetSpec
}

impl From<YurtStaticSetSpec> for StaticPodSpec {
    fn from(s: YurtStaticSetSpec) -> Self {
        StaticPodSpec {
            static_pod_manifest: s.static_pod_manifest,
            upgrade_strategy: s.upgrade_strategy,
            revision_history_limit: s.revision_history_limit,
            template: s.template,
        }
    }
}

impl From<StaticPodSpec> for YurtStaticSetSpec {
    fn from(s: StaticPodSpec) -> Self {
        YurtStaticSetSpec {
            static_pod_manifest: s.static_pod_manifest,
            upgrade_strategy: s.upgrade_strategy,
            revision_history_limit: s.revision_history_limit,
            template: s.template,
        }
    }
}

/// The upgrade strategy field as written: OpenYurt's `type` and `maxUnavailable`, and this
/// project's optional rollout controls (absent in an object written for OpenYurt, which then
/// rolls out as before).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeStrategy {
    /// AdvancedRollingUpdate (alias auto) or OTA (alias ota), case-insensitive.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::strategy_type")]
    pub type_: Option<String>,
    /// Members that may upgrade at once: a number or a percentage of members (default 10%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::max_unavailable")]
    pub max_unavailable: Option<IntOrString>,
    /// Members that may roll back the new template before the rollout halts: a number or a
    /// percentage of members (default: the resolved maxUnavailable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::max_failed")]
    pub max_failed: Option<IntOrString>,
    /// No new upgrades start while true; those under way finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// Members that upgrade first (nodes labelled staticpod-puller.openyurt.io/canary=true
    /// before others); the rest wait until the hash is promoted. A number or a percentage
    /// (default 0: no canary step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::canary")]
    pub canary: Option<IntOrString>,
}

/// Status shared by both kinds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaticPodStatus {
    /// Member nodes (nodes whose manifest directory holds the manifest).
    #[serde(default)]
    pub total_number: i32,
    /// Members whose pod is Ready.
    #[serde(default)]
    pub ready_number: i32,
    /// Members whose pod runs the desired template hash.
    #[serde(default)]
    pub upgraded_number: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Members that rolled the desired hash back (AdvancedRollingUpdate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_number: Option<i32>,
    /// Where the rollout stands: Complete, Progressing, Halted, Paused, AwaitingPromotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<StatusCondition>>,
}

/// One condition of the status, as the controller writes it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A spec field with an invalid value: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// The field's path, e.g. `spec.upgradeStrategy.type`.
    pub field: &'static str,
    pub reason: String,
}

const TYPE_FIELD: &str = "spec.upgradeStrategy.type";
const MAX_UNAVAILABLE_FIELD: &str = "spec.upgradeStrategy.maxUnavailable";
const MAX_FAILED_FIELD: &str = "spec.upgradeStrategy.maxFailed";
const CANARY_FIELD: &str = "spec.upgradeStrategy.canary";

/// How a new template reaches the member nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Strategy {
    /// Agents upgrade by themselves, at most `maxUnavailable` members at once.
    AdvancedRollingUpdate,
    /// Agents only announce the upgrade (`PodNeedUpgrade`); a user starts it.
    #[serde(rename = "OTA")]
    Ota,
}

impl Strategy {
    /// Parse `upgradeStrategy.type`: case-insensitive, with OpenYurt's aliases; absent means
    /// AdvancedRollingUpdate.
    pub fn parse(value: Option<&str>) -> Result<Strategy, FieldError> {
        match value {
            None | Some("") => Ok(Strategy::AdvancedRollingUpdate),
            Some(v)
                if v.eq_ignore_ascii_case("AdvancedRollingUpdate")
                    || v.eq_ignore_ascii_case("auto") =>
            {
                Ok(Strategy::AdvancedRollingUpdate)
            }
            Some(v) if v.eq_ignore_ascii_case("OTA") => Ok(Strategy::Ota),
            Some(v) => Err(FieldError {
                field: TYPE_FIELD,
                reason: format!(
                    "expected AdvancedRollingUpdate or OTA (auto/ota accepted), got {v:?}"
                ),
            }),
        }
    }

    /// The canonical name, as OpenYurt writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::AdvancedRollingUpdate => "AdvancedRollingUpdate",
            Strategy::Ota => "OTA",
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A number of members, or a percentage of them (`maxUnavailable`, `maxFailed`, `canary`),
/// validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Portion {
    /// A number of members.
    Count(u32),
    /// A percentage of the members, rounded up.
    Percent(u32),
}

/// `upgradeStrategy.maxUnavailable`: how many members may be unavailable at once.
pub type MaxUnavailable = Portion;

impl Default for Portion {
    /// 10%, OpenYurt's default maxUnavailable.
    fn default() -> Self {
        Portion::Percent(10)
    }
}

impl Portion {
    /// Parse `upgradeStrategy.maxUnavailable`: `3`, `"3"`, `"10%"`; absent means 10%.
    pub fn parse(value: Option<&IntOrString>) -> Result<Portion, FieldError> {
        Ok(Portion::parse_field(value, MAX_UNAVAILABLE_FIELD)?.unwrap_or_default())
    }

    /// Parse a number or percentage written in `field`; `None` when absent.
    pub fn parse_field(
        value: Option<&IntOrString>,
        field: &'static str,
    ) -> Result<Option<Portion>, FieldError> {
        let invalid = |reason: String| FieldError { field, reason };
        let number = |digits: &str, written: &str| {
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(format!(
                    "expected a non-negative integer or percentage such as 3 or \"10%\", got {written:?}"
                )));
            }
            digits
                .parse::<u32>()
                .map_err(|_| invalid(format!("{written:?} is too large")))
        };
        let portion = match value {
            None => return Ok(None),
            Some(IntOrString::Int(n)) => u32::try_from(*n)
                .map(Portion::Count)
                .map_err(|_| invalid(format!("must not be negative, got {n}")))?,
            Some(IntOrString::String(s)) => match s.strip_suffix('%') {
                // Over 100% means all members, as OpenYurt reads it.
                Some(percent) => number(percent, s).map(Portion::Percent)?,
                None => number(s, s).map(Portion::Count)?,
            },
        };
        Ok(Some(portion))
    }

    /// How many of `members` this is: a percentage rounded up, a count as it is (possibly 0).
    pub fn of(self, members: usize) -> usize {
        match self {
            Portion::Count(n) => usize::try_from(n).unwrap_or(usize::MAX),
            Portion::Percent(p) => {
                let p = u64::from(p.min(100));
                let members = u64::try_from(members).unwrap_or(u64::MAX);
                usize::try_from(members.saturating_mul(p).div_ceil(100)).unwrap_or(usize::MAX)
            }
        }
    }

    /// The budget for `members` member nodes: a percentage is rounded up; 0 and 0% mean 1;
    /// the result is at least 1.
    pub fn resolve(self, members: usize) -> usize {
        self.of(members).max(1)
    }
}

/// The rollout controls of an AdvancedRollingUpdate object, validated (what the controller
/// coordinates with; see [`UpgradeStrategy`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RolloutControls {
    pub max_unavailable: Portion,
    /// `None`: the resolved maxUnavailable.
    pub max_failed: Option<Portion>,
    pub paused: bool,
    /// `None`: no canary step.
    pub canary: Option<Portion>,
}

impl RolloutControls {
    pub fn parse(strategy: Option<&UpgradeStrategy>) -> Result<RolloutControls, FieldError> {
        let Some(s) = strategy else {
            return Ok(RolloutControls::default());
        };
        Ok(RolloutControls {
            max_unavailable: Portion::parse(s.max_unavailable.as_ref())?,
            max_failed: Portion::parse_field(s.max_failed.as_ref(), MAX_FAILED_FIELD)?,
            paused: s.paused.unwrap_or(false),
            canary: Portion::parse_field(s.canary.as_ref(), CANARY_FIELD)?
                .filter(|c| !matches!(c, Portion::Count(0) | Portion::Percent(0))),
        })
    }

    /// Members that may be unavailable at once, of `members`.
    pub fn budget(&self, members: usize) -> usize {
        self.max_unavailable.resolve(members)
    }

    /// Failed members that halt the rollout, of `members` (at least 1).
    pub fn failure_budget(&self, members: usize) -> usize {
        self.max_failed
            .map_or_else(|| self.budget(members), |f| f.resolve(members))
    }

    /// Members in the canary step, of `members` (0: none).
    pub fn canary_size(&self, members: usize) -> usize {
        self.canary.map_or(0, |c| c.of(members).min(members))
    }
}

/// Generating the CRD YAML failed.
#[derive(Debug, thiserror::Error)]
#[error("rendering CRD {crd} as YAML: {source}")]
pub struct CrdError {
    pub crd: String,
    #[source]
    pub source: serde_saphyr::ser::Error,
}

/// Both CRDs, generated from the types.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![StaticPod::crd(), YurtStaticSet::crd()]
}

/// Both CRDs as one multi-document YAML (what `staticpod-puller crd` prints), each document
/// starting with `---`, in the order of [`crds`].
pub fn crds_yaml() -> Result<String, CrdError> {
    crds()
        .iter()
        .map(|crd| {
            serde_saphyr::to_string(crd)
                .map(|doc| format!("---\n{doc}"))
                .map_err(|source| CrdError {
                    crd: crd.metadata.name.clone().unwrap_or_default(),
                    source,
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_STATIC_POD: &str = r#"
apiVersion: apps.openyurt.io/v1alpha1
kind: StaticPod
metadata:
  name: nginx
spec:
  staticPodManifest: nginx
  upgradeStrategy:
    type: AdvancedRollingUpdate
    maxUnavailable: 3
  template:
    metadata:
      name: nginx
    spec:
      containers:
      - name: web
        image: nginx:1.19.1
"#;

    fn image(template: &PodTemplateSpec) -> Option<&str> {
        template.spec.as_ref()?.containers.first()?.image.as_deref()
    }

    fn spec_with_strategy(strategy: &str) -> StaticPodSpec {
        let yaml = format!("staticPodManifest: x\nupgradeStrategy:\n{strategy}\ntemplate: {{}}\n");
        serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("parsing {yaml:?}: {e}"))
    }

    fn strategy_of(spec: &StaticPodSpec) -> UpgradeStrategy {
        spec.upgrade_strategy.clone().unwrap_or_default()
    }

    #[test]
    fn seed_static_pod_parses_as_written() {
        let sp: StaticPod = serde_saphyr::from_str(SEED_STATIC_POD).expect("the seed parses");
        assert_eq!(sp.metadata.name.as_deref(), Some("nginx"));
        assert_eq!(sp.spec.static_pod_manifest, "nginx");
        let strategy = strategy_of(&sp.spec);
        assert_eq!(
            Strategy::parse(strategy.type_.as_deref()),
            Ok(Strategy::AdvancedRollingUpdate)
        );
        assert_eq!(
            MaxUnavailable::parse(strategy.max_unavailable.as_ref()),
            Ok(MaxUnavailable::Count(3))
        );
        assert_eq!(image(&sp.spec.template), Some("nginx:1.19.1"));
        assert_eq!(sp.status, None);
    }

    #[test]
    fn seed_as_yurt_static_set_has_the_same_spec() {
        let yaml = SEED_STATIC_POD.replace("kind: StaticPod", "kind: YurtStaticSet");
        let yss: YurtStaticSet = serde_saphyr::from_str(&yaml).expect("the seed parses as YSS");
        let sp: StaticPod = serde_saphyr::from_str(SEED_STATIC_POD).expect("the seed parses");
        assert_eq!(StaticPodSpec::from(yss.spec.clone()), sp.spec);
        assert_eq!(YurtStaticSetSpec::from(sp.spec), yss.spec);
    }

    #[test]
    fn objects_serialize_as_openyurt_writes_them() {
        let sp: StaticPod = serde_saphyr::from_str(SEED_STATIC_POD).expect("the seed parses");
        let json = serde_json::to_value(&sp).expect("serializes");
        assert_eq!(json["apiVersion"], "apps.openyurt.io/v1alpha1");
        assert_eq!(json["kind"], "StaticPod");
        assert_eq!(json["spec"]["staticPodManifest"], "nginx");
        assert_eq!(
            json["spec"]["upgradeStrategy"]["type"],
            "AdvancedRollingUpdate"
        );
        assert_eq!(json["spec"]["upgradeStrategy"]["maxUnavailable"], 3);
        assert!(json["spec"].get("revisionHistoryLimit").is_none(), "{json}");
        let back: StaticPod = serde_json::from_value(json).expect("round trips");
        assert_eq!(back, sp);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let yaml = SEED_STATIC_POD.replace(
            "  staticPodManifest: nginx",
            "  staticPodManifest: nginx\n  futureField: {a: 1}",
        );
        let sp: StaticPod = serde_saphyr::from_str(&yaml).expect("lenient read");
        assert_eq!(sp.spec.static_pod_manifest, "nginx");
    }

    #[test]
    fn status_parses_camel_case() {
        let yaml = r#"
totalNumber: 3
readyNumber: 2
upgradedNumber: 1
observedGeneration: 7
conditions:
- type: Progressing
  status: "True"
  reason: Upgrading
  lastTransitionTime: "2024-05-01T10:00:00Z"
"#;
        let status: StaticPodStatus = serde_saphyr::from_str(yaml).expect("status parses");
        let counts = (
            status.total_number,
            status.ready_number,
            status.upgraded_number,
        );
        assert_eq!(counts, (3, 2, 1));
        assert_eq!(status.observed_generation, Some(7));
        let conditions = status.conditions.expect("conditions");
        assert_eq!(conditions[0].type_, "Progressing");
        assert_eq!(
            conditions[0].last_transition_time.as_deref(),
            Some("2024-05-01T10:00:00Z")
        );
        let empty: StaticPodStatus = serde_json::from_str("{}").expect("all fields optional");
        assert_eq!(empty, StaticPodStatus::default());
    }

    #[test]
    fn strategy_strings() {
        for (written, expected) in [
            ("auto", Strategy::AdvancedRollingUpdate),
            ("advancedrollingupdate", Strategy::AdvancedRollingUpdate),
            ("AdvancedRollingUpdate", Strategy::AdvancedRollingUpdate),
            ("ota", Strategy::Ota),
            ("OTA", Strategy::Ota),
        ] {
            let spec = spec_with_strategy(&format!("  type: {written}"));
            let parsed = Strategy::parse(strategy_of(&spec).type_.as_deref());
            assert_eq!(parsed, Ok(expected), "type: {written}");
        }
        assert_eq!(Strategy::parse(None), Ok(Strategy::AdvancedRollingUpdate));
        let err = Strategy::parse(Some("rolling")).expect_err("rolling is not a strategy");
        assert_eq!(
            err.to_string(),
            r#"spec.upgradeStrategy.type: expected AdvancedRollingUpdate or OTA (auto/ota accepted), got "rolling""#
        );
        assert_eq!(
            serde_json::to_value(Strategy::Ota).expect("serializes"),
            "OTA"
        );
        assert_eq!(
            serde_json::to_value(Strategy::AdvancedRollingUpdate).expect("serializes"),
            "AdvancedRollingUpdate"
        );
    }

    #[test]
    fn budget_from_max_unavailable() {
        // (upgradeStrategy as written, members, expected budget)
        for (written, members, budget) in [
            ("  maxUnavailable: 3", 100, 3),
            ("  maxUnavailable: \"3\"", 100, 3),
            ("  maxUnavailable: 3", 2, 3),
            ("  maxUnavailable: 10%", 25, 3),
            ("  maxUnavailable: \"10%\"", 100, 10),
            ("  maxUnavailable: \"10%\"", 101, 11),
            ("  maxUnavailable: 150%", 7, 7),
            ("  maxUnavailable: 0", 100, 1),
            ("  maxUnavailable: \"0%\"", 100, 1),
            ("  type: OTA", 25, 3),
            ("  type: OTA", 9, 1),
            ("  type: OTA", 0, 1),
        ] {
            let spec = spec_with_strategy(written);
            let parsed = MaxUnavailable::parse(strategy_of(&spec).max_unavailable.as_ref())
                .unwrap_or_else(|e| panic!("{written}: {e}"));
            assert_eq!(
                parsed.resolve(members),
                budget,
                "{written} with {members} members"
            );
        }
    }

    #[test]
    fn invalid_max_unavailable_names_the_field() {
        for value in [
            IntOrString::Int(-1),
            IntOrString::String("-1".into()),
            IntOrString::String("abc".into()),
            IntOrString::String("%".into()),
            IntOrString::String("1.5".into()),
            IntOrString::String("-5%".into()),
            IntOrString::String("99999999999".into()),
        ] {
            let err = MaxUnavailable::parse(Some(&value)).expect_err("invalid");
            assert!(
                err.to_string()
                    .starts_with("spec.upgradeStrategy.maxUnavailable: "),
                "{value:?}: {err}"
            );
        }
    }

    /// The CRDs committed in config/ must be what the types generate.
    #[test]
    fn committed_crds_match_the_types() {
        let committed = [
            (
                "config/01-crd-staticpods.yaml",
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/config/01-crd-staticpods.yaml"
                )),
            ),
            (
                "config/01-crd-yurtstaticsets.yaml",
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/config/01-crd-yurtstaticsets.yaml"
                )),
            ),
        ];
        for ((path, text), crd) in committed.iter().zip(crds()) {
            let file: serde_json::Value =
                serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("parsing {path}: {e}"));
            let generated = serde_json::to_value(&crd).expect("a CRD serializes");
            assert!(
                file == generated,
                "{path} differs from the CRD the Rust types generate. Regenerate both files with\n  \
                 cargo run -q -- crd | awk '/^---$/ {{ n++ }} {{ print > (n == 1 ? \
                 \"config/01-crd-staticpods.yaml\" : \
                 \"config/01-crd-yurtstaticsets.yaml\") }}'\n\
                 (`crd` prints the StaticPod CRD, then the YurtStaticSet CRD, each starting with `---`)."
            );
        }
    }

    #[test]
    fn crds_yaml_holds_both_crds() {
        let yaml = crds_yaml().expect("renders");
        assert!(yaml.starts_with("---\n"), "{yaml}");
        let docs: Vec<serde_json::Value> = yaml
            .split("---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| serde_saphyr::from_str(d).expect("each document parses"))
            .collect();
        let names: Vec<&str> = docs
            .iter()
            .filter_map(|d| d["metadata"]["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "staticpods.apps.openyurt.io",
                "yurtstaticsets.apps.openyurt.io"
            ]
        );
    }

    #[test]
    fn rollout_controls_parse_with_defaults_an_openyurt_object_never_notices() {
        let openyurt: UpgradeStrategy =
            serde_json::from_value(serde_json::json!({"type": "auto", "maxUnavailable": 2}))
                .unwrap();
        let c = RolloutControls::parse(Some(&openyurt)).unwrap();
        assert_eq!(
            (
                c.budget(10),
                c.failure_budget(10),
                c.canary_size(10),
                c.paused
            ),
            (2, 2, 0, false),
            "maxFailed defaults to the resolved maxUnavailable; no canary, not paused"
        );
        let ours: UpgradeStrategy = serde_json::from_value(serde_json::json!({
            "maxUnavailable": "10%", "maxFailed": "20%", "canary": 3, "paused": true
        }))
        .unwrap();
        let c = RolloutControls::parse(Some(&ours)).unwrap();
        assert_eq!(
            (
                c.budget(25),
                c.failure_budget(25),
                c.canary_size(25),
                c.paused
            ),
            (3, 5, 3, true)
        );
        assert_eq!(RolloutControls::parse(None).unwrap().budget(100), 10);
        let zero_canary: UpgradeStrategy =
            serde_json::from_value(serde_json::json!({"canary": "0%", "maxFailed": 0})).unwrap();
        let c = RolloutControls::parse(Some(&zero_canary)).unwrap();
        assert_eq!(
            (c.canary_size(10), c.failure_budget(10)),
            (0, 1),
            "0 means none / 1"
        );
        for (field, value) in [
            ("maxFailed", serde_json::json!(-1)),
            ("canary", serde_json::json!("x%")),
        ] {
            let bad: UpgradeStrategy =
                serde_json::from_value(serde_json::json!({ field: value })).unwrap();
            let err = RolloutControls::parse(Some(&bad)).unwrap_err();
            assert_eq!(err.field, format!("spec.upgradeStrategy.{field}"), "{err}");
        }
    }

    #[test]
    fn crd_schema_is_structural_where_it_matters() {
        let crd = serde_json::to_value(StaticPod::crd()).expect("serializes");
        let version = &crd["spec"]["versions"][0];
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(spec["template"]["type"], "object");
        assert_eq!(
            spec["template"]["x-kubernetes-preserve-unknown-fields"],
            true
        );
        for field in ["maxUnavailable", "maxFailed", "canary"] {
            let value = &spec["upgradeStrategy"]["properties"][field];
            assert_eq!(value["x-kubernetes-int-or-string"], true, "{field}");
            assert!(
                value.get("anyOf").is_none() && value.get("type").is_none(),
                "{field}: {value}"
            );
        }
        assert_eq!(version["subresources"]["status"], serde_json::json!({}));
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .expect("printer columns")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        // OpenYurt's columns, then the rollout's (shown only with -o wide: priority 1).
        assert_eq!(
            columns,
            [
                "Age",
                "TotalNumber",
                "ReadyNumber",
                "UpgradedNumber",
                "Failed",
                "Phase"
            ]
        );
        let yss = serde_json::to_value(YurtStaticSet::crd()).expect("serializes");
        let columns: Vec<&str> = yss["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .expect("printer columns")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(
            columns,
            ["Total", "Ready", "Upgraded", "Age", "Failed", "Phase"]
        );
        assert_eq!(
            yss["spec"]["names"]["shortNames"],
            serde_json::json!(["yss"])
        );
        assert_eq!(
            crd["spec"]["names"]["shortNames"],
            serde_json::json!(["sp"])
        );
    }
}
