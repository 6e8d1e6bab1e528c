//! The door check every agent vsock listener shares: only the host is
//! served. A connection from any other peer is closed as soon as it is
//! accepted, before a byte is read or written, and logged at most once per
//! [`REFUSAL_LOG_EVERY`] so that a flood cannot fill the console.
//!
//! Why: a process in a container is a guest process, and vsock lets it
//! connect to the guest's own listeners through CID 1 (VMADDR_CID_LOCAL,
//! the loopback transport) or the guest's own CID. Unchecked, that is the
//! agent's API (privileged containers, exec into neighbours), the
//! port-forward relay and the debug console's root shell. The host's
//! connections arrive through the vsock device with the host's CID as
//! source (VMADDR_CID_HOST, 2; vsock(7)); the guest kernel is also built
//! without the loopback transport (config/guest-kernel.config), this is
//! the check that holds should a kernel have it.

use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio_stream::Stream;
use tokio_vsock::{VsockAddr, VsockListener, VsockStream, VMADDR_CID_ANY, VMADDR_CID_HOST};

/// At most one refusal line per this long; the line counts the refusals
/// not logged since the last one.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Refusals handled in one poll before the task yields, so that a flood
/// of connections cannot hold a runtime worker.
const REFUSALS_PER_POLL: usize = 64;

/// Whether a peer with this CID is served: the host's only.
pub fn admits(peer_cid: u32) -> bool {
    peer_cid == VMADDR_CID_HOST
}

/// A listener whose connections come with their peer's address.
pub trait Accept {
    type Stream;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Stream, VsockAddr)>>;
}

impl Accept for VsockListener {
    type Stream = VsockStream;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(VsockStream, VsockAddr)>> {
        VsockListener::poll_accept(self, cx)
    }
}

/// A listener that hands out the host's connections only.
pub struct HostOnly<L> {
    listener: L,
    port: u32,
}

/// Binds vsock `port` on every local CID, serving the host only.
pub fn bind(port: u32) -> io::Result<HostOnly<VsockListener>> {
    let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port))?;
    Ok(HostOnly::new(listener, port))
}

impl<L: Accept> HostOnly<L> {
    pub fn new(listener: L, port: u32) -> Self {
        HostOnly { listener, port }
    }

    /// The next connection from the host; others are closed on the way.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<L::Stream>> {
        for _ in 0..REFUSALS_PER_POLL {
            let (stream, peer) = match self.listener.poll_accept(cx) {
                Poll::Ready(Ok(accepted)) => accepted,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            if admits(peer.cid()) {
                return Poll::Ready(Ok(stream));
            }
            // Closed here, unread and unanswered.
            drop(stream);
            log_refusal(self.port, peer, Instant::now());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    pub async fn accept(&self) -> io::Result<L::Stream> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }
}

/// The host's connections as a stream, for tonic's `serve_with_incoming`:
/// what tonic sees has passed the check.
impl<L: Accept + Unpin> Stream for HostOnly<L> {
    type Item = io::Result<L::Stream>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_accept(cx).map(Some)
    }
}

