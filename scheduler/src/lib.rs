//! The job pipeline on NATS JetStream: streams and consumers (`streams`),
//! the dispatch loop with retries and dead letters (`run`), backoff
//! (`retry`), and the shapes of results and dead letters (`result`).

pub mod result;
pub mod retry;
pub mod run;
pub mod streams;

pub use run::{Backends, SchedulerConfig, run};
