//! The parts of the dataplane that need no kernel: the object's
//! fingerprint, where things are pinned, the attach record, the test-run
//! input and the error messages. The map writers' pure parts are tested in
//! `maps/tests.rs`.

use std::{io, path::Path};

use super::{
    attach::Kind,
    capacity::{sizing, Sizing},
    object_hash,
    pins::bpffs_mounted,
    test_run::{duration_ns, into_io, skb_test_input},
    AttachRecord, DataplaneError, Layout, ATTACHMENTS,
};
use sdm_common::{PROG_EGRESS, PROG_INGRESS, PROG_SENDMSG6};

fn layout_in(dir: &Path) -> Layout {
    Layout {
        pin_root: dir.join("pins"),
        run_dir: dir.join("run"),
    }
}

#[test]
fn object_hash_is_fnv_1a_64() {
    // Published FNV-1a 64 test vectors: the hash in attach records of
    // earlier agents must not change, or every restart would re-attach.
    assert_eq!(object_hash(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(object_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(object_hash(b"foobar"), 0x8594_4171_f739_67e8);
    assert_ne!(object_hash(b"ab"), object_hash(b"ba"));
}

#[test]
fn layout_paths() {
    let l = Layout::default();
    assert_eq!(l.pin_root, Path::new("/sys/fs/bpf/sdm"));
    assert_eq!(l.run_dir, Path::new("/run/sdm-agent"));
    assert_eq!(
        l.map_pin("SDM_CONFIG"),
        Path::new("/sys/fs/bpf/sdm/maps/SDM_CONFIG")
    );
    assert_eq!(
        l.link_pin("egress"),
        Path::new("/sys/fs/bpf/sdm/links/egress")
    );
    assert_eq!(l.attach_record(), Path::new("/run/sdm-agent/attach.json"));
}

#[test]
fn is_attached_once_any_link_is_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout_in(dir.path());
    assert!(!l.is_attached());
    std::fs::create_dir_all(l.pin_root.join("links")).unwrap();
    std::fs::write(l.link_pin("sendmsg6"), b"").unwrap();
    assert!(l.is_attached());
}

#[test]
fn attachments_put_the_packet_filters_first_and_pin_each_once() {
    assert_eq!(ATTACHMENTS[0].program, PROG_EGRESS);
    assert!(matches!(ATTACHMENTS[0].kind, Kind::Skb(_)));
    assert_eq!(ATTACHMENTS[1].program, PROG_INGRESS);
    // tests/targets.rs waits for the last link pinned: sendmsg6.
    assert_eq!(ATTACHMENTS[ATTACHMENTS.len() - 1].program, PROG_SENDMSG6);
    let pins: std::collections::BTreeSet<&str> = ATTACHMENTS.iter().map(|a| a.pin).collect();
    assert_eq!(pins.len(), ATTACHMENTS.len(), "a pin name used twice");
    assert!(
        ATTACHMENTS.iter().all(|a| !a.pin.contains('.')),
        "bpffs refuses names with dots"
    );
}

#[test]
fn bpffs_is_found_only_at_its_mount_point_with_its_type() {
    let mounts = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,relatime 0 0\n";
    assert!(bpffs_mounted(mounts));
    assert!(!bpffs_mounted("sysfs /sys sysfs rw 0 0\n"));
    assert!(!bpffs_mounted("bpf /mnt/bpf bpf rw 0 0\n"));
    assert!(!bpffs_mounted("tmpfs /sys/fs/bpf tmpfs rw 0 0\n"));
    assert!(!bpffs_mounted("bpf /sys/fs/bpf\n"));
}

#[test]
fn attach_record_of_an_older_agent_reads_with_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout_in(dir.path());
    assert_eq!(AttachRecord::read(&l), None, "no record yet");
    std::fs::create_dir_all(&l.run_dir).unwrap();
    std::fs::write(
        l.attach_record(),
        r#"{"cgroup":"/sys/fs/cgroup/app","object_hash":7,"pid":42}"#,
    )
    .unwrap();
    let r = AttachRecord::read(&l).unwrap();
    assert_eq!(r.cgroup, Path::new("/sys/fs/cgroup/app"));
    assert_eq!((r.cgroup_id, r.object_hash, r.pid), (0, 7, 42));
    assert!(r.backstop.is_empty());
    std::fs::write(l.attach_record(), "not json").unwrap();
    assert_eq!(AttachRecord::read(&l), None, "a torn record reads as none");
}

#[test]
fn attach_record_round_trips_and_set_backstop_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout_in(dir.path());
    let r = AttachRecord {
        cgroup: "/sys/fs/cgroup/app".into(),
        cgroup_id: 99,
        object_hash: 0xfeed,
        pid: 7,
        backstop: vec![],
    };
    r.write(&l).unwrap();
    assert_eq!(AttachRecord::read(&l).as_ref(), Some(&r));
    assert!(
        !l.attach_record().with_extension("json.tmp").exists(),
        "written through a renamed temporary"
    );
    AttachRecord::set_backstop(&l, vec!["eth0".into()]).unwrap();
    let after = AttachRecord::read(&l).unwrap();
    assert_eq!(after.backstop, vec!["eth0".to_string()]);
    assert_eq!(
        AttachRecord {
            backstop: vec![],
            ..after
        },
        r
    );
}

