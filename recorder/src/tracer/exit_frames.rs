//! Where a thread that called `exit` has its last live frame of the program's own.
//!
//! At the exit snapshot a thread's stack is a root from its stack pointer up. For the
//! thread that called `exit()`, the part below `exit`'s caller is `exit`'s own path
//! (atexit handlers, stdio's flush, `_exit`), laid over the frames of functions that had
//! returned: slots those frames wrote and the exit path never overwrote still hold the
//! dead functions' locals, and a pointer to a tree the program dropped keeps the tree
//! "reachable". memcheck does not see those slots (newly pushed stack is undefined to it
//! until written, and it scans defined words only); heaptape, which cannot tell a
//! written slot from a stale one, starts that thread's stack root at `exit`'s caller
//! instead. The exit path holds none of the program's pointers by the time it calls
//! `exit_group`.

use super::Tracer;
use crate::sys::{Regs, Tid};

/// Stack bytes read to find `exit`'s frame: the exit path is a few frames deep.
const EXIT_PATH_BYTES: u64 = 64 << 10;
/// Frames unwound at most.
const EXIT_PATH_FRAMES: usize = 64;

impl Tracer {
    /// For thread `tid` of process `pid`, stopped at its exit with `regs`: the stack
    /// pointer of the frame that called `exit` (the lowest address of the program's own
    /// live frames), when `exit` is on the thread's stack.
    pub(super) fn exit_caller_sp(&mut self, pid: Tid, tid: Tid, regs: &Regs) -> Option<u64> {
        let frames = self.unwind_stopped(pid, tid, regs, EXIT_PATH_BYTES, EXIT_PATH_FRAMES)?;
        let space = self.spaces.get(self.procs.get(&pid)?.space)?.as_ref()?;
        // The function of each frame: the stopped instruction, then each return
        // address's call instruction.
        let mut pc = regs.rip;
        for &(ra, caller_sp) in &frames {
            let in_exit = space
                .modules
                .iter()
                .find(|m| m.range.contains(&pc))
                .and_then(|m| m.elf.symbolize(pc.wrapping_sub(m.bias)))
                == Some("exit");
            if in_exit {
                return Some(caller_sp);
            }
            pc = ra - 1;
        }
        None
    }
}
