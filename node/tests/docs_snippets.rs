//! Every ```` ```sh ```` block of the handbook (`docs/src/`) runs against the local mesh,
//! so the docs cannot rot: each page's blocks in order as one bash script, in a fresh
//! folder where `manifests/` is the repository's, with this build's `starmesh` first on
//! `PATH`. The convention is `docs/README.md`; the extractor is `docs/snippets.rs`
//! (shared with `e2e/tests/docs.rs`, which runs the ```` ```sh,cluster ```` blocks).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../docs/snippets.rs"]
mod snippets;

use snippets::Runner;

/// Longest one page's snippets may take (they run `starmesh local` for seconds each).
const PAGE_TIMEOUT: Duration = Duration::from_secs(240);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every `.md` under `dir`, as paths relative to `root`.
fn markdown_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for e in entries {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            markdown_files(root, &p, out);
        } else if p.extension().is_some_and(|x| x == "md") {
            let rel = p.strip_prefix(root).expect("under root");
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}

/// The book's pages in `SUMMARY.md` order, after checking that every page is listed
/// (a page left out would be neither built nor run) and every listed page exists.
fn book_pages() -> Vec<String> {
    let src = repo().join("docs/src");
    let pages = snippets::pages(&read(&src.join("SUMMARY.md")));
    let mut files = Vec::new();
    markdown_files(&src, &src, &mut files);
    for f in &files {
        assert!(f == "SUMMARY.md" || pages.contains(f), "docs/src/{f} is not in SUMMARY.md");
    }
    for p in &pages {
        assert!(src.join(p).is_file(), "SUMMARY.md lists {p}, which does not exist");
    }
    pages
}

#[test]
fn every_page_parses_under_the_snippet_convention() {
    let src = repo().join("docs/src");
    let mut local = 0;
    let mut cluster = 0;
    for page in book_pages() {
        let s = snippets::snippets(&read(&src.join(&page)))
            .unwrap_or_else(|e| panic!("docs/src/{page}: {e}"));
        local += s.iter().filter(|s| s.runner == Runner::Local).count();
        cluster += s.iter().filter(|s| s.runner == Runner::Cluster).count();
    }
    // The book has commands of both kinds; zero would mean the extractor lost them.
    assert!(local >= 3 && cluster >= 10, "found {local} local and {cluster} cluster snippets");
}

/// mdBook's id for a heading: lower case, letters, digits, `-` and `_` kept, spaces to `-`.
fn heading_id(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The relative links of a page: `(target file, anchor)`.
fn links(markdown: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut rest = markdown;
    while let Some(at) = rest.find("](") {
        let tail = &rest[at + 2..];
        let Some(end) = tail.find(')') else { break };
        let target = &tail[..end];
        if !target.contains("://") && !target.starts_with('#') && target.contains(".md") {
            let (file, anchor) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a.to_string())),
                None => (target, None),
            };
            out.push((file.to_string(), anchor));
        }
        rest = &tail[end..];
    }
    out
}

#[test]
fn links_between_pages_resolve_to_a_page_and_heading() {
    assert_eq!(heading_id("`starmesh local`"), "starmesh-local");
    assert_eq!(
        links("[a](x/y.md#z) [b](https://e.md) [c](../w.md)"),
        [("x/y.md".to_string(), Some("z".to_string())), ("../w.md".to_string(), None)]
    );
    let src = repo().join("docs/src");
    let mut checked = 0;
    for page in book_pages() {
        let here = src.join(&page);
        let dir = here.parent().expect("page dir").to_path_buf();
        for (file, anchor) in links(&read(&here)) {
            let target = dir.join(&file);
            assert!(target.is_file(), "docs/src/{page}: link to {file}, which does not exist");
            if let Some(a) = anchor {
                let ids: Vec<String> = read(&target)
                    .lines()
                    .filter_map(|l| l.strip_prefix('#'))
                    .map(|h| heading_id(h.trim_start_matches('#')))
                    .collect();
                assert!(
                    ids.contains(&a),
                    "docs/src/{page}: link to {file}#{a}, which has no such heading"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} links checked");
}

#[test]
fn local_snippets_run_against_the_local_mesh() {
    let starmesh = PathBuf::from(env!("CARGO_BIN_EXE_starmesh"));
    let bin_dir = starmesh.parent().expect("bin dir").to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let src = repo().join("docs/src");
    let mut ran = 0;
    for page in book_pages() {
        let s = snippets::snippets(&read(&src.join(&page))).expect("parses (checked above)");
        let Some(script) = snippets::script(&format!("docs/src/{page}"), &s, Runner::Local) else {
            continue;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        std::os::unix::fs::symlink(repo().join("manifests"), dir.path().join("manifests"))
            .expect("symlink manifests");
        let t0 = Instant::now();
        let out = run_bash(&script, dir.path(), &path);
        println!(
            "docs/src/{page}: {} local snippets in {:.1}s",
            s.iter().filter(|s| s.runner == Runner::Local).count(),
            t0.elapsed().as_secs_f64()
        );
        assert!(
            out.ok,
            "docs/src/{page}: its sh snippets failed ({}).\n--- stdout\n{}\n--- stderr\n{}",
            out.why, out.stdout, out.stderr
        );
        ran += 1;
    }
    assert!(ran >= 1, "no page has local snippets");
}

struct Ran {
    ok: bool,
    why: String,
    stdout: String,
    stderr: String,
}

/// bash in its own process group, killed whole (by its PID as the group id) when the
/// page runs out of time, so a snippet's background `starmesh local` goes too.
fn run_bash(script: &str, cwd: &Path, path: &str) -> Ran {
    use std::os::unix::process::CommandExt;
    let out_file = cwd.join(".snippet-stdout");
    let err_file = cwd.join(".snippet-stderr");
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(cwd)
        .env("PATH", path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).expect("stdout file"))
        .stderr(std::fs::File::create(&err_file).expect("stderr file"))
        .process_group(0)
        .spawn()
        .expect("spawn bash");
    let t0 = Instant::now();
    let (ok, why) = loop {
        match child.try_wait().expect("wait bash") {
            Some(status) => break (status.success(), format!("{status}")),
            None if t0.elapsed() > PAGE_TIMEOUT => {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .status();
                let _ = child.wait();
                break (false, format!("timed out after {PAGE_TIMEOUT:?}"));
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    // Whatever a failed page left in the background (a `starmesh local ... &`) goes too.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    Ran { ok, why, stdout: read(&out_file), stderr: read(&err_file) }
}
