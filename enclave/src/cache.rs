//! Opt-in cache of decrypted keys, for operators who trade a bounded exposure window for
//! throughput. Off by default (docs/design.md §4: one KMS call per signature). An entry lives
//! at most `ttl` and serves at most `max_uses` signatures; expired and used-up entries are
//! dropped, and dropping wipes the key (ed25519-dalek's `SigningKey` zeroizes on drop).
//!
//! The hot path takes only a shared read lock: uses are counted with an atomic, and a
//! cached key signs in place, so no seed is copied out per signature and callers signing
//! with different (or the same) keys never wait on one another on a hit. The write lock is taken
//! to insert, to drop an entry that has just run out, and to put a spare in its place.
//!
//! A key that is missing (first use, expired, used up) is decrypted by one caller while
//! the others asking for it at that moment wait and then sign from the cache: without
//! that, every caller in flight would make its own KMS call each time a busy key runs
//! out (64 calls instead of one at 64 concurrent requests), which costs KMS quota and
//! invites throttling. One decryption serves at most `max_uses` signatures; a waiter that
//! finds the new entry used up already waits for (or becomes) the next decrypting caller,
//! so a key with more requests in flight than its uses costs one KMS call per `max_uses`
//! of them. When the decryption a caller waited for failed, the caller gets the same
//! error, as with Go's singleflight: it asks for the same record (same ciphertext and
//! so the same KMS request), so KMS would most likely answer it alike, and a throttling
//! or failing KMS sees one call, not one per caller in flight. The error it gets is at
//! most one KMS operation old (credentials pushed or throttling cleared meanwhile help
//! the next request, not this one). When that decryption was cancelled (a panic or
//! shutdown: the server never drops a request it has started), its waiters ask again
//! and one of them takes the turn. After [`MAX_REFILL_ROUNDS`] rounds or
//! [`MAX_REFILL_WAIT`] in all a caller stops waiting for others and decrypts on its own,
//! so no caller waits for more than a bounded number of decryptions or a bounded time.
//!
//! Refresh ahead: the first signature that spends half of an entry's uses (with at
//! least four), and the first that comes in the last eighth of its `ttl`, ask for the
//! key to be decrypted again in the background ([`Lookup::Signed`]'s `refresh_due`;
//! the second finds nothing to do if the first's refresh worked). Behind an
//! entry with half its uses or fewer left, the new one waits as a spare that takes over,
//! with all its uses, the moment the current one runs out or expires; an entry with
//! more left (refreshed for time) is replaced at once. A busy key then makes no request
//! wait for KMS when its entry runs out (unless more than half its uses are asked for
//! within one KMS call) or expires (unless it goes unused for the last eighth of its
//! `ttl`), and still costs about one decryption per `max_uses` signatures or per seven
//! eighths of `ttl`. The refresh holds the key's turn, so callers that miss while it
//! runs wait for it instead of decrypting again. Each entry is bounded as before (`ttl`
//! from its decryption, `max_uses`); per key, up to half an entry's uses and a whole
//! spare's can be left when KMS stops answering for it, against one entry's without a
//! spare, and a key signs at most `ttl` after its last successful decryption, as without.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use common::wire::WireError;
use common::wire::messages::{KeyFormat, KeyMaterial};
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

/// SHA-256 over everything that identifies a stored key record: its public key, KMS key,
/// format, ciphertext and sealed seed. A re-encrypted, rewrapped or relabelled record
/// never hits another record's entry.
type CacheKey = [u8; 32];

struct Entry {
    /// Checked against the record's public key before it was cached; boxed so the map
    /// moving its entries as it grows moves a pointer, never the key bytes.
    signing_key: Box<SigningKey>,
    expires: Instant,
    uses_left: AtomicU32,
    /// Per refresh point (half its uses spent, the last eighth of its `ttl`), set by the
    /// signature that said a refresh ahead was due there: at most one per point. A
    /// refresh that failed or found no free KMS slot at the first point gets a second
    /// chance at the other (and one that worked makes the second find nothing to do).
    refresh_asked: [AtomicBool; 2],
}

impl Entry {
    /// Whether it may still sign: not expired and not used up.
    fn usable(&self, now: Instant) -> bool {
        self.expires > now && self.uses_left.load(Ordering::Acquire) > 0
    }
}

/// The fewest `max_uses` for which an entry is refreshed ahead: below it a second
/// decryption in flight would save too few waits to be worth its KMS call.
const MIN_USES_TO_REFRESH: u32 = 4;

/// An entry is refreshed ahead in the last `1 / REFRESH_BEFORE_EXPIRY` of its `ttl`:
/// ample time for a KMS call at any sensible `ttl`, and a busy key costs one decryption
/// per seven eighths of `ttl` instead of one per `ttl`.
const REFRESH_BEFORE_EXPIRY: u32 = 8;

/// What one use of a key's current entry came to.
enum Used {
    /// It signed; `refresh_due` when this is the first signature past one of the entry's
    /// refresh points ([`KeyCache::passed_refresh_points`]), `last` when it was its last
    /// use.
    Signed {
        signed: CachedSignature,
        refresh_due: bool,
        last: bool,
    },
    /// Nothing signed, and the entry is spent (expired or used up) or absent with a spare
    /// waiting to take its place.
    Retire,
    /// Nothing signed and nothing to take its place.
    Miss,
}

