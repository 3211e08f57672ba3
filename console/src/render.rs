//! HTML for each view. Everything not a literal goes through
//! [`Html::text`] (escaped) or [`url_part`] (percent-encoded); pages work
//! without JavaScript, and `/static/console.js` only applies the live
//! events to what the page already shows.

use crate::error::PageError;
use crate::html::{Html, url_part};
use crate::live::DeviceLive;
use crate::views::{DeviceView, FleetView, LineageView, RecordView};

/// The frame around every page.
fn page(title: &str, operator: Option<&str>, body: impl FnOnce(&mut Html)) -> String {
    let mut h = Html::new();
    h.raw("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>")
        .text(title)
        .raw(" · mctc console</title><link rel=\"stylesheet\" href=\"/static/console.css\">")
        .raw("<script src=\"/static/console.js\" defer></script></head><body><nav><a href=\"/\">Fleet</a>");
    if let Some(op) = operator {
        h.raw("<span>operator: <b>").text(op).raw("</b></span>");
    }
    h.raw("</nav><h1>").text(title).raw("</h1>");
    body(&mut h);
    h.raw("</body></html>");
    h.finish()
}

/// An error page: the status line and one sentence.
pub fn error_page(e: &PageError) -> String {
    page(&e.status().to_string(), None, |h| {
        h.raw("<p class=\"err\">").text(&e.to_string()).raw("</p>");
    })
}

fn opt<T: std::fmt::Display>(h: &mut Html, v: Option<T>) {
    match v {
        Some(v) => h.show(v),
        None => h.raw("–"),
    };
}

fn gate_cell(h: &mut Html, gate: Option<&DeviceLive>) {
    match gate {
        Some(g) => {
            h.raw("<td class=\"gate\" data-state=\"")
                .text(g.state.name())
                .raw("\">")
                .text(g.state.name())
                .raw("</td><td class=\"gate-reason\">")
                .text(&g.reason);
            if let Some(d) = &g.detail {
                h.raw(" (").text(d).raw(")");
            }
            h.raw("</td>");
        }
        None => {
            h.raw("<td class=\"gate\" data-state=\"unknown\">unknown</td><td class=\"gate-reason\">no status heard</td>");
        }
    }
}

/// The health dashboard.
pub fn fleet(v: &FleetView, operator: Option<&str>) -> String {
    page("Fleet health", operator, |h| {
        let t = &v.totals;
        h.raw("<section id=\"totals\"><h2>Devices by standing</h2><table><tr><th>total</th><th>active</th><th>contained</th><th>revoked</th></tr><tr><td>")
            .show(t.devices).raw("</td><td>").show(t.active).raw("</td><td>").show(t.contained)
            .raw("</td><td>").show(t.revoked).raw("</td></tr></table></section>");
        let g = &v.gates;
        h.raw("<section id=\"gates\"><h2>Gates (live)</h2><table><tr><th>open</th><th>closed</th><th>contained</th><th>revoked</th><th>offline</th><th>no status</th></tr><tr><td>")
            .show(g.open).raw("</td><td>").show(g.closed).raw("</td><td>").show(g.contained)
            .raw("</td><td>").show(g.revoked).raw("</td><td>").show(g.offline).raw("</td><td>")
            .show(g.unknown).raw("</td></tr></table>");
        if !v.close_reasons.is_empty() {
            h.raw("<table><tr><th>close reason</th><th>devices</th></tr>");
            for r in &v.close_reasons {
                h.raw("<tr><td>")
                    .text(&r.reason)
                    .raw("</td><td>")
                    .show(r.count)
                    .raw("</td></tr>");
            }
            h.raw("</table>");
        }
        h.raw("</section><section id=\"broker\"><h2>Broker</h2><p>");
        if !v.broker.configured {
            h.raw("No broker configured: no live gate state.");
        } else {
            h.raw(if v.broker.connected {
                "monitor link: subscribed"
            } else {
                "monitor link: <b>down</b>"
            });
            h.raw("; last fleet heartbeat heard ");
            match v.broker.heartbeat_age_ms {
                Some(ms) => h.show(ms / 1000).raw(" s ago"),
                None => h.raw("never"),
            };
            if v.broker.dropped > 0 {
                h.raw("; dropped messages: ").show(v.broker.dropped);
            }
        }
        h.raw("</p></section><section id=\"silent\"><h2>Silent devices</h2><p>")
            .show(v.silent_count)
            .raw(" device(s) offline or without a status for more than ")
            .show(v.silent_after_secs)
            .raw(" s");
        for id in &v.silent {
            h.raw(" ").link(&format!("/devices/{}", url_part(id)), id);
        }
        h.raw("</p></section><section><h2>Alerts</h2><ul id=\"alerts\">");
        for a in &v.alerts {
            h.raw("<li>").text(&a.device).raw(": ").text(&a.kind);
            if let Some(seq) = a.seq {
                h.raw(" at seq ").show(seq);
            }
            h.raw(" — ").text(&a.detail).raw("</li>");
        }
        h.raw("</ul></section>");
        // The filter form: a plain GET, so it works without JavaScript.
        let f = &v.filter;
        h.raw("<section><h2>Devices</h2><form method=\"get\" action=\"/\">id starts with <input name=\"q\" value=\"")
            .text(f.q.as_deref().unwrap_or(""))
            .raw("\"> standing <input name=\"status\" size=\"9\" value=\"")
            .text(f.status.as_deref().unwrap_or(""))
            .raw("\"> gate <input name=\"gate\" size=\"9\" value=\"")
            .text(f.gate.as_deref().unwrap_or(""))
            .raw("\"> <button>filter</button></form>");
        h.raw("<table id=\"devices\"><tr><th>device</th><th>class</th><th>standing</th><th>gate</th><th>gate reason</th><th>status age</th><th>last attestation</th><th>artifacts</th></tr>");
        for d in &v.devices {
            h.raw("<tr data-device=\"")
                .text(&d.id)
                .raw("\"><td>")
                .link(&format!("/devices/{}", url_part(&d.id)), &d.id)
                .raw("</td><td>")
                .text(&d.class)
                .raw("</td><td>")
                .text(d.status);
            if let Some(r) = &d.reason {
                h.raw(" (").text(r).raw(")");
            }
            h.raw("</td>");
            gate_cell(h, d.gate.as_ref());
            h.raw("<td class=\"age\">");
            match &d.gate {
                Some(g) => h
                    .show(v.generated_ms.saturating_sub(g.status_wall_ms) / 1000)
                    .raw(" s"),
                None => h.raw("–"),
            };
            h.raw("</td><td>");
            opt(h, d.attestation.verdict);
            if let Some(r) = d.attestation.refusal {
                h.raw(" (").text(r).raw(")");
            }
            h.raw("</td><td>")
                .show(d.artifacts_issued)
                .raw("</td></tr>");
        }
        h.raw("</table>");
        if let Some(next) = &v.next {
            let mut href = format!("/?after={}&limit={}", url_part(next), f.limit);
            for (k, val) in [("q", &f.q), ("status", &f.status), ("gate", &f.gate)] {
                if let Some(val) = val {
                    href.push_str(&format!("&{k}={}", url_part(val)));
                }
            }
            h.raw("<p>").link(&href, "next page →").raw("</p>");
        }
        h.raw("</section>");
    })
}

