//! The shard's registry of custom component types: the replicant, not each
//! game server, decides which typed components (`EntityWrite.custom`) may be
//! written. Servers declare the types they write in their `Hello` (name,
//! schema version, max size); a declaration that disagrees with one held by
//! another connected server is refused at connect, and a typed write of an
//! unregistered type, another schema version or an oversized component is
//! rejected (answers, not errors: the stream stays open). Pure: no I/O.
//!
//! An entry outlives the servers that declared it (a write arriving after
//! its server left still finds the type), and is replaced only by a
//! declaration made while no connected server holds it: a schema upgrade
//! replaces every server of the old version first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::model::ServerName;
use crate::wire::pb::RejectReason;
use crate::wire::validate::{ComponentType, ComponentUse};

#[derive(Debug)]
struct Entry {
    schema_version: u32,
    max_bytes: usize,
    /// Connections (conn id -> server name) that declared it and are still connected.
    holders: BTreeMap<u64, ServerName>,
}

/// A declaration refused at connect: `type_name` is held differently by `held_by`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "component type `{type_name}` is registered at schema version {registered_version} \
     (max {registered_max} bytes) by connected server `{held_by}`; this server declares \
     version {declared_version} (max {declared_max} bytes). Replace every server of one \
     declaration before connecting one of another (see node/proto/PROTOCOL.md)"
)]
pub struct Conflict {
    pub type_name: Arc<str>,
    pub registered_version: u32,
    pub registered_max: usize,
    pub held_by: ServerName,
    pub declared_version: u32,
    pub declared_max: usize,
}

/// Why a typed write is refused, with its rejection reason and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unregistered,
    Version,
    TooLarge,
}

impl Refusal {
    pub fn reason(self) -> RejectReason {
        match self {
            Refusal::Unregistered => RejectReason::ComponentUnregistered,
            Refusal::Version => RejectReason::ComponentVersion,
            Refusal::TooLarge => RejectReason::ComponentTooLarge,
        }
    }

    /// The `reason` label of `starmesh_rejected_writes_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Unregistered => "component_unregistered",
            Refusal::Version => "component_version",
            Refusal::TooLarge => "component_too_large",
        }
    }
}

#[derive(Debug, Default)]
pub struct Registry {
    types: BTreeMap<Arc<str>, Entry>,
}

impl Registry {
    /// Registers every type `server` (on connection `conn`) declares, or none:
    /// the first conflicting declaration refuses the whole Hello. A holder
    /// with the same server name is the connection this one supersedes, so it
    /// never conflicts.
    pub fn register(
        &mut self,
        conn: u64,
        server: &ServerName,
        declared: &[ComponentType],
    ) -> Result<(), Conflict> {
        for d in declared {
            let Some(e) = self.types.get(&d.type_name) else { continue };
            if (e.schema_version, e.max_bytes) == (d.schema_version, d.max_bytes) {
                continue;
            }
            if let Some(other) = e.holders.values().find(|h| *h != server) {
                return Err(Conflict {
                    type_name: d.type_name.clone(),
                    registered_version: e.schema_version,
                    registered_max: e.max_bytes,
                    held_by: other.clone(),
                    declared_version: d.schema_version,
                    declared_max: d.max_bytes,
                });
            }
        }
        for d in declared {
            let e = self.types.entry(d.type_name.clone()).or_insert_with(|| Entry {
                schema_version: d.schema_version,
                max_bytes: d.max_bytes,
                holders: BTreeMap::new(),
            });
            if (e.schema_version, e.max_bytes) != (d.schema_version, d.max_bytes) {
                // Held by no other server (checked above): this declaration replaces it.
                e.schema_version = d.schema_version;
                e.max_bytes = d.max_bytes;
                e.holders.retain(|_, h| h == server);
            }
            e.holders.insert(conn, server.clone());
        }
        Ok(())
    }

    /// `conn` is gone: its declarations no longer hold their types (the types stay registered).
    pub fn release(&mut self, conn: u64) {
        for e in self.types.values_mut() {
            e.holders.remove(&conn);
        }
    }

