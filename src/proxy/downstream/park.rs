//! Where a worker's idle lean connections wait for their next request: outside any task.
//!
//! A parked connection is one small record in its worker's [`Lot`] (the socket, when its
//! head is due, where it came from, its open-connection guard) and tokio's registration of the
//! socket; no task, no future, no timer of its own. The socket's readiness wakes the lot with a
//! waker naming the connection's slot, and the lot gives the connection back to be served
//! (`downstream::resume` spawns a new task for it). One task per worker (`tend`, running while
//! anything is parked) watches the wakes, closes the connections whose head did not come in
//! time with one sleep for them all, and closes all of them when the worker stops.
//!
//! This module owns the record and the timing of parked connections; it does not read or
//! write a socket, nor know how a connection is served.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::drive::{StopWait, Stopping};
use crate::proxy::client::Entry;

/// One parked connection: all that stays of it while it waits (with tokio's registration).
/// `open` is its worker's count of it (`listeners::Open`), held as long.
pub struct Parked<G> {
    pub stream: TcpStream,
    /// When its next request head is due (the header-read timeout, from when it went idle).
    pub head_due: Instant,
    pub peer: SocketAddr,
    pub entry: Entry,
    /// No bytes have come yet: it may still open with HTTP/2's preface.
    pub sniffing: bool,
    pub open: G,
}

/// A worker's parked connections. See the module's documentation.
pub struct Lot<G> {
    slots: RefCell<Slots<G>>,
    woken: Arc<Woken>,
    /// Its `tend` task runs.
    tended: Cell<bool>,
    /// The instant `tend` sleeps until, if it sleeps.
    armed: Cell<Option<Instant>>,
}

struct Slots<G> {
    /// Boxed: the records' room is allocated one by one, not doubled as the set grows.
    parked: Vec<Option<Box<Parked<G>>>>,
    free: Vec<usize>,
    /// Each parked connection's head deadline and slot, soonest first.
    due: BTreeSet<(Instant, usize)>,
}

impl<G> Default for Lot<G> {
    fn default() -> Self {
        Lot {
            slots: RefCell::new(Slots {
                parked: Vec::new(),
                free: Vec::new(),
                due: BTreeSet::new(),
            }),
            woken: Arc::default(),
            tended: Cell::new(false),
            armed: Cell::new(None),
        }
    }
}

/// What became of a connection the lot was given.
pub enum Parking<G> {
    /// Parked: its task may end.
    Parked,
    /// Bytes are there already: serve it on.
    Readable(Box<Parked<G>>),
    /// The worker stops (or the socket's registration failed): closed.
    Closed,
    /// Parked, and the lot has no `tend` task running: spawn it.
    Tend,
}

/// The slots whose sockets woke, and the waker of the lot's `tend` task. Behind a mutex
/// because wakers must be `Send`; a worker is one thread, so it is never contended.
#[derive(Default)]
struct Woken(Mutex<(Vec<usize>, Option<Waker>)>);

