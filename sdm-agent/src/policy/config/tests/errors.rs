//! Errors in general: each names the line and the key.

use super::*;

#[test]
fn unknown_keys() {
    let msg = fails(
        "region = \"us\"\n\nrolez = [\"gateway\"]\n",
        3,
        "rolez",
        &["column 1", "unknown field"],
    );
    assert!(
        msg.starts_with("config my.toml: line 3, column 1: unknown field `rolez`"),
        "{msg}"
    );
    fails(
        "[hosts]\napp = \"a.example\"\napx = \"b\"\n",
        3,
        "apx",
        &["[hosts]", "unknown field"],
    );
    fails(
        "[gateway]\nadvertised_port = 5000\nsource = []\n",
        3,
        "source",
        &["unknown field"],
    );
    fails(
        "[[resource]]\nname = \"a\"\nhost = \"h\"\nport = 1\nporz = 5\n",
        5,
        "porz",
        &["[[resource]]"],
    );
    fails("[dns]\nttl = \"1s\"\n", 2, "ttl", &["[dns]"]);
    fails("[http]\nport = 1\n", 2, "port", &["[http]"]);
    fails("[client]\nports = [1]\n", 2, "ports", &["[client]"]);
    fails(
        "\n[[allow]]\nname = \"x\"\ndirection = \"egress\"\nport = 1\nto = \"a.b\"\nform = \"x\"\n",
        7,
        "form",
        &[],
    );
    fails("[dnz]\n", 1, "dnz", &["unknown field"]);
}

#[test]
fn type_errors_name_the_key() {
    fails(
        "mode = \"audit\"\nregion = 5\n",
        2,
        "region",
        &["column 10", "invalid type"],
    );
    fails(
        "[gateway]\nadvertised_port = \"x\"\n",
        2,
        "advertised_port",
        &["[gateway]"],
    );
    fails(
        "[dns]\nservers = [\n  \"1.1.1.1\",\n  1,\n]\n",
        4,
        "servers",
        &["[dns]"],
    );
    fails("optional = \"yes\"\n", 1, "optional", &[]);
    fails(
        "[[resource]]\nname = \"a\"\nhost = \"h\"\nport = \"x\"\n",
        4,
        "port",
        &["expected an integer"],
    );
    let msg = parse("[resource]\nname = \"a\"\n").unwrap_err().to_string();
    assert!(
        msg.contains("line 1") && msg.contains("double brackets"),
        "{msg}"
    );
    // A syntax error.
    let msg = parse("region = \n").unwrap_err().to_string();
    assert!(
        msg.starts_with("config my.toml: line 1, column 10: "),
        "{msg}"
    );
}

#[test]
fn missing_keys() {
    let msg = parse("\n[[resource]]\nhost = \"h\"\nport = 5\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("line 2") && msg.contains("missing field `name`"),
        "{msg}"
    );
    let msg = parse("[[allow]]\nname = \"x\"\nport = 5\nto = \"h.example\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("line 1") && msg.contains("`direction`"),
        "{msg}"
    );
}

#[test]
fn crlf_and_unicode_positions() {
    let text = "region = \"us\"\r\n# é comment\r\nmode = \"nope\"\r\n";
    fails(text, 3, "mode", &[]);
    assert_eq!(line_col("aé\nxyz", 7), (2, 4));
    assert_eq!(line_col("ab", 100), (1, 3));
}
