//! The owner of the TPM context. Runs on its own thread; see `mod.rs`.

use std::str::FromStr;

use tracing::{debug, info, warn};
use tss_esapi::Context;
use tss_esapi::constants::tss::{
    TPM2_ACTIVE_SESSION_FIRST, TPM2_LOADED_SESSION_FIRST, TPM2_TRANSIENT_FIRST,
};
use tss_esapi::constants::{CapabilityType, PropertyTag};
use tss_esapi::handles::{
    KeyHandle, NvIndexHandle, NvIndexTpmHandle, ObjectHandle, PcrHandle, TpmHandle,
};
use tss_esapi::interface_types::resource_handles::NvAuth;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    CapabilityData, Data, Digest, DigestValues, EncryptedSecret, IdObject, PcrSelectSize,
    PcrSelectionList, PcrSlot, Private, SignatureScheme,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::Marshall;
use zeroize::Zeroizing;

use super::ak_store::{self, AkBlob};
use super::identity::{Identity, TpmConfig, TpmInfo};
use super::keys::{
    ak_template, create_ek, hashing_algorithm, marshal_public, tpm_error, tss, unmarshal_public,
    with_ek_policy,
};
use crate::error::{AkBlobProblem, Error, TpmOp};
use crate::evidence::{BootCounters, ClockInfo, Evidence};
use crate::pcr::{HashAlg, PcrSelection, PcrValues};
use crate::tpm_constants::MAX_DIGEST;
use crate::verifier::Attest;
use crate::wire::Reader;

/// Quote attempts before PCRs moving under us becomes an error.
const QUOTE_ATTEMPTS: u32 = 3;
/// TPM2_PCR_Read returns at most this many digests per call.
const PCRS_PER_READ: usize = 8;
/// Handles asked for per TPM2_GetCapability when flushing.
const FLUSH_BATCH: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    /// TPM2_FlushContext, then free the handle.
    Flush,
    /// Free the handle only.
    Forget,
}

/// A key loaded in the TPM.
#[derive(Debug)]
struct LoadedKey {
    handle: KeyHandle,
    /// Marshalled `TPM2B_PUBLIC`.
    public: Vec<u8>,
    name: Vec<u8>,
}

pub(crate) struct Worker {
    config: TpmConfig,
    tcti: TctiNameConf,
    info: TpmInfo,
    ctx: Option<Context>,
    ek: Option<LoadedKey>,
    ak: Option<LoadedKey>,
    /// The EK certificate, read once (NV does not change under us).
    ek_cert: Option<Option<Vec<u8>>>,
    /// The last signed clock read; its boot counters stay true while the AK
    /// stays loaded (any TPM Reset or Restart unloads it).
    clock: Option<ClockInfo>,
    stopping: bool,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("tcti", &self.config.tcti)
            .field("connected", &self.ctx.is_some())
            .field("ek", &self.ek)
            .field("ak", &self.ak)
            .finish_non_exhaustive()
    }
}

impl Worker {
    pub(crate) fn open(config: TpmConfig) -> Result<Worker, Error> {
        let tcti = TctiNameConf::from_str(&config.tcti)
            .map_err(|e| Error::Config(format!("TCTI {:?}: {e}", config.tcti)))?;
        let mut worker = Worker {
            config,
            tcti,
            info: TpmInfo {
                manufacturer: String::new(),
                vendor: String::new(),
                firmware_version: 0,
                simulator: false,
            },
            ctx: None,
            ek: None,
            ak: None,
            ek_cert: None,
            clock: None,
            stopping: false,
        };
        worker.connect()?;
        worker.info = worker.probe_info()?;
        let info = &worker.info;
        if info.simulator {
            warn!(
                manufacturer = %info.manufacturer,
                vendor = %info.vendor,
                tcti = %worker.config.tcti,
                allowed = worker.config.allow_software_tpm,
                "THE TPM IS A SOFTWARE SIMULATOR: its keys and PCRs have no hardware protection"
            );
            if !worker.config.allow_software_tpm {
                return Err(Error::SimulatorRefused {
                    manufacturer: info.manufacturer.clone(),
                    vendor: info.vendor.clone(),
                });
            }
        } else {
            info!(manufacturer = %info.manufacturer, vendor = %info.vendor, "TPM opened");
        }
        Ok(worker)
    }

