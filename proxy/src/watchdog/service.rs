//! The watchdog's I/O shell: one task owns the state machine and feeds it
//! ticks, heartbeats (UDP) and cluster messages (TCP), sends what it
//! asks, hands its escalation actions to an executor task that runs them
//! one at a time, and publishes its state on a `watch` channel.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use super::{
    core::{
        Action, Elector, Member, Millis, Msg, NodeId, Path, Settings, Standing, SwitchoverError,
    },
    escalate::{EscalateError, Escalator, Outcome, action_name},
    status::{AddressStatus, NodeStatus, WatchdogStatus},
    wire::{Codec, Envelope, MAX_FRAME, unix_ms},
};
use crate::{
    cluster::consensus::Consensus,
    config::{EscalationConfig, WatchdogConfig},
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read watchdog.shared_key_file: {0}")]
    Key(std::io::Error),
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("escalation: {0}")]
    Escalator(#[from] EscalateError),
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Switchover(#[from] SwitchoverError),
    #[error("the watchdog has stopped")]
    Stopped,
}

enum Request {
    Switchover {
        to: String,
        reply: oneshot::Sender<Result<(), SwitchoverError>>,
    },
}

/// A handle on the running watchdog, for the admin surface.
#[derive(Clone)]
pub struct Watchdog {
    status: watch::Receiver<Arc<WatchdogStatus>>,
    requests: mpsc::Sender<Request>,
}

impl Watchdog {
    pub fn status(&self) -> Arc<WatchdogStatus> {
        self.status.borrow().clone()
    }

    /// Planned switchover: leadership, then the address, move to `to`.
    pub async fn switchover(&self, to: &str) -> Result<(), RequestError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::Switchover {
                to: to.to_string(),
                reply,
            })
            .await
            .map_err(|_| RequestError::Stopped)?;
        Ok(rx.await.map_err(|_| RequestError::Stopped)??)
    }
}

struct PeerAddr {
    heartbeat: SocketAddr,
    tcp: mpsc::Sender<Vec<u8>>,
}

struct Done {
    action: Action,
    result: Result<Outcome, String>,
}

/// Binds the watchdog's sockets and starts it. The task ends after
/// `shutdown` turns true and a leader has handed over (bounded by the
/// election timeout plus the escalation action timeout).
pub async fn start(
    cfg: &WatchdogConfig,
    escalation: Option<&EscalationConfig>,
    healthy: Box<dyn Fn() -> bool + Send + Sync>,
    consensus: Option<Arc<Consensus>>,
    shutdown: watch::Receiver<bool>,
) -> Result<(Watchdog, JoinHandle<()>), StartError> {
    let key = cfg.key().map_err(StartError::Key)?;
    let udp = UdpSocket::bind(cfg.heartbeat_listen)
        .await
        .map_err(|source| StartError::Bind {
            key: "watchdog.heartbeat_listen",
            addr: cfg.heartbeat_listen,
            source,
        })?;
    let tcp = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| StartError::Bind {
            key: "watchdog.listen",
            addr: cfg.listen,
            source,
        })?;
    let escalator = Escalator::from_config(&cfg.node_name, escalation).await?;
    let esc = escalation.cloned().unwrap_or_default();

    let mut members = vec![Member {
        name: cfg.node_name.clone(),
        priority: cfg.priority,
    }];
    members.extend(cfg.peers.iter().map(|p| Member {
        name: p.name.clone(),
        priority: p.priority_hint(),
    }));
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let me = members
        .iter()
        .position(|m| m.name == cfg.node_name)
        .expect("self is a member");
    let ids: HashMap<String, NodeId> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name.clone(), i))
        .collect();
    let mut peers: HashMap<NodeId, PeerAddr> = HashMap::new();
    let mut writers = Vec::new();
    for p in &cfg.peers {
        let (tx, rx) = mpsc::channel(64);
        writers.push(tokio::spawn(tcp_writer(p.address, rx)));
        peers.insert(
            ids[&p.name],
            PeerAddr {
                heartbeat: p.heartbeat_addr(),
                tcp: tx,
            },
        );
    }

    let ms = |d: Duration| d.as_millis() as Millis;
    let settings = Settings {
        heartbeat_interval: ms(cfg.heartbeat_interval),
        election_timeout: ms(cfg.election_timeout),
        lease: ms(cfg.lease()),
        verify_interval: ms(esc.verify_interval),
        failback_after: ms(cfg.priority_failback_after),
        half_votes: cfg.half_votes,
    };
    let started = Instant::now();
    let started_unix = unix_ms(SystemTime::now());
    let node = Elector::new(me, members, settings, 0, rand::random());
    let codec = Codec::new(key, cfg.node_name.clone()).with_priority(cfg.priority);

    let (inbound_tx, inbound) = mpsc::channel(256);
    let rejected = Arc::new(AtomicU64::new(0));
    tokio::spawn(tcp_reader(tcp, codec.clone(), inbound_tx, rejected.clone()));
    let (actions, actions_rx) = mpsc::unbounded_channel();
    let (done_tx, done) = mpsc::unbounded_channel();
    let mode = escalator.mode().to_string();
    tokio::spawn(executor(escalator, esc.action_timeout, actions_rx, done_tx));

    let (requests, requests_rx) = mpsc::channel(8);
    let shell = Shell {
        node,
        codec,
        ids,
        peers,
        writers,
        udp,
        started,
        started_unix,
        tick: cfg.tick(),
        election_timeout: cfg.election_timeout + esc.action_timeout,
        healthy,
        consensus,
        actions,
        address: AddressStatus::default(),
        mode,
        rejected,
        status: watch::channel(Arc::new(placeholder(&cfg.node_name))).0,
    };
    let status = shell.status.subscribe();
    let task = tokio::spawn(shell.run(inbound, requests_rx, done, shutdown));
    Ok((Watchdog { status, requests }, task))
}

