//! The configuration file: its schema, defaults and validation.
//!
//! The file is YAML (`/etc/staticpod-puller/config.yaml` unless `--config` says otherwise);
//! every key is documented in `packaging/config.yaml`. Command-line flags override the
//! file. An unknown key, a wrong type or an invalid value is refused at start with the key's
//! path and the reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::rules::HumanDuration;
use crate::rules::{is_dns_label, is_dns_subdomain};

pub const DEFAULT_PATH: &str = "/etc/staticpod-puller/config.yaml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: not valid YAML: {reason}")]
    Syntax { path: PathBuf, reason: String },
    #[error("config file {path}: {key}: {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// The whole configuration. Field names are the YAML keys (camelCase).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// This node's name; empty means the host name.
    pub node_name: String,
    /// The agent's own kubeconfig (not kubelet's).
    pub kubeconfig: PathBuf,
    /// Where kubelet reads static pod manifests.
    pub manifest_dir: PathBuf,
    /// Where the agent keeps its lock, journal, backups and cached desired state.
    pub state_dir: PathBuf,
    /// Namespaces whose objects the agent follows; empty means all.
    pub namespaces: Vec<String>,
    /// Namespace of the agents' upgrade-slot Leases.
    pub agent_namespace: String,
    pub rollout: Rollout,
    pub drift: Drift,
    pub local_api: LocalApi,
    pub ota: Ota,
    pub cri: Cri,
    pub bundle: Bundle,
    pub trust: Trust,
    pub metrics: Metrics,
    pub log: Log,
}

/// The node's container runtime, through which the agent pulls a new template's images
/// before it upgrades (CRI ImageService).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Cri {
    /// The runtime's Unix socket (`unix:///run/containerd/containerd.sock` or a path). Absent:
    /// the first of containerd's and CRI-O's standard sockets that exists. Empty: no pre-pull.
    pub endpoint: Option<String>,
    /// How long the pulls of one template's images may take, retries included.
    pub pull_timeout: HumanDuration,
    /// Images pulled at once.
    pub pull_concurrency: u32,
}

impl Default for Cri {
    fn default() -> Self {
        Cri {
            endpoint: None,
            pull_timeout: HumanDuration(Duration::from_secs(600)),
            pull_concurrency: 2,
        }
    }
}

/// Prometheus metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Metrics {
    /// A loopback `host:port` serving `GET /metrics`; empty: none.
    pub listen: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            listen: "127.0.0.1:10273".to_string(),
        }
    }
}

/// Signed bundles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Bundle {
    /// A directory where dropped bundle files are verified and applied; empty: none.
    pub drop_dir: String,
    /// http:// or https:// URLs polled for a bundle; empty: none.
    pub urls: Vec<String>,
    /// How often each URL is polled (each wait drawn within ±20% of it).
    pub poll_interval: HumanDuration,
    /// PEM CA certificates added to the trust roots for https URLs (private servers).
    pub ca_file: Option<PathBuf>,
    /// How long the API server must have been unreachable before a fetched bundle applies.
    pub offline_after: HumanDuration,
}

impl Default for Bundle {
    fn default() -> Self {
        Bundle {
            drop_dir: String::new(),
            urls: Vec::new(),
            poll_interval: HumanDuration(Duration::from_secs(60)),
            ca_file: None,
            offline_after: HumanDuration(Duration::from_secs(600)),
        }
    }
}

/// Whom the agent trusts to sign bundles and templates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Trust {
    /// Public keys (PEM) trusted to sign.
    pub trusted_keys: Vec<PathBuf>,
    /// How many distinct trusted keys must have signed.
    pub threshold: usize,
    /// Act only on StaticPod / YurtStaticSet objects carrying a valid signature annotation.
    pub require_signed_templates: bool,
}