    pub(crate) fn info(&self) -> &TpmInfo {
        &self.info
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping
    }

    /// Drops the context now (flushing what we loaded) and ends the loop.
    pub(crate) fn stop(&mut self) {
        self.close();
        self.stopping = true;
    }

    pub(crate) fn close(&mut self) {
        self.release_keys(Release::Flush);
        self.ctx = None;
    }

    /// Runs one request and, on a TPM failure, prepares the next one: a
    /// transport failure drops the context (the next call reconnects), a
    /// stale handle drops the keys (the next call reloads them).
    pub(crate) fn run<T>(
        &mut self,
        f: impl FnOnce(&mut Worker) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let result = f(self);
        if let Err(Error::Tpm(e)) = &result {
            if e.is_transport() {
                warn!(op = %e.op, error = %e, "TPM unreachable; reconnecting on the next request");
                self.disconnect();
            } else if e.is_stale_handle() {
                info!(op = %e.op, "TPM objects are gone; reloading keys on the next request");
                // Flush what is still there: without a resource manager a
                // key left behind would take one of the TPM's few slots.
                self.release_keys(Release::Flush);
            }
        }
        result
    }

    fn connect(&mut self) -> Result<(), Error> {
        let mut ctx = Context::new(self.tcti.clone()).map_err(tss(TpmOp::Connect))?;
        flush_leftovers(&mut ctx)?;
        self.ctx = Some(ctx);
        self.ek = None;
        self.ak = None;
        self.clock = None;
        Ok(())
    }

    /// Forgets the context after a failure below the TPM. Our objects are
    /// left to the next connect's flush (the TPM may be unreachable now).
    fn disconnect(&mut self) {
        self.release_keys(Release::Forget);
        self.ctx = None;
    }

    /// Releases our keys: flushes them from the TPM, or only frees the ESAPI
    /// handles when the objects are already gone (reset) or the TPM cannot
    /// be reached.
    fn release_keys(&mut self, how: Release) {
        self.clock = None;
        let keys = [self.ak.take(), self.ek.take()];
        if let Some(ctx) = self.ctx.as_mut() {
            for key in keys.into_iter().flatten() {
                let mut handle = ObjectHandle::from(key.handle);
                if how == Release::Forget || ctx.flush_context(handle).is_err() {
                    let _ = ctx.tr_close(&mut handle);
                }
            }
        }
    }

    fn ctx(&mut self) -> Result<&mut Context, Error> {
        if self.ctx.is_none() {
            self.connect()?;
        }
        self.ctx.as_mut().ok_or(Error::WorkerStopped)
    }

    fn probe_info(&mut self) -> Result<TpmInfo, Error> {
        let tcti = self.config.tcti.clone();
        let ctx = self.ctx()?;
        let mut property = |tag| {
            ctx.get_tpm_property(tag)
                .map(Option::unwrap_or_default)
                .map_err(tss(TpmOp::GetCapability))
        };
        let manufacturer = ascii(&[property(PropertyTag::Manufacturer)?]);
        let vendor = ascii(&[
            property(PropertyTag::VendorString1)?,
            property(PropertyTag::VendorString2)?,
            property(PropertyTag::VendorString3)?,
            property(PropertyTag::VendorString4)?,
        ]);
        let firmware_version = (u64::from(property(PropertyTag::FirmwareVersion1)?) << 32)
            | u64::from(property(PropertyTag::FirmwareVersion2)?);
        // libtpms (swtpm, QEMU/libvirt vTPMs) and IBM's simulator report "IBM";
        // swtpm's vendor string is "SW TPM"; the TCTIs named are simulators.
        let simulator = manufacturer == "IBM"
            || vendor.starts_with("SW")
            || tcti.starts_with("swtpm")
            || tcti.starts_with("mssim");
        Ok(TpmInfo {
            manufacturer,
            vendor,
            firmware_version,
            simulator,
        })
    }

