//! Fixtures for the collector's tests: an authority key that signs registry
//! records, devices whose lineage is written with the shim's `ChainHead` and
//! whose checkpoints are genuine quotes from a private swtpm, an
//! independent bundle writer, and MQTT clients on the harness broker.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Broker, Proc, Swtpm};
use mctc_attest::PcrSelection;
use mctc_attest::device::{Identity, Tpm, TpmConfig};
use mctc_shim::lineage::{Body, ChainHead, Checkpoint, Decision, Stamp, VerdictCode};
use mctc_shim::messages::{AckAnomaly, LineageAck};
use mctc_shim::messages::{DeviceStatus, LineageBatch, RegistryRecord};
use mctc_shim::tpm::BootCounters;
use mctc_shim::wire::{Bstr, Bytes, List, Text, Token, Version};
use mctc_shim::{
    CollectorKey, DeviceId, Message, RingCrypto, RingSigner, Signed, Signer, verify_receipt,
};

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

/// The authority: an Ed25519 key (its public half as `authority.pub`) that
/// signs registry records.
#[derive(Debug)]
pub struct Authority {
    signer: RingSigner,
    pub key_path: PathBuf,
}

impl Authority {
    pub fn new(dir: &Path, seed: u8) -> Authority {
        let signer = RingSigner::from_seed(&[seed; 32]).unwrap();
        let key_path = dir.join(format!("authority-{seed}.pub"));
        std::fs::write(
            &key_path,
            mctc_service::keys::public_key_pem(&signer.public_key()),
        )
        .unwrap();
        Authority { signer, key_path }
    }

    /// A signed registry record for `device` vouching for its AK.
    pub fn registry(&self, device: &Device, version: u64, status: DeviceStatus) -> Vec<u8> {
        self.registry_for(&device.id, &device.identity, version, status)
    }

    pub fn registry_for(
        &self,
        id: &DeviceId,
        identity: &Identity,
        version: u64,
        status: DeviceStatus,
    ) -> Vec<u8> {
        let record = RegistryRecord {
            v: Version::CURRENT,
            sub: id.clone(),
            class: Token("pos"),
            ak_public: Bstr(&identity.ak_public),
            ak_name: Bstr(&identity.ak_name),
            ek_sha256: Bytes(sha256(&identity.ek_public)),
            status,
            version,
            iat: 1_700_000_000,
        };
        let mut buf = [0u8; 2048];
        record
            .sign(&self.signer, &RingCrypto, &mut buf)
            .unwrap()
            .to_vec()
    }
}

/// A device: its own swtpm and TPM worker, and the writing end of its chain.
#[derive(Debug)]
pub struct Device {
    pub id: DeviceId,
    pub identity: Identity,
    pub tpm: Tpm,
    pub head: ChainHead,
    /// Every record written, by seq.
    pub records: Vec<Vec<u8>>,
    mono_ms: u64,
    _swtpm: Swtpm,
    _dir: tempfile::TempDir,
}

/// The PCRs checkpoint quotes cover.
pub fn checkpoint_selection() -> PcrSelection {
    PcrSelection::sha256(&[0, 1, 2, 3, 4, 5, 6, 7]).unwrap()
}

/// A quote's attest and signature.
#[derive(Debug)]
pub struct Quote {
    pub attest: Vec<u8>,
    pub signature: Vec<u8>,
}

impl Device {
    pub async fn new(id: &str) -> Device {
        let swtpm = Swtpm::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let tpm = Tpm::open(TpmConfig {
            tcti: swtpm.tcti(),
            allow_software_tpm: true,
            ..TpmConfig::new(dir.path())
        })
        .await
        .unwrap();
        let identity = tpm.identity().await.unwrap();
        let id = DeviceId::new(id).unwrap();
        Device {
            head: ChainHead::genesis(id.clone()),
            id,
            identity,
            tpm,
            records: Vec::new(),
            mono_ms: 1_000,
            _swtpm: swtpm,
            _dir: dir,
        }
    }

    fn stamp(&mut self) -> Stamp {
        self.mono_ms += 7;
        Stamp {
            boot: BootCounters {
                reset: 1,
                restart: 0,
            },
            mono_ms: self.mono_ms,
            wall_ms: Some(1_700_000_000_000 + self.mono_ms),
        }
    }

    /// Appends `body` and returns the record's encoding.
    pub fn append(&mut self, body: Body<'_>) -> Vec<u8> {
        let stamp = self.stamp();
        self.append_stamped(stamp, body)
    }

