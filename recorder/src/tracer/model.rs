//! The traced process tree as the tracer models it: address spaces (shared by the
//! threads of a process and by vfork/CLONE_VM children until they exec), processes,
//! tasks, and the calls in flight whose results are not back yet.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

use heaptape_format::{AllocFn, ExitStatus, StackId};

use super::Tracer;
use crate::addr_map::AddrMap;
use crate::events::unwind::StackUnwinder;
use crate::events::AllocCall;
use crate::hooks::catalogue::ResourceCall;
use crate::hooks::elf::ElfModule;
use crate::hooks::patch::RingHook;
use crate::hooks::patch::{Hook, HookKind};
use crate::snapshot::LiveBlocks;
use crate::sys::{ProcMem, Tid};
use crate::tracee::probe::{self, Probe, ReturnRef};
use crate::tracee::ring::{Merger, RingRegion};

/// A module mapped in an address space, registered for unwinding.
pub(super) struct KnownModule {
    pub(super) path: String,
    pub(super) start: u64,
    pub(super) range: Range<u64>,
    pub(super) bias: u64,
    pub(super) elf: Arc<ElfModule>,
}

/// One address space: shared by the threads of a process and by vfork/CLONE_VM
/// children until they exec.
pub(super) struct Space {
    /// A task whose /proc entries describe this address space.
    pub(super) owner: Tid,
    pub(super) mem: ProcMem,
    pub(super) probe: Option<Rc<RefCell<Probe>>>,
    /// Hooks by function entry address.
    pub(super) hooks: AddrMap<u64, Hook>,
    /// Entry trampolines' `int3` addresses, to their function's entry.
    pub(super) traps: HashMap<u64, u64>,
    /// Threads here may use thread areas (same pid namespace as the tracer).
    pub(super) fast: bool,
    pub(super) modules: Vec<KnownModule>,
    pub(super) unwinder: StackUnwinder,
    /// Trampoline pages: (next free address, end).
    pub(super) tramp_pages: Vec<(u64, u64)>,
    /// Ring mode: this space's rings (None: every call takes the stop path).
    pub(super) ring: Option<RingState>,
    /// Ring mode, a fork child's copy of its parent's space: where the ring region
    /// (shared with the parent) is mapped, to be replaced by rings of the child's own
    /// before it runs.
    pub(super) ring_wipe: Option<(u64, u64)>,
    /// The address ranges of the replacement allocators mapped here (see
    /// [`Tracer::refresh_allocators`]): calls from there are the allocator's own.
    pub(super) allocator_code: Vec<Range<u64>>,
}

impl Space {
    /// Whether `addr` (a return address) lies in a replacement allocator's module.
    pub(super) fn in_allocator(&self, addr: u64) -> bool {
        self.allocator_code.iter().any(|r| r.contains(&addr))
    }

    /// Ring mode: sends the mapping calls made inside ring-recorded calls to the stop
    /// path when a replacement allocator is mapped (they are how the recorder learns the
    /// memory it maps for itself), straight to the function otherwise.
    pub(super) fn sync_nested_mappings(&self) {
        if let Some(ring) = &self.ring {
            let want = !self.allocator_code.is_empty();
            if ring.region.nested_mappings() != want {
                ring.region.set_nested_mappings(want);
            }
        }
    }
}

/// A traced process.
pub(super) struct Proc {
    pub(super) space: usize,
    /// Record events of this process (false for unfollowed vfork children).
    pub(super) recording: bool,
    /// Detach at exec (unfollowed vfork/CLONE_VM children).
    pub(super) detach_on_exec: bool,
    /// Detach at the initial stop (unfollowed fork children).
    pub(super) detach_at_start: bool,
    pub(super) threads: HashSet<Tid>,
    pub(super) status: Option<ExitStatus>,
    /// The blocks this process has live, per the records written.
    pub(super) live: LiveBlocks,
    /// The exit snapshot was taken.
    pub(super) snapshot_done: bool,
    /// Descriptors the trace shows open (for close_range and closefrom).
    pub(super) open_fds: std::collections::BTreeSet<i32>,
    /// Stack pointers of threads that exited (their stacks stay mapped; not roots).
    pub(super) dead_stacks: Vec<u64>,
}

