//! staticpod-puller: keeps an edge node's static pods in the state its operators declared.

pub mod agent;
pub mod bundle;
pub mod config;
pub mod controller;
#[cfg(feature = "dev-cluster")]
pub mod demo;
pub mod desired;
pub mod images;
pub mod kill_point;
pub mod kubeclient;
pub mod manifest;
pub mod metrics;
pub mod ota;
pub mod resources;
pub mod rollout;
pub mod rules;
#[cfg(feature = "dev-cluster")]
pub mod sim;
