//! The physical limits the system's figures are divided by, measured in
//! the same run: a raw TPM2_Quote through tss-esapi on swtpm, and raw
//! fdatasync of 200-byte appends.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use mctc_tests::Swtpm;
use tss_esapi::Context;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Data, PcrSelectSize, PcrSelectionList, PcrSlot, SignatureScheme};
use tss_esapi::tcti_ldr::TctiNameConf;

use crate::stats::Samples;

/// The PCRs every bench device quotes (the harness's attestation PCRs).
pub const QUOTED_PCRS: [u8; 3] = [0, 7, 14];

fn tss(what: &'static str) -> impl Fn(tss_esapi::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// `samples` TPM2_Quotes by an ECC P-256 restricted signing key over the
/// bench PCRs, each with fresh qualifying data, through tss-esapi on a
/// private swtpm — nothing of mctc in the path. Returns the latencies.
pub fn raw_quotes(samples: usize) -> Result<Samples, String> {
    let swtpm = Swtpm::start().map_err(|e| e.to_string())?;
    let tcti = TctiNameConf::from_str(&swtpm.tcti()).map_err(tss("TCTI"))?;
    let mut ctx = Context::new(tcti).map_err(tss("connect to swtpm"))?;
    // The agent's AK template (ECC P-256 restricted signing), as a primary
    // key so no EK policy session is needed for the limit.
    let public = mctc_attest::device::ak_template(mctc_attest::device::AkKind::EccP256)
        .map_err(|e| format!("AK template: {e}"))?;
    let key = ctx
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.create_primary(Hierarchy::Owner, public, None, None, None, None)
        })
        .map_err(tss("create the quoting key"))?
        .key_handle;
    let slots = QUOTED_PCRS
        .iter()
        .map(|&i| PcrSlot::try_from(1u32 << i).map_err(tss("PCR slot")))
        .collect::<Result<Vec<_>, _>>()?;
    let selection = PcrSelectionList::builder()
        .with_size_of_select(PcrSelectSize::ThreeOctets)
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(tss("PCR selection"))?;
    let mut latencies = Samples::new();
    // One unmeasured quote: the first one pays for loading the TSS's
    // lazily initialised state.
    for i in 0..=samples {
        let mut nonce = [0u8; 32];
        nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let data = Data::try_from(nonce.to_vec()).map_err(tss("qualifying data"))?;
        let list = selection.clone();
        let start = Instant::now();
        ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.quote(key, data, SignatureScheme::Null, list)
        })
        .map_err(tss("TPM2_Quote"))?;
        if i > 0 {
            latencies.push(start.elapsed());
        }
    }
    Ok(latencies)
}

/// Raw durability: 200-byte appends to a new file in `dir`, each followed
/// by fdatasync, for `duration`. Returns (fdatasyncs per second, latency
/// of each write + fdatasync).
pub fn fdatasync_rate(dir: &Path, duration: Duration) -> Result<(f64, Samples), String> {
    let path = dir.join("bench-fdatasync.tmp");
    let result = (|| {
        let mut file = File::options()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("create {}: {e}", path.display()))?;
        let record = [0x5au8; 200];
        let mut latencies = Samples::new();
        let start = Instant::now();
        let mut count = 0u32;
        while start.elapsed() < duration {
            let t = Instant::now();
            file.write_all(&record)
                .and_then(|()| file.sync_data())
                .map_err(|e| format!("append + fdatasync: {e}"))?;
            latencies.push(t.elapsed());
            count += 1;
        }
        Ok((f64::from(count) / start.elapsed().as_secs_f64(), latencies))
    })();
    let _ = std::fs::remove_file(&path);
    result
}
