//! The in-pod side of a Trainyard step, kept apart from the service so that it builds as a
//! static binary (`trainyard-launch`, for `x86_64-unknown-linux-musl`) that runs in any step
//! image: the artifact store, the step's inputs and outputs, the process handling it shares
//! with the service's local executor, and the launch itself. Every dependency is pure Rust
//! apart from ring; the service (`trainyard`) depends on this crate, never the other way.

pub mod artifacts;
pub mod launch;
pub mod process;
pub mod step;