fn role_name(r: Standing) -> &'static str {
    match r {
        Standing::Follower => "follower",
        Standing::PreCandidate => "pre_candidate",
        Standing::Candidate => "candidate",
        Standing::Leader => "leader",
    }
}

fn placeholder(node: &str) -> WatchdogStatus {
    WatchdogStatus {
        node: node.to_string(),
        term: 0,
        role: Standing::Follower,
        leader: None,
        escalated: false,
        quorum: false,
        lease_remaining_ms: 0,
        address_mode: String::new(),
        address: AddressStatus::default(),
        nodes: Vec::new(),
        last_change_unix_ms: 0,
        rejected_frames: 0,
        backend_failures: Vec::new(),
    }
}

struct Shell {
    node: Elector,
    codec: Codec,
    ids: HashMap<String, NodeId>,
    peers: HashMap<NodeId, PeerAddr>,
    /// The peer links' tasks: each ends once its queue is sent and closed.
    writers: Vec<tokio::task::JoinHandle<()>>,
    udp: UdpSocket,
    started: Instant,
    started_unix: u64,
    tick: Duration,
    /// How long a stopping leader may take to hand over.
    election_timeout: Duration,
    healthy: Box<dyn Fn() -> bool + Send + Sync>,
    /// Backend views carried on heartbeats (see `cluster::consensus`).
    consensus: Option<Arc<Consensus>>,
    actions: mpsc::UnboundedSender<Action>,
    address: AddressStatus,
    mode: String,
    /// Frames refused, on either channel.
    rejected: Arc<AtomicU64>,
    status: watch::Sender<Arc<WatchdogStatus>>,
}

