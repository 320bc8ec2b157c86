//! Opt-in cache of decrypted seeds, for operators who trade a bounded exposure window for
//! throughput. Off by default (docs/design.md §4: one KMS call per signature). An entry lives
//! at most `ttl` and serves at most `max_uses` signatures; expired entries are dropped,
//! and dropping wipes the seed (`Zeroizing`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::keys::{Seed, seed_from_slice};

/// A seed is cached per public key *and* ciphertext: a re-encrypted or rotated key
/// never hits an older entry.
type CacheKey = (String, [u8; 32]);

struct Entry {
    seed: Seed,
    expires: Instant,
    uses_left: u32,
}

pub struct KeyCache {
    ttl: Duration,
    max_uses: u32,
    entries: Mutex<HashMap<CacheKey, Entry>>,
}

impl KeyCache {
    pub fn new(ttl: Duration, max_uses: u32) -> KeyCache {
        KeyCache {
            ttl,
            max_uses: max_uses.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn key(public_key: &str, ciphertext: &[u8]) -> CacheKey {
        (public_key.to_string(), Sha256::digest(ciphertext).into())
    }

    /// A copy of the cached seed, counting one use; `None` when absent, expired or used up.
    pub fn take(&self, public_key: &str, ciphertext: &[u8]) -> Option<Seed> {
        let key = Self::key(public_key, ciphertext);
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = entries.get_mut(&key)?;
        if entry.expires <= Instant::now() || entry.uses_left == 0 {
            entries.remove(&key);
            return None;
        }
        entry.uses_left -= 1;
        let seed = seed_from_slice(&entry.seed[..])?;
        if entry.uses_left == 0 {
            entries.remove(&key);
        }
        Some(seed)
    }

    /// Caches a freshly decrypted seed, which was just used once.
    pub fn put(&self, public_key: &str, ciphertext: &[u8], seed: &[u8; 32]) {
        if self.max_uses <= 1 {
            return;
        }
        let Some(seed) = seed_from_slice(seed) else {
            return;
        };
        let entry = Entry {
            seed,
            expires: Instant::now() + self.ttl,
            uses_left: self.max_uses - 1,
        };
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.insert(Self::key(public_key, ciphertext), entry);
    }

    /// Drops (and so wipes) expired entries; returns how many remain.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.retain(|_, e| e.expires > now && e.uses_left > 0);
        entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uses_are_counted_and_the_entry_leaves_when_used_up() {
        let cache = KeyCache::new(Duration::from_mins(1), 3);
        cache.put("GA", b"blob", &[5; 32]);
        assert_eq!(*cache.take("GA", b"blob").unwrap(), [5; 32]);
        assert_eq!(*cache.take("GA", b"blob").unwrap(), [5; 32]);
        // 1 use at decryption + 2 from the cache = 3: gone.
        assert!(cache.take("GA", b"blob").is_none());
        assert_eq!(cache.sweep(), 0);
    }

    #[test]
    fn entries_expire_and_other_ciphertexts_miss() {
        let cache = KeyCache::new(Duration::from_millis(30), 100);
        cache.put("GA", b"blob", &[5; 32]);
        assert!(cache.take("GA", b"other blob").is_none());
        assert!(cache.take("GB", b"blob").is_none());
        assert_eq!(cache.sweep(), 1);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.sweep(), 0);
        assert!(cache.take("GA", b"blob").is_none());
    }

    #[test]
    fn max_uses_of_one_caches_nothing() {
        let cache = KeyCache::new(Duration::from_mins(1), 1);
        cache.put("GA", b"blob", &[5; 32]);
        assert!(cache.take("GA", b"blob").is_none());
    }
}
