//! Every reader of `/proc` in the recorder, in one place.
//!
//! - [`maps`]: `/proc/PID/maps`, parsed and grouped into loaded modules;
//! - [`Status`]: `/proc/PID/status`, the one parser of its `Name:\tvalue` lines, which
//!   every question below that is answered from it goes through (tracer pid, uid, pid
//!   namespace, pending signals, memory figures);
//! - the command line, the command name, `smaps_rollup`, the thread list, the
//!   `map_files` view of a mapping, and Yama's `ptrace_scope`.
//!
//! Nothing here uses ptrace or touches the tracee's memory: these are plain file reads
//! (the raw interfaces are in [`crate::sys`]). Reads are forgiving: a process can exit
//! while it is being read, so a missing file or field is an answer (`None`, empty, 0),
//! never a panic.

pub(crate) mod maps;

use std::fmt::Display;
use std::io;
use std::ops::Range;
use std::path::PathBuf;

use heaptape_format::Record;

use crate::sys::Tid;

/// The value of the first line of `text` that starts with `name` (its colon included),
/// trimmed: the shape of `/proc/PID/status` and `/proc/PID/smaps_rollup` lines.
fn field<'t>(text: &'t str, name: &str) -> Option<&'t str> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim())
}

/// The first number of a `Name:  1234 kB` value, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    field(text, name)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|k| k * 1024)
}

/// One read of `/proc/PID/status` (of a process or of one of its threads; `self` for
/// the recorder).
pub(crate) struct Status(String);

impl Status {
    /// Reads the file; `None` if the process is gone or the file unreadable.
    pub(crate) fn read(pid: impl Display) -> Option<Status> {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .map(Status)
    }

    /// The value of line `name` (with its colon), trimmed.
    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        field(&self.0, name)
    }
}

/// Why process `pid` cannot be attached to, when /proc says so before ptrace is tried
/// (or explains a refusal after).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Untraceable {
    /// A kernel thread: no user-space memory.
    KernelThread,
    /// A zombie: it exited and waits to be reaped.
    Zombie,
    /// Its main thread exited (`pthread_exit`) while `threads` others run on.
    LeaderExited { threads: u32 },
    /// It holds capabilities the recorder lacks (permitted sets, hexadecimal).
    MoreCapabilities { its: String, ours: String },
}

/// What /proc says against attaching to `pid` (None: nothing known).
pub(crate) fn untraceable(pid: u32) -> Option<Untraceable> {
    let st = Status::read(pid)?;
    if st.field("Kthread:") == Some("1") || kernel_thread_flag(pid) {
        return Some(Untraceable::KernelThread);
    }
    if st.field("State:").is_some_and(|s| s.starts_with('Z')) {
        let threads = st
            .field("Threads:")
            .and_then(|t| t.parse().ok())
            .unwrap_or(1);
        return Some(if threads > 1 {
            Untraceable::LeaderExited {
                threads: threads - 1,
            }
        } else {
            Untraceable::Zombie
        });
    }
    let caps = |s: &Status| u64::from_str_radix(s.field("CapPrm:")?, 16).ok();
    let (its, ours) = (caps(&st)?, caps(&Status::read("self")?)?);
    (its & !ours != 0).then(|| Untraceable::MoreCapabilities {
        its: format!("{its:x}"),
        ours: format!("{ours:x}"),
    })
}

/// PF_KTHREAD in /proc/PID/stat's flags (kernels without the `Kthread:` status line).
fn kernel_thread_flag(pid: u32) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Fields after the command name (in parentheses, which may hold spaces): state is
    // the first, flags the seventh.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(6)?.parse::<u64>().ok())
        .is_some_and(|f| f & PF_KTHREAD != 0)
}

/// The process's `coredump_filter` bits (None if unreadable).
pub(crate) fn coredump_filter(pid: Tid) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/coredump_filter")).ok()?;
    u32::from_str_radix(text.trim(), 16).ok()
}

/// The pid of the process tracing `pid` (`self` for the recorder); 0 if none or unknown.
pub(crate) fn tracer_pid(pid: impl Display) -> u32 {
    Status::read(pid)
        .and_then(|s| s.field("TracerPid:")?.parse::<u32>().ok())
        .unwrap_or(0)
}

