//! The embedded dev cluster: an in-memory, Kubernetes-compatible API server and simulated
//! kubelets. Tests, the demo and the benchmarks run against it. Agent code never imports it.

pub mod admission;
pub mod apiserver;
pub mod cluster;
pub mod error;
pub mod kubelet;
pub mod patch;
pub mod resource;
pub mod runtime;
pub mod selector;
pub mod store;
