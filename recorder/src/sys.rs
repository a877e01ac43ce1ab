//! The recorder's only contact with raw system interfaces: ptrace, waitpid, fork/exec,
//! process memory, shared mappings and signal handlers.
//!
//! Everything `unsafe` in the recorder lives here, next to the invariant that makes it
//! sound. The rest of the recorder works with the safe functions below and never calls
//! libc or ptrace directly, so a reader auditing the tracer's effect on the tracee only
//! has to read this file.

use std::ffi::{CStr, CString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicI32, Ordering};

pub use libc::user_regs_struct as Regs;

/// A thread (task) id.
pub type Tid = i32;

/// ptrace options every traced task gets.
pub const TRACE_OPTIONS: libc::c_int = libc::PTRACE_O_EXITKILL
    | libc::PTRACE_O_TRACECLONE
    | libc::PTRACE_O_TRACEFORK
    | libc::PTRACE_O_TRACEVFORK
    | libc::PTRACE_O_TRACEEXEC
    | libc::PTRACE_O_TRACEEXIT;

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

// ---------------------------------------------------------------------------------------
// Launching
// ---------------------------------------------------------------------------------------

/// Why a launch failed before the program ran.
#[derive(Debug)]
pub enum SpawnError {
    /// fork, pipe or PTRACE_SEIZE failed.
    Os(&'static str, io::Error),
    /// execve failed in the child (the errno it reported).
    Exec(io::Error),
}

/// Forks, seizes the child with `TRACE_OPTIONS`, then lets it exec `path` with `argv`.
///
/// The child blocks on a pipe until the parent has seized it, so the exec is traced and
/// no instruction of the program runs untraced. The child shares our stdin/stdout/stderr,
/// environment, working directory and process group. On return the child is running
/// towards its PTRACE_EVENT_EXEC stop (or is exiting with 127 if exec failed, in which
/// case `SpawnError::Exec` carries the errno).
pub fn spawn_seized(path: &CStr, argv: &[CString]) -> Result<Tid, SpawnError> {
    // Everything the child touches is prepared before fork: after fork the child may only
    // call async-signal-safe functions (the tracer has other threads).
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    // A file the kernel cannot execute (ENOEXEC: a script without `#!`) runs with
    // /bin/sh, as execvp and every shell do: `/bin/sh path args...`.
    let sh = c"/bin/sh";
    let mut sh_argv: Vec<*const libc::c_char> = vec![sh.as_ptr(), path.as_ptr()];
    sh_argv.extend(argv.iter().skip(1).map(|a| a.as_ptr()));
    sh_argv.push(std::ptr::null());
    let mut go = [0 as libc::c_int; 2];
    let mut err = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the arrays we own.
    unsafe {
        if libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(SpawnError::Os("pipe", io::Error::last_os_error()));
        }
        if libc::pipe2(err.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            let e = io::Error::last_os_error();
            libc::close(go[0]);
            libc::close(go[1]);
            return Err(SpawnError::Os("pipe", e));
        }
    }
    // SAFETY: fork is sound here because the child only calls async-signal-safe functions
    // (read, write, sigaction/sigprocmask, execv, _exit) on memory prepared above (the
    // /bin/sh argument vector too).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(SpawnError::Os("fork", io::Error::last_os_error()));
    }
    if pid == 0 {
        // Child.
        // SAFETY: async-signal-safe calls only; pointers are valid (prepared pre-fork).
        unsafe {
            libc::close(go[1]);
            libc::close(err[0]);
            // Restore the signal mask and the dispositions the tracer changed, so the
            // program starts exactly as it would without the tracer.
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            for sig in HANDLED_SIGNALS {
                libc::signal(sig, libc::SIG_DFL);
            }
            let mut b = 0u8;
            while libc::read(go[0], (&mut b as *mut u8).cast(), 1) < 0 {}
            libc::execv(path.as_ptr(), argv_ptrs.as_ptr());
            if *libc::__errno_location() == libc::ENOEXEC {
                libc::execv(sh.as_ptr(), sh_argv.as_ptr());
            }
            let e: i32 = *libc::__errno_location();
            libc::write(err[1], (&e as *const i32).cast(), 4);
            libc::_exit(127);
        }
    }
    // Parent.
    // SAFETY: closing descriptors we own; wrapping the others in OwnedFd exactly once.
    let (go_w, err_r) = unsafe {
        libc::close(go[0]);
        libc::close(err[1]);
        (OwnedFd::from_raw_fd(go[1]), OwnedFd::from_raw_fd(err[0]))
    };
    let seized = seize(pid);
    let mut go_file = File::from(go_w);
    if let Err(e) = seized {
        // Let the child go nowhere: kill it before releasing it.
        kill(pid, libc::SIGKILL);
        drop(go_file);
        let _ = wait_blocking(pid);
        return Err(SpawnError::Os("ptrace(PTRACE_SEIZE)", e));
    }
    let _ = io::Write::write_all(&mut go_file, b"g");
    drop(go_file);
    // exec either succeeds (pipe closes on CLOEXEC, read returns 0) or writes errno.
    let mut buf = [0u8; 4];
    let n = File::from(err_r).read_at_or_read(&mut buf);
    if n == 4 {
        let errno = i32::from_ne_bytes(buf);
        // Reap the failed child (it exits 127); it is traced, so pass its stops along.
        loop {
            match wait_blocking(pid) {
                Ok(WaitEvent::Exited { .. }) | Ok(WaitEvent::Signaled { .. }) | Err(_) => break,
                Ok(_) => {
                    let _ = cont(pid, 0);
                }
            }
        }
        return Err(SpawnError::Exec(io::Error::from_raw_os_error(errno)));
    }
    Ok(pid)
}

