//! The dashboard in a real browser: denied flows generated in the lab must
//! show up, with their process names and hostnames, in the page's flow
//! table and chart as headless Chromium renders it (Debian's `chromium`,
//! installed by `cargo xtask test`); and a gateway's 10,000 rules and
//! hostnames page, filter and sort on the server with the page responsive.

#![allow(clippy::too_many_lines, reason = "a test reads as one scenario")]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use sdm_tests::{
    gateway::{self, sa, wait_for, DB, DENY_MS, OTHER},
    lab::{result, Lab, AGENT_LISTEN},
};
use serde_json::Value;

mod cdp;
mod scale;

fn new_lab() -> Lab {
    Lab::new(env!("CARGO_BIN_EXE_lab-probe"))
}

/// Chromium, which the test needs and does not skip without.
fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("chromium is not installed: `cargo xtask test` installs Debian's chromium")
        })
}

/// Headless Chromium with the flags every test here uses, its profile in
/// `profile` and `HOME` at `home`, in the network namespace `netns` if one
/// is given (through nsenter --net: only the network namespace, so /sys and
/// /dev stay as they are; ip netns exec would remount /sys).
fn headless_chromium(netns: Option<&Path>, profile: &Path, home: &Path) -> Command {
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg(chromium());
            c
        }
        None => Command::new(chromium()),
    };
    command
        .args([
            "--headless",
            // Root in a test VM: Chromium's sandbox needs user namespaces
            // it may not get; the page is the test's own.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--window-size=1400,1800",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .env("HOME", home);
    command
}

/// Loads `url` in headless Chromium inside the lab's host namespace, lets
/// its scripts run (fetches, a few refreshes) and returns the DOM.
fn render(lab: &Lab, url: &str) -> String {
    let profile = lab.dir.path().join("chromium-profile");
    let out = headless_chromium(Some(&lab.host.path()), &profile, lab.dir.path())
        .arg("--virtual-time-budget=8000")
        .arg("--dump-dom")
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("run chromium: {e}"));
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        dom
    );
    dom
}

/// The start tags named `tag` in `html`, as attribute maps (the DOM that
/// Chromium serialises: double-quoted attributes, `&quot;` escaped).
fn tags(html: &str, tag: &str) -> Vec<HashMap<String, String>> {
    let open = format!("<{tag}");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        if !rest.starts_with([' ', '>', '/']) {
            continue;
        }
        let end = rest.find('>').unwrap_or(rest.len());
        out.push(attributes(&rest[..end]));
        rest = &rest[end..];
    }
    out
}

fn attributes(s: &str) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        let name_end = rest
            .find(|c: char| c == '=' || c.is_whitespace() || c == '/')
            .unwrap_or(rest.len());
        let name = rest[..name_end].to_string();
        rest = &rest[name_end..];
        if let Some(r) = rest.strip_prefix("=\"") {
            let end = r.find('"').unwrap_or(r.len());
            let value = r[..end]
                .replace("&quot;", "\"")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&");
            map.insert(name, value);
            rest = &r[(end + 1).min(r.len())..];
        } else {
            if !name.is_empty() {
                map.insert(name, String::new());
            }
            rest = &rest[1.min(rest.len())..];
        }
        rest = rest.trim_start();
    }
    map
}

