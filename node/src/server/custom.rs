//! Typed custom components: a game's own entity data as bytes with a
//! registered type name and schema version (`starmesh.v1.CustomComponent`),
//! kept in the entity's `components` as a `ComponentSet`. They replicate,
//! persist and stream exactly as `components` do, and are built here with the
//! replicant's own validation (`validate::component_set`), so a set this
//! accepts is one the replicant accepts.
//!
//! A game registers the types it writes, each with the schema version it
//! writes, in a `Registry` (returned by `Game::components`); writing an
//! unregistered type is an error here, not a surprise for the next server
//! that reads it. The runner declares the registry in its `Hello` and sends
//! the components typed, so the replicant (the shard's authority on types,
//! `replicant/components.rs`) checks every write too.

use std::collections::BTreeMap;

use prost::Message;

use crate::model::Entity;
use crate::wire::pb;
use crate::wire::validate::{self, WireError};

/// The custom components of `e`, sorted by type name. Components that are not
/// a `ComponentSet` (another game's raw bytes, or none) read as none.
pub fn components(e: &Entity) -> Vec<pb::CustomComponent> {
    decode(&e.components)
}

/// `components` bytes (an entity's, or a neighbour's in
/// `Game::component_changed`) as custom components; none if not a `ComponentSet`.
pub fn decode(components: &[u8]) -> Vec<pb::CustomComponent> {
    pb::ComponentSet::decode(components).map(|s| s.custom).unwrap_or_default()
}

/// The component of type `type_name`, if `e` has one.
pub fn get(e: &Entity, type_name: &str) -> Option<pb::CustomComponent> {
    components(e).into_iter().find(|c| c.type_name == type_name)
}

/// `components` as typed components to send in `EntityWrite.custom`: only a
/// non-empty `ComponentSet` that is exactly the canonical encoding of itself
/// (what `Registry::set` writes), so opaque bytes that happen to decode are
/// never reinterpreted.
pub fn typed(components: &[u8]) -> Option<Vec<pb::CustomComponent>> {
    let set = pb::ComponentSet::decode(components).ok()?;
    (!set.custom.is_empty() && set.encode_to_vec() == components).then_some(set.custom)
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CustomError {
    #[error("component type `{0}` is not registered")]
    Unregistered(String),
    #[error(transparent)]
    Invalid(#[from] WireError),
}

/// The component types a game writes: type name -> schema version.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    types: BTreeMap<String, u32>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `type_name` (checked as the replicant checks it) at `schema_version` (>= 1).
    pub fn register(mut self, type_name: &str, schema_version: u32) -> Result<Self, CustomError> {
        validate::component_type_name(type_name)?;
        if schema_version == 0 {
            return Err(WireError::Missing("write.custom.schema_version").into());
        }
        self.types.insert(type_name.to_string(), schema_version);
        Ok(self)
    }

    pub fn schema_version(&self, type_name: &str) -> Option<u32> {
        self.types.get(type_name).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// The types as the `Hello` declares them to the replicant (the shard's
    /// registry, which checks every typed write against them). `max_bytes` 0:
    /// the components bound.
    pub fn declarations(&self) -> Vec<pb::ComponentType> {
        self.types
            .iter()
            .map(|(name, v)| pb::ComponentType {
                type_name: name.clone(),
                schema_version: *v,
                max_bytes: 0,
            })
            .collect()
    }

    /// Sets (or replaces) the component `type_name` of `e` to `data`, stamped
    /// with its registered schema version. Refused, with `e` unchanged, if the
    /// type is not registered or the set would exceed the components bound.
    pub fn set(&self, e: &mut Entity, type_name: &str, data: &[u8]) -> Result<(), CustomError> {
        let v = self
            .schema_version(type_name)
            .ok_or_else(|| CustomError::Unregistered(type_name.to_string()))?;
        let mut all = components(e);
        all.retain(|c| c.type_name != type_name);
        all.push(pb::CustomComponent {
            type_name: type_name.to_string(),
            schema_version: v,
            data: bytes::Bytes::copy_from_slice(data),
        });
        e.components = validate::component_set(all)?;
        Ok(())
    }

    /// Removes the component `type_name` of `e`; true if it had one.
    pub fn remove(&self, e: &mut Entity, type_name: &str) -> Result<bool, CustomError> {
        let mut all = components(e);
        let before = all.len();
        all.retain(|c| c.type_name != type_name);
        if all.len() == before {
            return Ok(false);
        }
        e.components = validate::component_set(all)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::validate::MAX_COMPONENT_BYTES;

    fn e() -> Entity {
        Entity {
            id: 1,
            kind: 1,
            position: Default::default(),
            velocity: Default::default(),
            location: "".into(),
            version: 1,
            components: Default::default(),
            components_version: 1,
            territory: "t".into(),
        }
    }

    #[test]
    fn registered_components_are_set_read_replaced_and_removed() {
        let r =
            Registry::new().register("acme.cargo", 3).unwrap().register("acme.crew", 1).unwrap();
        let mut x = e();
        assert!(components(&x).is_empty());
        r.set(&mut x, "acme.crew", b"4").unwrap();
        r.set(&mut x, "acme.cargo", b"ore").unwrap();
        r.set(&mut x, "acme.cargo", b"ice").unwrap();
        let names: Vec<_> = components(&x).into_iter().map(|c| c.type_name).collect();
        assert_eq!(names, ["acme.cargo", "acme.crew"], "sorted, one per type");
        let c = get(&x, "acme.cargo").unwrap();
        assert_eq!((c.schema_version, c.data.as_ref()), (3, &b"ice"[..]));
        assert_eq!(
            r.set(&mut x, "acme.hull", b"x"),
            Err(CustomError::Unregistered("acme.hull".into()))
        );
        let before = x.components.clone();
        assert!(matches!(
            r.set(&mut x, "acme.cargo", &vec![0; MAX_COMPONENT_BYTES]),
            Err(CustomError::Invalid(WireError::TooLong { .. }))
        ));
        assert_eq!(x.components, before, "a refused set changes nothing");
        assert!(r.remove(&mut x, "acme.crew").unwrap());
        assert!(!r.remove(&mut x, "acme.crew").unwrap());
        assert!(get(&x, "acme.crew").is_none());
        // The bytes are exactly what the replicant stores for the same write.
        let w = validate::component_set(components(&x)).unwrap();
        assert_eq!(w, x.components);
        // What the runner sends typed: exactly this set, and never opaque bytes.
        assert_eq!(typed(&x.components).map(|c| c.len()), Some(1));
        assert_eq!(typed(b""), None);
        assert_eq!(typed(&[0xff, 0x01]), None);
        let d = r.declarations();
        assert_eq!(
            d.iter().map(|t| (t.type_name.as_str(), t.schema_version)).collect::<Vec<_>>(),
            [("acme.cargo", 3), ("acme.crew", 1)]
        );
    }

    #[test]
    fn names_are_checked_as_the_replicant_checks_them() {
        assert!(Registry::new().register("Acme", 1).is_err());
        assert!(Registry::new().register("acme", 0).is_err());
        assert!(Registry::new().register("acme.v2-x_y", 1).is_ok());
    }
}
