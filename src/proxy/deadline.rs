//! The one timer of an HTTP/1 client connection.
//!
//! Such a connection waits for at most one thing at a time under a time limit: the client's next
//! request head (the header-read timeout, from the end of the previous answer or the start of
//! the connection), or the member's answer (the cluster's response timeout). Registering and
//! cancelling a timer for each of them on every request costs more than the rest of our own
//! per-request work, so the request path only writes the current deadline here, and the
//! connection's driver keeps one long-lived sleep, re-armed when it fires before the deadline or
//! when a deadline comes sooner than the sleep is armed for.
//!
//! A lean connection that has waited for its next head for a while is asked to park
//! ([`Fired::Park`], once per wait): to leave its task and wait for its next bytes as a small
//! record in its worker's parking lot (`downstream::park`), whose one timer then keeps the head's
//! deadline; a new task takes the connection up with [`Deadline::resumed`]. So that it is asked soon after
//! going idle, a parking connection's sleep never sleeps longer than `park_after` while it is
//! busy or waits for its member (a wake-up a second, not one per request); once asked, it
//! sleeps until the head is due.
//!
//! HTTP/2 connections carry concurrent requests and do not use this.

use std::cell::Cell;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// Neither: the request is being handled or the answer streamed.
    Nothing,
    /// The next request head, until then.
    Head(Instant),
    /// The member's answer, until then.
    Response(Instant),
}

/// What the connection waits for and until when; written by the request path, read by the
/// connection's driver.
#[derive(Debug)]
pub struct Deadline {
    header_read_timeout: Duration,
    /// How long a connection waits for its next head before it is asked to park; never when
    /// `None` (hyper's connections).
    park_after: Cell<Option<Duration>>,
    /// The connection was asked to park during this wait for a head.
    park_asked: Cell<bool>,
    wait: Cell<Wait>,
    /// The instant the driver's sleep is armed for.
    armed: Cell<Instant>,
    /// A deadline came sooner than `armed`: the sleep must move.
    sooner: Cell<bool>,
    /// The wait for the member's answer ran out.
    expired: Cell<bool>,
}

/// What the driver does when its sleep fires or must move.
#[derive(Debug, PartialEq, Eq)]
pub enum Fired {
    /// The client did not send a whole request head in time: close the connection.
    HeadTimeout,
    /// Sleep until then.
    Rearm(Instant),
    /// The connection has waited for its next head for `park_after`: it may park (if no part of
    /// a head has come), and otherwise sleep until then.
    Park(Instant),
}

impl Deadline {
    /// A new connection, waiting for its first request head from `now`.
    pub fn new(header_read_timeout: Duration, now: Instant) -> Self {
        let at = now + header_read_timeout;
        Deadline {
            header_read_timeout,
            park_after: Cell::new(None),
            park_asked: Cell::new(false),
            wait: Cell::new(Wait::Head(at)),
            armed: Cell::new(at),
            // The driver's sleep is not registered yet.
            sooner: Cell::new(true),
            expired: Cell::new(false),
        }
    }

    /// Asks the connection to park once it has waited `after` for a head (see [`Fired::Park`]).
    pub fn parking_after(self, after: Duration) -> Self {
        self.park_after.set(Some(after));
        // Waiting since `armed - header_read_timeout`: look at it again after `after`.
        let armed = self.armed.get();
        if let Some(since) = armed.checked_sub(self.header_read_timeout) {
            self.armed.set(armed.min(since + after));
        }
        self
    }

    /// A parked connection taken up again because bytes came (`downstream::park`): its head is
    /// still due at `head_due` (the header-read timeout from when it went idle), and it was
    /// asked to park once in this wait already.
    pub fn resumed(header_read_timeout: Duration, head_due: Instant, park_after: Duration) -> Self {
        Deadline {
            header_read_timeout,
            park_after: Cell::new(Some(park_after)),
            park_asked: Cell::new(true),
            wait: Cell::new(Wait::Head(head_due)),
            armed: Cell::new(head_due),
            sooner: Cell::new(true),
            expired: Cell::new(false),
        }
    }

    /// When the next request head is due, while the connection waits for one.
    pub fn head_due(&self) -> Option<Instant> {
        match self.wait.get() {
            Wait::Head(at) => Some(at),
            Wait::Nothing | Wait::Response(_) => None,
        }
    }

