//! How long an agent takes to admit a large bundle: a ~1 MiB payload of 100 StaticPod and
//! YurtStaticSet items with big templates, signed by one key and by two.
//!
//! `cargo bench --bench verify` prints, per case, min / median / p99 in milliseconds of:
//! - `admit`: the whole check on a node (envelope, signatures, payload parse and item
//!   validation, expiry, clock, anti-rollback, targeting), state in memory;
//! - `accept`: the same plus loading and atomically saving `bundle-state.json` (fsync);
//! - `envelope+signatures`: JSON, base64 and Ed25519 over the PAE only;
//! - `payload parse`: the verified bytes into typed, checked items only; of which reading
//!   the JSON, and checking the items as the agent checks objects from the cluster;
//! - `applying: render items`: after admission, rendering every item's manifest (what the
//!   agent does once, when it applies the bundle; not part of admission).
//!
//! The target for `admit` is under 5 ms.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use staticpod_puller::bundle::{
    self, BundleState, Envelope, EnvelopeLimits, PrivateKey, PublicKey, StateStore, TrustPolicy,
};

const ITEMS: usize = 100;
const ITERATIONS: usize = 200;

/// One item: a realistic static pod (an etcd- or ingress-like workload) padded with env vars
/// and annotations to about 10 KiB of YAML.
fn item(i: usize) -> String {
    let kind = if i.is_multiple_of(2) {
        "StaticPod"
    } else {
        "YurtStaticSet"
    };
    let mut s = String::new();
    let _ = write!(
        s,
        "apiVersion: apps.openyurt.io/v1alpha1\nkind: {kind}\nmetadata:\n  name: app-{i}\n  namespace: kube-system\n  labels: {{app: app-{i}, tier: edge}}\n  annotations:\n"
    );
    for a in 0..12 {
        let _ = writeln!(
            s,
            "    example.com/note-{a}: \"{}\"",
            "release note text for the operators of this edge site ".repeat(2)
        );
    }
    let _ = write!(
        s,
        "spec:\n  staticPodManifest: app-{i}\n  upgradeStrategy:\n    type: AdvancedRollingUpdate\n    maxUnavailable: 10%\n  template:\n    metadata:\n      labels: {{app: app-{i}}}\n      annotations: {{prometheus.io/scrape: \"true\", prometheus.io/port: \"9100\"}}\n    spec:\n      hostNetwork: true\n      priorityClassName: system-node-critical\n      containers:\n"
    );
    for (c, image) in [
        ("main", "registry.example.com/edge/app"),
        ("sidecar", "registry.example.com/edge/proxy"),
    ] {
        let _ = write!(
            s,
            "      - name: {c}\n        image: {image}:1.{i}.0\n        command: [/usr/local/bin/{c}, --config=/etc/app/config.yaml, --log-level=info]\n        ports:\n        - {{containerPort: {}, name: http, protocol: TCP}}\n        resources:\n          requests: {{cpu: 100m, memory: 128Mi}}\n          limits: {{cpu: \"1\", memory: 512Mi}}\n        livenessProbe:\n          httpGet: {{path: /healthz, port: {}}}\n          periodSeconds: 10\n        volumeMounts:\n        - {{name: config, mountPath: /etc/app, readOnly: true}}\n        - {{name: data, mountPath: /var/lib/app}}\n        env:\n",
            8000 + i,
            8000 + i
        );
        for e in 0..14 {
            let _ = writeln!(
                s,
                "        - {{name: SETTING_{e}, value: \"value-{e}-for-item-{i}-{}\"}}",
                "x".repeat(48)
            );
        }
    }
    let _ = write!(
        s,
        "      volumes:\n      - {{name: config, hostPath: {{path: /etc/app-{i}, type: DirectoryOrCreate}}}}\n      - {{name: data, hostPath: {{path: /var/lib/app-{i}, type: DirectoryOrCreate}}}}\n"
    );
    s
}

struct Stats {
    min: Duration,
    median: Duration,
    p99: Duration,
}

fn measure(mut f: impl FnMut()) -> Stats {
    for _ in 0..5 {
        f();
    }
    let mut times: Vec<Duration> = (0..ITERATIONS)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    Stats {
        min: times[0],
        median: times[times.len() / 2],
        p99: times[(times.len() * 99).div_ceil(100) - 1],
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(what: &str, s: &Stats) {
    println!(
        "  {what:<22} min {:>7.3} ms   median {:>7.3} ms   p99 {:>7.3} ms",
        ms(s.min),
        ms(s.median),
        ms(s.p99)
    );
}

fn main() {
    let now = Timestamp::now();
    let items: Vec<String> = (0..ITEMS).map(item).collect();
    let items = items.join("---\n");
    let keys: Vec<PrivateKey> = (0..2)
        .map(|_| PrivateKey::generate().expect("keygen"))
        .collect();
    let publics: Vec<PublicKey> = keys.iter().map(|k| k.public_key().clone()).collect();
    let day = Duration::from_secs(86_400);
    let labels = BTreeMap::new();
    let limits = EnvelopeLimits::default();
    let dir = std::env::temp_dir().join(format!("staticpod-puller-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a state directory");

    for signers in [1, 2] {
        let envelope = bundle::sign(&items, &keys[..signers], 1, day, None, now).expect("signs");
        let policy = TrustPolicy::new(publics.clone(), signers).expect("policy");
        let payload = Envelope::parse(&envelope, &limits).expect("parses").payload;
        println!(
            "{ITEMS} items, payload {} bytes ({:.2} MiB), envelope {} bytes, {signers} signature(s), threshold {signers}; {ITERATIONS} iterations",
            payload.len(),
            payload.len() as f64 / f64::from(1 << 20),
            envelope.len()
        );
        let admit = measure(|| {
            let mut state = BundleState::default();
            let verified = policy
                .admit(black_box(&envelope), "edge-1", &labels, &mut state, now)
                .expect("admitted");
            black_box(verified);
        });
        report("admit", &admit);
        let store = StateStore::new(&dir);
        let accept = measure(|| {
            let _ = std::fs::remove_file(store.path());
            let verified = bundle::accept(
                &policy,
                &store,
                black_box(&envelope),
                "edge-1",
                &labels,
                now,
            )
            .expect("accepted");
            black_box(verified);
        });
        report("accept (state fsync)", &accept);
        let signatures = measure(|| {
            let parsed = Envelope::parse(black_box(&envelope), &limits).expect("parses");
            let check = parsed.verify(policy.keys());
            assert_eq!(check.valid.len(), signers);
        });
        report("envelope+signatures", &signatures);
        let parse = measure(|| {
            let bundle = bundle::payload::parse(black_box(&payload), 256).expect("parses");
            black_box(bundle);
        });
        report("payload parse", &parse);
        let bundle = bundle::payload::parse(&payload, 256).expect("parses");
        let json = measure(|| {
            let value: serde_json::Value =
                serde_json::from_slice(black_box(&payload)).expect("JSON");
            black_box(value);
        });
        report("  of which JSON read", &json);
        let check = measure(|| {
            for item in &bundle.items {
                item.check().expect("valid");
            }
        });
        report("  of which item checks", &check);
        let render = measure(|| {
            let (objects, refused) = staticpod_puller::desired::bundle_objects(&bundle);
            assert!(refused.is_empty());
            black_box(objects);
        });
        report("applying: render items", &render);
        let verdict = if admit.median < Duration::from_millis(5) {
            "under"
        } else {
            "OVER"
        };
        println!("  admit median is {verdict} the 5 ms target\n");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
