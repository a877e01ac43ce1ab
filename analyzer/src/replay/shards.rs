//! The shard thread: where the replay's live-block tables are updated.
//!
//! The replay applies runs of allocator events in three passes (see
//! [`Replay::apply_prepared`](super::Replay::apply_prepared)): binding the run's
//! threads to their images and heaps, the shards' table operations (listed when the
//! chunk was prepared, see [`super::prepare`]), then the accounting in file order. The
//! middle pass is a third of the replay's work and needs nothing but the tables, the
//! run's records and its bindings, so it runs here, on a thread of its own, while the
//! pool summarizes earlier runs and the replaying thread merges them and binds later
//! ones. The replaying thread takes a run back only once more than [`RUNS_AHEAD`] are
//! pending, so that neither side waits for the other over the jitter of one run. The
//! tables are lent to this thread while runs flow (the other passes never touch them)
//! and given back whenever the replay needs its state whole: before a record that
//! changes processes, threads or heaps, and at the end. Everything moves by channel;
//! the only thing shared is the chunk, read-only.
//!
//! Why a thread and not the rayon pool: the pool decodes chunks, milliseconds of work
//! that a queued shard job would wait behind; the operating system time-slices a thread.
//! With one rayon thread (one core), the shards run inline on the replaying thread.

use std::collections::VecDeque;
use std::sync::mpsc;

use heaptape_format::Record;

use super::batch::{Batch, Miss};
use super::describe::{describe_misses, RunView};
use super::handoff;
use super::heap::{Block, Live, LiveTable};
use super::prepare::{ShardOp, ShardOpKind};
use super::step::{heap_of, inserted_block, Bindings, LastBinding};
use crate::hash::fmix64;
use crate::platform::prefetch;

/// Runs the shards may have pending after the replaying thread took one back: with
/// more, it takes back the oldest (waiting for it if need be) before handing more over.
pub(crate) const RUNS_AHEAD: usize = 2;

/// How far ahead a shard prefetches the slots of its next operations.
const PREFETCH_AHEAD: usize = 8;

/// Live blocks lent to the shards: a heap's id and its blocks.
pub(crate) type Lent = Vec<(usize, Live)>;

enum ToShards {
    /// Run this batch; the heaps that come with it are lent from now on (boxed: a
    /// message per run of thousands of steps).
    Run(Box<Batch>, Lent),
    /// Give every lent heap back.
    Return,
}

enum FromShards {
    Ran(Box<Batch>),
    Returned(Lent),
}

/// Where runs' shard operations happen: a thread, or inline.
pub(crate) struct Shards {
    mode: Mode,
    /// Runs handed over, not yet taken back.
    pending: usize,
    /// Heaps lent (ids).
    lent: Vec<usize>,
}

enum Mode {
    Thread {
        to: Option<mpsc::Sender<ToShards>>,
        from: mpsc::Receiver<FromShards>,
        handle: Option<std::thread::JoinHandle<()>>,
    },
    Inline {
        lives: Lent,
        done: VecDeque<Batch>,
    },
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards")
            .field("thread", &matches!(self.mode, Mode::Thread { .. }))
            .field("pending", &self.pending)
            .field("lent", &self.lent)
            .finish()
    }
}

impl Shards {
    /// Shards on a thread of their own when there is more than one core to use (and
    /// the system starts the thread), inline otherwise.
    pub fn new() -> Self {
        let mode = if rayon::current_num_threads() > 1 {
            spawn()
        } else {
            None
        };
        Shards {
            mode: mode.unwrap_or(Mode::Inline {
                lives: Vec::new(),
                done: VecDeque::new(),
            }),
            pending: 0,
            lent: Vec::new(),
        }
    }

    /// Whether heap `id`'s blocks are lent.
    pub fn has(&self, id: usize) -> bool {
        self.lent.contains(&id)
    }

    /// Runs handed over and not yet taken back.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Hands a run over, with the blocks of the heaps it uses that are not lent yet.
    pub fn run(&mut self, batch: Batch, lend: Lent) {
        self.lent.extend(lend.iter().map(|(id, _)| *id));
        self.pending += 1;
        match &mut self.mode {
            Mode::Thread { to, .. } => {
                // The thread is gone only after a panic, which `take` passes on.
                if let Some(to) = to {
                    let _ = to.send(ToShards::Run(Box::new(batch), lend));
                }
            }
            Mode::Inline { lives, done } => {
                lives.extend(lend);
                let mut batch = batch;
                run_shards(&mut batch, lives);
                done.push_back(batch);
            }
        }
    }

