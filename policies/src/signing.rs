//! Ed25519 keys and signatures: policy bundles are signed by whoever
//! approves them ([`bundle`]), and the gateway signs checkpoints of its
//! audit trail with a key of its own.
//!
//! One crypto stack: aws-lc-rs, already in the build through rustls and
//! rcgen.
//!
//! # Key files
//!
//! `clawgress keys init --dir DIR` writes, per pair `NAME`:
//!
//! - `NAME.key`: the private key, PKCS#8 in PEM (`BEGIN PRIVATE KEY`), mode
//!   0600. A private key file that its group or others may read is refused
//!   when loaded: a key others could copy signs nothing.
//! - `NAME.pub`: the public key, SubjectPublicKeyInfo in PEM
//!   (`BEGIN PUBLIC KEY`), readable by anyone (`openssl pkey -pubin -in
//!   NAME.pub -text` reads it).
//!
//! A key is named by its **key id**: the first 16 hex digits of the SHA-256
//! of its 32 raw public-key bytes. Signatures carry the id so a verifier
//! holding several keys (a rotation) knows which one to try, and a
//! signature by an unknown key is reported as such.
//!
//! Every signed message starts with a domain tag (`clawgress-policy-bundle/v1`,
//! `clawgress-audit-checkpoint/v1`), so a signature made for one purpose is
//! never valid for another, even under the same key.

pub mod bundle;
pub mod keys;

pub use bundle::{BundleSignature, SignatureProblem, sign_bundle, signed_content, verify_bundle};
pub use keys::{KeyError, KeyRing, SigningKey, VerifyingKey, init_key_pair, key_id};

#[cfg(test)]
mod tests;
