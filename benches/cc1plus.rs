//! A real allocation-heavy program under every recorder, side by side in one run: gcc's
//! C++ compiler proper (`cc1plus`) compiling a preprocessed file that includes <map>,
//! <string>, <vector>, <unordered_map>, <algorithm> and <iostream> (generated here with
//! `g++ -E`). Rows: native, heaptape (ring mode, the default), heaptape `--mode stop`,
//! heaptrack and memcheck (each when installed), medians of the rounds, interleaved so
//! that every row sees the same load. Also the allocation counts each tool saw (heaptape's
//! `total heap usage` against memcheck's), and heaptape's `--stats` lines.
//!
//! Run: `cargo bench --bench cc1plus` (`-- --rounds N`, default 3; `-- --no-memcheck`
//! skips the slowest row). Figures and the command are kept in docs/PERFORMANCE.md.

use std::path::PathBuf;
use std::process::Command;

mod support;
use support::{compare, have, heaptape_allocs, print_ring_stats, under, Row};

const HEAPTAPE: &str = env!("CARGO_BIN_EXE_heaptape");

const SOURCE: &str = r#"
#include <map>
#include <string>
#include <vector>
#include <unordered_map>
#include <algorithm>
#include <iostream>
int main() {
    std::map<std::string, std::vector<int>> m;
    std::unordered_map<int, std::string> u;
    for (int i = 0; i < 100; i++) { m[std::to_string(i)].push_back(i); u[i] = std::to_string(2 * i); }
    std::vector<int> v(m.size());
    std::sort(v.begin(), v.end());
    std::cout << m.size() << u.size() << v.size() << std::endl;
}
"#;

fn cc1plus() -> Option<PathBuf> {
    let out = Command::new("g++")
        .arg("-print-prog-name=cc1plus")
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    p.is_file().then_some(p)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(3usize);
    let Some(cc1) = cc1plus() else {
        eprintln!("cc1plus not found (g++ -print-prog-name=cc1plus): nothing to measure");
        return;
    };
    let dir = std::env::temp_dir().join(format!("heaptape-bench-cc1plus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("in.cc");
    let ii = dir.join("in.ii");
    std::fs::write(&src, SOURCE).unwrap();
    let st = Command::new("g++")
        .arg("-E")
        .arg(&src)
        .arg("-o")
        .arg(&ii)
        .status()
        .unwrap();
    assert!(st.success(), "g++ -E");
    let compile = |c: &mut Command| {
        c.arg(&cc1)
            .args(["-quiet"])
            .arg(&ii)
            .args(["-o", "/dev/null"]);
    };
    let trace = dir.join("t.trace");
    let mut rows: Vec<Row> = vec![
        under("native", None, vec![], &compile),
        under(
            "heaptape (ring, default)",
            Some(HEAPTAPE),
            vec![
                "record".into(),
                "-o".into(),
                trace.clone().into(),
                "--".into(),
            ],
            &compile,
        ),
        under(
            "heaptape --mode stop",
            Some(HEAPTAPE),
            vec![
                "record".into(),
                "--mode".into(),
                "stop".into(),
                "-o".into(),
                dir.join("stop.trace").into(),
                "--".into(),
            ],
            &compile,
        ),
    ];
    if have("heaptrack") {
        rows.push(under(
            "heaptrack",
            Some("heaptrack"),
            vec!["-o".into(), dir.join("ht").into()],
            &compile,
        ));
    }
    if have("valgrind") && !args.iter().any(|a| a == "--no-memcheck") {
        rows.push(under(
            "memcheck",
            Some("valgrind"),
            vec!["--tool=memcheck".into(), "--log-file=/dev/null".into()],
            &compile,
        ));
    }
    println!(
        "cc1plus {} ({} KiB preprocessed), {rounds} rounds, medians, unpinned",
        ii.display(),
        std::fs::metadata(&ii).unwrap().len() / 1024
    );
    compare(&rows, rounds);
    // Counts: heaptape's and memcheck's "total heap usage".
    println!(
        "heaptape allocations (ring): {}",
        heaptape_allocs(HEAPTAPE, &trace)
    );
    println!(
        "heaptape allocations (stop): {}",
        heaptape_allocs(HEAPTAPE, &dir.join("stop.trace"))
    );
    if have("valgrind") {
        let mut c = Command::new("valgrind");
        c.arg("--tool=memcheck");
        compile(&mut c);
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if let Some(l) = err.lines().find(|l| l.contains("total heap usage")) {
            println!("memcheck: {}", l.split("==").last().unwrap_or(l).trim());
        }
    }
    print_ring_stats(HEAPTAPE, &trace, |c| compile(c));
    let _ = std::fs::remove_dir_all(&dir);
}