/// The page's text: everything outside `<...>`, so attribute values are
/// not part of it (the serialised DOM escapes `<` and `>` in text).
fn text_content(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

fn has_class(t: &HashMap<String, String>, class: &str) -> bool {
    t.get("class")
        .is_some_and(|c| c.split_whitespace().any(|x| x == class))
}

#[test]
fn dashboard_in_chromium_shows_denied_flows() {
    let mut lab = new_lab();
    gateway::start(&mut lab, "enforce", "");
    let db = lab.net_ip(DB).to_string();
    let other = lab.net_ip(OTHER).to_string();

    // Two denied flows: one to a resolved hostname, one to a bare address.
    let mut pids = Vec::new();
    for (ip, port) in [(lab.net_ip(DB), 2222), (lab.net_ip(OTHER), 7777)] {
        let v = lab.probe(&["tcp", &sa(ip, port).to_string(), &DENY_MS.to_string()]);
        assert_eq!(result(&v), "eperm", "{v}");
        pids.push(
            v["pid"]
                .as_u64()
                .expect("the probe prints its pid")
                .to_string(),
        );
    }
    wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        let v: Value = serde_json::from_str(&lab.http_get("/api/flows?since=1h")).ok()?;
        let n = v["flows"]
            .as_array()?
            .iter()
            .filter(|f| f["comm"] == "lab-probe")
            .count();
        (n >= 2).then_some(())
    })
    .unwrap_or_else(|| panic!("the denied flows never reached /api/flows"));

    let dom = render(&lab, &format!("http://{AGENT_LISTEN}/"));
    let body = tags(&dom, "body");
    assert!(
        body.first()
            .is_some_and(|b| b.contains_key("data-refreshed")),
        "the page never finished a refresh (no body[data-refreshed]):\n{dom}"
    );
    let mode = tags(&dom, "span")
        .into_iter()
        .find(|t| t.get("id").is_some_and(|i| i == "mode"))
        .unwrap_or_else(|| panic!("no #mode on the page:\n{dom}"));
    assert_eq!(mode.get("data-mode").map(String::as_str), Some("enforce"));

    // The flow table: rows with the process and the hostname.
    let rows: Vec<_> = tags(&dom, "tr")
        .into_iter()
        .filter(|t| has_class(t, "flow"))
        .collect();
    let row = |remote: &str, port: &str| {
        rows.iter()
            .find(|r| {
                r.get("data-remote").is_some_and(|v| v == remote)
                    && r.get("data-port").is_some_and(|v| v == port)
            })
            .unwrap_or_else(|| panic!("no flow row for {remote}:{port} in {rows:?}\n{dom}"))
    };
    let r = row(&db, "2222");
    assert_eq!(r["data-comm"], "lab-probe", "{r:?}");
    assert_eq!(r["data-hostname"], "db.lab.test", "{r:?}");
    assert_eq!(r["data-verdict"], "dropped", "{r:?}");
    assert_eq!(r["data-pid"], pids[0], "{r:?}");
    let r = row(&other, "7777");
    assert_eq!(r["data-comm"], "lab-probe", "{r:?}");
    assert_eq!(r["data-pid"], pids[1], "{r:?}");
    // Text outside the tags: the same strings are in data-* attributes,
    // which a page that stopped showing them would still carry.
    let text = text_content(&dom);
    assert!(
        text.contains("db.lab.test") && text.contains("lab-probe"),
        "the names are shown as text too:\n{text}"
    );

    // The chart marks the flows with their process.
    let marks: Vec<_> = tags(&dom, "circle")
        .into_iter()
        .filter(|c| c.get("data-comm").is_some_and(|v| v == "lab-probe"))
        .collect();
    assert!(
        marks
            .iter()
            .any(|c| c.get("data-hostname").is_some_and(|h| h == "db.lab.test")),
        "no chart mark for the db.lab.test flow: {marks:?}\n{dom}"
    );
    assert!(
        marks
            .iter()
            .any(|c| c.get("data-remote").is_some_and(|h| *h == other)),
        "no chart mark for {other}: {marks:?}"
    );
    // Marks sit on or above the zero line, never below it, where they
    // would read as negative counts.
    let zero = zero_line(&dom);
    for m in &marks {
        let (cy, r) = (num_attr(m, "cy"), num_attr(m, "r"));
        assert!(
            cy + r <= zero,
            "a flow's mark reaches below the zero line (y {zero}): {m:?}"
        );
    }
}

