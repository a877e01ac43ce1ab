//! What each ptrace request adds to a stop, measured side by side: a tracer CONTs an
//! `int3` loop (the bare stop) and, in turn, also does one process_vm_readv of 4 KiB, a
//! GETREGS, both, or GETREGS + readv + SETREGS (the slow path's set) at each stop.
//! Tracer and tracee share one CPU. Prints the median of 9 rounds of each, and its
//! ratio to the bare stop.
//!
//! Run: `gcc -O2 -o /tmp/int3_loop benches/programs/int3_loop.c` then
//! `cargo run --release -p heaptape-recorder --example stopcost -- /tmp/int3_loop`.

use std::ffi::CString;
use std::time::Instant;

use heaptape_recorder::low_level::{self as sys, WaitEvent};

const MODES: [&str; 5] = [
    "bare",
    "readv",
    "getregs",
    "getregs+readv",
    "getregs+readv+setregs",
];

/// Microseconds per stop over `n` stops of `prog` with `mode`'s requests at each.
fn per_stop_us(prog: &str, n: u64, mode: &str) -> f64 {
    let cpus = sys::allowed_cpus();
    sys::pin_current_thread(&[cpus[0]]).expect("pin");
    let path = CString::new(prog).expect("path");
    let argv = [path.clone(), CString::new(n.to_string()).expect("n")];
    let pid = sys::spawn_seized(&path, &argv).expect("spawn");
    let mut buf = vec![0u8; 4096];
    let (mut stops, mut start, mut rsp0) = (0u64, None, 0u64);
    loop {
        match sys::wait_blocking(pid).expect("wait") {
            WaitEvent::Signal { sig: libc::SIGTRAP } => {
                stops += 1;
                if stops == 100 {
                    start = Some(Instant::now());
                }
                if rsp0 == 0 {
                    rsp0 = sys::get_regs(pid).expect("regs").rsp;
                }
                match mode {
                    "bare" => {}
                    "readv" => {
                        let _ = sys::read_memory(pid, rsp0, &mut buf);
                    }
                    "getregs" => {
                        let _ = sys::get_regs(pid).expect("regs");
                    }
                    "getregs+readv" => {
                        let r = sys::get_regs(pid).expect("regs");
                        let _ = sys::read_memory(pid, r.rsp, &mut buf);
                    }
                    _ => {
                        let r = sys::get_regs(pid).expect("regs");
                        let _ = sys::read_memory(pid, r.rsp, &mut buf);
                        sys::set_regs(pid, &r).expect("setregs");
                    }
                }
                sys::cont(pid, 0).expect("cont");
            }
            WaitEvent::Exited { .. } | WaitEvent::Signaled { .. } => break,
            _ => sys::cont(pid, 0).expect("cont"),
        }
    }
    sys::pin_current_thread(&cpus).expect("unpin");
    start.expect("enough stops").elapsed().as_secs_f64() * 1e6 / (stops - 100) as f64
}

fn main() {
    let prog = std::env::args()
        .nth(1)
        .expect("usage: stopcost PATH_TO_INT3_LOOP");
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    for _ in 0..9 {
        for (i, m) in MODES.iter().enumerate() {
            runs[i].push(per_stop_us(&prog, 20_000, m));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let bare = median(&mut runs[0].clone());
    println!("| requests at each stop | us per stop | vs bare stop |");
    println!("|---|---:|---:|");
    for (i, m) in MODES.iter().enumerate() {
        let x = median(&mut runs[i]);
        println!("| {m} | {x:.2} | {:.2}x |", x / bare);
    }
}
