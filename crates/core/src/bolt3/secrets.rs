//! BOLT 3 "Efficient Per-commitment Secret Storage": the counterparty's revealed secrets in 49
//! slots, from which every secret revealed so far can be derived.
//!
//! A secret for index `I` is stored in slot `B` = the number of trailing zero bits of `I`; it can
//! derive every secret whose index shares `I`'s bits above `B`. A new secret must derive every
//! secret stored in the slots below its own, or it is refused: a peer that lied about an earlier
//! secret is caught as soon as the secret that derives it arrives.

use crate::bolt3::keys::{derive_from, FIRST_INDEX};
use crate::Error;

/// The number of slots (one per possible trailing-zero count of a 48-bit index, plus the seed).
pub const SLOTS: usize = 49;

/// The counterparty's per-commitment secrets received so far, in 49 × 40 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitmentSecrets {
    known: [Option<(u64, [u8; 32])>; SLOTS],
    next: u64,
}

impl Default for CommitmentSecrets {
    fn default() -> Self {
        Self::new()
    }
}

fn slot_of(index: u64) -> usize {
    // 48-bit indexes: 48 trailing zeros means index 0 (the seed itself).
    (index.trailing_zeros() as usize).min(SLOTS - 1)
}

impl CommitmentSecrets {
    /// An empty store, expecting the secret of index 2⁴⁸−1 (commitment number 0) first.
    pub fn new() -> Self {
        CommitmentSecrets { known: [None; SLOTS], next: FIRST_INDEX }
    }

    /// The index whose secret the store expects next (secrets arrive counting down).
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// The lowest index received so far, if any.
    pub fn min_seen(&self) -> Option<u64> {
        (self.next != FIRST_INDEX).then(|| self.next + 1)
    }

    /// Stores the secret of `index` (BOLT 3 `insert_secret`).
    ///
    /// # Errors
    /// [`Error::SecretOutOfOrder`] when `index` is not the next one expected;
    /// [`Error::SecretInconsistent`] when the secret does not derive a secret stored before.
    /// The store is unchanged on error.
    pub fn insert(&mut self, index: u64, secret: [u8; 32]) -> Result<(), Error> {
        if index != self.next || index > FIRST_INDEX {
            return Err(Error::SecretOutOfOrder { expected: self.next, got: index });
        }
        let slot = slot_of(index);
        for (b, known) in self.known.iter().enumerate().take(slot) {
            if let Some((known_index, known_secret)) = known {
                if derive_from(secret, slot as u8, *known_index) != *known_secret {
                    return Err(Error::SecretInconsistent {
                        index,
                        earlier: *known_index,
                        slot: b,
                    });
                }
            }
        }
        self.known[slot] = Some((index, secret));
        self.next = index.wrapping_sub(1);
        Ok(())
    }

    /// The secret of `index` if it was received (derived from the slot that covers it).
    pub fn get(&self, index: u64) -> Option<[u8; 32]> {
        for (b, known) in self.known.iter().enumerate() {
            let Some((known_index, secret)) = known else { continue };
            let mask = !((1u64 << b) - 1) & FIRST_INDEX;
            if index & mask == *known_index & mask && index >= *known_index {
                return Some(derive_from(*secret, b as u8, index));
            }
        }
        None
    }

    /// The stored slots as (index, secret), for persistence.
    pub fn slots(&self) -> impl Iterator<Item = (u64, [u8; 32])> + '_ {
        self.known.iter().flatten().copied()
    }

    /// Rebuilds a store from its persisted slots, checking them as [`Self::insert`] would.
    ///
    /// # Errors
    /// [`Error::SecretInconsistent`] or [`Error::SecretOutOfOrder`] for slots that no honest
    /// sequence of inserts could have produced.
    pub fn from_slots(slots: &[(u64, [u8; 32])]) -> Result<Self, Error> {
        let mut store = CommitmentSecrets::new();
        let Some(min) = slots.iter().map(|(i, _)| *i).min() else { return Ok(store) };
        for (index, secret) in slots {
            let slot = slot_of(*index);
            if store.known[slot].is_some() {
                return Err(Error::SecretOutOfOrder { expected: min, got: *index });
            }
            store.known[slot] = Some((*index, *secret));
        }
        // Every slot must derive the lower slots that were filled before it (higher indexes),
        // as `insert` checked.
        for (index, secret) in slots {
            let slot = slot_of(*index);
            for b in 0..slot {
                if let Some((i, s)) = store.known[b] {
                    if i > *index && derive_from(*secret, slot as u8, i) != s {
                        return Err(Error::SecretInconsistent {
                            index: *index,
                            earlier: i,
                            slot: b,
                        });
                    }
                }
            }
        }
        store.next = min.wrapping_sub(1);
        Ok(store)
    }
}
