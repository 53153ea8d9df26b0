//! Figure 10: the XDP shield (`sdm_xdp`) under a flood of unsolicited SYNs
//! and UDP datagrams to closed ports, on a veth between two network
//! namespaces of the benchmark's own.
//!
//! Topology: a receiver namespace R (the gateway: 10.232.240.2 on `xr0`)
//! and a scanner namespace S (10.232.240.1 on `xs0`, and 10.232.250.1 on
//! its loopback). R runs an iperf3 server and a UDP echo server on the
//! advertised port in a cgroup of the benchmark's own with the cgroup programs attached
//! (enforce, one ingress rule: that port from 10.232.240.1). The flood
//! comes from 10.232.250.1, which R routes to a blackhole: the stack
//! builds its RSTs and ICMP errors but they never cross back, so S's CPU
//! does not pay for receiving them. The shield arm attaches `sdm_xdp`
//! natively (veth_xdp_rcv,
//! <https://github.com/torvalds/linux/blob/v6.12/drivers/net/veth.c>) to
//! `xr0` only, from
//! inside R, with the same object's maps (enforce mode, the same ingress
//! rule): it sees that interface's packets and nothing else.
//!
//! On veth the receive path runs on the CPU that sends (veth_xmit hands
//! the packet to netif_rx or to the veth's NAPI, both processed in softirq
//! on the sending CPU, at the local_bh_enable that ends the transmit), so
//! the sender is pinned to one CPU (veth_xmit, same file) and its own CPU time (plus that of the
//! CPU's ksoftirqd, for what was deferred) holds both sides of each packet:
//! per core = packets / those CPU-seconds. The CPU's softirq time from
//! /proc/stat (the receiver alone, but CPU-wide: anything else on that CPU
//! counts too) is given beside it.
//!
//! The allowed flow is UDP request/response to the advertised port (a
//! native XDP program on a veth takes software GSO from its peer,
//! veth_xdp_set, same file, which makes a TCP stream's figure
//! measure segmentation rather than the flood; the stream is measured
//! without a flood to show that). With the shield, veth queues what it
//! receives in a 256-entry ring (veth_xdp_rx) drained by NAPI: a burst of
//! the flood that fills it can drop the allowed flow's packets too (the
//! request/response client then waits out its 200 ms timeout); 10b's
//! detail counts the veth's drops.

mod figures;
mod flood;

pub use flood::xdp_flood;

use std::{
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use aya::programs::{xdp::XdpLinkId, Xdp, XdpMode};
use ipnet::{IpNet, Ipv4Net};
use sdm_agent::{
    kernel::xdp as shield,
    policy::{Direction, Policy, PortRange, Proto, Rule, Target},
};
use sdm_common::{XdpVerdict, PROG_XDP};
use serde_json::Value;

use crate::{
    guards::{Cgroup, Netns},
    report::Figure,
    stats::Rng,
    sys,
    traffic::{self, traffic_cpu, IPERF_PORT},
    verdict::Instance,
    Params,
};

const SCANNER: Ipv4Addr = Ipv4Addr::new(10, 232, 240, 1);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 232, 240, 2);
/// The flood's source, on S's loopback and blackholed in R.
const SPOOFED: Ipv4Addr = Ipv4Addr::new(10, 232, 250, 1);
const SPOOFED_NET: &str = "10.232.250.0/24";
const R_DEV: &str = "xr0";
const S_DEV: &str = "xs0";
/// The paced flood of 10b: this share of one core's no-shield rate.
const PACED_SHARE: f64 = 0.5;
/// The advertised port: UDP echo (10b) and iperf3 (TCP).
const ADVERTISED: u16 = IPERF_PORT;

/// The two namespaces and their veth.
struct Net {
    r: Netns,
    s: Netns,
}

impl Net {
    fn new() -> Result<Self> {
        let r = Netns::try_new("xr")?;
        let s = Netns::try_new("xs")?;
        s.try_ip(&[
            "link", "add", S_DEV, "type", "veth", "peer", "name", R_DEV, "netns", &r.name,
        ])?;
        s.try_ip(&["addr", "add", &format!("{SCANNER}/24"), "dev", S_DEV])?;
        s.try_ip(&["addr", "add", &format!("{SPOOFED}/32"), "dev", "lo"])?;
        s.try_ip(&["link", "set", "lo", "up"])?;
        s.try_ip(&["link", "set", S_DEV, "up"])?;
        r.try_ip(&["addr", "add", &format!("{GATEWAY}/24"), "dev", R_DEV])?;
        r.try_ip(&["link", "set", "lo", "up"])?;
        r.try_ip(&["link", "set", R_DEV, "up"])?;
        r.try_ip(&["route", "add", "blackhole", SPOOFED_NET])?;
        // New namespaces inherit the host's rp_filter, which would drop
        // the flood (its source routes to a blackhole) before the stack.
        r.try_exec(&[
            "sysctl",
            "-qw",
            "net.ipv4.conf.all.rp_filter=0",
            &format!("net.ipv4.conf.{R_DEV}.rp_filter=0"),
        ])?;
        Ok(Self { r, s })
    }
}