    /// No parking: hyper's server takes the connection.
    pub fn no_parking(&self) {
        self.park_after.set(None);
    }

    /// The instant the driver's sleep is armed for.
    pub fn armed(&self) -> Instant {
        self.armed.get()
    }

    /// A new driver takes the connection (hyper's server after the lean one): its sleep is not
    /// registered yet, so the first poll must arm it.
    pub fn new_driver(&self) {
        self.sooner.set(true);
    }

    /// True when the driver must call [`Deadline::fire`]: its sleep fired, or must move sooner.
    pub fn due(&self, sleep_elapsed: bool) -> bool {
        sleep_elapsed || self.sooner.get()
    }

    fn wait_until(&self, wait: Wait, at: Instant) {
        self.wait.set(wait);
        if at < self.armed.get() {
            self.sooner.set(true);
        }
    }

    /// The answer has gone out: the next request head is due within the header-read timeout.
    pub fn await_head(&self, now: Instant) {
        let at = now + self.header_read_timeout;
        self.park_asked.set(false);
        self.wait_until(Wait::Head(at), at);
    }

    /// A request head has arrived.
    pub fn busy(&self) {
        self.wait.set(Wait::Nothing);
    }

    /// The request is on its way to a member, whose answer is due by `until`.
    pub fn await_response(&self, until: Instant) {
        self.expired.set(false);
        self.wait_until(Wait::Response(until), until);
    }

    /// The answer came (or the wait ended otherwise).
    pub fn response_arrived(&self) {
        self.wait.set(Wait::Nothing);
    }

    /// True once the wait for the member's answer has run out.
    pub fn response_expired(&self) -> bool {
        self.expired.get()
    }