    /// Appends `body` with an explicit stamp.
    pub fn append_stamped(&mut self, stamp: Stamp, body: Body<'_>) -> Vec<u8> {
        let mut buf = [0u8; 2048];
        let appended = self
            .head
            .append(&RingCrypto, stamp, body, &mut buf)
            .unwrap();
        let bytes = appended.bytes.to_vec();
        self.records.push(bytes.clone());
        bytes
    }

    /// Appends a permitted decision.
    pub fn decision(&mut self, n: u64) -> Vec<u8> {
        let reference = format!("ref-{n}");
        self.append(Body::Decision(Decision {
            op: Token("capture"),
            amount: Some(100 + n),
            currency: None,
            reference: Some(Text(&reference)),
            verdict: VerdictCode::Permit,
            deny: None,
            cti: Some(Bytes([7; 16])),
        }))
    }

    /// A quote by this device's AK with `qualifying_data`.
    pub async fn quote(&self, qualifying_data: [u8; 32]) -> Quote {
        let evidence = self
            .tpm
            .quote(qualifying_data.to_vec(), checkpoint_selection())
            .await
            .unwrap();
        Quote {
            attest: evidence.attest,
            signature: evidence.signature,
        }
    }

    /// The checkpoint qualifying data of the current head.
    pub fn head_qualifying_data(&self) -> (u64, [u8; 32]) {
        self.head.checkpoint_qualifying_data(&RingCrypto).unwrap()
    }

    /// Appends a genuine checkpoint of the current head.
    pub async fn checkpoint(&mut self) -> Vec<u8> {
        let (seq, qualifying) = self.head_qualifying_data();
        let quote = self.quote(qualifying).await;
        self.checkpoint_with(seq, *self.head.head(), &quote)
    }

    /// Appends a checkpoint record with the given commitment and quote
    /// (which need not match: for tampering tests).
    pub fn checkpoint_with(&mut self, seq: u64, head: [u8; 32], quote: &Quote) -> Vec<u8> {
        let body = Checkpoint {
            seq,
            head: Bytes(head),
            attest: Bstr(&quote.attest),
            signature: Bstr(&quote.signature),
        };
        self.append(Body::Checkpoint(body))
    }

    /// Writes `n` decisions with a checkpoint after every `every` records.
    pub async fn write(&mut self, n: usize, every: usize) {
        for i in 0..n {
            if every > 0 && (self.records.len() + 1) % every == 0 {
                self.checkpoint().await;
            } else {
                self.decision(i as u64);
            }
        }
    }
}

/// A lineage batch of `records` for `device`.
pub fn batch(device: &DeviceId, records: &[Vec<u8>]) -> Vec<u8> {
    let mut list = List::new();
    for r in records {
        list.push(Bstr(r.as_slice())).unwrap();
    }
    let batch = LineageBatch {
        v: Version::CURRENT,
        device: device.clone(),
        records: list,
    };
    let mut buf = vec![0u8; 70_000];
    batch.encode(&mut buf).unwrap().to_vec()
}

// --- An independent writer of the bundle format (collector/README.md). ---

fn cbor_head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    match arg {
        0..=23 => out.push(m | arg as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, arg as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(arg as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(arg as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&arg.to_be_bytes());
        }
    }
}

fn cbor_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    cbor_head(out, 2, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The bundle header (agent/README.md, "Bundle format").
pub fn bundle_header(
    device: &str,
    from_seq: u64,
    count: u64,
    head: &[u8; 32],
    registry: &[u8],
    ak_public: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    cbor_head(&mut out, 5, 7);
    cbor_head(&mut out, 0, 0);
    cbor_head(&mut out, 0, 1);
    cbor_head(&mut out, 0, 1);
    cbor_head(&mut out, 3, device.len() as u64);
    out.extend_from_slice(device.as_bytes());
    cbor_head(&mut out, 0, 2);
    cbor_head(&mut out, 0, from_seq);
    cbor_head(&mut out, 0, 3);
    cbor_head(&mut out, 0, count);
    cbor_head(&mut out, 0, 4);
    cbor_bytes(&mut out, head);
    cbor_head(&mut out, 0, 5);
    cbor_bytes(&mut out, registry);
    cbor_head(&mut out, 0, 6);
    cbor_bytes(&mut out, ak_public);
    out
}

/// One record item.
pub fn bundle_record(record: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    cbor_bytes(&mut out, record);
    out
}

/// A whole bundle, and the byte range of each record item in it.
#[derive(Debug)]
pub struct BundleBytes {
    pub bytes: Vec<u8>,
    /// (seq, start, end) of each record item.
    pub records: Vec<(u64, usize, usize)>,
}

/// A bundle of `records` (from `from_seq`) whose header names `head` and
/// `ak_public`.
pub fn bundle_with(
    device: &DeviceId,
    registry: &[u8],
    ak_public: &[u8],
    from_seq: u64,
    head: &[u8; 32],
    records: &[Vec<u8>],
) -> BundleBytes {
    let mut bytes = bundle_header(
        device.as_str(),
        from_seq,
        records.len() as u64,
        head,
        registry,
        ak_public,
    );
    let mut ranges = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let start = bytes.len();
        bytes.extend_from_slice(&bundle_record(r));
        ranges.push((from_seq + i as u64, start, bytes.len()));
    }
    BundleBytes {
        bytes,
        records: ranges,
    }
}

