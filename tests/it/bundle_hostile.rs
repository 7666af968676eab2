//! A hostile corpus of bundle files: forged, tampered, confused, oversized, malicious or
//! merely wrong. Each file is refused with its own reason and nothing is written.
//!
//! Everything but the signature cases is signed with real keys (two trusted keys, threshold 2),
//! so the signature check passes and the file is refused for what it really is. The corpus is
//! written as files and checked twice: through `bundle::accept` (the library, against saved
//! anti-rollback state), and dropped all at once into a running agent's drop directory, where
//! every file must end in `rejected/` with a `.reason` file naming the same reason while the
//! manifest directory and `bundle-state.json` stay byte for byte as they were.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use staticpod_puller::bundle::dsse::{self, Envelope, Signature};
use staticpod_puller::bundle::{
    AcceptError, BundleState, PAYLOAD_TYPE, PrivateKey, PublicKey, StateStore, TrustPolicy,
};
use staticpod_puller::sim::cluster::{DevCluster, DevClusterOptions};

use crate::support;

/// The sequence already accepted on the node: every file is checked against it.
const ACCEPTED: u64 = 100;
/// The node the corpus is made for.
const NODE: &str = "edge-node-1";

/// One file of the corpus and how it must be refused.
struct Case {
    file: &'static str,
    bytes: Vec<u8>,
    /// The refusal's reason label (the `.reason` file starts with it).
    reason: &'static str,
    /// A part of the refusal message that says what is wrong.
    message: String,
}

/// Keys: two trusted (threshold 2) and a stranger.
struct Keys {
    trusted: Vec<PrivateKey>,
    stranger: Vec<PrivateKey>,
}

impl Keys {
    fn new() -> Keys {
        let generate = || PrivateKey::generate().expect("keygen");
        Keys {
            trusted: vec![generate(), generate()],
            stranger: vec![generate()],
        }
    }

    fn a(&self) -> String {
        self.trusted[0].id().to_string()
    }

    fn b(&self) -> String {
        self.trusted[1].id().to_string()
    }

    fn policy(&self) -> TrustPolicy {
        let publics: Vec<PublicKey> = self
            .trusted
            .iter()
            .map(|k| k.public_key().clone())
            .collect();
        TrustPolicy::new(publics, 2).expect("a 2-of-2 policy")
    }

    /// Signatures of both trusted keys over the PAE of (`payload_type`, `body`).
    fn sign(&self, payload_type: &str, body: &[u8]) -> Envelope {
        dsse::sign(payload_type, body.to_vec(), &self.trusted)
    }

    fn signatures(&self, payload_type: &str, body: &[u8], keys: &[PrivateKey]) -> Vec<Signature> {
        dsse::sign(payload_type, body.to_vec(), keys).signatures
    }
}

/// A valid item: the hand-placed `nginx` manifest, upgraded to another image.
fn item(name: &str, manifest: &str) -> Value {
    json!({
        "apiVersion": "apps.openyurt.io/v1alpha1", "kind": "StaticPod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "staticPodManifest": manifest,
            "upgradeStrategy": {"type": "AdvancedRollingUpdate"},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": "nginx:6.6.6"}]},
            },
        },
    })
}

/// A valid payload at `sequence` (issued a minute ago, valid a day), for `NODE`.
fn payload(now: Timestamp, sequence: u64) -> Value {
    json!({
        "apiVersion": "staticpod-puller.openyurt.io/v1",
        "kind": "Bundle",
        "sequence": sequence,
        "issuedAt": (now - SignedDuration::from_secs(60)).to_string(),
        "expiresAt": (now + SignedDuration::from_hours(24)).to_string(),
        "targets": {"nodes": [NODE]},
        "items": [item("nginx", "nginx")],
    })
}

fn bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec_pretty(value).expect("JSON")
}

/// The envelope JSON of `value`, signed by both trusted keys.
fn signed(keys: &Keys, value: &Value) -> Vec<u8> {
    keys.sign(PAYLOAD_TYPE, &bytes(value)).to_json()
}

