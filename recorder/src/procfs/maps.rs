//! Parsing `/proc/PID/maps` and grouping mappings into loaded modules.
//!
//! The recorder needs to know which ELF files are mapped into the tracee, and
//! where, for three things: finding the allocator entry points to put
//! breakpoints on, telling the unwinder where each module's code and unwind
//! tables live, and writing module records into the trace. The kernel's
//! `/proc/PID/maps` is the single source of truth for all three; this module
//! turns its text into plain data and never touches the process otherwise.
//!
//! Parsing is deliberately forgiving: a line that does not have the expected
//! shape is skipped rather than failing the whole read, because the file is
//! read while the tracee runs and future kernels may add fields.

use std::collections::HashMap;
use std::ops::Range;

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MapEntry {
    /// First address of the mapping.
    pub start: u64,
    /// One past the last address of the mapping.
    pub end: u64,
    /// Readable (`r`).
    pub read: bool,
    /// Writable (`w`).
    pub write: bool,
    /// Executable (`x`).
    pub exec: bool,
    /// Shared (`s`) rather than private (`p`).
    pub shared: bool,
    /// Offset into the mapped file (0 for anonymous mappings).
    pub offset: u64,
    /// Major device number of the file (hexadecimal in the text).
    pub dev_major: u32,
    /// Minor device number of the file (hexadecimal in the text).
    pub dev_minor: u32,
    /// Inode of the file; 0 for anonymous and pseudo mappings.
    pub inode: u64,
    /// The path as the kernel prints it: empty for anonymous mappings,
    /// pseudo names such as `[heap]`, `[stack]` and `[vdso]` kept, and a
    /// trailing ` (deleted)` left in place (see [`MapEntry::deleted`]).
    pub path: String,
}

impl MapEntry {
    /// The address range `start..end`.
    pub fn range(&self) -> Range<u64> {
        self.start..self.end
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the mapping is empty (never true for kernel output).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `addr` lies inside the mapping.
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// Whether the mapped file was deleted (or replaced) after being mapped:
    /// the kernel appends ` (deleted)` to the path.
    pub fn deleted(&self) -> bool {
        self.path.ends_with(" (deleted)")
    }

    /// The path without a trailing ` (deleted)`.
    pub fn path_without_deleted(&self) -> &str {
        self.path.strip_suffix(" (deleted)").unwrap_or(&self.path)
    }

    /// Whether the mapping is backed by a file (its path is absolute).
    pub fn is_file_backed(&self) -> bool {
        self.path.starts_with('/')
    }

    /// Protection bits in the trace format's encoding: 1 = read, 2 = write,
    /// 4 = execute.
    pub fn prot(&self) -> u8 {
        u8::from(self.read) | (u8::from(self.write) << 1) | (u8::from(self.exec) << 2)
    }
}

/// Parse the text of a `/proc/PID/maps` file. Malformed lines are skipped.
pub fn parse_maps(text: &str) -> Vec<MapEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// Read and parse `/proc/PID/maps`.
pub fn read_maps(pid: i32) -> std::io::Result<Vec<MapEntry>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    Ok(parse_maps(&text))
}

/// Split off the next whitespace-delimited field, returning it and the rest.
fn next_field(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start_matches([' ', '\t']);
    if s.is_empty() {
        return None;
    }
    let end = s.find([' ', '\t']).unwrap_or(s.len());
    Some((&s[..end], &s[end..]))
}

fn parse_line(line: &str) -> Option<MapEntry> {
    let (range, rest) = next_field(line)?;
    let (perms, rest) = next_field(rest)?;
    let (offset, rest) = next_field(rest)?;
    let (dev, rest) = next_field(rest)?;
    let (inode, rest) = next_field(rest)?;
    // The path is everything after the inode and its padding; it may contain
    // spaces, so it is not split further. Only leading blanks are removed.
    let path = rest.trim_start_matches([' ', '\t']);

    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    if end < start {
        return None;
    }

    let perms = perms.as_bytes();
    if perms.len() < 4 {
        return None;
    }
    let flag = |i: usize, c: u8| -> Option<bool> {
        match perms[i] {
            b'-' => Some(false),
            x if x == c => Some(true),
            _ => None,
        }
    };
    let read = flag(0, b'r')?;
    let write = flag(1, b'w')?;
    let exec = flag(2, b'x')?;
    let shared = match perms[3] {
        b's' => true,
        b'p' => false,
        _ => return None,
    };

    let offset = u64::from_str_radix(offset, 16).ok()?;
    let (major, minor) = dev.split_once(':')?;
    let dev_major = u32::from_str_radix(major, 16).ok()?;
    let dev_minor = u32::from_str_radix(minor, 16).ok()?;
    let inode = inode.parse::<u64>().ok()?;

    Some(MapEntry {
        start,
        end,
        read,
        write,
        exec,
        shared,
        offset,
        dev_major,
        dev_minor,
        inode,
        path: path.to_string(),
    })
}

