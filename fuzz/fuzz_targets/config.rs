//! The config file: TOML parsing, validation and the error messages that
//! point at a line and key, then (for configs that load) compiling the
//! policy, the lock-out warnings and the map contents. Nothing may panic,
//! and a config that loads must compile or fail with an error.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sdm_agent::{kernel::entries, policy::compile, policy::config::Config};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match Config::from_toml_str(text, Path::new("fuzz.toml")) {
        Ok(c) => c,
        Err(e) => {
            // Rendering walks the text by the error's span: it must not
            // panic, and it names a line of the text.
            let msg = e.to_string();
            if let Some(line) = e.line() {
                assert!(line >= 1, "line {line} in {msg}");
                assert!(
                    line <= text.lines().count().max(1) + 1,
                    "line {line} past the end of the text: {msg}"
                );
            }
            return;
        }
    };
    // The resolvers: `[dns] servers`, else a stand-in for resolv.conf.
    let resolvers = if config.dns.servers.is_empty() {
        vec!["192.0.2.53".parse().expect("an address")]
    } else {
        config.dns.servers.clone()
    };
    let Ok(policy) = compile::compile(&config, &resolvers) else {
        return;
    };
    let _ = compile::lockout_warnings(&config, &policy);
    // Map contents with every hostname resolved to one address; compile
    // refused what cannot fit statically, so this stays bounded.
    let ids = policy
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.clone(), i as u32))
        .collect();
    let addr = ["192.0.2.1".parse().expect("an address")];
    let e = entries::build(&policy, &ids, |_| &addr[..]);
    assert!(
        e.rules.len() <= policy.rules.len(),
        "more live rules than rules"
    );
    let _ = serde_json::to_string(&config).expect("a loaded config serialises");
});
