//! The filters compared with this program: an iptables chain and an
//! nftables set, each inside a client namespace of the benchmark's own.

use super::*;

/// An iptables chain of `n` rules in `ns`, the allowed flow in the last one
/// (every packet walks the whole chain, as a denied one would), then DROP.
pub(super) fn install_iptables(ns: &Netns, dev: &str, n: usize, server: Ipv4Addr) -> Result<()> {
    let mut t = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:SDMB - [0:0]\n",
    );
    t.push_str(&format!("-A OUTPUT -o {dev} -j SDMB\n"));
    for a in filler(n.saturating_sub(1)) {
        t.push_str(&format!(
            "-A SDMB -d {a}/32 -p udp -m udp --dport {ECHO_PORT} -j ACCEPT\n"
        ));
    }
    t.push_str(&format!(
        "-A SDMB -d {server}/32 -p udp -m udp --dport {ECHO_PORT} -j ACCEPT\n-A SDMB -j DROP\nCOMMIT\n"
    ));
    ns.try_exec_input(&["iptables-restore"], &t)?;
    let listed = ns.try_exec(&["iptables", "-S", "SDMB"])?;
    let rules = listed.lines().filter(|l| l.starts_with("-A SDMB")).count();
    if rules != n + 1 {
        bail!("iptables in {}: {rules} rules, expected {}", ns.name, n + 1);
    }
    Ok(())
}

/// Packets that reached the chain's last ACCEPT rule.
pub(super) fn iptables_hits(ns: &Netns) -> Result<u64> {
    let out = ns.try_exec(&["iptables", "-L", "SDMB", "-v", "-x", "-n"])?;
    // Header lines, then one line per rule; the allowed flow is second to last.
    let rules: Vec<&str> = out.lines().skip(2).collect();
    let line = rules
        .len()
        .checked_sub(2)
        .and_then(|i| rules.get(i))
        .context("iptables -L SDMB printed no rules")?;
    line.split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .context("iptables counter")
}

/// One nftables set of `n` (address . port) elements and a rule that
/// accepts what is in it and drops the rest.
pub(super) fn install_nft(ns: &Netns, dev: &str, n: usize, server: Ipv4Addr) -> Result<()> {
    let mut elems: Vec<String> = filler(n.saturating_sub(1))
        .map(|a| format!("{a} . {ECHO_PORT}"))
        .collect();
    elems.push(format!("{server} . {ECHO_PORT}"));
    let t = format!(
        "table ip sdmb {{\n  set allow {{\n    type ipv4_addr . inet_service\n    size {}\n    elements = {{ {} }}\n  }}\n  chain out {{\n    type filter hook output priority filter; policy accept;\n    oifname \"{dev}\" ip protocol udp ip daddr . udp dport @allow counter accept\n    oifname \"{dev}\" drop\n  }}\n}}\n",
        (n + 1).next_power_of_two().max(1024),
        elems.join(", ")
    );
    ns.try_exec_input(&["nft", "-f", "-"], &t)?;
    Ok(())
}

pub(super) fn nft_hits(ns: &Netns) -> Result<u64> {
    let out = ns.try_exec(&["nft", "list", "chain", "ip", "sdmb", "out"])?;
    let line = out
        .lines()
        .find(|l| l.contains("@allow"))
        .context("nft rule not found")?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "packets" {
            return words
                .next()
                .and_then(|p| p.parse().ok())
                .context("nft counter");
        }
    }
    bail!("no counter in {line:?}")
}

/// Addresses that fill an allowlist without ever being sent to.
pub(super) fn filler(n: usize) -> impl Iterator<Item = Ipv4Addr> {
    (0..n as u32).map(|i| Ipv4Addr::from(u32::from_be_bytes([10, 128, 0, 0]) + i))
}
