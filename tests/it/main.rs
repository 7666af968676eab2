//! End-to-end tests: one test binary (linking once on 2 cores), one module per area.

mod admission;
mod agent;
mod bundle_cli;
mod bundle_hostile;
mod bundle_offline;
mod containerd;
mod dev_cluster;
mod join;
mod kubectl;
mod layering;
mod sim_conformance;
mod support;
