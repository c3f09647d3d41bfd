//! A future that is polled only when it has asked to be.
//!
//! A connection's task wakes for every read and write, and a plain `select!` polls each of
//! its branches every time: a cancellation token's future takes a lock to look at its
//! state, a timer re-checks its deadline and re-registers its waker. [`Dormant`] gives the
//! inner future a waker of its own that raises a flag before waking the task; the task's
//! other wake-ups find the flag down and skip the inner future with one atomic swap.
//!
//! The accept loop's drain cut does the same with less: it fires its token itself, so one
//! flag shared by every connection says when to look, with no waker of its own per
//! connection (held connections are counted in bytes, see `Connection` in the crate root).

use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

pin_project! {
    /// `inner`, polled on the first poll and then only after it woke its task.
    pub struct Dormant<F> {
        #[pin]
        inner: F,
        alarm: Arc<Alarm>,
        // The waker `inner` is polled with: it raises `alarm`.
        own: Waker,
        // The task waker `alarm` holds, to notice a change without taking its lock.
        task: Option<Waker>,
    }
}

impl<F> Dormant<F> {
    /// Wraps `inner`.
    pub fn new(inner: F) -> Self {
        let alarm = Arc::new(Alarm::default());
        Self {
            inner,
            own: Waker::from(alarm.clone()),
            alarm,
            task: None,
        }
    }
}

impl<F> std::fmt::Debug for Dormant<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dormant")
            .field("raised", &self.alarm.raised.load(Ordering::Relaxed))
            .finish()
    }
}

/// What the inner future's waker does: raise the flag, then wake the task.
#[derive(Default)]
struct Alarm {
    raised: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Alarm {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.raised.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

impl<F: Future> Future for Dormant<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let moved = !this.task.as_ref().is_some_and(|t| t.will_wake(cx.waker()));
        if moved {
            // First poll, or the future went to another task: the alarm must wake this one,
            // and the inner future may have missed nothing only if it is polled now.
            *this.task = Some(cx.waker().clone());
            *this.alarm.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        } else if !this.alarm.raised.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner.poll(&mut Context::from_waker(this.own))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Counts its polls; ready once `ready` is set, pending (and waking nobody) until then.
    struct Counted {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Counted {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn the_inner_future_is_polled_once_then_only_after_its_own_wake_up() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(Mutex::new(None::<Waker>));
        let mut dormant = Box::pin(Dormant::new(Counted {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: waker.clone(),
        }));
        // Many wake-ups of the task that are not the inner future's: one poll in all.
        for _ in 0..10 {
            let pending = std::future::poll_fn(|cx| Poll::Ready(dormant.as_mut().poll(cx))).await;
            assert!(pending.is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        // Its own wake-up gets it polled, and it completes.
        ready.store(true, Ordering::SeqCst);
        let own = waker.lock().unwrap().take().unwrap();
        own.wake();
        tokio::time::timeout(Duration::from_secs(1), dormant.as_mut())
            .await
            .expect("woken by its own waker, it is polled and completes");
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_timer_inside_fires_while_its_task_is_busy_elsewhere() {
        let timer = Dormant::new(tokio::time::sleep(Duration::from_millis(50)));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        // The task keeps waking for another reason; the timer still ends the select.
        tokio::spawn(async move {
            while tx.send(()).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        tokio::pin!(timer);
        let fired = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                tokio::select! {
                    () = &mut timer => return,
                    Some(()) = rx.recv() => {}
                }
            }
        })
        .await;
        assert!(fired.is_ok(), "the dormant timer never fired");
    }
}
