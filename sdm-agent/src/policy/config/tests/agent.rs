//! The agent's own sections: `[http]`, `[state]`, `[audit]`, `[backstop]`,
//! `[metrics]`.

use super::*;

#[test]
fn backstop_interfaces_are_checked_names_with_their_lines() {
    assert!(ok("").backstop.interfaces.is_empty());
    assert!(ok("[backstop]\n").backstop.interfaces.is_empty());
    let c = ok("[backstop]\ninterfaces = [\n  \"eth0\",\n  \"wg0\",\n]\n");
    let got: Vec<(&str, usize)> = c
        .backstop
        .interfaces
        .iter()
        .map(|i| (i.name.as_str(), i.line))
        .collect();
    assert_eq!(got, [("eth0", 3), ("wg0", 4)]);
    // A single name is a list of one, as for `role`.
    assert_eq!(
        ok("[backstop]\ninterfaces = \"ens5\"\n")
            .backstop
            .interfaces
            .len(),
        1
    );

    fails(
        "[backstop]\ninterfaces = [\"eth0\",\n \"eth0\"]\n",
        3,
        "interfaces",
        &["[backstop]", "\"eth0\" is listed twice"],
    );
    fails(
        "[backstop]\ninterfaces = [\"a-very-long-interface\"]\n",
        2,
        "interfaces",
        &["longer than an interface name"],
    );
    fails(
        "[backstop]\ninterfaces = [\"eth0:1\"]\n",
        2,
        "interfaces",
        &["':' cannot appear"],
    );
    fails(
        "[backstop]\ninterfaces = [\"\"]\n",
        2,
        "interfaces",
        &["empty"],
    );
    fails(
        "[backstop]\ninterface = [\"eth0\"]\n",
        2,
        "interface",
        &["unknown field"],
    );
}

#[test]
fn xdp_interfaces_are_checked_names_with_their_lines() {
    assert!(ok("").xdp.interfaces.is_empty());
    let c = ok("[xdp]\ninterfaces = [\n  \"eth0\",\n  \"ens5\",\n]\n");
    let got: Vec<(&str, usize)> = c
        .xdp
        .interfaces
        .iter()
        .map(|i| (i.name.as_str(), i.line))
        .collect();
    assert_eq!(got, [("eth0", 3), ("ens5", 4)]);
    assert_eq!(ok("[xdp]\ninterfaces = \"eth0\"\n").xdp.interfaces.len(), 1);
    fails(
        "[xdp]\ninterfaces = [\"eth0\",\n \"eth0\"]\n",
        3,
        "interfaces",
        &["[xdp]", "\"eth0\" is listed twice"],
    );
    fails(
        "[xdp]\ninterfaces = [\"eth0:1\"]\n",
        2,
        "interfaces",
        &["[xdp]", "':' cannot appear"],
    );
    fails(
        "[xdp]\ninterface = [\"eth0\"]\n",
        2,
        "interface",
        &["unknown field"],
    );
}

#[test]
fn http_token_and_listen() {
    // Off loopback without a token: an error naming [http] listen.
    let msg = fails(
        "[http]

listen = \"0.0.0.0:9850\"\n",
        3,
        "listen",
        &["[http]", "loopback", "token"],
    );
    assert!(msg.contains("0.0.0.0:9850"), "{msg}");
    fails(
        "[http]
listen = \"[::]:9850\"\n",
        2,
        "listen",
        &["token"],
    );
    fails(
        "[http]
listen = \"10.1.2.3:80\"\n",
        2,
        "listen",
        &["token"],
    );
    // With a token, anywhere; the token is never serialized.
    let c = ok("[http]
listen = \"0.0.0.0:9850\"\ntoken = \"s3cret-token\"\n");
    assert_eq!(c.http.token.as_deref(), Some("s3cret-token"));
    let json = serde_json::to_string(&c).unwrap();
    assert!(!json.contains("s3cret"), "{json}");
    // Loopback needs none, IPv4-mapped loopback included.
    assert_eq!(
        ok("[http]
listen = \"127.0.0.2:1\"\n")
        .http
        .token,
        None
    );
    ok("[http]
listen = \"[::ffff:127.0.0.1]:1\"\n");
    ok("[http]
listen = \"[::1]:1\"\ntoken = \"t\"\n");
    fails(
        "[http]
token = \"\"\n",
        2,
        "token",
        &["empty"],
    );
    fails(
        "[http]
token = \"a b\"\n",
        2,
        "token",
        &["not allowed"],
    );
    fails(
        "[http]
token = 5\n",
        2,
        "token",
        &["[http]"],
    );
}

#[test]
fn state_and_audit() {
    let c = ok("[state]
dir = \"/tmp/x\"\n");
    assert_eq!(c.state.dir, PathBuf::from("/tmp/x"));
    assert_eq!(c.state.retention, DEFAULT_RETENTION);
    assert_eq!(
        ok("[state]
retention = 3600\n")
        .state
        .retention,
        Duration::from_secs(3600)
    );
    fails(
        "[state]
dir = \"var/lib\"\n",
        2,
        "dir",
        &["[state]", "absolute"],
    );
    fails(
        "[state]

retention = \"0s\"\n",
        3,
        "retention",
        &["[state]", "greater than zero"],
    );
    fails(
        "[state]
retention = \"7 days\"\n",
        2,
        "retention",
        &["invalid duration"],
    );
    fails(
        "[state]
dirs = \"/x\"\n",
        2,
        "dirs",
        &["unknown field"],
    );
    fails(
        "[audit]
log = \"flows.log\"\n",
        2,
        "log",
        &["[audit]", "absolute"],
    );
    fails(
        "[audit]
file = \"/x\"\n",
        2,
        "file",
        &["unknown field"],
    );
    let json = serde_json::to_value(Config::default()).unwrap();
    assert_eq!(json["state"]["retention"], "7d");
}

#[test]
fn store_max_bytes() {
    assert_eq!(ok("").state.max_bytes, DEFAULT_STORE_MAX_BYTES);
    assert_eq!(
        ok("[state]\nmax_bytes = \"8MiB\"\n").state.max_bytes,
        8 << 20
    );
    assert_eq!(
        ok("[state]\nmax_bytes = 2097152\n").state.max_bytes,
        2 << 20
    );
    assert_eq!(
        ok("[state]\nmax_bytes = \"1 GiB\"\n").state.max_bytes,
        1 << 30
    );
    fails(
        "[state]\n\nmax_bytes = \"64 furlongs\"\n",
        3,
        "max_bytes",
        &["[state]", "invalid size"],
    );
    fails(
        "[state]\nmax_bytes = 4096\n",
        2,
        "max_bytes",
        &["too small"],
    );
    fails("[state]\nmax_bytes = -1\n", 2, "max_bytes", &["negative"]);
    fails(
        "[state]\nmax_bytes = \"99999999999999GiB\"\n",
        2,
        "max_bytes",
        &["invalid size"],
    );
}

#[test]
fn metrics_per_resource_is_a_boolean_off_by_default() {
    assert!(!ok("").metrics.per_resource);
    assert!(!ok("[metrics]\n").metrics.per_resource);
    assert!(ok("[metrics]\nper_resource = true\n").metrics.per_resource);
    assert!(!ok("[metrics]\nper_resource = false\n").metrics.per_resource);
    fails(
        "role = \"gateway\"\n[metrics]\nper_resource = \"yes\"\n",
        3,
        "per_resource",
        &["[metrics]", "boolean"],
    );
    fails(
        "[metrics]\n\nper_rule = true\n",
        3,
        "per_rule",
        &["unknown field", "per_resource"],
    );
}
