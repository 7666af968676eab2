//! The cloud side: status aggregation for StaticPod and YurtStaticSet objects.

pub mod status;
