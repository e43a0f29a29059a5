//! The committed CRDs in `crds/` match the Rust types. With `STARMESH_UPDATE_CRDS=1` the
//! test rewrites them instead (the same output as the crdgen binary).

use std::path::PathBuf;

#[test]
fn committed_crds_match_the_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../crds");
    let update = std::env::var_os("STARMESH_UPDATE_CRDS").is_some();
    for (file, text) in starmesh_api::crds::all().expect("renders") {
        let path = dir.join(file);
        if update {
            std::fs::write(&path, &text).expect("writes");
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == text,
            "{} is out of date; run `cargo run -p starmesh-operator --bin crdgen -- --out crds`",
            path.display()
        );
    }
}
