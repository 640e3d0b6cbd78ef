//! Policy bundles for the Clawgress egress gateway: the model, loading with
//! precise errors, domain matching, and compilation for the network layers.
//!
//! ```text
//! load_file / load_str  ->  PolicyBundle { document, warnings, version }
//! CompiledPolicy::compile(&bundle).evaluate(&request, now)  ->  Allow | Deny
//! compile::nftables::render(&bundle, &settings)  ->  the host edge's ruleset
//! ```

pub mod compile;
pub mod diagnostic;
pub mod domain;
pub mod load;
pub mod located;
pub mod matcher;
pub mod model;
pub mod pattern;
pub mod signing;
pub mod summary;
pub mod values;

pub use diagnostic::{Diagnostic, PolicyError};
pub use load::{PolicyBundle, load_file, load_file_verified, load_str};
pub use matcher::{AllowedBy, CompiledPolicy, Denial, DenyReason, MatchOutcome, MatchRequest};
pub use summary::{PolicySummary, summary};

#[cfg(test)]
mod tests;
