//! Client authentication for a listener that also takes JWT-SVID callers
//! (`listener.jwt_svid_callers`): the client certificate becomes optional,
//! but a certificate that is sent is held to the same checks as on an
//! mTLS-only listener, so it still authenticates the connection on its own
//! and a bearer token can never stand in for a bad one.
//!
//! spiffe-rustls keeps its client verifier private and always requires a
//! certificate, so this verifier does the same checks itself: the leaf's one
//! SPIFFE ID picks the bundle of that ID's trust domain (own or federated,
//! as the Workload API delivered it, current at each handshake); the leaf
//! must not be a CA and must carry digitalSignature; the chain, validity and
//! the clientAuth usage are checked by rustls' WebPKI verifier against that
//! bundle alone. No bundle for the trust domain: refused. The server side
//! (the gateway's own SVID) is spiffe-rustls' resolver, unchanged.
//!
//! Must never: accept a certificate the mTLS-only listener would refuse, or
//! verify a leaf against another trust domain's roots.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use spiffe::{SpiffeId, TrustDomain, X509Bundle, X509Source};

/// Where the X.509 bundles come from: the live source, or a fixed set in
/// unit tests.
trait Bundles: Send + Sync + std::fmt::Debug {
    fn bundle(&self, trust_domain: &TrustDomain) -> Option<Arc<X509Bundle>>;
}

impl Bundles for X509Source {
    fn bundle(&self, trust_domain: &TrustDomain) -> Option<Arc<X509Bundle>> {
        self.try_bundle_for_trust_domain(trust_domain)
    }
}

/// A listener config like `mtls`, but with the client certificate optional.
pub(super) fn server_config(
    mtls: &ServerConfig,
    source: X509Source,
) -> Result<ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(OptionalSvidVerifier::new(source, Arc::clone(&provider)));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::clone(&mtls.cert_resolver));
    config.alpn_protocols = mtls.alpn_protocols.clone();
    // As spiffe-rustls: no resumption, so every handshake is checked anew.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

#[derive(Debug)]
struct OptionalSvidVerifier {
    bundles: Box<dyn Bundles>,
    provider: Arc<CryptoProvider>,
}

impl OptionalSvidVerifier {
    fn new(bundles: impl Bundles + 'static, provider: Arc<CryptoProvider>) -> Self {
        OptionalSvidVerifier {
            bundles: Box::new(bundles),
            provider,
        }
    }

    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }

    /// A WebPKI verifier over the bundle of the leaf's own trust domain.
    fn verifier_for(&self, id: &SpiffeId) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let td = id.trust_domain();
        let bundle = self
            .bundles
            .bundle(td)
            .ok_or_else(|| general(format!("no trust bundle for trust domain {td}")))?;
        let mut roots = RootCertStore::empty();
        for authority in bundle.authorities() {
            roots.add(CertificateDer::from(authority.as_ref()))?;
        }
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&self.provider))
            .build()
            .map_err(|e| general(format!("trust bundle of {td}: {e}")))
    }
}

impl ClientCertVerifier for OptionalSvidVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let id = check_leaf(end_entity.as_ref()).map_err(general)?;
        let eligible: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|c| may_sign_certificates(c.as_ref()))
            .cloned()
            .collect();
        self.verifier_for(&id)?
            .verify_client_cert(end_entity, &eligible, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}

/// The X509-SVID leaf rules (SPIFFE X509-SVID 4.x, 5.x) that are not chain
/// rules: exactly one SPIFFE ID with a path, not a CA, digitalSignature.
fn check_leaf(der: &[u8]) -> Result<SpiffeId, String> {
    let id = spiffe::cert::spiffe_id_from_der(der).map_err(|e| e.to_string())?;
    if id.path().is_empty() {
        return Err("a leaf SPIFFE ID needs a path".to_owned());
    }
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    match cert.basic_constraints().map_err(|e| e.to_string())? {
        None => return Err("the leaf has no basicConstraints".to_owned()),
        Some(bc) if bc.value.ca => return Err("the leaf is a CA certificate".to_owned()),
        Some(_) => {}
    }
    let ku = cert
        .key_usage()
        .map_err(|e| e.to_string())?
        .ok_or("the leaf has no keyUsage")?;
    if ku.value.key_cert_sign() || ku.value.crl_sign() {
        return Err("the leaf may sign certificates or CRLs".to_owned());
    }
    if !ku.value.digital_signature() {
        return Err("the leaf lacks keyUsage digitalSignature".to_owned());
    }
    Ok(id)
}

/// Whether a chain certificate may sign certificates: no keyUsage at all
/// (RFC 5280 6.1.4(n)) or one with keyCertSign. One that does not parse may
/// not. Intermediates failing this are left out of path building.
fn may_sign_certificates(der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    match cert.key_usage() {
        Ok(None) => true,
        Ok(Some(ku)) => ku.value.key_cert_sign(),
        Err(_) => false,
    }
}

