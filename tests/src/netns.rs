//! Network namespaces for watchdog tests: `n` node namespaces on one
//! bridge (in a namespace of its own), plus a link from the root namespace
//! so that the test reaches every node, and the nodes reach PostgreSQL
//! through [`Forwarder`]s on the root side's address. Partitions are made
//! by taking a node's port on the bridge down, one-way splits of one path
//! by an nftables rule in a node's namespace. Everything is deleted on
//! drop, also when the test panics.
//!
//! Addresses: `10.A.B.0/24` with A in 200..250 and B random per test; the
//! root side is `.1`, node `i` is `.(11 + i)`.

use std::{
    hash::{BuildHasher, RandomState},
    io,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Node namespaces on one bridge; see the module docs.
pub struct NetNs {
    tag: String,
    subnet: (u8, u8),
    nodes: usize,
    created: Vec<String>,
}

impl NetNs {
    /// Creates `nodes` namespaces joined by a bridge, and the root link.
    pub fn new(nodes: usize) -> Result<NetNs> {
        let r = RandomState::new().hash_one(std::process::id());
        let subnet = (200 + (r % 50) as u8, (r >> 8) as u8);
        let tag = format!("{:04x}", (r >> 16) & 0xffff);
        let mut net = NetNs {
            tag,
            subnet,
            nodes,
            created: Vec::new(),
        };
        net.build().inspect_err(|_| net.teardown())?;
        Ok(net)
    }

    fn ns(&self, i: usize) -> String {
        format!("tpw{}-n{i}", self.tag)
    }

    fn bridge_ns(&self) -> String {
        format!("tpw{}-br", self.tag)
    }

    /// The namespace node `i` runs in.
    pub fn namespace(&self, i: usize) -> String {
        self.ns(i)
    }

    /// `["ip", "netns", "exec", NS]`: a wrapper that runs a command in node `i`.
    pub fn wrapper(&self, i: usize) -> Vec<String> {
        ["ip", "netns", "exec"]
            .iter()
            .map(|s| s.to_string())
            .chain([self.ns(i)])
            .collect()
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet.0, self.subnet.1, 11 + i as u8)
    }

    /// The root namespace's address on the bridge.
    pub fn root_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet.0, self.subnet.1, 1)
    }

    fn port_name(&self, i: usize) -> String {
        format!("tw{}b{i}", self.tag)
    }

    fn build(&mut self) -> Result<()> {
        let br = self.bridge_ns();
        ip(&["netns", "add", &br])?;
        self.created.push(br.clone());
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        // Root link: "twTAGr" in the root namespace, "twTAGR" on the bridge.
        let root = format!("tw{}r", self.tag);
        let root_peer = format!("tw{}R", self.tag);
        ip(&[
            "link", "add", &root, "type", "veth", "peer", "name", &root_peer, "netns", &br,
        ])?;
        let cidr = format!("{}/24", self.root_addr());
        ip(&["addr", "add", &cidr, "dev", &root])?;
        ip(&["link", "set", &root, "up"])?;
        ip(&["-n", &br, "link", "set", &root_peer, "master", "br0", "up"])?;
        for i in 0..self.nodes {
            let ns = self.ns(i);
            ip(&["netns", "add", &ns])?;
            self.created.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let port = self.port_name(i);
            ip(&[
                "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"])?;
            let cidr = format!("{}/24", self.addr(i));
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// Cuts node `i` off from every other node (and from the root side).
    pub fn isolate(&self, i: usize) -> Result<()> {
        ip(&[
            "-n",
            &self.bridge_ns(),
            "link",
            "set",
            &self.port_name(i),
            "down",
        ])
    }

    /// Undoes [`isolate`](Self::isolate).
    pub fn reconnect(&self, i: usize) -> Result<()> {
        ip(&[
            "-n",
            &self.bridge_ns(),
            "link",
            "set",
            &self.port_name(i),
            "up",
        ])
    }

    /// Drops every UDP datagram to `port` arriving in node `i`'s namespace
    /// (a one-way split of that path: what node `i` sends still leaves).
    pub fn drop_udp_into(&self, i: usize, port: u16) -> Result<()> {
        self.nft(
            i,
            &format!(
                "add table inet tpsplit; \
                 add chain inet tpsplit input {{ type filter hook input priority 0; }}; \
                 add rule inet tpsplit input udp dport {port} drop"
            ),
        )
    }

    /// Undoes [`drop_udp_into`](Self::drop_udp_into).
    pub fn accept_udp_into(&self, i: usize) -> Result<()> {
        self.nft(i, "delete table inet tpsplit")
    }

    fn nft(&self, i: usize, script: &str) -> Result<()> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(i), "nft", script])
            .output()
            .context("running nft")?;
        if !out.status.success() {
            bail!(
                "nft {script}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn teardown(&mut self) {
        // Deleting a namespace deletes its veth ends, and with them the peers.
        for ns in self.created.drain(..).rev() {
            let _ = ip(&["netns", "del", &ns]);
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Forwards TCP connections from `listen` to `target` (e.g. from the
/// bridge address to a PostgreSQL on 127.0.0.1), one thread pair per
/// connection. Stops accepting on drop.
pub struct Forwarder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// While set, connections are closed as soon as they are accepted.
    blocked: Arc<AtomicBool>,
    /// The client side of every connection forwarded so far.
    live: Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Forwarder {
    pub fn start(listen: SocketAddr, target: SocketAddr) -> Result<Forwarder> {
        let listener =
            TcpListener::bind(listen).with_context(|| format!("forwarder on {listen}"))?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let blocked = Arc::new(AtomicBool::new(false));
        let live = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (is_blocked, conns) = (blocked.clone(), live.clone());
        thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        if is_blocked.load(Ordering::Relaxed) {
                            let _ = client.shutdown(std::net::Shutdown::Both);
                            continue;
                        }
                        let _ = client.set_nonblocking(false);
                        if let Ok(c) = client.try_clone() {
                            conns.lock().unwrap_or_else(|e| e.into_inner()).push(c);
                        }
                        thread::spawn(move || {
                            if let Ok(server) = TcpStream::connect(target) {
                                pipe(client, server);
                            }
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(Forwarder {
            addr,
            stop,
            blocked,
            live,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the path: open connections are closed and new ones refused
    /// until [`Forwarder::restore`].
    pub fn cut(&self) {
        self.blocked.store(true, Ordering::Relaxed);
        for c in self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.blocked.store(false, Ordering::Relaxed);
    }
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let one = thread::spawn(move || copy(a, b2));
    copy(b, a2);
    let _ = one.join();
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
