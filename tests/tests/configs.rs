//! Every file in configs/ is a working example: the daemons' own parsers
//! accept the TOML examples, and Mosquitto starts with the broker config and
//! its dynamic-security roles (paths pointed at a throw-away PKI). A new
//! file there needs a case here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Mosquitto starts from the shipped broker drop-in under Debian's stock
/// main configuration, with its dynamic-security file (the harness's broker
/// is exactly that, with paths and port replaced), and a service identity
/// can use it.
fn check_broker_config() {
    let broker = mctc_tests::Broker::start().unwrap_or_else(|e| panic!("mosquitto: {e}"));
    let monitor = mctc_tests::fleet::MqttClient::try_connect(
        &broker,
        "mctc-monitor",
        "configs-check",
        &["mctc/v1/fleet/heartbeat"],
    );
    assert!(monitor.is_ok(), "{monitor:?}\n{}", broker.log());
}

#[test]
fn every_file_in_configs_parses() {
    let dir = configs();
    let mut checked = Vec::new();
    for path in files(&dir) {
        let name = path
            .strip_prefix(&dir)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        match name.as_str() {
            "agent.toml" => {
                mctc_agent::config::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            "authority.toml" => {
                mctc_authority::config::Config::load(&path)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            "policy.toml" => {
                mctc_authority::policy::Policy::load(&path)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            "collector.toml" => {
                mctc_collector::config::Config::load(&path)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            "mosquitto/conf.d/mctc.conf" => check_broker_config(),
            // Every broker the harness starts loads it verbatim
            // (tests/tests/broker_smoke.rs checks what it allows); here,
            // that it is the plugin's JSON with the roles the services use.
            "mosquitto/dynamic-security.json" => {
                let json: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                for role in [
                    "mctc-authority",
                    "mctc-collector",
                    "mctc-monitor",
                    "mctc-device",
                ] {
                    assert!(
                        json["roles"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|r| r["rolename"] == role),
                        "{name}: no role {role}"
                    );
                }
            }
            other => panic!("configs/{other} has no check: add one here"),
        }
        checked.push(name);
    }
    assert_eq!(checked.len(), 6, "{checked:?}");
}

/// The harness runs the drop-in as a drop-in: one that repeats what
/// Debian's stock mosquitto.conf already sets (the shipped file once did,
/// with `persistence_location`) stops the broker from starting, with
/// Mosquitto's own message, as it does on an operator's machine.
#[test]
fn a_dropin_repeating_a_stock_setting_stops_the_broker() {
    let clash = mctc_tests::FLEET_DROPIN.replace(
        "autosave_interval 60",
        "autosave_interval 60\npersistence_location /var/lib/mosquitto/",
    );
    assert_ne!(clash, mctc_tests::FLEET_DROPIN);
    let err = mctc_tests::Broker::start_with_dropin(&clash)
        .expect_err("a drop-in repeating persistence_location must not start");
    assert!(
        err.to_string()
            .contains("Duplicate persistence_location value"),
        "{err}"
    );
    // The shipped drop-in sets none of the stock file's single-valued
    // options, whatever Debian puts there.
    let stock = mctc_tests::debian_stock_config().unwrap();
    for line in stock.lines() {
        let Some(key) = line.split_whitespace().next() else {
            continue;
        };
        if key.starts_with('#') {
            continue;
        }
        assert!(
            !mctc_tests::FLEET_DROPIN
                .lines()
                .any(|l| l.split_whitespace().next() == Some(key)),
            "the drop-in repeats `{key}`, which Debian's stock mosquitto.conf sets"
        );
    }
}

#[test]
fn a_bad_value_in_an_example_is_caught() {
    let text = std::fs::read_to_string(configs().join("agent.toml")).unwrap();
    let broken = text.replace("drift_interval_ms = 250", "drift_interval_ms = \"soon\"");
    assert_ne!(text, broken);
    let err = mctc_agent::config::parse(&broken).unwrap_err();
    assert!(err.to_string().contains("drift_interval_ms"), "{err}");
}

/// The `max_packet_size` line of the shipped broker config (exactly one).
fn broker_max_packet() -> usize {
    let text = std::fs::read_to_string(configs().join("mosquitto/conf.d/mctc.conf")).unwrap();
    let values: Vec<usize> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("max_packet_size "))
        .map(|v| v.trim().parse().unwrap())
        .collect();
    assert_eq!(values.len(), 1, "one max_packet_size line: {values:?}");
    values[0]
}

/// The size of an MQTT 3.1.1 PUBLISH at QoS 1 (fixed header with its
/// variable-length remaining length, topic with its length, packet id,
/// payload): what Mosquitto's `max_packet_size` counts.
fn publish_len(topic: usize, payload: usize) -> usize {
    let remaining = 2 + topic + 2 + payload;
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + length_bytes + remaining
}

/// Limits ordered: every mctc message, framed, fits under the shipped
/// broker's `max_packet_size`, and every mctc client accepts packets at
/// least that large. A client below the broker's limit loses its whole
/// session to one large publish (rumqttc drops the connection on an
/// incoming packet above its limit): the collector did, to a device
/// publishing 300 KB on its own lineage topic.
#[test]
fn packet_limits_are_ordered_messages_below_the_broker_below_every_client() {
    use mctc_shim::limits::{
        MAX_BATCH_LEN, MAX_ENROLL_REQUEST_LEN, MAX_EVIDENCE_LEN, MAX_SIGNED_LEN,
        MAX_SMALL_MESSAGE_LEN, MAX_TOPIC_LEN,
    };
    let broker = broker_max_packet();
    assert_eq!(
        broker,
        mctc_service::link::BROKER_MAX_PACKET,
        "mctc.conf and mctc_service::link::BROKER_MAX_PACKET must agree"
    );
    let largest_message = [
        MAX_BATCH_LEN,
        MAX_ENROLL_REQUEST_LEN,
        MAX_EVIDENCE_LEN,
        MAX_SIGNED_LEN,
        MAX_SMALL_MESSAGE_LEN,
    ]
    .into_iter()
    .max()
    .unwrap();
    assert_eq!(
        largest_message, MAX_BATCH_LEN,
        "a lineage batch is the largest"
    );
    let largest_packet = publish_len(MAX_TOPIC_LEN, largest_message);
    assert!(
        largest_packet <= broker,
        "a full lineage batch ({largest_packet} bytes framed) exceeds the broker's {broker}"
    );

    let dir = configs();
    let collector_example = mctc_collector::config::Config::load(&dir.join("collector.toml"))
        .unwrap()
        .ingest
        .max_packet_bytes;
    let authority_example = mctc_authority::config::Config::load(&dir.join("authority.toml"))
        .unwrap()
        .limits
        .max_packet_bytes;
    let clients = [
        (
            "link default",
            mctc_service::link::LinkOptions::new("x").max_packet_bytes,
        ),
        ("agent", mctc_agent::daemon::MAX_PACKET),
        (
            "collector default",
            mctc_collector::config::IngestSettings::default().max_packet_bytes,
        ),
        ("configs/collector.toml", collector_example),
        (
            "authority default",
            mctc_authority::config::Limits::default().max_packet_bytes,
        ),
        ("configs/authority.toml", authority_example),
    ];
    for (client, limit) in clients {
        assert!(
            limit >= broker,
            "{client} accepts packets up to {limit} bytes, below the broker's {broker}"
        );
    }
}

/// A configuration cannot set a client's packet limit below what the
/// shipped broker delivers.
#[test]
fn a_client_packet_limit_below_the_broker_is_refused() {
    let below = mctc_service::link::BROKER_MAX_PACKET - 1;
    let text = std::fs::read_to_string(configs().join("collector.toml")).unwrap();
    let low = text.replace(
        "max_packet_bytes = 1048576",
        &format!("max_packet_bytes = {below}"),
    );
    assert_ne!(text, low);
    let err = mctc_collector::config::Config::parse(&low, Path::new("collector.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_packet_bytes"), "{err}");
    let path = configs().join("authority.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let low = text.replace(
        "max_packet_bytes = 1048576",
        &format!("max_packet_bytes = {below}"),
    );
    assert_ne!(text, low);
    let err = mctc_authority::config::Config::parse(&path, &low)
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_packet_bytes"), "{err}");
}

/// The shipped broker itself, not only its config line: a device's full
/// lineage batch on its longest topic passes, and a packet over
/// `max_packet_size` is refused at the broker (its sender disconnected,
/// nothing delivered), so no mctc client is ever handed one.
#[test]
fn the_shipped_broker_passes_a_full_batch_and_refuses_a_larger_packet() {
    use mctc_shim::limits::{MAX_BATCH_LEN, MAX_DEVICE_ID_LEN};
    use rumqttc::{Event, QoS};

    // The harness's broker is the shipped configuration.
    let broker = mctc_tests::Broker::start().unwrap();
    // The longest device id makes the longest lineage topic.
    let device = "d".repeat(MAX_DEVICE_ID_LEN);
    let topic = format!("mctc/v1/dev/{device}/lineage");
    let collector = mctc_tests::fleet::MqttClient::connect(
        &broker,
        "mctc-collector",
        "limits-collector",
        &["$share/mctc-collector/mctc/v1/dev/+/lineage"],
    );
    let identity = broker.client_identity(&device).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut options = broker.mqtt_options("limits-probe", &identity).unwrap();
        options.set_max_packet_size(
            mctc_service::link::MAX_PACKET_BYTES,
            mctc_service::link::MAX_PACKET_BYTES,
        );
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 16);
        client
            .publish(&topic, QoS::AtLeastOnce, false, vec![0xa5; MAX_BATCH_LEN])
            .await
            .unwrap();
        // Serve the device's session until the collector has the batch.
        let delivered = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if collector.received_on(&topic).len() == 1 {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), eventloop.poll()).await;
            }
        })
        .await;
        assert!(
            delivered.is_ok(),
            "a full batch was not delivered:\n{}",
            broker.log()
        );
        assert_eq!(collector.received_on(&topic)[0].len(), MAX_BATCH_LEN);
        client
            .publish(
                &topic,
                QoS::AtLeastOnce,
                false,
                vec![0x5b; mctc_service::link::BROKER_MAX_PACKET],
            )
            .await
            .unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
                Ok(Ok(Event::Outgoing(_) | Event::Incoming(_))) => {}
                // The broker closed the connection: the deny.
                Ok(Err(_)) => break,
                Err(_) => panic!("the broker neither refused nor closed:\n{}", broker.log()),
            }
        }
    });
    // The broker closed the sender's connection on that packet: it has
    // routed or dropped it. A sentinel sent now reaches the collector after
    // anything routed before it (one broker, one subscriber connection,
    // delivered in order).
    let sentinel =
        mctc_tests::fleet::MqttClient::try_connect_with(&broker, &identity, "limits-sentinel", &[])
            .unwrap();
    sentinel.publish(&topic, b"sentinel", false);
    let in_order = mctc_tests::wait_until(Duration::from_secs(10), || {
        collector.received_on(&topic).len() >= 2
    });
    assert!(in_order.is_some(), "the sentinel did not arrive");
    let received = collector.received_on(&topic);
    assert_eq!(
        received.iter().map(Vec::len).collect::<Vec<_>>(),
        [MAX_BATCH_LEN, b"sentinel".len()],
        "the broker delivered the oversized packet"
    );
}

