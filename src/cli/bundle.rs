//! `staticpod-puller bundle keygen|sign|verify|inspect`: operator tooling for offline bundles.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use staticpod_puller::bundle::{self, Limits, NodeSelector, PrivateKey, Targets, TrustPolicy};
use staticpod_puller::config::HumanDuration;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Make an Ed25519 key pair: PREFIX.key (private, mode 0600) and PREFIX.pub, in the PEM
    /// formats openssl writes.
    Keygen {
        /// Path prefix of the two files.
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
    },
    /// Sign the objects in ITEMS.yaml (as `kubectl get ... -o yaml` prints them) into a bundle.
    Sign {
        /// A private key (repeat for several signers).
        #[arg(long = "key", value_name = "KEY", required = true)]
        keys: Vec<PathBuf>,
        /// The bundle's sequence number: agents accept only a higher one than they last did.
        #[arg(long)]
        sequence: u64,
        /// How long the bundle is valid, from now.
        #[arg(long, default_value = "30d", value_name = "DURATION")]
        expires: HumanDuration,
        /// Only this node (repeatable).
        #[arg(long = "node", value_name = "NODE")]
        nodes: Vec<String>,
        /// Only nodes with these labels, e.g. `zone=a,tier!=test`.
        #[arg(long, value_name = "SELECTOR")]
        selector: Option<String>,
        /// The objects to ship.
        #[arg(value_name = "ITEMS.yaml")]
        items: PathBuf,
        /// Where to write the bundle.
        #[arg(short = 'o', long, value_name = "OUT")]
        out: PathBuf,
    },
    /// Verify a bundle against trusted keys: exit 0 when it would be accepted (sequence and
    /// targeting aside, which depend on the node), 1 with the reason when not.
    Verify {
        /// A trusted public key (repeatable).
        #[arg(long = "trusted-key", value_name = "PUB", required = true)]
        trusted: Vec<PathBuf>,
        /// How many distinct trusted keys must have signed.
        #[arg(long, default_value_t = 1)]
        threshold: usize,
        file: PathBuf,
    },
    /// Show what a bundle contains and who signed it, without trusting it.
    Inspect { file: PathBuf },
    /// Sign a StaticPod or YurtStaticSet for agents with trust.requireSignedTemplates: prints
    /// the object with its signature annotation, ready for `kubectl apply -f`.
    SignObject {
        /// A private key (repeat for several signers).
        #[arg(long = "key", value_name = "KEY", required = true)]
        keys: Vec<PathBuf>,
        /// The object, as YAML (with metadata.namespace: the signature covers it).
        #[arg(value_name = "OBJECT.yaml")]
        object: PathBuf,
        /// Where to write the signed object [default: standard output].
        #[arg(short = 'o', long, value_name = "OUT")]
        out: Option<PathBuf>,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Keygen { out } => {
            let files = bundle::keygen(&out)?;
            println!("private key: {} (mode 0600)", files.private.display());
            println!("public key:  {}", files.public.display());
            println!("key id:      {}", files.id);
            Ok(ExitCode::SUCCESS)
        }
        Command::Sign {
            keys,
            sequence,
            expires,
            nodes,
            selector,
            items,
            out,
        } => {
            let keys = keys
                .iter()
                .map(|p| PrivateKey::load(p))
                .collect::<Result<Vec<_>, _>>()?;
            let text = std::fs::read_to_string(&items)
                .with_context(|| format!("reading {}", items.display()))?;
            let node_selector = selector
                .as_deref()
                .map(NodeSelector::parse)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--selector: {e}"))?;
            let targets = (!nodes.is_empty() || node_selector.is_some()).then_some(Targets {
                nodes,
                node_selector,
            });
            let envelope = bundle::sign(
                &text,
                &keys,
                sequence,
                expires.0,
                targets,
                k8s_openapi::jiff::Timestamp::now(),
            )?;
            write_new(&out, &envelope)?;
            let ids: Vec<String> = keys.iter().map(|k| k.id().to_string()).collect();
            println!(
                "wrote {} (sequence {sequence}, signed by {})",
                out.display(),
                ids.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            trusted,
            threshold,
            file,
        } => {
            let policy = TrustPolicy::load(&trusted, threshold)?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            match policy.verify(&bytes, k8s_openapi::jiff::Timestamp::now()) {
                Ok(v) => {
                    let signers: Vec<String> = v.signers.iter().map(|k| k.to_string()).collect();
                    println!(
                        "valid: sequence {}, {} items, expires {}, signed by {}",
                        v.bundle.sequence,
                        v.bundle.items.len(),
                        v.bundle.expires_at,
                        signers.join(", ")
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(refusal) => {
                    eprintln!("refused ({}): {refusal}", refusal.reason());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::SignObject { keys, object, out } => {
            let keys = keys
                .iter()
                .map(|p| PrivateKey::load(p))
                .collect::<Result<Vec<_>, _>>()?;
            let text = std::fs::read_to_string(&object)
                .with_context(|| format!("reading {}", object.display()))?;
            let signed = sign_object(&text, &keys)
                .with_context(|| format!("signing {}", object.display()))?;
            match out {
                Some(path) => {
                    write_new(&path, signed.as_bytes())?;
                    eprintln!("wrote {}", path.display());
                }
                None => print!("{signed}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let inspection = bundle::inspect(&bytes, &Limits::default())?;
            println!("NOT VERIFIED: what {} says about itself", file.display());
            println!("payload type: {}", inspection.payload_type);
            println!("payload:      {} bytes", inspection.payload_bytes);
            for id in &inspection.keyids {
                println!(
                    "signature:    key {}",
                    if id.is_empty() { "(none named)" } else { id }
                );
            }
            match inspection.bundle {
                Ok(b) => {
                    println!("sequence:     {}", b.sequence);
                    println!("issued at:    {}", b.issued_at);
                    println!("expires at:   {}", b.expires_at);
                    match &b.targets {
                        None => println!("targets:      every node"),
                        Some(t) => {
                            if !t.nodes.is_empty() {
                                println!("nodes:        {}", t.nodes.join(", "));
                            }
                            if let Some(s) = &t.node_selector {
                                println!("selector:     {s}");
                            }
                        }
                    }
                    for item in &b.items {
                        println!(
                            "item:         {} {}/{}",
                            item.kind(),
                            item.namespace(),
                            item.name()
                        );
                    }
                }
                Err(e) => println!("payload:      unreadable: {e}"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The object in `yaml` with the signature annotation over its kind, namespace, name and
/// template.
fn sign_object(yaml: &str, keys: &[PrivateKey]) -> anyhow::Result<String> {
    use bundle::template;
    let mut object: serde_json::Value =
        serde_saphyr::from_str(yaml).map_err(|e| anyhow::anyhow!("not YAML: {e}"))?;
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    if kind != "StaticPod" && kind != "YurtStaticSet" {
        anyhow::bail!("kind {kind:?}: expected StaticPod or YurtStaticSet");
    }
    let field = |path: &str| -> anyhow::Result<String> {
        object
            .pointer(path)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("{path} is required: the signature covers it"))
    };
    let (namespace, name) = (field("/metadata/namespace")?, field("/metadata/name")?);
    let spec_template = object
        .pointer("/spec/template")
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("spec.template is required"))?;
    let template: k8s_openapi::api::core::v1::PodTemplateSpec =
        serde_json::from_value(spec_template).map_err(|e| anyhow::anyhow!("spec.template: {e}"))?;
    let annotation = template::sign(&kind, &namespace, &name, &template, keys);
    let metadata = object["metadata"]
        .as_object_mut()
        .ok_or_else(|| anyhow::anyhow!("metadata must be a mapping"))?;
    let annotations = metadata
        .entry("annotations")
        .or_insert_with(|| serde_json::json!({}));
    let annotations = annotations
        .as_object_mut()
        .ok_or_else(|| anyhow::anyhow!("metadata.annotations must be a mapping"))?;
    annotations.insert(template::ANNOTATION.to_string(), annotation.into());
    serde_saphyr::to_string(&object).map_err(|e| anyhow::anyhow!("writing YAML: {e}"))
}

/// Write `bytes` to `path` through a temporary file and a rename: a reader (a drop directory
/// watcher) never sees half a bundle.
fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let temp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let mut file =
        std::fs::File::create(&temp).with_context(|| format!("creating {}", temp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("renaming onto {}", path.display()))?;
    Ok(())
}