trait ReadAll {
    fn read_at_or_read(self, buf: &mut [u8]) -> usize;
}

impl ReadAll for File {
    fn read_at_or_read(mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() {
            match io::Read::read(&mut self, &mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        n
    }
}

// ---------------------------------------------------------------------------------------
// ptrace requests
// ---------------------------------------------------------------------------------------

fn ptrace(req: libc::c_uint, tid: Tid, addr: usize, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: every request issued through this helper passes either plain integers or a
    // pointer to a live, correctly sized object owned by the caller (see each caller).
    check(unsafe { libc::ptrace(req, tid, addr, data) })
}

/// PTRACE_SEIZE with [`TRACE_OPTIONS`].
pub fn seize(tid: Tid) -> io::Result<()> {
    ptrace(libc::PTRACE_SEIZE, tid, 0, TRACE_OPTIONS as usize).map(drop)
}

/// PTRACE_SEIZE of a running process's thread: the same options without EXITKILL, so
/// the process survives if the recorder goes away (its breakpoints would not: see the
/// README on attaching).
pub fn seize_attach(tid: Tid) -> io::Result<()> {
    let opts = TRACE_OPTIONS & !libc::PTRACE_O_EXITKILL;
    ptrace(libc::PTRACE_SEIZE, tid, 0, opts as usize).map(drop)
}

/// PTRACE_CONT, delivering `sig` (0 for none).
pub fn cont(tid: Tid, sig: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_CONT, tid, 0, sig as usize).map(drop)
}

/// Whether `sig` stops a process: a PTRACE_EVENT_STOP carrying it reports a group-stop.
pub fn is_stop_signal(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
    )
}

/// PTRACE_LISTEN: leave a group-stopped task stopped but let it report SIGCONT.
pub fn listen(tid: Tid) -> io::Result<()> {
    ptrace(libc::PTRACE_LISTEN, tid, 0, 0).map(drop)
}

/// PTRACE_INTERRUPT: stop a running seized task (it reports a PTRACE_EVENT_STOP).
pub fn interrupt(tid: Tid) -> io::Result<()> {
    ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0).map(drop)
}

/// PTRACE_DETACH, delivering `sig`.
pub fn detach(tid: Tid, sig: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_DETACH, tid, 0, sig as usize).map(drop)
}

/// PTRACE_GETEVENTMSG (new tid at clone/fork events, exit status at exit events).
pub fn event_msg(tid: Tid) -> io::Result<u64> {
    let mut msg: libc::c_ulong = 0;
    // The kernel writes one unsigned long to &msg.
    ptrace(
        libc::PTRACE_GETEVENTMSG,
        tid,
        0,
        &mut msg as *mut libc::c_ulong as usize,
    )?;
    Ok(msg as u64)
}

