//! The Kubernetes "restricted" Pod Security Standard (baseline plus restricted rules, as
//! documented for PSS v1.25+) as a pure checker. Kubernetes 1.20 has no PodSecurity
//! admission, so the operator's builders (unit tests) and the e2e tests (every pod in
//! the namespace) check pods against it themselves.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Capabilities, PodSpec, SeccompProfile, SecurityContext};

/// Volume types the restricted profile allows.
const ALLOWED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Sysctls the baseline profile allows.
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
];

fn seccomp_ok(p: Option<&SeccompProfile>) -> Option<bool> {
    p.map(|p| p.type_ == "RuntimeDefault" || p.type_ == "Localhost")
}

/// Every way `spec` (with the pod's `annotations`) breaks the restricted profile, one
/// message per rule and container; empty when it conforms.
pub fn restricted_violations(
    annotations: &BTreeMap<String, String>,
    spec: &PodSpec,
) -> Vec<String> {
    let mut v = Vec::new();
    if spec.host_network == Some(true) {
        v.push("hostNetwork must not be true".into());
    }
    if spec.host_pid == Some(true) {
        v.push("hostPID must not be true".into());
    }
    if spec.host_ipc == Some(true) {
        v.push("hostIPC must not be true".into());
    }
    for vol in spec.volumes.iter().flatten() {
        let json = serde_json::to_value(vol).unwrap_or_default();
        for key in json.as_object().into_iter().flat_map(|o| o.keys()) {
            if key != "name" && !ALLOWED_VOLUMES.contains(&key.as_str()) {
                v.push(format!("volume {}: type {key} is not allowed", vol.name));
            }
        }
    }
    for (k, val) in annotations {
        if k.starts_with("container.apparmor.security.beta.kubernetes.io/")
            && val != "runtime/default"
            && !val.starts_with("localhost/")
        {
            v.push(format!(
                "annotation {k}={val}: AppArmor must be runtime/default or localhost/*"
            ));
        }
    }
    let psc = spec.security_context.clone().unwrap_or_default();
    for s in psc.sysctls.iter().flatten() {
        if !SAFE_SYSCTLS.contains(&s.name.as_str()) {
            v.push(format!("sysctl {} is not allowed", s.name));
        }
    }
    if psc.run_as_user == Some(0) {
        v.push("pod runAsUser must not be 0".into());
    }
    if let Some(se) = &psc.se_linux_options {
        check_selinux("pod", se, &mut v);
    }
    if seccomp_ok(psc.seccomp_profile.as_ref()) == Some(false) {
        v.push("pod seccompProfile must be RuntimeDefault or Localhost".into());
    }

    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| (&c.name, c.security_context.as_ref(), c.ports.as_deref()))
        .chain(
            spec.containers
                .iter()
                .map(|c| (&c.name, c.security_context.as_ref(), c.ports.as_deref())),
        )
        .chain(
            spec.ephemeral_containers
                .iter()
                .flatten()
                .map(|c| (&c.name, c.security_context.as_ref(), c.ports.as_deref())),
        );
    for (name, sc, ports) in containers {
        let sc: SecurityContext = sc.cloned().unwrap_or_default();
        let who = format!("container {name}");
        for p in ports.into_iter().flatten() {
            if p.host_port.is_some_and(|h| h != 0) {
                v.push(format!("{who}: hostPort {:?} is not allowed", p.host_port));
            }
        }
        if sc.privileged == Some(true) {
            v.push(format!("{who}: privileged must not be true"));
        }
        if sc.allow_privilege_escalation != Some(false) {
            v.push(format!("{who}: allowPrivilegeEscalation must be false"));
        }
        match (sc.run_as_non_root, psc.run_as_non_root) {
            (Some(true), _) | (None, Some(true)) => {}
            _ => v.push(format!("{who}: runAsNonRoot must be true (container or pod)")),
        }
        if sc.run_as_user == Some(0) {
            v.push(format!("{who}: runAsUser must not be 0"));
        }
        match (seccomp_ok(sc.seccomp_profile.as_ref()), seccomp_ok(psc.seccomp_profile.as_ref())) {
            (Some(true), _) | (None, Some(true)) => {}
            _ => v.push(format!(
                "{who}: seccompProfile must be RuntimeDefault or Localhost (container or pod)"
            )),
        }
        if let Some(se) = &sc.se_linux_options {
            check_selinux(&who, se, &mut v);
        }
        if sc.proc_mount.as_deref().is_some_and(|p| p != "Default") {
            v.push(format!("{who}: procMount must be Default"));
        }
        let caps: Capabilities = sc.capabilities.unwrap_or_default();
        if !caps.drop.iter().flatten().any(|c| c == "ALL") {
            v.push(format!("{who}: capabilities must drop ALL"));
        }
        for add in caps.add.iter().flatten() {
            if add != "NET_BIND_SERVICE" {
                v.push(format!("{who}: capability {add} must not be added"));
            }
        }
    }
    v
}