#[test]
fn a_record_runs_only_the_same_object_on_the_same_cgroup() {
    let r = AttachRecord {
        cgroup: "/sys/fs/cgroup/app".into(),
        cgroup_id: 5,
        object_hash: 9,
        pid: 1,
        backstop: vec![],
    };
    let cg = Path::new("/sys/fs/cgroup/app");
    assert!(r.runs(cg, 5, 9));
    assert!(!r.runs(cg, 6, 9), "a re-created cgroup at the same path");
    assert!(!r.runs(cg, 5, 10), "another object");
    assert!(!r.runs(Path::new("/sys/fs/cgroup/other"), 5, 9));
}

#[test]
fn test_run_input_frames_the_packet_and_sets_only_the_ifindex() {
    let v4 = [0x45u8, 0, 0, 20];
    let (data, ctx) = skb_test_input(&v4, 7);
    assert_eq!(data.len(), 14 + v4.len());
    assert_eq!(&data[..6], &[0x02, 0, 0, 0, 0, 1], "destination MAC");
    assert_eq!(&data[6..12], &[0x02, 0, 0, 0, 0, 2], "source MAC");
    assert_eq!(&data[12..14], &[0x08, 0x00], "IPv4 ethertype");
    assert_eq!(&data[14..], &v4);
    assert_eq!(ctx.len(), 192, "sizeof(struct __sk_buff)");
    assert_eq!(&ctx[40..44], &7u32.to_ne_bytes(), "__sk_buff.ifindex");
    assert!(ctx[..40].iter().chain(&ctx[44..]).all(|b| *b == 0));

    let (data, _) = skb_test_input(&[0x60, 0, 0, 0], 1);
    assert_eq!(&data[12..14], &[0x86, 0xdd], "IPv6 ethertype");
    let (data, _) = skb_test_input(&[], 1);
    assert_eq!(data.len(), 14);
    assert_eq!(&data[12..14], &[0x08, 0x00]);
}

#[test]
fn test_run_results_keep_the_kernels_numbers() {
    use std::time::Duration;
    assert_eq!(duration_ns(Duration::from_nanos(1234)), 1234);
    assert_eq!(
        duration_ns(Duration::from_nanos(u64::from(u32::MAX))),
        u32::MAX
    );
    let e = into_io(aya::programs::ProgramError::SyscallError(
        aya::sys::SyscallError {
            call: "bpf_prog_test_run",
            io_error: io::Error::from_raw_os_error(libc::EPERM),
        },
    ));
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "the errno stays");
    let e = into_io(aya::programs::ProgramError::NotLoaded);
    assert_eq!(e.kind(), io::ErrorKind::Other);
}

#[test]
fn error_messages_say_what_to_do() {
    let e = DataplaneError::Layout {
        root: "/sys/fs/bpf/sdm".into(),
        found: 3,
        expected: 7,
    };
    let m = e.to_string();
    assert!(m.contains("/sys/fs/bpf/sdm") && m.contains("layout 3") && m.contains("uses 7"));
    assert!(m.contains("sdm-agent detach"), "{m}");
    let m = DataplaneError::NotAttached("/p".into()).to_string();
    assert!(
        m.contains("nothing is pinned under /p") && m.contains("sdm-agent run"),
        "{m}"
    );
    let m = DataplaneError::RuleCapacity {
        rules: 5000,
        capacity: 4096,
    }
    .to_string();
    assert!(
        m.contains("5000 rules, more than the 4096 the pinned rule maps hold")
            && m.contains("restart the agent"),
        "{m}"
    );
    let m = DataplaneError::NoObject.to_string();
    assert!(
        m.contains("AYA_BUILD_SKIP=1") && m.contains("cargo xtask build"),
        "{m}"
    );
    let m = DataplaneError::Capacity(crate::kernel::entries::Overflow {
        what: "exact IPv4",
        need: 10,
        max: 4,
    })
    .to_string();
    assert!(m.ends_with("; nothing was written"), "{m}");
    assert!(
        m.contains("needs 10 exact IPv4 entries") && m.contains("the 4 the kernel"),
        "{m}"
    );
    let m = DataplaneError::Io {
        op: "create",
        path: "/x".into(),
        source: io::Error::from_raw_os_error(libc::EACCES),
    }
    .to_string();
    assert!(m.starts_with("create /x: "), "{m}");
}

#[test]
fn rule_maps_are_sized_from_the_policy_and_grow_only_when_short() {
    // Nothing pinned: sized for the policy, with headroom.
    assert_eq!(sizing(None, 10).unwrap(), Sizing::Create(1024));
    assert_eq!(sizing(None, 12_006).unwrap(), Sizing::Create(24_576));
    // Pinned maps that hold the policy are kept, whatever their size.
    assert_eq!(sizing(Some(1024), 1024).unwrap(), Sizing::Keep(1024));
    assert_eq!(sizing(Some(32_768), 10).unwrap(), Sizing::Keep(32_768));
    // Short ones grow to the policy's size.
    let g = sizing(Some(1024), 1025).unwrap();
    assert_eq!(
        g,
        Sizing::Grow {
            from: 1024,
            to: 3072
        }
    );
    assert_eq!(g.capacity(), 3072);
    // Past the ceiling: refused, with the numbers.
    let ceiling = sdm_common::RULE_CEILING as usize;
    let e = sizing(None, ceiling + 1).unwrap_err().to_string();
    assert!(
        e.contains(&format!("{} rules, more than the {ceiling}", ceiling + 1)),
        "{e}"
    );
    assert!(sizing(Some(1024), usize::MAX).is_err());
}
