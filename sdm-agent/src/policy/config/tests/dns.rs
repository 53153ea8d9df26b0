//! `[dns]`.

use super::*;

/// Issue 16: `*.com` passed `check`, allowing every domain anyone can
/// register. Wildcards at or directly under a public suffix are refused
/// with the file, line and key; below a registrable domain they stay.
#[test]
fn dns_queries_and_search_are_read_and_checked_with_their_lines() {
    let c = ok("[dns]\nqueries = \"policy\"\nsearch = [\"Corp.Example.\", \".lab.example\"]\n");
    assert_eq!(c.dns.queries, DnsQueries::Policy);
    assert_eq!(c.dns.search, vec!["corp.example", "lab.example"]);
    assert_eq!(Config::default().dns.queries, DnsQueries::Any);
    fails(
        "[dns]\nqueries = \"some\"\n",
        2,
        "queries",
        &["any", "policy"],
    );
    // A search suffix lets every name under it be asked: refused as
    // wide as a public suffix, like the wildcard it amounts to.
    fails(
        "[dns]\nsearch = [\"com\"]\n",
        2,
        "search",
        &["public suffix"],
    );
    fails(
        "[dns]\n\nsearch = \"bad name!\"\n",
        3,
        "search",
        &["not allowed"],
    );
}

#[test]
fn dns_and_http_errors() {
    fails(
        "[dns]\nservers = [\"1.1.1.1\", \"dns.google\"]\n",
        2,
        "servers",
        &["dns.google"],
    );
    fails(
        "[dns]\nfallback = \"one.one\"\n",
        2,
        "fallback",
        &["one.one"],
    );
    assert_eq!(ok("[dns]\nfallback = \"\"\n").dns.fallback, None);
    assert_eq!(ok("[dns]\nfallback = \"NONE\"\n").dns.fallback, None);
    assert_eq!(
        ok("[dns]\nfallback = \"9.9.9.9\"\n").dns.fallback,
        Some("9.9.9.9".parse().unwrap())
    );
    fails(
        "[dns]\n\nttl_min = \"30 s\"\n",
        3,
        "ttl_min",
        &["invalid duration"],
    );
    fails("[dns]\nttl_max = \"1y\"\n", 2, "ttl_max", &["1y"]);
    fails("[dns]\ngrace = -5\n", 2, "grace", &["negative"]);
    fails(
        "[dns]\nttl_min = \"0s\"\n",
        2,
        "ttl_min",
        &["greater than zero"],
    );
    fails(
        "[dns]\nttl_min = \"2h\"\nttl_max = \"1h\"\n",
        3,
        "ttl_max",
        &["ttl_min (2h)"],
    );
    fails("[dns]\nttl_min = \"2h\"\n", 2, "ttl_min", &[]);
    fails(
        "[http]\nlisten = \"localhost:9850\"\n",
        2,
        "listen",
        &["[http]"],
    );
    fails("\ncgroup = \"sys/fs/cgroup\"\n", 2, "cgroup", &["absolute"]);
    fails(
        "\ncgroup = \"unit:a/b\"\n",
        2,
        "cgroup",
        &["not a unit name"],
    );
    fails("\ncgroup = \"pid:0\"\n", 2, "cgroup", &["process id"]);
    assert_eq!(
        ok("cgroup = \"unit:sdm-proxy\"\n").cgroup,
        Some(CgroupTarget::Unit("sdm-proxy.service".into()))
    );
    assert_eq!(
        ok("cgroup = \"pid:77\"\n").cgroup,
        Some(CgroupTarget::Pid(77))
    );
}

/// Issue 14: the agent's own lookups are paced; the ceiling and the
/// number in flight are read, bounded, and refused with file, line and key.
#[test]
fn dns_max_qps_and_concurrency_are_read_and_bounded() {
    let d = Config::default().dns;
    assert_eq!((d.max_qps, d.concurrency), (10_000, 256));
    let c = ok("[dns]\nmax_qps = 500\nconcurrency = 64\n");
    assert_eq!((c.dns.max_qps, c.dns.concurrency), (500, 64));
    let c = ok("[dns]\nmax_qps = 1\nconcurrency = 4096\n");
    assert_eq!((c.dns.max_qps, c.dns.concurrency), (1, 4096));
    fails(
        "[dns]\n\nmax_qps = 0\n",
        3,
        "max_qps",
        &["0 is out of range", "from 1 to 1000000"],
    );
    fails("[dns]\nmax_qps = -5\n", 2, "max_qps", &["-5"]);
    fails(
        "[dns]\nmax_qps = 5000000000\n",
        2,
        "max_qps",
        &["5000000000"],
    );
    fails(
        "[dns]\nconcurrency = 4097\n",
        2,
        "concurrency",
        &["from 1 to 4096"],
    );
    fails(
        "[dns]\nconcurrency = 0\n",
        2,
        "concurrency",
        &["out of range"],
    );
    // Not a number: the TOML type error names the line and the key.
    fails("[dns]\nmax_qps = \"fast\"\n", 2, "max_qps", &[]);
}
