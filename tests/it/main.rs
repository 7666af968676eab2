//! End-to-end tests: one test binary (linking once on 2 cores), one module per area.

mod agent;
mod bundle_cli;
mod dev_cluster;
mod kubectl;
mod sim_conformance;
mod support;
