//! Process lifecycle: processes starting (launched, attached, forked, vforked,
//! cloned), threads binding to them, `execve` starting a new image, processes and
//! images ending. This is where heaps are created, shared with a `vfork` child, copied
//! for a `fork` child (whose inherited blocks it accounts) and dropped with their last
//! user.

use crate::checks::resources::known_mapper;
use crate::checks::timeline::Mappers;
use heaptape_format::{ExitStatus, ProcessOrigin, Timestamp};

use super::heap::{Heap, ImageId};
use super::model::{Image, ImageEnd};
use super::Replay;
use crate::hash::FastSet;
use crate::modules::ModuleMap;

/// A process of the trace while the replay runs.
#[derive(Clone, Debug)]
pub(super) struct ProcState {
    pub(super) pid: u32,
    pub(super) parent_pid: Option<u32>,
    pub(super) origin: Option<ProcessOrigin>,
    pub(super) exit: Option<ExitStatus>,
    /// Its images, in order (the last one runs).
    pub(super) images: Vec<ImageId>,
    pub(super) ended: bool,
    /// Its threads now.
    pub(super) threads: FastSet<u32>,
}

impl ProcState {
    /// The image it runs.
    pub(super) fn current(&self) -> ImageId {
        *self.images.last().expect("a process always has an image")
    }
}

/// A thread bound to a process.
#[derive(Clone, Copy, Debug)]
pub(super) struct Thread {
    /// Its process (an index into the replay's processes).
    pub(super) process: usize,
    /// The thread's latest allocation, while it may still turn out temporary.
    pub(super) last_alloc: Option<(ImageId, u64)>,
}

impl Replay {
    /// The running process with `pid`.
    pub(super) fn running(&self, pid: u32) -> Option<usize> {
        self.by_pid
            .get(&pid)
            .copied()
            .filter(|&p| !self.procs[p].ended)
    }

    /// The running process with `pid`, created if the trace never started it.
    pub(super) fn process_for(&mut self, pid: u32, ts: Timestamp) -> usize {
        if let Some(p) = self.running(pid) {
            return p;
        }
        let first_process = pid == self.header_pid && !self.by_pid.contains_key(&pid);
        let command = if first_process {
            self.header_command.clone()
        } else {
            Vec::new()
        };
        let heap = self.new_heap(Heap::new(first_process, self.shards));
        self.add_process(ts, pid, None, None, command, heap, ModuleMap::new())
    }

