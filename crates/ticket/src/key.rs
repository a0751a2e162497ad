//! The Ed25519 key pair that mints and checks tickets, and its PEM files.
//!
//! Private keys are PKCS#8 PEM (`BEGIN PRIVATE KEY`), public keys SPKI PEM
//! (`BEGIN PUBLIC KEY`): the forms `openssl genpkey -algorithm ed25519` and
//! `openssl pkey -pubout` use, so operators can make or inspect keys with
//! standard tools.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
#[cfg(any(test, feature = "mint"))]
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::pkcs8::{DecodePublicKey, EncodePublicKey};

use crate::KeyError;

/// A string wiped from memory when dropped: holds private-key PEM text.
pub use ed25519_dalek::pkcs8::spki::der::zeroize::Zeroizing;

/// The private key that mints tickets. Only the management plane has it,
/// and only crates that enable this crate's `mint` feature can name it
/// (the minter; never the gateway).
///
/// `Debug` shows only the public half, so the key cannot leak into logs.
#[cfg(any(test, feature = "mint"))]
#[derive(Clone)]
pub struct SigningKey(pub(crate) ed25519_dalek::SigningKey);

/// The public key the gateway checks tickets with; it cannot mint them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VerifyingKey(pub(crate) ed25519_dalek::VerifyingKey);

#[cfg(any(test, feature = "mint"))]
impl SigningKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> SigningKey {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("the operating system's random generator");
        SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// The key derived from a fixed 32-byte seed. Meant for tests and fuzzing,
    /// where a reproducible key is wanted; real keys come from [`generate`](Self::generate).
    pub fn from_seed(seed: [u8; 32]) -> SigningKey {
        SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// The public half, to give to gateways.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey(self.0.verifying_key())
    }

    /// The key as PKCS#8 PEM text (`-----BEGIN PRIVATE KEY-----`).
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        self.0
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(KeyError::Encode)
    }

    /// Reads a key from PKCS#8 PEM text. Surrounding whitespace is ignored.
    pub fn from_pkcs8_pem(pem: &str) -> Result<SigningKey, KeyError> {
        ed25519_dalek::SigningKey::from_pkcs8_pem(pem.trim())
            .map(SigningKey)
            .map_err(KeyError::InvalidPrivateKey)
    }

    /// Reads a PKCS#8 PEM key file.
    pub fn load(path: impl AsRef<Path>) -> Result<SigningKey, KeyError> {
        let path = path.as_ref();
        let text = Zeroizing::new(read(path)?);
        SigningKey::from_pkcs8_pem(&text)
    }

    /// Writes the key as PKCS#8 PEM to a new file readable only by its owner
    /// (mode 0600). Refuses to overwrite an existing file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), KeyError> {
        write_new(path.as_ref(), self.to_pkcs8_pem()?.as_bytes(), 0o600)
    }
}

#[cfg(any(test, feature = "mint"))]
impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("verifying_key", &self.verifying_key())
            .finish_non_exhaustive()
    }
}

/// The length of a key id's text: 8 bytes in base64url.
pub const KEY_ID_LEN: usize = 11;

impl VerifyingKey {
    /// The key's id: the first 8 bytes of the SHA-256 of its 32 raw bytes,
    /// base64url ([`KEY_ID_LEN`] characters). Every ticket names the id of
    /// the key that signed it, so a gateway checks one signature, and a
    /// ticket from a key it does not know gets its own refusal.
    pub fn id(&self) -> String {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(self.0.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..8])
    }

    /// The key as SPKI PEM text (`-----BEGIN PUBLIC KEY-----`).
    pub fn to_public_key_pem(&self) -> Result<String, KeyError> {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .map_err(KeyError::EncodePublic)
    }

    /// Reads a key from SPKI PEM text. Surrounding whitespace is ignored.
    pub fn from_public_key_pem(pem: &str) -> Result<VerifyingKey, KeyError> {
        ed25519_dalek::VerifyingKey::from_public_key_pem(pem.trim())
            .map(VerifyingKey)
            .map_err(KeyError::InvalidPublicKey)
    }

    /// Reads an SPKI PEM public key file.
    pub fn load(path: impl AsRef<Path>) -> Result<VerifyingKey, KeyError> {
        VerifyingKey::from_public_key_pem(&read(path.as_ref())?)
    }

    /// Writes the key as SPKI PEM to a new file (mode 0644 before the umask:
    /// it is public). Refuses to overwrite an existing file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), KeyError> {
        write_new(path.as_ref(), self.to_public_key_pem()?.as_bytes(), 0o644)
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The raw 32 bytes in base64url: short enough to compare by eye.
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0.as_bytes());
        write!(f, "VerifyingKey({text})")
    }
}