pub struct KeyCache {
    ttl: Duration,
    max_uses: u32,
    /// [`MAX_REFILL_WAIT`], shorter in tests.
    max_wait: Duration,
    entries: RwLock<HashMap<CacheKey, Entry>>,
    /// Refreshed ahead: the entry that replaces a key's current one when it runs out.
    spares: Mutex<HashMap<CacheKey, Entry>>,
    /// The keys being decrypted now, each with the lock its decrypting caller holds and,
    /// inside, how that decryption ended.
    refills: Mutex<HashMap<CacheKey, TurnLock>>,
}

/// The lock a decrypting caller holds for its turn, with how the turn ended inside.
type TurnLock = Arc<tokio::sync::Mutex<TurnOutcome>>;

/// How a decrypting caller's turn ended, as its waiters find it.
enum TurnOutcome {
    /// Without an outcome: the caller was cancelled (its request dropped).
    Abandoned,
    /// The key is in the cache.
    Cached,
    /// The decryption (or the check of its seed) failed with this.
    Failed(WireError),
}

/// How many other callers' decryptions one caller waits for before it decrypts on its own
/// (each such round is another caller's successful KMS call whose entry ran out first).
const MAX_REFILL_ROUNDS: u32 = 4;

/// How long one caller waits for other callers' decryptions in all, before it decrypts on
/// its own: one KMS operation's bound (`startup.rs`). Its own decryption then waits at
/// most as long again for a KMS slot (`context::KMS_SLOT_WAIT`) and one operation for
/// the call, so the worst case, about 24 s, stays within the host's default request
/// timeout (30 s).
pub const MAX_REFILL_WAIT: Duration = Duration::from_secs(8);

/// What a caller that missed the cache does next.
enum Refill<'a> {
    /// Decrypt the key, `put` it and mark the turn [`RefillTurn::cached`] (or
    /// [`RefillTurn::failed`]); the others wait until this is dropped.
    Decrypt(RefillTurn<'a>),
    /// Another caller's decryption put the key in the cache meanwhile: sign from it, or
    /// if it ran out already, ask again.
    Refilled,
    /// The decryption waited for was cancelled: ask again.
    Abandoned,
    /// The decryption waited for failed: this caller's answer is the same error.
    Failed(WireError),
    /// Decrypt on its own without caching turns: nothing is ever cached.
    Alone,
}

/// What a caller does after looking in the cache.
pub enum Lookup<'a> {
    /// Signed from the cache; when `refresh_due`, this is the first signature past one of
    /// the entry's refresh points (half its uses spent, the last eighth of its `ttl`) and
    /// the caller should start [`KeyCache::refresh_turn`] in the background.
    Signed {
        signed: CachedSignature,
        refresh_due: bool,
    },
    /// The decryption this caller waited for failed: answer with its error.
    Failed(WireError),
    /// Decrypt through KMS, holding the turn the others in flight wait for (mark it
    /// [`RefillTurn::cached`] or [`RefillTurn::failed`]), or on its own (`None`).
    Decrypt(Option<RefillTurn<'a>>),
}

/// The decrypting caller's turn; dropping it (done, failed or cancelled) lets the
/// waiting callers go on.
pub struct RefillTurn<'a> {
    cache: &'a KeyCache,
    key: CacheKey,
    held: tokio::sync::OwnedMutexGuard<TurnOutcome>,
}

impl RefillTurn<'_> {
    /// The key is in the cache now: the waiting callers sign from it.
    pub fn cached(&mut self) {
        *self.held = TurnOutcome::Cached;
    }

    /// The decryption failed: the waiting callers answer with `error` too.
    pub fn failed(&mut self, error: &WireError) {
        *self.held = TurnOutcome::Failed(error.clone());
    }
}

