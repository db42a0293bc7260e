//! Waiting on a set of futures whose number is known only at run time (one watch per service),
//! for whichever finishes first.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

/// Finishes when the first of `futures` does; never, for none, so a caller's other `select!`
/// arms (a timeout, a closed client) decide alone.
pub(crate) async fn first_of<F: Future + Unpin>(futures: impl Iterator<Item = F>) {
    let mut futures: Vec<F> = futures.collect();
    std::future::poll_fn(|cx| {
        for f in &mut futures {
            if Pin::new(&mut *f).poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use tokio::sync::oneshot;

    use super::first_of;

    fn poll_once(future: impl Future<Output = ()>) -> Poll<()> {
        pin!(future).poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn finishes_once_any_one_has_and_never_for_none() {
        let (senders, mut receivers): (Vec<_>, Vec<_>) = (0..3).map(|_| oneshot::channel::<()>()).unzip();
        assert!(poll_once(first_of(receivers.iter_mut())).is_pending(), "none has finished yet");
        let mut senders = senders.into_iter();
        let _first = senders.next();
        senders.next().unwrap().send(()).unwrap();
        assert!(poll_once(first_of(receivers.iter_mut())).is_ready(), "the second one has finished");

        let none = first_of(std::iter::empty::<std::future::Ready<()>>());
        assert!(poll_once(none).is_pending(), "with no futures it must not finish");
    }
}