/// The bundle the agent would export: the device's records from
/// `from_seq`, headed by the hash of the last one.
pub fn bundle(device: &Device, registry: &[u8], from_seq: u64) -> BundleBytes {
    let records = &device.records[from_seq as usize..];
    let head = mctc_shim::lineage::record_hash(&RingCrypto, records.last().unwrap());
    bundle_with(
        &device.id,
        registry,
        &device.identity.ak_public,
        from_seq,
        &head,
        records,
    )
}

// --- MQTT clients and the collector process. ---

/// The workspace's one MQTT test client.
pub use crate::mqtt::Client;

/// A running collector with its private config and database.
#[derive(Debug)]
pub struct Collector {
    pub proc: Proc,
    pub db: PathBuf,
    pub config: PathBuf,
    pub dir: tempfile::TempDir,
}

/// The seed of every test collector's receipt key.
pub const RECEIPT_SEED: [u8; 32] = [0x5a; 32];

/// What a device trusts receipts with.
pub fn receipt_key() -> CollectorKey {
    CollectorKey::new(
        &RingCrypto,
        RingSigner::from_seed(&RECEIPT_SEED).unwrap().public_key(),
    )
}

/// Writes the receipt key (PKCS#8 v1 PEM, 0600) into `dir`; returns its path.
pub fn write_receipt_key(dir: &Path) -> PathBuf {
    // RFC 8410 PKCS#8 v1 of an Ed25519 seed: fixed prefix + the seed.
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&RECEIPT_SEED);
    let path = dir.join("receipt.key");
    mctc_service::files::write_secret(
        &path,
        mctc_service::keys::pem_encode("PRIVATE KEY", &der).as_bytes(),
    )
    .unwrap();
    std::fs::write(
        dir.join("receipt.pub"),
        mctc_service::keys::public_key_pem(receipt_key().public()),
    )
    .unwrap();
    path
}

/// An ack as the tests look at it: a receipt (verified with the test
/// receipt key) or, while the collector holds nothing, the unsigned ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub through_seq: Option<u64>,
    pub checkpoint: Option<u64>,
    pub anomaly: Option<AckAnomaly>,
    pub at_seq: Option<u64>,
    pub signed: bool,
}

/// Decodes an ack published on `topic`.
pub fn decode_ack(topic: &str, payload: &[u8]) -> Ack {
    let (_, device) = mctc_shim::topics::parse(topic).unwrap();
    if payload.first() == Some(&0xd2) {
        let v = verify_receipt(payload, &[receipt_key()], &RingCrypto, &device).unwrap();
        let r = v.receipt();
        Ack {
            through_seq: Some(r.seq),
            checkpoint: r.checkpoint,
            anomaly: r.anomaly,
            at_seq: r.at_seq,
            signed: true,
        }
    } else {
        let a = LineageAck::decode(payload).unwrap();
        assert_eq!(a.through_seq, None, "an unsigned ack never claims records");
        Ack {
            through_seq: a.through_seq,
            checkpoint: None,
            anomaly: a.anomaly,
            at_seq: a.at_seq,
            signed: false,
        }
    }
}