/// A traced thread.
pub(super) struct Task {
    pub(super) pid: Tid,
    /// Returns armed for this thread's calls, innermost last.
    pub(super) armed: Vec<ReturnRef>,
    /// This thread's area in its space's probe (the fast path), if it has one.
    pub(super) area: Option<u32>,
    /// Seen its initial stop (new tasks wait for both that and the parent's event).
    pub(super) started: bool,
    /// Signals to deliver at the next resume (held during an injection).
    pub(super) held: Vec<i32>,
    /// Ring mode: the thread pointer this thread's ring is registered under.
    pub(super) ring_tp: Option<u64>,
    /// Ring mode: no ring could be had (every area taken): stay on the stop path.
    pub(super) ring_refused: bool,
    /// Ring mode: a thread's stack pointer at its first instruction (its frames all lie
    /// below it), read at its first stop; `None` for a process's main thread and for
    /// threads found running at an attach.
    pub(super) first_rsp: Option<u64>,
}

/// What a call in flight is, for its record at the return.
pub(super) enum PendingKind {
    /// A descriptor or mapping call whose result is recorded when it returns.
    Resource {
        call: ResourceCall,
        args: [u64; 6],
        detail: String,
    },
    /// An allocator call.
    Alloc(AllocCall),
    /// A mapping call (mmap, mremap) the allocator made for itself from inside one of
    /// its calls: not a record, but memory that is neither a root nor a block.
    AllocatorMapping { call: ResourceCall, args: [u64; 6] },
}

/// A call in flight: armed to capture its result, recorded when it returns.
pub(super) struct Pending {
    pub(super) tid: Tid,
    pub(super) probe: Rc<RefCell<Probe>>,
    pub(super) ret: ReturnRef,
    pub(super) ts: u64,
    pub(super) stack: StackId,
    pub(super) kind: PendingKind,
    /// A realloc whose old block was seen handed out again before it returned: its
    /// release is written, its new block is written when it returns.
    pub(super) released: bool,
    /// Called from a replacement allocator's own code (an allocation the allocator
    /// made for itself, or a mapping its constructor made).
    pub(super) by_allocator: bool,
}

impl Tracer {
    /// The address space of thread `tid`.
    pub(super) fn space_of(&self, tid: Tid) -> Option<&Space> {
        self.proc_space(self.tasks.get(&tid)?.pid)
    }

    /// The address space of process `pid`.
    pub(super) fn proc_space(&self, pid: Tid) -> Option<&Space> {
        self.procs
            .get(&pid)
            .and_then(|p| self.spaces.get(p.space))
            .and_then(|s| s.as_ref())
    }

    /// Paths of the modules of `pid` that define a hooked `malloc`.
    pub(super) fn allocator_modules(&self, pid: Tid) -> Vec<String> {
        let Some(space) = self.proc_space(pid) else {
            return Vec::new();
        };
        space
            .modules
            .iter()
            .filter(|m| {
                space.hooks.iter().any(|(a, h)| {
                    m.range.contains(a)
                        && matches!(&h.kind, HookKind::Alloc(spec) if spec.func == AllocFn::Malloc)
                })
            })
            .map(|m| m.path.clone())
            .collect()
    }

