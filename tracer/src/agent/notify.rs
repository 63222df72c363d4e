//! systemd's readiness protocol (`sd_notify`): datagrams to the socket
//! named by `$NOTIFY_SOCKET`, when the agent runs as a `Type=notify`
//! service; nothing otherwise.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tracing::debug;

/// Sends `state` (`READY=1`, `WATCHDOG=1`...) to systemd, if it listens.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        // A full queue at the receiver would block the send, and with it
        // the tracing loop: a message that cannot go now is dropped.
        socket.set_nonblocking(true)?;
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            // An abstract socket.
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            None => socket.send_to(state.as_bytes(), &path),
        }
    });
    if let Err(e) = sent {
        debug!("cannot notify systemd ({state:?}): {e}");
    }
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, when systemd
/// asks for pings (`WatchdogSec=`).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse() != Ok(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
