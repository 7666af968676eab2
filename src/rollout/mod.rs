//! Rolling upgrades: upgrade slots (Leases), the plan, the upgrade itself with its journal,
//! waiting for readiness and rollback, and the Events that report them.

pub mod events;
pub mod journal;
pub mod plan;
pub mod slots;
pub mod upgrade;