/// The effective uid `pid` (or `self`) runs as.
pub(crate) fn effective_uid(pid: impl Display) -> Option<u32> {
    Status::read(pid)?
        .field("Uid:")?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Whether `tid` sees the same thread ids as the tracer (gettid in an entry trampoline
/// must name the tid the tracer knows it by).
pub(crate) fn same_pid_namespace(tid: Tid) -> bool {
    Status::read(tid).is_some_and(|s| {
        s.field("NSpid:")
            .is_some_and(|v| v.split_whitespace().count() == 1)
    })
}

/// Whether a SIGTRAP is pending for thread `tid` itself (not yet dequeued).
pub(crate) fn sigtrap_pending(tid: Tid) -> bool {
    Status::read(tid)
        .and_then(|s| u64::from_str_radix(s.field("SigPnd:")?, 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGTRAP - 1)) != 0)
}

/// A process's memory use (bytes) from /proc/PID/status (and, `with_pss`, smaps_rollup
/// for Pss, when the kernel has it), as an `RssSample` record at `ts`. smaps_rollup walks
/// every page table of the process: on a compiler with a few hundred MB of heap it cost
/// 5% of the recorder's CPU at 10 samples a second.
pub(crate) fn rss_sample(pid: Tid, ts: u64, with_pss: bool) -> Option<Record> {
    let status = Status::read(pid)?;
    let kb = |key: &str| -> u64 { kib_field(&status.0, key).unwrap_or(0) };
    let pss = with_pss
        .then(|| std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok())
        .flatten()
        .and_then(|s| kib_field(&s, "Pss:"));
    Some(Record::RssSample(Box::new(heaptape_format::RssSample {
        ts,
        pid: pid as u32,
        rss: kb("VmRSS:"),
        hwm: kb("VmHWM:"),
        anon: kb("RssAnon:"),
        file: kb("RssFile:"),
        pss,
    })))
}

/// A process's command line (empty if unreadable).
pub(crate) fn cmdline(pid: Tid) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The path of a process's executable as its mappings name it (`/proc/PID/exe`, without
/// a trailing ` (deleted)`), if readable.
pub(crate) fn exe_path(pid: Tid) -> Option<String> {
    let p = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let s = p.to_string_lossy();
    Some(s.strip_suffix(" (deleted)").unwrap_or(&s).to_string())
}

/// A process's command name, trimmed (empty if unreadable).
pub(crate) fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The name of thread `tid` of process `pid` (`/proc/PID/task/TID/comm`, trimmed),
/// empty when it cannot be read.
pub(crate) fn thread_comm(pid: Tid, tid: Tid) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether process `pid` exists.
pub(crate) fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether `tid` is a thread of process `pid`.
pub(crate) fn is_thread_of(pid: Tid, tid: Tid) -> bool {
    std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists()
}

/// The thread ids of process `pid` (from /proc/PID/task).
pub(crate) fn threads(pid: Tid) -> io::Result<Vec<Tid>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(t) = e?.file_name().to_str().and_then(|s| s.parse().ok()) {
            v.push(t);
        }
    }
    Ok(v)
}

/// The process's own view of the file mapped at `start..end` (opens even when the path
/// does not: another mount namespace, a deleted file).
pub(crate) fn map_file(pid: Tid, start: u64, end: u64) -> PathBuf {
    format!("/proc/{pid}/map_files/{start:x}-{end:x}").into()
}

/// The mapping of `pid` that holds `addr` (e.g. a thread's stack, from its stack
/// pointer).
pub(crate) fn mapping_containing(pid: Tid, addr: u64) -> Option<Range<u64>> {
    let maps = maps::read_maps(pid).ok()?;
    maps.iter().find(|m| m.contains(addr)).map(|m| m.range())
}

/// The process's initial stack pointer (`startstack`, field 28 of /proc/PID/stat): the
/// address of `argc`, below which the main thread's first frame begins.
pub(crate) fn start_stack(pid: Tid) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields from the third (state) on follow the last ')' (comm may hold anything).
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(28 - 3)?.parse().ok()
}

/// The part of thread `tid`'s stack mapping that can hold its frames, for a thread whose
/// stack pointer is `rsp`: the mapping from its start up to `top` (plus a margin), where
/// the thread's first frame begins, if `top` lies in the mapping above `rsp`. Above it
/// lies only what no unwind reads: for a main thread (`top` = [`start_stack`]), argv,
/// envp, auxv, their strings and the gap of up to 8 KiB the kernel leaves there at random
/// (x86's `arch_align_stack`); for a glibc thread (`top` = its first stack pointer, or
/// its thread pointer), its TLS block with its surplus for dlopen and `struct pthread`.
/// The whole mapping otherwise (a fork child of another thread, a stack the program
/// allocated).
pub(crate) fn frames_range(tid: Tid, rsp: u64, top: Option<u64>) -> Option<Range<u64>> {
    let stack = mapping_containing(tid, rsp)?;
    // A margin above the first frame: an unwind that reads one word past the outermost
    // frame (a _start without CFI reads argc as a return address) reads there what it
    // reads in --mode stop.
    let end = top
        .map(|t| t.saturating_add(64))
        .filter(|&t| t > rsp && t < stack.end)
        .unwrap_or(stack.end);
    Some(stack.start..end)
}

/// `kernel.yama.ptrace_scope`, when Yama is there.
pub(crate) fn ptrace_scope() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_trimmed_first_matches() {
        let text = "Name:\tcat\nUid:\t1000\t1001\t1000\t1000\nVmRSS:\t    2048 kB\nPss:\t4 kB\nPss_Anon:\t8 kB\n";
        assert_eq!(field(text, "Name:"), Some("cat"));
        assert_eq!(field(text, "Uid:"), Some("1000\t1001\t1000\t1000"));
        assert_eq!(kib_field(text, "VmRSS:"), Some(2048 * 1024));
        assert_eq!(kib_field(text, "Pss:"), Some(4 * 1024));
        assert_eq!(field(text, "VmHWM:"), None);
    }

    #[test]
    fn reads_its_own_status() {
        let me = Status::read("self").expect("own status");
        assert!(me.field("Pid:").is_some());
        assert!(effective_uid("self").is_some());
        assert!(!cmdline(std::process::id() as Tid).is_empty());
    }
}
