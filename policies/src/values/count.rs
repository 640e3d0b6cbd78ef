//! Counts and ports: whole numbers with a valid range.

use std::fmt;
use std::num::NonZeroU32;

use serde::{Deserialize, Deserializer, Serialize};

use super::{Scalar, scalar};
use crate::diagnostic::hinted;

/// Reads a count that must be at least 1 (a burst of 0 would refuse every
/// request), reporting a bad value at the value itself.
pub(crate) fn nonzero_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<NonZeroU32, D::Error> {
    let text = match scalar(deserializer, "a whole number of 1 or more")? {
        Scalar::Text(text) | Scalar::Number(text) => text,
    };
    text.trim()
        .parse::<u32>()
        .ok()
        .and_then(NonZeroU32::new)
        .ok_or_else(|| {
            hinted(
                format!("'{text}' is not a whole number of 1 or more"),
                "write a count like 20",
            )
        })
}

/// A TCP port, 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Port(u16);

impl Port {
    pub fn new(port: u16) -> Option<Self> {
        (port != 0).then_some(Port(port))
    }

    pub fn get(&self) -> u16 {
        self.0
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

const PORT_HINT: &str = "ports are 1-65535";

/// For command-line flags (`--dns-port 5353`); the message is the flag's
/// whole explanation.
impl std::str::FromStr for Port {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        text.trim()
            .parse::<u16>()
            .ok()
            .and_then(Port::new)
            .ok_or_else(|| format!("'{text}' is not a port: {PORT_HINT}"))
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = match scalar(deserializer, "a port number (1-65535)")? {
            Scalar::Text(text) | Scalar::Number(text) => text,
        };
        match text.trim().parse::<i128>() {
            Ok(n) => u16::try_from(n)
                .ok()
                .and_then(Port::new)
                .ok_or_else(|| hinted(format!("port {n} is out of range"), PORT_HINT)),
            Err(_) => Err(hinted(format!("'{text}' is not a port number"), PORT_HINT)),
        }
    }
}