/// A file (or the vDSO) mapped into the process, with all of its mappings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedModule {
    /// Path as printed in the maps file (see [`MapEntry::path`]).
    pub path: String,
    /// Inode of the file (0 for `[vdso]`).
    pub inode: u64,
    /// The module's mappings, in address order.
    pub mappings: Vec<MapEntry>,
}

impl MappedModule {
    /// From the lowest start to the highest end of the module's mappings.
    pub fn avma_range(&self) -> Range<u64> {
        let start = self.mappings.iter().map(|m| m.start).min().unwrap_or(0);
        let end = self.mappings.iter().map(|m| m.end).max().unwrap_or(0);
        start..end
    }

    /// The executable mappings' ranges.
    pub fn exec_ranges(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.mappings.iter().filter(|m| m.exec).map(|m| m.range())
    }

    /// Whether this is the kernel's vDSO (its image must be read from memory).
    pub fn is_vdso(&self) -> bool {
        self.path == "[vdso]"
    }
}

/// Group file-backed mappings by `(path, inode)`, plus `[vdso]`. Modules are
/// returned in the order of their lowest mapping; anonymous mappings, `[heap]`,
/// `[stack]`, `[vvar]` and the like are left out.
pub fn group_modules(maps: &[MapEntry]) -> Vec<MappedModule> {
    let mut modules: Vec<MappedModule> = Vec::new();
    let mut index: HashMap<(&str, u64), usize> = HashMap::new();
    let mut sorted: Vec<&MapEntry> = maps
        .iter()
        .filter(|m| m.is_file_backed() || m.path == "[vdso]")
        .collect();
    sorted.sort_by_key(|m| m.start);
    for m in sorted {
        match index.get(&(m.path.as_str(), m.inode)) {
            Some(&i) => modules[i].mappings.push(m.clone()),
            None => {
                index.insert((m.path.as_str(), m.inode), modules.len());
                modules.push(MappedModule {
                    path: m.path.clone(),
                    inode: m.inode,
                    mappings: vec![m.clone()],
                });
            }
        }
    }
    modules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_lines() {
        let text = "\
55bbc5272000-55bbc5274000 r--p 00000000 fe:00 247030                     /usr/bin/cat
55bbc5274000-55bbc5279000 r-xp 00002000 fe:00 247030                     /usr/bin/cat
55bbff545000-55bbff566000 rw-p 00000000 00:00 0                          [heap]
7f1965c45000-7f1965c67000 rw-p 00000000 00:00 0 
garbage line
7f1965ead000-7f1965eb4000 r--s 00000000 fe:00 325745                     /tmp/a dir/with spaces (deleted)
7ffc1e5f6000-7ffc1e5f8000 r-xp 00000000 00:00 0                          [vdso]
";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 6);
        assert_eq!(maps[0].start, 0x55bbc5272000);
        assert_eq!(maps[1].offset, 0x2000);
        assert!(maps[1].exec && maps[1].read && !maps[1].write && !maps[1].shared);
        assert_eq!((maps[0].dev_major, maps[0].dev_minor), (0xfe, 0));
        assert_eq!(maps[2].path, "[heap]");
        assert_eq!(maps[3].path, "");
        assert_eq!(maps[4].path, "/tmp/a dir/with spaces (deleted)");
        assert!(maps[4].deleted() && maps[4].shared);
        assert_eq!(maps[4].path_without_deleted(), "/tmp/a dir/with spaces");
        let modules = group_modules(&maps);
        let names: Vec<_> = modules.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(
            names,
            ["/usr/bin/cat", "/tmp/a dir/with spaces (deleted)", "[vdso]"]
        );
        assert_eq!(modules[0].mappings.len(), 2);
        assert_eq!(modules[0].avma_range(), 0x55bbc5272000..0x55bbc5279000);
    }
}
