//! A limit on large responses in flight across all proxies.
//!
//! A new service changes its ports' route configurations for every proxy that can reach it:
//! with a thousand services that is a hundred kilobytes or more per proxy, hundreds of
//! megabytes in all. Sent at once, those bytes queue in every connection ahead of whatever
//! comes next, so a load-assignment update written a moment later reaches the last proxy
//! only once the whole wave has been read. So a large cluster, listener or route response
//! pushed after a change takes a share of a window (counted in kilobytes) before it is sent
//! and gives it back when the proxy acknowledges it (or rejects it, or goes away, or after
//! [`HOLD_MAX`]). A proxy whose turn has not come keeps receiving load-assignment and secret
//! updates, which are never held back, and gets the large response once there is room,
//! built from the snapshot of that moment. Responses a proxy asks for (its first, a new
//! subscription) are never held back either.
//!
//! Load assignments also go first across proxies ([`Urgent`]): while load-assignment (or
//! secret) pushes wait for their ACKs, no large response starts, so a wave of new routes does
//! not take the CPU and the sockets from an endpoint update. The pause is bounded: it ends
//! when every such push is answered, or [`YIELD_MAX`] after it began, so continuous endpoint
//! churn cannot stop configuration from reaching the proxies.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::resource::XdsType;

/// Responses smaller than this go out without taking a share.
pub const LARGE_RESPONSE: usize = 64 * 1024;
/// A share not given back by an acknowledgement within this time is given back anyway, so a
/// proxy that never answers cannot shrink the window for the others.
pub const HOLD_MAX: Duration = Duration::from_secs(5);
/// The default window, in megabytes.
pub const DEFAULT_WINDOW_MB: u32 = 8;
/// Large responses wait for unanswered load-assignment pushes at most this long after the
/// first of them was sent.
pub const YIELD_MAX: Duration = Duration::from_millis(500);
/// A load-assignment push not answered within this time stops holding large responses back.
pub const URGENT_MAX: Duration = Duration::from_secs(2);

/// Load-assignment and secret pushes not yet answered, across all proxies.
#[derive(Debug, Default)]
pub struct Urgent {
    unanswered: AtomicUsize,
    /// When the count last left zero.
    since: Mutex<Option<Instant>>,
    quiet: Notify,
}

