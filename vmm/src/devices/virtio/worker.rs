//! The thread behind a device: started during setup (before any seccomp
//! filter, since a vCPU thread may not spawn), told by the vCPU thread
//! when the driver activates or resets the device, and ended when the
//! device is dropped.
//!
//! The vCPU side never blocks on the device's work except in
//! [`Worker::reset`]: a driver that resets a device may free or reuse the
//! rings right after, so the reset returns only once the thread has let go
//! of them. A wake eventfd beside the thread's own fds makes that prompt,
//! and lets the thread sleep in poll without a timeout.
//!
//! [`Worker::pause`] is the snapshot's: with the vCPUs stopped, the thread
//! finishes the requests at hand, lets go of the queues and reports where
//! it was in each ([`QueuePosition`]); the VM does not run on after it.

use super::device::{ActivateError, QueuePosition, ThreadGone};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;

/// How long a reset waits for the device thread. Stopping vhost-user
/// rings is one request and reply per queue; a daemon slower than this
/// is logged, and the reset goes on.
pub const RESET_TIMEOUT: Duration = Duration::from_secs(2);

enum Control<A> {
    Activate(A),
    Reset,
    Pause,
}

/// What the device thread should do after a wake-up.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Keep serving the queues.
    Serve,
    /// Let go of the queues, [`WorkerEnd::ack_reset`], and wait for the
    /// next activation.
    Reset,
    /// Let go of the queues and [`WorkerEnd::ack_pause`] with where the
    /// device was in them; then wait as after a reset.
    Pause,
    /// The device was dropped: end the thread.
    Exit,
}

/// The vCPU side: owned by the device.
pub struct Worker<A> {
    to_thread: Option<Sender<Control<A>>>,
    wake: Arc<EventFd>,
    reset_done: Receiver<()>,
    paused: Receiver<Vec<QueuePosition>>,
    thread: Option<JoinHandle<()>>,
}

/// The thread side.
pub struct WorkerEnd<A> {
    from_device: Receiver<Control<A>>,
    wake: Arc<EventFd>,
    reset_done: Sender<()>,
    paused: Sender<Vec<QueuePosition>>,
}

impl<A: Send + 'static> Worker<A> {
    /// Starts thread `name` running `body`.
    pub fn spawn(
        name: String,
        body: impl FnOnce(WorkerEnd<A>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (to_thread, from_device) = channel();
        let (done_tx, reset_done) = channel();
        let (paused_tx, paused) = channel();
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let end = WorkerEnd {
            from_device,
            wake: wake.clone(),
            reset_done: done_tx,
            paused: paused_tx,
        };
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || body(end))?;
        Ok(Worker {
            to_thread: Some(to_thread),
            wake,
            reset_done,
            paused,
            thread: Some(thread),
        })
    }

    fn send(&self, c: Control<A>) -> Result<(), ThreadGone> {
        let tx = self.to_thread.as_ref().ok_or(ThreadGone)?;
        tx.send(c).map_err(|_| ThreadGone)?;
        // A write to an eventfd: allowed on the vCPU thread (it raises
        // interrupts the same way).
        let _ = self.wake.write(1);
        Ok(())
    }

    /// Hands the activation to the thread; Err if the thread has ended.
    pub fn activate(&self, a: A) -> Result<(), ThreadGone> {
        self.send(Control::Activate(a))
    }

    /// [`activate`](Self::activate) for `device`'s
    /// [`VirtioDevice::activate`](super::VirtioDevice::activate).
    pub fn activate_device(&self, device: &'static str, a: A) -> Result<(), ActivateError> {
        self.activate(a)
            .map_err(|source| ActivateError::ThreadGone { device, source })
    }

    /// Tells the thread to let go of the queues and waits until it has
    /// (or has ended). False if it did not answer in [`RESET_TIMEOUT`].
    pub fn reset(&self) -> bool {
        // Acks of earlier resets that timed out are stale.
        while self.reset_done.try_recv().is_ok() {}
        if self.send(Control::Reset).is_err() {
            return true;
        }
        !matches!(
            self.reset_done.recv_timeout(RESET_TIMEOUT),
            Err(RecvTimeoutError::Timeout)
        )
    }

    /// Tells the thread to finish the requests at hand and let go of the
    /// queues, and waits (up to [`RESET_TIMEOUT`]) for where it was in
    /// each: none if the device was not active. Err if the thread has
    /// ended or did not answer.
    pub fn pause(&self) -> Result<Vec<QueuePosition>, ThreadGone> {
        while self.paused.try_recv().is_ok() {}
        self.send(Control::Pause)?;
        self.paused
            .recv_timeout(RESET_TIMEOUT)
            .map_err(|_| ThreadGone)
    }
}