/// PTRACE_GETREGS.
pub fn get_regs(tid: Tid) -> io::Result<Regs> {
    // SAFETY: user_regs_struct is plain data; all-zero is a valid value.
    let mut regs: Regs = unsafe { std::mem::zeroed() };
    // The kernel writes one user_regs_struct to &regs.
    ptrace(
        libc::PTRACE_GETREGS,
        tid,
        0,
        &mut regs as *mut Regs as usize,
    )?;
    Ok(regs)
}

/// PTRACE_SETREGS.
pub fn set_regs(tid: Tid, regs: &Regs) -> io::Result<()> {
    // The kernel reads one user_regs_struct from regs.
    ptrace(libc::PTRACE_SETREGS, tid, 0, regs as *const Regs as usize).map(drop)
}

/// Sends `sig` to a process (kill).
pub fn kill(pid: Tid, sig: i32) {
    // SAFETY: kill takes plain integers.
    unsafe {
        libc::kill(pid, sig);
    }
}

// ---------------------------------------------------------------------------------------
// waitpid
// ---------------------------------------------------------------------------------------

/// A decoded waitpid status. Raw signal numbers are kept as integers because real-time
/// signals have no `nix::Signal` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitEvent {
    /// The task exited with `code`.
    Exited {
        /// Exit code.
        code: i32,
    },
    /// The task was killed by `sig`.
    Signaled {
        /// Signal number.
        sig: i32,
    },
    /// Signal-delivery stop (or a breakpoint SIGTRAP).
    Signal {
        /// Signal number.
        sig: i32,
    },
    /// A ptrace event stop (`PTRACE_EVENT_*`), with the stop signal.
    Event {
        /// PTRACE_EVENT_* value.
        event: i32,
        /// WSTOPSIG.
        sig: i32,
    },
}

fn decode_status(status: i32) -> WaitEvent {
    if libc::WIFEXITED(status) {
        WaitEvent::Exited {
            code: libc::WEXITSTATUS(status),
        }
    } else if libc::WIFSIGNALED(status) {
        WaitEvent::Signaled {
            sig: libc::WTERMSIG(status),
        }
    } else {
        let sig = libc::WSTOPSIG(status);
        let event = (status >> 16) & 0xff;
        if event != 0 {
            WaitEvent::Event { event, sig }
        } else {
            WaitEvent::Signal { sig }
        }
    }
}

/// waitpid(-1, __WALL). `Ok(None)` when interrupted by a signal handler (EINTR), so the
/// caller can do periodic work; `Err(ECHILD)` when no traced task is left.
pub fn wait_any() -> io::Result<Option<(Tid, WaitEvent)>> {
    let mut status = 0;
    // SAFETY: waitpid writes one int to &status.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::__WALL) };
    if pid < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some((pid, decode_status(status))))
}

/// waitpid(tid, __WALL), retrying on EINTR.
pub fn wait_blocking(tid: Tid) -> io::Result<WaitEvent> {
    // No deadline passes u64::MAX: an interrupted wait is retried.
    wait_until(tid, u64::MAX)?.ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))
}

/// waitpid(tid, __WALL), blocking until `tid` reports or, once a signal interrupts the
/// wait (the tracer's tick comes at least every 250 ms), the monotonic clock passes
/// `deadline_ns`: then `Ok(None)`.
pub fn wait_until(tid: Tid, deadline_ns: u64) -> io::Result<Option<WaitEvent>> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes one int to &status.
        let pid = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if pid < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                if monotonic_ns() >= deadline_ns {
                    return Ok(None);
                }
                continue;
            }
            return Err(e);
        }
        return Ok(Some(decode_status(status)));
    }
}

/// Waits for `tid` for at most `timeout`, polling with WNOHANG. `Ok(None)` on timeout.
pub fn wait_with_timeout(tid: Tid, timeout: std::time::Duration) -> io::Result<Option<WaitEvent>> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes one int to &status.
        let pid = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
        if pid < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if pid == tid {
            return Ok(Some(decode_status(status)));
        }
        if std::time::Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

// ---------------------------------------------------------------------------------------
// Process memory
// ---------------------------------------------------------------------------------------

