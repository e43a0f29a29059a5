//! The handbook's executable snippets: which fenced blocks of `docs/src/` run, and the
//! script each page becomes. Included with `#[path]` by the two tests that run them:
//! `node/tests/docs_snippets.rs` (`sh` blocks, against the local mesh) and
//! `e2e/tests/docs.rs` (`sh,cluster` blocks, against the e2e cluster). The convention is
//! written down for authors in `docs/README.md`.
//!
//! Pure text handling, no I/O.

#![allow(dead_code)] // each test uses its own part

/// Where a snippet runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runner {
    /// ```` ```sh ````: with `starmesh` on PATH, in a fresh folder where `manifests/` is
    /// the repository's.
    Local,
    /// ```` ```sh,cluster ````: from the repository root against a running cluster
    /// (`kubectl`, `helm` on PATH, the images loaded).
    Cluster,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snippet {
    /// 1-based line of the opening fence.
    pub line: usize,
    pub runner: Runner,
    pub code: String,
}

/// The snippets of one page. A block whose language is a shell but not one of the two
/// run kinds (`bash`, `shell`, `console`, `sh,foo`...) is an error, so a command cannot
/// slip out of CI by its spelling; show output as ```` ```text ````.
pub fn snippets(markdown: &str) -> Result<Vec<Snippet>, String> {
    let mut out = Vec::new();
    let mut open: Option<(usize, String, usize, Option<Runner>, String)> = None;
    for (i, raw) in markdown.lines().enumerate() {
        let indent = raw.len() - raw.trim_start().len();
        let line = raw.trim_start();
        match &mut open {
            None => {
                if let Some(info) = line.strip_prefix("```") {
                    let info = info.trim();
                    open = Some((
                        i + 1,
                        fence_of(line),
                        indent,
                        runner_of(info, i + 1)?,
                        String::new(),
                    ));
                } else if line.starts_with("~~~") {
                    return Err(format!("line {}: use ``` fences, not ~~~", i + 1));
                }
            }
            Some((start, fence, ind, runner, code)) => {
                if line.starts_with(fence.as_str()) && line.trim_end().chars().all(|c| c == '`') {
                    if let Some(r) = runner {
                        out.push(Snippet { line: *start, runner: *r, code: std::mem::take(code) });
                    }
                    open = None;
                } else {
                    // Content indented with its fence (a block inside a list item).
                    let cut = raw.len() - raw.trim_start().len();
                    code.push_str(&raw[cut.min(*ind)..]);
                    code.push('\n');
                }
            }
        }
    }
    if let Some((start, ..)) = open {
        return Err(format!("line {start}: code block never closed"));
    }
    Ok(out)
}

fn fence_of(line: &str) -> String {
    line.chars().take_while(|c| *c == '`').collect()
}

fn runner_of(info: &str, line: usize) -> Result<Option<Runner>, String> {
    let lang = info.split([',', ' ']).next().unwrap_or_default();
    match info {
        "sh" => Ok(Some(Runner::Local)),
        "sh,cluster" => Ok(Some(Runner::Cluster)),
        _ if matches!(lang, "sh" | "bash" | "shell" | "zsh" | "console" | "shell-session") => {
            Err(format!(
                "line {line}: ```{info} is a shell block that would not run; use ```sh (local mesh), \
             ```sh,cluster (cluster) or ```text (shown, not run)"
            ))
        }
        _ => Ok(None),
    }
}

/// The pages of the book in reading order: every `(path.md)` link of `SUMMARY.md`.
pub fn pages(summary: &str) -> Vec<String> {
    let mut v = Vec::new();
    for line in summary.lines() {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let tail = &rest[at + 2..];
            let Some(end) = tail.find(')') else { break };
            let target = &tail[..end];
            if target.ends_with(".md") && !v.iter().any(|p| p == target) {
                v.push(target.to_string());
            }
            rest = &tail[end..];
        }
    }
    v
}

/// One page's snippets of one kind as a bash script, run in order like a reader would:
/// the first failing command stops it, and the ERR trap names the snippet's line.
pub fn script(page: &str, snippets: &[Snippet], runner: Runner) -> Option<String> {
    let chosen: Vec<&Snippet> = snippets.iter().filter(|s| s.runner == runner).collect();
    if chosen.is_empty() {
        return None;
    }
    let mut s = String::from(
        "set -euo pipefail\ntrap 'echo \"docs snippet failed: $SNIPPET (exit $?)\" >&2' ERR\n",
    );
    for sn in chosen {
        s.push_str(&format!(
            "SNIPPET='{page}:{}'\necho \"+++ $SNIPPET\" >&2\n{}\n",
            sn.line, sn.code
        ));
    }
    Some(s)
}

/// Unit tests of the convention, shared by both including tests.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sh_runs_locally_sh_cluster_in_the_cluster_other_blocks_never() {
        let md = "# T\n\n```sh\nstarmesh --version\n```\n\n```text\nnot run\n```\n\n1. step\n\n   ```sh,cluster\n   kubectl get pods\n     indented\n   ```\n\n```yaml\na: 1\n```\n";
        let s = snippets(md).unwrap();
        assert_eq!(
            s,
            [
                Snippet { line: 3, runner: Runner::Local, code: "starmesh --version\n".into() },
                Snippet {
                    line: 13,
                    runner: Runner::Cluster,
                    code: "kubectl get pods\n  indented\n".into()
                },
            ]
        );
    }

    #[test]
    fn shell_blocks_that_would_not_run_are_refused() {
        for bad in [
            "```bash\nls\n```\n",
            "```console\n$ ls\n```\n",
            "```sh,kind\nkind\n```\n",
            "~~~sh\nls\n~~~\n",
        ] {
            assert!(snippets(bad).is_err(), "{bad:?} accepted");
        }
        assert!(snippets("```sh\nls\n").is_err(), "an unclosed block is accepted");
    }

    #[test]
    fn pages_follow_summary_order_once_each() {
        let summary = "# Summary\n\n[Intro](intro.md)\n\n- [Install](install/helm.md)\n  - [Sub](a.md) [again](intro.md)\n";
        assert_eq!(pages(summary), ["intro.md", "install/helm.md", "a.md"]);
    }

    #[test]
    fn script_keeps_order_and_names_the_failing_snippet() {
        let s = snippets("```sh\none\n```\n```sh,cluster\nc\n```\n```sh\ntwo\n```\n").unwrap();
        let text = script("p.md", &s, Runner::Local).unwrap();
        assert!(text.starts_with("set -euo pipefail\n"));
        let (one, two) = (text.find("\none\n").unwrap(), text.find("\ntwo\n").unwrap());
        assert!(
            one < two && text.contains("SNIPPET='p.md:1'") && text.contains("SNIPPET='p.md:7'")
        );
        assert!(!text.contains("\nc\n"));
        assert_eq!(script("p.md", &[], Runner::Cluster), None);
    }
}
