//! Loading's work spread over the machine's threads.
//!
//! Runs at load, never on the request path: a large policy set is mostly
//! work done once per policy (parsing, validating, deriving its rule),
//! each policy on its own, so it is cut into parts done apart and put
//! back together in order.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The machine's threads.
pub(super) fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `work` on every task, on up to `threads` threads, each taking the
/// next task in turn; the results in the tasks' order. A task whose thread
/// panicked has no result.
pub(super) fn run<T, R, W>(tasks: &[T], threads: usize, work: W) -> Vec<Option<R>>
where
    T: Sync,
    R: Send,
    W: Fn(&T) -> R + Sync,
{
    let threads = threads.min(tasks.len());
    if threads <= 1 {
        return tasks.iter().map(|task| Some(work(task))).collect();
    }
    let next = AtomicUsize::new(0);
    let done: Vec<Vec<(usize, R)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let at = next.fetch_add(1, Ordering::Relaxed);
                        let Some(task) = tasks.get(at) else { break };
                        done.push((at, work(task)));
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().unwrap_or_default())
            .collect()
    });
    let mut results: Vec<Option<R>> = tasks.iter().map(|_| None).collect();
    for (task, result) in done.into_iter().flatten() {
        results[task] = Some(result);
    }
    results
}