/// The examples work together as a set (issue 19): a device configured with
/// `agent.toml`, enrolled in the example policy's class `locker`, talks to
/// an authority configured with `authority.toml`. Each disagreement here
/// was a whole fleet refused: an issuer the agent rejects on every
/// artifact, or PCRs the class does not name (every attestation refused as
/// bad evidence).
#[test]
fn the_examples_agree_as_a_set() {
    let agent = mctc_agent::config::load(&configs().join("agent.toml"))
        .unwrap()
        .raw;
    let authority =
        mctc_authority::config::Config::load(&configs().join("authority.toml")).unwrap();
    let policy = mctc_authority::policy::Policy::load(&configs().join("policy.toml")).unwrap();
    assert_eq!(
        agent.authority.issuer, authority.authority_id,
        "agent.toml's issuer is not authority.toml's authority_id: every artifact would be rejected"
    );
    let class = policy
        .class("locker")
        .expect("policy.toml has the class of agent.toml's device (locker)");
    let mut quoted = agent.attestation.pcrs.clone();
    quoted.sort_unstable();
    let mut named = class.pcrs.clone();
    named.sort_unstable();
    assert_eq!(
        quoted, named,
        "agent.toml quotes other PCRs than the locker class names: every attestation would be refused"
    );
    let measured = agent.measured.pcr.expect("agent.toml measures files");
    assert!(
        class.pcrs.contains(&measured),
        "the measured-files PCR {measured} is not attested by the class: a changed file would go unnoticed by the authority"
    );
}
