//! `[[resource]]`, `[[secret_store]]` and `[[allow]]`, and their names.

use super::*;

#[test]
fn bad_cidrs() {
    let text = "role = [\"gateway\"]\n\n[[resource]]\nname = \"prod-db\"\ncidr = \"10.0.0.0/33\"\nport = 5432\n";
    let msg = fails(text, 5, "cidr", &[]);
    assert!(
        msg.starts_with("config my.toml: line 5: [[resource]] \"prod-db\" key `cidr`: invalid CIDR \"10.0.0.0/33\": "),
        "{msg}"
    );
    fails(
        "[gateway]\nsources = [\"0.0.0.0/0\", \"::/129\"]\n",
        2,
        "sources",
        &["[gateway]", "::/129"],
    );
    fails(
        "[[allow]]\nname = \"a\"\ndirection = \"ingress\"\nport = 22\nfrom = [\"10.0.0.0/8\",\n \"example.com\"]\n",
        6,
        "from",
        &["example.com"],
    );
    fails(
        "[[allow]]\nname = \"a\"\ndirection = \"egress\"\nport = 22\nto = \"10.0.0.0/99\"\n",
        5,
        "to",
        &["10.0.0.0/99"],
    );
    fails(
        "[[secret_store]]\nname = \"v\"\nhost = \"10.0.0.0/8\"\nport = 1\n",
        3,
        "host",
        &["cidr"],
    );
}

#[test]
fn bad_ports() {
    fails(
        "[[resource]]\nname = \"a\"\nhost = \"h\"\nport = 0\n",
        4,
        "port",
        &["0"],
    );
    fails(
        "[[resource]]\nname = \"a\"\nhost = \"h\"\nport = 65536\n",
        4,
        "port",
        &["65536"],
    );
    fails(
        "[[resource]]\nname = \"a\"\nhost = \"h\"\nport = -1\n",
        4,
        "port",
        &[],
    );
    fails(
        "[[resource]]\nname = \"a\"\nhost = \"h\"\nports = \"8100-8000\"\n",
        4,
        "ports",
        &["8100-8000"],
    );
    fails(
        "[[resource]]\nname = \"a\"\nhost = \"h\"\nports = \"80,99999\"\n",
        4,
        "ports",
        &["99999"],
    );
    fails(
        "[[resource]]\nname = \"a\"\nhost = \"h\"\nports = []\n",
        4,
        "ports",
        &["empty"],
    );
    fails(
        "[[resource]]\nname = \"a\"\nhost = \"h\"\nport = 1\nports = \"2\"\n",
        5,
        "ports",
        &["not both"],
    );
    fails(
        "\n[[resource]]\nname = \"a\"\nhost = \"h\"\n",
        2,
        "port",
        &["[[resource]] \"a\"", "`ports`"],
    );
    fails(
        "[gateway]\nadvertised_port = 0\n",
        2,
        "advertised_port",
        &[],
    );
    fails(
        "[client]\nloopback_ports = [13306, 70000]\n",
        2,
        "loopback_ports",
        &["70000"],
    );
    fails(
        "[[allow]]\nname = \"p\"\ndirection = \"egress\"\nproto = \"icmp\"\nport = 256\nto = \"h.example\"\n",
        5,
        "port",
        &["ICMP type"],
    );
    // ICMP type 0 (echo reply) is fine.
    assert_eq!(
        ok("[[allow]]\nname = \"p\"\ndirection = \"ingress\"\nproto = \"icmp\"\nport = 0\nfrom = \"::/0\"\n").allow[0].ports,
        vec![PortRange::single(0)]
    );
}

#[test]
fn host_and_cidr() {
    fails(
        "[[resource]]\nname = \"a\"\nhost = \"h\"\ncidr = \"10.0.0.0/8\"\nport = 1\n",
        4,
        "cidr",
        &["not both"],
    );
    fails(
        "\n\n[[secret_store]]\nname = \"a\"\nport = 1\n",
        3,
        "host",
        &["[[secret_store]] \"a\"", "`cidr`"],
    );
    fails(
        "[[resource]]\nname = \"a\"\nhost = \"bad_host!\"\nport = 1\n",
        3,
        "host",
        &["invalid hostname"],
    );
    fails(
        "[hosts]\napp = \"*.strongdm.com\"\n",
        2,
        "app",
        &["wildcard"],
    );
    fails("[hosts]\n\nlogin = \"a..b\"\n", 3, "login", &["[hosts]"]);
    // An address in `host` is taken as a /32.
    assert_eq!(
        ok("[[resource]]\nname = \"a\"\nhost = \"10.1.2.3\"\nport = 1\n").resources[0].target,
        Target::Cidr(cidr("10.1.2.3/32"))
    );
}

