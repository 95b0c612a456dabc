//! The AMQP side: listener, connections, sessions and links, on fe2o3-amqp's acceptors.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerSessionHandle, SaslAnonymousMechanism, SessionAcceptor,
    SupportedReceiverSettleModes,
};
use fe2o3_amqp::link::delivery::Sendable;
use fe2o3_amqp::link::{DetachError, SendError};
use fe2o3_amqp::{Receiver, Sender};
use fe2o3_amqp_types::definitions::{self, AmqpError, LinkError, ReceiverSettleMode, Role, SenderSettleMode};
use fe2o3_amqp_types::messaging::annotations::OwnedKey;
use fe2o3_amqp_types::messaging::message::DecodeIntoMessage;
use fe2o3_amqp_types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageAnnotations, Properties, Source, Target, TargetArchetype,
};
use fe2o3_amqp_types::performatives::Attach;
use fe2o3_amqp_types::primitives::{Array, OrderedMap, SimpleValue, Symbol, Timestamp, Value};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout, timeout_at};

use crate::filter;
use crate::quickack::QuickAck;
use crate::store::{Event, Hub, OwnerGuard, Partition, Store};
use crate::wire::FixedStream;

/// Message format of an Event Hubs batch: one data section per encoded event.
const BATCH_FORMAT: u32 = 0x8001_3700;
/// pyamqp copies the MSS it reads back onto its own socket, and the loopback default (32768
/// here) is refused there with EINVAL; accepted sockets inherit this from the listener.
const LISTENER_MSS: u32 = 16384;
/// How long a request waits for its reply link to attach.
const REPLY_LINK_WAIT: Duration = Duration::from_secs(10);
/// How long a request waits for a reply link on its own session before taking one elsewhere.
const REPLY_ELSEWHERE_AFTER: Duration = Duration::from_secs(1);
/// How long we wait for a peer to answer a detach, end or close.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long we hold back the disposition of a message a client sent.
///
/// fe2o3 (the Rust client's AMQP stack) records a sent delivery as unsettled only after the
/// transfer went to its session task. On loopback a disposition can come back before that: the
/// client then drops it and waits forever for the outcome (`send_batch`, or the put-token before
/// opening a link, hangs; seen about once in ten test runs). A real service is never this fast.
const DISPOSITION_DELAY: Duration = Duration::from_millis(2);
/// How long we hold back our answer to a detach the client started.
///
/// The Rust client drops its put-token session without waiting: it sends a detach per link, then
/// `end`. An answering detach that reaches it before its `end` went out names a link it already
/// forgot; it ends the session with `unattached-handle` and then closes the whole connection
/// ("Session is not found"), failing whatever was using it (9 of 20 runs of the reader test
/// failed so on this machine, 0 of 20 with the delay). Over a network the answer comes after
/// the `end`, and after an `end` fe2o3 answers no detach at all.
const DETACH_ANSWER_DELAY: Duration = Duration::from_millis(20);
/// Events read from a partition per lock.
const READ_CHUNK: usize = 128;

type Acceptor = LinkAcceptor<fn(Source) -> Option<Source>, fn(Target) -> Option<Target>>;

/// How a session answers attaches, by direction.
#[derive(Debug)]
struct Acceptors {
    /// For links on which we send (the client's receivers and reply links).
    outgoing: Acceptor,
    /// For links on which we receive (the client's senders and request links).
    incoming: Acceptor,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by the listener and every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) max_message_size: u64,
    presettle: bool,
    /// A second handle on each client socket, to cut it from outside.
    conns: Mutex<HashMap<u64, std::net::TcpStream>>,
    next_conn: AtomicU64,
    shutdown: watch::Sender<bool>,
}

impl Shared {
    pub(crate) fn new(store: Store, max_message_size: u64, presettle: bool) -> Self {
        Self {
            store,
            max_message_size,
            presettle,
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            shutdown: watch::channel(false).0,
        }
    }

    pub(crate) fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
        self.drop_connections();
    }

    fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub(crate) fn drop_connections(&self) {
        let conns = lock(&self.conns);
        tracing::info!(connections = conns.len(), "dropping client connections");
        for socket in conns.values() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

/// Resolves once shutdown has begun.
async fn shutting_down(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Binds the listener, with the MSS pyamqp can live with.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if let Err(error) = socket.set_tcp_mss(LISTENER_MSS) {
        tracing::warn!(%error, "cannot set TCP_MAXSEG on the listener; the Python client may fail to connect");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Accepts connections until shutdown, then closes them and waits for their tasks.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tasks.spawn(connection(stream, peer, Arc::clone(&shared)));
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    // e.g. out of file descriptors: give it a moment rather than spin
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            () = shutting_down(&mut shutdown) => break,
        }
    }
    drop(listener);
    shared.drop_connections();
    let drained = timeout(CLOSE_WAIT, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            remaining = tasks.len(),
            "connections still open after shutdown; aborting them"
        );
        tasks.shutdown().await;
    }
}

