//! Terminal progress while the mesh starts: one line per step, with the time
//! since start, so a slow step is visible. Plain lines (no cursor tricks):
//! they read the same in a terminal, a CI log or a pipe.

use std::io::Write;
use std::time::Instant;

#[derive(Clone, Copy)]
pub struct Progress {
    started: Instant,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    pub fn new() -> Self {
        Self { started: Instant::now() }
    }

    pub fn step(&self, what: impl std::fmt::Display) {
        let t = self.started.elapsed().as_secs_f64();
        let mut out = std::io::stdout().lock();
        // A closed stdout must not stop the mesh.
        let _ = writeln!(out, "[{t:6.2}s] {what}");
        let _ = out.flush();
    }

    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }
}
