//! The directory: alias (`name@psp`) → owning PSP and display name.
//!
//! Reads are on the path of every payment (payer and payee alias), so they take no lock: a
//! concurrent hash map (papaya) whose readers never block. Writes (registration, removal) are
//! made durable through the ledger first and applied to the map only once committed, so the map
//! never shows an alias that a crash could take back. The map is rebuilt from the ledger's
//! `aliases` records at start.
//!
//! A lookup is two to three cache misses on a map of millions (a profile of streamed payments had
//! the directory at 8% of the switch's CPU, nearly all of it waiting on memory). So the alias is
//! stored inline in its entry, compared without following a pointer; PSP ids are shared, one
//! per PSP; and the payment path reads an entry in place (`with_entry`) instead of cloning its
//! reference-counted parts, which would write to two more cache lines per lookup.
//!
//! Memory: ~150 bytes per alias (inline key, PSP handle, display name, map overhead): 10M aliases
//! take about 1.5 GB. `limits.aliases_max` bounds it.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::proto::Reason;
use crate::reason::Refusal;
use crate::tls::valid_name;

/// Longest alias, in bytes (`ALIAS_BYTES_MAX`).
pub const ALIAS_BYTES_MAX: usize = 64;
/// Longest display name, in UTF-8 bytes (`DISPLAY_NAME_BYTES_MAX`).
pub const DISPLAY_NAME_BYTES_MAX: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AliasEntry {
    pub psp: Arc<str>,
    pub display_name: Arc<str>,
}

/// Checks an alias's grammar and returns its owning PSP id (the part after the last `@`).
/// `field` is the request's field path that holds the alias (`payer_alias`, `payee_alias`,
/// `alias`): a refusal names it in `switch-field` (errors.proto), so the caller can tell which of
/// two aliases is at fault.
pub fn alias_owner<'a>(alias: &'a str, field: &'static str) -> Result<&'a str, Refusal> {
    let malformed = |why: &str| Refusal::field(Reason::AliasMalformed, field, format!("{field} {alias:?} {why}"));
    if alias.is_empty() {
        return Err(Refusal::field(Reason::FieldRequired, field, format!("{field} is required")));
    }
    if alias.len() > ALIAS_BYTES_MAX {
        // A bound, not the grammar: FIELD_TOO_LONG names ALIAS_BYTES_MAX (errors.proto).
        return Err(Refusal::field(
            Reason::FieldTooLong,
            field,
            format!("{field} is longer than {ALIAS_BYTES_MAX} bytes"),
        ));
    }
    let Some((local, psp)) = alias.rsplit_once('@') else {
        return Err(malformed("has no @psp suffix"));
    };
    let local_ok = !local.is_empty()
        && local.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"._-".contains(&byte));
    if !local_ok {
        return Err(malformed("has a local part outside [a-z0-9._-]"));
    }
    if !valid_name(psp) {
        return Err(malformed("has a malformed PSP id"));
    }
    Ok(psp)
}

/// Checks free text: present (if required), bounded, no control characters.
pub fn check_text(text: &str, field: &'static str, bytes_max: usize, required: bool) -> Result<(), Refusal> {
    if required && text.is_empty() {
        return Err(Refusal::field(Reason::FieldRequired, field, format!("{field} is required")));
    }
    if text.len() > bytes_max {
        return Err(Refusal::field(Reason::FieldTooLong, field, format!("{field} is longer than {bytes_max} bytes")));
    }
    if text.chars().any(char::is_control) {
        return Err(Refusal::field(Reason::TextInvalid, field, format!("{field} contains control characters")));
    }
    Ok(())
}

/// An alias as a map key: its bytes inline, so that comparing a candidate entry reads the entry
/// itself and not a second heap block. Hashed and compared as its bytes (`Borrow<[u8]>`), so a
/// lookup by `alias.as_bytes()` finds it.
#[derive(Clone, PartialEq, Eq)]
struct AliasKey {
    len: u8,
    bytes: [u8; ALIAS_BYTES_MAX],
}

impl AliasKey {
    /// `None` for an alias longer than any the grammar admits (`alias_owner`).
    fn new(alias: &str) -> Option<AliasKey> {
        let len = u8::try_from(alias.len()).ok().filter(|len| usize::from(*len) <= ALIAS_BYTES_MAX)?;
        let mut bytes = [0u8; ALIAS_BYTES_MAX];
        bytes[..alias.len()].copy_from_slice(alias.as_bytes());
        Some(AliasKey { len, bytes })
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl Borrow<[u8]> for AliasKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Hash for AliasKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `[u8]` hashes, which `Borrow<[u8]>` requires.
        self.as_bytes().hash(state);
    }
}

pub struct Directory {
    aliases: papaya::HashMap<AliasKey, AliasEntry, ahash::RandomState>,
    /// One shared id per PSP, so that millions of entries point at a few hot strings.
    psps: papaya::HashMap<Box<str>, Arc<str>, ahash::RandomState>,
    count: AtomicUsize,
    aliases_max: usize,
}

impl Directory {
    pub fn new(aliases_max: usize) -> Self {
        Directory {
            aliases: papaya::HashMap::default(),
            psps: papaya::HashMap::default(),
            count: AtomicUsize::new(0),
            aliases_max,
        }
    }

    /// Lock-free lookup; a copy of the entry.
    pub fn resolve(&self, alias: &str) -> Option<AliasEntry> {
        self.with_entry(alias, AliasEntry::clone)
    }