/// Writes a collector config for `broker` trusting `authority_keys`.
pub fn collector_config(
    broker: &Broker,
    dir: &Path,
    authority_keys: &[&Path],
    extra_ingest: &str,
) -> PathBuf {
    let certs = broker.identity("mctc-collector").unwrap();
    let keys: Vec<String> = authority_keys
        .iter()
        .map(|k| format!("{:?}", k.display().to_string()))
        .collect();
    let config = format!(
        "[broker]\nurl = {url:?}\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\nkeep_alive_secs = 5\n\
         [authority]\npublic_keys = [{keys}]\n\
         [store]\npath = {db:?}\n\
         [receipts]\nkey = {receipt:?}\n\
         [ingest]\nclient_id = {client:?}\n{extra_ingest}\n",
        receipt = write_receipt_key(dir).display().to_string(),
        url = broker.url(),
        ca = certs.ca.display().to_string(),
        cert = certs.cert.display().to_string(),
        key = certs.key.display().to_string(),
        keys = keys.join(", "),
        db = dir.join("collector.db").display().to_string(),
        client = format!("mctc-collector-test-{}", std::process::id()),
    );
    let path = dir.join("collector.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// `mctc-collector run` with the ingest core's debug lines in the log: the
/// tests wait on them (an ignored registry record, a rationed ack) where
/// nothing else is observable.
fn spawn_collector(config: &Path, log: &Path) -> Proc {
    let mut command = std::process::Command::new(crate::bin_path("mctc-collector").unwrap());
    command
        .args(["run", "--config", config.to_str().unwrap()])
        .env("MCTC_LOG", "info,mctc_collector::ingest=debug");
    Proc::spawn_command("mctc-collector", command, log).unwrap()
}

impl Collector {
    /// Starts `mctc-collector run` (gap grace 300 ms unless `extra_ingest`
    /// says otherwise).
    pub fn start(broker: &Broker, authority_keys: &[&Path], extra_ingest: &str) -> Collector {
        let dir = tempfile::tempdir().unwrap();
        let extra = if extra_ingest.contains("gap_grace_ms") {
            extra_ingest.to_owned()
        } else {
            format!("gap_grace_ms = 300\n{extra_ingest}")
        };
        let config = collector_config(broker, dir.path(), authority_keys, &extra);
        let proc = spawn_collector(&config, &dir.path().join("collector.log"));
        Collector {
            proc,
            db: dir.path().join("collector.db"),
            config,
            dir,
        }
    }

    /// Starts it again on the same config and database.
    pub fn restart(&mut self) {
        self.proc.kill();
        self.proc = spawn_collector(&self.config, &self.dir.path().join("collector.log"));
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        assert!(
            crate::wait_until(timeout, || self.proc.log().contains(needle)).is_some(),
            "collector log never showed {needle:?}:\n{}",
            self.proc.log()
        );
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(&self.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap()
    }

    /// (seq, bytes) of every stored record of `device`, ascending.
    pub fn records(&self, device: &DeviceId) -> Vec<(u64, Vec<u8>)> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT seq, bytes FROM records WHERE device = ?1 ORDER BY seq")
            .unwrap();
        stmt.query_map([device.as_str()], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    /// (kind, seq, count) of every anomaly of `device`.
    pub fn anomalies(&self, device: &DeviceId) -> Vec<(String, Option<u64>, u64)> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT kind, seq_key, count FROM anomalies WHERE device = ?1 ORDER BY id")
            .unwrap();
        stmt.query_map([device.as_str()], |r| {
            let seq: i64 = r.get(1)?;
            Ok((
                r.get::<_, String>(0)?,
                (seq >= 0).then_some(seq as u64),
                r.get::<_, i64>(2)? as u64,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    /// Number of checkpoints stored for `device`.
    pub fn checkpoints(&self, device: &DeviceId) -> u64 {
        self.db()
            .query_row(
                "SELECT count(*) FROM checkpoints WHERE device = ?1",
                [device.as_str()],
                |r| r.get::<_, i64>(0),
            )
            .unwrap() as u64
    }
}

/// Overwrites the root pages of `table` and its indexes in the closed
/// SQLite database at `path` with junk: a real corrupt file whose schema
/// still reads, so it opens and fails only where the table is used.
pub fn corrupt_table(path: &Path, table: &str) {
    let conn = rusqlite::Connection::open(path).expect("open the database to corrupt");
    let roots: Vec<i64> = conn
        .prepare("SELECT rootpage FROM sqlite_master WHERE tbl_name = ?1")
        .and_then(|mut stmt| {
            stmt.query_map([table], |r| r.get(0))?
                .collect::<Result<_, _>>()
        })
        .expect("root pages");
    let size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .expect("page size");
    let size = usize::try_from(size).expect("page size fits");
    // The last connection closing checkpoints the WAL into the file.
    drop(conn);
    let mut bytes = std::fs::read(path).expect("read the database");
    for root in roots {
        let at = (usize::try_from(root).expect("page number fits") - 1) * size;
        bytes[at..at + size].fill(0xA5);
    }
    std::fs::write(path, bytes).expect("write the corrupted database");
}
