//! `starmesh local` refuses bad input before anything starts, with the
//! message a user needs: invalid resources name the field (exit 2); a port in
//! use or an unwritable data folder say so (exit 1).

use std::process::{Command, Output};

fn local(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_starmesh"))
        .arg("local")
        .args(args)
        .output()
        .expect("run starmesh local")
}

fn example(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples").join(name)
}

#[test]
fn invalid_resources_name_the_field_and_start_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(example("stanton.yaml"))
        .expect("example")
        .replace("radius: 1500000}", "radius: -1}");
    std::fs::write(&bad, text).expect("write");
    let data = dir.path().join("data");
    let layout = example("stanton-layout.yaml");
    let out = local(&[
        "--system".as_ref(),
        bad.as_os_str(),
        "--layout".as_ref(),
        layout.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("spec.locations[0].radius"), "the field is named: {err}");
    assert!(!data.exists(), "nothing started: the data folder was not even created");
    assert!(out.stdout.is_empty(), "no progress before validation: {:?}", out.stdout);

    // Malformed YAML: the loader's error, with the file name.
    std::fs::write(&bad, "kind: [unclosed").expect("write");
    let out = local(&["--system".as_ref(), bad.as_os_str(), "--data".as_ref(), data.as_os_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("bad.yaml"), "{err}");
}

#[test]
fn a_port_in_use_and_an_unwritable_folder_are_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let data = dir.path().join("data");
    let out = local(&["--data".as_ref(), data.as_os_str(), "--listen".as_ref(), addr.as_ref()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&addr) && err.contains("in use") && err.contains("--listen"), "{err}");

    // A file where the folder should be: not writable for anyone, root included.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").expect("write");
    let under_file = file.join("data");
    let out = local(&[
        "--data".as_ref(),
        under_file.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("data folder") && err.contains("--data"), "{err}");
}