/// A device page.
pub fn device(v: &DeviceView, operator: Option<&str>) -> String {
    page(&format!("Device {}", v.device), operator, |h| {
        let lineage = format!("/devices/{}/lineage", url_part(&v.device));
        h.raw("<table id=\"device\" data-device=\"")
            .text(&v.device)
            .raw("\">");
        h.raw("<tr><th>class</th><td>")
            .text(&v.class)
            .raw("</td></tr>");
        h.raw("<tr><th>standing</th><td>").text(v.status);
        if let Some(r) = &v.reason {
            h.raw(" (").text(r).raw(")");
        }
        h.raw("</td></tr><tr><th>gate now</th>");
        match &v.gate {
            Some(g) => {
                h.raw("<td class=\"gate\" data-state=\"")
                    .text(g.state.name())
                    .raw("\">")
                    .text(g.state.name())
                    .raw(" — ")
                    .text(&g.reason);
                if let Some(d) = &g.detail {
                    h.raw(" (").text(d).raw(")");
                }
                h.raw("</td>");
            }
            None => {
                h.raw("<td class=\"gate\" data-state=\"unknown\">no status heard</td>");
            }
        }
        h.raw("</tr><tr><th>last attestation</th><td>");
        opt(h, v.attestation.verdict);
        if let Some(r) = v.attestation.refusal {
            h.raw(", refusal: ").text(r);
        }
        h.raw(" (decided at ");
        opt(h, v.attestation.attempt_ms);
        h.raw(" ms, last verified quote at ");
        opt(h, v.attestation.verified_ms);
        h.raw(" ms) ")
            .link(&format!("{lineage}?kind=attested"), "attestation history")
            .raw("</td></tr><tr><th>artifacts issued</th><td>")
            .show(v.artifacts_issued)
            .raw("</td></tr><tr><th>controls sent</th><td>")
            .show(v.control_seq)
            .raw(" ")
            .link(
                &format!("{lineage}?kind=control-received"),
                "controls received",
            )
            .raw("</td></tr><tr><th>pinned EK sha256</th><td><code>");
        opt(h, v.pinned_ek_sha256.as_deref());
        h.raw("</code></td></tr>");
        if let Some(e) = &v.enrollment {
            h.raw("<tr><th>EK sha256</th><td><code>")
                .text(&e.ek_sha256)
                .raw("</code></td></tr><tr><th>AK sha256</th><td><code>")
                .text(&e.ak_sha256)
                .raw("</code></td></tr><tr><th>AK name</th><td><code>")
                .text(&e.ak_name)
                .raw("</code></td></tr><tr><th>enrolled</th><td>")
                .show(e.enrolled_ms)
                .raw(" ms</td></tr>");
        } else {
            h.raw("<tr><th>enrollment</th><td>not enrolled</td></tr>");
        }
        h.raw("</table><h2>Last verified PCRs</h2><table>");
        for p in &v.pcrs {
            h.raw("<tr><td>PCR ")
                .show(p.pcr)
                .raw("</td><td><code>")
                .text(&p.value)
                .raw("</code></td></tr>");
        }
        h.raw("</table><h2>Lineage</h2><p>")
            .show(v.lineage.records)
            .raw(" records at the collector; head <code>");
        opt(h, v.lineage.head_sha256.as_deref());
        h.raw("</code> ").link(&lineage, "explore lineage").raw("</p><h2>Anomalies</h2><table><tr><th>kind</th><th>seq</th><th>detail</th><th>count</th><th>evidence sha256</th></tr>");
        for a in &v.anomalies {
            h.raw("<tr><td>").text(a.kind.name()).raw("</td><td>");
            opt(h, a.seq);
            h.raw("</td><td>")
                .text(&a.detail)
                .raw("</td><td>")
                .show(a.count)
                .raw("</td><td><code>")
                .text(&a.evidence_sha256)
                .raw("</code></td></tr>");
        }
        h.raw("</table>");
    })
}

