//! The few bpf(2) commands the agent issues itself, where aya 0.14 has no
//! call for them (each caller says why). One place for the raw syscall,
//! its `bpf_attr` prefixes and their SAFETY arguments.
//!
//! Command numbers and attribute layouts: `enum bpf_cmd` and `union
//! bpf_attr` in include/uapi/linux/bpf.h
//! (<https://github.com/torvalds/linux/blob/master/include/uapi/linux/bpf.h>).

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_DETACH: libc::c_long = 34;

/// bpf(2) with `attr` as the attribute prefix of `cmd`.
///
/// # Safety
/// `attr` must be a valid `bpf_attr` prefix for `cmd`: every pointer in it
/// valid for what the kernel reads (and writes) through it during the call.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    let size = u32::try_from(std::mem::size_of::<T>()).map_err(io::Error::other)?;
    // SAFETY: the caller vouches for `attr`; `size` is its exact size.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// A file descriptor bpf(2) just returned, owned from now on.
fn new_fd(rc: libc::c_long) -> io::Result<OwnedFd> {
    let raw = RawFd::try_from(rc).map_err(io::Error::other)?;
    // SAFETY: a new fd the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn c_path(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt as _;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// `bpf_attr` of BPF_OBJ_PIN and BPF_OBJ_GET.
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

fn fd_u32(fd: RawFd) -> io::Result<u32> {
    u32::try_from(fd).map_err(io::Error::other)
}

/// BPF_OBJ_GET: opens the object pinned at `path` (in bpffs).
pub(crate) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: a valid bpf_attr prefix for BPF_OBJ_GET; the kernel reads the
    // NUL-terminated path, which outlives the call.
    new_fd(unsafe { bpf(BPF_OBJ_GET, &mut attr) }?)
}

/// BPF_OBJ_PIN of `fd` at `path` (in bpffs).
pub(crate) fn obj_pin(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd_u32(fd.as_raw_fd())?,
        file_flags: 0,
    };
    // SAFETY: a valid bpf_attr prefix for BPF_OBJ_PIN; the kernel reads the
    // NUL-terminated path, which outlives the call.
    unsafe { bpf(BPF_OBJ_PIN, &mut attr) }.map(drop)
}

/// BPF_LINK_CREATE (Linux 5.7) of a program on a target fd.
pub(crate) fn link_create(
    prog_fd: RawFd,
    target_fd: RawFd,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_fd: u32,
        attach_type: u32,
        flags: u32,
        _rest: [u64; 4],
    }
    let mut attr = LinkCreate {
        prog_fd: fd_u32(prog_fd)?,
        target_fd: fd_u32(target_fd)?,
        attach_type,
        flags: 0,
        _rest: [0; 4],
    };
    // SAFETY: a zero-padded bpf_attr prefix for BPF_LINK_CREATE; the
    // kernel only reads it.
    new_fd(unsafe { bpf(BPF_LINK_CREATE, &mut attr) }?)
}

/// BPF_LINK_DETACH (Linux 5.9) of the link `fd`.
pub(crate) fn link_detach(fd: &OwnedFd) -> io::Result<()> {
    #[repr(C)]
    struct LinkDetach {
        link_fd: u32,
    }
    let mut attr = LinkDetach {
        link_fd: fd_u32(fd.as_raw_fd())?,
    };
    // SAFETY: a valid bpf_attr prefix for BPF_LINK_DETACH.
    unsafe { bpf(BPF_LINK_DETACH, &mut attr) }.map(drop)
}

/// BPF_PROG_TEST_RUN of the program `prog_fd` once or `repeat` times on
/// `data` with the context `ctx`. Returns (return value, average duration
/// in ns).
pub(crate) fn prog_test_run(
    prog_fd: RawFd,
    data: &[u8],
    ctx: &[u8],
    repeat: u32,
) -> io::Result<(u32, u32)> {
    #[repr(C)]
    #[derive(Default)]
    struct TestRunAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    let mut attr = TestRunAttr {
        prog_fd: fd_u32(prog_fd)?,
        data_size_in: u32::try_from(data.len()).map_err(io::Error::other)?,
        data_in: data.as_ptr() as u64,
        repeat,
        ctx_size_in: u32::try_from(ctx.len()).map_err(io::Error::other)?,
        ctx_in: ctx.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix for this command; the kernel
    // reads data_in/ctx_in within the sizes given and writes only attr.
    unsafe { bpf(BPF_PROG_TEST_RUN, &mut attr) }?;
    Ok((attr.retval, attr.duration))
}