/// The node-local API (YurtHub's OTA paths).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LocalApi {
    /// `host:port`, or an absolute path for a Unix socket; empty disables the API.
    pub listen: String,
    /// A file holding the bearer token every request must carry. Required to listen on a
    /// non-loopback address.
    pub token_file: Option<PathBuf>,
}

/// OTA upgrades.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Ota {
    /// Upgrade from the cached desired state when the API server is unreachable.
    pub allow_offline: bool,
    /// kubelet's local pod list, read for readiness when the API server is unreachable.
    pub kubelet_pods_url: String,
    /// A file holding a bearer token for the kubelet URL (kubelet's authenticated port).
    pub kubelet_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Rollout {
    /// How long an upgraded pod has to carry the new hash and be Ready before rollback.
    pub progress_deadline: HumanDuration,
    /// How long an upgrade slot (Lease) stays held without renewal.
    pub lease_duration: HumanDuration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Drift {
    /// What to do when someone else changes a managed manifest.
    pub mode: DriftMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftMode {
    /// Put the desired content back.
    Restore,
    /// Only report the change.
    Report,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Log {
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, `staticpod_puller=debug,kube=info`.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_name: String::new(),
            kubeconfig: PathBuf::from("/etc/staticpod-puller/kubeconfig"),
            manifest_dir: PathBuf::from("/etc/kubernetes/manifests"),
            state_dir: PathBuf::from("/var/lib/staticpod-puller"),
            namespaces: Vec::new(),
            agent_namespace: "staticpod-system".to_string(),
            rollout: Rollout::default(),
            drift: Drift::default(),
            local_api: LocalApi::default(),
            ota: Ota::default(),
            cri: Cri::default(),
            bundle: Bundle::default(),
            trust: Trust::default(),
            metrics: Metrics::default(),
            log: Log::default(),
        }
    }
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            progress_deadline: HumanDuration(Duration::from_secs(300)),
            lease_duration: HumanDuration(Duration::from_secs(30)),
        }
    }
}

impl Default for Drift {
    fn default() -> Self {
        Drift {
            mode: DriftMode::Restore,
        }
    }
}

impl Default for Trust {
    fn default() -> Self {
        Trust {
            trusted_keys: Vec::new(),
            threshold: 1,
            require_signed_templates: false,
        }
    }
}

impl Default for LocalApi {
    fn default() -> Self {
        LocalApi {
            listen: "127.0.0.1:10272".to_string(),
            token_file: None,
        }
    }
}

impl Default for Ota {
    fn default() -> Self {
        Ota {
            allow_offline: true,
            kubelet_pods_url: "http://127.0.0.1:10255/pods".to_string(),
            kubelet_token_file: None,
        }
    }
}