impl Drop for RefillTurn<'_> {
    fn drop(&mut self) {
        self.cache
            .refills
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// What a cached signature gives: the raw public key and the signature.
pub type CachedSignature = ([u8; 32], [u8; 64]);

impl KeyCache {
    pub fn new(ttl: Duration, max_uses: u32) -> KeyCache {
        KeyCache {
            ttl,
            max_uses: max_uses.max(1),
            max_wait: MAX_REFILL_WAIT,
            entries: RwLock::new(HashMap::new()),
            spares: Mutex::new(HashMap::new()),
            refills: Mutex::new(HashMap::new()),
        }
    }

    /// Spares waiting to take over, for tests.
    #[cfg(test)]
    pub fn spare_count(&self) -> usize {
        self.spares().len()
    }

    /// Decryptions (refills and refreshes) holding a key's turn now, for tests.
    #[cfg(test)]
    pub fn turns_held(&self) -> usize {
        self.refills
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn spares(&self) -> MutexGuard<'_, HashMap<CacheKey, Entry>> {
        self.spares.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The same cache with a shorter total wait for other callers' decryptions.
    #[cfg(test)]
    pub fn waiting_at_most(self, max_wait: Duration) -> KeyCache {
        KeyCache { max_wait, ..self }
    }

    /// For a caller whose `sign` missed: the turn to decrypt `record`, or a wait for
    /// the caller that already has it.
    async fn refill(&self, record: &KeyMaterial) -> Refill<'_> {
        if self.max_uses <= 1 {
            // Nothing is ever cached (`put` keeps no single-use key): waiting for
            // another caller's decryption would only delay this one.
            return Refill::Alone;
        }
        let in_progress = match self.take_turn(Self::key(record)) {
            Ok(Some(turn)) => return Refill::Decrypt(turn),
            Ok(None) => return Refill::Alone,
            Err(in_progress) => in_progress,
        };
        match &*in_progress.lock().await {
            TurnOutcome::Cached => Refill::Refilled,
            TurnOutcome::Abandoned => Refill::Abandoned,
            TurnOutcome::Failed(error) => Refill::Failed(error.clone()),
        }
    }

    /// The turn to decrypt `key` (`None` if it cannot be held, which never happens), or
    /// the lock of the caller who has it.
    fn take_turn(&self, key: CacheKey) -> Result<Option<RefillTurn<'_>>, TurnLock> {
        let mut refills = self.refills.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(lock) = refills.get(&key) {
            return Err(lock.clone());
        }
        let lock = Arc::new(tokio::sync::Mutex::new(TurnOutcome::Abandoned));
        // Fresh and not shared yet, so this never waits.
        let Ok(held) = lock.clone().try_lock_owned() else {
            return Ok(None);
        };
        refills.insert(key, lock);
        Ok(Some(RefillTurn {
            cache: self,
            key,
            held,
        }))
    }

    /// For a refresh ahead: the turn to decrypt `record` again, unless a decryption of
    /// it is under way already (then that one serves) or its entry needs no successor:
    /// it has a spare, or it is a fresh entry short of its refresh point (a refill
    /// replaced the one whose signature asked, so this refresh would be wasted). Mark it
    /// [`RefillTurn::cached`] after [`KeyCache::put_spare`], or [`RefillTurn::failed`].
    pub fn refresh_turn(&self, record: &KeyMaterial) -> Option<RefillTurn<'_>> {
        if self.max_uses <= 1 {
            return None;
        }
        let key = Self::key(record);
        // The turn first: no other refresh can store a spare between the check and the
        // decryption (dropping the turn unused lets any waiters ask again).
        let turn = self.take_turn(key).ok().flatten()?;
        self.needs_successor(&key, Instant::now()).then_some(turn)
    }

    /// Whether `key`'s entry has no spare and is spent, absent or past its refresh point.
    fn needs_successor(&self, key: &CacheKey, now: Instant) -> bool {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        if self.spares().contains_key(key) {
            return false;
        }
        entries.get(key).is_none_or(|e| {
            !e.usable(now)
                || self
                    .passed_refresh_points(e.uses_left.load(Ordering::Acquire), e.expires, now)
                    .contains(&true)
        })
    }

    /// Which refresh points an entry with `uses_left` that expires at `expires` has
    /// passed: half its uses spent, and the last eighth of its `ttl`.
    fn passed_refresh_points(&self, uses_left: u32, expires: Instant, now: Instant) -> [bool; 2] {
        [
            self.half_spent(uses_left),
            expires.saturating_duration_since(now) <= self.ttl / REFRESH_BEFORE_EXPIRY,
        ]
    }

    /// Whether an entry with `uses_left` has spent half its uses or more.
    fn half_spent(&self, uses_left: u32) -> bool {
        uses_left <= self.max_uses / 2
    }

    /// A signature from the cache as a [`Lookup`], or `None` on a miss.
    fn hit(&self, record: &KeyMaterial, hash: &[u8; 32]) -> Option<Lookup<'_>> {
        self.sign_noting_refresh(record, hash, Instant::now)
            .map(|(signed, refresh_due)| Lookup::Signed {
                signed,
                refresh_due,
            })
    }

    /// Signs `hash` with the cached key of `record`, waiting if another caller is
    /// decrypting it; else the error that decryption failed with, or what this caller
    /// decrypts with (see [`Lookup`]).
    pub async fn sign_or_take_turn(&self, record: &KeyMaterial, hash: &[u8; 32]) -> Lookup<'_> {
        // A hit, the usual case, signs before any clock is read.
        if let Some(hit) = self.hit(record, hash) {
            return hit;
        }
        let decrypt_alone = || self.hit(record, hash).unwrap_or(Lookup::Decrypt(None));
        let stop_waiting = tokio::time::Instant::now() + self.max_wait;
        for _ in 0..MAX_REFILL_ROUNDS {
            // Waited long enough for others' decryptions: decrypt on its own.
            let Ok(refill) = tokio::time::timeout_at(stop_waiting, self.refill(record)).await
            else {
                return decrypt_alone();
            };
            match refill {
                Refill::Decrypt(mut turn) => {
                    // Another caller's decryption may have landed between the miss and
                    // the turn: use it rather than decrypt again, and so may those waiting.
                    if let Some(hit) = self.hit(record, hash) {
                        turn.cached();
                        return hit;
                    }
                    return Lookup::Decrypt(Some(turn));
                }
                // Used up already by the callers ahead of this one, or never decrypted
                // because its caller was cancelled: ask again.
                Refill::Refilled | Refill::Abandoned => {}
                Refill::Failed(error) => {
                    // Unless a caller decrypting on its own cached the key meanwhile.
                    return self.hit(record, hash).unwrap_or(Lookup::Failed(error));
                }
                Refill::Alone => return decrypt_alone(),
            }
            if let Some(hit) = self.hit(record, hash) {
                return hit;
            }
        }
        Lookup::Decrypt(None)
    }

    fn key(record: &KeyMaterial) -> CacheKey {
        let (format, seal): (&[u8], &[u8]) = match (record.format, record.sealed_seed.as_deref()) {
            // The seal is opened only for `envelope` keys: a kms-direct record with junk
            // there must not make a second entry (a second copy) of the same key.
            (KeyFormat::KmsDirect, _) => (b"kms-direct", &[]),
            // An absent seal and an empty one are different records (they fail differently).
            (KeyFormat::Envelope, None) => (b"envelope without seal", &[]),
            (KeyFormat::Envelope, Some(seal)) => (b"envelope", seal),
        };
        let mut digest = Sha256::new();
        for part in [
            record.public_key.as_bytes(),
            record.kms_key_id.as_bytes(),
            format,
            &record.ciphertext,
            seal,
        ] {
            // Length-prefixed, so no two different records hash the same bytes.
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part);
        }
        digest.finalize().into()
    }

    /// Signs `hash` with the cached key of `record`, counting one use; `None` when it is
    /// absent, expired or used up and has no spare to take over (the caller then
    /// decrypts through KMS).
    pub fn sign(&self, record: &KeyMaterial, hash: &[u8; 32]) -> Option<CachedSignature> {
        self.sign_noting_refresh(record, hash, Instant::now)
            .map(|(signed, _)| signed)
    }

    /// [`KeyCache::sign`], and whether a refresh ahead is due; `now` is the clock
    /// (another in tests), read at each check. A spent entry gives way to its spare, if
    /// it has one.
    fn sign_noting_refresh(
        &self,
        record: &KeyMaterial,
        hash: &[u8; 32],
        now: impl Fn() -> Instant,
    ) -> Option<(CachedSignature, bool)> {
        let key = Self::key(record);
        // Twice at most: the second time with the spare that replaced a spent entry.
        for _ in 0..2 {
            match self.use_once(&key, hash, &now) {
                Used::Signed {
                    signed,
                    refresh_due,
                    last,
                } => {
                    if last {
                        // Wipe it now rather than at the next sweep; its spare takes over.
                        self.retire_spent(&key);
                    }
                    return Some((signed, refresh_due));
                }
                Used::Retire => {
                    if !self.retire_spent(&key) {
                        return None;
                    }
                }
                Used::Miss => return None,
            }
        }
        None
    }

    /// One use of `key`'s current entry, its expiry checked against `now()`.
    fn use_once(&self, key: &CacheKey, hash: &[u8; 32], now: &impl Fn() -> Instant) -> Used {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = entries.get(key) else {
            // Absent: worth the write lock only if a spare waits to take its place.
            return if self.spares().contains_key(key) {
                Used::Retire
            } else {
                Used::Miss
            };
        };
        let now = now();
        if entry.expires <= now {
            return Used::Retire;
        }
        let Ok(before) = entry
            .uses_left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        else {
            return Used::Retire;
        };
        let signing_key = &entry.signing_key;
        let signature = signing_key.sign(hash).to_bytes();
        let public = signing_key.verifying_key().to_bytes();
        let left = before - 1;
        let refresh_due = self.max_uses >= MIN_USES_TO_REFRESH
            && self
                .passed_refresh_points(left, entry.expires, now)
                .iter()
                .zip(&entry.refresh_asked)
                // Read first, so the signatures after the first past a point share the
                // flag's cache line instead of each writing it.
                .map(|(passed, asked)| {
                    *passed && !asked.load(Ordering::Relaxed) && !asked.swap(true, Ordering::AcqRel)
                })
                // Every point passed is marked, not only the first: a signature past
                // both at once asks for one refresh, not one now and one at the next.
                .fold(false, |due, newly_asked| due | newly_asked);
        Used::Signed {
            signed: (public, signature),
            refresh_due,
            last: left == 0,
        }
    }

    /// Drops `key`'s entry if it is spent (or absent) and moves its spare, if it has an
    /// unexpired one, into its place; whether `key` has a usable entry now.
    fn retire_spent(&self, key: &CacheKey) -> bool {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if entries.get(key).is_some_and(|e| e.usable(now)) {
            return true;
        }
        entries.remove(key);
        let spare = self.spares().remove(key);
        match spare {
            Some(spare) if spare.usable(now) => {
                entries.insert(*key, spare);
                true
            }
            _ => false,
        }
    }

    /// Caches the key of a freshly decrypted seed, which was just used once. `seed` must
    /// already have been checked against `record.public_key`; it is checked again here
    /// (the derived public key is part of the signing key, so this costs nothing).
    /// Whether it was cached.
    pub fn put(&self, record: &KeyMaterial, seed: &[u8; 32]) -> bool {
        let Some(entry) = self.entry_for(record, seed, self.max_uses - 1) else {
            return false;
        };
        let key = Self::key(record);
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries.insert(key, entry);
        // A spare refreshed meanwhile (a caller that decrypted on its own, without the
        // turn, overlapped a refresh) would add a whole entry's uses beside this one's.
        self.spares().remove(&key);
        true
    }

    /// Caches a seed decrypted by a refresh ahead, with all its uses: as the spare that
    /// takes over when the current entry runs out, if that has half its uses or fewer
    /// left; else at once, in place of the current entry (refreshed for time, it would
    /// otherwise keep nearly all its uses beside a whole spare's). Checked against
    /// `record.public_key` first; whether it was cached.
    pub fn put_spare(&self, record: &KeyMaterial, seed: &[u8; 32]) -> bool {
        let Some(entry) = self.entry_for(record, seed, self.max_uses) else {
            return false;
        };
        let key = Self::key(record);
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if entries
            .get(&key)
            .is_some_and(|e| e.usable(now) && self.half_spent(e.uses_left.load(Ordering::Acquire)))
        {
            self.spares().insert(key, entry);
        } else {
            // Drops (and wipes) the entry it replaces.
            entries.insert(key, entry);
        }
        true
    }

    /// An entry for `seed` with `uses` left, if it is `record`'s key and caching is on.
    fn entry_for(&self, record: &KeyMaterial, seed: &[u8; 32], uses: u32) -> Option<Entry> {
        if self.max_uses <= 1 {
            return None;
        }
        let expected = stellar_strkey::ed25519::PublicKey::from_string(&record.public_key).ok()?;
        // Built in its heap slot's call: the temporary the compiler may place on the stack
        // first is enclave memory the host cannot read (docs/design.md §2 invariant 1
        // concerns the wire, disk and logs); the boxed key is wiped on drop.
        let signing_key = Box::new(SigningKey::from_bytes(seed));
        if signing_key.verifying_key().to_bytes() != expected.0 {
            return None;
        }
        Some(Entry {
            signing_key,
            expires: Instant::now() + self.ttl,
            uses_left: AtomicU32::new(uses),
            refresh_asked: [AtomicBool::new(false), AtomicBool::new(false)],
        })
    }

    /// Drops (and so wipes) expired and used-up entries and expired spares; returns how
    /// many entries remain in use (spares not counted).
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|_, e| e.usable(now));
        self.spares().retain(|_, e| e.expires > now);
        entries.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use common::wire::ErrorCode;
    use ed25519_dalek::{Verifier, VerifyingKey};

    const SEED: [u8; 32] = [5; 32];

    fn record(seed: &[u8; 32], ciphertext: &[u8]) -> KeyMaterial {
        KeyMaterial {
            public_key: crate::keys::public_key_of(seed),
            format: KeyFormat::KmsDirect,
            kms_key_id: "arn:aws:kms:eu-west-1:111122223333:key/k".into(),
            ciphertext: ciphertext.to_vec(),
            sealed_seed: None,
        }
    }

    /// Whether `waiting` is still pending after 50 ms (it waits for another's turn).
    async fn still_waiting(waiting: &mut (impl std::future::Future + Unpin)) -> bool {
        tokio::time::timeout(Duration::from_millis(50), waiting)
            .await
            .is_err()
    }

    fn verifies(signed: CachedSignature, hash: &[u8; 32]) -> bool {
        let (public, signature) = signed;
        VerifyingKey::from_bytes(&public)
            .unwrap()
            .verify(hash, &ed25519_dalek::Signature::from_bytes(&signature))
            .is_ok()
    }

    /// One caller decrypts a missing key while the others wait, and they learn how its
    /// turn ended: cached, failed (with its error) or abandoned; with single-use entries
    /// (nothing is ever cached) nobody waits.
    #[tokio::test]
    async fn one_caller_decrypts_a_missing_key_unless_nothing_is_cached() {
        let blob = record(&SEED, b"blob");
        let cache = KeyCache::new(Duration::from_mins(1), 3);
        let denied = WireError::new(ErrorCode::KmsAccessDenied, "PCR0 does not match");
        for ending in ["abandoned", "failed", "cached"] {
            let Refill::Decrypt(mut turn) = cache.refill(&blob).await else {
                panic!("the first caller did not get the turn to decrypt");
            };
            let waiting = cache.refill(&blob);
            tokio::pin!(waiting);
            assert!(
                still_waiting(&mut waiting).await,
                "a second caller did not wait for the first"
            );
            match ending {
                "cached" => turn.cached(),
                "failed" => turn.failed(&denied),
                _ => {}
            }
            drop(turn);
            match (ending, waiting.await) {
                ("cached", Refill::Refilled) | ("abandoned", Refill::Abandoned) => {}
                ("failed", Refill::Failed(error)) if error == denied => {}
                _ => panic!("the waiter was not told how the turn ended ({ending})"),
            }
        }
        assert!(matches!(cache.refill(&blob).await, Refill::Decrypt(_)));

        let single_use = KeyCache::new(Duration::from_mins(1), 1);
        let _turn = single_use.refill(&blob).await;
        let second = tokio::time::timeout(Duration::from_millis(50), single_use.refill(&blob));
        assert!(matches!(second.await, Ok(Refill::Alone)));
    }

    /// A caller whose every refill is used up by others before it can sign waits for
    /// [`MAX_REFILL_ROUNDS`] decryptions, no more, then decrypts on its own. Runs on the
    /// test's one thread: the waiter moves only when polled, so each round is exact.
    #[tokio::test(flavor = "current_thread")]
    async fn a_caller_outrun_by_others_stops_waiting_after_its_rounds() {
        let blob = record(&SEED, b"blob");
        // Two uses: the decrypting caller's own, and one left that the test takes.
        let cache = KeyCache::new(Duration::from_mins(1), 2);
        let Refill::Decrypt(mut turn) = cache.refill(&blob).await else {
            panic!("the first caller did not get the turn to decrypt");
        };
        let waiter = cache.sign_or_take_turn(&blob, &[7; 32]);
        tokio::pin!(waiter);
        let poll_briefly = Duration::from_millis(20);
        assert!(
            tokio::time::timeout(poll_briefly, &mut waiter)
                .await
                .is_err()
        );
        for round in 1..=MAX_REFILL_ROUNDS {
            assert!(cache.put(&blob, &SEED));
            assert!(cache.sign(&blob, &[8; 32]).is_some(), "round {round}");
            turn.cached();
            drop(turn);
            // Another caller takes the next turn before the waiter runs again.
            let Refill::Decrypt(next) = cache.refill(&blob).await else {
                panic!("round {round}: the next caller did not get the turn");
            };
            turn = next;
            let polled = tokio::time::timeout(poll_briefly, &mut waiter).await;
            match (round == MAX_REFILL_ROUNDS, polled) {
                (false, Err(_)) | (true, Ok(Lookup::Decrypt(None))) => {}
                (false, Ok(_)) => panic!("round {round}: the waiter stopped waiting early"),
                (true, Err(_)) => panic!("the waiter still waits after {round} rounds"),
                (true, Ok(_)) => panic!("the waiter did not decrypt on its own"),
            }
        }
    }

    #[test]
    fn uses_are_counted_and_the_entry_leaves_when_used_up() {
        let (cache, blob) = cached_blob(Duration::from_mins(1), 3);
        assert!(verifies(cache.sign(&blob, &[1; 32]).unwrap(), &[1; 32]));
        assert!(verifies(cache.sign(&blob, &[2; 32]).unwrap(), &[2; 32]));
        // 1 use at decryption + 2 from the cache = 3: gone, and already removed.
        assert!(cache.sign(&blob, &[3; 32]).is_none());
        assert_eq!(cache.entries.read().unwrap().len(), 0);
        assert_eq!(cache.sweep(), 0);
    }

    #[test]
    fn entries_expire_and_other_records_miss() {
        let (cache, blob) = cached_blob(Duration::from_millis(30), 100);
        assert!(
            cache
                .sign(&record(&SEED, b"other blob"), &[1; 32])
                .is_none()
        );
        assert!(cache.sign(&record(&[6; 32], b"blob"), &[1; 32]).is_none());
        let relabelled = KeyMaterial {
            kms_key_id: "arn:aws:kms:eu-west-1:444455556666:key/k".into(),
            ..blob.clone()
        };
        assert!(cache.sign(&relabelled, &[1; 32]).is_none());
        let junk_seal = KeyMaterial {
            sealed_seed: Some(vec![1, 2, 3]),
            ..blob.clone()
        };
        assert!(
            cache.sign(&junk_seal, &[1; 32]).is_some(),
            "one entry per kms-direct key, whatever the host puts beside it"
        );
        let reformatted = KeyMaterial {
            format: KeyFormat::Envelope,
            ..blob.clone()
        };
        assert!(cache.sign(&reformatted, &[1; 32]).is_none());
        let envelope = |sealed_seed| KeyMaterial {
            format: KeyFormat::Envelope,
            sealed_seed,
            ..blob.clone()
        };
        assert_ne!(
            KeyCache::key(&envelope(None)),
            KeyCache::key(&envelope(Some(Vec::new()))),
            "an absent seal and an empty one are different records"
        );
        assert_eq!(cache.sweep(), 1);
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.sign(&blob, &[1; 32]).is_none());
        assert_eq!(cache.sweep(), 0);
    }

    #[test]
    fn a_seed_that_is_not_the_records_key_is_never_cached() {
        let cache = KeyCache::new(Duration::from_mins(1), 100);
        let blob = record(&SEED, b"blob");
        assert!(!cache.put(&blob, &[6; 32]));
        assert!(cache.sign(&blob, &[1; 32]).is_none());
        assert_eq!(cache.sweep(), 0);
    }

    #[test]
    fn max_uses_of_one_caches_nothing() {
        let cache = KeyCache::new(Duration::from_mins(1), 1);
        let blob = record(&SEED, b"blob");
        assert!(!cache.put(&blob, &SEED));
        assert!(cache.sign(&blob, &[1; 32]).is_none());
    }

    /// A cache with `ttl` and `max_uses` holding the key of a record `blob`, just used
    /// once (as a decrypting caller leaves it).
    fn cached_blob(ttl: Duration, max_uses: u32) -> (KeyCache, KeyMaterial) {
        let cache = KeyCache::new(ttl, max_uses);
        let blob = record(&SEED, b"blob");
        assert!(cache.put(&blob, &SEED));
        (cache, blob)
    }

    /// How many of ten signatures `cache` makes with `blob`'s key (each checked).
    fn signatures_served(cache: &KeyCache, blob: &KeyMaterial) -> usize {
        (0..10)
            .filter(|i| {
                cache
                    .sign(blob, &[*i; 32])
                    .is_some_and(|s| verifies(s, &[*i; 32]))
            })
            .count()
    }

    /// Uses left after each signature from an entry `put` with `max_uses`, and which of
    /// those signatures said a refresh ahead was due.
    fn refresh_points(max_uses: u32) -> Vec<u32> {
        let (cache, blob) = cached_blob(Duration::from_mins(1), max_uses);
        let mut due = Vec::new();
        let mut left = max_uses - 1;
        while let Some((signed, refresh_due)) =
            cache.sign_noting_refresh(&blob, &[1; 32], Instant::now)
        {
            assert!(verifies(signed, &[1; 32]));
            left -= 1;
            if refresh_due {
                due.push(left);
            }
        }
        assert_eq!(left, 0, "every use was served");
        due
    }

    #[test]
    fn a_refresh_is_due_once_per_entry_when_half_its_uses_are_spent() {
        assert_eq!(refresh_points(100), vec![50]);
        assert_eq!(refresh_points(5), vec![2]);
        assert_eq!(refresh_points(4), vec![2]);
        // Too few uses to be worth a second decryption in flight.
        assert_eq!(refresh_points(3), Vec::<u32>::new());
    }

    /// Time is the other refresh point: the first signature in the last eighth of an
    /// entry's `ttl` asks, once, however many uses it has left.
    #[test]
    fn a_refresh_is_due_once_in_the_last_eighth_of_the_ttl_besides_half_the_uses() {
        let ttl = Duration::from_secs(80);
        let cache = KeyCache::new(ttl, 1000);
        let blob = record(&SEED, b"blob");
        let start = Instant::now();
        assert!(cache.put(&blob, &SEED));
        let key = KeyCache::key(&blob);
        let due_at = |after_s: u64| {
            let (signed, due) = cache
                .sign_noting_refresh(&blob, &[1; 32], || start + Duration::from_secs(after_s))
                .unwrap();
            assert!(verifies(signed, &[1; 32]));
            due
        };
        // The last eighth starts 70 s in (within the second between `start` and `put`).
        assert!(!due_at(0));
        assert!(!due_at(69));
        assert!(!cache.needs_successor(&key, start + Duration::from_secs(69)));
        assert!(cache.needs_successor(&key, start + Duration::from_secs(71)));
        assert!(due_at(71));
        assert!(!due_at(72), "asked once");
        assert!(!due_at(79));
        // Past both points: asked at each once. The second refresh is skipped if the
        // first left a spare (`needs_successor`); if the first found no free KMS slot,
        // the second is its second chance.
        let both = KeyCache::new(ttl, 4);
        assert!(both.put(&blob, &SEED));
        let due = |after_s: u64| {
            both.sign_noting_refresh(&blob, &[1; 32], || start + Duration::from_secs(after_s))
                .unwrap()
                .1
        };
        assert!(due(1), "2 of 4 uses left");
        assert!(due(75), "in the last eighth");
        assert!(!due(76));
        // Past both at once: one refresh, and none at the next signature.
        assert!(both.put(&blob, &SEED));
        assert!(due(75), "2 of 4 uses left, in the last eighth");
        assert!(!due(76), "1 of 4 left, both points asked already");
        // Fewer than MIN_USES_TO_REFRESH: never.
        let few = KeyCache::new(ttl, 3);
        assert!(few.put(&blob, &SEED));
        let (_, due) = few
            .sign_noting_refresh(&blob, &[1; 32], || start + Duration::from_secs(75))
            .unwrap();
        assert!(!due);
    }

    #[test]
    fn a_spare_takes_over_with_all_its_uses_when_the_entry_runs_out() {
        let (cache, blob) = cached_blob(Duration::from_mins(1), 4);
        assert!(cache.sign(&blob, &[9; 32]).is_some());
        assert!(!cache.put_spare(&blob, &[6; 32]), "another key's seed");
        assert!(cache.put_spare(&blob, &SEED));
        assert_eq!(cache.spare_count(), 1, "kept aside");
        // Two uses left in the current entry, then all four of the spare's.
        let served = signatures_served(&cache, &blob);
        assert_eq!(served, 6);
        assert_eq!(cache.spare_count(), 0);
        // With nothing current left, a refreshed key goes straight into use.
        assert!(cache.put_spare(&blob, &SEED));
        assert!(cache.sign(&blob, &[1; 32]).is_some());
        assert_eq!(cache.spare_count(), 0);
    }

    /// An entry refreshed with more than half its uses left (for time) is replaced at
    /// once: a key never holds nearly a whole entry's uses beside a whole spare's.
    #[test]
    fn a_refresh_replaces_an_entry_with_more_than_half_its_uses_left() {
        let (cache, blob) = cached_blob(Duration::from_mins(1), 4);
        assert!(cache.put_spare(&blob, &SEED));
        assert_eq!(cache.spare_count(), 0);
        let served = signatures_served(&cache, &blob);
        assert_eq!(served, 4, "the new entry's uses, not 3 + 4");

        // A caller that decrypted on its own, overlapping a refresh, replaces the entry
        // and drops the spare: its uses, not those and a spare's.
        assert!(cache.put(&blob, &SEED));
        assert!(cache.sign(&blob, &[9; 32]).is_some());
        assert!(cache.put_spare(&blob, &SEED));
        assert_eq!(cache.spare_count(), 1);
        assert!(cache.put(&blob, &SEED));
        assert_eq!(cache.spare_count(), 0);
        let served = signatures_served(&cache, &blob);
        assert_eq!(served, 3, "the decrypting caller's entry only, not 3 + 4");
    }

    /// A spare waiting behind an entry takes over when the entry expires.
    #[test]
    fn a_spare_takes_over_when_the_entry_expires() {
        let (cache, blob) = cached_blob(Duration::from_secs(3), 4);
        assert!(cache.sign(&blob, &[9; 32]).is_some());
        std::thread::sleep(Duration::from_millis(1500));
        assert!(cache.put_spare(&blob, &SEED));
        assert_eq!(cache.spare_count(), 1, "the entry is still in use");
        // Past the first entry's expiry, 1.2 s inside the spare's.
        std::thread::sleep(Duration::from_millis(1800));
        assert!(
            cache
                .sign(&blob, &[1; 32])
                .is_some_and(|s| verifies(s, &[1; 32]))
        );
        assert_eq!(cache.spare_count(), 0);
    }

    #[test]
    fn an_expired_spare_never_signs_and_is_swept() {
        let (cache, blob) = cached_blob(Duration::from_millis(30), 4);
        assert!(cache.sign(&blob, &[9; 32]).is_some());
        assert!(cache.put_spare(&blob, &SEED));
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.sign(&blob, &[1; 32]).is_none());
        assert!(cache.put(&blob, &SEED));
        assert!(cache.sign(&blob, &[9; 32]).is_some());
        assert!(cache.put_spare(&blob, &SEED));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.sweep(), 0);
        assert_eq!(cache.spare_count(), 0);
    }

    /// A refresh ahead starts only for an entry that needs a successor: not for a fresh
    /// one (a refill replaced the entry that asked) nor one that has its spare already.
    #[test]
    fn a_refresh_is_skipped_when_its_entry_needs_no_successor() {
        let cache = KeyCache::new(Duration::from_mins(1), 4);
        let blob = record(&SEED, b"blob");
        assert!(cache.refresh_turn(&blob).is_some(), "nothing cached yet");
        assert!(cache.put(&blob, &SEED));
        assert!(cache.refresh_turn(&blob).is_none(), "3 of 4 uses left");
        assert!(cache.sign(&blob, &[1; 32]).is_some());
        let turn = cache.refresh_turn(&blob).expect("2 of 4 uses left");
        assert!(cache.put_spare(&blob, &SEED));
        drop(turn);
        assert!(cache.refresh_turn(&blob).is_none(), "it has its spare");
        assert_eq!(cache.spare_count(), 1);
    }

    /// A refresh ahead holds the key's turn like a refill: none starts while a
    /// decryption of the key is under way, and callers that miss while the refresh runs
    /// wait for it and then sign from what it cached.
    #[tokio::test]
    async fn a_refresh_holds_the_turn_and_callers_that_miss_wait_for_it() {
        let cache = KeyCache::new(Duration::from_mins(1), 4);
        let blob = record(&SEED, b"blob");
        let Refill::Decrypt(turn) = cache.refill(&blob).await else {
            panic!("the first caller did not get the turn");
        };
        assert!(cache.refresh_turn(&blob).is_none(), "a refill is under way");
        drop(turn);
        let mut refresh = cache.refresh_turn(&blob).unwrap();
        let waiting = cache.sign_or_take_turn(&blob, &[2; 32]);
        tokio::pin!(waiting);
        assert!(
            still_waiting(&mut waiting).await,
            "a caller that missed did not wait for the refresh"
        );
        assert!(cache.put_spare(&blob, &SEED));
        refresh.cached();
        drop(refresh);
        let Lookup::Signed { signed, .. } = waiting.await else {
            panic!("the waiting caller did not sign from the refreshed key");
        };
        assert!(verifies(signed, &[2; 32]));
        assert!(
            KeyCache::new(Duration::from_mins(1), 1)
                .refresh_turn(&blob)
                .is_none()
        );

        // A failed refresh answers the callers that waited for it with its error, and
        // only them: the next caller to miss takes a turn of its own.
        let cache = KeyCache::new(Duration::from_mins(1), 4);
        let mut refresh = cache.refresh_turn(&blob).unwrap();
        let waiting = cache.sign_or_take_turn(&blob, &[3; 32]);
        tokio::pin!(waiting);
        assert!(still_waiting(&mut waiting).await);
        let denied = WireError::new(ErrorCode::KmsAccessDenied, "PCR0 does not match");
        refresh.failed(&denied);
        drop(refresh);
        assert!(matches!(waiting.await, Lookup::Failed(error) if error == denied));
        assert!(matches!(
            cache.sign_or_take_turn(&blob, &[4; 32]).await,
            Lookup::Decrypt(Some(_))
        ));
    }

    #[test]
    fn concurrent_signers_never_exceed_max_uses() {
        let cache = std::sync::Arc::new(KeyCache::new(Duration::from_mins(1), 101));
        let blob = record(&SEED, b"blob");
        assert!(cache.put(&blob, &SEED));
        let served: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let (cache, blob) = (cache.clone(), blob.clone());
                    scope.spawn(move || {
                        (0..50)
                            .filter(|_| cache.sign(&blob, &[9; 32]).is_some())
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(
            served, 100,
            "101 uses: one at decryption, 100 from the cache"
        );
    }
}
