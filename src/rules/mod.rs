//! The rules every part shares, and nothing else: Kubernetes names, durations as operators
//! write them, bundle URLs, and jitter. A leaf: it imports no other module of this crate.

mod duration;
mod jitter;
mod names;
mod url;

pub use duration::HumanDuration;
pub use jitter::{jittered, random_below};
pub use names::{is_dns_label, is_dns_subdomain};
pub use url::{check_url, read_ca_file};
