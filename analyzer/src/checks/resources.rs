//! File descriptors and memory mappings a program opened and never released: the
//! analyzer's counterpart of memcheck's `--track-fds=yes`, plus mappings still mapped at
//! exit.
//!
//! Every image keeps a [`Resources`] table fed by the `FdOpen`/`FdClose` and
//! `Mmap`/`Munmap`/`Mremap` records of its threads:
//!
//! * **Descriptors.** An `FdOpen` makes the descriptor open (replacing whatever the table
//!   had there: `dup2` onto an open descriptor closes it implicitly, and a close the
//!   recorder could not see — `close_range`, close-on-exec — is forgotten the same way);
//!   an `FdClose` forgets it. Descriptors the image did not open itself (0, 1, 2 and
//!   everything inherited, or opened before an attach) are not in the table, so closing
//!   them is not an error and they are never reported. Every descriptor left in the table
//!   when the image ends is reported, wherever it was opened from (`fopen` opens inside
//!   the C library on the program's behalf, as memcheck also counts it). A duplicate
//!   (`dup`, `dup2`, `fcntl(F_DUPFD)`) of a descriptor the table knows is described by the
//!   original's path.
//! * **Mappings.** An `Mmap` adds a region (a `MAP_FIXED` one first unmaps what it
//!   covers); a `Munmap` removes its range from every region it overlaps, splitting a
//!   region it only partly covers; an `Mremap` moves the remapped part of a region to its
//!   new place and size. Only the program's own mappings are reported: those the C library
//!   or the dynamic loader made for the program outside `malloc` (thread stacks from
//!   `pthread_create`, locale archives, loaded libraries) — recognised by their innermost
//!   frame lying in `libc.so*`/`libc-*` or `ld-linux*`/`ld-*` — are tracked so that their
//!   unmaps are understood, but not reported. Mappings made inside `malloc` are not in the
//!   trace at all.
//!
//! Memory is bounded by the descriptors and mappings open at once.

use std::collections::BTreeMap;

use heaptape_format::{FdKind, Record, StackId, Timestamp};

use crate::hash::FastMap;
use crate::modules::{is_libc_path, is_loader_path, ModuleMap};
use crate::stacks::StackTable;

/// A descriptor opened by the image and not closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenFd {
    /// The descriptor.
    pub fd: i32,
    /// What it refers to.
    pub kind: FdKind,
    /// Its path, socket type or other description (for a duplicate of a known
    /// descriptor: the original's).
    pub detail: String,
    /// The descriptor it duplicates, for `dup` and friends.
    pub duplicate_of: Option<i32>,
    /// Where it was opened.
    pub stack: StackId,
    /// When.
    pub ts: Timestamp,
    /// By which thread.
    pub tid: u32,
}

/// A mapped region (or what is left of it after partial unmaps).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Start address.
    pub address: u64,
    /// Length in bytes.
    pub len: u64,
    /// Protection bits (`PROT_*`).
    pub prot: u32,
    /// Mapping flags (`MAP_*`).
    pub flags: u32,
    /// The mapped file's descriptor, -1 for anonymous memory.
    pub fd: i32,
    /// Where it was mapped.
    pub stack: StackId,
    /// When.
    pub ts: Timestamp,
    /// Whether the program made it itself (not the C library or the loader on its
    /// behalf); only these are reported.
    pub own: bool,
}

/// Most unmapped parts of the program's own regions kept for the timeline (see
/// [`Resources::unmapped_own`]); past this, later ones are not kept.
pub const MAX_UNMAPPED: usize = 1 << 20;

/// A part of one of the program's own regions that was unmapped: what the timeline needs
/// to tell which mappings made its growth when they are gone by the end (CPython's
/// arenas are unmapped at its exit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnmappedOwn {
    /// Where the region was mapped.
    pub stack: StackId,
    /// Bytes unmapped.
    pub len: u64,
    /// When the region was mapped.
    pub mapped: Timestamp,
    /// When the part was unmapped.
    pub unmapped: Timestamp,
}

