//! Running system calls inside a stopped tracee.
//!
//! The recorder needs memory in the tracee (the probe area, trampoline pages near each
//! module). It gets it by making a stopped thread execute `syscall; int3` with chosen
//! registers, then restoring the thread's registers as if nothing happened. Signals that
//! arrive meanwhile are held and handed back to the caller to deliver later, so none is
//! lost.

use std::fs::File;
use std::io;

use super::probe::{self, Probe, SYSCALL_STUB};
use crate::sys::{self, ProcMem, Tid, WaitEvent};

/// Why an injection failed.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// A ptrace or memory operation failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The thread exited or was killed while running the injected call.
    #[error("the thread ended during an injected system call")]
    Gone,
    /// The injected system call failed with this errno.
    #[error("injected system call {nr} failed: {err}")]
    Failed {
        /// Syscall number.
        nr: i64,
        /// Its error.
        err: io::Error,
    },
}

/// Executes syscall `nr(args)` in stopped thread `tid` using the `syscall; int3` stub at
/// `stub`. Signals the thread receives meanwhile are appended to `held`.
pub fn syscall(
    tid: Tid,
    stub: u64,
    nr: i64,
    args: [u64; 6],
    held: &mut Vec<i32>,
) -> Result<u64, InjectError> {
    let saved = sys::get_regs(tid)?;
    let mut regs = saved;
    regs.rax = nr as u64;
    regs.rdi = args[0];
    regs.rsi = args[1];
    regs.rdx = args[2];
    regs.r10 = args[3];
    regs.r8 = args[4];
    regs.r9 = args[5];
    regs.rip = stub;
    // Not inside a syscall any more as far as restart logic is concerned.
    regs.orig_rax = u64::MAX;
    sys::set_regs(tid, &regs)?;
    sys::cont(tid, 0)?;
    loop {
        match sys::wait_blocking(tid)? {
            WaitEvent::Signal { sig: libc::SIGTRAP } => {
                let after = sys::get_regs(tid)?;
                if after.rip == stub + SYSCALL_STUB.len() as u64 {
                    sys::set_regs(tid, &saved)?;
                    let ret = after.rax as i64;
                    if (-4095..0).contains(&ret) {
                        return Err(InjectError::Failed {
                            nr,
                            err: io::Error::from_raw_os_error(-ret as i32),
                        });
                    }
                    return Ok(after.rax);
                }
                held.push(libc::SIGTRAP);
                sys::cont(tid, 0)?;
            }
            WaitEvent::Signal { sig } => {
                held.push(sig);
                sys::cont(tid, 0)?;
            }
            WaitEvent::Event { .. } => sys::cont(tid, 0)?,
            WaitEvent::Exited { .. } | WaitEvent::Signaled { .. } => return Err(InjectError::Gone),
        }
    }
}

/// Executes a syscall using a temporary stub written over the thread's current `rip`.
/// Only sound while no other thread of the address space runs (e.g. at an exec stop).
pub fn syscall_at_pc(
    tid: Tid,
    mem: &ProcMem,
    nr: i64,
    args: [u64; 6],
    held: &mut Vec<i32>,
) -> Result<u64, InjectError> {
    let pc = sys::get_regs(tid)?.rip;
    let mut orig = [0u8; SYSCALL_STUB.len()];
    mem.read(pc, &mut orig)?;
    mem.write(pc, &SYSCALL_STUB)?;
    let res = syscall(tid, pc, nr, args, held);
    mem.write(pc, &orig)?;
    res
}

/// Writes `name` (NUL-terminated) below the red zone of stopped thread `tid`'s stack and
/// returns `memfd_create`'s arguments for it (close-on-exec).
fn memfd_name(tid: Tid, mem: &ProcMem, name: &[u8]) -> Result<[u64; 6], InjectError> {
    let addr = (sys::get_regs(tid)?.rsp - 1024) & !15;
    mem.write(addr, name)?;
    Ok([addr, libc::MFD_CLOEXEC as u64, 0, 0, 0, 0])
}