fn num_attr(t: &HashMap<String, String>, name: &str) -> f64 {
    t.get(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {name} in {t:?}"))
}

/// The chart's zero line: the lowest of its horizontal grid lines (SVG's
/// y grows downwards).
fn zero_line(dom: &str) -> f64 {
    tags(dom, "line")
        .iter()
        .filter(|l| has_class(l, "grid") && l.get("y1") == l.get("y2"))
        .map(|l| num_attr(l, "y1"))
        .reduce(f64::max)
        .unwrap_or_else(|| panic!("no grid line in the chart:\n{dom}"))
}

/// Replies that arrive on ephemeral ports are one flow each (an ingress
/// flow's port is the local one); the top destinations list them as one
/// entry per remote and service port (the port the replies come from),
/// naming the local ports, not as one `remote:port` destination each.
#[test]
fn dashboard_groups_ingress_replies_by_remote_and_service_port() {
    let mut lab = new_lab();
    // Audit mode: the UDP requests to a port no rule allows go out, and
    // their echoes come back to the probes' ephemeral ports, unasked for
    // by the policy.
    gateway::start(&mut lab, "audit", "");
    let other = lab.net_ip(OTHER);
    let other_s = other.to_string();
    for _ in 0..3 {
        let _ = lab.udp(sa(other, 9001), DENY_MS);
    }
    let replies = wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        let v: Value = serde_json::from_str(&lab.http_get("/api/flows?since=1h")).ok()?;
        let replies: Vec<Value> = v["flows"]
            .as_array()?
            .iter()
            .filter(|f| f["direction"] == "ingress" && f["remote"] == other_s.as_str())
            .cloned()
            .collect();
        (replies.len() >= 3).then_some(replies)
    })
    .unwrap_or_else(|| panic!("no three reply flows from {other} in /api/flows"));
    for f in &replies {
        assert_eq!(f["remote_port"], 9001, "a reply's service port: {f}");
    }
    let mut ports: Vec<u64> = replies.iter().filter_map(|f| f["port"].as_u64()).collect();
    ports.sort_unstable();
    let count: u64 = replies.iter().filter_map(|f| f["count"].as_u64()).sum();

    let dom = render(&lab, &format!("http://{AGENT_LISTEN}/"));
    let top: Vec<_> = tags(&dom, "li")
        .into_iter()
        .filter(|t| t.get("data-host").is_some_and(|h| *h == other_s))
        .collect();
    // One entry for the requests (egress to other:9001/udp), one for the
    // replies.
    assert_eq!(top.len(), 2, "top destinations of {other}: {top:?}\n{dom}");
    let group = top
        .iter()
        .find(|t| t.get("data-direction").is_some_and(|d| d == "ingress"))
        .unwrap_or_else(|| panic!("no ingress entry for {other}: {top:?}"));
    let want_ports: Vec<String> = ports.iter().map(u64::to_string).collect();
    assert_eq!(group["data-ports"], want_ports.join(" "), "{group:?}");
    assert_eq!(group["data-count"], count.to_string(), "{group:?}");
    let text = text_content(&dom);
    assert!(
        text.contains(&format!(
            "← {other}:9001/udp to {} local ports",
            ports.len()
        )),
        "the replies' entry names their service port and local ports:\n{text}"
    );
}

#[test]
fn text_content_leaves_out_attribute_values() {
    let t = text_content(r#"<tr data-comm="hidden"><td>shown</td></tr>"#);
    assert!(t.contains("shown") && !t.contains("hidden"), "{t}");
}

#[test]
fn attribute_parser_reads_chromium_dom() {
    let t = tags(
        r#"<tr class="flow x" data-comm="a &quot;b&quot;" data-port="1"><td></td></tr><track>"#,
        "tr",
    );
    assert_eq!(t.len(), 1, "<track> is not a <tr>");
    assert!(has_class(&t[0], "flow"));
    assert_eq!(t[0]["data-comm"], "a \"b\"");
    assert_eq!(t[0]["data-port"], "1");
}