fn check_selinux(who: &str, se: &k8s_openapi::api::core::v1::SELinuxOptions, v: &mut Vec<String>) {
    if let Some(t) = &se.type_
        && !["container_t", "container_init_t", "container_kvm_t"].contains(&t.as_str())
    {
        v.push(format!("{who}: seLinuxOptions.type {t} is not allowed"));
    }
    if se.user.is_some() || se.role.is_some() {
        v.push(format!("{who}: seLinuxOptions user/role must not be set"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> PodSpec {
        serde_json::from_value(json).expect("pod spec")
    }

    fn good() -> serde_json::Value {
        serde_json::json!({
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "i",
                "securityContext": {"allowPrivilegeEscalation": false,
                                    "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
            "volumes": [{"name": "m", "configMap": {"name": "x"}},
                        {"name": "d", "persistentVolumeClaim": {"claimName": "c"}},
                        {"name": "t", "secret": {"secretName": "s"}}]
        })
    }

    #[test]
    fn a_restricted_pod_passes() {
        assert_eq!(restricted_violations(&BTreeMap::new(), &pod(good())), Vec::<String>::new());
    }

    #[test]
    fn a_bad_pod_fails_every_rule_it_breaks() {
        let bad = pod(serde_json::json!({
            "hostNetwork": true, "hostPID": true, "hostIPC": true,
            "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}],
                                "seccompProfile": {"type": "Unconfined"}},
            "initContainers": [{"name": "init", "image": "i"}],
            "containers": [{"name": "c", "image": "i",
                "ports": [{"containerPort": 80, "hostPort": 80}],
                "securityContext": {"privileged": true, "allowPrivilegeEscalation": true,
                    "runAsNonRoot": false, "runAsUser": 0, "procMount": "Unmasked",
                    "seLinuxOptions": {"type": "spc_t"},
                    "capabilities": {"add": ["SYS_ADMIN"]}}}],
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}]
        }));
        let annotations = BTreeMap::from([(
            "container.apparmor.security.beta.kubernetes.io/c".to_string(),
            "unconfined".to_string(),
        )]);
        let v = restricted_violations(&annotations, &bad);
        let expect = [
            "hostNetwork",
            "hostPID",
            "hostIPC",
            "volume h: type hostPath",
            "AppArmor",
            "sysctl kernel.msgmax",
            "pod seccompProfile",
            "container init: allowPrivilegeEscalation",
            "container init: runAsNonRoot",
            "container init: seccompProfile",
            "container init: capabilities must drop ALL",
            "container c: hostPort",
            "container c: privileged",
            "container c: allowPrivilegeEscalation",
            "container c: runAsNonRoot",
            "container c: runAsUser",
            "container c: seccompProfile",
            "container c: seLinuxOptions.type",
            "container c: procMount",
            "container c: capabilities must drop ALL",
            "container c: capability SYS_ADMIN",
        ];
        for e in expect {
            assert!(v.iter().any(|m| m.contains(e)), "no violation naming {e:?} in {v:#?}");
        }
        assert_eq!(v.len(), expect.len(), "{v:#?}");
    }

    #[test]
    fn each_single_omission_is_caught() {
        for (path, what) in [
            ("/containers/0/securityContext/allowPrivilegeEscalation", "allowPrivilegeEscalation"),
            ("/containers/0/securityContext/capabilities/drop", "drop ALL"),
            ("/securityContext/runAsNonRoot", "runAsNonRoot"),
            ("/securityContext/seccompProfile", "seccompProfile"),
        ] {
            let mut j = good();
            let (parent, key) = path.rsplit_once('/').expect("path");
            j.pointer_mut(parent)
                .and_then(|p| p.as_object_mut())
                .and_then(|o| o.remove(key))
                .expect("field present");
            let v = restricted_violations(&BTreeMap::new(), &pod(j));
            assert!(v.iter().any(|m| m.contains(what)), "removing {path}: {v:?}");
        }
    }

    /// Every pod template the operator builds (replicant, servers, gateway with a
    /// player-token Secret) meets the profile.
    #[test]
    fn every_pod_the_operator_builds_is_restricted() {
        use crate::builders::{self, LayoutRef};
        let mut spec = starmesh_api::yaml::load_server_layout(include_str!(
            "../../manifests/examples/stanton-layout.yaml"
        ))
        .expect("stanton layout example")
        .spec;
        spec.gateway.player_token_secret = Some("starmesh-player-token".into());
        let mut l = starmesh_api::ServerLayout::new("stanton", spec);
        l.metadata.namespace = Some("ns".into());
        l.metadata.uid = Some("uid-1".into());
        let r = LayoutRef::new(&l, "starmesh:dev").expect("ref");
        let templates = [
            ("replicant", builders::replicant_statefulset(&r, 0).spec.template),
            ("servers", builders::servers_statefulset(&r, 0, 2).spec.template),
            ("gateway", builders::gateway_deployment(&r, 0).spec.template),
        ];
        for (role, t) in templates {
            let annotations = t.metadata.and_then(|m| m.annotations).unwrap_or_default();
            let pod = t.spec.expect("pod spec");
            assert_eq!(restricted_violations(&annotations, &pod), Vec::<String>::new(), "{role}");
        }
    }
}
