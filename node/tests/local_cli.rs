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

#[test]
fn a_layout_given_alone_is_validated_before_the_data_folder_is_touched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("layout.yaml");
    let text = std::fs::read_to_string(example("stanton-layout.yaml"))
        .expect("example")
        .replace("territories: [hurston]", "territories: [atlantis]");
    std::fs::write(&bad, text).expect("write");
    let data = dir.path().join("data");
    let out = local(&[
        "--layout".as_ref(),
        bad.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("ServerLayout") && err.contains("atlantis"),
        "the problem is named: {err}"
    );
    assert!(!data.exists(), "the data folder was not created");
    assert!(out.stdout.is_empty(), "no progress before validation: {:?}", out.stdout);
}

/// A first run with no RUST_LOG: the terminal shows the progress lines, the
/// map's address and the summary, not the roles' info logs.
#[test]
fn the_terminal_is_quiet_by_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_starmesh"))
        .args(["local", "--duration", "2s", "--bots", "10", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env_remove("RUST_LOG")
        .output()
        .expect("run starmesh local");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("web map: http://"), "{stdout}");
    assert!(stdout.contains("starmesh local: summary"), "{stdout}");
    let info: Vec<&str> = stderr.lines().filter(|l| l.contains("INFO")).collect();
    assert!(info.is_empty(), "no info logs without RUST_LOG:\n{stderr}");
    assert!(!stderr.contains("jump gate"), "no warning about gates local cannot open:\n{stderr}");
    // RUST_LOG still overrides the default.
    let out = Command::new(env!("CARGO_BIN_EXE_starmesh"))
        .args(["local", "--duration", "1s", "--bots", "0", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env("RUST_LOG", "info")
        .output()
        .expect("run starmesh local");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.lines().any(|l| l.contains("INFO")), "RUST_LOG=info shows info:\n{stderr}");
}
