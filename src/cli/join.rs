//! `staticpod-puller join`: the step a node's join script runs after `yurtadm join` has
//! brought kubelet up. It writes the agent's configuration, checks that the node can reach
//! the API server with the agent's identity (or, offline, that a bundle source is
//! configured), runs one `sync --once` so the node's static pods are current, then enables
//! and starts the service.
//!
//! Everything is checked before anything is written, so a failed join leaves the node as it
//! was. Every file is compared before it is written, so a second join with the same flags
//! changes nothing.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::ListParams;
use staticpod_puller::agent::{Agent, AgentError};
use staticpod_puller::bundle::PublicKey;
use staticpod_puller::config::{Config, HumanDuration};
use staticpod_puller::manifest::store::write_file_atomic;
use staticpod_puller::resources::StaticPod;

/// The unit the packages install.
const SERVICE: &str = "staticpod-puller.service";
/// Drop-in the join writes when the directories differ from the unit's defaults.
const DROP_IN_DIR: &str = "/etc/systemd/system/staticpod-puller.service.d";
const DROP_IN: &str = "10-join.conf";
/// The directories the shipped unit already lets the agent write.
const UNIT_WRITABLE: [&str; 3] = [
    "/etc/kubernetes/manifests",
    "/var/lib/staticpod-puller",
    "/run/staticpod-puller",
];
/// How long the API server has to answer the reachability check.
const REACH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the started service must stay up to count as running (its start-up checks).
const SERVICE_SETTLE: Duration = Duration::from_secs(3);

#[derive(clap::Args, Debug)]
pub struct JoinArgs {
    /// This node's name as the API server knows it [default: the host name].
    #[arg(long)]
    node_name: Option<String>,
    /// The agent's own kubeconfig (its identity, not kubelet's). Copied next to the
    /// configuration file as `kubeconfig`, mode 0600.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// kubelet's static pod directory (its staticPodPath).
    #[arg(long, value_name = "DIR")]
    manifest_dir: Option<PathBuf>,
    /// The agent's state directory.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// An http(s) URL serving signed bundles, for when the API server is unreachable;
    /// repeatable. Replaces bundle.urls when given.
    #[arg(long = "bundle-url", value_name = "URL")]
    bundle_urls: Vec<String>,
    /// A public key (PEM) trusted to sign bundles and templates; repeatable. Copied next to
    /// the configuration file under `trusted-keys/`. Replaces trust.trustedKeys when given.
    #[arg(long = "trusted-key", value_name = "FILE")]
    trusted_keys: Vec<PathBuf>,
    /// How many distinct trusted keys must have signed (trust.threshold).
    #[arg(long, value_name = "K")]
    threshold: Option<usize>,
    /// Give the first `sync --once` this long to converge.
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    sync_timeout: HumanDuration,
    /// Write and check the configuration only: no sync, no service changes.
    #[arg(long)]
    no_start: bool,
    /// Leave systemd alone (the agent runs some other way): write, check and sync only.
    #[arg(long)]
    no_service: bool,
}

/// What one step did, printed one line each so a join script's log tells the story.
fn report(what: &str, path: &Path, changed: bool) {
    let state = if changed { "written" } else { "unchanged" };
    println!("{what} {}: {state}", path.display());
}

