//! Attaching `sdm_xdp` to the configured interfaces, and finding it again.
//!
//! Each interface gets a bpf_link (BPF_LINK_CREATE with an XDP attach
//! type, Linux 5.9) pinned under `links/` like the cgroup links: the
//! shield stays while the pin does, a restarted agent swaps the program in
//! place (BPF_LINK_UPDATE: no gap), and `sdm-agent detach` detaches it with
//! the rest. The pin's name records the interface and the mode, which the
//! kernel's link info does not tell.

use std::{fs, path::Path};

use aya::{
    maps::{Array, MapData},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        Xdp, XdpMode,
    },
    Ebpf,
};
use sdm_common::{XdpSwitch, MAP_XDP_ON, PROG_XDP};

use super::{AttachMode, Shielded, XdpError};
use crate::kernel::dataplane::{detach_link_now, Layout};

/// Prefix of the shield's link pins: `xdp_<mode>_<interface, hex>` (hex:
/// bpffs refuses dots, which VLAN interfaces such as `eth0.100` have).
const PIN_PREFIX: &str = "xdp_";

pub(super) fn pin_name(mode: AttachMode, iface: &str) -> String {
    let hex: String = iface.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{PIN_PREFIX}{}_{hex}", mode.name())
}

/// The (mode, interface) of a pin name of [`pin_name`].
pub(super) fn parse_pin_name(pin: &str) -> Option<Shielded> {
    let rest = pin.strip_prefix(PIN_PREFIX)?;
    let (mode, hex) = rest.split_once('_')?;
    let mode = AttachMode::ALL.into_iter().find(|m| m.name() == mode)?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    Some(Shielded {
        interface: String::from_utf8(bytes?).ok()?,
        mode,
    })
}

/// The interfaces the shield is attached to, as their pins say.
pub fn attached(layout: &Layout) -> Vec<Shielded> {
    let Ok(entries) = fs::read_dir(layout.pin_root.join("links")) else {
        return Vec::new();
    };
    let mut out: Vec<Shielded> = entries
        .flatten()
        .filter_map(|e| parse_pin_name(e.file_name().to_str()?))
        .collect();
    out.sort_by(|a, b| a.interface.cmp(&b.interface));
    out
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, XdpError> {
    let p = ebpf.program_mut(PROG_XDP).ok_or(XdpError::Program {
        op: "find",
        source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
    })?;
    p.try_into().map_err(|e| XdpError::Program {
        op: "find",
        source: Box::new(e),
    })
}

/// Loads `sdm_xdp` (beside the rest of the object, so that a kernel that
/// refuses it fails the start like any other program).
pub fn load_program(ebpf: &mut Ebpf) -> Result<(), XdpError> {
    xdp_program(ebpf)?.load().map_err(|e| XdpError::Program {
        op: "load",
        source: Box::new(e),
    })
}

/// Turns the egress program's flow recording on or off.
pub(super) fn set_switch(layout: &Layout, on: bool) -> Result<(), XdpError> {
    let data = MapData::from_pin(layout.map_pin(MAP_XDP_ON)).map_err(XdpError::map(MAP_XDP_ON))?;
    let mut arr: Array<MapData, XdpSwitch> =
        Array::try_from(aya::maps::Map::Array(data)).map_err(XdpError::map(MAP_XDP_ON))?;
    arr.set(
        0,
        XdpSwitch {
            on: u32::from(on),
            _pad: 0,
        },
        0,
    )
    .map_err(XdpError::map(MAP_XDP_ON))
}

/// Puts the shield on `iface`: the program of its existing link replaced
/// in place, else a new link, native mode first and generic where the
/// driver has no XDP support, pinned.
pub(super) fn attach_one(
    layout: &Layout,
    ebpf: &mut Ebpf,
    iface: &str,
    previous: Option<AttachMode>,
) -> Result<AttachMode, XdpError> {
    let prog = xdp_program(ebpf)?;
    let err = |op: &'static str| {
        move |e: aya::programs::ProgramError| XdpError::Attach {
            op,
            interface: iface.to_owned(),
            source: Box::new(e),
        }
    };
    if let Some(mode) = previous {
        let pin = layout.link_pin(&pin_name(mode, iface));
        let link = PinnedLink::from_pin(&pin)
            .map_err(|e| XdpError::Link {
                interface: iface.to_owned(),
                source: Box::new(e),
            })
            .and_then(|p| {
                XdpLink::try_from(FdLink::from(p)).map_err(|e| XdpError::Link {
                    interface: iface.to_owned(),
                    source: Box::new(e),
                })
            })?;
        let id = prog
            .attach_to_link(link)
            .map_err(err("replace the program of"))?;
        // The pin holds the link; this handle only closes its fd.
        drop(prog.take_link(id).map_err(err("take the link of"))?);
        return Ok(mode);
    }
    let (id, mode) = match prog.attach(iface, XdpMode::Driver) {
        Ok(id) => (id, AttachMode::Native),
        Err(native) => {
            tracing::info!(interface = iface, error = %native, "native XDP refused (the driver has no XDP support); attaching in generic (SKB) mode");
            let id = prog.attach(iface, XdpMode::Skb).map_err(err("attach to"))?;
            (id, AttachMode::Generic)
        }
    };
    let link =
        FdLink::try_from(prog.take_link(id).map_err(err("take the link of"))?).map_err(|e| {
            XdpError::Link {
                interface: iface.to_owned(),
                source: Box::new(e),
            }
        })?;
    let pin = layout.link_pin(&pin_name(mode, iface));
    link.pin(&pin).map_err(|e| XdpError::Pin {
        path: pin.clone(),
        source: Box::new(e),
    })?;
    Ok(mode)
}

/// Takes the shield off the interface of `pin` at once.
pub(super) fn detach_one(pin: &Path) -> Result<(), XdpError> {
    detach_link_now(pin).map_err(|source| XdpError::Io {
        op: "detach the link pinned at",
        path: pin.to_owned(),
        source,
    })?;
    fs::remove_file(pin).map_err(|source| XdpError::Io {
        op: "unpin",
        path: pin.to_owned(),
        source,
    })
}
