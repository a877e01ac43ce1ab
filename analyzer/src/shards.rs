//! The shard thread: where the replay's live-block tables are updated.
//!
//! The replay applies runs of allocator events in three passes (see
//! [`Replay::apply_chunk`](crate::replay::Replay::apply_chunk)): plan (which image and
//! heap, which shard), the shards' table operations, then the accounting in file order.
//! The middle pass is a third of the replay's work and needs nothing but the tables and
//! the run, so it runs here, on a thread of its own, while the replaying thread accounts
//! for earlier runs and plans later ones. The replaying thread takes a run back (and
//! accounts for it) only once more than [`RUNS_AHEAD`] are pending, so that neither
//! side waits for the other over the jitter of one run. The tables are
//! lent to this thread while runs flow (the replaying thread's passes never touch them)
//! and given back whenever the replay needs its state whole: before a record that
//! changes processes, threads or heaps, and at the end. Everything moves by channel:
//! nothing is shared.
//!
//! Why a thread and not the rayon pool: the pool decodes chunks, milliseconds of work
//! that a queued shard job would wait behind; the operating system time-slices a thread.
//! With one rayon thread (one core), the shards run inline on the replaying thread.

use std::collections::VecDeque;
use std::sync::mpsc;

use heaptape_format::Record;

use crate::heap::{Block, ImageId, Live, LiveTable};
use crate::replay::Step;

/// Runs the shards may have pending after the replaying thread took one back: with
/// more, it takes back the oldest (waiting for it if need be) before planning on.
pub(crate) const RUNS_AHEAD: usize = 2;

/// One live-table operation, run by the shard owning its address. The address is
/// copied here so that a removal or a look-up (and the prefetch of every operation's
/// slot) need not read the step: only an insertion reads its block from it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ShardOp {
    /// The address the operation is about.
    pub address: u64,
    /// Index into [`Batch::steps`].
    pub step: u32,
    /// Index into [`Batch::heaps`].
    pub heap: u16,
    /// Insert, remove or look up.
    pub kind: ShardOpKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ShardOpKind {
    /// Make the step's block live; the result is the block it replaced, if any (see
    /// [`Batch::replaced`]).
    Insert,
    /// Remove the block at the step's (old) address; the result is the block removed.
    Remove,
    /// The result is the live block at the step's old address (left live).
    Get,
}

impl ShardOp {
    /// The block an insert makes live.
    #[inline]
    fn block(self, steps: &[Step]) -> Block {
        match steps[self.step as usize] {
            Step::Alloc {
                img,
                stack,
                func,
                ts,
                size,
                ..
            }
            | Step::Realloc {
                img,
                stack,
                func,
                ts,
                size,
                ..
            } => Block {
                size,
                ts,
                stack,
                owner: img as ImageId,
                func,
            },
            _ => unreachable!("only allocations insert"),
        }
    }
}

/// One run of the batch path (see [`Replay::apply_chunk`]): everything its three passes
/// need, so that it can move to the shard thread and back.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub steps: Vec<Step>,
    /// The records of its [`Step::Deferred`] steps, in order (taken out of the chunk).
    pub deferred: Vec<Record>,
    /// Per shard: its operations, in file order.
    pub ops: Vec<Vec<ShardOp>>,
    /// Per shard: the results of its removals and look-ups, in order.
    pub results: Vec<Vec<Option<Block>>>,
    /// Per shard: the blocks its insertions replaced (an allocation at a live address,
    /// which is rare), with the insertion's step, in order. Insertions that replaced
    /// nothing leave no result: half the operations write and hand over nothing.
    pub replaced: Vec<Vec<(u32, Block)>>,
    /// The heaps the pending steps use (ids into `Replay::heaps`).
    pub heaps: Vec<usize>,
    /// The images the steps name.
    pub images: Vec<ImageId>,
    /// The steps' latest timestamp.
    pub max_ts: u64,
    /// A buffer for the frees of the run's summary (recycled from the freed-block
    /// history, so that no run allocates and faults in a fresh one).
    pub freed: Vec<crate::heap::Freed>,
    /// Each of those images' bucket clock before the run, as predicted when the run
    /// was handed over (see [`crate::summary`]).
    pub clocks: Vec<(ImageId, crate::growth::Clock)>,
}

impl Batch {
    /// Empties the run for reuse, keeping its buffers.
    pub fn clear(&mut self) {
        self.steps.clear();
        self.deferred.clear();
        for v in &mut self.ops {
            v.clear();
        }
        for v in &mut self.results {
            v.clear();
        }
        for v in &mut self.replaced {
            v.clear();
        }
        self.heaps.clear();
        self.images.clear();
        self.max_ts = 0;
        self.clocks.clear();
    }
}

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
    Ran(Batch),
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
                FromShards::Ran(batch) => batch,
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
        match crate::handoff::recv(from) {
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
            while let Ok(msg) = crate::handoff::recv(&todo) {
                let reply = match msg {
                    ToShards::Run(batch, lend) => {
                        let mut batch = *batch;
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
/// the others).
fn run_shards(batch: &mut Batch, lives: &mut Lent) {
    let shards = batch.ops.len();
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
    let steps = &batch.steps;
    let mut work = tables
        .iter_mut()
        .zip(&batch.ops)
        .zip(&mut batch.results)
        .zip(&mut batch.replaced)
        .map(|(((tables, ops), out), replaced)| (tables, ops, out, replaced));
    let Some((tables, ops, out, replaced)) = work.next() else {
        return;
    };
    if shards == 1 {
        run_shard(tables, steps, ops, out, replaced);
    } else {
        rayon::in_place_scope(|scope| {
            for (tables, ops, out, replaced) in work {
                scope.spawn(move |_| run_shard(tables, steps, ops, out, replaced));
            }
            run_shard(tables, steps, ops, out, replaced);
        });
    }
}

/// Runs one shard's operations on its tables (one per heap of the batch), prefetching
/// the slots of the operations a few steps ahead.
fn run_shard(
    tables: &mut [&mut LiveTable],
    steps: &[Step],
    ops: &[ShardOp],
    out: &mut Vec<Option<Block>>,
    replaced: &mut Vec<(u32, Block)>,
) {
    out.clear();
    out.reserve(ops.len());
    replaced.clear();
    for (i, &op) in ops.iter().enumerate() {
        if let Some(&next) = ops.get(i + PREFETCH_AHEAD) {
            tables[usize::from(next.heap)].prefetch(crate::hash::fmix64(next.address));
        }
        let t = &mut *tables[usize::from(op.heap)];
        let address = op.address;
        let hash = crate::hash::fmix64(address);
        match op.kind {
            ShardOpKind::Insert => {
                if let Some(old) = t.insert_hashed(address, hash, op.block(steps)) {
                    replaced.push((op.step, old));
                }
            }
            ShardOpKind::Remove => out.push(t.remove_hashed(address, hash)),
            ShardOpKind::Get => out.push(t.get_hashed(address, hash)),
        }
    }
}