/// The receiver's policy: the advertised port open to the scanner's real
/// address (the allowed flow's client).
fn policy() -> Policy {
    Policy {
        rules: vec![Rule {
            name: "bench/advertised".into(),
            direction: Direction::Ingress,
            protos: vec![Proto::Tcp, Proto::Udp],
            ports: vec![PortRange::single(ADVERTISED)],
            targets: vec![Target::Cidr(IpNet::V4(
                Ipv4Net::new(SCANNER, 32).expect("a /32"),
            ))],
            required: true,
            roles: vec![],
            origin: "sdm-bench".into(),
        }],
    }
}

fn xdp_prog(inst: &mut Instance) -> Result<&mut Xdp> {
    inst.ebpf
        .program_mut(PROG_XDP)
        .context("sdm_xdp is not in the object")?
        .try_into()
        .context("sdm_xdp is not an XDP program")
}

/// Attaches `sdm_xdp` to R's veth, natively, from inside R.
fn shield_on(inst: &mut Instance, net: &Net) -> Result<XdpLinkId> {
    let _inside = net.r.try_enter()?;
    xdp_prog(inst)?
        .attach(R_DEV, XdpMode::Driver)
        .with_context(|| format!("attach sdm_xdp natively to {R_DEV} in {}", net.r.name))
}

fn shield_off(inst: &mut Instance, id: XdpLinkId) -> Result<()> {
    xdp_prog(inst)?
        .detach(id)
        .context("detach sdm_xdp from the receiver's veth")
}

/// What one flood did.
#[derive(Clone, Copy, Debug)]
struct Flooded {
    sent: u64,
    secs: f64,
    /// CPU time of the flood process and of the CPU's ksoftirqd.
    cpu_secs: f64,
    /// Softirq time of the flood's CPU meanwhile (CPU-wide).
    softirq_secs: f64,
}

impl Flooded {
    fn rate(&self) -> f64 {
        self.sent as f64 / self.secs
    }
}