impl Shell {
    fn now(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }

    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Envelope>,
        mut requests: mpsc::Receiver<Request>,
        mut done: mpsc::UnboundedReceiver<Done>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; MAX_FRAME];
        let mut stop_by: Option<Instant> = None;
        tracing::info!(node = %self.codec_name(), "watchdog started");
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.node.set_healthy((self.healthy)());
                    let now = self.now();
                    self.node.tick(now);
                }
                r = self.udp.recv_from(&mut buf) => {
                    if let Ok((n, _)) = r {
                        match self.codec.decode(&buf[..n], SystemTime::now()) {
                            Ok(env) => self.deliver(env),
                            Err(e) => self.reject(e),
                        }
                    }
                }
                Some(env) = inbound.recv() => self.deliver(env),
                Some(Request::Switchover { to, reply }) = requests.recv() => {
                    let now = self.now();
                    let r = self.node.switchover(&to, now);
                    tracing::info!(to = %to, result = ?r, "switchover requested");
                    let _ = reply.send(r);
                }
                Some(d) = done.recv() => self.finished(d),
                r = shutdown.changed(), if stop_by.is_none() => {
                    if r.is_err() || *shutdown.borrow() {
                        stop_by = Some(Instant::now() + self.election_timeout);
                        self.hand_over();
                    }
                }
            }
            self.flush();
            if let Some(deadline) = stop_by {
                let idle = !self.node.escalated() && self.node.role() != Standing::Leader;
                if idle || Instant::now() >= deadline {
                    break;
                }
            }
        }
        if self.node.escalated() {
            // No successor took over in time: let go anyway.
            let term = self.node.term();
            let _ = self.actions.send(Action::DeEscalate { term });
            let _ = tokio::time::timeout(self.election_timeout, done.recv()).await;
        }
        // What is queued for the peers goes out before the process ends:
        // the vote that completes the hand-over is the last message sent.
        self.peers.clear();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        for w in std::mem::take(&mut self.writers) {
            let _ = tokio::time::timeout_at(deadline, w).await;
        }
        tracing::info!("watchdog stopped");
    }

    fn codec_name(&self) -> String {
        self.node.members()[self.node.id()].name.clone()
    }

    /// On shutdown a leader hands over to the best reachable peer.
    fn hand_over(&mut self) {
        if self.node.role() != Standing::Leader {
            return;
        }
        let now = self.now();
        let best = (0..self.node.members().len())
            .filter(|&i| i != self.node.id())
            .filter(|&i| {
                self.node
                    .last_seen(i)
                    .is_some_and(|s| now.saturating_sub(s) < 1_000)
            })
            .max_by_key(|&i| self.node.members()[i].priority);
        if let Some(to) = best {
            let name = self.node.members()[to].name.clone();
            tracing::info!(to = %name, "shutting down: handing leadership over");
            let _ = self.node.switchover(&name, now);
        }
    }

    fn reject(&mut self, e: super::wire::WireError) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(error = %e, "watchdog frame refused");
    }

    fn deliver(&mut self, env: Envelope) {
        let Some(&from) = self.ids.get(&env.from) else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(from = %env.from, "watchdog frame from a node not in the configuration");
            return;
        };
        let now = self.now();
        tracing::trace!(from = %env.from, msg = ?env.msg, term = self.node.term(), role = ?self.node.role(), "watchdog message in");
        self.node.set_priority(from, env.priority);
        for (name, priority) in &env.relayed {
            if let Some(&i) = self.ids.get(name)
                && i != self.node.id()
                && i != from
                && priority > &0
            {
                self.node.set_priority(i, *priority);
            }
        }
        self.node.step(from, env.msg, now);
        if let (Some(c), Some(view)) = (&self.consensus, env.backends) {
            c.received(&env.from, view, Instant::now());
        }
    }

    fn finished(&mut self, d: Done) {
        let now = self.now();
        let name = action_name(&d.action);
        match &d.result {
            Ok(o) => {
                tracing::info!(action = name, detail = %o.detail, "escalation action done");
                if o.holder.is_some() || matches!(d.action, Action::DeEscalate { .. }) {
                    self.address.holder = o.holder.clone();
                }
            }
            Err(e) => {
                tracing::error!(action = name, error = %e, "escalation action failed");
                if !matches!(d.action, Action::DeEscalate { .. }) {
                    self.node.action_failed(now);
                }
            }
        }
        self.address.last_action = Some(name.to_string());
        self.address.last_result = Some(match &d.result {
            Ok(o) => o.detail.clone(),
            Err(e) => format!("error: {e}"),
        });
        self.address.last_action_unix_ms = Some(unix_ms(SystemTime::now()));
        if matches!(d.action, Action::DeEscalate { .. }) {
            self.node.deescalated(now);
        }
    }

    fn flush(&mut self) {
        let ready = self.node.take_ready();
        let wall = SystemTime::now();
        for (to, msg) in ready.messages {
            let Some(peer) = self.peers.get(&to) else {
                continue;
            };
            let name = &self.node.members()[to].name;
            let udp = msg.path() == Path::Heartbeat;
            if !matches!(msg, Msg::Heartbeat { .. } | Msg::HeartbeatResp { .. }) {
                tracing::trace!(to = %name, msg = ?msg, "watchdog message out");
            }
            let relayed = if matches!(msg, Msg::Heartbeat { .. }) {
                self.node
                    .members()
                    .iter()
                    .map(|m| (m.name.clone(), m.priority))
                    .collect()
            } else {
                Vec::new()
            };
            // Heartbeats carry the leader's table, answers the follower's
            // failing backends.
            let backends = match (&self.consensus, &msg) {
                (Some(c), Msg::Heartbeat { .. } | Msg::HeartbeatResp { .. }) => Some(c.outgoing()),
                _ => None,
            };
            let frame = self.codec.encode_with(name, msg, relayed, backends, wall);
            if udp {
                let _ = self.udp.try_send_to(&frame, peer.heartbeat);
            } else if peer.tcp.try_send(frame).is_err() {
                tracing::debug!(to = %name, "watchdog TCP queue full; message dropped");
            }
        }
        for a in ready.actions {
            tracing::info!(
                action = action_name(&a),
                term = self.node.term(),
                "watchdog escalation"
            );
            let _ = self.actions.send(a);
        }
        self.publish();
    }

    fn publish(&self) {
        let now = self.now();
        let n = &self.node;
        let leader = n.leader();
        if let Some(c) = &self.consensus {
            let leading = n.role() == Standing::Leader && n.has_quorum(now);
            c.set_leadership(leading, leader.map(|l| n.members()[l].name.as_str()));
        }
        let nodes = n
            .members()
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let is_self = i == n.id();
                let seen = n.last_seen(i).map(|s| now.saturating_sub(s));
                // Three heartbeats (a tick is a quarter heartbeat).
                let recent = seen.is_some_and(|s| s < self.tick.as_millis() as u64 * 12);
                let state = match () {
                    _ if is_self => role_name(n.role()),
                    _ if leader == Some(i) && recent => "leader",
                    _ if recent => "follower",
                    // Followers do not talk to each other: only a leader
                    // (or a follower about its leader) can tell.
                    _ if n.role() == Standing::Leader || leader == Some(i) => "unreachable",
                    _ => "unknown",
                };
                NodeStatus {
                    name: m.name.clone(),
                    priority: m.priority,
                    state,
                    is_self,
                    last_seen_ms_ago: if is_self { None } else { seen },
                    healthy: if is_self {
                        Some((self.healthy)())
                    } else {
                        (n.role() == Standing::Leader).then(|| n.peer_healthy(i))
                    },
                }
            })
            .collect();
        let status = WatchdogStatus {
            node: n.members()[n.id()].name.clone(),
            term: n.term(),
            role: n.role(),
            leader: leader.map(|l| n.members()[l].name.clone()),
            escalated: n.escalated(),
            quorum: n.has_quorum(now),
            lease_remaining_ms: if n.role() == Standing::Leader {
                n.lease_until().saturating_sub(now)
            } else {
                0
            },
            address_mode: self.mode.clone(),
            address: self.address.clone(),
            nodes,
            last_change_unix_ms: self.started_unix + n.last_change(),
            rejected_frames: self.rejected.load(Ordering::Relaxed),
            backend_failures: self
                .consensus
                .as_ref()
                .map(|c| c.votes(Instant::now()))
                .unwrap_or_default(),
        };
        self.status.send_if_modified(|old| {
            if **old == status {
                false
            } else {
                *old = Arc::new(status);
                true
            }
        });
    }
}