impl Woken {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<usize>, Option<Waker>)> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake_tend(&self) {
        let waker = self.lock().1.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The waker tokio keeps for one parked socket (32 bytes with its `Arc`, the one allocation of
/// the lot per parked connection besides the record).
struct SlotWake {
    slot: usize,
    woken: Arc<Woken>,
}

impl Wake for SlotWake {
    fn wake(self: Arc<Self>) {
        let waker = {
            let mut woken = self.woken.lock();
            woken.0.push(self.slot);
            woken.1.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<G> Lot<G> {
    /// Parks `conn`, unless its bytes have come already or the worker stops.
    pub fn park(&self, conn: Box<Parked<G>>, stopping: &Stopping) -> Parking<G> {
        if stopping.stopped() {
            return Parking::Closed;
        }
        let mut slots = self.slots.borrow_mut();
        let slot = slots.free.pop().unwrap_or(slots.parked.len());
        let ready = conn
            .stream
            .poll_read_ready(&mut Context::from_waker(&self.waker(slot)));
        if ready.is_ready() {
            // Not parked after all: the slot stays free.
            if slot < slots.parked.len() {
                slots.free.push(slot);
            }
            return match ready {
                Poll::Ready(Ok(())) => Parking::Readable(conn),
                _ => Parking::Closed,
            };
        }
        slots.due.insert((conn.head_due, slot));
        let head_due = conn.head_due;
        match slots.parked.get_mut(slot) {
            Some(place) => *place = Some(conn),
            None => slots.parked.push(Some(conn)),
        }
        stopping.count_parked(1);
        if !self.tended.replace(true) {
            return Parking::Tend;
        }
        if self.armed.get().is_none_or(|armed| head_due < armed) {
            // Due sooner than `tend` sleeps: it must sleep less.
            self.woken.wake_tend();
        }
        Parking::Parked
    }

    /// A waker that names `slot` to the lot.
    fn waker(&self, slot: usize) -> Waker {
        Waker::from(Arc::new(SlotWake {
            slot,
            woken: self.woken.clone(),
        }))
    }

    /// How many connections are parked.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.borrow().due.len()
    }

    /// The connection in `slot` if its socket is readable now (or it is not parked there).
    fn take_readable(&self, slot: usize, stopping: &Stopping) -> Option<Box<Parked<G>>> {
        let mut slots = self.slots.borrow_mut();
        let conn = slots.parked.get(slot)?.as_ref()?;
        let waker = self.waker(slot);
        if conn
            .stream
            .poll_read_ready(&mut Context::from_waker(&waker))
            .is_pending()
        {
            return None;
        }
        let conn = slots.parked[slot].take()?;
        slots.due.remove(&(conn.head_due, slot));
        slots.free.push(slot);
        stopping.count_parked(-1);
        Some(conn)
    }

    /// Takes out the connections whose head is due by `now` (all of them with `None`).
    fn take_due(&self, now: Option<Instant>, stopping: &Stopping) -> Vec<Box<Parked<G>>> {
        let mut slots = self.slots.borrow_mut();
        let mut taken = Vec::new();
        while let Some(&(at, slot)) = slots.due.first()
            && now.is_none_or(|now| at <= now)
        {
            slots.due.pop_first();
            taken.extend(slots.parked.get_mut(slot).and_then(Option::take));
            slots.free.push(slot);
        }
        stopping.count_parked(-isize::try_from(taken.len()).unwrap_or(isize::MAX));
        if slots.due.is_empty() {
            // Nothing parked: give the slots' room back, and forget wakes of slots now empty.
            *slots = Slots {
                parked: Vec::new(),
                free: Vec::new(),
                due: BTreeSet::new(),
            };
            self.woken.lock().0 = Vec::new();
        }
        taken
    }
}

/// Tends `lot` while anything is parked in it: gives each connection whose socket became
/// readable to `resume`, closes those whose head is due, and all of them when the worker
/// stops. Spawned when [`Lot::park`] says [`Parking::Tend`].
pub async fn tend<G>(lot: Rc<Lot<G>>, stopping: Rc<Stopping>, resume: impl Fn(Box<Parked<G>>)) {
    let mut stop = StopWait::new(stopping.clone());
    let mut sleep = pin!(tokio::time::sleep_until(Instant::now()));
    std::future::poll_fn(|cx| {
        if stop.poll_stopped(cx) {
            drop(lot.take_due(None, &stopping));
            lot.tended.set(false);
            return Poll::Ready(());
        }
        loop {
            let woken = {
                let mut woken = lot.woken.lock();
                if !woken.1.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    woken.1 = Some(cx.waker().clone());
                }
                std::mem::take(&mut woken.0)
            };
            for slot in woken {
                if let Some(conn) = lot.take_readable(slot, &stopping) {
                    resume(conn);
                }
            }
            // Closed here: their sockets, and their worker's counts of them.
            drop(lot.take_due(Some(Instant::now()), &stopping));
            let next = lot.slots.borrow().due.first().map(|&(at, _)| at);
            lot.armed.set(next);
            let Some(at) = next else {
                lot.tended.set(false);
                return Poll::Ready(());
            };
            if sleep.deadline() != at {
                sleep.as_mut().reset(at);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;

    /// What stays of a parked connection besides tokio's registration of its socket: its
    /// record (one allocator block of at most 128 bytes), its slot and deadline in the lot,
    /// and its socket's waker. A connection's task with its future took about 1.2 KiB more;
    /// a record that grows past a small block, or takes a future into it, shows here.
    #[test]
    fn a_parked_connection_is_a_small_record() {
        let record = std::mem::size_of::<Parked<Rc<()>>>();
        assert!(
            record <= 128,
            "a parked connection's record takes {record} bytes"
        );
        assert_eq!(std::mem::size_of::<SlotWake>(), 16);
    }
}
