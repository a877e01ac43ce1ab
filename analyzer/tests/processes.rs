//! The process tree: fork inheritance, exec, vfork, threads, attach, implicit processes.

mod common;

use common::{run, Trace};
use heaptape_analyzer::{FindingKind, ImageEnd};
use heaptape_format::{ExitStatus, ProcessOrigin, Record, Segment};

#[test]
fn fork_child_inherits_live_blocks_without_counting_them() {
    let mut t = Trace::new(10);
    t.launch(10)
        .malloc(10, 0xA, 100, 1)
        .malloc(10, 0xB, 50, 2)
        .start(11, Some(10), ProcessOrigin::Fork, "./app")
        .free(11, 0xA, 3) // valid: inherited
        .malloc(11, 0xC, 10, 4)
        .free(10, 0xB, 3) // the parent's copy; the child's stays live
        .free(11, 0xA, 5) // double free in the child
        .exit(11, ExitStatus::Code(0))
        .exit(10, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    assert_eq!(a.warning(), None);
    let parent = a.process(10).unwrap();
    let child = a.process(11).unwrap();
    assert_eq!(child.parent_pid, Some(10));
    assert_eq!(child.origin, Some(ProcessOrigin::Fork));

    let c = &child.image().totals;
    assert_eq!(c.allocations, 1);
    assert_eq!(c.frees, 2);
    assert_eq!(c.allocated_bytes, 10);
    assert_eq!((c.inherited_blocks, c.inherited_bytes), (2, 150));
    assert_eq!((c.live_at_exit_blocks, c.live_at_exit_bytes), (2, 60));
    assert_eq!((c.peak_live_blocks, c.peak_live_bytes), (2, 150));
    assert_eq!(c.peak_ts, Some(4000));
    let f = child.image().findings.list();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].kind, FindingKind::DoubleFree);
    assert_eq!(f[0].previous_free_stack, Some(3));
    let s2 = child.image().sites.get(2).unwrap();
    assert_eq!(
        (s2.allocations, s2.inherited_blocks, s2.live_bytes),
        (0, 1, 50)
    );
    let top: Vec<u32> = child
        .image()
        .sites
        .top_by_live(5)
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(top, vec![2, 4]);

    let p = &parent.image().totals;
    assert_eq!((p.allocations, p.frees, p.allocated_bytes), (2, 1, 150));
    assert_eq!((p.live_at_exit_blocks, p.live_at_exit_bytes), (1, 100));
    assert_eq!((p.peak_live_blocks, p.peak_live_bytes), (2, 150));
    assert!(parent.image().findings.is_empty());
}

#[test]
fn exec_starts_a_new_image_and_discards_the_old_heap() {
    let mut t = Trace::new(20);
    let seg = |start| Segment {
        start,
        len: 0x1000,
        file_offset: 0,
        prot: 5,
    };
    t.launch(20);
    t.rec(Record::ModuleLoad(Box::new(heaptape_format::ModuleLoad {
        ts: 1500,
        pid: 20,
        path: "/bin/app".into(),
        build_id: vec![0xab, 0xcd],
        base: 0,
        segments: vec![seg(0x400000)],
    })));
    t.malloc(20, 0x10, 64, 1)
        .malloc(20, 0x20, 8, 1)
        .free(20, 0x20, 2)
        .exec(20, "/bin/true --x");
    t.rec(Record::ModuleLoad(Box::new(heaptape_format::ModuleLoad {
        ts: 5500,
        pid: 20,
        path: "/bin/true".into(),
        build_id: vec![],
        base: 0,
        segments: vec![seg(0x500000)],
    })));
    t.malloc(20, 0x30, 5, 3)
        .free(20, 0x10, 2) // the old image's block: gone with its address space
        .exit(20, ExitStatus::Code(1));
    let (_d, path) = t.finish();
    let a = run(&path);
    assert_eq!(a.processes.len(), 1);
    let p = &a.processes[0];
    assert_eq!(p.exit, Some(ExitStatus::Code(1)));
    assert_eq!(p.images.len(), 2);
    let img = p.image();
    assert_eq!(img.command, vec!["/bin/true", "--x"]);
    assert_eq!(img.end, Some(ImageEnd::Exit));
    assert_eq!(img.start_ts, 5000);
    assert_eq!(
        (
            img.totals.allocations,
            img.totals.frees,
            img.totals.allocated_bytes
        ),
        (1, 1, 5)
    );
    assert_eq!(
        (
            img.totals.live_at_exit_blocks,
            img.totals.live_at_exit_bytes
        ),
        (1, 5)
    );
    assert_eq!(img.findings.count(FindingKind::InvalidFree), 1);
    assert_eq!(img.modules.modules().len(), 1);
    assert_eq!(img.modules.modules()[0].path, "/bin/true");

    let old = &p.previous_images()[0];
    assert_eq!(old.command, vec!["./app"]);
    assert_eq!(old.end, Some(ImageEnd::Exec));
    assert_eq!(old.end_ts, 5000);
    assert_eq!(
        (
            old.totals.allocations,
            old.totals.frees,
            old.totals.allocated_bytes
        ),
        (2, 1, 72)
    );
    assert_eq!(
        (
            old.totals.live_at_exit_blocks,
            old.totals.live_at_exit_bytes
        ),
        (1, 64)
    );
    assert_eq!(old.modules.modules()[0].path, "/bin/app");
}