fn read(path: &Path) -> Result<String, KeyError> {
    fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Creates `path` with `mode` and writes `contents`.
///
/// `create_new` both protects an existing key from being clobbered and makes
/// sure the mode applies: an existing file would keep its old, maybe wider,
/// permissions.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), KeyError> {
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(KeyError::AlreadyExists {
                path: path.to_owned(),
            })
        }
        Err(source) => {
            return Err(KeyError::Write {
                path: path.to_owned(),
                source,
            })
        }
    };
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    if let Err(source) = written {
        // A half-written key file would fail to load later with a confusing
        // parse error; better to leave nothing. The write error is what matters.
        drop(file);
        let _ = fs::remove_file(path);
        return Err(KeyError::Write {
            path: path.to_owned(),
            source,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn private_pem_round_trip() {
        let key = SigningKey::generate();
        let pem = key.to_pkcs8_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{}", *pem);
        let back = SigningKey::from_pkcs8_pem(&format!("\n{}\n\n", *pem)).unwrap();
        assert_eq!(back.0.to_bytes(), key.0.to_bytes());
        assert_eq!(back.verifying_key(), key.verifying_key());
    }

    #[test]
    fn public_pem_round_trip() {
        let key = SigningKey::generate().verifying_key();
        let pem = key.to_public_key_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
        assert_eq!(VerifyingKey::from_public_key_pem(&pem).unwrap(), key);
    }

    #[test]
    fn pem_of_the_wrong_kind_is_refused() {
        let key = SigningKey::generate();
        let private = key.to_pkcs8_pem().unwrap();
        let public = key.verifying_key().to_public_key_pem().unwrap();
        assert!(matches!(
            SigningKey::from_pkcs8_pem(&public),
            Err(KeyError::InvalidPrivateKey(_))
        ));
        assert!(matches!(
            VerifyingKey::from_public_key_pem(&private),
            Err(KeyError::InvalidPublicKey(_))
        ));
        assert!(matches!(
            SigningKey::from_pkcs8_pem("not a key"),
            Err(KeyError::InvalidPrivateKey(_))
        ));
    }

    #[test]
    fn reads_a_key_made_elsewhere() {
        // RFC 8410 section 10.3 example private key.
        let pem = "-----BEGIN PRIVATE KEY-----\n\
                   MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
                   -----END PRIVATE KEY-----\n";
        let key = SigningKey::from_pkcs8_pem(pem).unwrap();
        let seed = key.0.to_bytes();
        assert_eq!(&seed[..4], &[0xd4, 0xee, 0x72, 0xdb]);
    }

    #[test]
    fn save_private_key_owner_only_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ticket.key");
        let key = SigningKey::generate();
        key.save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        let back = SigningKey::load(&path).unwrap();
        assert_eq!(back.verifying_key(), key.verifying_key());
    }

    #[test]
    fn save_public_key_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ticket.pub");
        let key = SigningKey::generate().verifying_key();
        key.save(&path).unwrap();
        assert_eq!(VerifyingKey::load(&path).unwrap(), key);
    }

    #[test]
    fn save_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ticket.key");
        fs::write(&path, "precious").unwrap();
        let err = SigningKey::generate().save(&path).unwrap_err();
        assert!(matches!(err, KeyError::AlreadyExists { .. }), "{err:?}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
    }

    #[test]
    fn load_missing_file_names_it() {
        let err = SigningKey::load("/nonexistent/vmgate/ticket.key").unwrap_err();
        assert!(matches!(err, KeyError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/vmgate/ticket.key"));
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let key = SigningKey::from_seed([0x42; 32]);
        let text = format!("{key:?}");
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0x42; 32]);
        assert!(!text.contains(&secret), "{text}");
        assert!(!text.contains("66, 66, 66"), "{text}");
        assert!(text.starts_with("SigningKey { verifying_key: VerifyingKey("));
    }
}
