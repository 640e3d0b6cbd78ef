//! The job pipeline on NATS JetStream: streams and consumers (`streams`),
//! the dispatch loop with retries and dead letters (`run`), per-host slots
//! and politeness shared by every scheduler (`hosts`), backoff (`retry`), the shapes of results and dead letters (`result`), and the
//! scheduler's Prometheus metrics (`metrics`).

pub mod hosts;
pub mod metrics;
pub mod result;
pub mod retry;
pub mod run;
pub mod streams;

pub use run::{Backends, PolitenessScope, SchedulerConfig, run};
