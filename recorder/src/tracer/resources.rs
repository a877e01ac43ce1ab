//! Descriptor, socket and mapping calls (open, socket, pipe, dup, close, mmap...): their
//! arguments decoded at the entry, their records written at the entry (closes, unmaps)
//! or at the return (everything that creates something).

use heaptape_format::{FdKind, Record, StackId};

use super::model::{Pending, PendingKind};
use super::Tracer;
use crate::hooks::catalogue::ResourceCall;
use crate::sys::{self, Tid};

impl Tracer {
    /// Entry of a descriptor or mapping call: closes and unmaps are written now (before
    /// the resource is released, like frees); the rest when they return.
    pub(super) fn resource_entry(
        &mut self,
        tid: Tid,
        pid: Tid,
        ts: u64,
        rc: ResourceCall,
        args: &[u64; 6],
        stack: StackId,
    ) -> (PendingKind, u64) {
        let detail = match rc {
            ResourceCall::Open { path_arg } => read_c_string(tid, args[path_arg]),
            ResourceCall::Socket => socket_detail(args[0], args[1]),
            ResourceCall::Accept => format!("socket accepted on fd {}", args[0] as i32),
            ResourceCall::Dup => format!("duplicate of fd {}", args[0] as i32),
            ResourceCall::Pipe => "pipe".to_string(),
            ResourceCall::SocketPair => socket_detail(args[0], args[1]),
            ResourceCall::Fcntl => format!("duplicate of fd {}", args[0] as i32),
            ResourceCall::Special(name) => name.to_string(),
            _ => String::new(),
        };
        match rc {
            ResourceCall::Close => {
                if let Some(p) = self.procs.get_mut(&pid) {
                    p.open_fds.remove(&(args[0] as i32));
                }
                self.events.buf().push(Record::FdClose {
                    ts,
                    tid: tid as u32,
                    fd: args[0] as i32,
                    stack,
                })
            }
            // close_range(.., CLOSE_RANGE_CLOEXEC) only marks descriptors.
            ResourceCall::CloseRange { to_end }
                if to_end || args[2] & libc::CLOSE_RANGE_CLOEXEC as u64 == 0 =>
            {
                let first = args[0] as u32 as i32;
                let last = if to_end {
                    i32::MAX
                } else {
                    args[1].min(i32::MAX as u64) as i32
                };
                let closed: Vec<i32> = self
                    .procs
                    .get_mut(&pid)
                    .map(|p| {
                        let v: Vec<i32> = p
                            .open_fds
                            .range(first.max(0)..=last.max(0))
                            .copied()
                            .collect();
                        for fd in &v {
                            p.open_fds.remove(fd);
                        }
                        v
                    })
                    .unwrap_or_default();
                for fd in closed {
                    self.events.buf().push(Record::FdClose {
                        ts,
                        tid: tid as u32,
                        fd,
                        stack,
                    });
                }
            }
            ResourceCall::Munmap => {
                if let Some(p) = self.procs.get_mut(&pid) {
                    p.live.unmapped(args[0], args[1]);
                }
                self.events.buf().push(Record::Munmap {
                    ts,
                    tid: tid as u32,
                    address: args[0],
                    len: args[1],
                    stack,
                })
            }
            _ => {}
        }
        let outptr = match rc {
            ResourceCall::Pipe => args[0],
            ResourceCall::SocketPair => args[3],
            _ => 0,
        };
        (
            PendingKind::Resource {
                call: rc,
                args: *args,
                detail,
            },
            outptr,
        )
    }
}

