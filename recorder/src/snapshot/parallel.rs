//! Work spread over the machine's CPUs while the traced process is stopped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Threads at most.
const MAX_THREADS: usize = 8;

/// `f` applied to every item, on up to [`MAX_THREADS`] threads (one per CPU; one,
/// the caller's, unless `parallel`: starting threads costs more than small work); the
/// results in the items' order. Each thread has a `state` made by `init` (a reusable
/// buffer) that `f` gets with each item.
pub(super) fn map_with<T: Sync, S, R: Send>(
    items: &[T],
    parallel: bool,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, &T) -> R + Sync,
) -> Vec<R> {
    let threads = if parallel {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        1
    }
    .min(MAX_THREADS)
    .min(items.len());
    if threads <= 1 {
        let mut state = init();
        return items.iter().map(|item| f(&mut state, item)).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                crate::sys::block_tracer_signals();
                let mut state = init();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(&mut state, item);
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every item was taken by a thread"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_items_order_and_states_are_reused() {
        let items: Vec<u64> = (0..1000).collect();
        let out = map_with(
            &items,
            true,
            || 0u64,
            |calls, &x| {
                *calls += 1;
                (x * x, *calls)
            },
        );
        assert_eq!(out.len(), 1000);
        for (i, (sq, _)) in out.iter().enumerate() {
            assert_eq!(*sq, (i * i) as u64);
        }
        // Some thread's state saw more than one item.
        assert!(out.iter().any(|&(_, calls)| calls > 1));
        assert!(map_with(&[] as &[u64], true, || (), |_, &x| x).is_empty());
        let serial = map_with(
            &items,
            false,
            || 0u64,
            |calls, _| {
                *calls += 1;
                *calls
            },
        );
        assert_eq!(serial.last(), Some(&1000));
    }
}
