//! A network namespace of the owner's own.

use std::{fs, os::fd::AsRawFd as _, path::PathBuf};

use crate::{
    io_err, must,
    names::unique,
    shell::{try_sh, try_sh_input},
    Error, Result,
};

/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A network namespace, deleted on drop (with its interfaces and any
/// iptables/nftables rules inside it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn try_new(tag: &str) -> Result<Self> {
        let name = unique(tag);
        try_sh(&["ip", "netns", "add", &name])?;
        let ns = Self { name };
        ns.try_ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn new(tag: &str) -> Self {
        must(Self::try_new(tag))
    }

    /// `ip -n <ns> <args>`.
    pub fn try_ip(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        try_sh(&v)
    }

    /// [`Self::try_ip`] for a test.
    pub fn ip(&self, args: &[&str]) -> String {
        must(self.try_ip(args))
    }

    /// `ip netns exec <ns> <args>`.
    pub fn try_exec(&self, args: &[&str]) -> Result<String> {
        try_sh(&self.exec_args(args))
    }

    /// `ip netns exec <ns> <args>` with `input` on standard input.
    pub fn try_exec_input(&self, args: &[&str], input: &str) -> Result<String> {
        try_sh_input(&self.exec_args(args), input)
    }

    fn exec_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        v
    }

    /// The ifindex of an interface inside the namespace.
    pub fn try_ifindex(&self, dev: &str) -> Result<u32> {
        let out = self.try_ip(&["-o", "link", "show", dev])?;
        out.split(':')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| Error::NoIfindex {
                dev: dev.to_owned(),
                netns: self.name.clone(),
                output: out.clone(),
            })
    }

    /// [`Self::try_ifindex`] for a test.
    pub fn ifindex(&self, dev: &str) -> u32 {
        must(self.try_ifindex(dev))
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Moves the calling thread into the namespace until the returned guard
    /// drops.
    pub fn try_enter(&self) -> Result<NetnsEntered> {
        let original =
            fs::File::open("/proc/thread-self/ns/net").map_err(io_err("open own netns"))?;
        let target = fs::File::open(self.path())
            .map_err(io_err(format!("open {}", self.path().display())))?;
        // SAFETY: setns on valid namespace fds; affects only this thread.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io_err(format!("setns into {}", self.name))(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(NetnsEntered { original })
    }

    /// [`Self::try_enter`] for a test.
    pub fn enter(&self) -> NetnsEntered {
        must(self.try_enter())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = try_sh(&["ip", "netns", "del", &self.name]);
    }
}

/// The calling thread inside a [`Netns`]; back in its own on drop.
pub struct NetnsEntered {
    original: fs::File,
}

impl Drop for NetnsEntered {
    fn drop(&mut self) {
        // SAFETY: as in try_enter(): a valid namespace fd, this thread only.
        unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}