/// Unregisters a connection's socket when its task ends.
struct ConnGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        lock(&self.shared.conns).remove(&self.id);
    }
}

/// Per-connection state: where `$cbs` / `$management` replies go.
#[derive(Debug)]
struct ConnCtx {
    shared: Arc<Shared>,
    routes: Mutex<Vec<Route>>,
    routes_changed: Notify,
    next_route: AtomicU64,
    next_session: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Cbs,
    Management,
}

#[derive(Debug)]
struct Route {
    id: u64,
    /// The session the reply link is on.
    session: u64,
    service: Service,
    /// The target address of the client's receiving link (what `reply-to` names).
    address: Option<String>,
    tx: mpsc::UnboundedSender<Message<Body<Value>>>,
}

impl ConnCtx {
    fn add_route(
        &self,
        session: u64,
        service: Service,
        address: Option<String>,
        tx: mpsc::UnboundedSender<Message<Body<Value>>>,
    ) -> u64 {
        let id = self.next_route.fetch_add(1, Ordering::Relaxed);
        lock(&self.routes).push(Route {
            id,
            session,
            service,
            address,
            tx,
        });
        self.routes_changed.notify_waiters();
        id
    }

    fn remove_route(&self, id: u64) {
        lock(&self.routes).retain(|r| r.id != id);
    }

    /// The reply link for a request: on the request's session, the one whose target is
    /// `reply_to`, else the one on that node. With `anywhere`, links on other sessions of the
    /// connection count too (a client may keep its reply link on another session).
    fn find_route(
        &self,
        session: u64,
        service: Service,
        reply_to: Option<&str>,
        anywhere: bool,
    ) -> Option<mpsc::UnboundedSender<Message<Body<Value>>>> {
        let routes = lock(&self.routes);
        let named = |r: &&Route| reply_to.is_some() && r.address.as_deref() == reply_to;
        let on_node = |r: &&Route| r.service == service;
        let here = |r: &&Route| anywhere || r.session == session;
        let found = routes.iter().rev().find(|r| named(r) && here(r));
        found
            .or_else(|| routes.iter().rev().find(|r| on_node(r) && here(r)))
            .map(|r| r.tx.clone())
    }

    /// Sends a reply on its reply link (see [`ConnCtx::find_route`]; Python sends no `reply-to`).
    ///
    /// The Rust client opens a session per put-token, attaches its request and reply links and
    /// sends at once, so the request can be read before the reply link is attached; and every
    /// such session replies to `rust_amqp_cbs`, so a reply link of the same name on an older
    /// session (about to close) must not take the reply. Hence: wait for the link on the
    /// request's session, and only after [`REPLY_ELSEWHERE_AFTER`] look at other sessions.
    async fn reply(&self, session: u64, service: Service, reply_to: Option<&str>, message: Message<Body<Value>>) {
        let start = Instant::now();
        let elsewhere = start + REPLY_ELSEWHERE_AFTER;
        let deadline = start + REPLY_LINK_WAIT;
        loop {
            let notified = self.routes_changed.notified();
            let anywhere = Instant::now() >= elsewhere;
            if let Some(tx) = self.find_route(session, service, reply_to, anywhere) {
                let _ = tx.send(message);
                return;
            }
            let wake = if anywhere { deadline } else { elsewhere };
            if timeout_at(wake, notified).await.is_err() && wake == deadline {
                tracing::warn!(?service, ?reply_to, "no reply link attached; dropping the reply");
                return;
            }
        }
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    let stream = match register(&shared, id, stream) {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(%error, %peer, "cannot register connection");
            return;
        }
    };
    let _guard = ConnGuard {
        shared: Arc::clone(&shared),
        id,
    };
    if shared.is_shutting_down() {
        return;
    }
    tracing::debug!(%peer, id, "connection accepted");
    let acceptor = ConnectionAcceptor::builder()
        .container_id("defender-emulator")
        .channel_max(1023u16)
        .sasl_acceptor(SaslAnonymousMechanism::new())
        .build();
    let mut conn = match acceptor.accept(FixedStream::new(QuickAck(stream))).await {
        Ok(c) => c,
        Err(error) => {
            tracing::debug!(%error, %peer, "connection not opened");
            return;
        }
    };
    let ctx = Arc::new(ConnCtx {
        shared: Arc::clone(&shared),
        routes: Mutex::new(Vec::new()),
        routes_changed: Notify::new(),
        next_route: AtomicU64::new(1),
        next_session: AtomicU64::new(1),
    });
    let session_acceptor = SessionAcceptor::builder().handle_max(65535u32).build();
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            incoming = conn.next_incoming_session() => {
                let Some(incoming) = incoming else { break };
                match session_acceptor.accept_incoming_session(incoming, &mut conn).await {
                    Ok(session) => {
                        tokio::spawn(session_task(session, Arc::clone(&ctx)));
                    }
                    Err(error) => {
                        tracing::debug!(%error, "session not accepted");
                        break;
                    }
                }
            }
            () = shutting_down(&mut shutdown) => break,
        }
    }
    let closed = timeout(CLOSE_WAIT, conn.close()).await;
    tracing::debug!(%peer, id, ?closed, "connection closed");
}

