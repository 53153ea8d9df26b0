//! Loading the eBPF object: its maps created under the pin root or reused
//! from there, every program loaded, the DNS tail calls put in place.

use std::{fs, path::PathBuf};

use aya::{
    maps::{Array, MapData, ProgramArray},
    programs::{CgroupSkb, CgroupSock, CgroupSockAddr},
    Ebpf, EbpfLoader,
};
use sdm_common::{
    KernelConfig, KERNEL_MAPS, LAYOUT_VERSION, MAP_CONFIG, MAP_DNSIN_PROGS, MAP_DNSQ_PROGS,
    MAP_DNS_PROGS, MAP_RULES, MAP_RULE_STATS, MAP_SOCK_STATE, PROG_DNS, PROG_DNS_IN,
    PROG_DNS_QUERY, XDP_MAPS,
};

use super::{
    attach::Kind,
    capacity::{self, Sizing},
    io_err, map_err, missing, prog_err, Attachment, DataplaneError, Layout, Maps, ATTACHMENTS,
};
use crate::kernel::config_map::ConfigField;

/// Loads one program into the kernel.
fn load_program(ebpf: &mut Ebpf, a: &Attachment) -> Result<(), DataplaneError> {
    let prog = ebpf
        .program_mut(a.program)
        .ok_or_else(|| missing(a.program))?;
    match a.kind {
        Kind::Skb(_) => <&mut CgroupSkb>::try_from(prog)
            .map_err(prog_err(a.program))?
            .load(),
        Kind::Sock => <&mut CgroupSock>::try_from(prog)
            .map_err(prog_err(a.program))?
            .load(),
        Kind::SockAddr => <&mut CgroupSockAddr>::try_from(prog)
            .map_err(prog_err(a.program))?
            .load(),
    }
    .map_err(prog_err(a.program))
}

/// Loads the programs, creating the maps under the pin root or reusing the
/// ones pinned there (so policy and counters carry over). Attaches nothing.
///
/// The rule maps are sized for a policy of `rules` rules (see
/// `capacity`): created at that size, kept when the pinned ones hold it,
/// grown otherwise (the larger maps replace the pinned ones at once when
/// nothing is attached, else once `attach` has attached the new links).
pub fn load(layout: &Layout, object: &[u8], rules: usize) -> Result<Ebpf, DataplaneError> {
    if object.is_empty() {
        return Err(DataplaneError::NoObject);
    }
    let maps_dir = layout.pin_root.join("maps");
    fs::create_dir_all(&maps_dir).map_err(io_err("create", &maps_dir))?;
    check_layout(layout)?;
    capacity::remove_stale(layout)?;
    let sizing = capacity::sizing(capacity::pinned_rule_capacity(layout)?, rules)?;
    let mut loader = EbpfLoader::new();
    let grow = matches!(sizing, Sizing::Grow { .. });
    let names: Vec<(&str, PathBuf)> = KERNEL_MAPS
        .iter()
        .chain([MAP_SOCK_STATE].iter())
        .chain(XDP_MAPS.iter())
        .map(|n| {
            let path = if grow && capacity::SIZED.contains(n) {
                capacity::grown_pin(layout, n)
            } else {
                layout.map_pin(n)
            };
            (*n, path)
        })
        .collect();
    for (name, path) in &names {
        loader.map_pin_path(name, path.as_path());
    }
    // Ignored for a map reused from its pin.
    let entries = 2 * sizing.capacity();
    loader.map_max_entries(MAP_RULES, entries);
    loader.map_max_entries(MAP_RULE_STATS, entries);
    let mut ebpf = loader
        .load(object)
        .map_err(|e| DataplaneError::Load(Box::new(e)))?;
    if let Sizing::Grow { from, to } = sizing {
        capacity::copy_into_grown(layout, from, to)?;
        if !layout.is_attached() {
            capacity::commit(layout)?;
        }
        tracing::info!(
            from,
            to,
            "the rule maps grow: the policy has more rules than the pinned ones hold"
        );
    }
    for a in &ATTACHMENTS {
        load_program(&mut ebpf, a)?;
    }
    // The DNS answer path and query judge are not attached: the ingress
    // and egress programs tail-call them through the pinned program arrays
    // (whose entries live as long as their pins).
    load_tail_call(&mut ebpf, PROG_DNS_IN, MAP_DNSIN_PROGS)?;
    load_tail_call(&mut ebpf, PROG_DNS, MAP_DNS_PROGS)?;
    load_tail_call(&mut ebpf, PROG_DNS_QUERY, MAP_DNSQ_PROGS)?;
    // Loaded whether or not the config turns the backstop on, so that a
    // kernel that refuses them fails the start like any other program.
    crate::kernel::backstop::load_programs(&mut ebpf)?;
    crate::kernel::xdp::load_program(&mut ebpf)?;
    // A config created just now is all zeros: audit mode, generation 0.
    let mut maps = Maps::open(layout)?;
    if maps.config()?.layout == 0 {
        maps.set_config_field(ConfigField::Layout, LAYOUT_VERSION);
    }
    Ok(ebpf)
}

/// Loads the cgroup_skb program `prog` and puts it at index 0 of the
/// program array `map`, from which another program tail-calls it.
fn load_tail_call(
    ebpf: &mut Ebpf,
    prog: &'static str,
    map: &'static str,
) -> Result<(), DataplaneError> {
    let p = ebpf.program_mut(prog).ok_or_else(|| missing(prog))?;
    let p = <&mut CgroupSkb>::try_from(p).map_err(prog_err(prog))?;
    p.load().map_err(prog_err(prog))?;
    let fd = p
        .fd()
        .map_err(prog_err(prog))?
        .try_clone()
        .map_err(|e| DataplaneError::Io {
            op: "dup the fd of",
            path: prog.into(),
            source: e,
        })?;
    let progs = ebpf.map_mut(map).ok_or_else(|| missing(map))?;
    let mut progs = ProgramArray::try_from(progs).map_err(map_err(map))?;
    progs.set(0, &fd, 0).map_err(map_err(map))
}

fn check_layout(layout: &Layout) -> Result<(), DataplaneError> {
    let path = layout.map_pin(MAP_CONFIG);
    if !path.exists() {
        return Ok(());
    }
    let data = MapData::from_pin(&path).map_err(map_err(MAP_CONFIG))?;
    let arr: Array<MapData, KernelConfig> =
        Array::try_from(aya::maps::Map::Array(data)).map_err(map_err(MAP_CONFIG))?;
    let cfg = arr.get(&0, 0).map_err(map_err(MAP_CONFIG))?;
    if cfg.layout != 0 && cfg.layout != LAYOUT_VERSION {
        return Err(DataplaneError::Layout {
            root: layout.pin_root.clone(),
            found: cfg.layout,
            expected: LAYOUT_VERSION,
        });
    }
    Ok(())
}

pub fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut CgroupSkb, DataplaneError> {
    ebpf.program_mut(name)
        .ok_or(DataplaneError::Program {
            name,
            source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
        })?
        .try_into()
        .map_err(|e| DataplaneError::Program {
            name,
            source: Box::new(e),
        })
}
