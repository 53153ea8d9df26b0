//! Types and constants shared by the kernel programs (`sdm-ebpf`) and the
//! agent (`sdm-agent`), one module per map family. Every struct is
//! `#[repr(C)]` with explicit padding fields so its layout is the same on
//! both sides and the kernel never sees uninitialised bytes in a map key;
//! each module asserts the sizes of its own. Values with a fixed meaning
//! (direction, mode, deny reason, DNS result, event stat) are enums that
//! carry their own names; struct fields stay plain integers, since every
//! bit pattern of a map value must be valid.
#![no_std]

mod config;
mod dns;
mod events;
mod names;
mod policy;
mod stats;
mod vocabulary;
mod xdp;

pub use config::*;
pub use dns::*;
pub use events::*;
pub use names::*;
pub use policy::*;
pub use stats::*;
pub use vocabulary::UnknownValue;
pub use xdp::*;

#[cfg(feature = "user")]
mod pod {
    use super::*;

    macro_rules! pod {
        ($($t:ty),* $(,)?) => {$(
            // SAFETY: every type listed is repr(C), made of integers and
            // byte arrays with explicit padding fields (checked by the
            // size asserts beside each), so every bit pattern is valid.
            unsafe impl aya::Pod for $t {}
        )*};
    }

    pod!(
        DenyEvent,
        EventSeenKey,
        PeerKey,
        FlowSeen,
        DnsHost,
        ResolverKey,
        DnsQueryKey,
        Learned,
        HostPortKey,
        EventBudget,
        Backstop,
        BackstopIf,
        KernelConfig,
        Counter,
        Key4,
        Key6,
        Cidr4,
        Cidr6,
        RuleRef,
        PortSet,
        PortSetKey,
        RuleState,
        RuleName,
        SockState,
        XdpFlowKey,
        XdpSwitch,
    );
}

#[cfg(test)]
mod tests;