    /// The driver's sleep fired or must move: what to do at `now`.
    pub fn fire(&self, now: Instant) -> Fired {
        self.sooner.set(false);
        let park_after = self.park_after.get();
        let at = match self.wait.get() {
            Wait::Head(at) if at <= now => return Fired::HeadTimeout,
            Wait::Head(at) if !self.park_asked.get() && park_after.is_some() => {
                // Waiting since `at - header_read_timeout`.
                let park = at
                    .checked_sub(self.header_read_timeout)
                    .zip(park_after)
                    .map_or(now, |(since, after)| since + after);
                if park <= now {
                    self.park_asked.set(true);
                    self.armed.set(at);
                    return Fired::Park(at);
                }
                park.min(at)
            }
            // Asked to park already (or never): sleep until the head is due.
            Wait::Head(at) => at,
            Wait::Response(at) if at <= now => {
                self.expired.set(true);
                self.wait.set(Wait::Nothing);
                now + self.header_read_timeout
            }
            Wait::Response(at) => at,
            // Nothing to time: look again after a while (an answer may stream for long).
            Wait::Nothing => now + self.header_read_timeout,
        };
        // Busy, or waiting for the member: a parking connection looks again after
        // `park_after`, so that it is asked to park soon after it goes idle.
        let at = match (self.wait.get(), park_after) {
            (Wait::Head(_), _) | (_, None) => at,
            (_, Some(after)) => at.min(now + after),
        };
        self.armed.set(at);
        Fired::Rearm(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: Duration = Duration::from_secs(10);

    #[test]
    fn a_head_not_in_time_closes_and_one_in_time_does_not() {
        let t0 = Instant::now();
        let d = Deadline::new(HEAD, t0);
        assert!(d.due(false), "the sleep is registered on the first poll");
        assert_eq!(d.fire(t0), Fired::Rearm(t0 + HEAD));
        assert!(!d.due(false));
        assert_eq!(d.fire(t0 + HEAD), Fired::HeadTimeout);

        let d = Deadline::new(HEAD, t0);
        d.busy();
        assert_eq!(d.fire(t0 + HEAD), Fired::Rearm(t0 + HEAD * 2));
    }

    #[test]
    fn a_sooner_response_deadline_moves_the_sleep_and_expires() {
        let t0 = Instant::now();
        let d = Deadline::new(HEAD, t0);
        d.fire(t0);
        d.busy();
        let until = t0 + Duration::from_millis(200);
        d.await_response(until);
        assert!(d.due(false));
        assert_eq!(d.fire(t0), Fired::Rearm(until));
        assert!(!d.response_expired());
        assert_eq!(d.fire(until), Fired::Rearm(until + HEAD));
        assert!(d.response_expired());
    }

    /// A connection waiting for a head is asked to park once it has waited `park_after`, once
    /// per wait; while busy its sleep looks again every `park_after`.
    #[test]
    fn a_connection_waiting_long_enough_for_a_head_is_asked_to_park_once() {
        let t0 = Instant::now();
        let after = Duration::from_secs(1);
        let d = Deadline::new(HEAD, t0).parking_after(after);
        assert_eq!(d.armed(), t0 + after);
        assert_eq!(d.fire(t0), Fired::Rearm(t0 + after));
        assert_eq!(d.fire(t0 + after), Fired::Park(t0 + HEAD));
        assert_eq!(d.armed(), t0 + HEAD);
        // Asked once: the parked connection's driver, and the one that takes it when bytes
        // come, sleep until the head is due.
        assert_eq!(d.fire(t0 + after * 2), Fired::Rearm(t0 + HEAD));
        assert_eq!(d.fire(t0 + HEAD), Fired::HeadTimeout);

        // Busy, then waiting for the member: it looks again every `after`.
        let t1 = t0 + HEAD;
        d.busy();
        assert_eq!(d.fire(t1), Fired::Rearm(t1 + after));
        d.await_response(t1 + HEAD);
        assert_eq!(d.fire(t1 + after), Fired::Rearm(t1 + after * 2));

        // Idle again from t2: asked `after` later, not before.
        let t2 = t1 + after * 2;
        d.response_arrived();
        d.await_head(t2);
        assert_eq!(d.fire(t2), Fired::Rearm(t2 + after));
        assert_eq!(d.fire(t2 + after / 2), Fired::Rearm(t2 + after));
        assert_eq!(d.fire(t2 + after), Fired::Park(t2 + HEAD));

        // hyper's server took the connection: never asked, and it sleeps as long as before.
        d.no_parking();
        d.await_head(t2 + after);
        assert_eq!(d.fire(t2 + after * 2), Fired::Rearm(t2 + after + HEAD));
        d.busy();
        assert_eq!(d.fire(t2 + HEAD), Fired::Rearm(t2 + HEAD * 2));
    }

    /// A parked connection taken up again keeps the head deadline of its wait and is not asked
    /// to park again in it; once answered, it is asked `park_after` into its next wait.
    #[test]
    fn a_resumed_connection_keeps_its_head_deadline() {
        let t0 = Instant::now();
        let after = Duration::from_secs(1);
        let d = Deadline::resumed(HEAD, t0 + HEAD, after);
        assert_eq!(d.head_due(), Some(t0 + HEAD));
        assert!(d.due(false), "a new driver arms its sleep");
        assert_eq!(d.fire(t0 + after * 2), Fired::Rearm(t0 + HEAD));
        assert_eq!(d.fire(t0 + HEAD), Fired::HeadTimeout);

        let d = Deadline::resumed(HEAD, t0 + HEAD, after);
        d.busy();
        assert_eq!(d.head_due(), None);
        let t1 = t0 + after * 3;
        d.await_head(t1);
        assert_eq!(d.head_due(), Some(t1 + HEAD));
        assert_eq!(d.fire(t1), Fired::Rearm(t1 + after));
        assert_eq!(d.fire(t1 + after), Fired::Park(t1 + HEAD));
    }

    #[test]
    fn a_later_deadline_waits_for_the_sleep_to_fire() {
        let t0 = Instant::now();
        let d = Deadline::new(HEAD, t0);
        d.fire(t0);
        d.busy();
        d.await_response(t0 + HEAD * 6);
        assert!(
            !d.due(false),
            "no timer work for a deadline after the armed one"
        );
        assert_eq!(d.fire(t0 + HEAD), Fired::Rearm(t0 + HEAD * 6));
        d.response_arrived();
        d.await_head(t0 + HEAD * 2);
        assert!(d.due(false));
        assert_eq!(d.fire(t0 + HEAD * 2), Fired::Rearm(t0 + HEAD * 3));
        assert_eq!(d.fire(t0 + HEAD * 3), Fired::HeadTimeout);
    }
}