/// The descriptors and mappings of one image (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Resources {
    fds: FastMap<i32, OpenFd>,
    /// Regions by start address; they never overlap.
    maps: BTreeMap<u64, Mapping>,
    /// Parts of the program's own regions unmapped so far (at most [`MAX_UNMAPPED`]).
    unmapped: Vec<UnmappedOwn>,
    /// Descriptors opened (`FdOpen` records applied).
    pub fds_opened: u64,
    /// Descriptors closed that the image had opened.
    pub fds_closed: u64,
    /// Mappings made (`Mmap` records applied).
    pub mappings_made: u64,
}

/// The thread and time of a descriptor or mapping record; `None` for other records.
pub fn event_thread(rec: &Record) -> Option<(u32, Timestamp)> {
    match rec {
        Record::Mmap { tid, ts, .. }
        | Record::Munmap { tid, ts, .. }
        | Record::FdOpen { tid, ts, .. }
        | Record::FdClose { tid, ts, .. } => Some((*tid, *ts)),
        Record::Mremap(m) => Some((m.tid, m.ts)),
        _ => None,
    }
}

/// The name of a descriptor kind in reports: `file`, `socket`, `pipe`, `special`,
/// `dup` or `other`.
pub fn kind_name(kind: FdKind) -> &'static str {
    match kind {
        FdKind::File => "file",
        FdKind::Socket => "socket",
        FdKind::Pipe => "pipe",
        FdKind::Special => "special",
        FdKind::Dup => "dup",
        FdKind::Other => "other",
    }
}

/// The descriptor named by a recorder detail `duplicate of fd N`.
fn duplicated_fd(detail: &str) -> Option<i32> {
    detail.strip_prefix("duplicate of fd ")?.trim().parse().ok()
}

impl Resources {
    /// Applies one descriptor or mapping record of this image (others are ignored);
    /// `stacks` and `modules` tell the program's own mappings from the C library's.
    pub fn apply(&mut self, rec: &Record, stacks: &StackTable, modules: &ModuleMap) {
        match rec {
            Record::FdOpen {
                ts,
                tid,
                fd,
                kind,
                detail,
                stack,
            } => {
                if *fd < 0 {
                    return;
                }
                self.fds_opened += 1;
                let duplicate_of = (*kind == FdKind::Dup)
                    .then(|| duplicated_fd(detail))
                    .flatten();
                let detail = duplicate_of
                    .and_then(|old| self.fds.get(&old))
                    .map_or_else(|| detail.clone(), |o| o.detail.clone());
                self.fds.insert(
                    *fd,
                    OpenFd {
                        fd: *fd,
                        kind: *kind,
                        detail,
                        duplicate_of,
                        stack: *stack,
                        ts: *ts,
                        tid: *tid,
                    },
                );
            }
            Record::FdClose { fd, .. } if self.fds.remove(fd).is_some() => {
                self.fds_closed += 1;
            }
            Record::Mmap {
                ts,
                address,
                len,
                prot,
                flags,
                fd,
                stack,
                ..
            } => {
                if *len == 0 {
                    return;
                }
                self.mappings_made += 1;
                let own = !library_made(stacks, modules, *stack);
                // A MAP_FIXED mapping replaces what it covers; any other was handed out
                // by the kernel from free space, so whatever the table still has there
                // is stale (unmapped by a call the trace does not hold).
                self.unmap_at(*address, *len, *ts);
                self.maps.insert(
                    *address,
                    Mapping {
                        address: *address,
                        len: *len,
                        prot: *prot,
                        flags: *flags,
                        fd: *fd,
                        stack: *stack,
                        ts: *ts,
                        own,
                    },
                );
            }
            Record::Munmap {
                address, len, ts, ..
            } => self.unmap_at(*address, *len, *ts),
            Record::Mremap(m) => self.remap(m.old_address, m.old_len, m.new_address, m.new_len),
            _ => {}
        }
    }

    /// Removes `[address, address + len)` from every region, splitting those it only
    /// partly covers.
    pub fn unmap(&mut self, address: u64, len: u64) {
        self.unmap_inner(address, len, None);
    }

    /// [`Resources::unmap`] at time `ts`: the parts of the program's own regions it
    /// removes are kept (see [`Resources::unmapped_own`]).
    pub fn unmap_at(&mut self, address: u64, len: u64, ts: Timestamp) {
        self.unmap_inner(address, len, Some(ts));
    }

