//! `destination_asn` and `destination_geo` (seed 001 §6.2) from the
//! MaxMind-format databases the policy names (`geoip: {asn_db, country_db}`).
//!
//! The databases are read into memory once per policy load (a few MB for
//! the ASN and country editions). Memory-mapping would share pages between
//! processes, but the `maxminddb` crate's mmap reader is `unsafe` and the
//! workspace forbids unsafe code. A lookup walks the search tree and decodes
//! one integer and one two-letter code in place: no allocation per request.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clawgress_policies::PolicyBundle;
use clawgress_policies::located::Located;
use maxminddb::{PathElement, Reader};
use serde::{Deserialize, Serialize, Serializer};

/// The databases in force.
pub struct GeoIp {
    asn: Option<Reader<Vec<u8>>>,
    country: Option<Reader<Vec<u8>>>,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoIp")
            .field("asn", &self.asn.is_some())
            .field("country", &self.country.is_some())
            .finish()
    }
}

/// What the databases say about one address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GeoInfo {
    pub asn: Option<u32>,
    pub country: Option<CountryCode>,
}

/// An ISO 3166-1 alpha-2 country code (`"DE"`), stored inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    /// Two ASCII letters, upper-cased; anything else is not a country code.
    pub fn new(text: &str) -> Option<CountryCode> {
        match text.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(CountryCode([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        // Built only from two ASCII letters.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl std::fmt::Debug for CountryCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for CountryCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Only the field the audit line needs; the organization name is skipped.
#[derive(Deserialize)]
struct AsnRecord {
    autonomous_system_number: Option<u32>,
}

const COUNTRY_PATH: [PathElement<'static>; 2] = [PathElement::Key("country"), PathElement::Key("iso_code")];

impl GeoIp {
    /// Opens the databases `geoip:` names, relative to the policy file.
    /// `None` when it names none. A database that cannot be read refuses
    /// the policy, at the line that names it.
    pub fn load(bundle: &PolicyBundle) -> Result<Option<GeoIp>, String> {
        let settings = &bundle.document.geoip;
        let base = Path::new(&bundle.source).parent().unwrap_or(Path::new("."));
        let open = |field: &str, at: &Option<Located<String>>| -> Result<Option<Reader<Vec<u8>>>, String> {
            let Some(at) = at else { return Ok(None) };
            let path: PathBuf = base.join(&at.value);
            Reader::open_readfile(&path).map(Some).map_err(|error| {
                format!(
                    "{}:{}:{}: geoip.{field}: cannot read the MaxMind database {} ({error}); \
                     the path is relative to the policy file: point it at a GeoLite2/GeoIP2 .mmdb, \
                     or remove geoip.{field} to record no {}",
                    bundle.source,
                    at.line,
                    at.column,
                    path.display(),
                    if field == "asn_db" {
                        "destination_asn"
                    } else {
                        "destination_geo"
                    }
                )
            })
        };
        let asn = open("asn_db", &settings.asn_db)?;
        let country = open("country_db", &settings.country_db)?;
        if asn.is_none() && country.is_none() {
            return Ok(None);
        }
        Ok(Some(GeoIp { asn, country }))
    }

    /// The ASN and country of `ip`; fields the databases do not have stay
    /// `None` (a private address, an IPv6 address in an IPv4 database).
    pub fn lookup(&self, ip: IpAddr) -> GeoInfo {
        let ip = ip.to_canonical();
        let asn = self.asn.as_ref().and_then(|reader| {
            let found = reader.lookup(ip).ok()?;
            found.decode::<AsnRecord>().ok()??.autonomous_system_number
        });
        let country = self.country.as_ref().and_then(|reader| {
            let found = reader.lookup(ip).ok()?;
            let code: &str = found.decode_path(&COUNTRY_PATH).ok()??;
            CountryCode::new(code)
        });
        GeoInfo { asn, country }
    }
}

#[cfg(test)]
mod tests;
