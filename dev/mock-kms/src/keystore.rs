//! The mock's keys and their material, persisted in one JSON file (mode 0600) so a dev
//! stack keeps its keys across restarts. Ciphertext blobs name their key, like real
//! KMS blobs do, and bind the encryption context as AES-GCM associated data: a wrong
//! context fails authentication exactly like a tampered blob.
//!
//! Blob layout: `"MK1"` ‖ key-id length (1 byte) ‖ key id ‖ 12-byte nonce ‖
//! AES-256-GCM(plaintext) ‖ 16-byte tag.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

const MAGIC: &[u8; 3] = b"MK1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyStoreError {
    #[error("key {0} does not exist")]
    NotFound(String),
    #[error(
        "the ciphertext is not a blob of this KMS, was tampered with, or the encryption context differs"
    )]
    InvalidCiphertext,
    #[error("the ciphertext was made under key {actual}, not the requested {requested}")]
    IncorrectKey { requested: String, actual: String },
    #[error("state file {path}: {problem}")]
    State { path: String, problem: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    arn: String,
    description: String,
    created_unix: u64,
    /// Base64 of the 32-byte AES key. A development mock: on disk, mode 0600.
    material: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    keys: BTreeMap<String, StoredKey>,
    aliases: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub key_id: String,
    pub arn: String,
    pub description: String,
    pub created_unix: u64,
}

pub struct KeyStore {
    path: PathBuf,
    region: String,
    account: String,
    state: RwLock<State>,
}

/// AES-GCM associated data for an encryption context: the pairs sorted by key,
/// length-prefixed so that no two different contexts encode alike.
fn context_aad(context: &BTreeMap<String, String>) -> Vec<u8> {
    let mut aad = Vec::new();
    for (k, v) in context {
        for part in [k, v] {
            aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
    }
    aad
}

/// A random UUID-shaped identifier, as KMS uses for key ids and request ids.
pub fn random_uuid() -> String {
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    let hex = common::hex(&raw);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

impl KeyStore {
    pub fn open(path: &Path, region: &str, account: &str) -> Result<KeyStore, KeyStoreError> {
        let state = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| KeyStoreError::State {
                path: path.display().to_string(),
                problem: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => {
                return Err(KeyStoreError::State {
                    path: path.display().to_string(),
                    problem: e.to_string(),
                });
            }
        };
        Ok(KeyStore {
            path: path.to_path_buf(),
            region: region.to_string(),
            account: account.to_string(),
            state: RwLock::new(state),
        })
    }

    fn save(&self, state: &State) -> Result<(), KeyStoreError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let fail = |e: std::io::Error| KeyStoreError::State {
            path: self.path.display().to_string(),
            problem: e.to_string(),
        };
        let json = serde_json::to_vec_pretty(state).map_err(|e| KeyStoreError::State {
            path: self.path.display().to_string(),
            problem: e.to_string(),
        })?;
        let tmp = self.path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(fail)?;
        file.write_all(&json).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, &self.path).map_err(fail)?;
        Ok(())
    }

    /// Resolves a key id, ARN or alias (`alias/name` or its ARN) to a key id.
    pub fn resolve(&self, reference: &str) -> Result<String, KeyStoreError> {
        let state = self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // An ARN must be this store's region and account, as KMS resolves only its own.
        let own_prefix = format!("arn:aws:kms:{}:{}:", self.region, self.account);
        let reference = if reference.starts_with("arn:") {
            reference
                .strip_prefix(&own_prefix)
                .ok_or_else(|| KeyStoreError::NotFound(reference.to_string()))?
        } else {
            reference
        };
        let reference = reference
            .strip_prefix("key/")
            .unwrap_or(reference)
            .to_string();
        let id = match state.aliases.get(&reference) {
            Some(id) => id.clone(),
            None => reference.clone(),
        };
        if state.keys.contains_key(&id) {
            Ok(id)
        } else {
            Err(KeyStoreError::NotFound(reference))
        }
    }

    pub fn create_key(
        &self,
        description: &str,
        alias: Option<&str>,
    ) -> Result<KeyInfo, KeyStoreError> {
        let key_id = random_uuid();
        let mut material = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(material.as_mut());
        let stored = StoredKey {
            arn: format!("arn:aws:kms:{}:{}:key/{key_id}", self.region, self.account),
            description: description.to_string(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
            material: B64.encode(material.as_ref()),
        };
        let mut state = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.keys.insert(key_id.clone(), stored.clone());
        if let Some(alias) = alias {
            state.aliases.insert(alias.to_string(), key_id.clone());
        }
        self.save(&state)?;
        Ok(KeyInfo {
            key_id,
            arn: stored.arn,
            description: stored.description,
            created_unix: stored.created_unix,
        })
    }

    pub fn describe(&self, key_id: &str) -> Result<KeyInfo, KeyStoreError> {
        let state = self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = state
            .keys
            .get(key_id)
            .ok_or_else(|| KeyStoreError::NotFound(key_id.to_string()))?;
        Ok(KeyInfo {
            key_id: key_id.to_string(),
            arn: key.arn.clone(),
            description: key.description.clone(),
            created_unix: key.created_unix,
        })
    }

    fn cipher(&self, key_id: &str) -> Result<Aes256Gcm, KeyStoreError> {
        let state = self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = state
            .keys
            .get(key_id)
            .ok_or_else(|| KeyStoreError::NotFound(key_id.to_string()))?;
        let material =
            Zeroizing::new(
                B64.decode(&key.material)
                    .map_err(|e| KeyStoreError::State {
                        path: self.path.display().to_string(),
                        problem: format!("key {key_id}: {e}"),
                    })?,
            );
        Aes256Gcm::new_from_slice(&material).map_err(|_| KeyStoreError::State {
            path: self.path.display().to_string(),
            problem: format!("key {key_id}: material is not 32 bytes"),
        })
    }

    pub fn encrypt(
        &self,
        key_id: &str,
        plaintext: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<Vec<u8>, KeyStoreError> {
        let cipher = self.cipher(key_id)?;
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let aad = context_aad(context);
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| KeyStoreError::InvalidCiphertext)?;
        let mut blob = Vec::with_capacity(4 + key_id.len() + 12 + sealed.len());
        blob.extend_from_slice(MAGIC);
        blob.push(key_id.len() as u8);
        blob.extend_from_slice(key_id.as_bytes());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Ok(blob)
    }

    /// Opens a blob; `requested` (if given) must be the key it names. Returns the key id
    /// and the plaintext.
    pub fn decrypt(
        &self,
        blob: &[u8],
        requested: Option<&str>,
        context: &BTreeMap<String, String>,
    ) -> Result<(String, Zeroizing<Vec<u8>>), KeyStoreError> {
        let (key_id, rest) = split_blob(blob)?;
        let id_len = key_id.len();
        if let Some(requested) = requested {
            let requested = self.resolve(requested)?;
            if requested != key_id {
                return Err(KeyStoreError::IncorrectKey {
                    requested,
                    actual: key_id,
                });
            }
        }
        let cipher = match self.cipher(&key_id) {
            Ok(c) => c,
            // A blob naming a key we never had is simply not ours.
            Err(KeyStoreError::NotFound(_)) => return Err(KeyStoreError::InvalidCiphertext),
            Err(e) => return Err(e),
        };
        let nonce = &rest[id_len..id_len + 12];
        let aad = context_aad(context);
        let plaintext = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: &rest[id_len + 12..],
                    aad: &aad,
                },
            )
            .map_err(|_| KeyStoreError::InvalidCiphertext)?;
        Ok((key_id, Zeroizing::new(plaintext)))
    }
}