/// Where the node-local API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl LocalApi {
    /// The parsed `listen`; `None` when the API is disabled.
    pub fn address(&self) -> Result<Option<Listen>, String> {
        let listen = self.listen.trim();
        if listen.is_empty() {
            return Ok(None);
        }
        if listen.starts_with('/') {
            return Ok(Some(Listen::Unix(PathBuf::from(listen))));
        }
        listen
            .parse::<std::net::SocketAddr>()
            .map(|a| Some(Listen::Tcp(a)))
            .map_err(|_| {
                format!(
                    "expected host:port (an IP address, e.g. 127.0.0.1:10272) or an absolute Unix socket path, got {listen:?}"
                )
            })
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

impl Config {
    /// Load from `path`. With `required` false a missing file means the defaults (the default
    /// path on a machine that has not been configured yet).
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Parse YAML text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let value: serde_json::Value = if text.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?
        };
        let value = if value.is_null() {
            serde_json::json!({})
        } else {
            value
        };
        // serde's derive also accepts a sequence for a struct (fields by position), which would
        // turn `- a` into a node name: sections must be mappings.
        let not_a_mapping = |key: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason: "expected a mapping of keys to values".to_string(),
        };
        let top = value
            .as_object()
            .ok_or_else(|| not_a_mapping("(top level)"))?;
        for section in ["rollout", "drift", "log"] {
            if top
                .get(section)
                .is_some_and(|v| !v.is_object() && !v.is_null())
            {
                return Err(not_a_mapping(section));
            }
        }
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Invalid {
                path: path.to_path_buf(),
                key: if key == "." {
                    "(top level)".to_string()
                } else {
                    key
                },
                reason: e.into_inner().to_string(),
            }
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        if !self.node_name.is_empty() && !is_dns_subdomain(&self.node_name) {
            return Err(invalid(
                "nodeName",
                format!(
                    "expected a node name (a DNS subdomain), got {:?}",
                    self.node_name
                ),
            ));
        }
        if let Some(endpoint) = self.cri.endpoint.as_deref().filter(|e| !e.is_empty())
            && !Path::new(endpoint.strip_prefix("unix://").unwrap_or(endpoint)).is_absolute()
        {
            return Err(invalid(
                "cri.endpoint",
                format!("expected a Unix socket as unix:///path or /path, got {endpoint:?}"),
            ));
        }
        if self.cri.pull_concurrency == 0 {
            return Err(invalid(
                "cri.pullConcurrency",
                "must be at least 1".to_string(),
            ));
        }
        if !is_dns_label(&self.agent_namespace) {
            return Err(invalid(
                "agentNamespace",
                format!(
                    "expected a namespace name (a DNS label), got {:?}",
                    self.agent_namespace
                ),
            ));
        }
        for (i, ns) in self.namespaces.iter().enumerate() {
            if !is_dns_label(ns) {
                return Err(invalid(
                    &format!("namespaces[{i}]"),
                    format!("expected a namespace name, got {ns:?}"),
                ));
            }
        }
        for (key, dir) in [
            ("manifestDir", &self.manifest_dir),
            ("stateDir", &self.state_dir),
        ] {
            if !dir.is_absolute() {
                return Err(invalid(
                    key,
                    format!(
                        "expected an absolute path, got {:?}",
                        dir.display().to_string()
                    ),
                ));
            }
        }
        if self.manifest_dir == self.state_dir {
            return Err(invalid(
                "stateDir",
                "must differ from manifestDir: kubelet would run the backups kept there"
                    .to_string(),
            ));
        }
        if self.rollout.progress_deadline.0.is_zero() {
            return Err(invalid(
                "rollout.progressDeadline",
                "must be longer than 0s".to_string(),
            ));
        }
        if self.rollout.lease_duration.0 < Duration::from_secs(1) {
            return Err(invalid(
                "rollout.leaseDuration",
                "must be at least 1s".to_string(),
            ));
        }
        match self.local_api.address() {
            Err(reason) => return Err(invalid("localApi.listen", reason)),
            Ok(Some(Listen::Tcp(addr)))
                if !addr.ip().is_loopback() && self.local_api.token_file.is_none() =>
            {
                return Err(invalid(
                    "localApi.listen",
                    format!(
                        "{addr} is not a loopback address: set localApi.tokenFile so that every request must carry a bearer token"
                    ),
                ));
            }
            Ok(_) => {}
        }
        if !self.ota.kubelet_pods_url.starts_with("http://") {
            return Err(invalid(
                "ota.kubeletPodsUrl",
                format!(
                    "expected an http:// URL (kubelet's read-only port or a local proxy; https is not supported yet), got {:?}",
                    self.ota.kubelet_pods_url
                ),
            ));
        }
        if !self.bundle.drop_dir.is_empty() && !Path::new(&self.bundle.drop_dir).is_absolute() {
            return Err(invalid(
                "bundle.dropDir",
                format!("expected an absolute path, got {:?}", self.bundle.drop_dir),
            ));
        }
        for (i, url) in self.bundle.urls.iter().enumerate() {
            if let Err(reason) = crate::rules::check_url(url) {
                return Err(invalid(&format!("bundle.urls[{i}]"), reason));
            }
        }
        for (key, d) in [
            ("bundle.pollInterval", self.bundle.poll_interval),
            ("bundle.offlineAfter", self.bundle.offline_after),
        ] {
            if d.0.is_zero() {
                return Err(invalid(key, "must be longer than 0s".to_string()));
            }
        }
        if let Some(path) = &self.bundle.ca_file
            && let Err(reason) = crate::rules::read_ca_file(path)
        {
            return Err(invalid("bundle.caFile", reason));
        }
        let needs_keys = if !self.bundle.drop_dir.is_empty() {
            Some("a drop directory (bundle.dropDir)")
        } else if !self.bundle.urls.is_empty() {
            Some("bundle URLs (bundle.urls)")
        } else if self.trust.require_signed_templates {
            Some("trust.requireSignedTemplates")
        } else {
            None
        };
        if let Some(what) = needs_keys
            && self.trust.trusted_keys.is_empty()
        {
            return Err(invalid(
                "trust.trustedKeys",
                format!("{what} needs at least one trusted public key"),
            ));
        }
        if !self.trust.trusted_keys.is_empty()
            && (self.trust.threshold == 0 || self.trust.threshold > self.trust.trusted_keys.len())
        {
            return Err(invalid(
                "trust.threshold",
                format!(
                    "must be between 1 and the number of trusted keys ({}), got {}",
                    self.trust.trusted_keys.len(),
                    self.trust.threshold
                ),
            ));
        }
        if !self.metrics.listen.is_empty() {
            match self.metrics.listen.parse::<std::net::SocketAddr>() {
                Ok(addr) if addr.ip().is_loopback() => {}
                Ok(addr) => {
                    return Err(invalid(
                        "metrics.listen",
                        format!(
                            "{addr} is not a loopback address (scrape through a local agent or proxy)"
                        ),
                    ));
                }
                Err(_) => {
                    return Err(invalid(
                        "metrics.listen",
                        format!(
                            "expected a loopback host:port like 127.0.0.1:10273, got {:?}",
                            self.metrics.listen
                        ),
                    ));
                }
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid(
                "log.level",
                format!(
                    "expected a level like \"info\" or a filter like \"staticpod_puller=debug\", got {:?}",
                    self.log.level
                ),
            ));
        }
        Ok(())
    }

    /// The node name to act for: the configured one, else the host name.
    pub fn resolved_node_name(&self) -> Result<String, String> {
        if !self.node_name.is_empty() {
            return Ok(self.node_name.clone());
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map_err(|e| format!("nodeName is not set and the host name could not be read: {e}"))?;
        let host = host.trim().to_lowercase();
        if is_dns_subdomain(&host) {
            Ok(host)
        } else {
            Err(format!(
                "nodeName is not set and the host name {host:?} is not a valid node name: set nodeName"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("test.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_shipped_default_file_is_the_default_config() {
        let text = include_str!("../packaging/config.yaml");
        assert_eq!(parse(text).unwrap(), Config::default());
    }

    #[test]
    fn an_empty_file_means_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(parse("# nothing\n").unwrap(), Config::default());
    }

    #[test]
    fn values_are_read_and_durations_parsed() {
        let c = parse("nodeName: edge-1\nrollout:\n  progressDeadline: 1h30m\ndrift:\n  mode: report\nlog:\n  format: json\n").unwrap();
        assert_eq!(c.node_name, "edge-1");
        assert_eq!(c.rollout.progress_deadline.0, Duration::from_secs(5400));
        assert_eq!(c.drift.mode, DriftMode::Report);
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn bad_input_is_refused_with_the_key_path_and_reason() {
        let cases = [
            (
                "rollout:\n  progressDeadline: soon\n",
                "rollout.progressDeadline",
                "expected a duration like \"5m\", got \"soon\"",
            ),
            (
                "rollout:\n  progresDeadline: 5m\n",
                "rollout.progresDeadline",
                "unknown field `progresDeadline`",
            ),
            (
                "manifestDirectory: /x\n",
                "manifestDirectory",
                "unknown field `manifestDirectory`",
            ),
            ("- a\n- b\n", "(top level)", "expected a mapping"),
            ("rollout: [5m, 30s]\n", "rollout", "expected a mapping"),
            ("namespaces: default\n", "namespaces", "expected a sequence"),
            (
                "drift:\n  mode: fix\n",
                "drift.mode",
                "unknown variant `fix`",
            ),
            (
                "manifestDir: manifests\n",
                "manifestDir",
                "expected an absolute path",
            ),
            (
                "stateDir: /etc/kubernetes/manifests\n",
                "stateDir",
                "must differ from manifestDir",
            ),
            ("nodeName: Edge_1\n", "nodeName", "expected a node name"),
            (
                "rollout:\n  progressDeadline: 0s\n",
                "rollout.progressDeadline",
                "longer than 0s",
            ),
            ("log:\n  level: \"[[\"\n", "log.level", "expected a level"),
            ("nodeName: [\n", "not valid YAML", ""),
        ];
        for (text, key, reason) in cases {
            let err = parse(text).expect_err(text);
            assert!(
                err.contains(key) && err.contains(reason),
                "for {text:?}: expected {key} / {reason}, got: {err}"
            );
            assert!(err.contains("test.yaml"), "the error names the file: {err}");
        }
    }

    #[test]
    fn bundle_sources_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("ops.pub");
        let keys = format!("trust:\n  trustedKeys: [{}]\n", key.display());
        let ok = parse(&format!(
            "bundle:\n  urls: [https://bundles.example/edge.bundle]\n  pollInterval: 30s\n  offlineAfter: 2m\n{keys}"
        ))
        .expect("valid bundle settings");
        assert_eq!(ok.bundle.urls, ["https://bundles.example/edge.bundle"]);
        assert_eq!(ok.bundle.poll_interval.0, Duration::from_secs(30));
        assert_eq!(ok.bundle.offline_after.0, Duration::from_secs(120));
        let not_a_ca = dir.path().join("ca.pem");
        std::fs::write(&not_a_ca, "hello\n").expect("writing");
        let cases = [
            (
                format!("bundle:\n  urls: [ftp://x/b]\n{keys}"),
                "bundle.urls[0]",
                "expected an http:// or https:// URL",
            ),
            (
                format!("bundle:\n  urls: [\"not a url\"]\n{keys}"),
                "bundle.urls[0]",
                "expected an http:// or https:// URL",
            ),
            (
                "bundle:\n  urls: [http://10.0.0.1/b]\n".to_string(),
                "trust.trustedKeys",
                "bundle URLs (bundle.urls) needs at least one trusted public key",
            ),
            (
                "bundle:\n  pollInterval: 0s\n".to_string(),
                "bundle.pollInterval",
                "longer than 0s",
            ),
            (
                "bundle:\n  offlineAfter: 0s\n".to_string(),
                "bundle.offlineAfter",
                "longer than 0s",
            ),
            (
                "bundle:\n  caFile: /nonexistent/ca.pem\n".to_string(),
                "bundle.caFile",
                "reading /nonexistent/ca.pem",
            ),
            (
                format!("bundle:\n  caFile: {}\n", not_a_ca.display()),
                "bundle.caFile",
                "no certificate",
            ),
        ];
        for (text, key, reason) in cases {
            let err = parse(&text).expect_err(&text);
            assert!(
                err.contains(key) && err.contains(reason),
                "for {text:?}: expected {key} / {reason}, got: {err}"
            );
        }
    }

    #[test]
    fn a_missing_default_file_means_defaults_but_a_named_one_is_required() {
        let missing = Path::new("/nonexistent/staticpod-puller.yaml");
        assert_eq!(Config::load(missing, false).unwrap(), Config::default());
        let err = Config::load(missing, true).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/staticpod-puller.yaml"), "{err}");
    }
}
