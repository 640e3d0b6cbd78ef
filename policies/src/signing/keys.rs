//! Ed25519 key files: generating a pair, loading either half, key ids.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

/// DER of an Ed25519 SubjectPublicKeyInfo up to the 32 key bytes
/// (RFC 8410 §4): SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING }.
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
/// Key files are a few hundred bytes; anything much larger is not one.
const MAX_KEY_FILE_BYTES: u64 = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the key file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write the key file {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error(
        "{} already exists; pass --force to replace it (everything signed with the old key then needs the old public key to verify)",
        path.display()
    )]
    Exists { path: PathBuf },
    #[error(
        "the private key {} is readable by its group or others (mode {mode:04o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{}: {problem}", path.display())]
    Malformed { path: PathBuf, problem: &'static str },
    #[error("cannot generate a key pair (the system random source failed)")]
    Generate,
}

/// The id of a public key: the first 16 hex digits of SHA-256 of its raw bytes.
pub fn key_id(public: &[u8]) -> String {
    hex::encode(&Sha256::digest(public)[..8])
}

/// A private key, able to sign. Its `Debug` shows only the key id: the
/// key itself is never formatted, so it can never reach a log.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads `NAME.key`: refused when group or others may read it.
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        check_private_mode(path)?;
        let der = read_pem(path, "PRIVATE KEY")?;
        let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| KeyError::Malformed {
            path: path.to_owned(),
            problem: "not an Ed25519 private key (PKCS#8); create one with `clawgress keys init`",
        })?;
        Ok(SigningKey::from_pair(pair))
    }

    /// A fresh key that lives only in memory (tests, benchmarks).
    pub fn generate() -> Result<SigningKey, KeyError> {
        Ed25519KeyPair::generate()
            .map(SigningKey::from_pair)
            .map_err(|_| KeyError::Generate)
    }

    fn from_pair(pair: Ed25519KeyPair) -> SigningKey {
        let key_id = key_id(pair.public_key().as_ref());
        SigningKey { pair, key_id }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The 64-byte Ed25519 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        out
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(self.pair.public_key().as_ref());
        VerifyingKey::from_bytes(bytes)
    }
}

/// A public key, able to verify.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    bytes: [u8; 32],
    key_id: String,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey").field("key_id", &self.key_id).finish()
    }
}

impl VerifyingKey {
    /// Loads `NAME.pub` (SubjectPublicKeyInfo PEM).
    pub fn load(path: &Path) -> Result<VerifyingKey, KeyError> {
        let der = read_pem(path, "PUBLIC KEY")?;
        let raw = der
            .strip_prefix(&SPKI_PREFIX[..])
            .filter(|raw| raw.len() == 32)
            .ok_or_else(|| KeyError::Malformed {
                path: path.to_owned(),
                problem: "not an Ed25519 public key; use the NAME.pub that `clawgress keys init` wrote",
            })?;
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(raw);
        Ok(VerifyingKey::from_bytes(bytes))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> VerifyingKey {
        VerifyingKey {
            key_id: key_id(&bytes),
            bytes,
        }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.bytes)
            .verify(message, signature)
            .is_ok()
    }

    /// The public key as SubjectPublicKeyInfo PEM.
    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.bytes);
        pem("PUBLIC KEY", &der)
    }
}

/// The public keys a verifier trusts, by key id (several during a rotation).
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: BTreeMap<String, VerifyingKey>,
}

impl KeyRing {
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> KeyRing {
        KeyRing {
            keys: keys.into_iter().map(|k| (k.key_id.clone(), k)).collect(),
        }
    }

    /// Loads each public key file.
    pub fn load(paths: &[PathBuf]) -> Result<KeyRing, KeyError> {
        let keys = paths
            .iter()
            .map(|p| VerifyingKey::load(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KeyRing::new(keys))
    }

    pub fn get(&self, key_id: &str) -> Option<&VerifyingKey> {
        self.keys.get(key_id)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The trusted key ids, for messages.
    pub fn ids(&self) -> String {
        self.keys.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// Writes `DIR/NAME.key` (0600) and `DIR/NAME.pub`; returns both paths.
/// Refuses to replace an existing pair unless `force`.
pub fn init_key_pair(dir: &Path, name: &str, force: bool) -> Result<(PathBuf, PathBuf, String), KeyError> {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    if !force {
        for path in [&private, &public] {
            if path.exists() {
                return Err(KeyError::Exists { path: path.clone() });
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Generate)?;
    let signing = SigningKey::from_pair(pair);
    let verifying = signing.verifying_key();
    write_file(&private, pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes(), 0o600)?;
    write_file(&public, verifying.to_pem().as_bytes(), 0o644)?;
    Ok((private, public, verifying.key_id))
}

/// Written beside the target and renamed over it: a crash never leaves a
/// half-written key, and the private key is never readable by others,
/// not even for a moment.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let write_error = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    let temp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    let mut file = options.open(&temp).map_err(write_error)?;
    // The mode given to open is masked by the umask, and a temp file left
    // from an earlier run keeps its old mode: set it explicitly.
    #[cfg(unix)]
    std::fs::set_permissions(&temp, std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(write_error)?;
    file.write_all(bytes).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    std::fs::rename(&temp, path).map_err(write_error)
}

#[cfg(unix)]
fn check_private_mode(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_mode(_path: &Path) -> Result<(), KeyError> {
    Ok(())
}

fn pem(label: &str, der: &[u8]) -> String {
    let encoded = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in encoded.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER inside the one PEM block labelled `label` in `path`.
fn read_pem(path: &Path, label: &str) -> Result<Vec<u8>, KeyError> {
    use std::io::Read as _;
    let read_error = |source| KeyError::Read {
        path: path.to_owned(),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(read_error)?
        .take(MAX_KEY_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    let malformed = |problem| KeyError::Malformed {
        path: path.to_owned(),
        problem,
    };
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin).ok_or(malformed(if label == "PRIVATE KEY" {
        "no `BEGIN PRIVATE KEY` block: is this the .pub file?"
    } else {
        "no `BEGIN PUBLIC KEY` block: is this the .key file?"
    }))? + begin.len();
    let stop = text[start..]
        .find(&end)
        .ok_or(malformed("the PEM block has no END line"))?;
    let body: String = text[start..start + stop].split_whitespace().collect();
    STANDARD
        .decode(body)
        .map_err(|_| malformed("the PEM block is not valid base64"))
}
