//! Names of the maps and programs, as the kernel sees them: the agent finds,
//! pins and reports them by these.

/// Map names. Kernel object names are at most 15 characters
/// (BPF_OBJ_NAME_LEN is 16), so every name here stays within that.
pub const MAP_CONFIG: &str = "SDM_CONFIG";
pub const MAP_EXACT4: [&str; 2] = ["SDM_EXACT4_0", "SDM_EXACT4_1"];
pub const MAP_EXACT6: [&str; 2] = ["SDM_EXACT6_0", "SDM_EXACT6_1"];
pub const MAP_CIDR4: [&str; 2] = ["SDM_CIDR4_0", "SDM_CIDR4_1"];
pub const MAP_CIDR6: [&str; 2] = ["SDM_CIDR6_0", "SDM_CIDR6_1"];
pub const MAP_RULES: &str = "SDM_RULES";
pub const MAP_RULE_STATS: &str = "SDM_RULE_STATS";
pub const MAP_DENY_STATS: &str = "SDM_DENY_STATS";
pub const MAP_SOCK_STATE: &str = "SDM_SOCK_STATE";
/// Ring buffer of [`crate::DenyEvent`]s.
pub const MAP_EVENTS: &str = "SDM_EVENTS";
/// Per-CPU event counters, indexed by [`crate::EventStat`].
pub const MAP_EVENT_STATS: &str = "SDM_EVENT_STAT";
/// LRU of recently reported flows: rate-limits events per flow.
pub const MAP_EVENT_SEEN: &str = "SDM_EVENT_SEEN";
/// Per-CPU [`crate::EventBudget`]: caps events per CPU per second, whatever the
/// number of flows.
pub const MAP_EVENT_BUDGET: &str = "SDM_EVENT_BUDGT";
/// DNS learning (see `sdm-ebpf/src/dns.rs`): name key -> [`crate::DnsHost`].
pub const MAP_DNS_NAMES: &str = "SDM_DNS_NAMES";
/// The resolvers whose answers are trusted: [`crate::ResolverKey`] -> 1.
pub const MAP_DNS_RESOLVERS: &str = "SDM_DNS_RESOLV";
/// Queries seen on their way out: [`crate::DnsQueryKey`] -> time (ns).
pub const MAP_DNS_PENDING: &str = "SDM_DNS_PEND";
/// Per-CPU parser state and a copy of the answer: [`crate::DnsScratch`].
pub const MAP_DNS_SCRATCH: &str = "SDM_DNS_SCRATCH";
/// Per-CPU answer counters, indexed by [`crate::DnsResult`] (then `DNS_STAT_LEARN_FULL`).
pub const MAP_DNS_STATS: &str = "SDM_DNS_STATS";
/// The DNS answer parser, tail-called from `sdm_dns_in`.
pub const MAP_DNS_PROGS: &str = "SDM_DNS_PROGS";
/// `sdm_dns_in`, tail-called from the ingress program for packets from
/// port 53 it passes.
pub const MAP_DNSIN_PROGS: &str = "SDM_DNSIN_PROGS";
/// `[dns] queries = "policy"`: per-CPU state of the query judge (a
/// [`crate::DnsScratch`] of its own: egress programs may interrupt each other on
/// one CPU, the answer parser's softirq may interrupt both).
pub const MAP_DNSQ_SCRATCH: &str = "SDM_DNSQ_SCRATCH";
/// Per-CPU query verdict counters, indexed by [`crate::DnsQueryVerdict`].
pub const MAP_DNSQ_STATS: &str = "SDM_DNSQ_STATS";
/// The query judge, tail-called from the egress program.
pub const MAP_DNSQ_PROGS: &str = "SDM_DNSQ_PROGS";
/// Addresses learned from answers: address -> [`crate::Learned`].
pub const MAP_LEARNED4: &str = "SDM_LEARNED4";
pub const MAP_LEARNED6: &str = "SDM_LEARNED6";
/// (host id, port, protocol, direction) -> rule, per policy slot.
pub const MAP_HOST_PORTS: [&str; 2] = ["SDM_HOSTPORT_0", "SDM_HOSTPORT_1"];
/// Port ranges (see `sdm-ebpf/src/ranges.rs`), per policy slot: (direction,
/// protocol, address prefix) -> [`crate::PortSet`] in an LPM trie, port 0 in
/// the key.
pub const MAP_RANGE4: [&str; 2] = ["SDM_RANGE4_0", "SDM_RANGE4_1"];
pub const MAP_RANGE6: [&str; 2] = ["SDM_RANGE6_0", "SDM_RANGE6_1"];
/// (port set, port prefix) -> rule, an LPM trie of [`crate::PortSetKey`].
pub const MAP_PORT_SETS: [&str; 2] = ["SDM_PORTSET_0", "SDM_PORTSET_1"];
/// (hostname's host id, protocol, direction; port 0) -> [`crate::PortSet`]:
/// the large ranges of hostname rules, for addresses learned from DNS.
pub const MAP_HOST_RANGES: [&str; 2] = ["SDM_HOSTRNG_0", "SDM_HOSTRNG_1"];
/// Created and used by the agent only: rule id -> rule name, so ids (and
/// with them the counters) survive agent restarts.
pub const MAP_RULE_NAMES: &str = "SDM_RULE_NAMES";
/// Datagram peers: which sockets exchanged allowed UDP or ICMP echo
/// traffic with which remotes, so that replies pass only where they belong.
pub const MAP_PEERS: &str = "SDM_PEERS";
/// The backstop (see `sdm-ebpf/src/backstop.rs`): one [`crate::Backstop`].
pub const MAP_BACKSTOP: &str = "SDM_BACKSTOP";
/// The backstop's interfaces: ifindex -> [`crate::BackstopIf`].
pub const MAP_BACKSTOP_IFS: &str = "SDM_BACKSTOP_IF";
/// The target cgroup, at index 0, for `bpf_skb_under_cgroup`.
pub const MAP_BACKSTOP_CGROUP: &str = "SDM_BACKSTOP_CG";

