//! Free TCP ports that parallel test processes do not hand out twice.

use std::collections::hash_map::RandomState;
use std::fs::OpenOptions;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Ports come from below the kernel's ephemeral range (32768 and up), so
/// outgoing connections never occupy them.
const FIRST_PORT: u16 = 20000;
const PORT_COUNT: u16 = 12000;

/// A TCP port on 127.0.0.1 that nothing listens on and that no other live
/// test process (nextest runs each test in a process of its own) has been
/// given: each port handed out is recorded in a file holding the owner's
/// pid, under `$TMPDIR/tidepool-test-ports/`. Records of dead processes are
/// reclaimed.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// [`free_port`] on the IP address `ip` (such as `127.0.0.2`: Linux
/// routes all of 127.0.0.0/8 to the loopback interface).
pub fn free_port_on(ip: &str) -> u16 {
    free_port_on_all(&[ip])
}

/// [`free_port`] on every IP address of `ips` at once: a port that each of
/// them can bind, as for servers on distinct loopback addresses sharing one
/// port (Aurora instances do).
pub fn free_port_on_all(ips: &[&str]) -> u16 {
    let dir = std::env::temp_dir().join("tidepool-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    for _ in 0..10_000 {
        let port = FIRST_PORT + (random() % u64::from(PORT_COUNT)) as u16;
        if !reserve(&dir, port) {
            continue;
        }
        // Held together, then closed together.
        let bound: Result<Vec<TcpListener>, _> = ips
            .iter()
            .map(|ip| TcpListener::bind((*ip, port)))
            .collect();
        if bound.is_ok() {
            return port;
        }
    }
    panic!(
        "no free TCP port found in {FIRST_PORT}..{}",
        FIRST_PORT + PORT_COUNT
    );
}

fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish()
}

/// Records `port` as ours; false when a live process holds it already.
fn reserve(dir: &Path, port: u16) -> bool {
    let path: PathBuf = dir.join(port.to_string());
    for _ in 0..2 {
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut file) => {
                let _ = write!(file, "{}", std::process::id());
                return true;
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = std::fs::read_to_string(&path).unwrap_or_default();
                let alive = match owner.trim().parse::<u32>() {
                    Ok(pid) => Path::new(&format!("/proc/{pid}")).exists(),
                    // Being written right now by its owner.
                    Err(_) => true,
                };
                if alive {
                    return false;
                }
                let _ = std::fs::remove_file(&path);
            }
            Err(_) => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let ports: HashSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50);
        for port in ports {
            TcpListener::bind(("127.0.0.1", port)).unwrap();
        }
    }

    #[test]
    fn a_port_free_on_several_addresses_binds_on_each() {
        let ips = ["127.0.0.2", "127.0.0.3"];
        let port = free_port_on_all(&ips);
        let _held: Vec<TcpListener> = ips
            .iter()
            .map(|ip| TcpListener::bind((*ip, port)).unwrap())
            .collect();
        let other = free_port_on("127.0.0.2");
        assert_ne!(other, port);
        TcpListener::bind(("127.0.0.2", other)).unwrap();
    }
}
