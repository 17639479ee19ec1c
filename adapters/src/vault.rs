//! Secrets at rest, encrypted with age.
//!
//! `ENCRYPTION_KEY` holds one or more age identities (`AGE-SECRET-KEY-1…`), one per
//! line. New secrets are encrypted to the first; any of them may decrypt, so a key is
//! rotated by putting the new identity first, running `crmsync rotate-key` (which
//! re-encrypts every stored secret to it), then dropping the old one.

use std::io::Read;
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

/// Why a secret could not be sealed or opened. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("ENCRYPTION_KEY line {line} is not an age identity (AGE-SECRET-KEY-1…)")]
    BadIdentity { line: usize },
    #[error("ENCRYPTION_KEY holds no age identity")]
    NoIdentity,
    #[error("encryption failed: {0}")]
    Encrypt(String),
    #[error(
        "none of the ENCRYPTION_KEY identities can decrypt this secret (was the key rotated away?)"
    )]
    Decrypt,
}

/// The identities of `ENCRYPTION_KEY`.
pub struct Vault {
    identities: Vec<age::x25519::Identity>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Vault({} identities, [redacted])", self.identities.len())
    }
}

impl Vault {
    pub fn parse(text: &str) -> Result<Self, VaultError> {
        let mut identities = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let id = age::x25519::Identity::from_str(line)
                .map_err(|_| VaultError::BadIdentity { line: n + 1 })?;
            identities.push(id);
        }
        if identities.is_empty() {
            return Err(VaultError::NoIdentity);
        }
        Ok(Self { identities })
    }

    /// A fresh identity, as `age-keygen` makes: the vault and its `ENCRYPTION_KEY` text.
    pub fn generate() -> (Self, String) {
        let id = age::x25519::Identity::generate();
        let text = id.to_string().expose_secret().to_owned();
        (
            Self {
                identities: vec![id],
            },
            text,
        )
    }

    /// Encrypts to the first identity.
    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        let recipient = self.identities[0].to_public();
        age::encrypt(&recipient, plaintext).map_err(|e| VaultError::Encrypt(e.to_string()))
    }

    /// Decrypts with whichever identity can.
    pub fn open(&self, ciphertext: &[u8]) -> Result<Vec<u8>, VaultError> {
        let decryptor =
            age::Decryptor::new_buffered(ciphertext).map_err(|_| VaultError::Decrypt)?;
        let mut reader = decryptor
            .decrypt(self.identities.iter().map(|i| i as &dyn age::Identity))
            .map_err(|_| VaultError::Decrypt)?;
        let mut out = Vec::new();
        reader
            .read_to_end(&mut out)
            .map_err(|_| VaultError::Decrypt)?;
        Ok(out)
    }

    /// Whether `ciphertext` is sealed to the first identity already.
    pub fn is_current(&self, ciphertext: &[u8]) -> bool {
        age::decrypt(&self.identities[0], ciphertext).is_ok()
    }

    /// A key for signing OAuth state, derived from the first identity.
    pub fn signing_key(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"crmsync oauth state v1\0");
        h.update(self.identities[0].to_string().expose_secret().as_bytes());
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_and_survive_a_rotation() {
        let (old, old_text) = Vault::generate();
        let sealed = old.seal(b"refresh-token").unwrap();
        assert_ne!(sealed, b"refresh-token");
        assert_eq!(old.open(&sealed).unwrap(), b"refresh-token");

        let (_, new_text) = Vault::generate();
        let rotated = Vault::parse(&format!("# new first\n{new_text}\n{old_text}\n")).unwrap();
        assert_eq!(rotated.open(&sealed).unwrap(), b"refresh-token");
        assert!(!rotated.is_current(&sealed));
        let resealed = rotated.seal(b"refresh-token").unwrap();
        assert!(rotated.is_current(&resealed));

        let new_only = Vault::parse(&new_text).unwrap();
        assert!(matches!(new_only.open(&sealed), Err(VaultError::Decrypt)));
        assert_eq!(new_only.open(&resealed).unwrap(), b"refresh-token");
        assert_ne!(old.signing_key(), new_only.signing_key());
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        let err = Vault::parse("AGE-SECRET-KEY-1NOTAKEY\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(!err.contains("NOTAKEY"));
        assert!(matches!(
            Vault::parse("# only a comment\n"),
            Err(VaultError::NoIdentity)
        ));
        let (v, text) = Vault::generate();
        assert!(!format!("{v:?}").contains(&text[16..]));
    }
}
