//! Upstream authentication: the checks an upstream's certificate passes
//! during the gateway's handshake with it.
//!
//! The same leaf rules as a caller's (`client_auth::check_leaf`: one SPIFFE
//! ID in canonical form with a path, not a CA, digitalSignature), the chain
//! and validity checked by rustls' WebPKI against the bundle of that ID's
//! own trust domain as the source holds it at the handshake (no pending
//! rebuild to wait for, no stale copy), the serverAuth usage, and then the
//! ID compared byte for byte with the one configured for the upstream. DNS
//! names are not the identity and are not checked.
//!
//! Must never: accept an upstream whose SPIFFE ID is not exactly the
//! configured one, or verify a chain against another trust domain's roots.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, SignatureScheme};
use spiffe::SpiffeId;

use super::client_auth::{Bundles, check_leaf, general, roots_for, signing_intermediates};

#[derive(Debug)]
pub(super) struct UpstreamVerifier {
    bundles: Box<dyn Bundles>,
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
}

impl UpstreamVerifier {
    pub(super) fn new(
        bundles: impl Bundles + 'static,
        expected: SpiffeId,
        provider: Arc<CryptoProvider>,
    ) -> UpstreamVerifier {
        UpstreamVerifier {
            bundles: Box::new(bundles),
            expected,
            provider,
        }
    }
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = check_leaf(end_entity.as_ref())?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &ParsedCertificate::try_from(end_entity)?,
            &roots_for(self.bundles.as_ref(), &id)?,
            &signing_intermediates(intermediates),
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        // After the chain: a certificate nobody issued is reported as that.
        if id != self.expected {
            return Err(general(format!(
                "the upstream presented {id}, not the configured {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::ExtendedKeyUsagePurpose::ClientAuth;

    use super::*;
    use crate::identity::test_pki::{Fixed, bundle, leaf_with_usages, svid, test_ca};

    const SERVER: &str = "spiffe://example.org/ns/demo/sa/mcp-server";

    fn verify(verifier: &UpstreamVerifier, der: &[u8], now: UnixTime) -> Result<(), rustls::Error> {
        let name = ServerName::try_from("localhost").unwrap();
        verifier
            .verify_server_cert(&CertificateDer::from(der), &[], &name, &[], now)
            .map(|_| ())
    }

    /// Only the configured ID, under its own trust domain's bundle as held
    /// at the handshake, passes; every other kind of certificate is refused
    /// as an identity failure (what `ConnectError::is_identity` reads).
    #[test]
    fn only_the_configured_upstream_under_its_own_bundle_passes() {
        let example = test_ca("example.org root");
        let partner = test_ca("partner.test root");
        let stranger = test_ca("stranger.test root");
        let bundles = || {
            Fixed(vec![
                bundle("example.org", &example),
                bundle("partner.test", &partner),
            ])
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let expect = |id: &str| {
            let id = crate::identity::spiffe_id::canonical(id).unwrap();
            UpstreamVerifier::new(bundles(), id, Arc::clone(&provider))
        };
        let partner_server = "spiffe://partner.test/ns/demo/sa/mcp-server";
        let now = UnixTime::now();
        let cases: &[(&str, &str, Vec<u8>, bool)] = &[
            ("the configured ID", SERVER, svid(SERVER, &example), true),
            (
                "another workload of the trust domain",
                SERVER,
                svid("spiffe://example.org/ns/demo/sa/impostor", &example),
                false,
            ),
            (
                "the ID with a path prefix only",
                SERVER,
                svid("spiffe://example.org/ns/demo/sa/mcp-server/x", &example),
                false,
            ),
            (
                "the ID in upper case",
                SERVER,
                svid("spiffe://EXAMPLE.ORG/ns/demo/sa/mcp-server", &example),
                false,
            ),
            (
                "the ID under an unknown root",
                SERVER,
                svid(SERVER, &stranger),
                false,
            ),
            (
                "the ID under the partner's root",
                SERVER,
                svid(SERVER, &partner),
                false,
            ),
            (
                "a federated upstream under its own root",
                partner_server,
                svid(partner_server, &partner),
                true,
            ),
            (
                "a federated ID under the local root",
                partner_server,
                svid(partner_server, &example),
                false,
            ),
            (
                "a trust domain without a bundle",
                "spiffe://stranger.test/s",
                svid("spiffe://stranger.test/s", &stranger),
                false,
            ),
            (
                "a leaf for client authentication only",
                SERVER,
                leaf_with_usages(SERVER, &example, vec![ClientAuth]),
                false,
            ),
        ];
        for (name, expected, der, ok) in cases {
            let got = verify(&expect(expected), der, now);
            assert_eq!(got.is_ok(), *ok, "{name}: {got:?}");
            if let Err(e) = got {
                let identity = matches!(
                    e,
                    rustls::Error::InvalidCertificate(_) | rustls::Error::General(_)
                );
                assert!(identity, "{name}: {e:?} is not an identity failure");
            }
        }
        assert!(verify(&expect(SERVER), b"garbage", now).is_err());
        // Past the leaf's notAfter (rcgen's default: 4096-01-01).
        let later = UnixTime::since_unix_epoch(Duration::from_secs(200_000_000_000));
        assert!(verify(&expect(SERVER), &svid(SERVER, &example), later).is_err());
    }
}