/// `MAGIC || id_len || key id || nonce(12) || ciphertext+tag(16+)`: the key id, and the
/// blob after the magic and length byte.
fn split_blob(blob: &[u8]) -> Result<(String, &[u8]), KeyStoreError> {
    let rest = blob
        .strip_prefix(MAGIC)
        .ok_or(KeyStoreError::InvalidCiphertext)?;
    let (&id_len, rest) = rest.split_first().ok_or(KeyStoreError::InvalidCiphertext)?;
    let id_len = id_len as usize;
    if rest.len() < id_len + 12 + 16 {
        return Err(KeyStoreError::InvalidCiphertext);
    }
    let key_id = std::str::from_utf8(&rest[..id_len])
        .map_err(|_| KeyStoreError::InvalidCiphertext)?
        .to_string();
    Ok((key_id, rest))
}

/// The key a ciphertext blob names (KMS reads it from the blob's header), so a request
/// can be authorized against that key before anything is decrypted.
pub fn blob_key_id(blob: &[u8]) -> Result<String, KeyStoreError> {
    split_blob(blob).map(|(key_id, _)| key_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pubkey: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("pubkey".to_string(), pubkey.to_string())])
    }

    #[test]
    fn round_trip_context_binding_tampering_and_persistence() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kms.json");
        let store = KeyStore::open(&path, "us-east-1", "111122223333").unwrap();
        let key = store.create_key("dev", Some("alias/signer")).unwrap();
        assert_eq!(store.resolve("alias/signer").unwrap(), key.key_id);
        assert_eq!(store.resolve(&key.arn).unwrap(), key.key_id);
        assert_eq!(
            store
                .resolve("arn:aws:kms:us-east-1:111122223333:alias/signer")
                .unwrap(),
            key.key_id
        );
        // The same key id in another account's or region's ARN is not this key.
        for other in [
            key.arn.replace("111122223333", "444455556666"),
            key.arn.replace("us-east-1", "eu-west-1"),
        ] {
            assert!(matches!(
                store.resolve(&other),
                Err(KeyStoreError::NotFound(_))
            ));
        }
        let blob = store
            .encrypt(&key.key_id, b"secret seed", &ctx("GA"))
            .unwrap();

        let (id, plain) = store.decrypt(&blob, None, &ctx("GA")).unwrap();
        assert_eq!(
            (id.as_str(), plain.as_slice()),
            (key.key_id.as_str(), &b"secret seed"[..])
        );
        assert_eq!(
            store.decrypt(&blob, None, &ctx("GB")).unwrap_err(),
            KeyStoreError::InvalidCiphertext
        );
        assert_eq!(
            store.decrypt(&blob, None, &BTreeMap::new()).unwrap_err(),
            KeyStoreError::InvalidCiphertext
        );
        let mut tampered = blob.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(
            store.decrypt(&tampered, None, &ctx("GA")).unwrap_err(),
            KeyStoreError::InvalidCiphertext
        );
        let other = store.create_key("other", None).unwrap();
        assert!(matches!(
            store.decrypt(&blob, Some(&other.key_id), &ctx("GA")),
            Err(KeyStoreError::IncorrectKey { .. })
        ));

        // A restarted mock still opens old blobs.
        drop(store);
        let reopened = KeyStore::open(&path, "us-east-1", "111122223333").unwrap();
        let (_, plain) = reopened
            .decrypt(&blob, Some("alias/signer"), &ctx("GA"))
            .unwrap();
        assert_eq!(plain.as_slice(), b"secret seed");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