    // ---- keys ------------------------------------------------------------

    fn ensure_ek(&mut self) -> Result<(), Error> {
        if self.ek.is_some() {
            return Ok(());
        }
        let kind = self.config.ek_kind;
        let ctx = self.ctx()?;
        let handle = create_ek(ctx, kind)?;
        let (public, name, _) = match ctx.read_public(handle) {
            Ok(read) => read,
            Err(e) => {
                let _ = ctx.flush_context(handle.into());
                return Err(tss(TpmOp::ReadPublic)(e));
            }
        };
        self.ek = Some(LoadedKey {
            handle,
            public: marshal_public(public)?,
            name: name.value().to_vec(),
        });
        Ok(())
    }

    /// Whether our AK is still loaded under the same handle.
    fn ak_alive(&mut self) -> Result<bool, Error> {
        let Some((handle, name)) = self.ak.as_ref().map(|k| (k.handle, k.name.clone())) else {
            return Ok(false);
        };
        match self.ctx()?.read_public(handle) {
            Ok((_, read_name, _)) => Ok(read_name.value() == name.as_slice()),
            Err(e) => {
                let e = tpm_error(TpmOp::ReadPublic, e);
                if e.is_transport() {
                    Err(Error::Tpm(e))
                } else {
                    Ok(false)
                }
            }
        }
    }

    /// Makes sure the EK and AK are loaded, reloading them after a TPM
    /// Reset/Restart. Creates (and saves) the AK only if `create`.
    fn ensure_keys(&mut self, create: bool) -> Result<(), Error> {
        if self.ak.is_some() && !self.ak_alive()? {
            info!("the attestation key is no longer loaded (TPM reset or restart?); reloading");
            self.release_keys(Release::Flush);
        }
        if self.ak.is_some() && self.ek.is_some() {
            return Ok(());
        }
        self.ensure_ek()?;
        let blob = match ak_store::load(&self.config.state_dir)? {
            Some(blob) => blob,
            None if create => self.create_ak()?,
            None => return Err(Error::NotProvisioned),
        };
        self.load_ak(&blob)
    }

    fn create_ak(&mut self) -> Result<AkBlob, Error> {
        let template = ak_template(self.config.ak_kind)?;
        let (ek_handle, ek_name) = match &self.ek {
            Some(ek) => (ek.handle, ek.name.clone()),
            None => return Err(Error::NotProvisioned),
        };
        let ctx = self.ctx()?;
        let created = with_ek_policy(ctx, |ctx, session| {
            ctx.execute_with_session(Some(session), |ctx| {
                ctx.create(ek_handle, template, None, None, None, None)
            })
            .map_err(tss(TpmOp::CreateAk))
        })?;
        let blob = AkBlob {
            ek_kind: self.config.ek_kind,
            ak_kind: self.config.ak_kind,
            ek_name,
            public: marshal_public(created.out_public)?,
            private: created.out_private.value().to_vec(),
        };
        ak_store::save(&self.config.state_dir, &blob)?;
        info!(
            path = %ak_store::blob_path(&self.config.state_dir).display(),
            "created a new attestation key"
        );
        Ok(blob)
    }