    pub(super) fn new_heap(&mut self, heap: Heap) -> usize {
        self.heaps.push(Some(heap));
        self.heaps.len() - 1
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_process(
        &mut self,
        ts: Timestamp,
        pid: u32,
        parent_pid: Option<u32>,
        origin: Option<ProcessOrigin>,
        command: Vec<String>,
        heap: usize,
        modules: ModuleMap,
    ) -> usize {
        let img = self.images.len();
        self.images.push(Image::new(command, ts, heap, modules));
        let p = self.procs.len();
        self.procs.push(ProcState {
            pid,
            parent_pid,
            origin,
            exit: None,
            images: vec![img],
            ended: false,
            threads: FastSet::default(),
        });
        self.by_pid.insert(pid, p);
        // The main thread's tid is the pid.
        self.bind_thread(pid, p);
        p
    }

    pub(super) fn bind_thread(&mut self, tid: u32, process: usize) {
        let old = self.threads.insert(
            tid,
            Thread {
                process,
                last_alloc: None,
            },
        );
        if let Some(old) = old {
            if old.process != process {
                self.procs[old.process].threads.remove(&tid);
            }
        }
        self.procs[process].threads.insert(tid);
    }

    pub(super) fn process_start(
        &mut self,
        ts: Timestamp,
        pid: u32,
        parent_pid: Option<u32>,
        origin: ProcessOrigin,
        command: Vec<String>,
    ) {
        if let Some(p) = self.running(pid) {
            if self.procs[p].origin.is_none() {
                // Its records came before its start: the start completes it.
                let proc = &mut self.procs[p];
                proc.origin = Some(origin);
                proc.parent_pid = parent_pid;
                let img = proc.current();
                if !command.is_empty() {
                    self.images[img].command = command;
                }
                return;
            }
            self.anomalies.duplicate_process_starts += 1;
            self.end_process(p, ts, None, ImageEnd::Superseded);
        }
        let parent_img = parent_pid
            .and_then(|pp| self.running(pp))
            .map(|pp| self.procs[pp].current());
        let child_img = self.images.len();
        let (heap, modules) = match (origin, parent_img) {
            (ProcessOrigin::Fork, Some(pi)) => {
                let parent = &self.images[pi];
                let heap = match self.heaps.get(parent.heap).and_then(Option::as_ref) {
                    Some(h) => h.fork(child_img),
                    None => Heap::new(false, self.shards),
                };
                let modules = parent.modules.clone();
                (self.new_heap(heap), modules)
            }
            (ProcessOrigin::Vfork | ProcessOrigin::Clone, Some(pi)) => {
                let (heap_id, modules) = (self.images[pi].heap, self.images[pi].modules.clone());
                match self.heaps.get_mut(heap_id).and_then(Option::as_mut) {
                    Some(h) => {
                        h.users += 1;
                        (heap_id, modules)
                    }
                    None => (self.new_heap(Heap::new(false, self.shards)), modules),
                }
            }
            (ProcessOrigin::Launched, _) => (
                self.new_heap(Heap::new(true, self.shards)),
                ModuleMap::new(),
            ),
            // Attached, or a child whose parent the trace does not know: blocks may exist
            // that the trace never saw allocated.
            _ => (
                self.new_heap(Heap::new(false, self.shards)),
                ModuleMap::new(),
            ),
        };
        let p = self.add_process(ts, pid, parent_pid, Some(origin), command, heap, modules);
        debug_assert_eq!(self.procs[p].current(), child_img);
        if origin == ProcessOrigin::Fork {
            self.inherit(child_img, ts);
        }
    }

    /// Accounts a fork child's copied heap as its inherited live blocks.
    pub(super) fn inherit(&mut self, img: ImageId, ts: Timestamp) {
        let image = &mut self.images[img];
        let Some(heap) = self.heaps.get(image.heap).and_then(Option::as_ref) else {
            return;
        };
        for b in heap.live.values() {
            let site = image.sites.touch_at(b.stack, ts);
            site.live_blocks += 1;
            site.live_bytes = site.live_bytes.saturating_add(b.size);
            site.inherited_blocks += 1;
            site.inherited_bytes = site.inherited_bytes.saturating_add(b.size);
            image.live_blocks += 1;
            image.live_bytes = image.live_bytes.saturating_add(b.size);
        }
        image.totals.inherited_blocks = image.live_blocks;
        image.totals.inherited_bytes = image.live_bytes;
        if image.live_bytes > 0 {
            image.totals.peak_live_bytes = image.live_bytes;
            image.totals.peak_live_blocks = image.live_blocks;
            image.totals.peak_ts = Some(ts);
            image.sites.new_peak();
        }
    }

    pub(super) fn exec(&mut self, ts: Timestamp, pid: u32, command: Vec<String>) {
        let p = self.process_for(pid, ts);
        let old = self.procs[p].current();
        self.close_image(old, ts, ImageEnd::Exec);
        let heap = self.new_heap(Heap::new(true, self.shards));
        let img = self.images.len();
        self.images
            .push(Image::new(command, ts, heap, ModuleMap::new()));
        self.procs[p].images.push(img);
    }

    pub(super) fn close_image(&mut self, img: ImageId, ts: Timestamp, end: ImageEnd) {
        let image = &mut self.images[img];
        if !image.is_open() {
            return;
        }
        image.sites.settle_at(ts.max(image.start_ts));
        let live = self.heaps.get(image.heap).and_then(Option::as_ref);
        image.timeline.finish(
            live.into_iter().flat_map(|h| {
                h.live
                    .values()
                    .filter(move |b| b.owner == img)
                    .map(|b| (b.stack, b.size, b.ts))
            }),
            image
                .resources
                .own_mappings()
                .into_iter()
                .map(|m| (m.stack, m.len, m.ts, None))
                .chain(
                    image
                        .resources
                        .unmapped_own()
                        .iter()
                        .map(|u| (u.stack, u.len, u.mapped, Some(u.unmapped))),
                ),
            &Mappers {
                caller: &|stack| self.stacks.iter(stack).next().unwrap_or(0),
                note: &|stack| known_mapper(&self.stacks, &image.modules, stack),
            },
        );
        image.totals.live_at_exit_blocks = image.live_blocks;
        image.totals.live_at_exit_bytes = image.live_bytes;
        image.end_ts = ts.max(image.start_ts);
        image.end = Some(end);
        if let Some(slot) = self.heaps.get_mut(image.heap) {
            if let Some(heap) = slot {
                heap.users = heap.users.saturating_sub(1);
                if heap.users == 0 {
                    *slot = None;
                }
            }
        }
    }

    pub(super) fn end_process(
        &mut self,
        p: usize,
        ts: Timestamp,
        exit: Option<ExitStatus>,
        end: ImageEnd,
    ) {
        let img = self.procs[p].current();
        self.close_image(img, ts, end);
        let proc = &mut self.procs[p];
        proc.exit = exit;
        proc.ended = true;
        for tid in std::mem::take(&mut proc.threads) {
            if self.threads.get(&tid).is_some_and(|t| t.process == p) {
                self.threads.remove(&tid);
            }
        }
    }

    /// The current image of the process `tid` belongs to.
    pub(super) fn thread_image(&mut self, tid: u32, ts: Timestamp) -> Option<ImageId> {
        if let Some(t) = self.threads.get(&tid) {
            return Some(self.procs[t.process].current());
        }
        // No ThreadStart: a main thread whose process is known, or the first process
        // of a trace that never announced it.
        let p = match self.running(tid) {
            Some(p) => p,
            None if tid == self.header_pid && !self.by_pid.contains_key(&tid) => {
                self.process_for(tid, ts)
            }
            None => {
                self.anomalies.unattributed_events += 1;
                return None;
            }
        };
        self.bind_thread(tid, p);
        Some(self.procs[p].current())
    }
}
