//! `tls:` — minimum standards towards destinations (seed §7.1).

use std::fmt;

use base64::Engine as _;
use serde::de::{Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::diagnostic::{hinted, missing_key};
use crate::located::Located;
use crate::model::or_default;
use crate::pattern::DomainPattern;

/// `tls:` — versions, certificate checks and pins for connections the
/// gateway itself opens with TLS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsPolicy {
    /// Oldest TLS version accepted: `"TLS1.2"` (default) or `"TLS1.3"`.
    pub min_version: Located<TlsVersion>,
    /// Version offered first: `"TLS1.3"` by default. Not below `min_version`.
    pub preferred_version: Located<TlsVersion>,
    /// Check destination certificates against the trusted roots.
    pub verify_certificates: bool,
    /// Accept self-signed destination certificates (off by default).
    pub allow_self_signed: bool,
    /// Certificate pins per domain: the destination's public key must match
    /// one of them.
    #[serde(deserialize_with = "or_default")]
    pub pins: Vec<PinSet>,
}

impl Default for TlsPolicy {
    fn default() -> Self {
        TlsPolicy {
            min_version: Located::unlocated(TlsVersion::Tls12),
            preferred_version: Located::unlocated(TlsVersion::Tls13),
            verify_certificates: true,
            allow_self_signed: false,
            pins: Vec::new(),
        }
    }
}

/// A TLS protocol version, written `"TLS1.2"` or `"TLS1.3"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
pub enum TlsVersion {
    #[serde(rename = "TLS1.2")]
    Tls12,
    #[serde(rename = "TLS1.3")]
    Tls13,
}

impl TlsVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "TLS1.2",
            TlsVersion::Tls13 => "TLS1.3",
        }
    }
}

/// `tls.pins[]`: the accepted public keys for one domain pattern.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawPinSet")]
pub struct PinSet {
    /// The destination the pins apply to (exact or `*.` wildcard).
    pub domain: Located<DomainPattern>,
    /// `sha256/<base64 of the SHA-256 of the certificate's SPKI>`.
    pub pins: Vec<Located<SpkiPin>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPinSet {
    domain: Option<Located<DomainPattern>>,
    pins: Option<Vec<Located<SpkiPin>>>,
}

impl TryFrom<RawPinSet> for PinSet {
    type Error = String;

    fn try_from(raw: RawPinSet) -> Result<Self, String> {
        Ok(PinSet {
            domain: missing_key(raw.domain, "domain", "domain: api.example.com")?,
            pins: missing_key(raw.pins, "pins", "pins: [\"sha256/<base64>\"]")?,
        })
    }
}

/// One certificate pin.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SpkiPin {
    /// The SHA-256 digest of a SubjectPublicKeyInfo.
    Sha256([u8; 32]),
    /// The seed's literal `sha256/...`: a placeholder that pins nothing. It
    /// is accepted so the seed loads as written, and reported as a warning.
    Placeholder,
}

const PIN_HINT: &str = "write sha256/<base64 of the SPKI SHA-256>, e.g. from \
    `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64`";

impl fmt::Display for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpkiPin::Sha256(digest) => {
                write!(f, "sha256/{}", base64::engine::general_purpose::STANDARD.encode(digest))
            }
            SpkiPin::Placeholder => f.write_str("sha256/..."),
        }
    }
}

impl<'de> Deserialize<'de> for SpkiPin {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pin;
        impl Visitor<'_> for Pin {
            type Value = SpkiPin;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a pin like sha256/<base64>")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<SpkiPin, E> {
                let Some(encoded) = text.trim().strip_prefix("sha256/") else {
                    return Err(hinted(format!("'{text}' is not a sha256/ pin"), PIN_HINT));
                };
                if encoded == "..." {
                    return Ok(SpkiPin::Placeholder);
                }
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|_| hinted(format!("the pin '{text}' is not valid base64"), PIN_HINT))?;
                let digest: [u8; 32] = bytes.try_into().map_err(|bytes: Vec<u8>| {
                    hinted(
                        format!("the pin '{text}' is {} bytes; a SHA-256 digest is 32", bytes.len()),
                        PIN_HINT,
                    )
                })?;
                Ok(SpkiPin::Sha256(digest))
            }
        }
        deserializer.deserialize_str(Pin)
    }
}