    fn load_ak(&mut self, blob: &AkBlob) -> Result<(), Error> {
        let path = ak_store::blob_path(&self.config.state_dir);
        if blob.ek_kind != self.config.ek_kind || blob.ak_kind != self.config.ak_kind {
            return Err(Error::AkBlob {
                path,
                problem: AkBlobProblem::OtherKind,
            });
        }
        let Some(ek_handle) = self.ek.as_ref().map(|ek| ek.handle) else {
            return Err(Error::NotProvisioned);
        };
        if self.ek.as_ref().map(|ek| ek.name.as_slice()) != Some(blob.ek_name.as_slice()) {
            return Err(Error::AkBlob {
                path,
                problem: AkBlobProblem::OtherEk,
            });
        }
        let public = unmarshal_public(&blob.public)?;
        let private = Private::try_from(blob.private.clone()).map_err(|_| Error::AkBlob {
            path: path.clone(),
            problem: AkBlobProblem::Corrupt,
        })?;
        let ctx = self.ctx()?;
        let handle = with_ek_policy(ctx, |ctx, session| {
            ctx.execute_with_session(Some(session), |ctx| ctx.load(ek_handle, private, public))
                .map_err(tss(TpmOp::LoadAk))
        })?;
        let name = match ctx.read_public(handle) {
            Ok((_, name, _)) => name.value().to_vec(),
            Err(e) => {
                let _ = ctx.flush_context(handle.into());
                return Err(tss(TpmOp::ReadPublic)(e));
            }
        };
        debug!("attestation key loaded");
        self.ak = Some(LoadedKey {
            handle,
            public: blob.public.clone(),
            name,
        });
        self.clock = None;
        Ok(())
    }

    fn loaded(&self) -> Result<(&LoadedKey, &LoadedKey), Error> {
        match (&self.ek, &self.ak) {
            (Some(ek), Some(ak)) => Ok((ek, ak)),
            _ => Err(Error::NotProvisioned),
        }
    }

    pub(crate) fn delete_ak(&mut self) -> Result<(), Error> {
        if let (Some(ak), Some(ctx)) = (self.ak.take(), self.ctx.as_mut()) {
            let mut handle = ObjectHandle::from(ak.handle);
            if ctx.flush_context(handle).is_err() {
                let _ = ctx.tr_close(&mut handle);
            }
        }
        self.clock = None;
        ak_store::delete(&self.config.state_dir)?;
        info!("attestation key deleted");
        Ok(())
    }

    // ---- requests --------------------------------------------------------

    pub(crate) fn identity(&mut self) -> Result<Identity, Error> {
        self.ensure_keys(true)?;
        let ek_cert = self.ek_certificate()?;
        let (ek, ak) = self.loaded()?;
        Ok(Identity {
            ek_public: ek.public.clone(),
            ek_cert,
            ak_public: ak.public.clone(),
            ak_name: ak.name.clone(),
        })
    }

    fn ek_certificate(&mut self) -> Result<Option<Vec<u8>>, Error> {
        if let Some(cert) = &self.ek_cert {
            return Ok(cert.clone());
        }
        let index = self.config.ek_kind.certificate_nv_index();
        let cert = read_nv(self.ctx()?, index)?.map(trim_der);
        self.ek_cert = Some(cert.clone());
        Ok(cert)
    }

    pub(crate) fn activate_credential(
        &mut self,
        credential_blob: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let id_object = tpm2b_body("TPM2B_ID_OBJECT", credential_blob)?;
        let secret = tpm2b_body("TPM2B_ENCRYPTED_SECRET", encrypted_secret)?;
        let id_object = IdObject::try_from(id_object.to_vec())
            .map_err(|_| Error::InvalidArgument("credential blob too large".into()))?;
        let secret = EncryptedSecret::try_from(secret.to_vec())
            .map_err(|_| Error::InvalidArgument("encrypted secret too large".into()))?;
        self.ensure_keys(false)?;
        let (ek, ak) = {
            let (ek, ak) = self.loaded()?;
            (ek.handle, ak.handle)
        };
        let ctx = self.ctx()?;
        let digest = with_ek_policy(ctx, |ctx, ek_session| {
            ctx.execute_with_sessions(
                (Some(AuthSession::Password), Some(ek_session), None),
                |ctx| ctx.activate_credential(ak, ek, id_object, secret),
            )
            .map_err(tss(TpmOp::ActivateCredential))
        })?;
        Ok(Zeroizing::new(digest.value().to_vec()))
    }

