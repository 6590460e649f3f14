//! Client authentication on the listener: the X.509-SVID checks every
//! caller's certificate passes during the handshake.
//!
//! spiffe-rustls keeps its client verifier private, folds the case of the
//! peer's SPIFFE ID (`spiffe://EXAMPLE.ORG/a` would pass as
//! `spiffe://example.org/a`) and always requires a certificate, so this
//! verifier does the checks itself: the leaf's one URI SAN must be a SPIFFE
//! ID in canonical form with a path (`identity::spiffe_id`), and picks the
//! bundle of that ID's trust domain (own or federated, as the Workload API
//! delivered it, current at each handshake); the leaf must not be a CA and
//! must carry digitalSignature; the chain, validity and the clientAuth usage
//! are checked by rustls' WebPKI verifier against that bundle alone. No
//! bundle for the trust domain: refused. The certificate is mandatory
//! unless the listener also takes JWT-SVID callers
//! (`listener.jwt_svid_callers`); a certificate that is sent is held to the
//! same checks either way, so a bearer token can never stand in for a bad
//! one. The server side (the gateway's own SVID) is `own_svid`.
//!
//! Must never: accept a certificate whose SPIFFE ID is not exactly as
//! written, or verify a leaf against another trust domain's roots.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    ServerConfig, SignatureScheme,
};
use spiffe::{SpiffeId, TrustDomain, X509Bundle, X509Source};
use x509_parser::certificate::X509Certificate;

use crate::identity::spiffe_id::{self, IdError};

/// Where the X.509 bundles come from: the live source, or a fixed set in
/// unit tests.
pub(super) trait Bundles: Send + Sync + std::fmt::Debug {
    fn bundle(&self, trust_domain: &TrustDomain) -> Option<Arc<X509Bundle>>;
}

impl Bundles for X509Source {
    fn bundle(&self, trust_domain: &TrustDomain) -> Option<Arc<X509Bundle>> {
        self.try_bundle_for_trust_domain(trust_domain)
    }
}

/// A listener config presenting `own` (the gateway's SVID), with this
/// module's client verifier; `mandatory`: a handshake without a client
/// certificate fails.
pub(super) fn server_config(
    own: Arc<dyn ResolvesServerCert>,
    source: X509Source,
    provider: Arc<CryptoProvider>,
    mandatory: bool,
) -> Result<ServerConfig, rustls::Error> {
    let verifier = Arc::new(SvidClientVerifier::new(
        source,
        Arc::clone(&provider),
        mandatory,
    ));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(own);
    // No resumption: a resumed handshake skips the verifier, so every
    // handshake is checked anew against the current bundle.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

#[derive(Debug)]
struct SvidClientVerifier {
    bundles: Box<dyn Bundles>,
    provider: Arc<CryptoProvider>,
    mandatory: bool,
}

impl SvidClientVerifier {
    fn new(
        bundles: impl Bundles + 'static,
        provider: Arc<CryptoProvider>,
        mandatory: bool,
    ) -> Self {
        SvidClientVerifier {
            bundles: Box::new(bundles),
            provider,
            mandatory,
        }
    }

    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }

    /// A WebPKI verifier over the bundle of the leaf's own trust domain.
    fn verifier_for(&self, id: &SpiffeId) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let roots = roots_for(self.bundles.as_ref(), id)?;
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&self.provider))
            .build()
            .map_err(|e| general(format!("trust bundle of {}: {e}", id.trust_domain())))
    }
}

impl ClientCertVerifier for SvidClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
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
        let id = check_leaf(end_entity.as_ref())?;
        let eligible = signing_intermediates(intermediates);
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

/// A certificate chain presented outside a handshake (an audit
/// checkpoint's `x5c`): the leaf rules of [`check_leaf`], then the chain,
/// validity at `at` and the clientAuth usage, as a caller's certificate is
/// checked, against `roots` alone. Returns the leaf's SPIFFE ID.
pub(crate) fn verify_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: Arc<RootCertStore>,
    at: UnixTime,
) -> Result<SpiffeId, rustls::Error> {
    let id = check_leaf(leaf.as_ref())?;
    let eligible = signing_intermediates(intermediates);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| general(format!("trust bundle: {e}")))?
        .verify_client_cert(leaf, &eligible, at)?;
    Ok(id)
}

/// The X509-SVID leaf rules (SPIFFE X509-SVID 4.x, 5.x) that are not chain
/// rules: exactly one SPIFFE ID, canonical, with a path; not a CA;
/// digitalSignature. An ID refusal is a certificate error carrying the
/// [`IdError`], so the listener can tell it from other handshake failures.
pub(super) fn check_leaf(der: &[u8]) -> Result<SpiffeId, rustls::Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| general(format!("certificate does not parse: {e}")))?;
    let id = spiffe_id::from_certificate(&cert).map_err(|e| {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
    })?;
    check_usage(&cert).map_err(general)?;
    Ok(id)
}

/// Not a CA, may not sign certificates or CRLs, may sign (digitalSignature).
fn check_usage(cert: &X509Certificate<'_>) -> Result<(), String> {
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
    Ok(())
}

