//! Analyzes a trace with symbolization and prints the JSON report, the warnings and the
//! symbolization speed: `cargo run --release -p heaptape-analyzer --example
//! symbolize_trace -- TRACE [--text] [--all]`.
//!
//! `--all` symbolizes every distinct address of every stack of the trace (not only the
//! reported ones) and prints addresses per second.

use std::path::PathBuf;
use std::time::Instant;

use heaptape_analyzer::{analyze, AnalyzeOptions, ElfSymbolizer, SymbolizerOptions};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(trace) = args.first() else {
        eprintln!("usage: symbolize_trace TRACE [--text] [--all]");
        std::process::exit(2);
    };
    let opts = AnalyzeOptions::default();
    let t = Instant::now();
    let a = match analyze(&PathBuf::from(trace), &opts) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    eprintln!("analyze (with report symbolization): {:?}", t.elapsed());
    for w in a.warnings() {
        eprintln!("warning: {w}");
    }
    if args.iter().any(|x| x == "--all") {
        let mut requests = Vec::new();
        for p in &a.processes {
            for img in &p.images {
                let mut seen = std::collections::HashSet::new();
                for (stack, _) in img.sites.top_by_live(usize::MAX) {
                    for addr in a.stacks.iter(stack) {
                        if seen.insert(addr) {
                            requests.push((&img.modules, addr));
                        }
                    }
                }
            }
        }
        let sym = ElfSymbolizer::new(SymbolizerOptions::default());
        let t = Instant::now();
        let n = requests.len();
        sym.prefetch(requests);
        let dt = t.elapsed().as_secs_f64();
        eprintln!(
            "symbolized {n} distinct addresses in {dt:.3} s: {:.0} addresses/s",
            n as f64 / dt
        );
    } else if args.iter().any(|x| x == "--text") {
        a.render_text(&mut std::io::stdout().lock(), &opts).unwrap();
    } else {
        println!("{}", serde_json::to_string_pretty(&a.to_json()).unwrap());
    }
}
