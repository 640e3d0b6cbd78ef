//! `mtls_*` metrics, registered in the gateway's registry. Labels come from
//! closed sets fixed here.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use crate::identity::CertificateProblem;

/// Handshake outcomes besides the certificate refusals.
const OK: &str = "ok";
const TLS_ERROR: &str = "tls_error";
const TIMEOUT: &str = "timeout";

#[derive(Clone)]
pub struct MtlsMetrics {
    handshakes: IntCounterVec,
    reloads: IntCounterVec,
    suppressed: IntCounter,
}

impl MtlsMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<MtlsMetrics> {
        let handshakes = IntCounterVec::new(
            Opts::new(
                "mtls_handshakes_total",
                "TLS handshakes on the mTLS listener by outcome (ok, a client_certificate_* refusal, tls_error, timeout)",
            ),
            &["result"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "mtls_reloads_total",
                "Reloads of the client CA, CRL and server certificate",
            ),
            &["result"],
        )?;
        let suppressed = IntCounter::new(
            "mtls_refusals_unaudited_total",
            "Refused handshakes past the audit rate for refusals (counted, not written)",
        )?;
        registry.register(Box::new(handshakes.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(suppressed.clone()))?;
        // Every series from the start, so a rate() has a zero to begin at.
        for result in [OK, TLS_ERROR, TIMEOUT]
            .into_iter()
            .chain(CertificateProblem::ALL.map(CertificateProblem::reason))
        {
            handshakes.with_label_values(&[result]);
        }
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        Ok(MtlsMetrics {
            handshakes,
            reloads,
            suppressed,
        })
    }

    pub fn handshake_ok(&self) {
        self.handshakes.with_label_values(&[OK]).inc();
    }

    pub fn handshake_refused(&self, problem: CertificateProblem) {
        self.handshakes.with_label_values(&[problem.reason()]).inc();
    }

    pub fn handshake_failed(&self) {
        self.handshakes.with_label_values(&[TLS_ERROR]).inc();
    }

    pub fn handshake_timeout(&self) {
        self.handshakes.with_label_values(&[TIMEOUT]).inc();
    }

    pub fn reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.reloads.with_label_values(&[result]).inc();
    }

    pub fn unaudited(&self) {
        self.suppressed.inc();
    }
}
