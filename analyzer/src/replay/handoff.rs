//! Receiving from the analyzer's pipeline channels without putting the CPU to sleep.
//!
//! The replay hands work between threads many times a second: a run of allocator
//! events to the shard thread and back (every fraction of a millisecond), decoded
//! chunks from the decoders. A blocked `recv` parks the thread, and if its CPU has
//! nothing else to run, the CPU goes idle; the sender's wake-up must then bring it back,
//! which on a virtual machine costs tens of microseconds to a tenth of a millisecond
//! (compare the recorder's same-CPU and other-CPU stop costs in docs/PERFORMANCE.md).
//! Paid at every handoff, those wake-ups kept 15% of a two-core machine idle during a
//! replay. So a receiver first polls for a short while, yielding its CPU to any other
//! runnable thread between polls (the decoders, for instance), and only then blocks.
//! See docs/PERFORMANCE.md.

use std::sync::mpsc::{Receiver, RecvError, TryRecvError};
use std::time::{Duration, Instant};

/// How long a receiver polls before it blocks: longer than the usual wait for a run
/// (a run takes about half a millisecond), short enough to cost nothing when the wait
/// is long.
const POLL: Duration = Duration::from_millis(1);

/// Receives like [`Receiver::recv`], polling for up to [`POLL`] before it blocks.
pub(crate) fn recv<T>(rx: &Receiver<T>) -> Result<T, RecvError> {
    let start = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(v) => return Ok(v),
            Err(TryRecvError::Disconnected) => return Err(RecvError),
            Err(TryRecvError::Empty) => {}
        }
        if start.elapsed() > POLL {
            return rx.recv();
        }
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn receives_what_was_sent_and_sees_the_end() {
        let (tx, rx) = mpsc::channel();
        let sender = std::thread::spawn(move || {
            for i in 0..1000u32 {
                if i % 100 == 0 {
                    // Long enough for the receiver to stop polling and block.
                    std::thread::sleep(POLL * 3);
                }
                tx.send(i).unwrap();
            }
        });
        let mut got = Vec::new();
        while let Ok(v) = recv(&rx) {
            got.push(v);
        }
        sender.join().unwrap();
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
    }
}
