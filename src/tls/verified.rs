//! Client certificate chains already verified, so that a client reconnecting with the
//! same certificate does not pay the chain's signature checks again at every handshake.
//!
//! webpki checks a chain's signatures and, with CRLs, verifies each CRL's own signature
//! at every handshake (rustls/webpki#81: not cached): two ECDSA verifications, the
//! largest part of a new connection after the handshake's own key exchange and
//! signature. A chain that verified is remembered by the SHA-256 of its bytes, with the
//! time window in which every certificate of it is valid; the same bytes inside that
//! window are accepted without verifying again. What the cache cannot change:
//! - only a chain the inner verifier accepted is remembered: a refusal is never cached;
//! - the result depends only on the chain's bytes, the trust anchors and the CRLs (the
//!   CRLs' next-update is not enforced: rustls's default) and the time, which the window
//!   covers: a cached chain is verified again once any certificate of it expires;
//! - the trust anchors and CRLs are fixed for one verifier: a reload (a new CRL, a new
//!   CA) builds a new verifier with an empty cache;
//! - the handshake's own signature (CertificateVerify: that the client holds the key)
//!   is checked at every handshake, never cached.

use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Chains remembered at most (distinct client certificates: agencies hold a few each).
const MAX_CHAINS: u64 = 4_096;
/// A remembered chain is verified again after this long even inside its window.
const REMEMBERED_FOR: Duration = Duration::from_secs(600);

/// When every certificate of a chain is valid, in Unix seconds (both ends included, as
/// webpki compares).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    not_before: u64,
    not_after: u64,
}

impl Window {
    fn covers(&self, now: UnixTime) -> bool {
        (self.not_before..=self.not_after).contains(&now.as_secs())
    }
}

/// A client-certificate verifier remembering the chains its inner verifier accepted.
pub struct VerifiedChains {
    inner: Arc<dyn ClientCertVerifier>,
    verified: moka::sync::Cache<[u8; 32], Window>,
}

impl std::fmt::Debug for VerifiedChains {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedChains")
            .field("inner", &self.inner)
            .field("remembered", &self.verified.entry_count())
            .finish()
    }
}

impl VerifiedChains {
    /// Remembers what `inner` accepts.
    pub fn new(inner: Arc<dyn ClientCertVerifier>) -> VerifiedChains {
        VerifiedChains {
            inner,
            verified: moka::sync::Cache::builder()
                .max_capacity(MAX_CHAINS)
                .time_to_live(REMEMBERED_FOR)
                .build(),
        }
    }
}

/// The SHA-256 of a chain: each certificate's length, then its bytes, leaf first.
fn chain_key(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for cert in std::iter::once(end_entity).chain(intermediates) {
        hash.update((cert.len() as u64).to_be_bytes());
        hash.update(cert.as_ref());
    }
    hash.finalize().into()
}

/// The window in which every certificate of the chain is valid; `None` when one does
/// not parse (then nothing is remembered).
fn window(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> Option<Window> {
    let mut window = Window {
        not_before: 0,
        not_after: u64::MAX,
    };
    for cert in std::iter::once(end_entity).chain(intermediates) {
        let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
        let validity = parsed.validity();
        let not_before = u64::try_from(validity.not_before.timestamp()).unwrap_or(0);
        let not_after = u64::try_from(validity.not_after.timestamp()).ok()?;
        window.not_before = window.not_before.max(not_before);
        window.not_after = window.not_after.min(not_after);
    }
    Some(window)
}

impl ClientCertVerifier for VerifiedChains {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let key = chain_key(end_entity, intermediates);
        if self.verified.get(&key).is_some_and(|w| w.covers(now)) {
            return Ok(ClientCertVerified::assertion());
        }
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(window) = window(end_entity, intermediates).filter(|w| w.covers(now)) {
            self.verified.insert(key, window);
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The webpki verifier of a fresh development CA (with its CRL), counting the chains
    /// it is asked to verify.
    #[derive(Debug)]
    struct Counting {
        inner: Arc<dyn ClientCertVerifier>,
        asked: AtomicUsize,
    }

    impl ClientCertVerifier for Counting {
        fn root_hint_subjects(&self) -> &[DistinguishedName] {
            self.inner.root_hint_subjects()
        }
        fn verify_client_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            now: UnixTime,
        ) -> Result<ClientCertVerified, rustls::Error> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            self.inner
                .verify_client_cert(end_entity, intermediates, now)
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    }

    /// A verifier of a new development CA (with its empty CRL), and a client certificate of that CA valid from 2024-01-01 to 2035-01-01.
    fn setup() -> (Arc<Counting>, VerifiedChains, CertificateDer<'static>) {
        let ca = crate::pki::DevCa::new("test CA").unwrap();
        let (pem, _key) = ca
            .issue_client_between(Some("spiffe://t/portal"), (2024, 1, 1), (2035, 1, 1))
            .unwrap();
        let cert = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let crl = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(
            ca.crl(1, &[]).unwrap().as_bytes(),
        )
        .unwrap();
        let webpki = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            super::super::provider(),
        )
        .with_crls([crl])
        .build()
        .unwrap();
        let counting = Arc::new(Counting {
            inner: webpki,
            asked: AtomicUsize::new(0),
        });
        let cached = VerifiedChains::new(counting.clone());
        (counting, cached, cert)
    }

    fn at(y: i32, m: u32, d: u32) -> UnixTime {
        let t = chrono::NaiveDate::from_ymd_opt(y, m, d)
            .unwrap()
            .and_hms_opt(12, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp();
        UnixTime::since_unix_epoch(Duration::from_secs(t as u64))
    }

    #[test]
    fn a_chain_verified_once_is_accepted_again_without_verifying() {
        let (counting, cached, cert) = setup();
        for _ in 0..3 {
            assert!(cached
                .verify_client_cert(&cert, &[], UnixTime::now())
                .is_ok());
        }
        assert_eq!(counting.asked.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_remembered_chain_is_verified_again_outside_its_validity() {
        let (counting, cached, cert) = setup();
        assert!(cached
            .verify_client_cert(&cert, &[], UnixTime::now())
            .is_ok());
        // Expired since: the cache does not answer; the verifier refuses.
        assert!(cached
            .verify_client_cert(&cert, &[], at(2035, 6, 1))
            .is_err());
        // Not yet valid then.
        assert!(cached
            .verify_client_cert(&cert, &[], at(2023, 6, 1))
            .is_err());
        assert_eq!(counting.asked.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_refused_chain_is_never_remembered() {
        let (counting, cached, cert) = setup();
        // Another CA's certificate: refused each time it is presented.
        let (other, _) = crate::pki::DevCa::new("other CA")
            .unwrap()
            .issue_client("spiffe://t/portal", (2035, 1, 1))
            .unwrap();
        let other = CertificateDer::from_pem_slice(other.as_bytes()).unwrap();
        for _ in 0..2 {
            assert!(cached
                .verify_client_cert(&other, &[], UnixTime::now())
                .is_err());
        }
        // Refused outside its validity (asked again), remembered once accepted.
        assert!(cached
            .verify_client_cert(&cert, &[], at(2035, 6, 1))
            .is_err());
        assert_eq!(counting.asked.load(Ordering::SeqCst), 3);
        // The same certificate with an intermediate appended is another chain.
        assert!(cached
            .verify_client_cert(&cert, &[], UnixTime::now())
            .is_ok());
        assert!(cached
            .verify_client_cert(&cert, std::slice::from_ref(&other), UnixTime::now())
            .is_ok());
        assert_eq!(counting.asked.load(Ordering::SeqCst), 5);
    }
}