    /// Whether a typed write may be applied: every component of a registered
    /// type, at its schema version, within its size.
    pub fn check(&self, uses: &[ComponentUse]) -> Result<(), Refusal> {
        for u in uses {
            let e = self.types.get(&u.type_name).ok_or(Refusal::Unregistered)?;
            if e.schema_version != u.schema_version {
                return Err(Refusal::Version);
            }
            if u.data_len > e.max_bytes {
                return Err(Refusal::TooLarge);
            }
        }
        Ok(())
    }

    /// Registered type names with their schema versions (for logs and tests).
    pub fn versions(&self) -> BTreeSet<(Arc<str>, u32)> {
        self.types.iter().map(|(n, e)| (n.clone(), e.schema_version)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(name: &str, v: u32, max: usize) -> ComponentType {
        ComponentType { type_name: name.into(), schema_version: v, max_bytes: max }
    }

    fn used(name: &str, v: u32, len: usize) -> ComponentUse {
        ComponentUse { type_name: name.into(), schema_version: v, data_len: len }
    }

    #[test]
    fn writes_are_checked_against_the_declared_types() {
        let mut r = Registry::default();
        r.register(1, &"s-a".into(), &[ty("acme.cargo", 2, 100)]).unwrap();
        assert_eq!(r.check(&[]), Ok(()), "an untyped write is not the registry's business");
        assert_eq!(r.check(&[used("acme.cargo", 2, 100)]), Ok(()));
        assert_eq!(r.check(&[used("acme.crew", 1, 1)]), Err(Refusal::Unregistered));
        assert_eq!(r.check(&[used("acme.cargo", 1, 1)]), Err(Refusal::Version));
        assert_eq!(r.check(&[used("acme.cargo", 2, 101)]), Err(Refusal::TooLarge));
        assert_eq!(
            r.check(&[used("acme.cargo", 2, 1), used("acme.crew", 1, 1)]),
            Err(Refusal::Unregistered),
            "one bad component refuses the whole write"
        );
    }

    #[test]
    fn a_conflicting_declaration_is_refused_whole_while_its_holder_is_connected() {
        let mut r = Registry::default();
        r.register(1, &"s-a".into(), &[ty("acme.cargo", 2, 100)]).unwrap();
        // The same declaration from another server: fine.
        r.register(2, &"s-b".into(), &[ty("acme.cargo", 2, 100)]).unwrap();
        let before = r.versions();
        let c = r
            .register(3, &"s-c".into(), &[ty("acme.crew", 1, 8), ty("acme.cargo", 3, 100)])
            .unwrap_err();
        assert_eq!((c.registered_version, c.declared_version), (2, 3));
        assert!(c.to_string().contains("`acme.cargo` is registered at schema version 2"), "{c}");
        assert_eq!(r.versions(), before, "a refused Hello registers nothing");
        // A different size is a conflict too.
        assert!(r.register(3, &"s-c".into(), &[ty("acme.cargo", 2, 50)]).is_err());
        // The server superseding its own connection may redeclare.
        r.release(2);
        r.register(4, &"s-a".into(), &[ty("acme.cargo", 3, 100)]).unwrap();
        assert_eq!(r.check(&[used("acme.cargo", 3, 1)]), Ok(()));
    }

    #[test]
    fn types_outlive_their_servers_and_are_replaced_only_when_nobody_holds_them() {
        let mut r = Registry::default();
        r.register(1, &"s-a".into(), &[ty("acme.cargo", 2, 100)]).unwrap();
        r.release(1);
        assert_eq!(r.check(&[used("acme.cargo", 2, 1)]), Ok(()), "still registered");
        // An upgrade once every server of version 2 is gone.
        r.register(2, &"s-b".into(), &[ty("acme.cargo", 3, 200)]).unwrap();
        assert_eq!(r.check(&[used("acme.cargo", 2, 1)]), Err(Refusal::Version));
        assert_eq!(r.check(&[used("acme.cargo", 3, 150)]), Ok(()));
    }
}