pub fn run(args: JoinArgs, config_path: &Path) -> anyhow::Result<ExitCode> {
    let config_path = absolute("--config", config_path)?;
    let config_dir = config_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let current = Config::load(&config_path, false)?;
    let plan = Plan::new(&args, current, &config_dir)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let has_bundle_source =
        !plan.config.bundle.urls.is_empty() || !plan.config.bundle.drop_dir.is_empty();
    let online = match runtime.block_on(check_api(&plan)) {
        Ok(summary) => {
            println!("API server: {summary}");
            true
        }
        // Offline is a state a node may join in; an API server that answers "no" is not.
        Err(ApiCheck::Unreachable(e)) if has_bundle_source => {
            println!(
                "API server: unreachable ({e:#}); continuing offline: bundles from the configured sources apply"
            );
            false
        }
        Err(ApiCheck::Unreachable(e)) => {
            return Err(e.context(
                "the node cannot reach the API server and no bundle source is configured \
                 (--bundle-url, or bundle.dropDir in the configuration); nothing was written",
            ));
        }
        Err(ApiCheck::Refused(e)) => return Err(e.context("nothing was written")),
    };

    // Everything is checked: write.
    let mut changed = false;
    if let Some((source, bytes)) = &plan.kubeconfig {
        let c = install(&plan.config.kubeconfig, bytes, 0o600)
            .with_context(|| format!("installing the kubeconfig {}", source.display()))?;
        report("kubeconfig", &plan.config.kubeconfig, c);
        changed |= c;
    }
    for (path, pem) in &plan.keys {
        let c = install(path, pem.as_bytes(), 0o644)?;
        report("trusted key", path, c);
        changed |= c;
    }
    let c = install(&config_path, plan.rendered.as_bytes(), 0o644)?;
    report("config", &config_path, c);
    changed |= c;
    // The unit's sandbox refuses to start when a writable path is missing: create them.
    for (dir, mode) in [
        (plan.config.state_dir.clone(), 0o700),
        (PathBuf::from(&plan.config.bundle.drop_dir), 0o700),
    ] {
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(&dir)
                .with_context(|| format!("creating {}", dir.display()))?;
            println!("directory {}: created", dir.display());
        }
    }

    let systemd = !args.no_service && Path::new("/run/systemd/system").is_dir();
    if systemd {
        changed |= write_drop_in(&plan.config)?;
    }
    if args.no_start {
        println!("--no-start: the sync and the service are left to you");
        return Ok(ExitCode::SUCCESS);
    }
    let running = systemd && systemctl(&["is-active", "--quiet", SERVICE]).is_ok();
    if running && changed {
        // The running agent holds the node's lock and runs the old configuration.
        systemctl(&["stop", SERVICE])?;
    }
    let synced = if !online {
        println!("sync: skipped while the API server is unreachable");
        true
    } else if running && !changed {
        println!("sync: the running agent keeps this node current (configuration unchanged)");
        true
    } else {
        sync(&runtime, plan.config.clone(), args.sync_timeout.0)
    };
    if systemd {
        systemctl(&["enable", SERVICE])?;
        systemctl(&["start", SERVICE])?;
        check_service_stays_up()?;
        println!("service {SERVICE}: enabled and running");
    } else {
        let why = if args.no_service {
            "--no-service"
        } else {
            "systemd is not running here"
        };
        println!(
            "service: {why}; start the agent yourself: staticpod-puller --config {} run",
            config_path.display()
        );
    }
    Ok(if synced {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `systemctl start` returns once the agent is exec'd; a configuration it cannot run with
/// ends it a moment later. Check it stays up through its start-up.
fn check_service_stays_up() -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + SERVICE_SETTLE;
    while std::time::Instant::now() < deadline {
        if systemctl(&["is-active", "--quiet", SERVICE]).is_err() {
            let _ = std::process::Command::new("systemctl")
                .args(["status", "--no-pager", "--lines=20", SERVICE])
                .status();
            bail!(
                "{SERVICE} stopped right after starting (its last lines are above); fix what it says, then run join again"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

fn absolute(flag: &str, p: &Path) -> anyhow::Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(p))
            .with_context(|| format!("{flag} {}: resolving a relative path", p.display()))
    }
}

/// The configuration the join will write, and the files it installs beside it.
struct Plan {
    config: Config,
    rendered: String,
    /// The kubeconfig to install at `config.kubeconfig`: where it came from, its bytes.
    kubeconfig: Option<(PathBuf, Vec<u8>)>,
    /// Trusted keys to install: destination and PEM.
    keys: Vec<(PathBuf, String)>,
    /// The kubeconfig to check reachability with (the source: nothing is installed yet).
    check_kubeconfig: PathBuf,
}

impl Plan {
    fn new(args: &JoinArgs, mut config: Config, config_dir: &Path) -> anyhow::Result<Plan> {
        if let Some(n) = &args.node_name {
            config.node_name = n.clone();
        }
        if config.node_name.is_empty() {
            // Written out, so a later host name change cannot move the agent to another node.
            config.node_name = config.resolved_node_name().map_err(|e| anyhow!(e))?;
        }
        if let Some(d) = &args.manifest_dir {
            config.manifest_dir = absolute("--manifest-dir", d)?;
        }
        if !config.manifest_dir.is_dir() {
            bail!(
                "--manifest-dir {}: not a directory (kubelet's staticPodPath; is kubelet set up?)",
                config.manifest_dir.display()
            );
        }
        if let Some(d) = &args.state_dir {
            config.state_dir = absolute("--state-dir", d)?;
        }
        let mut kubeconfig = None;
        let mut check_kubeconfig = config.kubeconfig.clone();
        if let Some(source) = &args.kubeconfig {
            let source = absolute("--kubeconfig", source)?;
            let bytes = std::fs::read(&source)
                .with_context(|| format!("--kubeconfig {}: reading it", source.display()))?;
            let parsed = kube::config::Kubeconfig::from_yaml(&String::from_utf8_lossy(&bytes))
                .map_err(|e| anyhow!("--kubeconfig {}: not a kubeconfig: {e}", source.display()))?;
            if let Some(file) = file_references(&parsed).first() {
                bail!(
                    "--kubeconfig {}: refers to {file}; the installed copy must stand alone (the service cannot read files elsewhere): inline them with `kubectl config view --kubeconfig {} --flatten --raw`",
                    source.display(),
                    source.display()
                );
            }
            config.kubeconfig = config_dir.join("kubeconfig");
            check_kubeconfig = source.clone();
            kubeconfig = Some((source, bytes));
        } else if !config.kubeconfig.is_file() {
            bail!(
                "no kubeconfig: pass --kubeconfig with the agent's own identity (the configured {} does not exist)",
                config.kubeconfig.display()
            );
        }
        if !args.bundle_urls.is_empty() {
            config.bundle.urls = args.bundle_urls.clone();
        }
        let mut keys = Vec::new();
        // One source file per distinct key: what the validation below reads.
        let mut key_sources = Vec::new();
        if !args.trusted_keys.is_empty() {
            config.trust.trusted_keys.clear();
            for source in &args.trusted_keys {
                let key = PublicKey::load(source)
                    .with_context(|| format!("--trusted-key {}", source.display()))?;
                let dest = config_dir
                    .join("trusted-keys")
                    .join(format!("{}.pub", key.id()));
                if !config.trust.trusted_keys.contains(&dest) {
                    config.trust.trusted_keys.push(dest.clone());
                    keys.push((dest, key.to_pem()));
                    key_sources.push(source.clone());
                }
            }
        }
        if let Some(k) = args.threshold {
            config.trust.threshold = k;
        }
        let rendered = render(&config)?;
        // Validate what will be written, naming the keys as the file would. The trusted keys
        // are not installed yet: validate against their sources.
        let mut check = config.clone();
        if !key_sources.is_empty() {
            check.trust.trusted_keys = key_sources;
        }
        Config::parse(
            &render(&check)?,
            Path::new("the configuration join would write"),
        )?;
        Ok(Plan {
            config,
            rendered,
            kubeconfig,
            keys,
            check_kubeconfig,
        })
    }
}

/// The files a kubeconfig refers to (certificates, keys, token files), as `field path`.
fn file_references(k: &kube::config::Kubeconfig) -> Vec<String> {
    let clusters = k
        .clusters
        .iter()
        .filter_map(|c| c.cluster.as_ref())
        .flat_map(|c| [("certificate-authority", &c.certificate_authority)]);
    let users = k
        .auth_infos
        .iter()
        .filter_map(|a| a.auth_info.as_ref())
        .flat_map(|a| {
            [
                ("client-certificate", &a.client_certificate),
                ("client-key", &a.client_key),
                ("tokenFile", &a.token_file),
            ]
        });
    clusters
        .chain(users)
        .filter_map(|(field, path)| path.as_ref().map(|p| format!("{field} {p}")))
        .collect()
}

fn render(config: &Config) -> anyhow::Result<String> {
    let yaml = serde_saphyr::to_string(config)
        .map_err(|e| anyhow!("rendering the configuration as YAML: {e}"))?;
    Ok(format!(
        "# Written by `staticpod-puller join`; every key is documented in the packaged\n\
         # /usr/share/doc/staticpod-puller/config.yaml. Running join again rewrites this file.\n{yaml}"
    ))
}

/// Why the API check failed: nothing answered (a node may join offline, with a bundle
/// source), or the API server answered no (never a reason to go on).
enum ApiCheck {
    Unreachable(anyhow::Error),
    Refused(anyhow::Error),
}

/// Can the agent's identity do its job? The API server answers, this node exists, and the
/// identity may list the objects it follows.
async fn check_api(plan: &Plan) -> Result<String, ApiCheck> {
    let path = &plan.check_kubeconfig;
    let refused = |e: String| ApiCheck::Refused(anyhow!("kubeconfig {}: {e}", path.display()));
    let config = staticpod_puller::kubeclient::config_from_kubeconfig(path)
        .await
        .map_err(refused)?;
    let server = config.cluster_url.to_string();
    let server = server.trim_end_matches('/');
    let client = staticpod_puller::kubeclient::client(config).map_err(refused)?;
    let version = match tokio::time::timeout(REACH_TIMEOUT, client.apiserver_version()).await {
        Err(_) => {
            return Err(ApiCheck::Unreachable(anyhow!(
                "{server} did not answer within {REACH_TIMEOUT:?} (server in {})",
                path.display()
            )));
        }
        Ok(Err(kube::Error::Api(status))) => {
            return Err(ApiCheck::Refused(anyhow!(
                "GET {server}/version (server in {}) was answered {} {}: {}; check the identity in the kubeconfig",
                path.display(),
                status.code,
                status.reason,
                status.message
            )));
        }
        Ok(Err(e)) => {
            return Err(ApiCheck::Unreachable(anyhow!(
                "GET {server}/version (server in {}): {e}",
                path.display()
            )));
        }
        Ok(Ok(v)) => v,
    };
    let node = &plan.config.node_name;
    let nodes: Api<Node> = Api::all(client.clone());
    match nodes.get_opt(node).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(ApiCheck::Refused(anyhow!(
                "node {node} is not registered with the API server; check --node-name (kubelet registers the node during yurtadm join)"
            )));
        }
        Err(e) => {
            return Err(ApiCheck::Refused(anyhow!(
                "reading node {node} with {}: {e}; apply config/10-rbac-agent.yaml and check the identity",
                path.display()
            )));
        }
    }
    let static_pods: Api<StaticPod> = Api::all(client);
    static_pods
        .list_metadata(&ListParams::default().limit(1))
        .await
        .map_err(|e| {
            ApiCheck::Refused(anyhow!(
                "listing StaticPods with {}: {e}; are the CRDs installed (kubectl apply -f config/) and the agent's RBAC applied?",
                path.display()
            ))
        })?;
    Ok(format!(
        "reachable (v{}.{}), node {node} registered, StaticPods readable",
        version.major, version.minor
    ))
}