    /// Lock-free lookup that reads the entry in place: the payment path's way, which takes what
    /// it needs without touching the entry's reference counts.
    pub fn with_entry<R>(&self, alias: &str, read: impl FnOnce(&AliasEntry) -> R) -> Option<R> {
        self.aliases.pin().get(alias.as_bytes()).map(read)
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_full(&self) -> bool {
        !self.has_room_for(1)
    }

    /// Whether `count` more aliases fit (a batch counts the ones it is about to add).
    pub fn has_room_for(&self, count: usize) -> bool {
        self.len().saturating_add(count) <= self.aliases_max
    }

    /// Applies a committed registration. `false` (and nothing applied) for an alias longer than
    /// the grammar admits, which registration refuses before anything is committed.
    pub fn insert(&self, alias: &str, entry: AliasEntry) -> bool {
        let Some(key) = AliasKey::new(alias) else { return false };
        let psps = self.psps.pin();
        let psp = match psps.get(&*entry.psp) {
            Some(shared) => Arc::clone(shared),
            None => Arc::clone(psps.get_or_insert(Box::from(&*entry.psp), Arc::clone(&entry.psp))),
        };
        if self.aliases.pin().insert(key, AliasEntry { psp, ..entry }).is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Applies a committed removal; returns whether the alias existed.
    pub fn remove(&self, alias: &str) -> bool {
        let existed = self.aliases.pin().remove(alias.as_bytes()).is_some();
        if existed {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        existed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_grammar() {
        assert_eq!(alias_owner("ana.k-1@bank-a", "alias").expect("valid"), "bank-a");
        assert_eq!(alias_owner("a@b@bank-a", "alias").map_err(|r| r.reason), Err(Reason::AliasMalformed));
        for bad in ["ana", "@bank-a", "Ana@bank-a", "ana@B", "ana@x", "ana bank@bank-a"] {
            assert_eq!(alias_owner(bad, "alias").map_err(|r| r.reason), Err(Reason::AliasMalformed), "{bad}");
        }
        assert_eq!(alias_owner("", "alias").map_err(|r| r.reason), Err(Reason::FieldRequired));
        let long = format!("{}@bank-a", "a".repeat(60));
        assert_eq!(alias_owner(&long, "alias").map_err(|r| r.reason), Err(Reason::FieldTooLong));
    }

    #[test]
    fn text_checks() {
        assert!(check_text("Ana K", "display_name", 10, true).is_ok());
        assert_eq!(check_text("", "display_name", 10, true).map_err(|r| r.reason), Err(Reason::FieldRequired));
        assert!(check_text("", "note", 10, false).is_ok());
        assert_eq!(check_text("a\nb", "note", 10, false).map_err(|r| r.reason), Err(Reason::TextInvalid));
        assert_eq!(check_text("ééééééé", "note", 10, false).map_err(|r| r.reason), Err(Reason::FieldTooLong));
    }

    #[test]
    fn counts_follow_inserts_and_removals() {
        let directory = Directory::new(2);
        assert!(directory.has_room_for(2) && !directory.has_room_for(3));
        let entry = AliasEntry { psp: "bank-a".into(), display_name: "Ana".into() };
        assert!(directory.insert("ana@bank-a", entry.clone()));
        assert!(directory.insert("ana@bank-a", entry.clone()));
        assert_eq!(directory.len(), 1);
        assert_eq!(directory.resolve("ana@bank-a"), Some(entry.clone()));
        directory.insert("bo@bank-a", entry);
        assert!(directory.is_full());
        assert!(!directory.has_room_for(1));
        assert!(directory.remove("ana@bank-a"));
        assert!(!directory.remove("ana@bank-a"));
        assert_eq!(directory.len(), 1);
    }

    #[test]
    fn entries_are_found_by_their_exact_bytes_and_share_psp_ids() {
        let directory = Directory::new(10);
        let longest = format!("{}@bank-a", "a".repeat(ALIAS_BYTES_MAX - "@bank-a".len()));
        for alias in ["ana@bank-a", "an@bank-a", longest.as_str()] {
            let entry = AliasEntry { psp: "bank-a".into(), display_name: alias.into() };
            assert!(directory.insert(alias, entry));
        }
        // A key is its bytes and its length: a prefix, an extension or a padded copy is another alias.
        assert_eq!(
            directory.with_entry("an@bank-a", |entry| entry.display_name.to_string()).as_deref(),
            Some("an@bank-a")
        );
        assert!(directory.resolve("ana@bank-").is_none());
        assert!(directory.resolve("ana@bank-a\0").is_none());
        assert!(directory.resolve(&longest).is_some());
        // Longer than any alias: never stored, never found, never a panic.
        let too_long = format!("a{longest}");
        assert!(!directory.insert(&too_long, AliasEntry { psp: "bank-a".into(), display_name: "X".into() }));
        assert!(directory.resolve(&too_long).is_none());
        assert!(!directory.remove(&too_long));
        assert_eq!(directory.len(), 3);
        // Every entry of a PSP points at one shared id.
        let first = directory.with_entry("ana@bank-a", |entry| Arc::clone(&entry.psp)).expect("stored");
        let second = directory.with_entry("an@bank-a", |entry| Arc::clone(&entry.psp)).expect("stored");
        assert!(Arc::ptr_eq(&first, &second));
    }
}
