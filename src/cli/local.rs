//! `staticpod-puller pods` and `staticpod-puller upgrade`: clients of the node-local API.

use std::process::ExitCode;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use staticpod_puller::config::Config;
use staticpod_puller::manifest::mirror::{pod_hash, pod_ready};
use staticpod_puller::ota::NEED_UPGRADE;
use staticpod_puller::ota::client::LocalClient;

#[derive(clap::Args, Debug)]
pub struct PodsArgs {}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Print the JSON the local API returns.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct UpgradeArgs {
    /// The mirror pod to upgrade, as NAMESPACE/PODNAME (e.g. default/nginx-edge-node-1).
    #[arg(value_name = "NS/PODNAME")]
    pod: String,
    /// Follow the upgrade to its end; exit non-zero unless it succeeded.
    #[arg(long)]
    wait: bool,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub fn pods(_args: PodsArgs, config: Config) -> anyhow::Result<ExitCode> {
    let client = LocalClient::from_config(&config)?;
    let (status, body) = runtime()?.block_on(client.request("GET", "/pods"))?;
    if status != 200 {
        anyhow::bail!(
            "GET /pods: {status} {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    let list: serde_json::Value = serde_json::from_slice(&body)?;
    let pods: Vec<Pod> = serde_json::from_value(list["items"].clone())?;
    println!(
        "{:<12} {:<40} {:<6} {:<18} {:<17} NEED-UPGRADE",
        "NAMESPACE", "NAME", "READY", "STATUS", "HASH"
    );
    for pod in &pods {
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Unknown".into());
        let need = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == NEED_UPGRADE))
            .map_or("-".to_string(), |c| c.status.clone());
        println!(
            "{:<12} {:<40} {:<6} {:<18} {:<17} {}",
            pod.metadata.namespace.as_deref().unwrap_or(""),
            pod.metadata.name.as_deref().unwrap_or(""),
            if pod_ready(pod) { "true" } else { "false" },
            phase,
            pod_hash(pod).unwrap_or("-"),
            need
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn upgrade(args: UpgradeArgs, config: Config) -> anyhow::Result<ExitCode> {
    let Some((ns, pod)) = args.pod.split_once('/') else {
        anyhow::bail!("expected NAMESPACE/PODNAME, got {:?}", args.pod);
    };
    let path = format!("/openyurt.io/v1/namespaces/{ns}/pods/{pod}/upgrade");
    let client = LocalClient::from_config(&config)?;
    runtime()?.block_on(async {
        let (status, body) = client.request("POST", &path).await?;
        let text = String::from_utf8_lossy(&body).trim().to_string();
        if status != 200 {
            eprintln!("{status}: {text}");
            return Ok(ExitCode::FAILURE);
        }
        println!("{text}");
        if !args.wait {
            return Ok(ExitCode::SUCCESS);
        }
        let mut last = String::new();
        loop {
            let (status, body) = client.request("GET", &path).await?;
            if status != 200 {
                anyhow::bail!(
                    "GET {path}: {status} {}",
                    String::from_utf8_lossy(&body).trim()
                );
            }
            let record: serde_json::Value = serde_json::from_slice(&body)?;
            let phase = record["phase"].as_str().unwrap_or("unknown").to_string();
            if phase != last {
                match record["message"].as_str() {
                    Some(m) => println!("{phase}: {m}"),
                    None => println!("{phase}"),
                }
                last = phase.clone();
            }
            match phase.as_str() {
                "succeeded" => return Ok(ExitCode::SUCCESS),
                "rolled-back" | "superseded" | "failed" => return Ok(ExitCode::FAILURE),
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    })
}

pub fn status(args: StatusArgs, config: Config) -> anyhow::Result<ExitCode> {
    let client = LocalClient::from_config(&config)?;
    let (code, body) = runtime()?.block_on(client.request("GET", "/status"))?;
    if code != 200 {
        anyhow::bail!(
            "GET /status: {code} {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    if args.json {
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(ExitCode::SUCCESS);
    }
    let status: serde_json::Value = serde_json::from_slice(&body)?;
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    println!(
        "node {} (API server {})",
        text(&status["node"]),
        if status["apiServerReachable"] == true {
            "reachable"
        } else {
            "unreachable"
        }
    );
    println!(
        "{:<36} {:<22} {:<17} {:<17} {:<18} LAST ERROR",
        "OBJECT", "STRATEGY", "LOCAL", "DESIRED", "PHASE"
    );
    for o in status["objects"].as_array().into_iter().flatten() {
        println!(
            "{:<36} {:<22} {:<17} {:<17} {:<18} {}",
            text(&o["object"]),
            text(&o["strategy"]),
            text(&o["localHash"]),
            text(&o["desiredHash"]),
            text(&o["phase"]),
            text(&o["lastError"])
        );
    }
    for r in status["refused"].as_array().into_iter().flatten() {
        println!("refused: {}: {}", text(&r["object"]), text(&r["reason"]));
    }
    for h in status["heldBundles"].as_array().into_iter().flatten() {
        println!(
            "held back (the cluster is authoritative): bundle {} from {}, {} items, expires {}",
            h["sequence"],
            text(&h["url"]),
            h["items"],
            text(&h["expiresAt"])
        );
    }
    for a in status["fromBundles"].as_array().into_iter().flatten() {
        println!(
            "set from bundle {} ({}): {}.yaml at {}",
            a["sequence"],
            text(&a["source"]),
            text(&a["manifest"]),
            text(&a["hash"])
        );
    }
    let grants: Vec<String> = status["grantsHeld"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    println!(
        "grants held: {}",
        if grants.is_empty() {
            "none".to_string()
        } else {
            grants.join(", ")
        }
    );
    Ok(ExitCode::SUCCESS)
}