/// Keeps a second handle on the socket (for [`Shared::drop_connections`]).
fn register(shared: &Shared, id: u64, stream: TcpStream) -> io::Result<TcpStream> {
    let std_stream = stream.into_std()?;
    let handle = std_stream.try_clone()?;
    lock(&shared.conns).insert(id, handle);
    TcpStream::from_std(std_stream)
}

async fn session_task(mut session: ListenerSessionHandle, ctx: Arc<ConnCtx>) {
    let acceptors = Acceptors {
        // Links where the client receives. No max-message-size here: fe2o3 cuts a message above
        // its *own* link's limit into transfers that each take a new delivery-id, which the
        // client refuses ("Field is inconsistent in multi-frame delivery"). Frame-level
        // splitting, which is correct, still applies.
        outgoing: LinkAcceptor::builder()
            .supported_receiver_settle_modes(SupportedReceiverSettleModes::First)
            .fallback_receiver_settle_mode(ReceiverSettleMode::First)
            .build(),
        // Links where the client sends. The Rust producer needs max-message-size in our attach
        // (`create_batch` fails without it). Python senders ask for receiver settle mode Second;
        // agreeing makes pyamqp wait forever on `send_batch`, so First only.
        incoming: LinkAcceptor::builder()
            .max_message_size(ctx.shared.max_message_size)
            .supported_receiver_settle_modes(SupportedReceiverSettleModes::First)
            .fallback_receiver_settle_mode(ReceiverSettleMode::First)
            .build(),
    };
    let session_id = ctx.next_session.fetch_add(1, Ordering::Relaxed);
    let mut names = LinkNames::default();
    while let Some(attach) = session.next_incoming_attach().await {
        names.wait_until_free(&attach.name).await;
        let guard = names.register(&attach.name);
        on_attach(attach, &mut session, session_id, &acceptors, &ctx, guard).await;
    }
    let _ = timeout(CLOSE_WAIT, session.end()).await;
}

/// The names of a session's links whose tasks still run.
///
/// A client may detach a link and attach a new one with the same name right away (the Rust
/// client does while recovering). fe2o3 frees a name only once our side of the detach went out;
/// an attach that comes before that is a duplicate name, and fe2o3 then ends the whole session.
/// So an attach waits for the previous link of that name to finish.
#[derive(Debug, Default)]
struct LinkNames(HashMap<String, watch::Receiver<()>>);

/// Held by a link's task; dropping it frees the name.
#[derive(Debug)]
struct LinkGuard(#[allow(dead_code)] watch::Sender<()>);

impl LinkNames {
    async fn wait_until_free(&mut self, name: &str) {
        self.0.retain(|_, done| done.has_changed().is_ok());
        let Some(mut done) = self.0.remove(name) else { return };
        if timeout(CLOSE_WAIT, done.changed()).await.is_err() {
            tracing::warn!(link = %name, "previous link of that name still open");
        }
        // Our detach is queued to the session engine; let it run before the new attach.
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
    }

    fn register(&mut self, name: &str) -> LinkGuard {
        let (tx, rx) = watch::channel(());
        self.0.insert(name.to_owned(), rx);
        LinkGuard(tx)
    }
}

/// Runs a link's task, holding its name until it ends.
fn spawn_link(guard: LinkGuard, task: impl Future<Output = ()> + Send + 'static) {
    tokio::spawn(async move {
        task.await;
        drop(guard);
    });
}

/// What a link address names.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Service(Service),
    /// A consumer: `<hub>/ConsumerGroups/<group>/Partitions/<id>`.
    Reader {
        hub: String,
        group: String,
        partition: String,
    },
    /// A producer: `<hub>` or `<hub>/Partitions/<id>`.
    Writer {
        hub: String,
        partition: Option<String>,
    },
    Unknown,
}

