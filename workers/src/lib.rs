//! The job model (`job`), extraction (`extract`), the workers' credentials
//! (`credentials`) and the fetch backends: `http` (reqwest through the
//! gateway) and `chromium` (headless Chromium through the gateway).

pub mod agent;
pub mod chromium;
pub mod credentials;
pub mod extract;
pub mod http;
pub mod job;
pub mod outcome;
pub mod steel;

pub use job::{Job, JobError, JobKind, Priority, parse_job};
pub use outcome::{FetchError, Fetched};