    fn unmap_inner(&mut self, address: u64, len: u64, ts: Option<Timestamp>) {
        if len == 0 {
            return;
        }
        let end = address.saturating_add(len);
        // Regions starting before `end` that reach past `address`.
        let hit: Vec<u64> = self
            .maps
            .range(..end)
            .rev()
            .take_while(|(_, m)| m.address.saturating_add(m.len) > address)
            .map(|(&a, _)| a)
            .collect();
        for start in hit {
            let Some(m) = self.maps.remove(&start) else {
                continue;
            };
            let m_end = m.address.saturating_add(m.len);
            if let (Some(unmapped), true) = (ts, m.own && self.unmapped.len() < MAX_UNMAPPED) {
                self.unmapped.push(UnmappedOwn {
                    stack: m.stack,
                    len: m_end.min(end) - m.address.max(address),
                    mapped: m.ts,
                    unmapped,
                });
            }
            if m.address < address {
                let mut head = m.clone();
                head.len = address - m.address;
                self.maps.insert(head.address, head);
            }
            if m_end > end {
                let mut tail = m;
                tail.address = end;
                tail.len = m_end - end;
                self.maps.insert(tail.address, tail);
            }
        }
    }

    /// `mremap`: the part of the region at `old` that was remapped moves to `new` with
    /// the new length, keeping where it was first mapped. A range the table does not
    /// know (made inside `malloc`, or before an attach) stays unknown.
    fn remap(&mut self, old: u64, old_len: u64, new: u64, new_len: u64) {
        let origin = self
            .maps
            .range(..=old)
            .next_back()
            .map(|(_, m)| m)
            .filter(|m| m.address.saturating_add(m.len) > old)
            .cloned();
        // mremap with old_len 0 duplicates a shared mapping and leaves the old one.
        if old_len > 0 {
            self.unmap(old, old_len);
        }
        if let Some(mut m) = origin {
            if new_len == 0 {
                return;
            }
            self.unmap(new, new_len);
            m.address = new;
            m.len = new_len;
            self.maps.insert(new, m);
        }
    }

    /// Descriptors open now, by descriptor number.
    pub fn open_fds(&self) -> Vec<&OpenFd> {
        let mut v: Vec<&OpenFd> = self.fds.values().collect();
        v.sort_by_key(|f| f.fd);
        v
    }

    /// Every region mapped now (the program's and the C library's), by address.
    pub fn mappings(&self) -> impl Iterator<Item = &Mapping> {
        self.maps.values()
    }

    /// The program's own regions mapped now (see the module docs), by address.
    pub fn own_mappings(&self) -> Vec<&Mapping> {
        self.maps.values().filter(|m| m.own).collect()
    }

    /// Parts of the program's own regions unmapped so far, in order (the first
    /// [`MAX_UNMAPPED`]).
    pub fn unmapped_own(&self) -> &[UnmappedOwn] {
        &self.unmapped
    }

    /// Bytes of the program's own mappings now.
    pub fn own_mapped_bytes(&self) -> u64 {
        self.maps.values().filter(|m| m.own).map(|m| m.len).sum()
    }
}

/// What is known of the allocator that made a mapping at `stack`, when a frame of it
/// lies in a runtime whose allocator maps its own arenas: one sentence with the remedy.
pub fn known_mapper(
    stacks: &StackTable,
    modules: &ModuleMap,
    stack: StackId,
) -> Option<&'static str> {
    let python = stacks.iter(stack).any(|address| {
        modules.lookup(address).is_some_and(|hit| {
            let name = hit.module.path.rsplit('/').next().unwrap_or("");
            name.starts_with("python") || name.starts_with("libpython")
        })
    });
    python.then_some(
        "CPython's object allocator (pymalloc) maps its arenas itself, so its objects are \
         not malloc blocks: run the program with PYTHONMALLOC=malloc to record them one by \
         one (leaks, growth by call site)",
    )
}

