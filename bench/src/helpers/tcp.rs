//! Figure 7's helpers: a TCP server that answers one small request per
//! connection, and a client that opens short connections (or connect()s
//! that must be refused) from several namespaces and cgroups in turn.

use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::json;

/// The request and the response: 64 bytes each.
pub const MSG: usize = 64;
/// Bound on every blocking connect() and read (SO_SNDTIMEO, SO_RCVTIMEO).
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Accepts connections one at a time on each address: reads a request of
/// [`MSG`] bytes, writes it back, then waits for the client to close
/// (the client aborts with RST, so neither side keeps a TIME_WAIT socket).
/// Exits after `max_secs`.
pub fn tcp_serve(binds: &[SocketAddr], max_secs: u64) -> Result<()> {
    let mut listeners = Vec::new();
    for addr in binds {
        listeners.push(TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?);
    }
    thread::spawn(move || {
        thread::sleep(Duration::from_secs(max_secs));
        std::process::exit(0);
    });
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|l| thread::spawn(move || serve(&l)))
        .collect();
    println!("ready");
    io::stdout().flush()?;
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn serve(listener: &TcpListener) {
    let mut buf = [0u8; MSG];
    while let Ok((mut s, _)) = listener.accept() {
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        if s.read_exact(&mut buf).is_ok() && s.write_all(&buf).is_ok() {
            // Until the client's RST (or FIN): one byte more never comes.
            let _ = s.read(&mut buf);
        }
    }
}

/// What one arm of [`tcp_crr_multi`] does per attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// connect, write a request, read the response, close (RST).
    Connect,
    /// connect() must fail with EPERM (refused by the sock_addr hook).
    Eperm,
    /// connect() must fail with ECONNREFUSED (the server's RST).
    Refused,
}

/// One arm: sockets made inside a namespace and a cgroup, to one address.
#[derive(Clone, Debug)]
pub struct CrrArm {
    pub netns: PathBuf,
    pub cgroup: PathBuf,
    pub to: SocketAddrV4,
    pub mode: Mode,
}

impl std::str::FromStr for CrrArm {
    type Err = String;
    /// `<netns file>,<cgroup dir>,<ip:port>,<connect|eperm|refused>`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(',').collect();
        let [ns, cg, to, mode] = parts.as_slice() else {
            return Err(format!("{s:?}: expected <netns>,<cgroup>,<ip:port>,<mode>"));
        };
        let mode = match *mode {
            "connect" => Mode::Connect,
            "eperm" => Mode::Eperm,
            "refused" => Mode::Refused,
            other => return Err(format!("{other:?}: mode is connect, eperm or refused")),
        };
        Ok(Self {
            netns: ns.into(),
            cgroup: cg.into(),
            to: to.parse().map_err(|e| format!("{to:?}: {e}"))?,
            mode,
        })
    }
}

impl std::fmt::Display for CrrArm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.mode {
            Mode::Connect => "connect",
            Mode::Eperm => "eperm",
            Mode::Refused => "refused",
        };
        write!(
            f,
            "{},{},{},{mode}",
            self.netns.display(),
            self.cgroup.display(),
            self.to
        )
    }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a valid T for the duration of the call and its
    // size is passed with it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::from_ref(value).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A blocking TCP socket whose connect() and reads give up after
/// [`IO_TIMEOUT`], and the result of connect() to `to`.
fn connect(to: SocketAddrV4) -> io::Result<(OwnedFd, io::Result<()>)> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: IO_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // A blocking connect() gives up after SO_SNDTIMEO (with EINPROGRESS).
    setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv)?;
    setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a valid sockaddr_in and its size.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::from_ref(&sa).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    let result = if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    };
    Ok((fd, result))
}

/// One attempt of `arm`'s kind; an error if the outcome is not the one
/// the arm expects (an allowed connection failing, a refusal with another
/// errno or a timeout).
fn attempt(arm: &CrrArm) -> Result<()> {
    let (fd, connected) = connect(arm.to)?;
    let want = match arm.mode {
        Mode::Connect => {
            connected.with_context(|| format!("connect to {}", arm.to))?;
            let mut s = TcpStream::from(fd);
            let mut buf = [0x5au8; MSG];
            s.write_all(&buf).context("send the request")?;
            s.read_exact(&mut buf).context("read the response")?;
            // Abort on close (SO_LINGER 0): an RST, no TIME_WAIT, so that
            // thousands of connections a second never run out of ports.
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &linger)?;
            return Ok(());
        }
        Mode::Eperm => libc::EPERM,
        Mode::Refused => libc::ECONNREFUSED,
    };
    match connected {
        Err(e) if e.raw_os_error() == Some(want) => Ok(()),
        Err(e) => bail!(
            "connect to {}: expected {}, got {e}",
            arm.to,
            io::Error::from_raw_os_error(want)
        ),
        Ok(()) => bail!(
            "connect to {} succeeded; expected {}",
            arm.to,
            io::Error::from_raw_os_error(want)
        ),
    }
}

/// Moves this process into `arm`'s cgroup and this thread into its
/// namespace: sockets made afterwards belong to both (`sk_alloc` records
/// the creator's cgroup).
fn enter(arm: &CrrArm, pid: &str) -> Result<()> {
    std::fs::write(arm.cgroup.join("cgroup.procs"), pid)
        .with_context(|| format!("join {}", arm.cgroup.display()))?;
    let ns =
        std::fs::File::open(&arm.netns).with_context(|| format!("open {}", arm.netns.display()))?;
    // SAFETY: setns on a valid namespace fd, for this thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

/// Attempts per second of several arms, measured by one process in short
/// slices, round after round in a shuffled order (as `udp_rr_multi`), a
/// new socket per attempt. Before each slice the process joins the arm's
/// cgroup and namespace (not timed). Every attempt must end as its arm
/// expects. Prints `{"rates": [[per arm, in arm order] per round]}`.
pub fn tcp_crr_multi(arms: &[CrrArm], rounds: usize, slice_ms: u64, seed: u64) -> Result<()> {
    let pid = std::process::id().to_string();
    let mut rng = crate::stats::Rng::new(seed);
    let mut order: Vec<usize> = (0..arms.len()).collect();
    let slice = Duration::from_millis(slice_ms);
    let mut rates = Vec::with_capacity(rounds);
    // One round more than asked: the first warms caches up and is dropped.
    for round in 0..=rounds {
        rng.shuffle(&mut order);
        let mut row = vec![0.0f64; arms.len()];
        for &i in &order {
            enter(&arms[i], &pid)?;
            let mut n = 0u64;
            let start = Instant::now();
            while start.elapsed() < slice {
                attempt(&arms[i]).with_context(|| format!("arm {}", arms[i]))?;
                n += 1;
            }
            row[i] = n as f64 / start.elapsed().as_secs_f64();
        }
        if round > 0 {
            rates.push(row);
        }
    }
    println!("{}", json!({ "rates": rates }));
    Ok(())
}

#[cfg(test)]
mod tests;
