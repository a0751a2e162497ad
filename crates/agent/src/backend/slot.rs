//! Exclusive channels: one session at a time on a virtio-serial port (a
//! guest agent serves one client), taken over only with `--force`.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use vmgate_wire::{Close, CloseCode};

/// How long a session asking for a channel that is held waits for it to be
/// released before it is refused "in use": the session before it may be in
/// its last moments (its client already saw the close and came back).
const IN_USE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Holds an exclusive channel (a guest agent serves one client at a time).
#[derive(Default)]
pub struct Slot {
    holder: Mutex<Option<(u64, CancellationToken)>>,
    released: tokio::sync::Notify,
}

/// Frees the slot when the session ends, unless it was taken over.
pub struct SlotGuard {
    slot: Arc<Slot>,
    session: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut h = self.slot.holder.lock().expect("slot lock");
        if h.as_ref().is_some_and(|(s, _)| *s == self.session) {
            *h = None;
            self.slot.released.notify_waiters();
        }
    }
}

impl Slot {
    /// Takes the slot for `session`; with `force`, ends the current holder.
    /// Without, waits up to [`IN_USE_GRACE`] for the holder to let go.
    pub async fn take(
        self: &Arc<Self>,
        session: u64,
        force: bool,
        what: &str,
    ) -> Result<(CancellationToken, SlotGuard), Close> {
        if !force {
            let _ = tokio::time::timeout(IN_USE_GRACE, async {
                loop {
                    let released = self.released.notified();
                    tokio::pin!(released);
                    // Registered before the check, so a release between
                    // the check and the wait is not missed.
                    released.as_mut().enable();
                    if self.holder.lock().expect("slot lock").is_none() {
                        return;
                    }
                    released.await;
                }
            })
            .await;
        }
        self.take_now(session, force, what)
    }

    fn take_now(
        self: &Arc<Self>,
        session: u64,
        force: bool,
        what: &str,
    ) -> Result<(CancellationToken, SlotGuard), Close> {
        let mut h = self.holder.lock().expect("slot lock");
        if let Some((_, token)) = h.as_ref() {
            if !force {
                return Err(Close::new(
                    CloseCode::ChannelInUse,
                    format!("{what} is in use by another session (use --force to take it over)"),
                ));
            }
            token.cancel();
        }
        let token = CancellationToken::new();
        *h = Some((session, token.clone()));
        Ok((
            token,
            SlotGuard {
                slot: self.clone(),
                session,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_slot_released_in_its_last_moments_is_taken_and_a_held_one_is_in_use() {
        let slot = Arc::new(Slot::default());
        let (_t1, g1) = slot.take(1, false, "ch").await.unwrap();
        // Released half a second later: the next session gets it.
        let release = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            drop(g1);
        });
        let (t2, _g2) = slot.take(2, false, "ch").await.unwrap();
        release.await.unwrap();
        // Held for good: refused after the grace, with the reason.
        let refused = slot.take(3, false, "channel x of y").await.err().unwrap();
        assert_eq!(refused.code, CloseCode::ChannelInUse);
        assert!(
            refused.reason.contains("channel x of y is in use"),
            "{refused}"
        );
        // --force takes it at once and tells the holder.
        let started = tokio::time::Instant::now();
        let (_t4, _g4) = slot.take(4, true, "ch").await.unwrap();
        assert_eq!(started.elapsed(), std::time::Duration::ZERO);
        assert!(t2.is_cancelled());
    }
}
