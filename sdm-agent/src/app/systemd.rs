//! The sd_notify(3) protocol, for a `Type=notify` service.

/// Tells systemd about the agent's state (`READY=1`, `STOPPING=1`) when it
/// runs as a `Type=notify` service: one datagram to $NOTIFY_SOCKET, the
/// protocol of sd_notify(3). Without NOTIFY_SOCKET it does nothing. A failure
/// is logged, not fatal: the policy is in force either way.
pub(super) fn notify_systemd(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = sd_notify(&socket, state) {
        tracing::warn!(socket = ?socket, error = %e, state, "cannot notify systemd");
    }
}

/// Sends `state` to the notification socket `socket`: a file system path,
/// or, with a leading '@', a name in the abstract namespace.
pub(super) fn sd_notify(socket: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::{
        linux::net::SocketAddrExt as _,
        unix::{
            ffi::OsStrExt as _,
            net::{SocketAddr, UnixDatagram},
        },
    };
    let addr = match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(socket)?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}