/// The record(s) of a descriptor or mapping call that returned `rax` (`out`: the word
/// stored through the pipe array).
pub(super) fn resource_record(
    p: &Pending,
    call: ResourceCall,
    args: &[u64; 6],
    detail: &str,
    rax: u64,
    out: u64,
) -> Option<Vec<Record>> {
    let (ts, tid, stack) = (p.ts, p.tid as u32, p.stack);
    let fd_open = |fd: i32, kind: FdKind, detail: String| Record::FdOpen {
        ts,
        tid,
        fd,
        kind,
        detail,
        stack,
    };
    let ret = rax as i64;
    Some(match call {
        ResourceCall::Close | ResourceCall::Munmap | ResourceCall::CloseRange { .. } => {
            return None
        }
        ResourceCall::Pipe => {
            if ret != 0 {
                return None;
            }
            let (r, w) = (out as u32 as i32, (out >> 32) as u32 as i32);
            vec![
                fd_open(r, FdKind::Pipe, "pipe (read end)".into()),
                fd_open(w, FdKind::Pipe, "pipe (write end)".into()),
            ]
        }
        ResourceCall::SocketPair => {
            if ret != 0 {
                return None;
            }
            let (a, b) = (out as u32 as i32, (out >> 32) as u32 as i32);
            vec![
                fd_open(a, FdKind::Socket, format!("{detail} pair")),
                fd_open(b, FdKind::Socket, format!("{detail} pair")),
            ]
        }
        ResourceCall::Fcntl => {
            let cmd = args[1] as i32;
            if (cmd != libc::F_DUPFD && cmd != libc::F_DUPFD_CLOEXEC) || (rax as i32) < 0 {
                return None;
            }
            vec![fd_open(rax as i32, FdKind::Dup, detail.to_string())]
        }
        ResourceCall::Mmap => {
            if (-4095..0).contains(&ret) || rax == u64::MAX {
                return None;
            }
            vec![Record::Mmap {
                ts,
                tid,
                address: rax,
                len: args[1],
                prot: args[2] as u32,
                flags: args[3] as u32,
                fd: args[4] as i32,
                stack,
            }]
        }
        ResourceCall::Mremap => {
            if (-4095..0).contains(&ret) || rax == u64::MAX {
                return None;
            }
            vec![Record::Mremap(Box::new(heaptape_format::Mremap {
                ts,
                tid,
                old_address: args[0],
                old_len: args[1],
                new_address: rax,
                new_len: args[2],
                stack,
            }))]
        }
        ResourceCall::Open { .. }
        | ResourceCall::Socket
        | ResourceCall::Accept
        | ResourceCall::Dup
        | ResourceCall::Special(_) => {
            let fd = rax as i32;
            if fd < 0 {
                return None;
            }
            let kind = match call {
                ResourceCall::Open { .. } => FdKind::File,
                ResourceCall::Socket | ResourceCall::Accept => FdKind::Socket,
                ResourceCall::Dup => FdKind::Dup,
                _ => FdKind::Special,
            };
            vec![fd_open(fd, kind, detail.to_string())]
        }
    })
}

/// A NUL-terminated string of the tracee (at most 4 KiB), lossily decoded.
fn read_c_string(tid: Tid, addr: u64) -> String {
    let mut buf = vec![0u8; 4096];
    let n = sys::read_memory(tid, addr, &mut buf).unwrap_or(0);
    let end = buf[..n].iter().position(|&b| b == 0).unwrap_or(n);
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn socket_detail(domain: u64, ty: u64) -> String {
    let d = match domain as i32 {
        libc::AF_UNIX => "AF_UNIX",
        libc::AF_INET => "AF_INET",
        libc::AF_INET6 => "AF_INET6",
        libc::AF_NETLINK => "AF_NETLINK",
        _ => "AF_?",
    };
    let t = match (ty as i32) & 0xf {
        libc::SOCK_STREAM => "SOCK_STREAM",
        libc::SOCK_DGRAM => "SOCK_DGRAM",
        libc::SOCK_RAW => "SOCK_RAW",
        libc::SOCK_SEQPACKET => "SOCK_SEQPACKET",
        _ => "SOCK_?",
    };
    format!("socket({d}, {t})")
}
