//! Figure 10's scanner side: the flood of unsolicited SYNs and datagrams
//! to closed ports (`sdm-bench xdp-flood`, a child pinned to one CPU in
//! the scanning namespace), the short scan whose answers are counted, and
//! the counters read around them (CPU time per state, the receiver's
//! SNMP counters).

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use sdm_testkit::shield::{Answers, Replies, SynSender};
use serde_json::json;

/// The closed ports scanned: FIRST_CLOSED and the PORTS after it.
pub const FIRST_CLOSED: u16 = 7000;
const PORTS: u16 = 1000;

/// Destination port and source port of the `i`-th packet of a flood.
fn ports(i: u64) -> (u16, u16) {
    let dst = FIRST_CLOSED + (i % u64::from(PORTS)) as u16;
    let src = 1024 + ((i / u64::from(PORTS)) % 60_000) as u16;
    (dst, src)
}

/// Sends SYNs and UDP datagrams, alternately, from `from` to closed ports
/// of `to` for `secs`: as fast as one CPU can with `rate` 0, else paced to
/// `rate` packets per second. Prints `{"sent", "refused", "secs",
/// "cpu_secs"}` (refused: sends the kernel failed, e.g. a full queue;
/// cpu_secs: this process's CPU time, which holds the softirq work done in
/// its context, i.e. the receiver's handling of what it sent).
pub fn xdp_flood(to: Ipv4Addr, from: Ipv4Addr, secs: f64, rate: f64) -> Result<()> {
    let syns = SynSender::new(from).with_context(|| format!("a raw TCP socket bound to {from}"))?;
    let udp = UdpSocket::bind(SocketAddrV4::new(from, 0))
        .with_context(|| format!("a UDP socket bound to {from}"))?;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let (mut sent, mut refused, mut i) = (0u64, 0u64, 0u64);
    let payload = [0u8; 18];
    while Instant::now() < end {
        for _ in 0..16 {
            let (dport, sport) = ports(i);
            let dst = SocketAddrV4::new(to, dport);
            let ok = if i % 2 == 0 {
                syns.send(sport, dst, i as u32).is_ok()
            } else {
                udp.send_to(&payload, dst).is_ok()
            };
            if ok {
                sent += 1;
            } else {
                refused += 1;
            }
            i += 1;
        }
        if rate > 0.0 {
            // Paced: sleep off any lead over the schedule.
            let due = start.elapsed().as_secs_f64() * rate;
            let lead = (i as f64 - due) / rate;
            if lead > 0.0 {
                std::thread::sleep(Duration::from_secs_f64(lead));
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({ "sent": sent, "refused": refused, "secs": secs, "cpu_secs": own_cpu_secs()? })
    );
    std::io::stdout().flush()?;
    Ok(())
}

/// `count` SYNs and `count` datagrams from `from` to closed ports of `to`,
/// then the RSTs and ICMP unreachables from `to` that reach `ifindex`
/// within `wait`. Runs in the scanner's namespace (the caller's thread is
/// in it).
pub fn scan(
    ifindex: u32,
    from: Ipv4Addr,
    to: Ipv4Addr,
    count: u64,
    wait: Duration,
) -> Result<Answers> {
    let replies =
        Replies::new(ifindex, to).context("an AF_PACKET capture on the scanner's veth")?;
    let syns = SynSender::new(from).with_context(|| format!("a raw TCP socket bound to {from}"))?;
    let udp = UdpSocket::bind(SocketAddrV4::new(from, 0))?;
    let mut answers = Answers::default();
    for i in 0..count {
        let (dport, sport) = ports(i);
        let dst = SocketAddrV4::new(to, dport);
        syns.send(sport, dst, i as u32).context("send a SYN")?;
        udp.send_to(b"scan", dst).context("send a datagram")?;
        // Drained as it comes: the capture's buffer also holds the scan.
        if i % 64 == 63 {
            add(&mut answers, replies.count());
        }
    }
    crate::sys::sleep(wait)?;
    add(&mut answers, replies.count());
    Ok(answers)
}

/// This process's user and system time (getrusage), in seconds.
fn own_cpu_secs() -> Result<f64> {
    // SAFETY: rusage is plain data, written by getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid rusage to write to.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrusage");
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(secs(ru.ru_utime) + secs(ru.ru_stime))
}

/// The pid of `ksoftirqd/<cpu>`, which runs the softirq work a CPU could
/// not finish in the context that raised it.
pub fn ksoftirqd(cpu: usize) -> Result<u32> {
    let want = format!("ksoftirqd/{cpu}");
    for entry in std::fs::read_dir("/proc").context("read /proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim() == want) {
            return Ok(pid);
        }
    }
    bail!("no {want} thread in /proc")
}

fn add(a: &mut Answers, b: Answers) {
    a.rst += b.rst;
    a.unreachable += b.unreachable;
}

/// Ticks of one CPU in /proc/stat spent in softirq.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTicks {
    pub softirq: u64,
}

