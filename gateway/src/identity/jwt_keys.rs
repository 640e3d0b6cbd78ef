//! Reads JWT verification keys named by the agents file: HMAC secrets from a file or an
//! environment variable (never inline), public keys from PEM files.

use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

/// Key files are tiny; refuse anything that is clearly not one.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// What went wrong, without the location (the caller knows where the setting was written).
#[derive(Debug)]
pub(super) struct KeyProblem {
    pub message: String,
    pub hint: Option<&'static str>,
}

impl KeyProblem {
    fn new(message: impl Into<String>, hint: Option<&'static str>) -> Self {
        Self {
            message: message.into(),
            hint,
        }
    }
}

pub(super) fn resolve(base_dir: &Path, configured: &str) -> PathBuf {
    let path = Path::new(configured);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

pub(super) fn hmac_from_file(algorithm: Algorithm, path: &Path) -> Result<DecodingKey, KeyProblem> {
    let mut secret = read_key_file(path)?;
    // `echo secret > file` leaves a newline that is not part of the secret.
    while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        secret.pop();
    }
    hmac_key(algorithm, &secret)
}

pub(super) fn hmac_from_env(algorithm: Algorithm, variable: &str) -> Result<DecodingKey, KeyProblem> {
    let secret = match std::env::var(variable) {
        Ok(secret) => secret,
        Err(std::env::VarError::NotPresent) => {
            return Err(KeyProblem::new(
                format!("environment variable `{variable}` is not set"),
                Some("export it in the gateway's environment (e.g. a systemd EnvironmentFile) or use secret_file"),
            ));
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(KeyProblem::new(
                format!("environment variable `{variable}` is not valid UTF-8"),
                Some("use secret_file for binary secrets"),
            ));
        }
    };
    hmac_key(algorithm, secret.as_bytes())
}

fn hmac_key(algorithm: Algorithm, secret: &[u8]) -> Result<DecodingKey, KeyProblem> {
    // RFC 7518 section 3.2: the key must be at least as long as the hash output.
    let minimum = match algorithm {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    };
    if secret.len() < minimum {
        return Err(KeyProblem::new(
            format!(
                "the {algorithm:?} secret is {} bytes; at least {minimum} are required",
                secret.len()
            ),
            Some("generate one with `openssl rand -base64 48`"),
        ));
    }
    Ok(DecodingKey::from_secret(secret))
}

pub(super) fn public_key_from_file(algorithm: Algorithm, path: &Path) -> Result<DecodingKey, KeyProblem> {
    let pem = read_key_file(path)?;
    let text = String::from_utf8_lossy(&pem);
    if text.contains("PRIVATE KEY-----") {
        return Err(KeyProblem::new(
            format!("`{}` holds a private key", path.display()),
            Some("give the gateway only the public key, e.g. `openssl pkey -in key.pem -pubout -out pub.pem`"),
        ));
    }
    let family = algorithm.family();
    let is_public_pem = text.contains("-----BEGIN PUBLIC KEY-----")
        || (family == AlgorithmFamily::Rsa && text.contains("-----BEGIN RSA PUBLIC KEY-----"));
    let parsed = if is_public_pem {
        match family {
            AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem).ok(),
            AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem).ok(),
            AlgorithmFamily::Ed => DecodingKey::from_ed_pem(&pem).ok(),
            AlgorithmFamily::Hmac => None,
        }
    } else {
        None
    };
    parsed.ok_or_else(|| {
        KeyProblem::new(
            format!("`{}` is not a PEM public key usable with {algorithm:?}", path.display()),
            Some("expected `-----BEGIN PUBLIC KEY-----` holding a key of the algorithm's type"),
        )
    })
}

fn read_key_file(path: &Path) -> Result<Vec<u8>, KeyProblem> {
    let metadata = std::fs::metadata(path).map_err(|e| {
        KeyProblem::new(
            format!("cannot read key file `{}`: {e}", path.display()),
            Some("relative paths are resolved against the agents file's directory"),
        )
    })?;
    if !metadata.is_file() {
        return Err(KeyProblem::new(
            format!("`{}` is not a regular file", path.display()),
            None,
        ));
    }
    if metadata.len() > MAX_KEY_FILE_BYTES {
        return Err(KeyProblem::new(
            format!("`{}` is too large to be a key file", path.display()),
            None,
        ));
    }
    std::fs::read(path).map_err(|e| KeyProblem::new(format!("cannot read key file `{}`: {e}", path.display()), None))
}