/// Whether the call at `stack` was made by the C library or the dynamic loader (its
/// innermost frame lies in one of them).
fn library_made(stacks: &StackTable, modules: &ModuleMap, stack: StackId) -> bool {
    stacks
        .iter(stack)
        .next()
        .and_then(|caller| modules.lookup(caller))
        .is_some_and(|hit| is_libc_path(&hit.module.path) || is_loader_path(&hit.module.path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mmap(address: u64, len: u64) -> Record {
        Record::Mmap {
            ts: 1,
            tid: 1,
            address,
            len,
            prot: 3,
            flags: 0x22,
            fd: -1,
            stack: 0,
        }
    }

    fn regions(r: &Resources) -> Vec<(u64, u64)> {
        r.mappings().map(|m| (m.address, m.len)).collect()
    }

    #[test]
    fn partial_unmaps_split_regions() {
        let (s, m) = (StackTable::new(), ModuleMap::new());
        let mut r = Resources::default();
        r.apply(&mmap(0x10000, 0x4000), &s, &m);
        r.apply(&mmap(0x20000, 0x2000), &s, &m);
        r.unmap(0x11000, 0x1000);
        assert_eq!(
            regions(&r),
            vec![(0x10000, 0x1000), (0x12000, 0x2000), (0x20000, 0x2000)]
        );
        // One munmap over several regions.
        r.unmap(0x13000, 0xd000);
        assert_eq!(
            regions(&r),
            vec![(0x10000, 0x1000), (0x12000, 0x1000), (0x20000, 0x2000)]
        );
        r.unmap(0x0, 0x21000);
        assert_eq!(regions(&r), vec![(0x21000, 0x1000)]);
        r.unmap(0x21000, 0x1000);
        assert!(regions(&r).is_empty());
        r.unmap(0x21000, 0);
    }

    #[test]
    fn remap_moves_and_resizes() {
        let (s, m) = (StackTable::new(), ModuleMap::new());
        let mut r = Resources::default();
        r.apply(&mmap(0x10000, 0x2000), &s, &m);
        let rec = Record::Mremap(Box::new(heaptape_format::Mremap {
            ts: 2,
            tid: 1,
            old_address: 0x10000,
            old_len: 0x2000,
            new_address: 0x40000,
            new_len: 0x8000,
            stack: 0,
        }));
        r.apply(&rec, &s, &m);
        assert_eq!(regions(&r), vec![(0x40000, 0x8000)]);
        // Unknown ranges stay unknown.
        let rec = Record::Mremap(Box::new(heaptape_format::Mremap {
            ts: 2,
            tid: 1,
            old_address: 0x90000,
            old_len: 0x2000,
            new_address: 0xa0000,
            new_len: 0x8000,
            stack: 0,
        }));
        r.apply(&rec, &s, &m);
        assert_eq!(regions(&r), vec![(0x40000, 0x8000)]);
    }

    #[test]
    fn descriptors() {
        let (s, m) = (StackTable::new(), ModuleMap::new());
        let mut r = Resources::default();
        let open = |fd, kind, detail: &str| Record::FdOpen {
            ts: 1,
            tid: 1,
            fd,
            kind,
            detail: detail.into(),
            stack: 0,
        };
        let close = |fd| Record::FdClose {
            ts: 2,
            tid: 1,
            fd,
            stack: 0,
        };
        r.apply(&open(3, FdKind::File, "/etc/hostname"), &s, &m);
        r.apply(&open(4, FdKind::Dup, "duplicate of fd 3"), &s, &m);
        r.apply(&open(5, FdKind::Dup, "duplicate of fd 1"), &s, &m);
        r.apply(&close(1), &s, &m);
        r.apply(&close(3), &s, &m);
        r.apply(&open(5, FdKind::Pipe, "pipe (read end)"), &s, &m);
        let open: Vec<(i32, &str, Option<i32>)> = r
            .open_fds()
            .iter()
            .map(|f| (f.fd, f.detail.as_str(), f.duplicate_of))
            .collect();
        assert_eq!(
            open,
            vec![(4, "/etc/hostname", Some(3)), (5, "pipe (read end)", None)]
        );
        assert_eq!((r.fds_opened, r.fds_closed), (4, 1));
    }
}
