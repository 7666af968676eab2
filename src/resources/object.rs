//! Which object is meant (kind, namespace, name), and an object refused with the reason.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Which of the two kinds an object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    StaticPod,
    YurtStaticSet,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::StaticPod => "StaticPod",
            Kind::YurtStaticSet => "YurtStaticSet",
        }
    }

    /// Short name, used in slot Lease names.
    pub fn short(self) -> &'static str {
        match self {
            Kind::StaticPod => "sp",
            Kind::YurtStaticSet => "yss",
        }
    }
}

/// Identifies an object: kind, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind.name(), self.namespace, self.name)
    }
}

/// An object this agent will not act on, and why (reported as an Event and a log line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub key: ObjectKey,
    pub uid: String,
    pub reason: String,
}