fn general(reason: String) -> rustls::Error {
    rustls::Error::General(reason)
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };

    use super::*;

    fn leaf(uri: &str, ca: bool, usages: &[KeyUsagePurpose]) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        params.is_ca = if ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        params.key_usages = usages.to_vec();
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn leaf_rules_as_a_table() {
        use KeyUsagePurpose::{CrlSign, DigitalSignature, KeyAgreement, KeyCertSign};
        let id = "spiffe://partner.test/ns/demo/sa/agent";
        let cases: &[(&str, Vec<u8>, bool)] = &[
            (
                "SVID-shaped leaf",
                leaf(id, false, &[DigitalSignature]),
                true,
            ),
            (
                "CA as leaf",
                leaf(id, true, &[DigitalSignature, KeyCertSign]),
                false,
            ),
            (
                "no digitalSignature",
                leaf(id, false, &[KeyAgreement]),
                false,
            ),
            ("no key usage at all", leaf(id, false, &[]), false),
            (
                "keyCertSign on a leaf",
                leaf(id, false, &[DigitalSignature, KeyCertSign]),
                false,
            ),
            (
                "cRLSign on a leaf",
                leaf(id, false, &[DigitalSignature, CrlSign]),
                false,
            ),
            (
                "root ID, no path",
                leaf("spiffe://partner.test", false, &[DigitalSignature]),
                false,
            ),
            (
                "https URI",
                leaf("https://partner.test/a", false, &[DigitalSignature]),
                false,
            ),
        ];
        for (name, der, ok) in cases {
            let got = check_leaf(der);
            assert_eq!(got.is_ok(), *ok, "{name}: {got:?}");
        }
        assert_eq!(
            check_leaf(&cases[0].1).unwrap().trust_domain().to_string(),
            "partner.test"
        );
        assert!(check_leaf(b"garbage").is_err());
    }

    /// A test CA for one trust domain.
    struct TestCa {
        der: Vec<u8>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn test_ca(name: &str) -> TestCa {
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

    /// An X509-SVID-shaped leaf for `id`, signed by `ca`.
    fn svid(id: &str, ca: &TestCa) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let key = KeyPair::generate().unwrap();
        params.signed_by(&key, &ca.issuer).unwrap().der().to_vec()
    }

    /// A fixed bundle set, as the Workload API would deliver it.
    #[derive(Debug)]
    struct Fixed(Vec<Arc<X509Bundle>>);

    impl Bundles for Fixed {
        fn bundle(&self, trust_domain: &TrustDomain) -> Option<Arc<X509Bundle>> {
            self.0
                .iter()
                .find(|b| b.trust_domain() == trust_domain)
                .cloned()
        }
    }

    fn bundle(td: &str, ca: &TestCa) -> Arc<X509Bundle> {
        let td = TrustDomain::new(td).unwrap();
        Arc::new(X509Bundle::from_x509_authorities(td, &[ca.der.as_slice()]).unwrap())
    }

    /// Each leaf is checked against the bundle of its own trust domain only,
    /// and a trust domain without a bundle is refused; no certificate at all
    /// is allowed through the handshake (the request then needs a token).
    #[test]
    fn a_certificate_is_verified_with_its_own_trust_domains_bundle() {
        let example = test_ca("example.org root");
        let partner = test_ca("partner.test root");
        let stranger = test_ca("stranger.test root");
        let bundles = Fixed(vec![
            bundle("example.org", &example),
            bundle("partner.test", &partner),
        ]);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = OptionalSvidVerifier::new(bundles, provider);
        assert!(verifier.offer_client_auth());
        assert!(!verifier.client_auth_mandatory());

        let agent = "spiffe://example.org/ns/demo/sa/agent";
        let partner_agent = "spiffe://partner.test/ns/demo/sa/agent";
        let cases: &[(&str, Vec<u8>, bool)] = &[
            ("own domain", svid(agent, &example), true),
            ("federated domain", svid(partner_agent, &partner), true),
            (
                "partner ID under the example.org root",
                svid(partner_agent, &example),
                false,
            ),
            (
                "example.org ID under the partner root",
                svid(agent, &partner),
                false,
            ),
            (
                "trust domain without a bundle",
                svid("spiffe://stranger.test/ns/demo/sa/agent", &stranger),
                false,
            ),
            (
                "example.org ID under an unknown root",
                svid(agent, &stranger),
                false,
            ),
        ];
        for (name, der, ok) in cases {
            let got = verifier.verify_client_cert(
                &CertificateDer::from(der.as_slice()),
                &[],
                UnixTime::now(),
            );
            assert_eq!(got.is_ok(), *ok, "{name}: {got:?}");
        }
    }

    #[test]
    fn only_certificates_allowed_to_sign_certificates_build_paths() {
        use KeyUsagePurpose::{DigitalSignature, KeyCertSign};
        let ca = leaf("spiffe://partner.test", true, &[KeyCertSign]);
        assert!(may_sign_certificates(&ca));
        assert!(may_sign_certificates(&leaf(
            "spiffe://partner.test",
            true,
            &[]
        )));
        assert!(!may_sign_certificates(&leaf(
            "spiffe://partner.test/a",
            true,
            &[DigitalSignature]
        )));
        assert!(!may_sign_certificates(b"garbage"));
    }
}