/// Reads `buf.len()` bytes at `addr` of `pid` with one process_vm_readv. Returns how many
/// bytes were read (a short count when the range runs into an unmapped page).
pub fn read_memory(pid: Tid, addr: u64, buf: &mut [u8]) -> io::Result<usize> {
    if buf.is_empty() {
        return Ok(0);
    }
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: the local iovec covers exactly `buf`, which we borrow mutably; the remote
    // iovec names memory of another process and is never dereferenced here.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    check(n as libc::c_long).map(|n| n as usize)
}

/// Reads many remote ranges into one local buffer with a single process_vm_readv.
/// `ranges` are (address, length) pairs laid out back to back in `buf`. Returns the
/// number of bytes read (reading stops at the first unreadable range).
pub fn read_memory_vectored(
    pid: Tid,
    ranges: &[(u64, usize)],
    buf: &mut [u8],
) -> io::Result<usize> {
    let total: usize = ranges.iter().map(|r| r.1).sum();
    assert!(total <= buf.len(), "buffer too small for the ranges");
    let mut local = Vec::with_capacity(ranges.len());
    let mut remote = Vec::with_capacity(ranges.len());
    let mut off = 0;
    for &(addr, len) in ranges {
        local.push(libc::iovec {
            // SAFETY: off + len <= total <= buf.len(), so the pointer stays inside buf.
            iov_base: unsafe { buf.as_mut_ptr().add(off) }.cast(),
            iov_len: len,
        });
        remote.push(libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: len,
        });
        off += len;
    }
    let mut done = 0usize;
    let mut start = 0usize;
    // IOV_MAX is 1024.
    while start < local.len() {
        let end = (start + 1024).min(local.len());
        // SAFETY: the local iovecs cover disjoint parts of `buf` (borrowed mutably); the
        // remote ones are never dereferenced here.
        let n = unsafe {
            libc::process_vm_readv(
                pid,
                local[start..end].as_ptr(),
                (end - start) as libc::c_ulong,
                remote[start..end].as_ptr(),
                (end - start) as libc::c_ulong,
                0,
            )
        };
        let n = check(n as libc::c_long)? as usize;
        done += n;
        let want: usize = local[start..end].iter().map(|v| v.iov_len).sum();
        if n < want {
            break;
        }
        start = end;
    }
    Ok(done)
}

/// A tracee's `/proc/PID/mem`, used to write breakpoints and code: unlike
/// process_vm_writev it can write to read-only text (the kernel does a forced COW write).
pub struct ProcMem {
    file: File,
}

impl ProcMem {
    /// Opens `/proc/PID/mem` read-write.
    pub fn open(pid: Tid) -> io::Result<ProcMem> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))?;
        Ok(ProcMem { file })
    }

    /// Writes `bytes` at `addr`.
    pub fn write(&self, addr: u64, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, addr)
    }

    /// Reads exactly `buf.len()` bytes at `addr`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, addr)
    }
}

/// A file mapped read-only into the recorder (an ELF module's image): the pages the
/// recorder reads (symbol tables, unwind sections) are read in on demand instead of the
/// whole file up front (cc1plus is 25 MB, of which hooking and unwinding touch a few).
pub struct MappedFile(memmap2::Mmap);

impl MappedFile {
    /// Maps `file` read-only, private. An empty file gives an error (mmap of length 0).
    pub fn new(file: &File) -> io::Result<MappedFile> {
        // SAFETY: `Mmap` is read-only (PROT_READ, MAP_PRIVATE), so no Rust reference into
        // it is ever written through. The one hazard of a file mapping, the file being
        // truncated by another process while mapped (a later read of a vanished page
        // raises SIGBUS), is the hazard the tracee runs too: these are the executables
        // and libraries it has mapped and runs, which installers replace by rename (a
        // new inode; our mapping keeps the old one) rather than truncate.
        let map = unsafe { memmap2::Mmap::map(file)? };
        Ok(MappedFile(map))
    }
}

impl std::ops::Deref for MappedFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedFile({} bytes)", self.0.len())
    }
}

// ---------------------------------------------------------------------------------------
// Shared probe memory
// ---------------------------------------------------------------------------------------