/// Runs escalation actions one at a time, in order.
async fn executor(
    escalator: Escalator,
    timeout: Duration,
    mut actions: mpsc::UnboundedReceiver<Action>,
    done: mpsc::UnboundedSender<Done>,
) {
    while let Some(action) = actions.recv().await {
        let result = escalator
            .run(action, timeout)
            .await
            .map_err(|e| e.to_string());
        if done.send(Done { action, result }).is_err() {
            return;
        }
    }
}

/// Sends frames to one peer over a kept connection. The connection is
/// looked at before each write: a peer that restarted left it closed, and
/// the kernel would still take a write into it and lose it, so a closed
/// one is replaced first. A write that fails is sent once more, on a fresh
/// connection.
async fn tcp_writer(addr: SocketAddr, mut frames: mpsc::Receiver<Vec<u8>>) {
    const IO: Duration = Duration::from_millis(500);
    let mut conn: Option<TcpStream> = None;
    while let Some(frame) = frames.recv().await {
        let mut buf = (frame.len() as u32).to_be_bytes().to_vec();
        buf.extend_from_slice(&frame);
        for _ in 0..2 {
            if conn.as_ref().is_some_and(|c| !still_open(c)) {
                conn = None;
            }
            if conn.is_none() {
                conn = match tokio::time::timeout(IO, TcpStream::connect(addr)).await {
                    Ok(Ok(c)) => {
                        let _ = c.set_nodelay(true);
                        Some(c)
                    }
                    _ => break,
                };
            }
            let Some(c) = conn.as_mut() else { break };
            if matches!(
                tokio::time::timeout(IO, c.write_all(&buf)).await,
                Ok(Ok(()))
            ) {
                break;
            }
            conn = None;
        }
    }
}

