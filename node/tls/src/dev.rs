//! Throwaway mesh CAs and certificates (rcgen) for `starmesh local --tls` and the tests. In a
//! cluster the chart generates them (charts/starmesh/templates/mesh-tls-secret.yaml).

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::{CA_FILE, CERT_FILE, KEY_FILE, MESH_SERVER_NAME};

/// A mesh CA: its certificate (PEM) and what signs with it.
pub struct Ca {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A member certificate and its key (PEM).
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Result<Ca, rcgen::Error> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = p.self_signed(&key)?;
        Ok(Ca { cert_pem: cert.pem(), issuer: Issuer::new(p, key) })
    }

    /// A certificate for a mesh member: the mesh name, for both server and client use.
    pub fn issue(&self, common_name: &str) -> Result<Leaf, rcgen::Error> {
        let mut p = CertificateParams::new(vec![MESH_SERVER_NAME.to_string()])?;
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// Writes `tls.crt`, `tls.key` and `ca.crt` (`ca_bundle`: one or more CA certificates) into
/// `dir`, creating it; the key file is private to its owner.
pub fn write_dir(dir: &Path, leaf: &Leaf, ca_bundle: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(CERT_FILE), &leaf.cert_pem)?;
    write_private(&dir.join(KEY_FILE), leaf.key_pem.as_bytes())?;
    std::fs::write(dir.join(CA_FILE), ca_bundle)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

/// A fresh CA and one member certificate in `dir` (what `starmesh local --tls` uses).
pub fn mint_dir(dir: &Path) -> anyhow::Result<()> {
    let ca = Ca::new("starmesh throwaway mesh CA")?;
    let leaf = ca.issue("starmesh-local")?;
    write_dir(dir, &leaf, &ca.cert_pem)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Material, build};

    fn material(leaf: &Leaf, ca: &str) -> Material {
        Material {
            cert_pem: leaf.cert_pem.clone().into_bytes(),
            key_pem: leaf.key_pem.clone().into_bytes(),
            ca_pem: ca.as_bytes().to_vec(),
        }
    }

    #[test]
    fn minted_material_builds() {
        let ca = Ca::new("test CA").expect("ca");
        let leaf = ca.issue("m").expect("leaf");
        assert!(build(&material(&leaf, &ca.cert_pem)).is_ok());
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let ca = Ca::new("test CA").expect("ca");
        let (a, b) = (ca.issue("a").expect("a"), ca.issue("b").expect("b"));
        let mixed = Leaf { cert_pem: a.cert_pem, key_pem: b.key_pem };
        let e = build(&material(&mixed, &ca.cert_pem)).err().expect("refused");
        assert!(e.contains("tls.crt/tls.key"), "{e}");
    }

    #[test]
    fn reload_takes_a_new_valid_set_and_keeps_the_old_one_on_a_bad_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("test CA").expect("ca");
        let (a, b) = (ca.issue("a").expect("a"), ca.issue("b").expect("b"));
        write_dir(dir.path(), &a, &ca.cert_pem).expect("write");
        let tls = crate::MeshTls::load(dir.path()).expect("load");
        assert_eq!(tls.reload(), Ok(false), "unchanged");
        // Half-written: b's certificate with a's key. Refused, a kept.
        std::fs::write(dir.path().join(CERT_FILE), &b.cert_pem).expect("write");
        assert!(tls.reload().is_err());
        assert_eq!(tls.reloads(), 0);
        write_dir(dir.path(), &b, &ca.cert_pem).expect("write");
        assert_eq!(tls.reload(), Ok(true));
        assert_eq!(tls.reloads(), 1);
        let missing = tempfile::tempdir().expect("tempdir");
        let e = crate::MeshTls::load(missing.path()).expect_err("no files");
        assert!(e.contains(CERT_FILE), "{e}");
    }

    #[test]
    fn a_ca_bundle_of_two_builds() {
        let (old, new) = (Ca::new("old").expect("old"), Ca::new("new").expect("new"));
        let leaf = new.issue("m").expect("leaf");
        let bundle = format!("{}{}", old.cert_pem, new.cert_pem);
        assert!(build(&material(&leaf, &bundle)).is_ok());
    }
}
