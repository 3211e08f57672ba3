//! Offline verification of a lineage bundle: no database, no network, only
//! the bundle, the authority's public key(s) and, for completeness, the
//! collector's receipt key(s).
//!
//! With collector keys, the bundle must carry a receipt by one of them for
//! its device; the bundle must then reach the receipt's seq with the
//! receipt's hash (a bundle cut or thinned below it fails at the first
//! missing seq), and whatever follows is reported as the unacknowledged
//! tail. `collector/README.md` ("What OK proves") states exactly what a
//! pass means with and without them.
//!
//! A bundle passes only if the registry record verifies with a trusted
//! authority key, names the bundle's device and vouches for the bundle's AK;
//! every record chains from `from_seq` (decodes, right device, consecutive
//! seq, `prev` links, no duplicate, monotonic time within a boot,
//! checkpoints commit to their predecessor); every checkpoint quote verifies
//! against that AK; the last record is a checkpoint (so a TPM quote covers
//! every record before it); and the chain ends at the header's `head`. The
//! first failure is reported with the seq at which the chain expected
//! something else.

use mctc_shim::bundle::{BUNDLE_VERSION, BundleReader};
use mctc_shim::lineage::{ChainVerifier, Record};
use mctc_shim::{AuthorityKey, CollectorKey, DeviceId, Message, RingCrypto, verify_receipt};
use serde::Serialize;

use crate::chain::check_next;
use crate::checkpoint::clock_regression;
use crate::registry::verify_registry;

/// What the registry record in the bundle says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistrySummary {
    /// Record version.
    pub version: u64,
    /// The device's standing when the record was issued.
    pub status: &'static str,
    /// Device class.
    pub class: String,
    /// SHA-256 (hex) of the AK's `TPM2B_PUBLIC`.
    pub ak_sha256: String,
}

/// The receipt in the bundle, once it verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceiptSummary {
    /// The collector held the verified chain `0 ..= seq`.
    pub seq: u64,
    /// The hash of record `seq` (hex).
    pub hash: String,
    /// The collector's wall clock when it signed, Unix ms.
    pub time_ms: u64,
    /// The newest checkpoint the collector had verified at or below `seq`.
    pub checkpoint: Option<u64>,
    /// Records in the bundle after `seq`: written by the device, not yet
    /// acknowledged by a collector when the receipt was signed.
    pub unacknowledged: u64,
}

/// The first thing that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The seq the chain expected where it failed; `None` when the failure
    /// is before any record (header, registry record).
    pub seq: Option<u64>,
    /// A stable snake_case reason (see the README's table).
    pub reason: &'static str,
    /// One line for operators.
    pub detail: String,
}

/// The outcome of [`verify_bundle`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Whether the bundle verified.
    pub ok: bool,
    /// The device, once the header parsed.
    pub device: Option<String>,
    /// The registry record, once it verified.
    pub registry: Option<RegistrySummary>,
    /// The first seq.
    pub from_seq: Option<u64>,
    /// The last verified seq.
    pub last_seq: Option<u64>,
    /// Records verified.
    pub records: u64,
    /// Checkpoints verified.
    pub checkpoints: u64,
    /// The collector's receipt, when collector keys were given and it
    /// verified.
    pub receipt: Option<ReceiptSummary>,
    /// Things that are not failures but deserve a look (TPM clock or boot
    /// counters going backwards between quotes).
    pub warnings: Vec<String>,
    /// The first failure.
    pub failure: Option<Failure>,
}

impl Report {
    fn fail(mut self, seq: Option<u64>, reason: &'static str, detail: impl Into<String>) -> Self {
        self.ok = false;
        self.failure = Some(Failure {
            seq,
            reason,
            detail: detail.into(),
        });
        self
    }
}

