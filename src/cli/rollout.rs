//! `staticpod-puller rollout status|pause|resume|promote|retry TARGET`: the operators' view and
//! control of a rollout, like `kubectl rollout`. TARGET is `sp/NAME`, `yss/NAME` (namespace
//! from `-n`), `sp/NS/NAME`, `yss/NS/NAME`, or `NS/NAME` (a StaticPod).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use staticpod_puller::config::{Config, HumanDuration};
use staticpod_puller::controller::operate::{self, Snapshot};
use staticpod_puller::controller::status::names;
use staticpod_puller::controller::window::Phase;
use staticpod_puller::desired::{Kind, ObjectKey};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
    /// Kubeconfig [default: $KUBECONFIG, else ~/.kube/config, else in-cluster].
    #[arg(long, global = true, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the object when TARGET does not name one.
    #[arg(
        short,
        long,
        global = true,
        default_value = "default",
        value_name = "NS"
    )]
    namespace: String,
    /// Namespace of the grants [default: the configuration's agentNamespace].
    #[arg(long, global = true, value_name = "NS")]
    agent_namespace: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Where the rollout stands: the window, who holds grants, failed nodes and why, what it
    /// waits for. Exit code: 0 complete, 2 halted, 3 awaiting promotion, 4 paused, 5 still
    /// progressing (without --watch).
    Status {
        target: String,
        /// Follow until complete, halted or awaiting promotion (a progress bar on a terminal,
        /// one line per change otherwise).
        #[arg(short, long)]
        watch: bool,
        /// Give up watching after this long (exit 1).
        #[arg(long, value_name = "DURATION")]
        timeout: Option<HumanDuration>,
    },
    /// Stop handing out new grants (upgradeStrategy.paused); upgrades under way finish.
    Pause { target: String },
    /// Hand out grants again.
    Resume { target: String },
    /// Let the rollout go on past its canary step (annotates the desired hash as promoted).
    Promote { target: String },
    /// Grant the members that rolled the desired hash back the same hash again.
    Retry { target: String },
}

