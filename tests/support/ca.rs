//! A test CA for one trust domain, and X509-SVID-shaped leaves for any
//! SPIFFE ID it signs (rcgen, P-256).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

/// A CA: its certificate and the key that signs leaves.
pub struct Ca {
    pub der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate and its key, as a workload holds its SVID.
#[derive(Clone)]
pub struct Leaf {
    pub spiffe_id: String,
    pub cert: CertificateDer<'static>,
    pub key_pkcs8: Vec<u8>,
}

impl Leaf {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().clone();
        Ca {
            der,
            issuer: Issuer::new(params, key),
        }
    }

    /// An SVID for `spiffe_id`, valid from a minute ago for an hour.
    pub fn leaf(&self, spiffe_id: &str) -> Leaf {
        self.leaf_with(spiffe_id, &[], Duration::hours(1))
    }

    /// An SVID for `spiffe_id` (the one URI SAN), plus DNS SANs, valid for
    /// `lifetime` from now.
    pub fn leaf_with(&self, spiffe_id: &str, dns: &[&str], lifetime: Duration) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().unwrap())];
        for name in dns {
            params
                .subject_alt_names
                .push(SanType::DnsName((*name).try_into().unwrap()));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(1);
        params.not_after = now + lifetime;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            spiffe_id: spiffe_id.to_owned(),
            cert: cert.der().clone(),
            key_pkcs8: key.serialize_der(),
        }
    }
}
