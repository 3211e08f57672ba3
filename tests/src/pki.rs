//! A throw-away PKI for the broker and its clients, generated with rcgen.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::error::HarnessError;

/// The files a TLS endpoint needs: its chain, its key (0600) and the CA.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// A certificate authority whose certificates and keys live in `dir`.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
    ca_path: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

fn rcgen_err(what: &str) -> impl FnOnce(rcgen::Error) -> HarnessError + '_ {
    move |e| HarnessError::Failed {
        what: what.to_owned(),
        detail: e.to_string(),
    }
}

impl Pki {
    /// Creates a new CA (ECDSA P-256) in `dir`.
    pub fn new(dir: &Path) -> Result<Pki, HarnessError> {
        std::fs::create_dir_all(dir).map_err(HarnessError::io("create PKI dir"))?;
        let key = KeyPair::generate().map_err(rcgen_err("generate CA key"))?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err("CA params"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, "mctc test fleet CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_err("self-sign CA"))?;
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, cert.pem()).map_err(HarnessError::io("write CA cert"))?;
        Ok(Pki {
            dir: dir.to_owned(),
            ca_path,
            issuer: Issuer::new(params, key),
        })
    }

    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A server certificate valid for localhost, 127.0.0.1 and ::1.
    pub fn server(&self, name: &str) -> Result<CertFiles, HarnessError> {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()])
            .map_err(rcgen_err("server params"))?;
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        params
            .subject_alt_names
            .push(SanType::IpAddress("::1".parse().expect("ip")));
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(name, params)
    }

    /// A client certificate whose common name is the MQTT identity (the
    /// broker maps it to the username the ACL confines).
    pub fn client(&self, common_name: &str) -> Result<CertFiles, HarnessError> {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err("client params"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(common_name, params)
    }

    /// A client certificate for `common_name` that expired yesterday (for
    /// `check-config`'s expiry check).
    pub fn expired_client(&self, common_name: &str) -> Result<CertFiles, HarnessError> {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err("client params"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = std::time::SystemTime::now();
        let day = std::time::Duration::from_secs(86_400);
        params.not_before = (now - 30 * day).into();
        params.not_after = (now - day).into();
        self.issue(common_name, params)
    }

    fn issue(&self, name: &str, params: CertificateParams) -> Result<CertFiles, HarnessError> {
        let key = KeyPair::generate().map_err(rcgen_err("generate key"))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_err("sign certificate"))?;
        // Several certificates may be issued for one name (a second identity
        // with the same rights); give each its own files.
        let mut n = 0;
        let (cert_path, key_path) = loop {
            let suffix = if n == 0 {
                String::new()
            } else {
                format!("-{n}")
            };
            let c = self.dir.join(format!("{name}{suffix}.pem"));
            if !c.exists() {
                break (c, self.dir.join(format!("{name}{suffix}.key")));
            }
            n += 1;
        };
        std::fs::write(&cert_path, cert.pem()).map_err(HarnessError::io("write certificate"))?;
        write_secret(&key_path, key.serialize_pem().as_bytes())?;
        Ok(CertFiles {
            cert: cert_path,
            key: key_path,
            ca: self.ca_path.clone(),
        })
    }
}

/// Writes a file that holds a secret with mode 0600 from the start.
fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), HarnessError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(HarnessError::io("create key file"))?;
    f.write_all(bytes)
        .map_err(HarnessError::io("write key file"))
}
