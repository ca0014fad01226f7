//! A boxed place for one future at a time, allocated by the first and used again by the next
//! ones: a keep-alive connection's requests take no allocation for their futures.

use std::pin::Pin;

/// The place; empty (no allocation) until the first future.
pub struct Slot<F>(Option<Pin<Box<F>>>);

impl<F> Slot<F> {
    pub const fn new() -> Self {
        Slot(None)
    }

    /// Puts `future` in the box (the one before it, if any, is dropped first), to be polled
    /// where it stands. The future is moved once, into its place: wrapped in anything on its
    /// way (an `Option`), it was copied twice (a request's future is a kilobyte).
    #[inline(always)]
    pub fn put(&mut self, future: F) -> Pin<&mut F> {
        let boxed = match self.0.take() {
            Some(mut boxed) => {
                boxed.set(future);
                boxed
            }
            None => Box::pin(future),
        };
        self.0.insert(boxed).as_mut()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;
    use std::task::{Context, Poll, Waker};

    use super::*;

    /// A future that counts its drops.
    struct Counted(u32, Rc<Cell<u32>>);

    impl Future for Counted {
        type Output = u32;
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<u32> {
            Poll::Ready(self.0)
        }
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.set(self.1.get() + 1);
        }
    }

    fn poll(place: Pin<&mut Counted>) -> (Poll<u32>, *const Counted) {
        let at = std::ptr::from_ref(place.as_ref().get_ref());
        let mut cx = Context::from_waker(Waker::noop());
        (place.poll(&mut cx), at)
    }

    #[test]
    fn every_future_goes_in_the_first_ones_box() {
        let dropped = Rc::new(Cell::new(0));
        let mut slot = Slot::new();
        let (first, at) = poll(slot.put(Counted(1, dropped.clone())));
        assert_eq!(first, Poll::Ready(1));
        assert_eq!(dropped.get(), 0);
        let (second, again) = poll(slot.put(Counted(2, dropped.clone())));
        assert_eq!(second, Poll::Ready(2));
        assert_eq!(
            dropped.get(),
            1,
            "the first future is dropped when the second comes"
        );
        assert_eq!(at, again, "the same box");
        drop(slot);
        assert_eq!(dropped.get(), 2);
    }
}
