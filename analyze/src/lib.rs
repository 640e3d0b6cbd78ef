//! Analysis over the audit trail, off the request path:
//!
//! | module | job |
//! |---|---|
//! | [`line`] | one audit line, decoded borrowed (only the fields used) |
//! | [`engine`] | per-agent baselines and the detectors (seed 001 §5.7, seed 002 §8.2) |
//! | [`anomaly`] | the `anomaly` event published on `alerts.<severity>` |
//! | [`source`] | where lines come from: a trail file (`--follow`), the `audit.>` streams |
//! | [`sink`] | where anomalies go: stdout, NATS, and the control API for quarantine |
//! | [`search`] | `clawgress audit search`: filters over a trail or the streams |
//! | [`evidence`] | `clawgress audit evidence`: a bundle with a SHA-256 manifest |
//! | [`replay`] | `clawgress policy diff`: recorded decisions under a candidate policy |

pub mod anomaly;
pub mod engine;
pub mod evidence;
pub mod line;
pub mod replay;
pub mod run;
pub mod search;
pub mod sink;
pub mod source;
pub mod synth;

pub use anomaly::Anomaly;
pub use engine::{Engine, Settings, Stats};
pub use line::Line;

#[cfg(test)]
mod tests;