/// A mapping of a tracee's memfd in the tracer, shared with the tracee: the tracee's
/// return pads write results here and the tracer reads them without a system call.
///
/// Invariant: `ptr..ptr+len` stays mapped for the lifetime of this value (unmapped in
/// Drop), and every access goes through volatile reads/writes of naturally aligned
/// words within bounds, since the tracee writes the same memory concurrently.
pub struct SharedMap {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all accesses are volatile and bounds-checked.
unsafe impl Send for SharedMap {}

impl SharedMap {
    /// Maps `len` bytes of `file` (a tracee memfd opened through /proc) read-write.
    pub fn map(file: &File, len: usize) -> io::Result<SharedMap> {
        // SAFETY: a fresh shared mapping chosen by the kernel; no existing memory aliased.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedMap {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Reads the u64 at byte offset `off` (8-aligned).
    #[inline]
    pub fn read_u64(&self, off: usize) -> u64 {
        assert!(
            off % 8 == 0 && off + 8 <= self.len,
            "shared read out of bounds"
        );
        // SAFETY: in bounds and aligned (checked above); the mapping is live (invariant).
        unsafe { std::ptr::read_volatile(self.ptr.add(off).cast::<u64>()) }
    }

    /// Writes the u64 at byte offset `off` (8-aligned).
    #[inline]
    pub fn write_u64(&self, off: usize, v: u64) {
        assert!(
            off % 8 == 0 && off + 8 <= self.len,
            "shared write out of bounds"
        );
        // SAFETY: in bounds and aligned (checked above); the mapping is live (invariant).
        unsafe { std::ptr::write_volatile(self.ptr.add(off).cast::<u64>(), v) }
    }

    /// Writes the u32 at byte offset `off` (4-aligned).
    #[inline]
    pub fn write_u32(&self, off: usize, v: u32) {
        assert!(
            off % 4 == 0 && off + 4 <= self.len,
            "shared write out of bounds"
        );
        // SAFETY: in bounds and aligned (checked above); the mapping is live (invariant).
        unsafe { std::ptr::write_volatile(self.ptr.add(off).cast::<u32>(), v) }
    }

    /// Copies `buf.len()` bytes from byte offset `off`. Only for memory no one writes
    /// meanwhile (a stopped thread's area): the copy is not volatile.
    pub fn read_bytes(&self, off: usize, buf: &mut [u8]) {
        assert!(
            off.checked_add(buf.len()).is_some_and(|e| e <= self.len),
            "shared read out of bounds"
        );
        // SAFETY: in bounds (checked above); the mapping is live (invariant); `buf` is a
        // distinct local buffer, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), buf.as_mut_ptr(), buf.len()) }
    }

    /// Copies `bytes` to byte offset `off`.
    pub fn write_bytes(&self, off: usize, bytes: &[u8]) {
        assert!(off + bytes.len() <= self.len, "shared write out of bounds");
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: in bounds (checked above); the mapping is live (invariant).
            unsafe { std::ptr::write_volatile(self.ptr.add(off + i), *b) }
        }
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what map() mapped; no references into it outlive self.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The tracer's own signals
// ---------------------------------------------------------------------------------------

/// Signals the tracer catches instead of dying of: SIGINT and SIGQUIT (the terminal sends
/// them to the program too; the program decides), SIGTERM and SIGHUP (forwarded to the
/// program), SIGALRM (the periodic tick that wakes waitpid), SIGUSR2 (a request for a
/// snapshot of every recorded process, taken at the next tick, which it brings forward).
pub const HANDLED_SIGNALS: [i32; 6] = [
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGALRM,
    libc::SIGUSR2,
];

static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);
static TICK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static SNAPSHOT_REQUEST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    match sig {
        libc::SIGALRM => TICK.store(true, Ordering::Relaxed),
        libc::SIGUSR2 => {
            SNAPSHOT_REQUEST.store(true, Ordering::Relaxed);
            TICK.store(true, Ordering::Relaxed);
        }
        _ => LAST_SIGNAL.store(sig, Ordering::Relaxed),
    }
}

/// Whether a SIGUSR2 (a snapshot request) arrived since the last call.
pub fn take_snapshot_request() -> bool {
    SNAPSHOT_REQUEST.swap(false, Ordering::Relaxed)
}

/// Whether the periodic tick fired since the last call.
#[inline]
pub fn take_tick() -> bool {
    TICK.load(Ordering::Relaxed) && TICK.swap(false, Ordering::Relaxed)
}

/// Installs handlers for [`HANDLED_SIGNALS`] without SA_RESTART, so a blocked waitpid
/// returns EINTR, and starts a periodic SIGALRM every `tick_ms` milliseconds.
pub fn install_tracer_signals(tick_ms: u64) -> io::Result<()> {
    for sig in HANDLED_SIGNALS {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = 0;
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    let tv = libc::timeval {
        tv_sec: (tick_ms / 1000) as libc::time_t,
        tv_usec: ((tick_ms % 1000) * 1000) as libc::suseconds_t,
    };
    let it = libc::itimerval {
        it_interval: tv,
        it_value: tv,
    };
    // SAFETY: setitimer reads one itimerval.
    if unsafe { libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Blocks [`HANDLED_SIGNALS`] and SIGCHLD in the calling thread, so they are delivered to
/// the tracer thread (where they interrupt waitpid or its sleep) and never to a helper
/// thread.
pub fn block_tracer_signals() {
    // SAFETY: sigset_t is plain data, filled by sigemptyset/sigaddset and read by
    // pthread_sigmask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in HANDLED_SIGNALS.into_iter().chain([libc::SIGCHLD]) {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Stops the periodic tick and restores default dispositions.
pub fn uninstall_tracer_signals() {
    let zero = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
    };
    // SAFETY: setitimer reads one itimerval; signal() takes plain integers.
    unsafe {
        libc::setitimer(libc::ITIMER_REAL, &zero, std::ptr::null_mut());
        for sig in HANDLED_SIGNALS {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
}

/// Takes the last SIGINT/SIGQUIT/SIGTERM/SIGHUP the tracer received (0 if none).
pub fn take_signal() -> i32 {
    LAST_SIGNAL.swap(0, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------
// Misc
// ---------------------------------------------------------------------------------------

/// Monotonic clock in nanoseconds.
pub fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime writes one timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time consumed by the calling thread, nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    // SAFETY: clock_gettime writes one timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The system page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf takes a plain integer.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

/// `uname`: (host name, kernel release).
pub fn uname() -> (String, String) {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return (String::new(), String::new());
    }
    let field = |f: &[libc::c_char]| {
        // SAFETY: uname NUL-terminates each field within its array.
        unsafe { CStr::from_ptr(f.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    (field(&u.nodename), field(&u.release))
}

/// Restricts the calling thread to `cpus` (sched_setaffinity).
pub fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Puts the calling thread in the `SCHED_IDLE` class: it runs only when no other
/// thread wants the CPU, and is preempted at once when one does (a nice value of 19
/// still takes a share, and slowed a recording that kept both cores busy).
pub fn idle_thread_priority() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the call's duration; `0` names the
    // calling thread; SCHED_IDLE takes priority 0 and needs no privilege.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Lowers the calling thread's priority: its nice value goes up `by` (at most to 19).
/// Linux threads each have their own nice value; raising it is always allowed.
pub fn lower_thread_priority(by: i32) -> io::Result<()> {
    // SAFETY: getpriority and setpriority take plain integers; `0` names the calling
    // thread. getpriority's -1 is also a valid nice value: a failure only makes the
    // new value lower than intended, which setpriority then refuses or applies.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let nice = (nice + by).min(19);
    // SAFETY: as above.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CPUs the calling thread may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it; CPU_ISSET reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Ring recording: in-place views of a shared mapping and futex wake-ups
// ---------------------------------------------------------------------------------------

impl SharedMap {
    /// Length of the mapping in bytes.
    pub fn byte_len(&self) -> usize {
        self.len
    }

    /// Address of the mapping in this process (the futex word of a shared mapping is
    /// keyed by file and offset, so a wake through this address reaches waiters that use
    /// the tracee's mapping of the same memfd).
    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }

    /// Reads the u32 at byte offset `off` (4-aligned).
    #[inline]
    pub fn read_u32(&self, off: usize) -> u32 {
        assert!(
            off % 4 == 0 && off + 4 <= self.len,
            "shared read out of bounds"
        );
        // SAFETY: in bounds and aligned (checked above); the mapping is live (invariant).
        unsafe { std::ptr::read_volatile(self.ptr.add(off).cast::<u32>()) }
    }

    /// Borrows `len` bytes at byte offset `off` in place. Only for bytes the other side
    /// does not write while the borrow lives: a published ring entry, which its producer
    /// does not touch again until the consumer advances the ring's tail past it (and the
    /// consumer does that only after the borrow ended).
    #[inline]
    pub fn bytes(&self, off: usize, len: usize) -> &[u8] {
        assert!(
            off.checked_add(len).is_some_and(|e| e <= self.len),
            "shared read out of bounds"
        );
        // SAFETY: in bounds (checked above); the mapping is live for `self`'s lifetime
        // (invariant) and the returned borrow cannot outlive `self`; nothing writes these
        // bytes while borrowed (the ring protocol, see the doc above). u8 has no invalid
        // values.
        unsafe { std::slice::from_raw_parts(self.ptr.add(off), len) }
    }

    /// Wakes every waiter on the 32-bit futex word at byte offset `off` (4-aligned)
    /// (`FUTEX_WAKE`, not private: the waiters are in another process). Returns how many
    /// woke.
    pub fn futex_wake(&self, off: usize) -> usize {
        assert!(off % 4 == 0 && off + 4 <= self.len, "futex out of bounds");
        // SAFETY: FUTEX_WAKE only reads the futex word's address (in bounds, aligned, in a
        // live mapping); it writes no memory.
        let n = unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.ptr.add(off),
                libc::FUTEX_WAKE,
                i32::MAX,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u32>(),
                0u32,
            )
        };
        n.max(0) as usize
    }
}

// ---------------------------------------------------------------------------------------
// Ring mode: polling the rings between stops
// ---------------------------------------------------------------------------------------

/// waitpid(-1, __WALL | WNOHANG): `Ok(None)` when no task has changed state (or a signal
/// interrupted the call); `Err(ECHILD)` when no traced task is left.
pub fn wait_any_nohang() -> io::Result<Option<(Tid, WaitEvent)>> {
    let mut status = 0;
    // SAFETY: waitpid writes one int to &status.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::__WALL | libc::WNOHANG) };
    if pid < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(None);
        }
        return Err(e);
    }
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some((pid, decode_status(status))))
}

static CHILD_EVENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigchld(_sig: libc::c_int) {
    CHILD_EVENT.store(true, Ordering::SeqCst);
}

/// Whether a SIGCHLD (a tracee stopped or exited) arrived since the last call: between
/// two, waitpid has nothing to report. Call it before the waitpid it decides on.
pub fn take_child_event() -> bool {
    CHILD_EVENT.swap(false, Ordering::SeqCst)
}

/// Installs a SIGCHLD handler without SA_RESTART that notes the signal for
/// [`take_child_event`]: a tracee's stop then cuts short the recorder's [`sleep_ns`]
/// between two drains of the rings, and the recorder asks waitpid only when there is
/// something to ask.
pub fn install_child_wakeup() -> io::Result<()> {
    // SAFETY: the handler does nothing (async-signal-safe).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigchld as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = 0;
        if libc::sigaction(libc::SIGCHLD, &sa, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Restores SIGCHLD's default disposition.
pub fn uninstall_child_wakeup() {
    // SAFETY: signal() takes plain integers.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
    }
}

/// Sleeps up to `ns` nanoseconds; returns early when a signal arrives (SIGCHLD, the tick).
pub fn sleep_ns(ns: u64) {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: nanosleep reads one timespec; the remainder pointer may be null.
    unsafe {
        libc::nanosleep(&ts, std::ptr::null_mut());
    }
}

/// The time stamp counter (`rdtsc`), the clock of ring events.
#[inline]
pub fn tsc() -> u64 {
    // SAFETY: rdtsc has no memory effects; every x86_64 CPU has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// PTRACE_SETSIGMASK: sets the blocked-signal mask of a stopped task.
pub fn set_sigmask(tid: Tid, mask: u64) -> io::Result<()> {
    // The kernel reads one 8-byte sigset from &mask (data), its size in addr.
    ptrace(
        libc::PTRACE_SETSIGMASK,
        tid,
        8,
        &mask as *const u64 as usize,
    )
    .map(drop)
}
