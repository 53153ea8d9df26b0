//! Whether a TCP socket has socket storage (`SDM_SOCK_STATE`), read
//! through the pinned map with the socket's own descriptor as the key.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData, SkStorage};
use sdm_common::SockState;
use serde_json::{json, Value};

use crate::{errname, ms, parse, tcp::read_line};

/// The outcome of `action` if it is one of this module's, else None.
pub fn run(action: &str, rest: &[String]) -> Option<Value> {
    let out = match action {
        "tcp-storage" => tcp_storage(
            Path::new(&parse::<String>("map pin", rest.first())),
            parse("address", rest.get(1)),
            parse("rounds", rest.get(2)),
        ),
        _ => return None,
    };
    Some(out)
}

/// Connects to a lab server at `addr` (which greets with "ok" and echoes
/// lines), and reports whether the socket has storage after the greeting
/// and again after `rounds` request/response exchanges.
fn tcp_storage(pin: &Path, addr: SocketAddr, rounds: u64) -> Value {
    let start = Instant::now();
    let map = match MapData::from_pin(pin) {
        Ok(data) => match SkStorage::<MapData, SockState>::try_from(Map::SkStorage(data)) {
            Ok(m) => m,
            Err(e) => return json!({"result": "map", "detail": e.to_string()}),
        },
        Err(e) => return json!({"result": "map", "detail": e.to_string()}),
    };
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(e) => {
            return json!({"result": errname(&e), "phase": "connect", "detail": e.to_string()})
        }
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if let Err(e) = read_line(&mut s) {
        return json!({"result": errname(&e), "phase": "greeting", "detail": e.to_string()});
    }
    let early = map.get(&s, 0).is_ok();
    for i in 0..rounds {
        let line = format!("ping {i}\n");
        let echoed = s
            .write_all(line.as_bytes())
            .and_then(|()| read_line(&mut s));
        match echoed {
            Ok(echo) if echo == line => {}
            Ok(echo) => return json!({"result": "bad-echo", "round": i, "detail": echo}),
            Err(e) => return json!({"result": errname(&e), "round": i, "detail": e.to_string()}),
        }
    }
    let late = map.get(&s, 0).is_ok();
    json!({"result": "ok", "early": early, "late": late, "ms": ms(start)})
}