#[test]
fn threads_of_two_processes_are_kept_apart() {
    let mut t = Trace::new(30);
    t.launch(30)
        .thread(30, 31)
        .start(40, Some(30), ProcessOrigin::Fork, "./app child")
        .thread(40, 41)
        .malloc(31, 0x100, 1, 1)
        .malloc(41, 0x100, 2, 1) // same address, other address space
        .malloc(30, 0x200, 4, 1)
        .malloc(40, 0x300, 8, 1)
        .free(41, 0x100, 1)
        .free(31, 0x100, 1)
        .free(40, 0x300, 1)
        .thread_exit(41)
        .thread(30, 41) // tid reused by the other process
        .malloc(41, 0x400, 16, 1)
        .malloc(99, 0x500, 1, 1) // a thread nobody started
        .exit(40, ExitStatus::Signal(11))
        .exit(30, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    assert_eq!(
        a.warning().as_deref(),
        Some("1 allocator event(s) from threads of no known process were ignored")
    );
    let p30 = a.process(30).unwrap();
    let p40 = a.process(40).unwrap();
    let t30 = &p30.image().totals;
    assert_eq!(
        (t30.allocations, t30.frees, t30.allocated_bytes),
        (3, 1, 21)
    );
    assert_eq!((t30.live_at_exit_blocks, t30.live_at_exit_bytes), (2, 20));
    let t40 = &p40.image().totals;
    assert_eq!(
        (t40.allocations, t40.frees, t40.allocated_bytes),
        (2, 2, 10)
    );
    assert_eq!((t40.live_at_exit_blocks, t40.live_at_exit_bytes), (0, 0));
    assert_eq!(p40.exit, Some(ExitStatus::Signal(11)));
    assert_eq!(p40.image().command, vec!["./app", "child"]);
    assert!(p30.image().findings.is_empty());
    assert!(p40.image().findings.is_empty());
}

#[test]
fn vfork_child_shares_the_parent_heap_until_exec() {
    let mut t = Trace::new(50);
    t.launch(50)
        .malloc(50, 0x10, 100, 1)
        .start(51, Some(50), ProcessOrigin::Vfork, "./app")
        .malloc(51, 0x20, 7, 2) // in the shared address space
        .exec(51, "/bin/ls")
        .malloc(51, 0x10, 3, 3) // its own heap now
        .free(50, 0x20, 4) // the parent frees what the child allocated: valid
        .exit(51, ExitStatus::Code(0))
        .exit(50, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    let parent = a.process(50).unwrap();
    let child = a.process(51).unwrap();
    let pt = &parent.image().totals;
    assert_eq!((pt.allocations, pt.frees, pt.allocated_bytes), (1, 1, 100));
    assert_eq!((pt.live_at_exit_blocks, pt.live_at_exit_bytes), (1, 100));
    assert!(parent.image().findings.is_empty());
    let before = &child.previous_images()[0].totals;
    assert_eq!((before.allocations, before.allocated_bytes), (1, 7));
    assert_eq!(
        (before.live_at_exit_blocks, before.live_at_exit_bytes),
        (1, 7)
    );
    assert_eq!(before.inherited_blocks, 0);
    let after = &child.image().totals;
    assert_eq!(
        (after.allocations, after.frees, after.allocated_bytes),
        (1, 0, 3)
    );
    assert_eq!(
        (after.live_at_exit_blocks, after.live_at_exit_bytes),
        (1, 3)
    );
    assert_eq!(child.image().command, vec!["/bin/ls"]);
}

#[test]
fn attached_process_frees_of_unseen_blocks_are_untracked() {
    let mut t = Trace::new(60);
    t.start(60, None, ProcessOrigin::Attached, "./srv")
        .free(60, 0x999, 1) // allocated before the attach
        .malloc(60, 0x10, 8, 1)
        .free(60, 0x10, 1)
        .free(60, 0x10, 2) // a double free is still one
        .exit(60, ExitStatus::Detached);
    let (_d, path) = t.finish();
    let a = run(&path);
    let p = &a.processes[0];
    assert_eq!(p.exit, Some(ExitStatus::Detached));
    let tot = &p.image().totals;
    assert_eq!((tot.allocations, tot.frees, tot.untracked_frees), (1, 3, 1));
    let f = p.image().findings.list();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].kind, FindingKind::DoubleFree);
}

#[test]
fn records_without_a_process_start_make_an_implicit_process() {
    let mut t = Trace::new(70);
    t.malloc(70, 0x10, 8, 1)
        .malloc(70, 0x20, 16, 1)
        .free(70, 0x10, 1);
    let (_d, path) = t.finish();
    let a = run(&path);
    assert_eq!(a.warning(), None);
    let p = &a.processes[0];
    assert_eq!(p.pid, 70);
    assert_eq!(p.origin, None);
    assert_eq!(p.exit, None);
    assert_eq!(p.image().command, vec!["./app"]);
    assert_eq!(p.image().end, Some(ImageEnd::TraceEnd));
    let tot = &p.image().totals;
    assert_eq!((tot.allocations, tot.frees), (2, 1));
    assert_eq!((tot.live_at_exit_blocks, tot.live_at_exit_bytes), (1, 16));
    assert_eq!(p.image().end_ts, 4000);
}

#[test]
fn process_without_exit_is_measured_at_trace_end() {
    let mut t = Trace::new(80);
    t.launch(80)
        .malloc(80, 0x10, 8, 1)
        .start(81, Some(80), ProcessOrigin::Fork, "./app")
        .exit(80, ExitStatus::Code(0));
    let (_d, path) = t.finish();
    let a = run(&path);
    let child = a.process(81).unwrap();
    assert_eq!(child.exit, None);
    assert_eq!(child.image().end, Some(ImageEnd::TraceEnd));
    assert_eq!(child.image().totals.live_at_exit_bytes, 8);
}