    pub(crate) fn quote(
        &mut self,
        qualifying_data: &[u8],
        selection: &PcrSelection,
    ) -> Result<Evidence, Error> {
        if qualifying_data.len() > MAX_DIGEST {
            return Err(Error::InvalidArgument(format!(
                "qualifying data of {} bytes (at most {MAX_DIGEST})",
                qualifying_data.len()
            )));
        }
        self.ensure_keys(false)?;
        for attempt in 1..=QUOTE_ATTEMPTS {
            let pcrs = self.read_pcrs(selection)?;
            let (attest, signature, parsed) = self.signed_quote(qualifying_data, selection)?;
            let digest = parsed.quote.map(|q| q.pcr_digest).unwrap_or_default();
            if digest.as_slice() == pcrs.composite_digest().as_slice() {
                return Ok(Evidence {
                    attest,
                    signature,
                    pcrs,
                    clock: parsed.clock,
                });
            }
            debug!(
                attempt,
                "PCRs changed between the read and the quote; retaking"
            );
        }
        Err(Error::PcrsUnstable {
            attempts: QUOTE_ATTEMPTS,
        })
    }

    /// TPM2_Quote by the AK; returns the raw attestation, the marshalled
    /// signature and the decoded attestation. Records the signed clock.
    fn signed_quote(
        &mut self,
        qualifying_data: &[u8],
        selection: &PcrSelection,
    ) -> Result<(Vec<u8>, Vec<u8>, Attest), Error> {
        let ak = self.loaded()?.1.handle;
        let list = selection_list(selection.bank(), &selection.indices().collect::<Vec<_>>())?;
        let data = Data::try_from(qualifying_data.to_vec()).map_err(tss(TpmOp::Quote))?;
        let (attest, signature) = self
            .ctx()?
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.quote(ak, data, SignatureScheme::Null, list)
            })
            .map_err(tss(TpmOp::Quote))?;
        let attest = attest.marshall().map_err(tss(TpmOp::Marshal))?;
        let signature = signature.marshall().map_err(tss(TpmOp::Marshal))?;
        let parsed = Attest::parse(&attest).map_err(Error::TpmOutput)?;
        self.clock = Some(parsed.clock);
        Ok((attest, signature, parsed))
    }

    pub(crate) fn read_pcrs(&mut self, selection: &PcrSelection) -> Result<PcrValues, Error> {
        let indices: Vec<u8> = selection.indices().collect();
        let bank = selection.bank();
        'snapshot: for _ in 0..QUOTE_ATTEMPTS {
            let mut values = Vec::with_capacity(indices.len());
            let mut counter = None;
            for chunk in indices.chunks(PCRS_PER_READ) {
                let list = selection_list(bank, chunk)?;
                let (update_counter, read, digests) = self
                    .ctx()?
                    .pcr_read(list.clone())
                    .map_err(tss(TpmOp::PcrRead))?;
                if read != list || digests.len() != chunk.len() {
                    return Err(Error::Config(format!(
                        "PCR bank {bank} is not active on this TPM (or PCRs {chunk:?} do not exist)"
                    )));
                }
                if counter.is_some_and(|c| c != update_counter) {
                    continue 'snapshot;
                }
                counter = Some(update_counter);
                values.extend(digests.value().iter().map(|d| d.value().to_vec()));
            }
            return Ok(PcrValues::new(*selection, values)?);
        }
        Err(Error::PcrsUnstable {
            attempts: QUOTE_ATTEMPTS,
        })
    }

    pub(crate) fn boot_counters(&mut self) -> Result<BootCounters, Error> {
        if let Some(clock) = self.clock
            && self.ak_alive()?
        {
            return Ok(clock.boot());
        }
        Ok(self.read_clock()?.boot())
    }

    pub(crate) fn read_clock(&mut self) -> Result<ClockInfo, Error> {
        self.ensure_keys(false)?;
        let (_, _, parsed) = self.signed_quote(&[], &PcrSelection::empty(HashAlg::Sha256))?;
        Ok(parsed.clock)
    }

    pub(crate) fn extend_pcr(&mut self, index: u8, sha256: &[u8; 32]) -> Result<(), Error> {
        let handle = PcrHandle::try_from(u32::from(index))
            .ok()
            .filter(|_| index < crate::pcr::PCR_COUNT)
            .ok_or_else(|| Error::InvalidArgument(format!("PCR index {index}")))?;
        let mut digests = DigestValues::new();
        digests.set(
            hashing_algorithm(HashAlg::Sha256),
            Digest::try_from(sha256.to_vec()).map_err(tss(TpmOp::PcrExtend))?,
        );
        self.ctx()?
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.pcr_extend(handle, digests)
            })
            .map_err(tss(TpmOp::PcrExtend))
    }
}

