//! Checks that would otherwise fail halfway through starting, turned into
//! one clear sentence each before anything runs.

use std::net::SocketAddr;
use std::path::Path;

/// The data folder exists (or can be created) and accepts writes.
pub fn data_dir(dir: &Path) -> Result<(), String> {
    let hint = "pass --data with a folder you can write";
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("data folder {}: cannot create it: {e}; {hint}", dir.display()))?;
    let probe = dir.join(".starmesh-write-probe");
    std::fs::write(&probe, b"probe")
        .map_err(|e| format!("data folder {}: not writable: {e}; {hint}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Binds the web listener now, so a port in use is reported before the mesh
/// starts, and the bound socket is the one served (no check-then-bind race).
pub async fn listen(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::AddrInUse {
            "the port is in use (another `starmesh local`?)".to_string()
        } else {
            e.to_string()
        };
        format!(
            "cannot listen on {addr}: {why}; pass --listen with another address, e.g. 127.0.0.1:0"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_port_in_use_is_named() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let e = listen(addr).await.expect_err("in use");
        assert!(e.contains(&addr.to_string()) && e.contains("in use"), "{e}");
    }

    #[test]
    fn an_unwritable_data_folder_is_named() {
        // A regular file where the folder should be: fails even for root.
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        let e = data_dir(&file.join("data")).expect_err("not a folder");
        assert!(e.contains("data folder") && e.contains("--data"), "{e}");
        data_dir(&dir.path().join("ok")).expect("writable");
    }
}
