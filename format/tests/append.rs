//! Appending to a finished trace (`TraceAppender`, how `heaptape record` embeds
//! symbols) and reading the symbols back from its end (`trailing_symbols`), and the
//! version-2 traces every reader still reads.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use heaptape_format::{
    trailing_symbols, AllocFn, AppendError, ModuleSymbols, Record, SymbolFrame, SymbolizedAddress,
    TraceAppender, FORMAT_VERSION, OLDEST_READ_VERSION,
};
use proptest::prelude::*;

/// A scratch file, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str, bytes: &[u8]) -> Scratch {
        let p = std::env::temp_dir().join(format!(
            "heaptape-append-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&p, bytes).expect("write scratch trace");
        Scratch(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.0).expect("read scratch trace")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn events(n: u64) -> Vec<Record> {
    let mut out = vec![Record::StackNode {
        id: 1,
        parent: 0,
        address: 0x5555_5555_1234,
    }];
    for i in 0..n {
        out.push(Record::Alloc {
            ts: i * 10,
            tid: 7,
            func: AllocFn::Malloc,
            address: 0x5555_5556_0000 + i * 64,
            size: 48,
            align: 0,
            stack: 1,
        });
        if i % 3 == 0 {
            out.push(Record::Free {
                ts: i * 10 + 5,
                tid: 7,
                func: AllocFn::Free,
                address: 0x5555_5556_0000 + i * 64,
                stack: 1,
            });
        }
    }
    out
}

fn symbols(module: &str, n: u64) -> ModuleSymbols {
    ModuleSymbols {
        path: module.into(),
        build_id: vec![1, 2, 3],
        strings: vec!["main".into(), "app.c".into()],
        addresses: (0..n)
            .map(|i| SymbolizedAddress {
                address: 0x1000 + i * 8,
                frames: vec![SymbolFrame {
                    function: Some(0),
                    mangled: None,
                    file: Some(1),
                    line: Some(i as u32),
                    inlined: false,
                }],
            })
            .collect(),
    }
}

/// Appends `extra` to the trace in `file` and returns the records it then reads as.
fn append(file: &Scratch, extra: &[Record]) -> Outcome {
    let mut a = TraceAppender::open(file.path()).expect("open for appending");
    for r in extra {
        a.write(r).expect("append");
    }
    let len = a.finish().expect("finish");
    let bytes = file.bytes();
    assert_eq!(len, bytes.len() as u64);
    read_all(&bytes)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever the trace and the chunk size, the appended trace reads as the old
    /// records, then the new ones, complete, with the old end record's timestamp.
    #[test]
    fn appended_records_follow_the_old_ones(
        records in prop::collection::vec(any_record(), 0..30),
        extra in prop::collection::vec(any_symbols(), 0..4),
        target in prop_oneof![Just(1usize), Just(200), Just(1 << 20)],
    ) {
        let file = Scratch::new("prop", &write_trace(&records, target, 4242));
        let extra: Vec<Record> = extra.into_iter().map(|s| Record::Symbols(Box::new(s))).collect();
        let out = append(&file, &extra);
        prop_assert!(out.error.is_none(), "{:?}", out.error);
        prop_assert!(out.complete && out.truncation.is_none());
        let n = records.len();
        prop_assert_eq!(&out.records[..n], &records[..]);
        prop_assert_eq!(&out.records[n..n + extra.len()], &extra[..]);
        let end_ts = match out.records.last() {
            Some(Record::End { ts, .. }) => Some(*ts),
            _ => None,
        };
        prop_assert_eq!(end_ts, Some(4242));
        // The symbols are read back from the end alone.
        let tail = trailing_symbols(file.path()).expect("trailing symbols");
        let want: Vec<ModuleSymbols> = extra.iter().map(|r| match r {
            Record::Symbols(s) => (**s).clone(),
            _ => unreachable!(),
        }).collect();
        // (A trace whose last records were `Symbols` records already has them first.)
        prop_assert!(tail.ends_with(&want), "{} trailing, {} appended", tail.len(), want.len());
    }
}

#[test]
fn symbols_are_found_at_the_end_only() {
    // A trace whose last chunk is ordinary records: no trailing symbols.
    let file = Scratch::new("none", &write_trace(&events(500), 1 << 12, 1));
    assert!(trailing_symbols(file.path()).unwrap().is_empty());
    // Appending twice: both sets are at the end (the second set's chunk follows the
    // first one's, re-encoded).
    append(&file, &[Record::Symbols(Box::new(symbols("/a", 3)))]);
    let out = append(&file, &[Record::Symbols(Box::new(symbols("/b", 2)))]);
    assert!(out.complete && out.error.is_none());
    let tail = trailing_symbols(file.path()).unwrap();
    let paths: Vec<&str> = tail.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["/a", "/b"]);
}

#[test]
fn incomplete_and_old_traces_are_refused_and_left_alone() {
    let unfinished = write_unfinished(&events(50), 256);
    let file = Scratch::new("unfinished", &unfinished);
    match TraceAppender::open(file.path()) {
        Err(AppendError::Refused(why)) => assert!(why.contains("no end record"), "{why}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("an unfinished trace was opened for appending"),
    }
    assert_eq!(file.bytes(), unfinished);

    let mut old = write_trace(&events(50), 256, 1);
    old[8..12].copy_from_slice(&OLDEST_READ_VERSION.to_le_bytes());
    let file = Scratch::new("old", &old);
    const { assert!(OLDEST_READ_VERSION < FORMAT_VERSION) };
    match TraceAppender::open(file.path()) {
        Err(AppendError::Refused(why)) => assert!(why.contains("format version"), "{why}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("an old trace was opened for appending"),
    }
    assert_eq!(file.bytes(), old);

    // Nothing written before `finish`: an appender dropped halfway changes nothing.
    let whole = write_trace(&events(50), 256, 1);
    let file = Scratch::new("dropped", &whole);
    let mut a = TraceAppender::open(file.path()).unwrap();
    a.write(&Record::Symbols(Box::new(symbols("/a", 3))))
        .unwrap();
    drop(a);
    assert_eq!(file.bytes(), whole);
}

#[test]
fn version_2_traces_read_as_they_always_did() {
    let records = events(300);
    let mut bytes = write_trace(&records, 512, 9);
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    let out = read_all(&bytes);
    assert!(out.error.is_none() && out.complete, "{:?}", out.error);
    assert_eq!(out.records[..records.len()], records[..]);
    let r = heaptape_format::TraceReader::new(&bytes[..]).unwrap();
    assert_eq!(r.version(), 2);
}

/// A tmpfs mounted for one test (needs the right to mount: the test is skipped
/// without it), unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = std::env::temp_dir().join(format!("heaptape-append-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .stderr(std::process::Stdio::piped())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(Tmpfs(dir))
        } else {
            let _ = std::fs::remove_dir(&dir);
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// On a full disk, appending fails and leaves the trace byte for byte as it was
/// (complete, readable): the new tail's extension is written before anything the trace
/// holds is overwritten.
#[test]
fn a_full_disk_leaves_the_trace_as_it_was() {
    let fs = match Tmpfs::mount("64k") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED a_full_disk_leaves_the_trace_as_it_was: {why}");
            return;
        }
    };
    let original = write_trace(&events(2000), 1 << 12, 5);
    let path = fs.0.join("t.trace");
    std::fs::write(&path, &original).unwrap();
    // Fill the rest of the file system.
    {
        use std::io::Write;
        let mut filler = std::fs::File::create(fs.0.join("filler")).unwrap();
        let page = vec![0u8; 4096];
        while filler.write_all(&page).is_ok() {}
    }
    let mut a = TraceAppender::open(&path).expect("open");
    // Names zstd cannot shrink much: 32 KiB of hex digits from a mixing function.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut s = symbols("/m", 2000);
    s.strings = (0..2000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{x:016x}")
        })
        .collect();
    for (i, a) in s.addresses.iter_mut().enumerate() {
        a.frames[0].function = Some(i as u32);
    }
    a.write(&Record::Symbols(Box::new(s))).unwrap();
    let e = a.finish().expect_err("the disk is full");
    assert!(e.to_string().contains("No space left"), "{e}");
    let after = std::fs::read(&path).unwrap();
    assert!(
        after == original,
        "the trace changed ({} bytes, was {})",
        after.len(),
        original.len()
    );
    let out = read_all(&original);
    assert!(out.complete && out.error.is_none());
}