/// Starts `sdm-bench xdp-flood` in S, pinned to the traffic CPU.
fn start_flood(net: &Net, cgroup: &Path, secs: f64, rate: f64) -> Result<std::process::Child> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["xdp-flood", "--to", &GATEWAY.to_string()])
        .args(["--from", &SPOOFED.to_string()])
        .args(["--secs", &secs.to_string(), "--rate", &rate.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    sys::spawn_in(
        &mut cmd,
        Some(&net.s.path()),
        Some(cgroup),
        Some(traffic_cpu()),
    )
}

/// The flood's (sent, secs, cpu_secs).
fn finish_flood(child: std::process::Child, secs: f64) -> Result<(u64, f64, f64)> {
    let out = sys::finish(child, "xdp flood", Duration::from_secs_f64(secs + 20.0))?;
    let v: Value =
        serde_json::from_str(out.trim()).with_context(|| format!("xdp-flood printed {out:?}"))?;
    let sent = v["sent"].as_u64().context("no sent")?;
    let took = v["secs"].as_f64().context("no secs")?;
    let cpu = v["cpu_secs"].as_f64().context("no cpu_secs")?;
    if sent == 0 {
        bail!("the flood sent nothing: {out}");
    }
    Ok((sent, took, cpu))
}

/// A flood as fast as one CPU goes, with the CPU time it took.
fn flood_flat_out(net: &Net, cgroup: &Path, secs: f64) -> Result<Flooded> {
    let cpu = traffic_cpu();
    let ksoftirqd = flood::ksoftirqd(cpu)?;
    let before = flood::cpu_ticks(cpu)?;
    let k0 = crate::agent::cpu_ticks(ksoftirqd)?;
    let child = start_flood(net, cgroup, secs, 0.0)?;
    let (sent, took, own) = finish_flood(child, secs)?;
    let k1 = crate::agent::cpu_ticks(ksoftirqd)?;
    let after = flood::cpu_ticks(cpu)?;
    let tick = flood::tick_secs();
    Ok(Flooded {
        sent,
        secs: took,
        cpu_secs: own + k1.saturating_sub(k0) as f64 * tick,
        softirq_secs: after.softirq.saturating_sub(before.softirq) as f64 * tick,
    })
}

/// The scanner's veth's `tx_dropped`: what veth_xmit could not queue at
/// the receiver (its backlog, or with XDP its ring, full).
fn tx_dropped(net: &Net) -> Result<u64> {
    let out = net.s.try_ip(&["-s", "-j", "link", "show", S_DEV])?;
    let v: Value =
        serde_json::from_str(out.trim()).with_context(|| format!("ip -j link printed {out:?}"))?;
    v[0]["stats64"]["tx"]["dropped"]
        .as_u64()
        .with_context(|| format!("no stats64.tx.dropped in {out}"))
}

/// UDP request/response transactions per second to the advertised port,
/// from the scanner's real address, pinned to the traffic CPU.
fn udp_rr(net: &Net, cgroup: &Path, secs: f64) -> Result<f64> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["udp-rr", "--to", &format!("{GATEWAY}:{ADVERTISED}")])
        .args(["--secs", &secs.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = sys::spawn_in(
        &mut cmd,
        Some(&net.s.path()),
        Some(cgroup),
        Some(traffic_cpu()),
    )?;
    let out = sys::finish(
        child,
        "udp request/response",
        Duration::from_secs_f64(secs + 20.0),
    )?;
    let v: Value =
        serde_json::from_str(out.trim()).with_context(|| format!("udp-rr printed {out:?}"))?;
    let n = v["transactions"].as_f64().context("no transactions")?;
    let took = v["secs"].as_f64().context("no secs")?;
    if n <= 0.0 {
        bail!("no transaction with the advertised port: {out}");
    }
    Ok(n / took)
}

/// The UDP echo server on the advertised port, in R and `cgroup`.
fn start_echo(net: &Net, cgroup: &Path) -> Result<sys::Proc> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["udp-echo", "--max-secs", "3600"])
        .args(["--bind", &format!("0.0.0.0:{ADVERTISED}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut child = sys::spawn_in(
        &mut cmd,
        Some(&net.r.path()),
        Some(cgroup),
        Some(traffic_cpu()),
    )?;
    let rx = sys::line_channel(&mut child)?;
    let proc = sys::Proc::new(child, "udp echo server");
    let line = sys::next_line(&rx, "udp echo server", Duration::from_secs(10))?;
    if line.trim() != "ready" {
        bail!("udp echo server: unexpected output {line:?}");
    }
    Ok(proc)
}

/// The receiver's answers counted by its stack, and the shield's drops.
fn receiver_counts(net: &Net, inst: &Instance) -> Result<(u64, u64)> {
    let (rsts, noports) = {
        let _inside = net.r.try_enter()?;
        flood::stack_answers()?
    };
    let drops = shield::counters(&inst.pins.layout)
        .context("the shield's counters are not pinned")?
        .into_iter()
        .filter(|(v, _)| matches!(v, XdpVerdict::UnsolicitedTcp | XdpVerdict::ClosedUdp))
        .map(|(_, n)| n)
        .sum();
    Ok((rsts + noports, drops))
}

/// Samples of one arm (shield on or off), one per round.
#[derive(Default)]
struct Arm {
    per_core: Vec<f64>,
    softirq: Vec<f64>,
    one_cpu: Vec<f64>,
    quiet_rr: Vec<f64>,
    flood_rr: Vec<f64>,
    stream_gbps: Vec<f64>,
    paced_rate: Vec<f64>,
    /// Packets the scanner's veth could not hand over during 10b's floods.
    veth_drops: u64,
    rst: u64,
    unreachable: u64,
}

struct Rig<'a> {
    p: &'a Params,
    net: Net,
    inst: Instance,
    client: &'a Cgroup,
    rate: f64,
}