/// When refusals were last logged, and how many were not since.
#[derive(Debug, Default)]
pub struct RefusalLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    pub const fn new() -> Self {
        RefusalLog {
            last: None,
            unlogged: 0,
        }
    }

    /// Notes a refusal at `now`: Some(refusals not logged before it) when
    /// this one is to be logged, None when it is only counted.
    pub fn note(&mut self, now: Instant) -> Option<u64> {
        let due = match self.last {
            None => true,
            Some(last) => now.saturating_duration_since(last) >= REFUSAL_LOG_EVERY,
        };
        if !due {
            self.unlogged = self.unlogged.saturating_add(1);
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// One log for all listeners: a flood spread over the ports is still one
/// line per period.
static REFUSALS: Mutex<RefusalLog> = Mutex::new(RefusalLog::new());

fn log_refusal(port: u32, peer: VsockAddr, now: Instant) {
    let due = match REFUSALS.lock() {
        Ok(mut log) => log.note(now),
        Err(poisoned) => poisoned.into_inner().note(now),
    };
    if let Some(unlogged) = due {
        tracing::warn!(
            port,
            peer_cid = peer.cid(),
            peer_port = peer.port(),
            unlogged,
            "refused a vsock connection from a peer that is not the host"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;
    use tokio_stream::StreamExt;
    use tokio_vsock::VMADDR_CID_LOCAL;

    /// Connections handed out in order, then none.
    struct Queue(Mutex<VecDeque<(UnixStream, VsockAddr)>>);

    impl Accept for Queue {
        type Stream = UnixStream;
        fn poll_accept(&self, _: &mut Context<'_>) -> Poll<io::Result<(UnixStream, VsockAddr)>> {
            match self.0.lock().unwrap().pop_front() {
                Some(next) => Poll::Ready(Ok(next)),
                None => Poll::Pending,
            }
        }
    }

    #[test]
    fn only_the_host_cid_is_admitted() {
        assert!(admits(VMADDR_CID_HOST));
        assert_eq!(VMADDR_CID_HOST, 2);
        // Loopback, the guest's own CID (husk_hypervisor::GUEST_CID), the
        // hypervisor, a sibling VM, "any".
        for cid in [
            VMADDR_CID_LOCAL,
            3,
            0,
            4,
            1000,
            u32::MAX - 1,
            VMADDR_CID_ANY,
        ] {
            assert!(!admits(cid), "cid {cid}");
        }
    }

    /// Peers 1 and 3 then the host: only the host's stream comes out, and
    /// the others are closed (their end reads EOF) without a byte.
    #[tokio::test]
    async fn other_peers_are_closed_and_the_host_comes_through() {
        let mut ends = Vec::new();
        let mut queue = VecDeque::new();
        for cid in [VMADDR_CID_LOCAL, 3, 7, VMADDR_CID_HOST] {
            let (ours, theirs) = UnixStream::pair().unwrap();
            queue.push_back((ours, VsockAddr::new(cid, 40000 + cid)));
            ends.push(theirs);
        }
        let mut gate = HostOnly::new(Queue(Mutex::new(queue)), 1024);
        let mut host = gate.next().await.unwrap().unwrap();
        host.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        ends[3].read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello", "the host's stream is the one handed out");
        for (end, cid) in ends[..3].iter_mut().zip([1, 3, 7]) {
            let mut buf = Vec::new();
            end.read_to_end(&mut buf).await.unwrap();
            assert!(buf.is_empty(), "peer {cid} was sent {buf:?}");
        }
        // Nothing more is queued: the gate waits.
        let next = tokio::time::timeout(Duration::from_millis(50), gate.next()).await;
        assert!(next.is_err(), "no connection should be left");
    }

    /// A flood of refusals does not hold the task: the gate yields after a
    /// bounded number and goes on at the next poll.
    #[tokio::test]
    async fn a_flood_of_refusals_yields_and_still_admits_the_host() {
        let mut queue = VecDeque::new();
        for i in 0..(3 * REFUSALS_PER_POLL as u32) {
            let (ours, _) = UnixStream::pair().unwrap();
            queue.push_back((ours, VsockAddr::new(VMADDR_CID_LOCAL, i)));
        }
        let (ours, _theirs) = UnixStream::pair().unwrap();
        queue.push_back((ours, VsockAddr::new(VMADDR_CID_HOST, 1)));
        let gate = HostOnly::new(Queue(Mutex::new(queue)), 1025);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(
            gate.poll_accept(&mut cx).is_pending(),
            "it yields mid-flood"
        );
        let host = tokio::time::timeout(Duration::from_secs(5), gate.accept()).await;
        assert!(matches!(host, Ok(Ok(_))), "the host still gets through");
        assert!(gate.listener.0.lock().unwrap().is_empty());
    }

    #[test]
    fn refusals_are_logged_once_per_period_with_a_count() {
        let mut log = RefusalLog::new();
        let t0 = Instant::now();
        assert_eq!(log.note(t0), Some(0), "the first is logged");
        for i in 1..1000 {
            assert_eq!(log.note(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(log.note(t0 + REFUSAL_LOG_EVERY), Some(999));
        assert_eq!(log.note(t0 + REFUSAL_LOG_EVERY), None);
        // A clock that went backwards logs nothing early.
        assert_eq!(log.note(t0), None);
        assert_eq!(log.note(t0 + 2 * REFUSAL_LOG_EVERY), Some(2));
    }
}