#[test]
fn names() {
    fails(
        "[[resource]]\nname = \"Prod\"\nhost = \"h\"\nport = 1\n",
        2,
        "name",
        &["[a-z0-9][a-z0-9._-]*"],
    );
    fails(
        "[[resource]]\nname = \"-x\"\nhost = \"h\"\nport = 1\n",
        2,
        "name",
        &[],
    );
    fails(
        "[[resource]]\nname = \"\"\nhost = \"h\"\nport = 1\n",
        2,
        "name",
        &[],
    );
    fails(
        "[[allow]]\nname = \"a b\"\ndirection = \"egress\"\nport = 1\nto = \"h.example\"\n",
        2,
        "name",
        &[],
    );
    let long = "a".repeat(MAX_NAME_LEN + 1);
    fails(
        &format!("[[resource]]\nname = \"{long}\"\nhost = \"h\"\nport = 1\n"),
        2,
        "name",
        &["longer"],
    );
    assert_eq!(
        ok("[[resource]]\nname = \"db-1.prod_x\"\nhost = \"h\"\nport = 1\n").resources[0].name,
        "db-1.prod_x"
    );
}

#[test]
fn duplicate_names() {
    let text = r#"
[[resource]]
name = "db"
host = "h"
port = 1

[[secret_store]]
name = "db"
host = "v"
port = 2
"#;
    fails(
        text,
        8,
        "name",
        &[
            "duplicate",
            "[[secret_store]] \"db\"",
            "[[resource]] on line 3",
        ],
    );
    let text = "[[allow]]\nname = \"x\"\ndirection = \"egress\"\nport = 1\nto = \"a.example\"\n\
                [[allow]]\nname = \"x\"\ndirection = \"egress\"\nport = 2\nto = \"b.example\"\n";
    fails(text, 7, "name", &["duplicate", "[[allow]] on line 2"]);
    let text = "[[resource]]\nname = \"x\"\nhost = \"h\"\nport = 1\n\
                [[allow]]\nname = \"x\"\ndirection = \"egress\"\nport = 2\nto = \"b.example\"\n";
    fails(text, 6, "name", &["duplicate"]);
    // The later entry in the file is the one reported.
    let text = "[[secret_store]]\nname = \"db\"\nhost = \"h\"\nport = 1\n\
                [[resource]]\nname = \"db\"\nhost = \"h\"\nport = 1\n";
    fails(
        text,
        6,
        "name",
        &["[[resource]] \"db\"", "[[secret_store]] on line 2"],
    );
}

#[test]
fn allow_directions() {
    fails(
        "[[allow]]\nname = \"a\"\ndirection = \"egress\"\nport = 1\n",
        1,
        "to",
        &["needs `to`"],
    );
    fails(
        "[[allow]]\nname = \"a\"\ndirection = \"ingress\"\nport = 1\n",
        1,
        "from",
        &["needs `from`"],
    );
    fails(
        "[[allow]]\nname = \"a\"\ndirection = \"ingress\"\nport = 1\nfrom = \"::/0\"\nto = \"h.example\"\n",
        6,
        "to",
        &[],
    );
    fails(
        "[[allow]]\nname = \"a\"\ndirection = \"egress\"\nport = 1\nto = \"h.example\"\nfrom = \"::/0\"\n",
        6,
        "from",
        &[],
    );
    fails(
        "[[allow]]\nname = \"a\"\ndirection = \"egress\"\nport = 1\nto = []\n",
        5,
        "to",
        &["empty"],
    );
    fails(
        "[[allow]]\nname = \"a\"\ndirection = \"ingress\"\nport = 1\nfrom = []\n",
        5,
        "from",
        &["empty"],
    );
    fails(
        "[[allow]]\nname = \"a\"\ndirection = \"egress\"\nport = 1\nto = \"bad..host\"\n",
        5,
        "to",
        &["invalid hostname"],
    );
    fails("[[allow]]\nname = \"a\"\ndirection = \"egress\"\nport = 1\n\nto = [\"ok.example\", \"x y\"]\n", 6, "to", &[]);
}
