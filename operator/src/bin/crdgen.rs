//! Prints the StarSystem and ServerLayout CRDs as YAML, or with `--out DIR` writes them to
//! `DIR/starsystems.starmesh.dev.yaml` and `DIR/serverlayouts.starmesh.dev.yaml`.
//! The rendering (and its Kubernetes 1.20 fixes) is `starmesh_api::crds`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = match args.as_slice() {
        [] => None,
        [flag, dir] if flag == "--out" => Some(PathBuf::from(dir)),
        _ => {
            eprintln!("usage: crdgen [--out DIR]");
            return ExitCode::from(2);
        }
    };
    let crds = match starmesh_api::crds::all() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("crdgen: cannot render the CRDs: {e}");
            return ExitCode::FAILURE;
        }
    };
    match out {
        Some(dir) => {
            for (file, text) in crds {
                let path = dir.join(file);
                if let Err(e) =
                    std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text))
                {
                    eprintln!("crdgen: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
        None => {
            let texts: Vec<String> = crds.into_iter().map(|(_, t)| t).collect();
            print!("{}", texts.join("---\n"));
        }
    }
    ExitCode::SUCCESS
}