/// Verifies `bundle` against the trusted authority `keys` and, if any are
/// given, for completeness against the trusted `collectors`' receipt keys.
pub fn verify_bundle(bundle: &[u8], keys: &[AuthorityKey], collectors: &[CollectorKey]) -> Report {
    let crypto = RingCrypto;
    let report = Report::default();
    let (header, mut records) = match BundleReader::open(bundle) {
        Ok(opened) => opened,
        Err(e) => return report.fail(None, "malformed", format!("bundle header: {e}")),
    };
    if header.version != BUNDLE_VERSION {
        return report.fail(
            None,
            "unsupported_version",
            format!(
                "bundle version {} (this verifier reads {BUNDLE_VERSION})",
                header.version
            ),
        );
    }
    let device = match DeviceId::new(header.device) {
        Ok(device) => device,
        Err(e) => return report.fail(None, "malformed", format!("bundle device id: {e}")),
    };
    let mut report = Report {
        device: Some(device.to_string()),
        from_seq: Some(header.from_seq),
        ..report
    };
    let (entry, ak) = match verify_registry(header.registry, &device, keys, &crypto) {
        Ok(verified) => verified,
        Err(e) => return report.fail(None, "registry", e.to_string()),
    };
    report.registry = Some(RegistrySummary {
        version: entry.version,
        status: entry.status.name(),
        class: entry.class.clone(),
        ak_sha256: hex::encode(ak.fingerprint()),
    });

    if header.ak_public != entry.ak_public.as_slice() {
        return report.fail(
            None,
            "ak_mismatch",
            "the bundle's AK is not the one the registry record vouches for",
        );
    }

    // With collector keys the receipt is required: without one, nothing
    // shows how far the device's lineage reached.
    let receipt = match (collectors.is_empty(), header.receipt) {
        (true, _) => None,
        (false, None) => {
            return report.fail(
                None,
                "no_receipt",
                "the bundle carries no collector receipt, so its completeness cannot be checked",
            );
        }
        (false, Some(bytes)) => match verify_receipt(bytes, collectors, &crypto, &device) {
            Ok(verified) => {
                let r = verified.receipt();
                Some((r.seq, r.hash.0, r.time_ms, r.checkpoint))
            }
            Err(e) => return report.fail(None, "receipt", format!("receipt: {e}")),
        },
    };
    if let Some((seq, hash, _, _)) = receipt {
        let after = seq.saturating_add(1);
        if header.from_seq > after {
            return report.fail(
                Some(after),
                "missing",
                format!(
                    "the bundle starts at seq {} but the receipt covers only up to {seq}: records {after}..{} are missing",
                    header.from_seq,
                    header.from_seq - 1
                ),
            );
        }
        if header.from_seq == after {
            // The receipt's record is the one before the bundle: the first
            // record must link to it.
            let first_prev = records
                .peek_record()
                .and_then(|bytes| Record::decode(bytes).ok())
                .map(|r| r.prev.0);
            if first_prev != Some(hash) {
                return report.fail(
                    Some(after),
                    "receipt_mismatch",
                    format!("record {after} does not link to the receipt's record {seq}"),
                );
            }
        }
    }

    let mut verifier: Option<ChainVerifier> = None;
    let mut last_clock = None;
    let mut last_is_checkpoint = false;
    loop {
        let expected = verifier
            .as_ref()
            .map_or(header.from_seq, ChainVerifier::next_seq);
        let bytes = match records.next_record() {
            None => break,
            Some(Ok(bytes)) => bytes,
            Some(Err(e)) => return report.fail(Some(expected), "malformed", e.to_string()),
        };
        let chain = match verifier.as_mut() {
            Some(chain) => chain,
            None => {
                let Ok(first) = Record::decode(bytes) else {
                    return report.fail(
                        Some(expected),
                        "undecodable",
                        "the first record does not decode",
                    );
                };
                verifier.insert(match header.from_seq.checked_sub(1) {
                    None => ChainVerifier::genesis(device.clone()),
                    // What precedes from_seq is outside the bundle: the first
                    // record's prev is taken as given; the checkpoints after
                    // it cover it.
                    Some(before) => ChainVerifier::resume(device.clone(), before, first.prev.0),
                })
            }
        };
        match check_next(chain, &crypto, &device, &ak, bytes) {
            Ok(checked) => {
                if let Some((seq, hash, _, _)) = receipt {
                    if checked.record.seq == seq && checked.hash != hash {
                        return report.fail(
                            Some(seq),
                            "receipt_mismatch",
                            format!(
                                "record {seq} is not the one the collector acknowledged (bundle {}, receipt {})",
                                hex::encode(checked.hash.get(..8).unwrap_or_default()),
                                hex::encode(hash.get(..8).unwrap_or_default())
                            ),
                        );
                    }
                }
                report.records += 1;
                report.last_seq = Some(checked.record.seq);
                last_is_checkpoint = checked.checkpoint.is_some();
                if let Some(cp) = checked.checkpoint {
                    report.checkpoints += 1;
                    if let Some(w) = last_clock.and_then(|c| clock_regression(&c, &cp.clock)) {
                        report
                            .warnings
                            .push(format!("checkpoint at seq {}: {w}", checked.record.seq));
                    }
                    last_clock = Some(cp.clock);
                }
            }
            Err(fault) => return report.fail(Some(fault.seq()), fault.reason(), fault.detail()),
        }
    }
    let (Some(chain), Some(last)) = (verifier.as_ref(), report.last_seq) else {
        return report.fail(Some(header.from_seq), "empty", "the bundle has no records");
    };
    if let Err(b) = chain.finish(&header.head) {
        return report.fail(Some(b.seq), "head_mismatch", b.to_string());
    }
    if let Some((seq, hash, time_ms, checkpoint)) = receipt {
        if last < seq {
            return report.fail(
                Some(last + 1),
                "truncated",
                format!(
                    "the bundle ends at seq {last} but the collector acknowledged records through {seq}: records {}..={seq} are missing",
                    last + 1
                ),
            );
        }
        report.receipt = Some(ReceiptSummary {
            seq,
            hash: hex::encode(hash),
            time_ms,
            checkpoint,
            unacknowledged: last - seq,
        });
    }
    if !last_is_checkpoint {
        return report.fail(
            Some(last),
            "unanchored",
            "the last record is not a checkpoint: the records after the last checkpoint are not covered by a TPM quote",
        );
    }
    report.ok = true;
    report
}

/// `ms` (Unix milliseconds) as RFC 3339 UTC, e.g. `2025-11-24T16:00:00.123Z`
/// (for operators reading a receipt's time).
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    // Days to civil date (H. Hinnant, "chrono-Compatible Low-Level Date
    // Algorithms").
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn receipt_times_read_as_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(1_764_000_000_123), "2025-11-24T16:00:00.123Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