fn record_row(h: &mut Html, device: &str, r: &RecordView) {
    h.raw("<tr id=\"seq-")
        .show(r.seq)
        .raw("\"><td>")
        .show(r.seq)
        .raw("</td><td>")
        .text(r.kind)
        .raw("</td><td>");
    opt(h, r.wall_ms);
    h.raw("</td><td>");
    opt(h, r.verdict);
    if let Some(w) = r.why {
        h.raw(" (").text(w).raw(")");
    }
    h.raw("</td><td>");
    opt(h, r.op.as_deref());
    h.raw("</td><td>");
    opt(h, r.amount);
    if let Some(c) = &r.currency {
        h.raw(" ").text(c);
    }
    h.raw("</td><td>");
    opt(h, r.reference.as_deref());
    h.raw("</td><td><code>");
    opt(h, r.artifact.as_deref());
    h.raw("</code></td><td>");
    opt(h, r.gate.as_deref());
    if let Some(c) = &r.checkpoint {
        h.raw("checkpoint of seq ").show(c.seq);
    }
    h.raw("</td><td>");
    opt(h, r.detail.as_deref());
    h.raw("</td><td><code>")
        .text(&r.hash[..16])
        .raw("…</code></td><td>");
    if r.seq == 0 {
        h.raw("genesis");
    } else {
        // The predecessor by hash: its own page, anchored at its row.
        let prev = r.seq - 1;
        let href = match prev.checked_sub(1) {
            Some(before) => format!(
                "/devices/{}/lineage?after={before}#seq-{prev}",
                url_part(device)
            ),
            None => format!("/devices/{}/lineage#seq-0", url_part(device)),
        };
        h.raw("<a class=\"prev\" href=\"")
            .text(&href)
            .raw("\"><code>")
            .text(&r.prev[..16])
            .raw("…</code></a>");
    }
    h.raw("</td></tr>");
}

/// The lineage explorer.
pub fn lineage(v: &LineageView, operator: Option<&str>) -> String {
    page(&format!("Lineage of {}", v.device), operator, |h| {
        let base = format!("/devices/{}/lineage", url_part(&v.device));
        let f = &v.filter;
        h.raw("<p>")
            .link(&format!("/devices/{}", url_part(&v.device)), "device page")
            .raw(" · ")
            .show(v.records_stored)
            .raw(" records stored</p>");
        h.raw("<form method=\"get\" action=\"")
            .text(&base)
            .raw("\">kind <input name=\"kind\" value=\"")
            .text(f.kind.as_deref().unwrap_or(""))
            .raw("\"> verdict <input name=\"verdict\" value=\"")
            .text(f.verdict.as_deref().unwrap_or(""))
            .raw("\"> op <input name=\"op\" value=\"")
            .text(f.op.as_deref().unwrap_or(""))
            .raw("\"> <button>filter</button></form>");
        h.raw("<table id=\"records\"><tr><th>seq</th><th>kind</th><th>wall ms</th><th>verdict</th><th>op</th><th>amount</th><th>ref</th><th>artifact</th><th>gate</th><th>detail</th><th>hash</th><th>prev</th></tr>");
        for r in &v.records {
            record_row(h, &v.device, r);
        }
        h.raw("</table>");
        if let Some(through) = v.scanned_through {
            h.raw("<p>examined through seq ").show(through).raw("</p>");
        }
        if let Some(next) = v.next {
            let mut href = format!("{base}?after={next}&limit={}", f.limit);
            for (k, val) in [("kind", &f.kind), ("verdict", &f.verdict), ("op", &f.op)] {
                if let Some(val) = val {
                    href.push_str(&format!("&{k}={}", url_part(val)));
                }
            }
            for (k, val) in [("from_ms", f.from_ms), ("to_ms", f.to_ms)] {
                if let Some(val) = val {
                    href.push_str(&format!("&{k}={val}"));
                }
            }
            h.raw("<p>").link(&href, "next page →").raw("</p>");
        }
    })
}
