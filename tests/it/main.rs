//! End-to-end tests: one test binary (linking once on 2 cores), one module per area.

mod sim_conformance;