impl<A> Drop for Worker<A> {
    fn drop(&mut self) {
        self.to_thread.take();
        let _ = self.wake.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<A> WorkerEnd<A> {
    /// Blocks until the driver activates the device; None once the device
    /// is dropped. Resets while idle are acknowledged at once.
    pub fn wait_activation(&self) -> Option<A> {
        loop {
            match self.from_device.recv() {
                // The wake count is left alone: it may already stand for
                // a message after this one (a reset), which next() must
                // see. At worst the first poll wakes once for nothing.
                Ok(Control::Activate(a)) => return Some(a),
                Ok(Control::Reset) => self.ack_reset(),
                Ok(Control::Pause) => self.ack_pause(Vec::new()),
                Err(_) => return None,
            }
        }
    }

    /// The fd to poll for readability beside the device's own.
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// What to do now: call it after every poll wake-up.
    pub fn next(&self) -> Next {
        // The wake count is gone now, so look at every queued message:
        // one left behind would wait for the next wake-up.
        let _ = self.wake.read();
        loop {
            match self.from_device.try_recv() {
                // What follows a reset is for wait_activation.
                Ok(Control::Reset) => return Next::Reset,
                Ok(Control::Pause) => return Next::Pause,
                Ok(Control::Activate(_)) => {
                    // The transport activates only from a reset state.
                    tracing::warn!("activation of a device already active ignored");
                }
                Err(TryRecvError::Empty) => return Next::Serve,
                Err(TryRecvError::Disconnected) => return Next::Exit,
            }
        }
    }

    /// Blocks until the driver resets the device or the device is dropped
    /// (for a thread with nothing else to wait on).
    pub fn wait_until_stopped(&self) -> Next {
        loop {
            let mut p = libc::pollfd {
                fd: self.wake_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut p, 1, -1) };
            match self.next() {
                Next::Serve => continue,
                stop => return stop,
            }
        }
    }

    /// The queues are let go of: the vCPU thread's reset may return.
    pub fn ack_reset(&self) {
        let _ = self.reset_done.send(());
    }

    /// The queues are let go of, and this is where the device was in them.
    pub fn ack_pause(&self, positions: Vec<QueuePosition>) {
        let _ = self.paused.send(positions);
    }

    /// What a device thread does once its serving loop returned `next`
    /// with the queues' `positions`: false if it should end.
    pub fn after_serving(&self, next: Next, positions: Vec<QueuePosition>) -> bool {
        match next {
            Next::Reset => self.ack_reset(),
            Next::Pause => self.ack_pause(positions),
            Next::Serve | Next::Exit => return false,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_waits_for_the_thread_and_activation_follows() {
        let (seen_tx, seen) = channel();
        let w = Worker::spawn("t".into(), move |end: WorkerEnd<u32>| {
            while let Some(a) = end.wait_activation() {
                seen_tx.send(format!("activate {a}")).unwrap();
                if end.wait_until_stopped() == Next::Exit {
                    return;
                }
                seen_tx.send("let go".into()).unwrap();
                end.ack_reset();
            }
        })
        .unwrap();
        // A reset before any activation is answered too.
        assert!(w.reset());
        w.activate(1).unwrap();
        assert!(w.reset());
        // reset returned only after the thread let go.
        let log: Vec<String> = seen.try_iter().collect();
        assert_eq!(log, ["activate 1", "let go"]);
        w.activate(2).unwrap();
        assert_eq!(seen.recv().unwrap(), "activate 2");
        drop(w); // wakes the poll without a timeout and joins
    }

    #[test]
    fn activate_and_reset_work_under_the_vcpu_filter() {
        use crate::security::seccomp::{filter, ThreadKind};
        let w = Worker::spawn("t".into(), |end: WorkerEnd<()>| {
            while end.wait_activation().is_some() {
                // Serve until reset, as a device does.
                if end.wait_until_stopped() == Next::Exit {
                    return;
                }
                end.ack_reset();
            }
        })
        .unwrap();
        // A call outside the filter fails with EPERM instead of killing
        // the test, and shows as a failed activate or a timed-out reset.
        let (w, ok) = std::thread::spawn(move || {
            let prog = filter(ThreadKind::Vcpu, seccompiler::SeccompAction::Errno(1)).unwrap();
            seccompiler::apply_filter(&prog).unwrap();
            let ok = w.activate(()).is_ok() && w.reset() && w.activate(()).is_ok() && w.reset();
            (w, ok)
        })
        .join()
        .unwrap();
        assert!(ok);
        drop(w);
    }

    #[test]
    fn pause_reports_where_an_active_device_was_and_none_for_an_idle_one() {
        let w = Worker::spawn("t".into(), |end: WorkerEnd<u16>| {
            while let Some(at) = end.wait_activation() {
                let next = end.wait_until_stopped();
                let positions = vec![QueuePosition {
                    index: 1,
                    next_avail: at,
                    next_used: at - 1,
                }];
                if !end.after_serving(next, positions) {
                    return;
                }
            }
        })
        .unwrap();
        assert_eq!(w.pause().unwrap(), [], "not active: nothing to report");
        w.activate(9).unwrap();
        let p = w.pause().unwrap();
        assert_eq!(
            p,
            [QueuePosition {
                index: 1,
                next_avail: 9,
                next_used: 8
            }]
        );
        drop(w);
    }

    #[test]
    fn reset_of_an_ended_thread_returns_at_once() {
        let w = Worker::spawn("t".into(), |_end: WorkerEnd<()>| {}).unwrap();
        while !w.thread.as_ref().unwrap().is_finished() {
            std::thread::yield_now();
        }
        assert!(w.reset());
        assert!(w.activate(()).is_err());
        assert!(w.pause().is_err());
    }
}
