//! Integration tests only: see `tests/`.
//!
//! Below: small generic helpers for tests that drive the real CLIs (kubectl, helm)
//! against the cluster in `KUBECONFIG`. Standard library only (the crate's other
//! dependencies are dev-dependencies, which the library target cannot use).

// ---- CLI test helpers (used by tests/helm.rs) -----------------------------------------

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

/// The repository root (the parent of `e2e/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e/ has a parent").to_path_buf()
}

/// `KUBECONFIG`, which must name a readable file; panics with how to get a cluster.
/// Tests fail instead of skipping when there is no cluster, on purpose.
pub fn require_kubeconfig(how_to_boot: &str) -> String {
    match std::env::var("KUBECONFIG") {
        Ok(k) if Path::new(&k).is_file() => k,
        other => panic!(
            "\n\nE2E NEEDS A CLUSTER: KUBECONFIG is {other:?}, not a readable file.\n\
             {how_to_boot}\nThese tests fail instead of skipping on purpose.\n"
        ),
    }
}

/// The result of one command: success, stdout, stderr.
#[derive(Debug, Clone)]
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program args` with extra environment variables; panics only if it cannot start.
pub fn run(program: &Path, args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Calls `f` every `every` until it returns `Ok`, and returns that value. After `timeout`
/// panics with `what`, the last error and `diagnose()` (logs, describe output).
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<T, String>,
    diagnose: impl FnOnce() -> String,
) -> T {
    let start = Instant::now();
    loop {
        let last = match f() {
            Ok(v) => return v,
            Err(e) => e,
        };
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last: {last}\n{}", diagnose());
        }
        std::thread::sleep(every);
    }
}