    /// The replacement allocators of `pid`'s address space with their writable data:
    /// each one's path and the whole memory size of each of its writable `PT_LOAD`
    /// segments (`.data` and `.bss`).
    pub(super) fn allocator_data(&self, pid: Tid) -> Vec<(String, Range<u64>)> {
        let Some(space) = self.proc_space(pid) else {
            return Vec::new();
        };
        space
            .modules
            .iter()
            .filter(|m| space.allocator_code.contains(&m.range))
            .flat_map(|m| {
                m.elf
                    .segments()
                    .iter()
                    .filter(|s| s.prot() & 2 != 0)
                    .map(|s| {
                        let start = s.vaddr.wrapping_add(m.bias);
                        (m.path.clone(), start..start.saturating_add(s.memsz))
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Finds the replacement allocators of address space `space_id` (modules other
    /// than the C library and the main executable `exe` that define a hooked `malloc`:
    /// jemalloc, tcmalloc, mimalloc, a preloaded wrapper) and, in ring mode, has the
    /// mapping calls made inside ring-recorded calls stop while there is one.
    pub(super) fn refresh_allocators(&mut self, space_id: usize, exe: Option<&str>) {
        let Some(space) = self.spaces.get_mut(space_id).and_then(|s| s.as_mut()) else {
            return;
        };
        let code: Vec<Range<u64>> = space
            .modules
            .iter()
            .filter(|m| !is_libc_path(&m.path) && Some(m.path.as_str()) != exe)
            .filter(|m| {
                space.hooks.iter().any(|(a, h)| {
                    m.range.contains(a)
                        && matches!(&h.kind, HookKind::Alloc(spec) if spec.func == AllocFn::Malloc)
                })
            })
            .map(|m| m.range.clone())
            .collect();
        space.allocator_code = code;
        space.sync_nested_mappings();
    }

    /// Where the `PT_GNU_RELRO` data of `pid`'s modules lies at run time.
    pub(super) fn relro_ranges(&self, pid: Tid) -> Vec<Range<u64>> {
        let Some(space) = self.proc_space(pid) else {
            return Vec::new();
        };
        space
            .modules
            .iter()
            .filter_map(|m| {
                let r = m.elf.relro_svma()?;
                Some(r.start.wrapping_add(m.bias)..r.end.wrapping_add(m.bias))
            })
            .collect()
    }

    /// The probe's range in `pid` (never scanned by the snapshot).
    pub(super) fn probe_range(&self, pid: Tid) -> Vec<Range<u64>> {
        self.proc_space(pid)
            .and_then(|s| s.probe.as_ref())
            .map(|p| {
                let a = p.borrow().code_addr;
                let probe: Range<u64> = a..a + probe::TOTAL_LEN as u64;
                vec![probe]
            })
            .unwrap_or_default()
    }
}

/// Bytes of stack a ring event copies at most (see docs/PERFORMANCE.md for the choice).
pub(super) const RING_STACK_COPY: usize = 8192;

/// The ring recording state of one address space.
pub(super) struct RingState {
    /// The recorder's side of the ring region.
    pub(super) region: RingRegion,
    /// Orders the drained events.
    pub(super) merger: Merger,
    /// The thread each area belongs (or last belonged) to, and its process: events a
    /// thread published before it exited can be handed over after its task is gone
    /// (held back for order), and must still reach its process.
    pub(super) tids: AddrMap<u32, (Tid, Tid)>,
    /// What hooking needs to assemble ring trampolines.
    pub(super) hook: RingHook,
    /// Reallocs that moved their block, written as two records: the stack of each whose
    /// release is written and allocation not yet, by the number of its first part.
    pub(super) moving: AddrMap<u64, StackId>,
}

impl RingState {
    /// The state of a ring region just set up.
    pub(super) fn new(region: RingRegion, region_base: u64) -> RingState {
        let layout = region.layout();
        RingState {
            region,
            merger: Merger::new(),
            tids: Default::default(),
            moving: Default::default(),
            hook: RingHook {
                layout,
                region_base,
                stack_copy: RING_STACK_COPY,
            },
        }
    }
}

/// Whether a module path names the C library (`libc.so.6`, `libc-2.31.so`).
pub(super) fn is_libc_path(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("libc.so") || name.starts_with("libc-")
}
