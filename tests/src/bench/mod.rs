//! The benchmarks of `cargo xtask bench` (driven by `src/bin/bench.rs`), apart from the test
//! harness they build on: end-to-end forwarding against Linux ECMP (`e2e`), membership by
//! advertisement (`membership`), the control plane at 65,536 addresses (`control`) and route
//! export (`export`).
pub mod control;
pub mod e2e;
pub mod export;
pub mod membership;
