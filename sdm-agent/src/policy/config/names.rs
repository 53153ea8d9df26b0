//! The named values of the config (`role`, `region`, `mode`, ...): each
//! parses from and prints as its name in the file.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// Error of parsing one of the named enums ([`Role`], [`Region`], ...).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}, expected one of: {expected}")]
pub struct UnknownName {
    pub kind: &'static str,
    pub value: String,
    pub expected: String,
}

macro_rules! named_enum {
    ($ty:ident, $kind:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The name used in the config file and in JSON.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $ty::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| UnknownName {
                        kind: $kind,
                        value: s.to_string(),
                        expected: $ty::ALL
                            .iter()
                            .map(|v| v.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
            }
        }
    };
}
pub(super) use named_enum;

/// A StrongDM component this host runs; each selects the rows of one
/// section of the Ports Guide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Client,
    Relay,
    Gateway,
    Api,
    AdDc,
}
named_enum!(Role, "role", {
    Client => "client",
    Relay => "relay",
    Gateway => "gateway",
    Api => "api",
    AdDc => "ad-dc",
});

/// The organisation's StrongDM region (not the host's location).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    Us,
    Uk,
    Eu,
}
named_enum!(Region, "region", { Us => "us", Uk => "uk", Eu => "eu" });

/// `audit` counts and logs what would be denied and drops nothing;
/// `enforce` drops what no rule allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Audit,
    Enforce,
}
named_enum!(Mode, "mode", { Audit => "audit", Enforce => "enforce" });

/// Whether loopback traffic is policed (`enforce`) or always passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoopbackMode {
    Pass,
    Enforce,
}
named_enum!(LoopbackMode, "loopback mode", { Pass => "pass", Enforce => "enforce" });

/// What the programs do between attaching and the first applied policy
/// (`fail`): enforce the policy's fixed part, or pass everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    Closed,
    Open,
}
named_enum!(FailMode, "fail mode", { Closed => "closed", Open => "open" });

/// `[dns] queries`: which DNS queries may reach the trusted resolvers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsQueries {
    /// Any name (the resolvers are reachable, their questions unjudged).
    Any,
    /// Only the policy's hostnames (wildcards included) and names under
    /// `[dns] search`: the kernel reads each query's question.
    Policy,
}
named_enum!(DnsQueries, "dns queries", { Any => "any", Policy => "policy" });
