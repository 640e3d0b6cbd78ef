//! The job model (`job`), extraction (`extract`), the workers' credentials
//! (`credentials`) and the fetch backends: `http` (reqwest through the
//! gateway), `chromium` (headless Chromium through the gateway) and `steel`
//! (Steel Browser servers, one session each, checked against the gateway's
//! audit trail); `page` drives a browser page for both browser backends.

pub mod agent;
pub mod chromium;
pub mod credentials;
pub mod extract;
pub mod gateways;
pub mod http;
mod http_probe;
pub mod job;
pub mod outcome;
pub mod page;
pub mod steel;

pub use job::{Job, JobError, JobKind, Priority, parse_job};
pub use outcome::{FetchError, Fetched};
