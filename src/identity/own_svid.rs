//! The gateway's own certificate at each handshake: the SVID the source
//! holds at that instant, on the listener (server side) and on upstream
//! connections (client side).
//!
//! spiffe-rustls serves material that its own task rebuilds after each
//! Workload API update, and fails every handshake that falls between the
//! update and the rebuild (its "pending revision" gate). Under load that
//! window was long enough to fail calls at each rotation, against
//! invariant 6. Here the handshake itself reads the source's current SVID
//! and turns it into a rustls key, once per SVID: there is no window. The
//! SVID presented is the one held when the handshake starts; the one
//! before it is still valid then (rotation happens at half-life).
//!
//! Must never: present a key that does not match its certificate, or
//! anything while the source holds no SVID (the handshake then fails).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use spiffe::{X509Source, X509Svid};
use tracing::warn;

/// Where the current SVID comes from: the live source, or a test's.
pub(super) trait Svids: Send + Sync + std::fmt::Debug {
    fn current(&self) -> Option<Arc<X509Svid>>;
}

impl Svids for X509Source {
    fn current(&self) -> Option<Arc<X509Svid>> {
        self.try_svid()
    }
}

/// Resolves the gateway's certificate for both sides of a handshake.
#[derive(Debug)]
pub(super) struct OwnSvid {
    svids: Box<dyn Svids>,
    provider: Arc<CryptoProvider>,
    /// The last SVID turned into a key, and the key (`None`: it did not
    /// convert; logged once, handshakes fail until the next SVID).
    built: ArcSwapOption<Built>,
}

#[derive(Debug)]
struct Built {
    svid: Arc<X509Svid>,
    key: Option<Arc<CertifiedKey>>,
}

impl OwnSvid {
    pub(super) fn new(svids: impl Svids + 'static, provider: Arc<CryptoProvider>) -> OwnSvid {
        OwnSvid {
            svids: Box::new(svids),
            provider,
            built: ArcSwapOption::empty(),
        }
    }

    /// The key for the SVID held now. One pointer comparison per handshake
    /// while the SVID stays; a conversion when it has changed.
    fn key(&self) -> Option<Arc<CertifiedKey>> {
        let svid = self.svids.current()?;
        if let Some(built) = self.built.load().as_ref()
            && Arc::ptr_eq(&built.svid, &svid)
        {
            return built.key.clone();
        }
        let key = match certified_key(&svid, &self.provider) {
            Ok(key) => Some(Arc::new(key)),
            Err(e) => {
                warn!(error = %e, spiffe_id = %svid.spiffe_id(), "the X.509-SVID cannot be used for TLS; handshakes fail");
                None
            }
        };
        self.built.store(Some(Arc::new(Built {
            svid,
            key: key.clone(),
        })));
        key
    }
}

/// The SVID's chain and key as rustls' signing key, refused when the key
/// does not match the leaf.
fn certified_key(
    svid: &X509Svid,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, rustls::Error> {
    let chain = svid
        .cert_chain()
        .iter()
        .map(|cert| CertificateDer::from(cert.as_bytes().to_vec()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        svid.private_key().as_bytes().to_vec(),
    ));
    let certified = CertifiedKey::from_der(chain, key, provider)?;
    // `from_der` lets a key whose match it cannot tell through; never here.
    certified.keys_match()?;
    Ok(certified)
}

impl ResolvesServerCert for OwnSvid {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key()
    }
}

impl ResolvesClientCert for OwnSvid {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.key()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use rcgen::{CertificateParams, KeyPair, SanType};

    use super::*;

    #[derive(Debug, Default)]
    struct Held(Mutex<Option<Arc<X509Svid>>>);

    impl Svids for Arc<Held> {
        fn current(&self) -> Option<Arc<X509Svid>> {
            self.0.lock().unwrap().clone()
        }
    }

    fn leaf(key: &KeyPair) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            "spiffe://example.org/gateway".try_into().unwrap(),
        )];
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.self_signed(key).unwrap().der().to_vec()
    }

    fn svid(cert: &[u8], key: &KeyPair) -> Arc<X509Svid> {
        Arc::new(X509Svid::parse_from_der(cert, &key.serialize_der()).unwrap())
    }

    fn own(held: &Arc<Held>) -> OwnSvid {
        OwnSvid::new(
            Arc::clone(held),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
    }

    fn presented(own: &OwnSvid) -> Option<Vec<u8>> {
        own.key().map(|k| k.end_entity_cert().unwrap().to_vec())
    }

    #[test]
    fn the_svid_held_at_the_handshake_is_the_one_presented() {
        let held = Arc::new(Held::default());
        let own = own(&held);
        assert!(own.key().is_none(), "no SVID: nothing to present");
        let (k1, k2) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        let (c1, c2) = (leaf(&k1), leaf(&k2));
        *held.0.lock().unwrap() = Some(svid(&c1, &k1));
        assert_eq!(presented(&own), Some(c1.clone()));
        let first = own.key().unwrap();
        assert!(
            Arc::ptr_eq(&first, &own.key().unwrap()),
            "converted once per SVID"
        );
        // The next handshake after the source moves presents the new SVID:
        // nothing in between waits for a rebuild.
        *held.0.lock().unwrap() = Some(svid(&c2, &k2));
        assert_eq!(presented(&own), Some(c2));
        *held.0.lock().unwrap() = None;
        assert!(own.key().is_none(), "a withdrawn SVID is not presented");
    }

    #[test]
    fn a_key_that_does_not_match_its_certificate_is_never_presented() {
        let held = Arc::new(Held::default());
        let own = own(&held);
        let (k1, other) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        *held.0.lock().unwrap() = Some(svid(&leaf(&k1), &other));
        assert!(own.key().is_none());
        assert!(own.key().is_none(), "and not on a later handshake either");
    }
}