/// Parse TARGET (see the module doc).
fn target(text: &str, namespace: &str) -> anyhow::Result<ObjectKey> {
    let kind = |k: &str| match k.to_ascii_lowercase().as_str() {
        "sp" | "staticpod" | "staticpods" => Some(Kind::StaticPod),
        "yss" | "yurtstaticset" | "yurtstaticsets" => Some(Kind::YurtStaticSet),
        _ => None,
    };
    let parts: Vec<&str> = text.split('/').collect();
    let (kind, namespace, name) = match parts.as_slice() {
        [k, name] if kind(k).is_some() => (kind(k), namespace, *name),
        [ns, name] => (Some(Kind::StaticPod), *ns, *name),
        [k, ns, name] => (kind(k), *ns, *name),
        _ => (None, "", ""),
    };
    let Some(kind) = kind.filter(|_| !namespace.is_empty() && !name.is_empty()) else {
        anyhow::bail!(
            "expected sp/NAME, yss/NAME, sp/NS/NAME, yss/NS/NAME or NS/NAME, got {text:?}"
        );
    };
    Ok(ObjectKey {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

pub fn run(args: Args, config: Config) -> anyhow::Result<ExitCode> {
    let agent_namespace = args
        .agent_namespace
        .clone()
        .unwrap_or(config.agent_namespace.clone());
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client = match &args.kubeconfig {
            Some(path) => staticpod_puller::kubeclient::from_kubeconfig(path)
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            None => kube::Client::try_default()
                .await
                .map_err(|e| anyhow::anyhow!("no kubeconfig (pass --kubeconfig): {e}"))?,
        };
        match args.action {
            Action::Status {
                target: t,
                watch,
                timeout,
            } => {
                let key = target(&t, &args.namespace)?;
                status(&client, &key, &agent_namespace, watch, timeout.map(|t| t.0)).await
            }
            Action::Pause { target: t } => {
                let key = target(&t, &args.namespace)?;
                operate::set_paused(&client, &key, true).await?;
                println!("{key}: paused (no new upgrades start; those under way finish)");
                Ok(ExitCode::SUCCESS)
            }
            Action::Resume { target: t } => {
                let key = target(&t, &args.namespace)?;
                operate::set_paused(&client, &key, false).await?;
                println!("{key}: resumed");
                Ok(ExitCode::SUCCESS)
            }
            Action::Promote { target: t } => {
                let key = target(&t, &args.namespace)?;
                let hash = operate::promote(&client, &key).await?;
                println!("{key}: {hash} promoted past its canary step");
                Ok(ExitCode::SUCCESS)
            }
            Action::Retry { target: t } => {
                let key = target(&t, &args.namespace)?;
                let nodes = operate::retry(&client, &key, &agent_namespace).await?;
                if nodes.is_empty() {
                    println!("{key}: no member rolled the desired hash back; nothing to retry");
                } else {
                    println!("{key}: {} granted again: {}", nodes.len(), names(&nodes));
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

fn exit_code(phase: Phase) -> ExitCode {
    ExitCode::from(match phase {
        Phase::Complete => 0,
        Phase::Halted => 2,
        Phase::AwaitingPromotion => 3,
        Phase::Paused => 4,
        Phase::Progressing => 5,
    })
}

async fn status(
    client: &kube::Client,
    key: &ObjectKey,
    agent_namespace: &str,
    watch: bool,
    timeout: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let snapshot = operate::snapshot(client, key, agent_namespace).await?;
    if !watch {
        print!("{}", report(&snapshot));
        return Ok(exit_code(snapshot.phase()));
    }
    let terminal = std::io::stdout().is_terminal();
    let started = tokio::time::Instant::now();
    let mut last = String::new();
    let mut snapshot = snapshot;
    loop {
        let line = progress_line(&snapshot, terminal);
        if line != last {
            if terminal {
                // Redrawn in place.
                print!("\r\x1b[2K{line}");
            } else {
                println!("{line}");
            }
            let _ = std::io::stdout().flush();
            last = line;
        }
        let phase = snapshot.phase();
        if matches!(
            phase,
            Phase::Complete | Phase::Halted | Phase::AwaitingPromotion
        ) {
            if terminal {
                println!();
            }
            print!("{}", report(&snapshot));
            return Ok(exit_code(phase));
        }
        if timeout.is_some_and(|t| started.elapsed() > t) {
            if terminal {
                println!();
            }
            anyhow::bail!("{key}: still {phase:?} after {:?}", started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        snapshot = operate::snapshot(client, key, agent_namespace).await?;
    }
}

/// Counts of members by where they stand in the rollout.
struct Tally {
    upgraded: usize,
    upgrading: usize,
    failed: usize,
    waiting: usize,
}

fn tally(s: &Snapshot) -> Tally {
    let (upgrading, failed, waiting) = s
        .decision
        .as_ref()
        .map_or((0, 0, s.members - s.upgraded), |d| {
            (d.upgrading.len(), d.failed.len(), d.waiting)
        });
    Tally {
        upgraded: s.upgraded,
        upgrading,
        failed,
        waiting,
    }
}

/// One line of progress: a bar of upgraded / upgrading / failed / waiting on a terminal.
fn progress_line(s: &Snapshot, bar: bool) -> String {
    let t = tally(s);
    let counts = format!(
        "{} upgraded, {} upgrading, {} failed, {} waiting of {} ({:?})",
        t.upgraded,
        t.upgrading,
        t.failed,
        t.waiting,
        s.members,
        s.phase()
    );
    if !bar || s.members == 0 {
        return format!("{}: {counts}", s.key);
    }
    const WIDTH: usize = 30;
    let cells = |n: usize| (n * WIDTH).div_ceil(s.members.max(1)).min(WIDTH);
    let mut text = String::new();
    for (n, c) in [(t.upgraded, '#'), (t.upgrading, '>'), (t.failed, 'x')] {
        text.extend(std::iter::repeat_n(c, cells(n)));
    }
    let filled: String = text.chars().take(WIDTH).collect();
    format!("[{filled:.<WIDTH$}] {counts}")
}

/// The whole report: phase, window, grants, failures, what it waits for.
pub fn report(s: &Snapshot) -> String {
    let mut out = format!(
        "{}: {:?}, {} of {} members on {} ({})\n",
        s.key,
        s.phase(),
        s.upgraded,
        s.members,
        s.hash,
        s.strategy
    );
    let Some(d) = &s.decision else {
        out.push_str("OTA: each node's operator starts its upgrade (staticpod-puller upgrade)\n");
        return out;
    };
    out.push_str(&format!(
        "window: maxUnavailable {}, maxFailed {}{}\n",
        d.budget,
        d.failure_budget,
        if s.canary > 0 {
            format!(
                ", canary {} ({})",
                s.canary,
                if s.promoted {
                    "promoted"
                } else {
                    "not promoted"
                }
            )
        } else {
            String::new()
        }
    ));
    let upgrading: Vec<String> = d.upgrading.iter().cloned().collect();
    out.push_str(&format!(
        "upgrading (holding a grant): {}\n",
        if upgrading.is_empty() {
            "none".to_string()
        } else {
            names(&upgrading)
        }
    ));
    if !d.failed.is_empty() {
        let failed: Vec<String> = d.failed.iter().map(|(n, r)| format!("{n} ({r})")).collect();
        out.push_str(&format!("failed: {}\n", names(&failed)));
    }
    if !d.pull_failed.is_empty() {
        let nodes: Vec<String> = d
            .pull_failed
            .iter()
            .map(|(n, r)| format!("{n} ({r})"))
            .collect();
        out.push_str(&format!(
            "images not pulled (not granted until they are): {}\n",
            names(&nodes)
        ));
    }
    let waits = match d.phase {
        Phase::Complete => "nothing: every member runs the desired hash".to_string(),
        Phase::Halted => format!(
            "the operator: maxFailed reached; fix the template, or `staticpod-puller rollout retry {}`",
            target_text(&s.key)
        ),
        Phase::Paused => format!("`staticpod-puller rollout resume {}`", target_text(&s.key)),
        Phase::AwaitingPromotion => format!(
            "promotion: `staticpod-puller rollout promote {}`",
            target_text(&s.key)
        ),
        Phase::Progressing => format!(
            "{} members to upgrade; the window frees a unit as each upgrade ends",
            d.waiting
        ),
    };
    out.push_str(&format!("waiting for: {waits}\n"));
    out
}

fn target_text(key: &ObjectKey) -> String {
    format!("{}/{}/{}", key.kind.short(), key.namespace, key.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_kind_namespace_and_object() {
        let key = |k, ns: &str, n: &str| ObjectKey {
            kind: k,
            namespace: ns.into(),
            name: n.into(),
        };
        assert_eq!(
            target("sp/web", "edge").unwrap(),
            key(Kind::StaticPod, "edge", "web")
        );
        assert_eq!(
            target("yss/kube-system/yurt-hub", "x").unwrap(),
            key(Kind::YurtStaticSet, "kube-system", "yurt-hub")
        );
        assert_eq!(
            target("default/web", "x").unwrap(),
            key(Kind::StaticPod, "default", "web")
        );
        for bad in ["web", "pod/ns/web", "sp/", "a/b/c/d"] {
            assert!(target(bad, "default").is_err(), "{bad}");
        }
    }

    #[test]
    fn the_bar_shows_each_state_in_proportion() {
        let mut d = staticpod_puller::controller::window::Decision::default();
        d.upgrading.insert("n3".into());
        d.failed.insert("n4".into(), "not Ready".into());
        d.pull_failed.insert(
            "n5".into(),
            "images of h could not be pulled: not found".into(),
        );
        d.waiting = 4;
        d.phase = Phase::Progressing;
        let s = Snapshot {
            key: target("sp/web", "default").unwrap(),
            hash: "abc".into(),
            strategy: staticpod_puller::resources::Strategy::AdvancedRollingUpdate,
            members: 10,
            upgraded: 5,
            decision: Some(d),
            canary: 0,
            promoted: false,
        };
        let line = progress_line(&s, true);
        assert!(line.starts_with("[###############>>>xxx"), "{line}");
        assert!(
            line.contains("5 upgraded, 1 upgrading, 1 failed, 4 waiting of 10"),
            "{line}"
        );
        assert!(!progress_line(&s, false).contains('['));
        let text = report(&s);
        assert!(text.contains("failed: n4 (not Ready)"), "{text}");
        assert!(text.contains("upgrading (holding a grant): n3"), "{text}");
        assert!(
            text.contains("images not pulled (not granted until they are): n5 (images of h could not be pulled: not found)"),
            "{text}"
        );
    }
}