    /// The oldest run handed over, with its results.
    pub fn take(&mut self) -> Batch {
        debug_assert!(self.pending > 0);
        self.pending -= 1;
        match &mut self.mode {
            Mode::Thread { .. } => match self.receive() {
                FromShards::Ran(batch) => *batch,
                FromShards::Returned(_) => unreachable!("blocks come back only when asked"),
            },
            Mode::Inline { done, .. } => done.pop_front().expect("a run per take"),
        }
    }

    /// Every lent heap's blocks, back (with no run pending).
    pub fn take_back(&mut self) -> Lent {
        debug_assert_eq!(self.pending, 0);
        if self.lent.is_empty() {
            return Vec::new();
        }
        self.lent.clear();
        match &mut self.mode {
            Mode::Thread { to, .. } => {
                if let Some(to) = to {
                    let _ = to.send(ToShards::Return);
                }
                match self.receive() {
                    FromShards::Returned(lives) => lives,
                    FromShards::Ran(_) => unreachable!("no run was pending"),
                }
            }
            Mode::Inline { lives, .. } => std::mem::take(lives),
        }
    }

    /// The thread's next message; its panic, if it stopped.
    fn receive(&mut self) -> FromShards {
        let Mode::Thread { to, from, handle } = &mut self.mode else {
            unreachable!("only the thread sends");
        };
        match handoff::recv(from) {
            Ok(msg) => msg,
            Err(_) => {
                *to = None;
                match handle.take().map(std::thread::JoinHandle::join) {
                    Some(Err(panic)) => std::panic::resume_unwind(panic),
                    _ => unreachable!("the shard thread stopped without a panic"),
                }
            }
        }
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        if let Mode::Thread { to, handle, .. } = &mut self.mode {
            // Closing the channel ends the thread's loop.
            *to = None;
            if let Some(handle) = handle.take() {
                let _ = handle.join();
            }
        }
    }
}

/// Starts the shard thread.
fn spawn() -> Option<Mode> {
    let (to, todo) = mpsc::channel::<ToShards>();
    let (done, from) = mpsc::channel::<FromShards>();
    let handle = std::thread::Builder::new()
        .name("heaptape-shards".into())
        .spawn(move || {
            let mut lives: Lent = Vec::new();
            while let Ok(msg) = handoff::recv(&todo) {
                let reply = match msg {
                    ToShards::Run(mut batch, lend) => {
                        lives.extend(lend);
                        run_shards(&mut batch, &mut lives);
                        FromShards::Ran(batch)
                    }
                    ToShards::Return => FromShards::Returned(std::mem::take(&mut lives)),
                };
                if done.send(reply).is_err() {
                    break;
                }
            }
        })
        .ok()?;
    Some(Mode::Thread {
        to: Some(to),
        from,
        handle: Some(handle),
    })
}

/// Runs a run's shard operations on the lent heaps: each shard's in file order, the
/// shards in parallel when there are several (this thread runs the first, the pool
/// the others); then, if some removal found no live block, looks up the block each
/// such address lay in at its moment (see [`super::describe`]).
fn run_shards(batch: &mut Batch, lives: &mut Lent) {
    let shards = batch.results.len();
    batch.misses.resize_with(shards, Vec::new);
    // The batch's heaps, in `batch.heaps` order (a run uses a handful at most).
    lives.sort_unstable_by_key(|(id, _)| {
        batch
            .heaps
            .iter()
            .position(|h| h == id)
            .unwrap_or(usize::MAX)
    });
    let used = &mut lives[..batch.heaps.len()];
    debug_assert!(used.iter().zip(&batch.heaps).all(|((id, _), h)| id == h));
    // Per shard: its table of every heap of the batch.
    let mut tables: Vec<Vec<&mut LiveTable>> = (0..shards)
        .map(|_| Vec::with_capacity(used.len()))
        .collect();
    for (_, live) in used.iter_mut() {
        let own = live.shards_mut();
        debug_assert_eq!(own.len(), shards, "every heap has the replay's shards");
        for (s, t) in own.iter_mut().enumerate() {
            tables[s].push(t);
        }
    }
    let chunk = batch.chunk.as_deref().expect("a run has a chunk");
    let bindings = &batch.bindings;
    let records = &chunk.records;
    {
        let mut work = tables
            .iter_mut()
            .zip(chunk.ops.iter().zip(&batch.op_ranges))
            .zip(&mut batch.results)
            .zip(&mut batch.replaced)
            .zip(&mut batch.misses)
            .map(
                |((((tables, (ops, range)), out), replaced), misses)| Shard {
                    tables,
                    ops: &ops[range.clone()],
                    out,
                    replaced,
                    misses,
                },
            );
        let Some(first) = work.next() else {
            return;
        };
        if shards == 1 {
            run_shard(first, records, bindings);
        } else {
            rayon::in_place_scope(|scope| {
                for shard in work {
                    scope.spawn(move |_| run_shard(shard, records, bindings));
                }
                run_shard(first, records, bindings);
            });
        }
    }
    batch.described.clear();
    if batch.misses.iter().any(|m| !m.is_empty()) {
        let run = RunView {
            chunk,
            op_ranges: &batch.op_ranges,
            bindings: &batch.bindings,
            results: &batch.results,
            replaced: &batch.replaced,
            misses: &batch.misses,
            complete: &batch.complete,
            internal: &batch.internal,
        };
        describe_misses(&mut tables, &run, &mut batch.described);
    }
}