/// A YAML payload text (for what JSON cannot express), signed by both trusted keys.
fn signed_text(keys: &Keys, text: &str) -> Vec<u8> {
    keys.sign(PAYLOAD_TYPE, text.as_bytes()).to_json()
}

/// The payload's own fields as YAML, up to `items:`.
fn yaml_header(now: Timestamp, sequence: u64) -> String {
    format!(
        "apiVersion: staticpod-puller.openyurt.io/v1\nkind: Bundle\nsequence: {sequence}\nissuedAt: {}\nexpiresAt: {}\nitems:\n",
        now - SignedDuration::from_secs(60),
        now + SignedDuration::from_hours(24)
    )
}

fn envelope_json(payload_type: &str, payload_b64: &str, signatures: &[Signature]) -> Vec<u8> {
    let signatures: Vec<Value> = signatures
        .iter()
        .map(|s| json!({"keyid": s.keyid, "sig": STANDARD.encode(&s.sig)}))
        .collect();
    serde_json::to_vec_pretty(&json!({
        "payloadType": payload_type,
        "payload": payload_b64,
        "signatures": signatures,
    }))
    .expect("JSON")
}

fn with(mut value: Value, change: impl FnOnce(&mut Value)) -> Value {
    change(&mut value);
    value
}

/// The corpus, made for `NODE` at `now`, against an accepted sequence of `ACCEPTED`.
fn corpus(keys: &Keys, now: Timestamp) -> Vec<Case> {
    let next = ACCEPTED + 1;
    let good = payload(now, next);
    let good_bytes = bytes(&good);
    let (a, b) = (keys.a(), keys.b());
    let mut cases = Vec::new();
    let mut case = |file, bytes, reason, message: &str| {
        cases.push(Case {
            file,
            bytes,
            reason,
            message: message.to_string(),
        })
    };

    // --- Signatures -----------------------------------------------------------------------
    let mut env = keys.sign(PAYLOAD_TYPE, &good_bytes);
    let middle = env.payload.len() / 2;
    env.payload[middle] ^= 0x01;
    case(
        "flipped-payload-byte.json",
        env.to_json(),
        "bad_signature",
        &format!("bad signature from key {a} (threshold 2 not met: 0 valid)"),
    );
    let mut env = keys.sign(PAYLOAD_TYPE, &good_bytes);
    env.signatures[0].sig[10] ^= 0x80;
    case(
        "flipped-signature-byte.json",
        env.to_json(),
        "bad_signature",
        &format!("bad signature from key {a} (threshold 2 not met: 1 valid)"),
    );
    let mut env = dsse::sign(PAYLOAD_TYPE, good_bytes.clone(), &keys.trusted[..1]);
    env.signatures
        .extend(keys.signatures(PAYLOAD_TYPE, &good_bytes, &keys.stranger));
    let stranger = keys.stranger[0].id().to_string();
    case(
        "untrusted-signer.json",
        env.to_json(),
        "threshold",
        &format!("threshold 2 not met: 1 valid; signatures by untrusted keys: {stranger}"),
    );
    let mut env = dsse::sign(PAYLOAD_TYPE, good_bytes.clone(), &keys.trusted[..1]);
    env.signatures.push(env.signatures[0].clone());
    case(
        "duplicated-signature.json",
        env.to_json(),
        "threshold",
        "threshold 2 not met: 1 valid",
    );
    // One key's signature under both trusted key ids: the second is a bad signature of b.
    let mut env = dsse::sign(PAYLOAD_TYPE, good_bytes.clone(), &keys.trusted[..1]);
    let mut relabelled = env.signatures[0].clone();
    relabelled.keyid = b.clone();
    env.signatures.push(relabelled);
    case(
        "same-signature-two-keyids.json",
        env.to_json(),
        "bad_signature",
        &format!("bad signature from key {b} (threshold 2 not met: 1 valid)"),
    );
    // The same key id spelt twice (upper case), and once with no key id at all.
    for (file, keyid) in [
        ("same-key-keyid-uppercase.json", a.to_uppercase()),
        ("same-key-keyid-missing.json", String::new()),
    ] {
        let mut env = dsse::sign(PAYLOAD_TYPE, good_bytes.clone(), &keys.trusted[..1]);
        let mut again = env.signatures[0].clone();
        again.keyid = keyid;
        env.signatures.push(again);
        case(
            file,
            env.to_json(),
            "threshold",
            "threshold 2 not met: 1 valid",
        );
    }
    case(
        "no-signatures.json",
        envelope_json(PAYLOAD_TYPE, &STANDARD.encode(&good_bytes), &[]),
        "threshold",
        "threshold 2 not met: 0 valid",
    );
    let many = vec![keys.sign(PAYLOAD_TYPE, &good_bytes).signatures[0].clone(); 17];
    case(
        "too-many-signatures.json",
        envelope_json(PAYLOAD_TYPE, &STANDARD.encode(&good_bytes), &many),
        "too_large",
        "17 signatures, over the limit of 16",
    );

    // --- Payload type and PAE confusion ---------------------------------------------------
    case(
        "wrong-payload-type.json",
        keys.sign("application/vnd.in-toto+json", &good_bytes)
            .to_json(),
        "payload_type",
        "payload type \"application/vnd.in-toto+json\" is not ours",
    );
    // The type embeds the body's length and its first bytes (a naive `type || body` would
    // be the same string); the signatures are the genuine ones over (ours, body).
    let head = 16;
    let embedded = format!(
        "{PAYLOAD_TYPE} {} {}",
        good_bytes.len(),
        String::from_utf8_lossy(&good_bytes[..head])
    );
    let genuine = keys.sign(PAYLOAD_TYPE, &good_bytes).signatures;
    case(
        "pae-type-embeds-length-and-body.json",
        envelope_json(&embedded, &STANDARD.encode(&good_bytes[head..]), &genuine),
        "payload_type",
        "is not ours",
    );
    // Signatures made over PAE(ours + " LEN " + head, tail), presented over (ours, body).
    let shifted = keys.sign(&embedded, &good_bytes[head..]).signatures;
    case(
        "pae-body-shifted-into-type.json",
        envelope_json(PAYLOAD_TYPE, &STANDARD.encode(&good_bytes), &shifted),
        "bad_signature",
        &format!("bad signature from key {a}"),
    );
    // Signatures over PAE(ours minus its last 5 bytes, those 5 bytes + body).
    let cut = PAYLOAD_TYPE.len() - 5;
    let mut moved = PAYLOAD_TYPE.as_bytes()[cut..].to_vec();
    moved.extend_from_slice(&good_bytes);
    let shifted = keys.sign(&PAYLOAD_TYPE[..cut], &moved).signatures;
    case(
        "pae-type-shifted-into-body.json",
        envelope_json(PAYLOAD_TYPE, &STANDARD.encode(&good_bytes), &shifted),
        "bad_signature",
        &format!("bad signature from key {a}"),
    );
    case(
        "pae-type-with-trailing-space.json",
        keys.sign(&format!("{PAYLOAD_TYPE} "), &good_bytes)
            .to_json(),
        "payload_type",
        "is not ours",
    );

    // --- Envelope syntax ------------------------------------------------------------------
    let valid = signed(keys, &good);
    case(
        "truncated.json",
        valid[..valid.len() / 2].to_vec(),
        "malformed",
        "parsing the DSSE envelope JSON",
    );
    case(
        "payload-invalid-base64.json",
        envelope_json(PAYLOAD_TYPE, "eyJ!!!notbase64", &genuine),
        "malformed",
        "decoding the DSSE envelope's payload as base64",
    );
    let mut text = String::from_utf8(valid.clone()).expect("utf-8");
    let sig = STANDARD.encode(&genuine[0].sig);
    text = text.replacen(&sig, &format!("{}%%", &sig[..sig.len() - 2]), 1);
    case(
        "signature-invalid-base64.json",
        text.into_bytes(),
        "malformed",
        "decoding the DSSE envelope's signatures[0].sig as base64",
    );
    // A second `payload` key: one JSON reader takes the first, another the last.
    let text = String::from_utf8(valid.clone()).expect("utf-8");
    let forged = STANDARD.encode(bytes(&payload(now, 999_999)));
    let doubled = text.replacen(
        "\"payload\":",
        &format!("\"payload\": \"{forged}\",\n  \"payload\":"),
        1,
    );
    case(
        "envelope-duplicate-payload-key.json",
        doubled.into_bytes(),
        "malformed",
        "duplicate field `payload`",
    );
    case(
        "not-json.txt",
        b"this is not a bundle, it is a shopping list\n".to_vec(),
        "malformed",
        "parsing the DSSE envelope JSON",
    );
    case(
        "empty.json",
        Vec::new(),
        "malformed",
        "parsing the DSSE envelope JSON",
    );

    // --- Size -----------------------------------------------------------------------------
    // Over the 4 MiB payload cap (signed validly): refused from the base64 length, undecoded.
    let mut huge = good_bytes.clone();
    huge.resize((4 << 20) + 4096, b' ');
    case(
        "huge-payload.json",
        signed_text(keys, std::str::from_utf8(&huge).expect("utf-8")),
        "too_large",
        "the payload is",
    );
    // Over the 6 MiB envelope cap, padded with an unknown field: refused before parsing.
    let text = String::from_utf8(valid.clone()).expect("utf-8");
    let padded = text.replacen(
        '{',
        &format!("{{\"padding\": \"{}\",", "A".repeat(6 << 20)),
        1,
    );
    case(
        "huge-envelope.json",
        padded.into_bytes(),
        "too_large",
        "the envelope is",
    );
    let items: Vec<Value> = (0..257)
        .map(|i| item(&format!("app-{i}"), &format!("app-{i}")))
        .collect();
    case(
        "too-many-items.json",
        signed(
            keys,
            &with(good.clone(), |p| p["items"] = Value::from(items)),
        ),
        "too_large",
        "257 items, over the limit of 256",
    );

    // --- Parser attacks (validly signed, so they reach the parser) --------------------------
    let deep = format!(
        "{}- {}{}\n",
        yaml_header(now, next),
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    case(
        "deeply-nested.yaml.json",
        signed_text(keys, &deep),
        "malformed",
        "recursion limit exceeded",
    );
    let mut bomb = String::from("- a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let p = i - 1;
        bomb.push_str(&format!(
            "  a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    case(
        "alias-bomb.yaml.json",
        signed_text(keys, &format!("{}{bomb}", yaml_header(now, next))),
        "malformed",
        "alias replay limit exceeded",
    );
    let twice = yaml_header(now, next).replacen(
        &format!("sequence: {next}\n"),
        &format!("sequence: {next}\nsequence: 999999\n"),
        1,
    );
    case(
        "duplicate-sequence-key.yaml.json",
        signed_text(keys, &format!("{twice}- {{}}\n")),
        "malformed",
        "duplicate",
    );
    // A repeated key inside an item: refused, as the YAML reader refuses it, never "last wins".
    let repeated = String::from_utf8(good_bytes.clone())
        .expect("utf-8")
        .replacen(
            "\"namespace\": \"default\"",
            "\"namespace\": \"default\",\n\"namespace\": \"kube-system\"",
            1,
        );
    case(
        "item-duplicate-key.json",
        signed_text(keys, &repeated),
        "malformed",
        "duplicate key \"namespace\"",
    );
    case(
        "payload-not-utf8.json",
        keys.sign(PAYLOAD_TYPE, b"sequence: \xff\xfe\n").to_json(),
        "malformed",
        "not UTF-8",
    );
    case(
        "payload-json-array.json",
        signed(keys, &json!([1, 2, 3])),
        "malformed",
        "parsing the bundle payload: ",
    );
    case(
        "payload-json-string.json",
        signed(keys, &json!("items")),
        "malformed",
        "parsing the bundle payload: ",
    );

    // --- The payload's own fields ---------------------------------------------------------
    let field = |name: &str, value: Value| with(good.clone(), |p| p[name] = value);
    case(
        "unknown-api-version.json",
        signed(
            keys,
            &field("apiVersion", "staticpod-puller.openyurt.io/v2".into()),
        ),
        "malformed",
        "apiVersion is \"staticpod-puller.openyurt.io/v2\"",
    );
    case(
        "unknown-bundle-kind.json",
        signed(keys, &field("kind", "BundleList".into())),
        "malformed",
        "kind is \"BundleList\", expected \"Bundle\"",
    );
    case(
        "negative-sequence.json",
        signed(keys, &field("sequence", json!(-1))),
        "malformed",
        "sequence: invalid value: integer `-1`, expected u64",
    );
    let over_u64 = String::from_utf8(good_bytes.clone())
        .expect("utf-8")
        .replacen(
            &format!("\"sequence\": {next}"),
            "\"sequence\": 18446744073709551616",
            1,
        );
    assert!(over_u64.contains("18446744073709551616"), "{over_u64}");
    case(
        "huge-sequence.json",
        signed_text(keys, &over_u64),
        "malformed",
        "sequence: invalid type: floating point",
    );
    case(
        "sequence-zero.json",
        signed(keys, &field("sequence", json!(0))),
        "malformed",
        "sequence must be at least 1",
    );
    case(
        "missing-expires-at.json",
        signed(
            keys,
            &with(good.clone(), |p| {
                p.as_object_mut().expect("object").remove("expiresAt");
            }),
        ),
        "malformed",
        "missing field `expiresAt`",
    );
    case(
        "expires-before-issued.json",
        signed(
            keys,
            &field(
                "expiresAt",
                (now - SignedDuration::from_hours(1)).to_string().into(),
            ),
        ),
        "malformed",
        "is not after issuedAt",
    );
    case(
        "misspelt-targets.json",
        signed(keys, &field("target", json!({"nodes": ["other"]}))),
        "malformed",
        "unknown field `target`",
    );

    // --- Time, rollback, targeting --------------------------------------------------------
    case(
        "replayed-older.json",
        signed(keys, &payload(now, ACCEPTED - 50)),
        "replayed",
        &format!("sequence {} ≤ accepted {ACCEPTED}", ACCEPTED - 50),
    );
    case(
        "replayed-equal.json",
        signed(keys, &payload(now, ACCEPTED)),
        "replayed",
        &format!("sequence {ACCEPTED} ≤ accepted {ACCEPTED}"),
    );
    case(
        "expired.json",
        signed(
            keys,
            &with(good.clone(), |p| {
                p["issuedAt"] = (now - SignedDuration::from_hours(48)).to_string().into();
                p["expiresAt"] = (now - SignedDuration::from_hours(24)).to_string().into();
            }),
        ),
        "expired",
        "expired at",
    );
    case(
        "issued-in-the-future.json",
        signed(
            keys,
            &with(good.clone(), |p| {
                p["issuedAt"] = (now + SignedDuration::from_hours(1)).to_string().into();
                p["expiresAt"] = (now + SignedDuration::from_hours(48)).to_string().into();
            }),
        ),
        "not_yet_valid",
        "in the future",
    );
    case(
        "for-another-node.json",
        signed(keys, &field("targets", json!({"nodes": ["edge-node-9"]}))),
        "not_targeted",
        &format!("node {NODE} is not among the bundle's nodes (edge-node-9)"),
    );
    case(
        "selector-not-matching.json",
        signed(
            keys,
            &field("targets", json!({"nodeSelector": "zone=nowhere"})),
        ),
        "not_targeted",
        "do not match nodeSelector zone=nowhere",
    );

    // --- Items ----------------------------------------------------------------------------
    let one_item = |change: &dyn Fn(&mut Value)| with(good.clone(), |p| change(&mut p["items"][0]));
    case(
        "manifest-path-traversal.json",
        signed(
            keys,
            &one_item(&|i| i["spec"]["staticPodManifest"] = "../../etc/cron.d/x".into()),
        ),
        "invalid_item",
        "spec.staticPodManifest: must be a plain file name (no path), got \"../../etc/cron.d/x\"",
    );
    case(
        "manifest-absolute-path.json",
        signed(
            keys,
            &one_item(&|i| i["spec"]["staticPodManifest"] = "/etc/cron.d/x".into()),
        ),
        "invalid_item",
        "must be a plain file name (no path), got \"/etc/cron.d/x\"",
    );
    case(
        "manifest-hidden-file.json",
        signed(
            keys,
            &one_item(&|i| i["spec"]["staticPodManifest"] = ".nginx".into()),
        ),
        "invalid_item",
        "must not start with '.'",
    );
    case(
        "secret-volume.json",
        signed(
            keys,
            &one_item(&|i| {
                i["spec"]["template"]["spec"]["volumes"] =
                    json!([{"name": "creds", "secret": {"secretName": "cloud-credentials"}}]);
            }),
        ),
        "invalid_item",
        "spec.template.spec.volumes[0].secret: a static pod may not reference a secret volume",
    );
    case(
        "service-account-token-volume.json",
        signed(
            keys,
            &one_item(&|i| {
                i["spec"]["template"]["spec"]["volumes"] = json!([{"name": "token", "projected": {
                    "sources": [{"serviceAccountToken": {"path": "token"}}]}}]);
            }),
        ),
        "invalid_item",
        "a static pod may not reference a projected serviceAccountToken",
    );
    case(
        "configmap-env.json",
        signed(
            keys,
            &one_item(&|i| {
                i["spec"]["template"]["spec"]["containers"][0]["env"] = json!([{"name": "X",
                    "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]);
            }),
        ),
        "invalid_item",
        "env[0].valueFrom.configMapKeyRef: a static pod may not reference a configMap",
    );
    case(
        "no-containers.json",
        signed(
            keys,
            &one_item(&|i| i["spec"]["template"]["spec"]["containers"] = json!([])),
        ),
        "invalid_item",
        "required: at least one container",
    );
    case(
        "unknown-item-kind.json",
        signed(keys, &one_item(&|i| i["kind"] = "DaemonSet".into())),
        "malformed",
        "item 0: kind \"DaemonSet\" is not StaticPod or YurtStaticSet",
    );
    case(
        "duplicate-items.json",
        signed(
            keys,
            &with(good.clone(), |p| {
                p["items"] = json!([item("nginx", "nginx"), item("nginx", "nginx")]);
            }),
        ),
        "malformed",
        "item 1: StaticPod default/nginx appears more than once",
    );
    cases
}

/// Write the corpus files into `dir`.
fn write_corpus(dir: &Path, cases: &[Case]) {
    std::fs::create_dir_all(dir).expect("the corpus directory");
    for c in cases {
        std::fs::write(dir.join(c.file), &c.bytes)
            .unwrap_or_else(|e| panic!("writing {}: {e}", c.file));
    }
}

fn state_with_accepted(dir: &Path) -> Vec<u8> {
    let store = StateStore::new(dir);
    store
        .save(&BundleState {
            highest_sequence: Some(ACCEPTED),
            latest_time_seen: None,
        })
        .expect("saving the bundle state");
    std::fs::read(store.path()).expect("the state file")
}

#[test]
fn every_hostile_file_is_refused_by_accept_with_its_reason() {
    let keys = Keys::new();
    let now = Timestamp::now();
    let cases = corpus(&keys, now);
    assert!(cases.len() >= 30, "the corpus has {} files", cases.len());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let files = dir.path().join("corpus");
    write_corpus(&files, &cases);
    let state_dir = dir.path().join("state");
    std::fs::create_dir_all(&state_dir).expect("the state directory");
    let state_before = state_with_accepted(&state_dir);
    let store = StateStore::new(&state_dir);
    let policy = keys.policy();
    let labels = BTreeMap::from([("zone".to_string(), "a".to_string())]);

    // The corpus is not refused for want of a valid bundle: the good one is accepted.
    let good = signed(&keys, &payload(now, ACCEPTED + 1));
    let verified = policy
        .verify(&good, now)
        .expect("the unmodified bundle verifies");
    assert_eq!(verified.bundle.sequence, ACCEPTED + 1);

    let mut wrong = Vec::new();
    for c in &cases {
        let envelope = std::fs::read(files.join(c.file)).expect("reading the corpus file");
        match staticpod_puller::bundle::accept(&policy, &store, &envelope, NODE, &labels, now) {
            Ok(v) => wrong.push(format!(
                "{}: ACCEPTED (sequence {})",
                c.file, v.bundle.sequence
            )),
            Err(AcceptError::State(e)) => wrong.push(format!("{}: state error {e}", c.file)),
            Err(AcceptError::Refused(r)) => {
                let message = r.to_string();
                if r.reason() != c.reason || !message.contains(&c.message) {
                    wrong.push(format!(
                        "{}: expected {} containing {:?}; got {}: {message}",
                        c.file,
                        c.reason,
                        c.message,
                        r.reason()
                    ));
                }
            }
        }
        let state_now = std::fs::read(store.path()).expect("the state file");
        assert_eq!(
            state_now, state_before,
            "{} changed bundle-state.json",
            c.file
        );
    }
    assert!(wrong.is_empty(), "misjudged files:\n{}", wrong.join("\n"));

    // The CLI says the same for the files whose refusal needs no node state.
    let pubs: Vec<PathBuf> = keys
        .trusted
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let path = dir.path().join(format!("k{i}.pub"));
            std::fs::write(&path, k.public_key().to_pem()).expect("writing a public key");
            path
        })
        .collect();
    for c in cases
        .iter()
        .filter(|c| !matches!(c.reason, "replayed" | "not_targeted"))
    {
        let path = files.join(c.file);
        let (ok, _, err) = support::run_in(
            dir.path(),
            &[
                "bundle",
                "verify",
                "--threshold",
                "2",
                "--trusted-key",
                &pubs[0].display().to_string(),
                "--trusted-key",
                &pubs[1].display().to_string(),
                &path.display().to_string(),
            ],
        );
        assert!(
            !ok && err.contains(&format!("refused ({})", c.reason)) && err.contains(&c.message),
            "bundle verify {}: expected {} containing {:?}; got: {err}",
            c.file,
            c.reason,
            c.message
        );
    }
}

/// Every file below `dir` (relative path) with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).expect("below dir").to_path_buf();
                out.insert(rel, std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    out
}

/// An agent process, killed when dropped.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_agent_rejects_the_whole_corpus_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let d = dir.path();
    let cluster = DevCluster::start(DevClusterOptions::new(d, 1))
        .await
        .expect("the dev cluster starts");
    let objects = staticpod_puller::demo::bootstrap_objects().expect("the bootstrap objects");
    cluster.apply(&objects).expect("CRDs and RBAC applied");
    let node = cluster.node(NODE).expect("the node");

    let keys = Keys::new();
    let cases = corpus(&keys, Timestamp::now());
    let corpus_dir = d.join("corpus");
    write_corpus(&corpus_dir, &cases);
    let mut pubs = Vec::new();
    for (i, k) in keys.trusted.iter().enumerate() {
        let path = d.join(format!("k{i}.pub"));
        std::fs::write(&path, k.public_key().to_pem()).expect("writing a public key");
        pubs.push(path.display().to_string());
    }

    // A hand-placed manifest the bundles would upgrade, and a sequence already accepted.
    std::fs::write(
        node.manifest_dir.join("nginx.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: nginx\nspec:\n  containers:\n  - name: web\n    image: nginx:1.19.1\n",
    )
    .expect("hand-placing a manifest");
    let state_before = state_with_accepted(&node.state_dir);
    let manifests_before = snapshot(&node.manifest_dir);

    let drop_dir = d.join("drop");
    let config = d.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "nodeName: {NODE}\nkubeconfig: {}\nmanifestDir: {}\nstateDir: {}\nlocalApi:\n  listen: 127.0.0.1:0\nmetrics:\n  listen: 127.0.0.1:0\nota:\n  kubeletPodsUrl: {}\nbundle:\n  dropDir: {}\ntrust:\n  trustedKeys: [{}]\n  threshold: 2\n",
            node.agent_kubeconfig.display(),
            node.manifest_dir.display(),
            node.state_dir.display(),
            node.kubelet.pods_url().expect("the node serves /pods"),
            drop_dir.display(),
            pubs.join(", "),
        ),
    )
    .expect("writing the agent config");
    let log_path = d.join("agent.log");
    let log = std::fs::File::create(&log_path).expect("the agent log");
    let mut agent = Agent(
        Command::new(support::binary())
            .arg("--config")
            .arg(&config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning the agent"),
    );
    let log_tail = || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    support::wait_for("the drop directory", Duration::from_secs(30), || {
        if drop_dir.join("rejected").is_dir() {
            Ok(())
        } else {
            Err(format!(
                "no {}/rejected yet; agent log:\n{}",
                drop_dir.display(),
                log_tail()
            ))
        }
    });

    // Every file at once, each renamed into place complete.
    for c in &cases {
        let part = drop_dir.join(format!(".{}.part", c.file));
        std::fs::copy(corpus_dir.join(c.file), &part).expect("copying a corpus file");
        std::fs::rename(&part, drop_dir.join(c.file)).expect("renaming into the drop directory");
    }
    let reasons = support::wait_for(
        "every corpus file moved to rejected/ with a .reason file",
        Duration::from_secs(60),
        || {
            let mut reasons = BTreeMap::new();
            let mut missing = Vec::new();
            for c in &cases {
                let reason = drop_dir.join(format!("rejected/{}.reason", c.file));
                match std::fs::read_to_string(&reason) {
                    Ok(text) if drop_dir.join("rejected").join(c.file).exists() => {
                        reasons.insert(c.file, text);
                    }
                    _ => missing.push(c.file),
                }
            }
            if missing.is_empty() {
                Ok(reasons)
            } else {
                Err(format!(
                    "{} not yet: {missing:?}; agent log:\n{}",
                    missing.len(),
                    log_tail()
                ))
            }
        },
    );
    let mut wrong = Vec::new();
    for c in &cases {
        let text = &reasons[c.file];
        if !text.starts_with(&format!("{}: ", c.reason)) || !text.contains(&c.message) {
            wrong.push(format!(
                "{}: expected {} containing {:?}; .reason says {text}",
                c.file, c.reason, c.message
            ));
        }
    }
    assert!(wrong.is_empty(), "misjudged files:\n{}", wrong.join("\n"));
    let left: Vec<_> = std::fs::read_dir(&drop_dir)
        .expect("the drop directory")
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.is_empty(),
        "files left in the drop directory: {left:?}"
    );
    let processed: Vec<_> = std::fs::read_dir(drop_dir.join("processed"))
        .expect("processed/")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(processed.is_empty(), "processed (accepted!): {processed:?}");

    assert_eq!(
        snapshot(&node.manifest_dir),
        manifests_before,
        "the manifest directory changed"
    );
    assert!(
        !node.manifest_dir.join("../../etc/cron.d/x.yaml").exists()
            && !Path::new("/etc/cron.d/x.yaml").exists(),
        "a path-traversal manifest was written"
    );
    assert_eq!(
        std::fs::read(node.state_dir.join("bundle-state.json")).expect("the state file"),
        state_before,
        "bundle-state.json changed"
    );
    assert!(
        agent.0.try_wait().expect("the agent's status").is_none(),
        "the agent exited; log:\n{}",
        log_tail()
    );
}
