//! Turns the API crate's field errors into the one verdict a reconciler reports: a
//! condition reason, the offending field and a message naming it. Pure.
//!
//! The checks themselves live in `starmesh_api::validation` (shared with `starmesh
//! local`); the operator only adds what depends on the cluster (does the referenced
//! StarSystem exist, is it valid) .

use starmesh_api::{ServerLayoutSpec, StarSystemSpec};

use starmesh_api::validation::{FieldError, validate_server_layout, validate_star_system};

/// Why a resource is not valid, in the shape of a condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// CamelCase condition reason (the first error's).
    pub reason: String,
    /// The first offending field, e.g. `spec.servers[2].territories[0]`.
    pub field: String,
    /// Every error, each naming its field, joined with "; ".
    pub message: String,
}

fn verdict(errors: &[FieldError]) -> Result<(), Invalid> {
    let Some(first) = errors.first() else {
        return Ok(());
    };
    let message =
        errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ");
    Err(Invalid { reason: first.reason.to_string(), field: first.field.to_string(), message })
}

/// The verdict on a StarSystem.
pub fn check_star_system(name: &str, spec: &StarSystemSpec) -> Result<(), Invalid> {
    verdict(&validate_star_system(name, spec))
}

/// What the operator knows about the StarSystem a layout refers to.
pub enum SystemLookup<'a> {
    Missing,
    Found(&'a StarSystemSpec),
}

/// The verdict on a ServerLayout, given its StarSystem (if it exists).
pub fn check_server_layout(
    name: &str,
    spec: &ServerLayoutSpec,
    system: SystemLookup<'_>,
) -> Result<(), Invalid> {
    let system = match system {
        SystemLookup::Missing => {
            return Err(Invalid {
                reason: "SystemNotFound".into(),
                field: "spec.systemRef".into(),
                message: format!(
                    "spec.systemRef: StarSystem {:?} does not exist in this namespace",
                    spec.system_ref
                ),
            });
        }
        SystemLookup::Found(system) => system,
    };
    // A layout over a broken system cannot be checked (territories may not resolve), and
    // serving it would spread the breakage; point at the system instead.
    if let Err(sys) = check_star_system(&spec.system_ref, system) {
        return Err(Invalid {
            reason: "SystemInvalid".into(),
            field: "spec.systemRef".into(),
            message: format!(
                "spec.systemRef: StarSystem {:?} is not valid ({}: {})",
                spec.system_ref, sys.reason, sys.message
            ),
        });
    }
    verdict(&validate_server_layout(name, spec, Some(system)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::tests::{layout_spec, system_spec};

    #[test]
    fn missing_system_names_system_ref() {
        let err = check_server_layout("stanton", &layout_spec(), SystemLookup::Missing)
            .expect_err("missing system must be invalid");
        assert_eq!(err.reason, "SystemNotFound");
        assert_eq!(err.field, "spec.systemRef");
        assert!(err.message.contains("spec.systemRef"));
    }

    #[test]
    fn long_names_are_refused() {
        let sys = system_spec();
        let err = check_server_layout(&"x".repeat(40), &layout_spec(), SystemLookup::Found(&sys))
            .expect_err("too long");
        assert_eq!(err.reason, "NameTooLong");
    }

    #[test]
    fn valid_example_passes() {
        let sys = system_spec();
        assert_eq!(check_star_system("stanton", &sys), Ok(()));
        assert_eq!(
            check_server_layout("stanton", &layout_spec(), SystemLookup::Found(&sys)),
            Ok(())
        );
    }

    #[test]
    fn errors_are_joined_and_first_reason_wins() {
        let errs = vec![
            FieldError { field: "spec.a".into(), reason: "First", message: "bad a".into() },
            FieldError { field: "spec.b".into(), reason: "Second", message: "bad b".into() },
        ];
        let v = verdict(&errs).expect_err("invalid");
        assert_eq!(v.reason, "First");
        assert_eq!(v.field, "spec.a");
        assert_eq!(v.message, "spec.a: bad a; spec.b: bad b");
    }
}