impl Rig<'_> {
    /// 10a: a flat-out flood, checked against what the receiver counted.
    fn flat_out(&mut self, shielded: bool, arm: &mut Arm) -> Result<()> {
        let (answers0, drops0) = receiver_counts(&self.net, &self.inst)?;
        let f = flood_flat_out(&self.net, &self.client.path, self.p.xdp_secs)?;
        let (answers1, drops1) = receiver_counts(&self.net, &self.inst)?;
        let (answers, drops) = (answers1 - answers0, drops1 - drops0);
        // Every packet must have met what the arm says: the stack (an RST
        // or a port unreachable each) or the shield's drop.
        let min = f.sent * 95 / 100;
        if shielded && (drops < min || answers > f.sent / 100) {
            bail!(
                "with the shield: {drops} drops and {answers} stack answers for {} sent",
                f.sent
            );
        }
        if !shielded && (answers < min || drops > 0) {
            bail!(
                "without the shield: {answers} stack answers and {drops} drops for {} sent",
                f.sent
            );
        }
        arm.per_core.push(f.sent as f64 / f.cpu_secs);
        if f.softirq_secs > 0.0 {
            arm.softirq.push(f.sent as f64 / f.softirq_secs);
        }
        arm.one_cpu.push(f.rate());
        Ok(())
    }

    /// 10b: the allowed flow alone, then during a paced flood; a TCP
    /// stream without a flood.
    fn allowed_flow(&mut self, arm: &mut Arm) -> Result<()> {
        let rr_secs = f64::from(self.p.tcp_secs);
        arm.quiet_rr
            .push(udp_rr(&self.net, &self.client.path, rr_secs)?);
        let secs = rr_secs + 1.0;
        let drops = tx_dropped(&self.net)?;
        let child = start_flood(&self.net, &self.client.path, secs, self.rate)?;
        sys::sleep(Duration::from_millis(300))?;
        let rr = udp_rr(&self.net, &self.client.path, rr_secs);
        let (sent, took, _) = finish_flood(child, secs)?;
        arm.veth_drops += tx_dropped(&self.net)?.saturating_sub(drops);
        arm.flood_rr.push(rr?);
        arm.paced_rate.push(sent as f64 / took);
        arm.stream_gbps.push(traffic::iperf(
            &self.net.s,
            &self.client.path,
            GATEWAY,
            self.p,
        )?);
        Ok(())
    }

    /// 10c: a scan of closed ports from the scanner's real address.
    fn scan(&mut self, arm: &mut Arm) -> Result<()> {
        let _inside = self.net.s.try_enter()?;
        let ifindex = self.net.s.try_ifindex(S_DEV)?;
        let a = flood::scan(
            ifindex,
            SCANNER,
            GATEWAY,
            self.p.xdp_scan,
            Duration::from_millis(300),
        )?;
        arm.rst += a.rst;
        arm.unreachable += a.unreachable;
        Ok(())
    }

    fn arm(&mut self, shielded: bool, arm: &mut Arm) -> Result<()> {
        let link = if shielded {
            Some(shield_on(&mut self.inst, &self.net)?)
        } else {
            None
        };
        self.flat_out(shielded, arm)?;
        self.allowed_flow(arm)?;
        self.scan(arm)?;
        if let Some(id) = link {
            shield_off(&mut self.inst, id)?;
        }
        Ok(())
    }
}

pub fn run(
    p: &Params,
    rng: &mut Rng,
    parent: &Cgroup,
    figs: &mut Vec<Figure>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let net = Net::new()?;
    let server = parent.try_child("xdpsrv")?;
    let client = parent.try_child("xdpcli")?;
    let mut inst = Instance::new("xd", &policy())?;
    inst.attach(&server.path)?;
    let _iperf = traffic::start_iperf_server(&net.r, Some(&server.path))?;
    let _echo = start_echo(&net, &server.path)?;
    // The benchmark itself stays off the CPU the traffic runs on.
    let _pinned = if traffic_cpu() > 0 {
        Some(sys::pin_self(0)?)
    } else {
        None
    };
    // Calibration (and warm-up): one core's rate without the shield.
    let calib = flood_flat_out(&net, &client.path, p.xdp_secs)?;
    let rate = calib.rate() * PACED_SHARE;
    println!(
        "sdm-bench: [10] one CPU floods and disposes of {:.0} packets/s without the shield; 10b floods at {rate:.0}/s",
        calib.rate()
    );
    let mut rig = Rig {
        p,
        net,
        inst,
        client: &client,
        rate,
    };
    let (mut off, mut on) = (Arm::default(), Arm::default());
    for round in 0..p.xdp_rounds {
        sys::check_interrupted()?;
        let mut order = [false, true];
        rng.shuffle(&mut order);
        for shielded in order {
            let arm = if shielded { &mut on } else { &mut off };
            rig.arm(shielded, arm).with_context(|| {
                format!("{} the shield", if shielded { "with" } else { "without" })
            })?;
        }
        println!(
            "sdm-bench: [10] round {}/{}: per core {:.0} vs {:.0} packets/s, allowed flow during the flood {:.0} vs {:.0} transactions/s (without vs with the shield)",
            round + 1,
            p.xdp_rounds,
            off.per_core[round],
            on.per_core[round],
            off.flood_rr[round],
            on.flood_rr[round],
        );
    }
    figures::figures(p, rate, &off, &on, figs);
    notes.push(format!(
        "Figure 10: the paced flood of 10b is {:.0}% of the {:.0} packets/s one CPU sends and disposes of without the shield (calibrated at the start of the run); the allowed flow, its iperf3 server and the flood share that CPU.",
        PACED_SHARE * 100.0,
        calib.rate()
    ));
    Ok(())
}