/// Write `bytes` to `path` (mode `mode`) unless it already holds them; true when written.
fn install(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o777 == mode
        && std::fs::read(path).is_ok_and(|current| current == bytes)
    {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_file_atomic(path, bytes, mode).with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

/// The drop-in that lets the unit's sandbox write the configured directories (manifests,
/// state, the bundle drop directory) outside those it already may; None when all are inside.
fn drop_in_text(config: &Config) -> Option<String> {
    let drop_dir = PathBuf::from(&config.bundle.drop_dir);
    // A Unix socket for the local API is created in its directory.
    let socket_dir = Path::new(&config.local_api.listen)
        .is_absolute()
        .then(|| Path::new(&config.local_api.listen).parent())
        .flatten()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let extra: Vec<String> = [
        &config.manifest_dir,
        &config.state_dir,
        &drop_dir,
        &socket_dir,
    ]
    .into_iter()
    .filter(|d| !d.as_os_str().is_empty())
    .filter(|d| !UNIT_WRITABLE.iter().any(|w| d.starts_with(w)))
    // "-": a directory missing at start (a USB stick not plugged in) must not stop the
    // whole agent; quoted, for paths with spaces.
    .map(|d| format!("\"-{}\"", d.display()))
    .collect();
    (!extra.is_empty()).then(|| {
        format!(
            "# Written by `staticpod-puller join`: the configured directories the agent writes.\n[Service]\nReadWritePaths={}\n",
            extra.join(" ")
        )
    })
}

/// Install, replace or remove the drop-in; true when something changed.
fn write_drop_in(config: &Config) -> anyhow::Result<bool> {
    let path = Path::new(DROP_IN_DIR).join(DROP_IN);
    let Some(text) = drop_in_text(config) else {
        if !path.exists() {
            return Ok(false);
        }
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        systemctl(&["daemon-reload"])?;
        println!("unit drop-in {}: removed", path.display());
        return Ok(true);
    };
    let written = install(&path, text.as_bytes(), 0o644)?;
    report("unit drop-in", &path, written);
    if written {
        systemctl(&["daemon-reload"])?;
    }
    Ok(written)
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new("systemctl")
        .args(args)
        .status()
        .with_context(|| format!("running systemctl {}", args.join(" ")))?;
    if !status.success() {
        bail!(
            "systemctl {} failed ({status}); see `journalctl -u {SERVICE}`",
            args.join(" ")
        );
    }
    Ok(())
}

/// One `sync --once` pass with the new configuration; prints its outcome.
fn sync(runtime: &tokio::runtime::Runtime, config: Config, timeout: Duration) -> bool {
    let result = runtime.block_on(async {
        let agent = Agent::start(config).await?;
        agent.sync_once(timeout).await
    });
    match result {
        Ok(summary) => {
            println!("sync: {summary}");
            true
        }
        // The node is as current as its operators allow: the join itself worked.
        Err(AgentError::Settled(what)) => {
            println!("sync: {what} (waiting for an operator, not for the join)");
            true
        }
        Err(e) => {
            eprintln!("error: sync: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drop_in_opens_only_directories_outside_the_units_defaults() {
        let mut config = Config::default();
        assert_eq!(drop_in_text(&config), None, "defaults need no drop-in");
        config.bundle.drop_dir = "/var/lib/staticpod-puller/drop".into();
        assert_eq!(drop_in_text(&config), None, "inside the state directory");
        config.local_api.listen = "/run/staticpod-puller/api.sock".into();
        assert_eq!(drop_in_text(&config), None, "the unit's runtime directory");
        config.manifest_dir = "/srv/kubelet/manifests".into();
        config.bundle.drop_dir = "/media/usb/bundles".into();
        assert_eq!(
            drop_in_text(&config).as_deref(),
            Some(
                "# Written by `staticpod-puller join`: the configured directories the agent writes.\n[Service]\nReadWritePaths=\"-/srv/kubelet/manifests\" \"-/media/usb/bundles\"\n"
            )
        );
    }
}