/// Classifies an address, ignoring scheme and host (`amqps://host[:port]/path` or a bare path).
fn classify(address: Option<&str>) -> Node {
    let Some(address) = address else { return Node::Unknown };
    let path = match address.find("://") {
        Some(i) => address[i + 3..].split_once('/').map_or("", |(_, p)| p),
        None => address,
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    let segments: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(percent_decode).collect();
    let is = |s: &String, word: &str| s.eq_ignore_ascii_case(word);
    match segments.as_slice() {
        [.., last] if is(last, "$cbs") => Node::Service(Service::Cbs),
        [.., last] if is(last, "$management") => Node::Service(Service::Management),
        [hub, cg, group, p, id] if is(cg, "ConsumerGroups") && is(p, "Partitions") => Node::Reader {
            hub: hub.clone(),
            group: group.clone(),
            partition: id.clone(),
        },
        [hub] => Node::Writer {
            hub: hub.clone(),
            partition: None,
        },
        [hub, p, id] if is(p, "Partitions") => Node::Writer {
            hub: hub.clone(),
            partition: Some(id.clone()),
        },
        _ => Node::Unknown,
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_owned())
}

fn source_address(attach: &Attach) -> Option<&str> {
    attach.source.as_ref().and_then(|s| s.address.as_deref())
}

fn target_address(attach: &Attach) -> Option<&str> {
    match attach.target.as_deref() {
        Some(TargetArchetype::Target(t)) => t.address.as_deref(),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

fn amqp_error(condition: impl Into<definitions::ErrorCondition>, description: impl Into<String>) -> definitions::Error {
    definitions::Error::new(condition, Some(description.into()), None)
}

async fn on_attach(
    attach: Attach,
    session: &mut ListenerSessionHandle,
    session_id: u64,
    acceptors: &Acceptors,
    ctx: &Arc<ConnCtx>,
    guard: LinkGuard,
) {
    let name = attach.name.clone();
    match attach.role {
        // The client receives: we send.
        Role::Receiver => {
            let node = classify(source_address(&attach));
            let reply_address = target_address(&attach).map(str::to_owned);
            let presettle = ctx.shared.presettle && attach.snd_settle_mode != SenderSettleMode::Unsettled;
            let reader = match &node {
                Node::Reader { hub, group, partition } => {
                    Some(prepare_reader(&ctx.shared, hub, group, partition, &attach))
                }
                _ => None,
            };
            let Some(sender) = accept_sender(&acceptors.outgoing, attach, session).await else {
                return;
            };
            match (node, reader) {
                (Node::Service(service), _) => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let route = ctx.add_route(session_id, service, reply_address, tx);
                    tracing::debug!(link = %name, ?service, "reply link attached");
                    spawn_link(guard, reply_link(sender, rx, Arc::clone(ctx), route));
                }
                (_, Some(Ok(reader))) => {
                    tracing::debug!(link = %name, partition = %reader.partition.id, start = ?reader.index, "receiver attached");
                    spawn_link(guard, reader_link(sender, reader, presettle, Arc::clone(&ctx.shared)));
                }
                (_, Some(Err(error))) => {
                    tracing::debug!(link = %name, ?error, "receiver refused");
                    spawn_link(guard, async move {
                        let _ = timeout(CLOSE_WAIT, sender.close_with_error(error)).await;
                    });
                }
                (node, None) => {
                    let error = amqp_error(AmqpError::NotFound, format!("no such source: {node:?}"));
                    spawn_link(guard, async move {
                        let _ = timeout(CLOSE_WAIT, sender.close_with_error(error)).await;
                    });
                }
            }
        }
        // The client sends: we receive.
        Role::Sender => {
            let node = classify(target_address(&attach));
            let Some(receiver) = accept_receiver(&acceptors.incoming, attach, session).await else {
                return;
            };
            match node {
                Node::Service(service) => {
                    spawn_link(guard, request_link(receiver, session_id, service, Arc::clone(ctx)));
                }
                Node::Writer { hub, partition } => match writer_target(&ctx.shared.store, &hub, partition.as_deref()) {
                    Ok((hub, partition)) => {
                        tracing::debug!(link = %name, hub = %hub.name, ?partition, "sender attached");
                        spawn_link(guard, writer_link(receiver, hub, partition, Arc::clone(&ctx.shared)));
                    }
                    Err(error) => {
                        spawn_link(guard, async move {
                            let _ = timeout(CLOSE_WAIT, receiver.close_with_error(error)).await;
                        });
                    }
                },
                node => {
                    let error = amqp_error(AmqpError::NotFound, format!("no such target: {node:?}"));
                    spawn_link(guard, async move {
                        let _ = timeout(CLOSE_WAIT, receiver.close_with_error(error)).await;
                    });
                }
            }
        }
    }
}

async fn accept_sender(acceptor: &Acceptor, attach: Attach, session: &mut ListenerSessionHandle) -> Option<Sender> {
    match acceptor.accept_incoming_attach(attach, session).await {
        Ok(LinkEndpoint::Sender(sender)) => Some(sender),
        Ok(LinkEndpoint::Receiver(_)) => None,
        Err(error) => {
            tracing::debug!(%error, "link not attached");
            None
        }
    }
}

async fn accept_receiver(acceptor: &Acceptor, attach: Attach, session: &mut ListenerSessionHandle) -> Option<Receiver> {
    match acceptor.accept_incoming_attach(attach, session).await {
        Ok(LinkEndpoint::Receiver(receiver)) => Some(receiver),
        Ok(LinkEndpoint::Sender(_)) => None,
        Err(error) => {
            tracing::debug!(%error, "link not attached");
            None
        }
    }
}

/// Answers a detach the peer started (fe2o3's `on_detach` does not).
async fn answer_detach(sender: Sender, error: DetachError) {
    tokio::time::sleep(DETACH_ANSWER_DELAY).await;
    match error {
        DetachError::ClosedByRemote => {
            let _ = timeout(CLOSE_WAIT, sender.close()).await;
        }
        DetachError::DetachedByRemote => {
            let _ = timeout(CLOSE_WAIT, sender.detach()).await;
        }
        _ => {}
    }
}

/// Sends without waiting for the outcome: pre-settled when `presettle`, else unsettled with the
/// outcome left to arrive whenever it does.
async fn send_message(sender: &mut Sender, sendable: Sendable<&Body<Value>>, presettle: bool) -> Result<(), SendError> {
    if presettle {
        sender.send(sendable).await.map(drop)
    } else {
        sender.send_batchable(sendable).await.map(drop)
    }
}

// ---------------------------------------------------------------------------------------------
// Consumers

/// A receiver link's reading state, settled before the attach is answered.
#[derive(Debug)]
struct Reader {
    partition: Arc<Partition>,
    index: usize,
    _owner: OwnerGuard,
    stolen: oneshot::Receiver<String>,
}

fn prepare_reader(
    shared: &Shared,
    hub: &str,
    group: &str,
    partition: &str,
    attach: &Attach,
) -> Result<Reader, definitions::Error> {
    let hub = shared.store.hub(hub).ok_or_else(|| {
        amqp_error(
            AmqpError::NotFound,
            format!("The messaging entity '{hub}' could not be found."),
        )
    })?;
    let (index, partition) = hub.partition(partition).ok_or_else(|| {
        amqp_error(
            AmqpError::NotFound,
            format!(
                "The partition '{partition}' of event hub '{}' could not be found.",
                hub.name
            ),
        )
    })?;
    let start = filter::start_at(attach.source.as_deref()).map_err(|e| amqp_error(AmqpError::InvalidField, e))?;
    let epoch = attach
        .properties
        .as_ref()
        .and_then(|p| p.get("com.microsoft:epoch"))
        .and_then(|v| match v {
            Value::Long(x) => Some(*x),
            Value::Int(x) => Some(i64::from(*x)),
            Value::Uint(x) => Some(i64::from(*x)),
            Value::Ulong(x) => i64::try_from(*x).ok(),
            _ => None,
        });
    let (owner, stolen) = hub
        .register_reader(group, index, epoch)
        .map_err(|reason| amqp_error(LinkError::Stolen, reason))?;
    let first = partition.start_index(&start);
    Ok(Reader {
        partition: Arc::clone(partition),
        index: first,
        _owner: owner,
        stolen,
    })
}

/// The message a receiver gets for a stored event: the event plus the service's annotations.
fn delivery(event: &Event, presettle: bool) -> Sendable<&Body<Value>> {
    let mut annotations = event
        .message
        .message_annotations
        .as_ref()
        .map(|a| a.0.clone())
        .unwrap_or_default();
    annotations.insert(
        OwnedKey::Symbol(Symbol::from("x-opt-sequence-number")),
        Value::Long(event.sequence_number),
    );
    annotations.insert(
        OwnedKey::Symbol(Symbol::from("x-opt-offset")),
        Value::String(event.offset.to_string()),
    );
    annotations.insert(
        OwnedKey::Symbol(Symbol::from("x-opt-enqueued-time")),
        Value::Timestamp(Timestamp::from_milliseconds(event.enqueued_ms)),
    );
    let message = Message {
        header: None,
        delivery_annotations: None,
        message_annotations: Some(MessageAnnotations(annotations)),
        properties: event.message.properties.clone(),
        application_properties: event.message.application_properties.clone(),
        body: &event.message.body,
        footer: None,
    };
    Sendable {
        message,
        message_format: 0,
        settled: presettle.then_some(true),
    }
}

async fn reader_link(mut sender: Sender, mut reader: Reader, presettle: bool, shared: Arc<Shared>) {
    let mut count = reader.partition.watch();
    let mut shutdown = shared.shutdown.subscribe();
    let mut batch = Vec::with_capacity(READ_CHUNK);
    loop {
        count.borrow_and_update();
        batch.clear();
        reader.partition.read(reader.index, READ_CHUNK, &mut batch);
        if batch.is_empty() {
            tokio::select! {
                changed = count.changed() => if changed.is_err() { return },
                reason = &mut reader.stolen => {
                    steal(sender, reason.unwrap_or_default()).await;
                    return;
                }
                error = sender.on_detach() => {
                    answer_detach(sender, error).await;
                    return;
                }
                () = shutting_down(&mut shutdown) => return,
            }
            continue;
        }
        for event in &batch {
            tokio::select! {
                biased;
                reason = &mut reader.stolen => {
                    steal(sender, reason.unwrap_or_default()).await;
                    return;
                }
                sent = send_message(&mut sender, delivery(event, presettle), presettle) => match sent {
                    Ok(()) => reader.index += 1,
                    Err(error) => {
                        tracing::debug!(%error, partition = %reader.partition.id, "receiver link ended");
                        return;
                    }
                },
            }
        }
    }
}

async fn steal(sender: Sender, reason: String) {
    tracing::debug!(%reason, "receiver stolen");
    let _ = timeout(
        CLOSE_WAIT,
        sender.close_with_error(amqp_error(LinkError::Stolen, reason)),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Producers

fn writer_target(
    store: &Store,
    hub: &str,
    partition: Option<&str>,
) -> Result<(Arc<Hub>, Option<usize>), definitions::Error> {
    let hub = store.hub(hub).ok_or_else(|| {
        amqp_error(
            AmqpError::NotFound,
            format!("The messaging entity '{hub}' could not be found."),
        )
    })?;
    let partition = match partition {
        Some(id) => Some(hub.partition(id).map(|(i, _)| i).ok_or_else(|| {
            amqp_error(
                AmqpError::NotFound,
                format!("The partition '{id}' of event hub '{}' could not be found.", hub.name),
            )
        })?),
        None => None,
    };
    Ok((Arc::clone(hub), partition))
}

fn annotation_str<'a>(message: &'a Message<Body<Value>>, key: &str) -> Option<&'a str> {
    match message
        .message_annotations
        .as_ref()?
        .0
        .get(&OwnedKey::Symbol(Symbol::from(key)))?
    {
        Value::String(s) => Some(s),
        Value::Symbol(s) => Some(s.as_str()),
        _ => None,
    }
}

/// Keeps what the service keeps of a sent message.
fn clean(message: &mut Message<Body<Value>>) {
    message.header = None;
    message.delivery_annotations = None;
    message.footer = None;
    if let Some(annotations) = &mut message.message_annotations {
        for key in ["x-opt-sequence-number", "x-opt-offset", "x-opt-enqueued-time"] {
            annotations.0.swap_remove(&OwnedKey::Symbol(Symbol::from(key)));
        }
        if annotations.0.is_empty() {
            message.message_annotations = None;
        }
    }
}

fn body_size(message: &Message<Body<Value>>) -> u64 {
    match &message.body {
        Body::Data(sections) => sections.iter().map(|d| d.0.len() as u64).sum(),
        _ => 0,
    }
}

/// Stores one delivery (an event or a batch) on one partition.
fn ingest(
    hub: &Hub,
    partition: Option<usize>,
    format: u32,
    message: Message<Body<Value>>,
    max: u64,
) -> Result<(), definitions::Error> {
    let size = body_size(&message);
    if size > max {
        return Err(amqp_error(
            LinkError::MessageSizeExceeded,
            format!("The received message ({size} bytes) exceeds the limit ({max} bytes)."),
        ));
    }
    let key = annotation_str(&message, "x-opt-partition-key").map(str::to_owned);
    let mut events = if format == BATCH_FORMAT {
        let Body::Data(sections) = message.body else {
            return Err(amqp_error(AmqpError::DecodeError, "a batch must be data sections"));
        };
        sections
            .into_iter()
            .map(|section| {
                Body::<Value>::decode_message_from_reader(serde_amqp::read::SliceReader::new(&section.0))
                    .map_err(|e| amqp_error(AmqpError::DecodeError, format!("bad event in batch: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?
    } else {
        vec![message]
    };
    events.iter_mut().for_each(clean);
    let index = partition.unwrap_or_else(|| hub.pick_partition(key.as_deref()));
    hub.partitions[index]
        .append(events)
        .map_err(|e| amqp_error(AmqpError::InternalError, e.to_string()))
}

async fn writer_link(mut receiver: Receiver, hub: Arc<Hub>, partition: Option<usize>, shared: Arc<Shared>) {
    loop {
        let delivery = match receiver.recv::<Body<Value>>().await {
            Ok(d) => d,
            Err(error) => {
                tracing::debug!(%error, hub = %hub.name, "sender link ended");
                // Dropping the receiver answers the detach.
                tokio::time::sleep(DETACH_ANSWER_DELAY).await;
                return;
            }
        };
        let format = delivery.message_format().unwrap_or(0);
        let (info, message) = delivery.into_parts();
        tokio::time::sleep(DISPOSITION_DELAY).await;
        let outcome = if shared.store.is_closed() {
            Err(amqp_error(AmqpError::IllegalState, "the emulator is shutting down"))
        } else {
            ingest(&hub, partition, format, message, shared.max_message_size)
        };
        let disposed = match outcome {
            Ok(()) => receiver.accept(info).await,
            Err(error) => {
                tracing::debug!(?error, hub = %hub.name, "event refused");
                receiver.reject(info, error).await
            }
        };
        if let Err(error) = disposed {
            tracing::debug!(%error, "disposition not sent");
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// $cbs and $management

async fn reply_link(
    mut sender: Sender,
    mut rx: mpsc::UnboundedReceiver<Message<Body<Value>>>,
    ctx: Arc<ConnCtx>,
    route: u64,
) {
    loop {
        tokio::select! {
            message = rx.recv() => {
                let Some(message) = message else { break };
                let Message { header, delivery_annotations, message_annotations, properties, application_properties, body, footer } = message;
                let sendable = Sendable {
                    message: Message { header, delivery_annotations, message_annotations, properties, application_properties, body: &body, footer },
                    message_format: 0,
                    settled: None,
                };
                if let Err(error) = send_message(&mut sender, sendable, false).await {
                    tracing::debug!(%error, "reply link ended");
                    break;
                }
            }
            error = sender.on_detach() => {
                ctx.remove_route(route);
                answer_detach(sender, error).await;
                return;
            }
        }
    }
    ctx.remove_route(route);
}

async fn request_link(mut receiver: Receiver, session: u64, service: Service, ctx: Arc<ConnCtx>) {
    loop {
        let delivery = match receiver.recv::<Body<Value>>().await {
            Ok(d) => d,
            Err(error) => {
                tracing::debug!(%error, ?service, "request link ended");
                // Dropping the receiver answers the detach.
                tokio::time::sleep(DETACH_ANSWER_DELAY).await;
                return;
            }
        };
        let (info, request) = delivery.into_parts();
        tokio::time::sleep(DISPOSITION_DELAY).await;
        if let Err(error) = receiver.accept(info).await {
            tracing::debug!(%error, "disposition not sent");
            return;
        }
        let reply = match service {
            Service::Cbs => cbs_reply(&request),
            Service::Management => management_reply(&request, &ctx.shared.store),
        };
        let reply_to = request.properties.as_ref().and_then(|p| p.reply_to.clone());
        ctx.reply(session, service, reply_to.as_deref(), reply).await;
    }
}

fn app_property<'a>(message: &'a Message<Body<Value>>, key: &str) -> Option<&'a str> {
    match message.application_properties.as_ref()?.0.get(key)? {
        SimpleValue::String(s) => Some(s),
        SimpleValue::Symbol(s) => Some(s.as_str()),
        _ => None,
    }
}

fn response(request: &Message<Body<Value>>, status: i32, description: &str, body: Value) -> Message<Body<Value>> {
    let mut properties = Properties::builder().build();
    properties.correlation_id = request.properties.as_ref().and_then(|p| p.message_id.clone());
    let mut application = OrderedMap::new();
    application.insert("status-code".to_owned(), SimpleValue::Int(status));
    application.insert(
        "status-description".to_owned(),
        SimpleValue::String(description.to_owned()),
    );
    Message {
        header: None,
        delivery_annotations: None,
        message_annotations: None,
        properties: Some(properties),
        application_properties: Some(ApplicationProperties(application)),
        body: Body::Value(AmqpValue(body)),
        footer: None,
    }
}

/// Any token is accepted. The Rust client takes only 202.
fn cbs_reply(request: &Message<Body<Value>>) -> Message<Body<Value>> {
    match app_property(request, "operation") {
        Some("put-token") => response(request, 202, "Accepted", Value::Null),
        other => response(request, 400, &format!("unsupported operation {other:?}"), Value::Null),
    }
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::String(k.to_owned()), v))
            .collect(),
    )
}

fn management_reply(request: &Message<Body<Value>>, store: &Store) -> Message<Body<Value>> {
    let operation = app_property(request, "operation");
    let kind = app_property(request, "type");
    let Some(name) = app_property(request, "name") else {
        return response(request, 400, "missing `name`", Value::Null);
    };
    if operation != Some("READ") {
        return response(
            request,
            400,
            &format!("unsupported operation {operation:?}"),
            Value::Null,
        );
    }
    let Some(hub) = store.hub(name) else {
        return response(
            request,
            404,
            &format!("The messaging entity '{name}' could not be found."),
            Value::Null,
        );
    };
    match kind {
        Some("com.microsoft:eventhub") => {
            let ids: Vec<Value> = hub.partitions.iter().map(|p| Value::String(p.id.clone())).collect();
            let body = map(vec![
                ("name", Value::String(hub.name.clone())),
                ("type", Value::String("com.microsoft:eventhub".into())),
                (
                    "created_at",
                    Value::Timestamp(Timestamp::from_milliseconds(hub.created_ms)),
                ),
                (
                    "partition_count",
                    Value::Int(i32::try_from(hub.partitions.len()).unwrap_or(i32::MAX)),
                ),
                ("partition_ids", Value::Array(Array::from(ids))),
            ]);
            response(request, 200, "OK", body)
        }
        Some("com.microsoft:partition") => {
            let id = app_property(request, "partition").unwrap_or_default();
            let Some((_, partition)) = hub.partition(id) else {
                return response(
                    request,
                    404,
                    &format!("The partition '{id}' of event hub '{}' could not be found.", hub.name),
                    Value::Null,
                );
            };
            let c = partition.counters();
            let body = map(vec![
                ("name", Value::String(hub.name.clone())),
                ("type", Value::String("com.microsoft:partition".into())),
                ("partition", Value::String(partition.id.clone())),
                ("begin_sequence_number", Value::Long(0)),
                ("last_enqueued_sequence_number", Value::Long(c.last_sequence_number)),
                ("last_enqueued_offset", Value::String(c.last_offset.to_string())),
                (
                    "last_enqueued_time_utc",
                    Value::Timestamp(Timestamp::from_milliseconds(c.last_enqueued_ms)),
                ),
                ("last_enqueued_sequence_number_epoch", Value::Long(0)),
                ("is_partition_empty", Value::Bool(c.count == 0)),
            ]);
            response(request, 200, "OK", body)
        }
        other => response(request, 400, &format!("unsupported type {other:?}"), Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(classify(Some("$cbs")), Node::Service(Service::Cbs));
        assert_eq!(classify(Some("$management")), Node::Service(Service::Management));
        assert_eq!(
            classify(Some("amqps://127.0.0.1:5672/hub/ConsumerGroups/$Default/Partitions/3")),
            Node::Reader {
                hub: "hub".into(),
                group: "$Default".into(),
                partition: "3".into()
            }
        );
        assert_eq!(
            classify(Some("amqps://localhost/hub/consumergroups/%24default/partitions/0")),
            Node::Reader {
                hub: "hub".into(),
                group: "$default".into(),
                partition: "0".into()
            }
        );
        assert_eq!(
            classify(Some("amqps://localhost/hub")),
            Node::Writer {
                hub: "hub".into(),
                partition: None
            }
        );
        assert_eq!(
            classify(Some("hub/Partitions/1")),
            Node::Writer {
                hub: "hub".into(),
                partition: Some("1".into())
            }
        );
        assert_eq!(classify(Some("amqps://localhost/a/b")), Node::Unknown);
        assert_eq!(classify(None), Node::Unknown);
    }
}