/// The XDP shield: flows this host started ([`crate::XdpFlowKey`] -> 0).
pub const MAP_XDP_FLOWS: &str = "SDM_XDP_FLOWS";
/// Per-CPU counters of the shield, indexed by [`crate::XdpVerdict`].
pub const MAP_XDP_STATS: &str = "SDM_XDP_STATS";
/// One [`crate::XdpSwitch`]: whether the egress program records flows.
pub const MAP_XDP_ON: &str = "SDM_XDP_ON";
/// The shield's maps, pinned beside [`KERNEL_MAPS`].
pub const XDP_MAPS: [&str; 3] = [MAP_XDP_FLOWS, MAP_XDP_STATS, MAP_XDP_ON];

/// Program names, as the kernel sees them.
pub const PROG_EGRESS: &str = "sdm_egress";
pub const PROG_INGRESS: &str = "sdm_ingress";
pub const PROG_SOCK_CREATE: &str = "sdm_sock_create";
pub const PROG_CONNECT4: &str = "sdm_connect4";
pub const PROG_CONNECT6: &str = "sdm_connect6";
pub const PROG_SENDMSG4: &str = "sdm_sendmsg4";
pub const PROG_SENDMSG6: &str = "sdm_sendmsg6";
/// Hands DNS answers from trusted resolvers to the parser; not attached,
/// tail-called from `sdm_ingress` through `SDM_DNSIN_PROGS`, always passes.
pub const PROG_DNS_IN: &str = "sdm_dns_in";
/// The DNS answer parser: not attached, tail-called through `SDM_DNS_PROGS`.
pub const PROG_DNS: &str = "sdm_dns";
/// The backstop: a tc classifier at clsact egress of `[backstop] interfaces`.
pub const PROG_BACKSTOP: &str = "sdm_backstop";
/// Refuses `PACKET_QDISC_BYPASS` and AF_XDP set-up while the backstop is on.
pub const PROG_SETSOCKOPT: &str = "sdm_setsockopt";
/// The DNS query judge (`[dns] queries = "policy"`): not attached,
/// tail-called from `sdm_egress` through `SDM_DNSQ_PROGS`.
pub const PROG_DNS_QUERY: &str = "sdm_dns_query";
/// The XDP shield, attached to `[xdp] interfaces`.
pub const PROG_XDP: &str = "sdm_xdp";

/// Every map the kernel programs declare, for pinning.
pub const KERNEL_MAPS: [&str; 42] = [
    MAP_RANGE4[0],
    MAP_RANGE4[1],
    MAP_RANGE6[0],
    MAP_RANGE6[1],
    MAP_PORT_SETS[0],
    MAP_PORT_SETS[1],
    MAP_HOST_RANGES[0],
    MAP_HOST_RANGES[1],
    MAP_PEERS,
    MAP_BACKSTOP,
    MAP_BACKSTOP_IFS,
    MAP_BACKSTOP_CGROUP,
    MAP_DNSQ_SCRATCH,
    MAP_DNSQ_STATS,
    MAP_DNSQ_PROGS,
    MAP_DNS_NAMES,
    MAP_DNS_RESOLVERS,
    MAP_DNS_PENDING,
    MAP_DNS_SCRATCH,
    MAP_DNS_STATS,
    MAP_DNS_PROGS,
    MAP_DNSIN_PROGS,
    MAP_LEARNED4,
    MAP_LEARNED6,
    MAP_HOST_PORTS[0],
    MAP_HOST_PORTS[1],
    MAP_EVENTS,
    MAP_EVENT_STATS,
    MAP_EVENT_SEEN,
    MAP_EVENT_BUDGET,
    MAP_CONFIG,
    MAP_EXACT4[0],
    MAP_EXACT4[1],
    MAP_EXACT6[0],
    MAP_EXACT6[1],
    MAP_CIDR4[0],
    MAP_CIDR4[1],
    MAP_CIDR6[0],
    MAP_CIDR6[1],
    MAP_RULES,
    MAP_RULE_STATS,
    MAP_DENY_STATS,
];