/// The `cpuN` line of /proc/stat (user nice system idle iowait irq softirq
/// steal ..., in USER_HZ ticks).
pub fn cpu_ticks(cpu: usize) -> Result<CpuTicks> {
    let text = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    parse_cpu_ticks(&text, cpu).with_context(|| format!("no cpu{cpu} line in /proc/stat"))
}

fn parse_cpu_ticks(text: &str, cpu: usize) -> Option<CpuTicks> {
    let name = format!("cpu{cpu}");
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    Some(CpuTicks {
        softirq: *f.get(6)?,
    })
}

/// Seconds per /proc/stat tick.
pub fn tick_secs() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1.0 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// The receiver's `Tcp: OutRsts` and `Udp: NoPorts` (/proc/net/snmp of the
/// calling thread's namespace): the stack's answers to a scan, counted
/// before any route lookup for the answer
/// (<https://github.com/torvalds/linux/blob/v6.12/net/ipv4/tcp_ipv4.c>,
/// tcp_v4_send_reset; __udp4_lib_rcv,
/// <https://github.com/torvalds/linux/blob/v6.12/net/ipv4/udp.c>).
pub fn stack_answers() -> Result<(u64, u64)> {
    // thread-self: /proc/self/net is the thread group leader's namespace.
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp")
        .context("read /proc/thread-self/net/snmp")?;
    let get = |proto: &str, name: &str| {
        snmp(&text, proto, name).with_context(|| format!("no {proto} {name} in /proc/net/snmp"))
    };
    Ok((get("Tcp", "OutRsts")?, get("Udp", "NoPorts")?))
}

/// One counter of /proc/net/snmp: a line of names under `proto`, then a
/// line of values.
fn snmp(text: &str, proto: &str, name: &str) -> Option<u64> {
    let prefix = format!("{proto}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (lines.next()?, lines.next()?);
    let i = names.split_whitespace().position(|f| f == name)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lines_and_snmp_parse() {
        let stat = "cpu  9 9 9 9 9 9 9 9 0 0\ncpu0 1 2 3 100 5 6 7 8 0 0\ncpu1 10 20 30 400 50 60 70 80 0 0\n";
        let t = parse_cpu_ticks(stat, 1).unwrap();
        assert_eq!(t.softirq, 70);
        assert!(parse_cpu_ticks(stat, 2).is_none());
        let snmp_text =
            "Tcp: RtoAlgorithm OutRsts\nTcp: 1 42\nUdp: InDatagrams NoPorts\nUdp: 5 17\n";
        assert_eq!(snmp(snmp_text, "Tcp", "OutRsts"), Some(42));
        assert_eq!(snmp(snmp_text, "Udp", "NoPorts"), Some(17));
    }

    #[test]
    fn floods_cycle_through_the_closed_ports() {
        assert_eq!(ports(0), (FIRST_CLOSED, 1024));
        assert_eq!(ports(u64::from(PORTS)), (FIRST_CLOSED, 1025));
        assert_eq!(ports(u64::from(PORTS) - 1).0, FIRST_CLOSED + PORTS - 1);
    }
}