/// Whether a connection the peer never writes to is still open: there is
/// nothing to read on it (its end, or a reset, means the peer closed it).
fn still_open(c: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    matches!(
        socket2::SockRef::from(c).peek(&mut byte),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    )
}

/// Accepts peers' connections and decodes their frames, for as long as
/// the watchdog runs: a stopping leader still takes the vote that ends its
/// hand-over, which its successor (restarted meanwhile, say) may send on a
/// new connection.
async fn tcp_reader(
    listener: TcpListener,
    codec: Codec,
    inbound: mpsc::Sender<Envelope>,
    rejected: Arc<AtomicU64>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((stream, _)) = r else { continue };
                tokio::spawn(read_frames(stream, codec.clone(), inbound.clone(), rejected.clone()));
            }
            _ = inbound.closed() => return,
        }
    }
}

async fn read_frames(
    mut stream: TcpStream,
    codec: Codec,
    inbound: mpsc::Sender<Envelope>,
    rejected: Arc<AtomicU64>,
) {
    let mut len = [0u8; 4];
    loop {
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_FRAME {
            return;
        }
        let mut frame = vec![0u8; n];
        if stream.read_exact(&mut frame).await.is_err() {
            return;
        }
        match codec.decode(&frame, SystemTime::now()) {
            Ok(env) => {
                if inbound.send(env).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                rejected.fetch_add(1, Ordering::Relaxed);
                // A stranger: stop listening to this connection.
                tracing::debug!(error = %e, "watchdog TCP frame refused");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_one(s: &mut TcpStream) -> Vec<u8> {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.unwrap();
        let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut frame).await.unwrap();
        frame
    }

    #[tokio::test]
    async fn a_frame_sent_after_the_peer_restarted_reaches_the_new_peer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(tcp_writer(addr, rx));
        tx.send(b"one".to_vec()).await.unwrap();
        let (mut s, _) = listener.accept().await.unwrap();
        assert_eq!(read_one(&mut s).await, b"one");
        // The peer restarts: its end of the connection and its listener
        // go, and a new process listens at the same address.
        drop(s);
        drop(listener);
        let listener = TcpListener::bind(addr).await.unwrap();
        tx.send(b"two".to_vec()).await.unwrap();
        let (mut s, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("the frame after the restart was written into the old connection and lost")
            .unwrap();
        assert_eq!(read_one(&mut s).await, b"two");
    }
}
