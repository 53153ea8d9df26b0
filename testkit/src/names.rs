//! Names for whatever the kit creates: unique to this process and call.
//!
//! Two styles. The tests use short names (`st<pid mod 100000><tag><n>`),
//! since a name may become an interface name (15 bytes at most). The
//! benchmark uses names that carry their owner's whole pid
//! (`sdmb<pid>x<tag><n>`), so that a later run can tell a killed run's
//! leftovers from a running one's ([`crate::sweep`]).

use std::sync::{
    atomic::{AtomicU32, Ordering},
    OnceLock,
};

/// How this process names what it creates; see the module header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// `st<pid mod 100000><tag><n>`; folders are `sdmtest-<name>`.
    Short,
    /// `<prefix><pid>x<tag><n>`, folders too; `program` is the owner's
    /// command name (`/proc/<pid>/comm`), to tell a live owner from a
    /// reused pid.
    Owned {
        prefix: &'static str,
        program: &'static str,
    },
}

impl Naming {
    /// The `n`-th name with `tag` of process `pid`.
    pub fn name(&self, pid: u32, tag: &str, n: u32) -> String {
        match self {
            Self::Short => format!("st{}{tag}{n}", pid % 100_000),
            Self::Owned { prefix, .. } => format!("{prefix}{pid}x{tag}{n}"),
        }
    }

    /// The pid in a name made in this style, if it is one (only owned names
    /// carry it).
    pub fn owner_pid(&self, name: &str) -> Option<u32> {
        let Self::Owned { prefix, .. } = self else {
            return None;
        };
        let rest = name.strip_prefix(prefix)?;
        let end = rest.find('x')?;
        rest[..end].parse().ok()
    }
}

static NAMING: OnceLock<Naming> = OnceLock::new();

/// Chooses this process's naming, before the first name is made; returns
/// false (and changes nothing) if another style is already in use.
pub fn set_naming(naming: Naming) -> bool {
    *NAMING.get_or_init(|| naming) == naming
}

/// This process's naming ([`Naming::Short`] unless set otherwise).
pub fn naming() -> Naming {
    *NAMING.get_or_init(|| Naming::Short)
}

/// A name unique to this process and call.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    naming().name(std::process::id(), tag, n)
}

/// A unique name for a file or folder (under /sys/fs/bpf or /tmp).
pub fn path_name(tag: &str) -> String {
    match naming() {
        Naming::Short => format!("sdmtest-{}", unique(tag)),
        Naming::Owned { .. } => unique(tag),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BENCH: Naming = Naming::Owned {
        prefix: "sdmb",
        program: "sdm-bench",
    };

    #[test]
    fn owned_names_carry_their_owner() {
        let name = BENCH.name(std::process::id(), "c", 3);
        assert!(name.starts_with("sdmb"));
        assert_eq!(BENCH.owner_pid(&name), Some(std::process::id()));
        assert_eq!(BENCH.owner_pid("sdmb12x"), Some(12));
        assert_eq!(BENCH.owner_pid("sdm-agent"), None);
        assert_eq!(BENCH.owner_pid("sdmbabcx"), None);
    }

    #[test]
    fn short_names_fit_an_interface_name() {
        let name = Naming::Short.name(4_194_304, "veth", 99);
        assert_eq!(name, "st94304veth99");
        assert!(name.len() <= 15);
        assert_eq!(Naming::Short.owner_pid(&name), None);
    }
}
