//! The territory map: named spheres (km). Nested spheres are allowed and the
//! innermost (smallest radius) containing sphere wins; a position in none is
//! in the reserved territory `deep-space`.
//!
//! This is a plain input type on purpose: the StarSystem resource (operator
//! API crate) will later be converted into it, so the replicant does not depend
//! on controller types.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Deserialize;

use crate::model::{TerritoryName, Vec3};

pub const DEEP_SPACE: &str = "deep-space";

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct TerritorySpec {
    pub name: String,
    pub center: [f64; 3],
    pub radius: f64,
}

/// What a replicant is started with: the shard's territories and which
/// servers statically own which territories (unlisted ones go to any live server).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct MeshConfig {
    #[serde(default = "default_system")]
    pub system: String,
    #[serde(default = "default_shard")]
    pub shard: String,
    pub territories: Vec<TerritorySpec>,
    /// server name -> territory names
    #[serde(default)]
    pub static_owners: BTreeMap<String, Vec<String>>,
}

fn default_system() -> String {
    "sol".into()
}
fn default_shard() -> String {
    "0".into()
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TerritoryError {
    #[error("territory name {0:?} is empty, too long or reserved")]
    BadName(String),
    #[error("territory {0:?} is defined twice")]
    Duplicate(String),
    #[error("territory {0:?} needs a finite centre and a finite radius > 0")]
    BadShape(String),
    #[error("server {server:?} statically owns unknown territory {territory:?}")]
    UnknownStatic { server: String, territory: String },
    #[error("territory {0:?} is statically owned by more than one server")]
    StaticConflict(String),
}

#[derive(Clone, Debug)]
struct Sphere {
    name: TerritoryName,
    center: Vec3,
    radius: f64,
}

#[derive(Clone, Debug)]
pub struct TerritoryMap {
    /// Sorted by radius ascending (then name), so the first hit is the innermost.
    spheres: Vec<Sphere>,
    deep_space: TerritoryName,
    static_owner: BTreeMap<TerritoryName, String>,
}

impl TerritoryMap {
    pub fn new(cfg: &MeshConfig) -> Result<Self, TerritoryError> {
        let mut names = BTreeSet::new();
        let mut spheres = Vec::with_capacity(cfg.territories.len());
        for t in &cfg.territories {
            if t.name.is_empty()
                || t.name.len() > crate::wire::validate::MAX_NAME_LEN
                || t.name == DEEP_SPACE
            {
                return Err(TerritoryError::BadName(t.name.clone()));
            }
            if !names.insert(t.name.clone()) {
                return Err(TerritoryError::Duplicate(t.name.clone()));
            }
            if !t.center.iter().all(|c| c.is_finite()) || !t.radius.is_finite() || t.radius <= 0.0 {
                return Err(TerritoryError::BadShape(t.name.clone()));
            }
            spheres.push(Sphere {
                name: t.name.as_str().into(),
                center: t.center.into(),
                radius: t.radius,
            });
        }
        spheres.sort_by(|a, b| a.radius.total_cmp(&b.radius).then_with(|| a.name.cmp(&b.name)));
        let mut static_owner = BTreeMap::new();
        for (server, ts) in &cfg.static_owners {
            for t in ts {
                let Some(s) = spheres.iter().find(|s| &*s.name == t.as_str()) else {
                    if t == DEEP_SPACE {
                        if static_owner.insert(Arc::from(DEEP_SPACE), server.clone()).is_some() {
                            return Err(TerritoryError::StaticConflict(t.clone()));
                        }
                        continue;
                    }
                    return Err(TerritoryError::UnknownStatic {
                        server: server.clone(),
                        territory: t.clone(),
                    });
                };
                if static_owner.insert(s.name.clone(), server.clone()).is_some() {
                    return Err(TerritoryError::StaticConflict(t.clone()));
                }
            }
        }
        Ok(Self { spheres, deep_space: Arc::from(DEEP_SPACE), static_owner })
    }

    /// The territory a position belongs to. Linear in the number of
    /// territories, which is tens per shard, not entities.
    pub fn locate(&self, p: Vec3) -> TerritoryName {
        self.spheres
            .iter()
            .find(|s| s.center.dist2(p) <= s.radius * s.radius)
            .map_or_else(|| self.deep_space.clone(), |s| s.name.clone())
    }

    /// Every territory, including `deep-space`.
    pub fn names(&self) -> Vec<TerritoryName> {
        let mut v: Vec<_> = self.spheres.iter().map(|s| s.name.clone()).collect();
        v.push(self.deep_space.clone());
        v.sort();
        v
    }

    pub fn static_owners(&self) -> &BTreeMap<TerritoryName, String> {
        &self.static_owner
    }
}

/// Built-in test data: a star with a planet (with a moon) and a station.
pub fn builtin_test_config() -> MeshConfig {
    let t =
        |name: &str, c: [f64; 3], r: f64| TerritorySpec { name: name.into(), center: c, radius: r };
    MeshConfig {
        system: "sol".into(),
        shard: "0".into(),
        territories: vec![
            t("earth", [1000.0, 0.0, 0.0], 300.0),
            t("moon", [1200.0, 0.0, 0.0], 50.0),
            t("station", [-500.0, 0.0, 0.0], 20.0),
        ],
        static_owners: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn innermost_sphere_wins_and_rest_is_deep_space() {
        let m = TerritoryMap::new(&builtin_test_config()).unwrap();
        assert_eq!(&*m.locate(Vec3::new(1000.0, 0.0, 0.0)), "earth");
        // Inside both earth (r=300) and moon (r=50): the moon is innermost.
        assert_eq!(&*m.locate(Vec3::new(1210.0, 0.0, 0.0)), "moon");
        assert_eq!(&*m.locate(Vec3::new(0.0, 0.0, 0.0)), DEEP_SPACE);
        assert_eq!(m.names().len(), 4);
    }

    #[test]
    fn rejects_bad_maps() {
        let mut c = builtin_test_config();
        c.territories.push(TerritorySpec { name: "earth".into(), center: [0.0; 3], radius: 1.0 });
        assert_eq!(TerritoryMap::new(&c).unwrap_err(), TerritoryError::Duplicate("earth".into()));
        let mut c = builtin_test_config();
        c.territories[0].radius = f64::NAN;
        assert!(matches!(TerritoryMap::new(&c), Err(TerritoryError::BadShape(_))));
        let mut c = builtin_test_config();
        c.territories[0].name = DEEP_SPACE.into();
        assert!(matches!(TerritoryMap::new(&c), Err(TerritoryError::BadName(_))));
        let mut c = builtin_test_config();
        c.static_owners.insert("s1".into(), vec!["mars".into()]);
        assert!(matches!(TerritoryMap::new(&c), Err(TerritoryError::UnknownStatic { .. })));
    }

    #[test]
    fn parses_json() {
        let j = r#"{"territories":[{"name":"a","center":[0,0,0],"radius":5}],"static_owners":{"s1":["a"]}}"#;
        let c: MeshConfig = serde_json::from_str(j).unwrap();
        let m = TerritoryMap::new(&c).unwrap();
        assert_eq!(m.static_owners().get("a").map(String::as_str), Some("s1"));
    }
}