impl Urgent {
    fn since(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.since.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn mark(self: &Arc<Self>) -> UrgentMark {
        if self.unanswered.fetch_add(1, Ordering::AcqRel) == 0 {
            *self.since() = Some(Instant::now());
        }
        UrgentMark(self.clone())
    }

    /// Until when large responses are held back (None: they are not).
    fn paused_until(&self) -> Option<Instant> {
        if self.unanswered.load(Ordering::Acquire) == 0 {
            return None;
        }
        let until = (*self.since())? + YIELD_MAX;
        (Instant::now() < until).then_some(until)
    }

    /// Returns once large responses may start.
    async fn wait(&self) {
        loop {
            let quiet = self.quiet.notified();
            let mut quiet = std::pin::pin!(quiet);
            quiet.as_mut().enable();
            let Some(until) = self.paused_until() else {
                return;
            };
            tokio::select! {
                () = quiet => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }
}

/// One unanswered load-assignment push; dropped when answered.
#[derive(Debug)]
struct UrgentMark(Arc<Urgent>);

impl Drop for UrgentMark {
    fn drop(&mut self) {
        if self.0.unanswered.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.quiet.notify_waiters();
        }
    }
}

/// The shared window.
#[derive(Debug)]
pub struct PushWindow {
    permits: Arc<Semaphore>,
    kb: u32,
    urgent: Arc<Urgent>,
}

impl PushWindow {
    /// A window of `mb` megabytes; 0 turns the limit off.
    pub fn new(mb: u32) -> Self {
        let kb = mb.saturating_mul(1024);
        Self {
            permits: Arc::new(Semaphore::new(kb as usize)),
            kb,
            urgent: Arc::default(),
        }
    }

    /// Kilobytes of the window not taken now.
    pub fn available_kb(&self) -> usize {
        self.permits.available_permits()
    }

    fn need(&self, bytes: usize) -> u32 {
        let kb = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        kb.clamp(1, self.kb.max(1))
    }

    fn try_take(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        if self.urgent.paused_until().is_some() {
            return None;
        }
        self.permits
            .clone()
            .try_acquire_many_owned(self.need(bytes))
            .ok()
    }

    /// A share, once there is room and no load-assignment push is waiting for its ACKs. The
    /// share is taken first, so a stream keeps its place while load assignments go.
    fn take(&self, bytes: usize) -> Waiting {
        let permits = self.permits.clone();
        let urgent = self.urgent.clone();
        let need = self.need(bytes);
        Box::pin(async move {
            let share = permits.acquire_many_owned(need).await.ok();
            urgent.wait().await;
            share
        })
    }
}

type Waiting = Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>;

/// Whether a response may be sent now.
pub(crate) enum Admit {
    /// Yes; with the share to hold until it is acknowledged, when it took one.
    Go(Option<OwnedSemaphorePermit>),
    /// Not yet: the stream waits for its turn and pushes the type again then.
    Wait,
}

struct Held {
    t: XdsType,
    nonce: u64,
    since: Instant,
    _permit: OwnedSemaphorePermit,
}

/// A load-assignment or secret push whose answer large responses wait for.
struct Answer {
    t: XdsType,
    nonce: u64,
    since: Instant,
    _mark: UrgentMark,
}

/// One stream's side of the window.
pub(crate) struct Turn {
    window: Arc<PushWindow>,
    held: Vec<Held>,
    /// At most one per type: a newer push replaces the older one.
    awaited: Vec<Answer>,
    waiting: Option<Waiting>,
    /// When the stream started waiting for its turn.
    waiting_since: Option<Instant>,
    granted: Option<OwnedSemaphorePermit>,
    /// The first type (in push order) held back: it and every later type wait for the turn,
    /// so responses keep their order (clusters before listeners before routes).
    deferred_from: Option<usize>,
}

/// The types whose large responses take a share: clusters, listeners and routes, on both
/// protocols (a state-of-the-world cluster push is the whole set, so it is large more often).
fn gated(t: XdsType) -> bool {
    matches!(t, XdsType::Cluster | XdsType::Listener | XdsType::Route)
}

impl Turn {
    /// A stream's side of `window`.
    pub(crate) fn new(window: Arc<PushWindow>) -> Self {
        Self {
            window,
            held: Vec::new(),
            awaited: Vec::new(),
            waiting: None,
            waiting_since: None,
            granted: None,
            deferred_from: None,
        }
    }

    /// Whether a pushed response of `bytes` for `t` may go now.
    pub(crate) fn admit(&mut self, t: XdsType, bytes: usize) -> Admit {
        if !gated(t) || self.window.kb == 0 {
            return Admit::Go(None);
        }
        if self.deferred_from.is_some_and(|d| d <= t.index()) {
            return Admit::Wait;
        }
        if bytes < LARGE_RESPONSE {
            return Admit::Go(None);
        }
        if let Some(p) = self.granted.take().or_else(|| self.window.try_take(bytes)) {
            return Admit::Go(Some(p));
        }
        self.deferred_from = Some(t.index());
        if self.waiting.is_none() {
            self.waiting = Some(self.window.take(bytes));
            self.waiting_since = Some(Instant::now());
        }
        Admit::Wait
    }

    /// Keeps the share a response took, if any, until `nonce` of `t` is acknowledged. A load
    /// assignment or secret sent after a change (`pushed`) holds large responses back until
    /// it is answered.
    pub(crate) fn hold(
        &mut self,
        t: XdsType,
        nonce: &str,
        pushed: bool,
        share: Option<OwnedSemaphorePermit>,
    ) {
        let Ok(nonce) = nonce.parse() else {
            return;
        };
        if let Some(permit) = share {
            self.held.push(Held {
                t,
                nonce,
                since: Instant::now(),
                _permit: permit,
            });
        }
        if pushed && !gated(t) && self.window.kb > 0 {
            self.awaited.retain(|a| a.t != t);
            self.awaited.push(Answer {
                t,
                nonce,
                since: Instant::now(),
                _mark: self.window.urgent.mark(),
            });
        }
    }

    /// The proxy answered `nonce` of `t` (ACK or NACK): shares held for it and earlier
    /// responses of the type are given back.
    pub(crate) fn settled(&mut self, t: XdsType, nonce: &str) {
        if self.held.is_empty() && self.awaited.is_empty() {
            return;
        }
        if let Ok(n) = nonce.parse::<u64>() {
            self.held.retain(|h| h.t != t || h.nonce > n);
            self.awaited.retain(|a| a.t != t || a.nonce > n);
        }
    }

    /// After the pushes of a turn: a share granted and not used (nothing large was left to
    /// send) goes back to the window.
    pub(crate) fn end_of_turn(&mut self) {
        self.granted = None;
    }

    /// Whether [`Turn::next`] has anything to wait for.
    pub(crate) fn active(&self) -> bool {
        self.waiting.is_some() || !self.held.is_empty() || !self.awaited.is_empty()
    }

    /// Waits for the stream's turn (`Some`: push the held-back types now; how long the stream
    /// waited) or for a share to outlive [`HOLD_MAX`] or an awaited answer [`URGENT_MAX`]
    /// (`None`, after letting them go).
    pub(crate) async fn next(&mut self) -> Option<Duration> {
        let expiry = self
            .held
            .iter()
            .map(|h| h.since + HOLD_MAX)
            .chain(self.awaited.iter().map(|a| a.since + URGENT_MAX))
            .min();
        let sleep = async {
            match expiry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let turn = async {
            match self.waiting.as_mut() {
                Some(w) => w.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            permit = turn => {
                self.waiting = None;
                self.granted = permit;
                self.deferred_from = None;
                Some(self.waiting_since.take().map(|s| s.elapsed()).unwrap_or_default())
            }
            () = sleep => {
                let now = Instant::now();
                self.held.retain(|h| now.duration_since(h.since) < HOLD_MAX);
                self.awaited.retain(|a| now.duration_since(a.since) < URGENT_MAX);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(window: &Arc<PushWindow>) -> Turn {
        Turn::new(window.clone())
    }

    #[tokio::test]
    async fn large_responses_wait_for_room_and_small_ones_do_not() {
        let window = Arc::new(PushWindow::new(1));
        let mut a = turn(&window);
        let mut b = turn(&window);
        // A takes the whole megabyte.
        let Admit::Go(Some(p)) = a.admit(XdsType::Route, 1 << 20) else {
            panic!("first large response held back");
        };
        a.hold(XdsType::Route, "7", true, Some(p));
        assert_eq!(window.available_kb(), 0);
        // B's large route response waits; its load assignments and small clusters do not.
        assert!(matches!(b.admit(XdsType::Route, 100 << 10), Admit::Wait));
        assert!(matches!(
            b.admit(XdsType::Endpoint, 10 << 20),
            Admit::Go(None)
        ));
        assert!(matches!(
            b.admit(XdsType::Cluster, 1 << 10),
            Admit::Go(None)
        ));
        // Later types keep their order behind the held-back one, earlier ones do not.
        assert!(matches!(b.admit(XdsType::Route, 1 << 10), Admit::Wait));
        assert!(matches!(b.admit(XdsType::Secret, 1 << 20), Admit::Go(None)));
        assert!(b.active());
        // An ACK of an older nonce or of another type gives nothing back.
        a.settled(XdsType::Route, "6");
        a.settled(XdsType::Cluster, "9");
        assert_eq!(window.available_kb(), 0);
        let granted = tokio::spawn(async move {
            let pushed = b.next().await;
            (pushed, b)
        });
        tokio::task::yield_now().await;
        assert!(!granted.is_finished());
        // A's ACK of the response (or a later one) gives its share back: B's turn comes.
        a.settled(XdsType::Route, "8");
        let (pushed, mut b) = granted.await.expect("task");
        assert!(pushed.is_some());
        assert!(!b.active());
        let Admit::Go(Some(p)) = b.admit(XdsType::Route, 100 << 10) else {
            panic!("granted share not used");
        };
        drop(p);
        assert_eq!(window.available_kb(), 1024);

        // A turn that finds nothing large left to send gives its share back.
        let Admit::Go(Some(p)) = a.admit(XdsType::Route, 1 << 20) else {
            panic!("held back");
        };
        a.hold(XdsType::Route, "9", true, Some(p));
        assert!(matches!(b.admit(XdsType::Route, 100 << 10), Admit::Wait));
        a.settled(XdsType::Route, "9");
        assert!(b.next().await.is_some());
        assert_eq!(window.available_kb(), 1024 - 100);
        b.end_of_turn();
        assert_eq!(window.available_kb(), 1024);
    }

    #[tokio::test(start_paused = true)]
    async fn a_share_never_acknowledged_is_given_back() {
        let window = Arc::new(PushWindow::new(1));
        let mut a = turn(&window);
        let Admit::Go(Some(p)) = a.admit(XdsType::Cluster, 2 << 20) else {
            panic!("held back");
        };
        a.hold(XdsType::Cluster, "1", true, Some(p));
        assert_eq!(window.available_kb(), 0);
        let started = Instant::now();
        assert!(a.next().await.is_none());
        assert!(started.elapsed() >= HOLD_MAX);
        assert_eq!(window.available_kb(), 1024);
        assert!(!a.active());
    }

    #[tokio::test]
    async fn large_responses_wait_for_load_assignments_to_be_answered() {
        let window = Arc::new(PushWindow::new(8));
        let mut a = turn(&window);
        let mut b = turn(&window);
        // Answers to what a proxy asked for hold nothing back.
        a.hold(XdsType::Endpoint, "1", false, None);
        assert!(!a.active());
        assert!(matches!(
            b.admit(XdsType::Route, 100 << 10),
            Admit::Go(Some(_))
        ));
        b.end_of_turn();
        // A pushed load assignment does, on every stream, until it is answered.
        a.hold(XdsType::Endpoint, "2", true, None);
        assert!(a.active());
        assert!(matches!(b.admit(XdsType::Route, 100 << 10), Admit::Wait));
        // Small responses and other load assignments still go.
        assert!(matches!(
            b.admit(XdsType::Cluster, 1 << 10),
            Admit::Go(None)
        ));
        assert!(matches!(
            b.admit(XdsType::Endpoint, 1 << 20),
            Admit::Go(None)
        ));
        let granted = tokio::spawn(async move {
            let pushed = b.next().await;
            (pushed, b)
        });
        tokio::task::yield_now().await;
        assert!(!granted.is_finished());
        // An answer to an older nonce or another type is not the one awaited.
        a.settled(XdsType::Endpoint, "1");
        a.settled(XdsType::Route, "2");
        tokio::task::yield_now().await;
        assert!(!granted.is_finished());
        a.settled(XdsType::Endpoint, "2");
        let (pushed, mut b) = granted.await.expect("task");
        assert!(pushed.is_some());
        assert!(!a.active());
        assert!(matches!(
            b.admit(XdsType::Route, 100 << 10),
            Admit::Go(Some(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn load_assignments_hold_large_responses_back_for_a_bounded_time() {
        let window = Arc::new(PushWindow::new(8));
        let mut a = turn(&window);
        let mut b = turn(&window);
        let started = Instant::now();
        // A proxy that never answers, and a newer push replacing the older one.
        a.hold(XdsType::Endpoint, "1", true, None);
        a.hold(XdsType::Endpoint, "2", true, None);
        assert!(matches!(b.admit(XdsType::Listener, 1 << 20), Admit::Wait));
        assert!(b.next().await.is_some());
        assert!(started.elapsed() >= YIELD_MAX);
        assert!(started.elapsed() < URGENT_MAX);
        b.end_of_turn();
        // Still unanswered, but the pause is over: the next large response goes at once.
        assert!(matches!(
            b.admit(XdsType::Listener, 1 << 20),
            Admit::Go(Some(_))
        ));
        // The unanswered push is let go after URGENT_MAX.
        assert!(a.next().await.is_none());
        assert!(started.elapsed() >= URGENT_MAX);
        assert!(!a.active());
        assert_eq!(window.urgent.unanswered.load(Ordering::Acquire), 0);
        // A new push starts a new pause.
        a.hold(XdsType::Secret, "3", true, None);
        assert!(window.urgent.paused_until().is_some());
        drop(a);
        assert!(window.urgent.paused_until().is_none());
    }

    #[test]
    fn load_assignments_and_secrets_are_never_paced() {
        let window = Arc::new(PushWindow::new(1));
        let mut a = turn(&window);
        for t in [XdsType::Endpoint, XdsType::Secret] {
            assert!(matches!(a.admit(t, 8 << 20), Admit::Go(None)));
        }
        assert_eq!(window.available_kb(), 1024);
    }

    #[test]
    fn without_a_window_nothing_waits() {
        let window = Arc::new(PushWindow::new(0));
        let mut a = turn(&window);
        a.hold(XdsType::Endpoint, "1", true, None);
        assert!(!a.active());
        assert!(matches!(
            a.admit(XdsType::Route, 100 << 20),
            Admit::Go(None)
        ));
    }
}