/// One shard's part of a run: its tables (one per heap of the batch), its operations,
/// and where their results go.
struct Shard<'a, 't> {
    tables: &'a mut [&'t mut LiveTable],
    ops: &'a [ShardOp],
    out: &'a mut Vec<Option<Block>>,
    replaced: &'a mut Vec<(u32, Block)>,
    misses: &'a mut Vec<Miss>,
}

/// Runs one shard's operations on its tables (one per heap of the batch), prefetching
/// the slots of the operations a few steps ahead. Operations of threads whose image
/// has no heap are skipped (their records change counters only).
fn run_shard(shard: Shard<'_, '_>, records: &[Record], bindings: &Bindings) {
    shard.out.clear();
    shard.out.reserve(shard.ops.len());
    shard.replaced.clear();
    shard.misses.clear();
    match bindings.single_heap() {
        // Every thread's events go to one heap (the usual case): no look-up per
        // operation.
        Some(img) => {
            let one = |_: &mut LastBinding, _| Some((0, img));
            run_ops(shard, records, one);
        }
        None => {
            let look_up = |last: &mut LastBinding, tid| heap_of(bindings, last, tid);
            run_ops(shard, records, look_up);
        }
    }
}

/// [`run_shard`]'s loop, with `binding_of` giving the heap (index into `tables`) and the
/// image of a thread's operations (`None`: skip them), through a one-entry cache: one
/// for the operations run, one for those prefetched ahead of them.
#[inline(always)]
fn run_ops(
    shard: Shard<'_, '_>,
    records: &[Record],
    binding_of: impl Fn(&mut LastBinding, u32) -> Option<(u16, u32)>,
) {
    let Shard {
        tables,
        ops,
        out,
        replaced,
        misses,
    } = shard;
    let (mut last, mut ahead) = (LastBinding::default(), LastBinding::default());
    for (i, &op) in ops.iter().enumerate() {
        if let Some(&next) = ops.get(i + PREFETCH_AHEAD) {
            // The table of the next operation's heap (the first one if it is skipped:
            // a prefetch is only a hint).
            let h = match tables.len() {
                1 => 0,
                _ => binding_of(&mut ahead, next.tid).map_or(0, |(h, _)| usize::from(h)),
            };
            tables[h].prefetch(fmix64(next.address));
            if next.kind() == ShardOpKind::Insert {
                // Its block comes from its record.
                prefetch(&records[next.index() as usize]);
            }
        }
        let Some((h, img)) = binding_of(&mut last, op.tid) else {
            continue;
        };
        let t = &mut *tables[usize::from(h)];
        let address = op.address;
        let hash = fmix64(address);
        let found = match op.kind() {
            ShardOpKind::Insert => {
                let index = op.index();
                let block = inserted_block(&records[index as usize], img);
                if let Some(old) = t.insert_hashed(address, hash, block) {
                    replaced.push((index, old));
                }
                continue;
            }
            ShardOpKind::Remove => t.remove_hashed(address, hash),
            ShardOpKind::Get => t.get_hashed(address, hash),
        };
        if found.is_none() {
            misses.push(Miss {
                index: op.index(),
                heap: h,
                img,
                address,
            });
        }
        out.push(found);
    }
}