/// The identity refusal inside a handshake error, if that is what it was.
pub fn id_refusal(error: &rustls::Error) -> Option<&IdError> {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(e))) => {
            e.downcast_ref::<IdError>()
        }
        _ => None,
    }
}

/// The roots of `id`'s own trust domain, as the source holds them now; no
/// bundle for that trust domain: refused.
pub(super) fn roots_for(
    bundles: &dyn Bundles,
    id: &SpiffeId,
) -> Result<RootCertStore, rustls::Error> {
    let td = id.trust_domain();
    let bundle = bundles
        .bundle(td)
        .ok_or_else(|| general(format!("no trust bundle for trust domain {td}")))?;
    let mut roots = RootCertStore::empty();
    for authority in bundle.authorities() {
        roots.add(CertificateDer::from(authority.as_ref()))?;
    }
    Ok(roots)
}

/// The presented intermediates that may sign certificates, the only ones
/// path building may use.
pub(super) fn signing_intermediates<'a>(
    intermediates: &[CertificateDer<'a>],
) -> Vec<CertificateDer<'a>> {
    intermediates
        .iter()
        .filter(|c| may_sign_certificates(c.as_ref()))
        .cloned()
        .collect()
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

pub(super) fn general(reason: String) -> rustls::Error {
    rustls::Error::General(reason)
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };

    use super::*;
    use crate::identity::test_pki::{Fixed, TestCa, bundle, svid, test_ca};

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
        let verifier = SvidClientVerifier::new(bundles, provider, false);
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

    /// An ID the spiffe crate would fold into another workload's is refused
    /// by the verifier, as an identity refusal, though its chain is good.
    #[test]
    fn a_non_canonical_id_signed_by_the_trust_domains_ca_is_refused() {
        let example = test_ca("example.org root");
        let verifier = SvidClientVerifier::new(
            Fixed(vec![bundle("example.org", &example)]),
            Arc::new(rustls::crypto::ring::default_provider()),
            true,
        );
        assert!(verifier.client_auth_mandatory());
        let verify = |id: &str| {
            verifier.verify_client_cert(
                &CertificateDer::from(svid(id, &example)),
                &[],
                UnixTime::now(),
            )
        };
        assert!(verify("spiffe://example.org/agent-a").is_ok());
        for id in [
            "SPIFFE://example.org/agent-a",
            "spiffe://EXAMPLE.ORG/agent-a",
            "spiffe://Example.org/agent-a",
            "spiffe://example.org/agent-a/",
            "spiffe://example.org/%61gent-a",
            "spiffe://example.org/./agent-a",
        ] {
            let err = verify(id).unwrap_err();
            assert!(id_refusal(&err).is_some(), "{id}: {err:?}");
        }
    }

    /// A whole TLS handshake in process: the gateway side (this verifier)
    /// fails it for a client certificate whose ID is not canonical, and
    /// completes it for the canonical one.
    #[tokio::test]
    async fn the_handshake_fails_for_a_non_canonical_client_id() {
        let example = test_ca("example.org root");
        for (id, ok) in [
            ("spiffe://example.org/agent-a", true),
            ("SPIFFE://example.org/agent-a", false),
            ("spiffe://EXAMPLE.ORG/agent-a", false),
        ] {
            let result = handshake(&example, id).await;
            assert_eq!(result.is_ok(), ok, "{id}: {result:?}");
            if let Err(e) = result {
                let refusal = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .and_then(id_refusal);
                assert!(
                    matches!(refusal, Some(IdError::NotCanonical { .. })),
                    "{id}: {e}"
                );
            }
        }
    }

    /// Runs a handshake over an in-memory pipe: a client presenting an SVID
    /// for `client_id`; returns the server side's result.
    async fn handshake(ca: &TestCa, client_id: &str) -> std::io::Result<()> {
        use rustls::pki_types::PrivateKeyDer;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = SvidClientVerifier::new(
            Fixed(vec![bundle("example.org", ca)]),
            Arc::clone(&provider),
            true,
        );
        let (server_cert, server_key) = signed("spiffe://example.org/gateway", ca);
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(vec![server_cert], PrivateKeyDer::Pkcs8(server_key.into()))
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(ca.der.clone())).unwrap();
        let (client_cert, client_key) = signed(client_id, ca);
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![client_cert], PrivateKeyDer::Pkcs8(client_key.into()))
            .unwrap();
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let accept = tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(server_io);
        let connect = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect("localhost".try_into().unwrap(), client_io);
        let (accepted, _connected) = tokio::join!(accept, connect);
        accepted.map(drop)
    }

    /// An SVID for `id` with a DNS SAN `localhost` (so the test client can
    /// check the server by name), signed by `ca`; certificate and key.
    fn signed(id: &str, ca: &TestCa) -> (CertificateDer<'static>, Vec<u8>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![
            SanType::URI(id.try_into().unwrap()),
            SanType::DnsName("localhost".try_into().unwrap()),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca.issuer).unwrap().der().clone();
        (cert, key.serialize_der())
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
