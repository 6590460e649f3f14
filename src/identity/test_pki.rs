//! Test PKI for the identity verifiers: a CA per trust domain, SVID-shaped
//! leaves, and a fixed bundle set standing in for the Workload API's.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use spiffe::{TrustDomain, X509Bundle};

use super::client_auth::Bundles;

/// A test CA for one trust domain.
pub struct TestCa {
    pub der: Vec<u8>,
    pub issuer: Issuer<'static, KeyPair>,
}

pub fn test_ca(name: &str) -> TestCa {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let der = params.self_signed(&key).unwrap().der().to_vec();
    TestCa {
        der,
        issuer: Issuer::new(params, key),
    }
}

/// An X509-SVID-shaped leaf for `id`, signed by `ca` (both usages, as
/// SPIRE issues them).
pub fn svid(id: &str, ca: &TestCa) -> Vec<u8> {
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    leaf_with_usages(id, ca, vec![ClientAuth, ServerAuth])
}

/// The same with only the extended key usages given.
pub fn leaf_with_usages(id: &str, ca: &TestCa, usages: Vec<ExtendedKeyUsagePurpose>) -> Vec<u8> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages;
    let key = KeyPair::generate().unwrap();
    params.signed_by(&key, &ca.issuer).unwrap().der().to_vec()
}

/// A fixed bundle set, as the Workload API would deliver it.
#[derive(Debug)]
pub struct Fixed(pub Vec<Arc<X509Bundle>>);

impl Bundles for Fixed {
    fn bundle(&self, trust_domain: &TrustDomain) -> Option<Arc<X509Bundle>> {
        self.0
            .iter()
            .find(|b| b.trust_domain() == trust_domain)
            .cloned()
    }
}

pub fn bundle(td: &str, ca: &TestCa) -> Arc<X509Bundle> {
    let td = TrustDomain::new(td).unwrap();
    Arc::new(X509Bundle::from_x509_authorities(td, &[ca.der.as_slice()]).unwrap())
}