/// A `TPML_PCR_SELECTION` with one bank (3 select octets, PC-client).
fn selection_list(bank: HashAlg, pcrs: &[u8]) -> Result<PcrSelectionList, Error> {
    let slots = pcrs
        .iter()
        .map(|&i| {
            1u32.checked_shl(u32::from(i))
                .and_then(|bit| PcrSlot::try_from(bit).ok())
                .ok_or_else(|| Error::InvalidArgument(format!("PCR index {i}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    PcrSelectionList::builder()
        .with_size_of_select(PcrSelectSize::ThreeOctets)
        .with_selection(hashing_algorithm(bank), &slots)
        .build()
        .map_err(tss(TpmOp::PcrRead))
}

/// Four big-endian property words as text, NULs and padding dropped.
fn ascii(words: &[u32]) -> String {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    String::from_utf8_lossy(&bytes)
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The body of a marshalled TPM2B, which must be exactly consumed.
fn tpm2b_body<'a>(what: &'static str, bytes: &'a [u8]) -> Result<&'a [u8], Error> {
    let mut r = Reader::new(what, bytes);
    let body = r
        .tpm2b(what, usize::from(u16::MAX))
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    r.finish()
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok(body)
}

/// Flushes transient objects and sessions left by an earlier process (a
/// crash leaves them behind when no resource manager cleans up, and three of
/// them fill a TPM: TPM_RC_OBJECT_MEMORY).
fn flush_leftovers(ctx: &mut Context) -> Result<(), Error> {
    let mut flushed = 0usize;
    for first in [
        TPM2_TRANSIENT_FIRST,
        TPM2_LOADED_SESSION_FIRST,
        TPM2_ACTIVE_SESSION_FIRST,
    ] {
        let (data, _) = ctx
            .get_capability(CapabilityType::Handles, first, FLUSH_BATCH)
            .map_err(tss(TpmOp::GetCapability))?;
        let CapabilityData::Handles(handles) = data else {
            continue;
        };
        for handle in handles.into_inner() {
            let is_object = matches!(handle, TpmHandle::Transient(_));
            let result = ctx
                .tr_from_tpm_public(handle)
                .and_then(|object| ctx.flush_context(object));
            match result {
                Ok(()) => flushed += 1,
                // An object we cannot flush would keep the TPM full: fail.
                Err(e) if is_object => return Err(tss(TpmOp::FlushContext)(e)),
                Err(e) => {
                    warn!(handle = u32::from(handle), error = %e, "could not flush a leftover session")
                }
            }
        }
    }
    if flushed > 0 {
        warn!(
            flushed,
            "flushed transient objects and sessions left by an earlier process"
        );
    }
    Ok(())
}

/// Reads an NV index in full, `None` if it is not defined. Owner
/// authorization first (the TCG EK certificate indices allow it), the
/// index's own (empty) authorization second.
fn read_nv(ctx: &mut Context, index: u32) -> Result<Option<Vec<u8>>, Error> {
    let op = tss(TpmOp::NvRead);
    let (data, _) = ctx
        .get_capability(CapabilityType::Handles, index, 1)
        .map_err(tss(TpmOp::GetCapability))?;
    let defined = matches!(data, CapabilityData::Handles(list)
        if list.first().is_some_and(|h| u32::from(*h) == index));
    if !defined {
        return Ok(None);
    }
    let tpm_handle = NvIndexTpmHandle::new(index).map_err(&op)?;
    let mut object = ctx
        .tr_from_tpm_public(TpmHandle::NvIndex(tpm_handle))
        .map_err(&op)?;
    let nv = NvIndexHandle::from(object);
    let result = ctx.nv_read_public(nv).map_err(&op).and_then(|(public, _)| {
        let size = public.data_size();
        let chunk = ctx
            .get_tpm_property(PropertyTag::NvBufferMax)
            .ok()
            .flatten()
            .and_then(|v| usize::try_from(v).ok())
            .filter(|&v| v > 0)
            .unwrap_or(512);
        read_nv_body(ctx, nv, size, chunk, NvAuth::Owner)
            .or_else(|_| read_nv_body(ctx, nv, size, chunk, NvAuth::NvIndex(nv)))
            .map_err(&op)
    });
    let _ = ctx.tr_close(&mut object);
    result.map(Some)
}

fn read_nv_body(
    ctx: &mut Context,
    nv: NvIndexHandle,
    size: usize,
    chunk: usize,
    auth: NvAuth,
) -> Result<Vec<u8>, tss_esapi::Error> {
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        let want = chunk.min(size - out.len());
        let (want16, offset16) = match (u16::try_from(want), u16::try_from(out.len())) {
            (Ok(w), Ok(o)) => (w, o),
            _ => {
                return Err(tss_esapi::Error::WrapperError(
                    tss_esapi::WrapperErrorKind::WrongParamSize,
                ));
            }
        };
        let data = ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.nv_read(auth, nv, want16, offset16)
        })?;
        if data.value().is_empty() {
            break;
        }
        out.extend_from_slice(data.value());
    }
    Ok(out)
}

/// Cuts NV contents to the DER certificate they start with (some TPMs pad
/// the index); leaves them unchanged when they do not start with one.
fn trim_der(mut bytes: Vec<u8>) -> Vec<u8> {
    let len = match (bytes.first(), bytes.get(1)) {
        (Some(0x30), Some(&l)) if l < 0x80 => Some(2 + usize::from(l)),
        (Some(0x30), Some(&l)) if (0x81..=0x84).contains(&l) => {
            let n = usize::from(l - 0x80);
            bytes.get(2..2 + n).map(|len_bytes| {
                2 + n
                    + len_bytes
                        .iter()
                        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
            })
        }
        _ => None,
    };
    if let Some(len) = len.filter(|&l| l <= bytes.len()) {
        bytes.truncate(len);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_padding_is_trimmed() {
        assert_eq!(
            trim_der(vec![0x30, 0x02, 1, 2, 0, 0]),
            vec![0x30, 0x02, 1, 2]
        );
        let mut long = vec![0x30, 0x82, 0x01, 0x00];
        long.extend(vec![7u8; 0x100 + 5]);
        assert_eq!(trim_der(long).len(), 4 + 0x100);
        assert_eq!(trim_der(vec![1, 2, 3]), vec![1, 2, 3]);
        // A length beyond the data leaves the bytes alone.
        assert_eq!(trim_der(vec![0x30, 0x05, 1]), vec![0x30, 0x05, 1]);
    }

    #[test]
    fn property_words_become_text() {
        assert_eq!(ascii(&[0x4942_4d00]), "IBM");
        assert_eq!(ascii(&[0x5357_2020, 0x2054_504d, 0, 0]), "SW TPM");
    }
}
