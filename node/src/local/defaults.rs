//! The Stanton example, compiled in, so `starmesh local` works from a fresh
//! clone (or a bare binary) with no file at hand.

use std::path::{Path, PathBuf};

pub const STANTON: &str = include_str!("../../../manifests/examples/stanton.yaml");
pub const STANTON_LAYOUT: &str = include_str!("../../../manifests/examples/stanton-layout.yaml");

/// Writes the compiled-in example into the data folder and returns its paths.
/// Why files and not text: the defaults then go through exactly the loader
/// and validation user files go through (one code path, one set of error
/// messages), and the user finds a copy to start editing from.
pub fn materialize(data: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    let dir = data.join("examples");
    std::fs::create_dir_all(&dir)?;
    let system = dir.join("stanton.yaml");
    let layout = dir.join("stanton-layout.yaml");
    for (path, text) in [(&system, STANTON), (&layout, STANTON_LAYOUT)] {
        // Rewritten only when different, so an unchanged folder is untouched.
        if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
            std::fs::write(path, text)?;
        }
    }
    Ok((system, layout))
}