/// Creates the probe area in a freshly exec'd, single-threaded tracee stopped at `tid`:
/// memfd_create in the tracee, map code (r-x) and data (rw-) back to back, open the memfd
/// from the tracer through /proc and map it, then close the tracee's descriptor.
pub fn install_probe(tid: Tid, mem: &ProcMem, held: &mut Vec<i32>) -> Result<Probe, InjectError> {
    // At an exec stop the thread is still inside execve: when it resumes, the kernel
    // stores execve's return value (0) into rax, turning the first injected call into
    // read(). A throw-away call absorbs that (read(-1) fails harmlessly with EBADF).
    let _ = syscall_at_pc(tid, mem, libc::SYS_getpid, [u64::MAX; 6], held);
    let name = memfd_name(tid, mem, b"heaptape-probe\0")?;
    let fd = syscall_at_pc(tid, mem, libc::SYS_memfd_create, name, held)?;
    let result = (|| {
        syscall_at_pc(
            tid,
            mem,
            libc::SYS_ftruncate,
            [fd, probe::TOTAL_LEN as u64, 0, 0, 0, 0],
            held,
        )?;
        // Reserve the whole range first so code and data are adjacent (the shims address
        // their slots rip-relatively), then map the two parts over it.
        let base = syscall_at_pc(
            tid,
            mem,
            libc::SYS_mmap,
            [
                0,
                probe::TOTAL_LEN as u64,
                (libc::PROT_READ | libc::PROT_EXEC) as u64,
                libc::MAP_SHARED as u64,
                fd,
                0,
            ],
            held,
        )?;
        syscall_at_pc(
            tid,
            mem,
            libc::SYS_mmap,
            [
                base + probe::CODE_LEN as u64,
                probe::DATA_LEN as u64,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_SHARED | libc::MAP_FIXED) as u64,
                fd,
                probe::CODE_LEN as u64,
            ],
            held,
        )?;
        // Out of core dumps: a program that dumps core under the recorder leaves what it
        // would natively (the probe is ~290 MiB of address space).
        syscall_at_pc(
            tid,
            mem,
            libc::SYS_madvise,
            [
                base,
                probe::TOTAL_LEN as u64,
                libc::MADV_DONTDUMP as u64,
                0,
                0,
                0,
            ],
            held,
        )?;
        let pid = tid;
        let file = File::options()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/fd/{fd}"))?;
        Ok(Probe::new(&file, base)?)
    })();
    let _ = syscall_at_pc(tid, mem, libc::SYS_close, [fd, 0, 0, 0, 0, 0], held);
    result
}

/// Gives a fork child rings of its own: a new memfd of `len` bytes, mapped shared over
/// the ring region it inherited at `base` (shared with its parent until then), kept out
/// of core dumps, and opened by the tracer through /proc. `tid` is the child's only
/// thread, stopped before its first instruction; the probe's syscall stub runs the calls.
pub fn install_rings(
    tid: Tid,
    mem: &ProcMem,
    probe: &Probe,
    base: u64,
    len: u64,
    held: &mut Vec<i32>,
) -> Result<File, InjectError> {
    let stub = probe.syscall_stub();
    let name = memfd_name(tid, mem, b"heaptape-rings\0")?;
    let fd = syscall(tid, stub, libc::SYS_memfd_create, name, held)?;
    let result = (|| {
        syscall(tid, stub, libc::SYS_ftruncate, [fd, len, 0, 0, 0, 0], held)?;
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_SHARED | libc::MAP_FIXED) as u64;
        syscall(
            tid,
            stub,
            libc::SYS_mmap,
            [base, len, prot, flags, fd, 0],
            held,
        )?;
        syscall(
            tid,
            stub,
            libc::SYS_madvise,
            [base, len, libc::MADV_DONTDUMP as u64, 0, 0, 0],
            held,
        )?;
        Ok(File::options()
            .read(true)
            .write(true)
            .open(format!("/proc/{tid}/fd/{fd}"))?)
    })();
    let _ = syscall(tid, stub, libc::SYS_close, [fd, 0, 0, 0, 0, 0], held);
    result
}

/// Maps `len` bytes read-execute near `near` (within ±2 GiB when possible) for
/// trampolines, using the probe's syscall stub. Returns the address.
pub fn map_near(
    tid: Tid,
    probe: &Probe,
    near: u64,
    len: u64,
    held: &mut Vec<i32>,
) -> Result<u64, InjectError> {
    const RANGE: u64 = 1 << 31;
    let prot = (libc::PROT_READ | libc::PROT_EXEC) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    // Try hints below and above the module, stepping away; MAP_FIXED_NOREPLACE makes the
    // kernel refuse rather than move elsewhere.
    let noreplace = flags | libc::MAP_FIXED_NOREPLACE as u64;
    let page = near & !0xfff;
    for step in 1..64u64 {
        for cand in [
            page.checked_sub(step * 0x10_0000 + len),
            page.checked_add(step * 0x10_0000),
        ]
        .into_iter()
        .flatten()
        {
            if cand.abs_diff(near) >= RANGE - len {
                continue;
            }
            match syscall(
                tid,
                probe.syscall_stub(),
                libc::SYS_mmap,
                [cand, len, prot, noreplace, u64::MAX, 0],
                held,
            ) {
                Ok(addr) => return dont_dump(tid, probe, addr, len, held),
                Err(InjectError::Failed { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }
    // Anywhere: the caller will find RIP-relative instructions out of reach.
    let addr = syscall(
        tid,
        probe.syscall_stub(),
        libc::SYS_mmap,
        [0, len, prot, flags, u64::MAX, 0],
        held,
    )?;
    dont_dump(tid, probe, addr, len, held)
}

/// Keeps `len` bytes at `addr` (trampolines, patched code) out of the tracee's core
/// dumps (MADV_DONTDUMP, through the probe's syscall stub); returns `addr`.
pub(crate) fn dont_dump(
    tid: Tid,
    probe: &Probe,
    addr: u64,
    len: u64,
    held: &mut Vec<i32>,
) -> Result<u64, InjectError> {
    syscall(
        tid,
        probe.syscall_stub(),
        libc::SYS_madvise,
        [addr, len, libc::MADV_DONTDUMP as u64, 0, 0, 0],
        held,
    )?;
    Ok(addr)
}
