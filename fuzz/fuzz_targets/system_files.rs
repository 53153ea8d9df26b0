//! Files of the system the agent reads: /etc/resolv.conf (the resolvers
//! it allows and asks) and /proc/mounts (the cgroup2 mount). Nothing may
//! panic; every resolver found is named on a `nameserver` line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sdm_agent::{kernel::cgroup::cgroup2_mount_in, policy::compile::parse_resolv_conf};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let servers = parse_resolv_conf(text);
    let mut unique = servers.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), servers.len(), "duplicates in {servers:?}");
    if !servers.is_empty() {
        assert!(
            text.contains("nameserver"),
            "{servers:?} from no nameserver line"
        );
    }
    if let Some(mount) = cgroup2_mount_in(text) {
        assert!(text.contains("cgroup2"), "{mount:?} from no cgroup2 line");
    }
});
