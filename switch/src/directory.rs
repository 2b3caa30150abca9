//! The directory: alias (`name@psp`) → owning PSP and display name.
//!
//! Reads are on the path of every payment (payer and payee alias), so they take no lock: a
//! concurrent hash map (papaya) whose readers never block. Writes (registration, removal) are
//! made durable through the ledger first and applied to the map only once committed, so the map
//! never shows an alias that a crash could take back. The map is rebuilt from the ledger's
//! `aliases` records at start.
//!
//! Memory: ~150 bytes per alias (key, PSP handle, display name, map overhead): 10M aliases take
//! about 1.5 GB. `limits.aliases_max` bounds it.

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
pub fn alias_owner(alias: &str) -> Result<&str, Refusal> {
    let malformed = |why: &str| Refusal::field(Reason::AliasMalformed, "alias", format!("alias {alias:?} {why}"));
    if alias.is_empty() {
        return Err(Refusal::field(Reason::FieldRequired, "alias", "alias is required"));
    }
    if alias.len() > ALIAS_BYTES_MAX {
        return Err(Refusal::field(
            Reason::AliasMalformed,
            "alias",
            format!("alias longer than {ALIAS_BYTES_MAX} bytes"),
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

pub struct Directory {
    aliases: papaya::HashMap<String, AliasEntry>,
    count: AtomicUsize,
    aliases_max: usize,
}

impl Directory {
    pub fn new(aliases_max: usize) -> Self {
        Directory { aliases: papaya::HashMap::new(), count: AtomicUsize::new(0), aliases_max }
    }

    /// Lock-free lookup.
    pub fn resolve(&self, alias: &str) -> Option<AliasEntry> {
        self.aliases.pin().get(alias).cloned()
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_full(&self) -> bool {
        self.len() >= self.aliases_max
    }

    /// Applies a committed registration.
    pub fn insert(&self, alias: String, entry: AliasEntry) {
        if self.aliases.pin().insert(alias, entry).is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Applies a committed removal; returns whether the alias existed.
    pub fn remove(&self, alias: &str) -> bool {
        let existed = self.aliases.pin().remove(alias).is_some();
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
        assert_eq!(alias_owner("ana.k-1@bank-a").expect("valid"), "bank-a");
        assert_eq!(alias_owner("a@b@bank-a").map_err(|r| r.reason), Err(Reason::AliasMalformed));
        for bad in ["ana", "@bank-a", "Ana@bank-a", "ana@B", "ana@x", "ana bank@bank-a"] {
            assert_eq!(alias_owner(bad).map_err(|r| r.reason), Err(Reason::AliasMalformed), "{bad}");
        }
        assert_eq!(alias_owner("").map_err(|r| r.reason), Err(Reason::FieldRequired));
        let long = format!("{}@bank-a", "a".repeat(60));
        assert_eq!(alias_owner(&long).map_err(|r| r.reason), Err(Reason::AliasMalformed));
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
        let entry = AliasEntry { psp: "bank-a".into(), display_name: "Ana".into() };
        directory.insert("ana@bank-a".into(), entry.clone());
        directory.insert("ana@bank-a".into(), entry.clone());
        assert_eq!(directory.len(), 1);
        assert_eq!(directory.resolve("ana@bank-a"), Some(entry.clone()));
        directory.insert("bo@bank-a".into(), entry);
        assert!(directory.is_full());
        assert!(directory.remove("ana@bank-a"));
        assert!(!directory.remove("ana@bank-a"));
        assert_eq!(directory.len(), 1);
    }
}
