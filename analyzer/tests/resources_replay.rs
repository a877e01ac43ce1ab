//! Descriptors, mappings and the RSS timeline through the whole pipeline (synthetic
//! traces): which mappings are the program's, detach wording, the JSON keys, and a
//! timeline verdict with its growing sites.

mod common;

use common::*;
use heaptape_analyzer::{AnalyzeOptions, VerdictKind};
use heaptape_format::{AllocFn, ExitStatus, FdKind, ProcessOrigin, Record, Segment};

const MIB: u64 = 1 << 20;

fn module(t: &mut Trace, pid: u32, path: &str, start: u64) {
    t.rec(Record::ModuleLoad(Box::new(heaptape_format::ModuleLoad {
        ts: 10,
        pid,
        path: path.into(),
        build_id: vec![],
        base: start,
        segments: vec![Segment {
            start,
            len: 0x10000,
            file_offset: 0,
            prot: 5,
        }],
    })));
}

fn mmap(t: &mut Trace, address: u64, len: u64, stack: u32) {
    t.rec(Record::Mmap {
        ts: 20,
        tid: 7,
        address,
        len,
        prot: 3,
        flags: 0x22,
        fd: -1,
        stack,
    });
}

#[test]
fn own_mappings_descriptors_and_detach_wording() {
    let mut t = Trace::new(7);
    t.start(7, None, ProcessOrigin::Attached, "./app");
    module(
        &mut t,
        7,
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        0x7000_0000,
    );
    module(&mut t, 7, "/lib64/ld-linux-x86-64.so.2", 0x7100_0000);
    module(&mut t, 7, "/bin/app", 0x40_0000);
    t.stack(1, 0, 0x40_1000); // main
    t.stack(2, 1, 0x7000_1000); // libc (pthread_create), called from main
    t.stack(3, 0, 0x7100_1000); // the loader
    mmap(&mut t, 0x1000_0000, 0x3000, 1);
    mmap(&mut t, 0x2000_0000, 0x800_000, 2);
    mmap(&mut t, 0x3000_0000, 0x1000, 3);
    t.rec(Record::Munmap {
        ts: 30,
        tid: 7,
        address: 0x1000_1000,
        len: 0x1000,
        stack: 1,
    });
    t.rec(Record::FdOpen {
        ts: 40,
        tid: 7,
        fd: 5,
        kind: FdKind::File,
        detail: "/etc/hostname".into(),
        stack: 2, // fopen opens inside the C library: still reported
    });
    t.rec(Record::FdOpen {
        ts: 41,
        tid: 7,
        fd: 6,
        kind: FdKind::Socket,
        detail: "socket(AF_INET, SOCK_STREAM)".into(),
        stack: 1,
    });
    t.rec(Record::FdClose {
        ts: 42,
        tid: 7,
        fd: 6,
        stack: 1,
    });
    t.rec(Record::FdClose {
        ts: 43,
        tid: 7,
        fd: 2, // inherited: not an error
        stack: 1,
    });
    t.exit(7, ExitStatus::Detached);
    let (_dir, path) = t.finish();
    let a = run(&path);
    let img = a.processes[0].image();
    let own: Vec<(u64, u64)> = img
        .resources
        .own_mappings()
        .iter()
        .map(|m| (m.address, m.len))
        .collect();
    assert_eq!(own, vec![(0x1000_0000, 0x1000), (0x1000_2000, 0x1000)]);
    assert_eq!(img.resources.mappings().count(), 4);
    let fds: Vec<i32> = img.resources.open_fds().iter().map(|f| f.fd).collect();
    assert_eq!(fds, vec![5]);
    assert_eq!(img.resources.fds_closed, 1);

    let json = a.to_json();
    let p = &json["processes"][0];
    assert_eq!(p["fd_leaks"][0]["fd"], 5);
    assert_eq!(p["fd_leaks"][0]["kind"], "file");
    assert_eq!(p["fd_leaks"][0]["path"], "/etc/hostname");
    assert_eq!(p["fd_leaks"][0]["stack_id"], 2);
    assert_eq!(p["mmap_leaks"][0]["address"], "0x10000000");
    assert_eq!(p["mmap_leaks"][0]["bytes"], 0x1000);
    assert_eq!(p["mmap_leaks"][1]["address"], "0x10002000");
    assert_eq!(p["mmap_leaks"].as_array().unwrap().len(), 2);
    assert_eq!(p["timeline"], serde_json::json!([]));
    assert_eq!(p["timeline_verdict"]["kind"], "unknown");

    let mut text = Vec::new();
    a.render_text(&mut text, &AnalyzeOptions::default())
        .unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("FILE DESCRIPTORS: 1 open at detach (opened by the program)"),
        "{text}"
    );
    assert!(
        text.contains("Open file descriptor 5: /etc/hostname"),
        "{text}"
    );
    assert!(
        text.contains("MAPPINGS: 8,192 bytes in 2 regions still mapped at detach"),
        "{text}"
    );
}

#[test]
fn timeline_verdict_names_the_growing_site() {
    let mut t = Trace::new(9);
    t.launch(9);
    t.stack(1, 0, 0x40_1000);
    t.stack(2, 0, 0x40_2000);
    let mut addr = 0x10_0000u64;
    for i in 0..40u64 {
        // One leaked MiB per sample from stack 1, one freed block from stack 2.
        t.rec(Record::Alloc {
            ts: 100_000_000 * (i + 1) - 1,
            tid: 9,
            func: AllocFn::Malloc,
            address: addr,
            size: MIB,
            align: 0,
            stack: 1,
        });
        addr += 0x20_0000;
        t.malloc(9, 0x9000_0000, 4096, 2);
        t.free(9, 0x9000_0000, 2);
        t.rec(Record::RssSample(Box::new(heaptape_format::RssSample {
            ts: 100_000_000 * (i + 1),
            pid: 9,
            rss: (i + 10) * MIB,
            hwm: (i + 10) * MIB,
            anon: (i + 5) * MIB,
            file: 5 * MIB,
            pss: None,
        })));
    }
    t.exit(9, ExitStatus::Code(0));
    let (_dir, path) = t.finish();
    let a = run(&path);
    let img = a.processes[0].image();
    let v = img.timeline.verdict();
    assert_eq!(v.kind, VerdictKind::Leak);
    // Quarter means of samples 5..36 (start-up and teardown dropped): 8.5 → 32.5 MiB.
    assert_eq!(v.heap_growth, 24 * MIB as i64);
    assert_eq!(v.rss_anon_growth, 24 * MIB as i64);
    // Start-up is the first 4 samples: the blocks allocated after the 5th sample (at
    // 500 ms) count, that is 35 of them.
    assert_eq!(v.sites.len(), 1);
    assert_eq!(v.sites[0].stack, 1);
    assert_eq!(v.sites[0].blocks, 35);
    assert_eq!(v.sites[0].bytes, 35 * MIB);
    assert_eq!(img.timeline.points().len(), 40);
    let json = a.to_json();
    let tv = &json["processes"][0]["timeline_verdict"];
    assert_eq!(tv["kind"], "leak");
    assert_eq!(tv["rss_samples"], 40);
    assert_eq!(tv["sites"][0]["stack_id"], 1);
    assert_eq!(json["processes"][0]["timeline"][0]["live_heap_bytes"], MIB);
    assert_eq!(json["processes"][0]["timeline"][0]["rss_anon"], 5 * MIB);
}
