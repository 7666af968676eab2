//! Rolling upgrades: grants (Leases the controller hands out), the plan, the upgrade itself with its journal,
//! waiting for readiness and rollback, and the Events that report them.

pub mod events;
pub mod grant;
pub mod journal;
pub mod plan;
pub mod upgrade;
