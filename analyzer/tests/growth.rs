//! Growth by call site, sites at the peak, call-site grouping and folded stacks, on
//! synthetic traces with exact timestamps.

mod common;

use common::Trace;
use heaptape_analyzer::flamegraph::{folded, Metric};
use heaptape_analyzer::{analyze, AnalyzeOptions, RawSymbolizer};
use heaptape_format::ExitStatus;

const MS: u64 = 1_000_000;

/// 100 iterations 1 ms apart: a cache site (stack 2) keeps a 100-byte block each time,
/// a churn site (stack 3) allocates 50 bytes and frees them at once; then the cache is
/// torn down, and one 7-byte block from another caller of the cache's allocation
/// address (stack 5) leaks.
fn scenario() -> Trace {
    let mut t = Trace::new(1);
    t.launch(1)
        .stack(1, 0, 0x401000)
        .stack(2, 1, 0x401100)
        .stack(3, 1, 0x401200)
        .stack(4, 0, 0x402000)
        .stack(5, 4, 0x401100);
    for i in 0..100u64 {
        t.malloc(1, 0x10_0000 + i * 0x100, 100, 2)
            .malloc(1, 0x20_0000, 50, 3)
            .free(1, 0x20_0000, 3);
        t.ts += MS;
    }
    for i in 0..100u64 {
        t.free(1, 0x10_0000 + i * 0x100, 2);
    }
    t.malloc(1, 0x30_0000, 7, 5).exit(1, ExitStatus::Code(0));
    t
}

fn opts(depth: Option<usize>) -> AnalyzeOptions {
    AnalyzeOptions {
        symbolize: false,
        top: 10,
        call_site_depth: depth,
        ..AnalyzeOptions::default()
    }
}

#[test]
fn the_cache_torn_down_at_exit_is_the_top_suspect() {
    let (_d, path) = scenario().finish();
    let a = analyze(&path, &opts(None)).unwrap();
    let v = a.to_json();
    let p = &v["processes"][0];
    assert_eq!(p["totals"]["temporary_allocations"], 100);
    assert_eq!(p["totals"]["peak_live_bytes"], 100 * 100 + 50);
    assert_eq!(p["totals"]["peak_live_blocks"], 101);
    // Lifetime: 1,000 ns (launch) to the exit: 100 × (3 records + 1 ms), 100 frees,
    // one malloc and the exit, 1,000 ns each.
    let end = 1000 + 100 * (3000 + MS) + 100 * 1000 + 2000;
    assert_eq!(p["end_ns"], end);
    let rate = p["totals"]["allocation_rate_per_sec"].as_f64().unwrap();
    assert!((rate - 201.0 * 1e9 / (end - 1000) as f64).abs() < 1e-9);
    // 100 ms need 2^20 ns buckets (128 × 2^19 ns is too short).
    assert_eq!(p["growth_bucket_ns"], 1 << 20);
    let buckets = ((end - 1000) >> 20) as usize + 1;
    assert_eq!(buckets, 96);

    let g = p["growth"].as_array().unwrap();
    assert_eq!(g.len(), 3, "{g:?}");
    let top = &g[0];
    assert_eq!(top["stack_id"], 2);
    assert_eq!(top["suspect"], true);
    assert_eq!(top["teardown_excluded"], true);
    // The first bucket (1.05 ms) ends after the second iteration (at 1.006 ms).
    assert_eq!(top["live_bytes_start"], 200);
    assert_eq!(top["live_bytes_end"], 0);
    assert_eq!(top["peak_live_bytes"], 10_000);
    assert_eq!(top["monotonicity"], 1.0);
    let series: Vec<u64> = top["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(series.len(), buckets);
    assert_eq!(*series.last().unwrap(), 0);
    assert_eq!(top["window_buckets"], buckets - 1);
    assert_eq!(series[buckets - 2], 10_000);
    assert!(series.windows(2).take(buckets - 2).all(|w| w[1] >= w[0]));
    // 100 bytes per 1.003 ms.
    let slope = top["slope_bytes_per_sec"].as_f64().unwrap();
    assert!((slope - 100.0 / 1.003e-3).abs() / slope < 0.02, "{slope}");
    assert!(top["r2"].as_f64().unwrap() > 0.99);

    // The churn never holds memory at a bucket's end: flat zero, score 0.
    let churn = g.iter().find(|x| x["stack_id"] == 3).unwrap();
    assert_eq!(churn["score"], 0.0);
    assert_eq!(churn["suspect"], false);
    assert_eq!(churn["peak_live_bytes"], 50);
    assert!(churn["series"].as_array().unwrap().iter().all(|x| x == 0));

    // At the peak: the full cache, then the churn block.
    let peak = p["sites_at_peak"].as_array().unwrap();
    assert_eq!(peak.len(), 2);
    assert_eq!(peak[0]["stack_id"], 2);
    assert_eq!(peak[0]["peak_bytes"], 10_000);
    assert_eq!(peak[1]["stack_id"], 3);
    assert_eq!(peak[1]["peak_bytes"], 50);

    let mut out = Vec::new();
    a.render_text(&mut out, &opts(None)).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("growing call sites (leak suspects; 96 buckets of 1.05 ms):"),
        "{text}"
    );
    assert!(text.contains("peak 9.8 KiB, at exit 0 B"), "{text}");
}

#[test]
fn call_site_depth_merges_stacks_with_the_same_inner_frames() {
    let (_d, path) = scenario().finish();
    let a = analyze(&path, &opts(Some(1))).unwrap();
    let v = a.to_json();
    let p = &v["processes"][0];
    assert_eq!(p["call_site_depth"], 1);
    let live = p["sites_live_at_exit"].as_array().unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0]["stack_id"], 2);
    assert_eq!(live[0]["stacks"], 2);
    assert_eq!(live[0]["allocations"], 101);
    assert_eq!(live[0]["allocated_bytes"], 10_007);
    assert_eq!(live[0]["live_at_exit_bytes"], 7);
    assert_eq!(live[0]["stack"].as_array().unwrap().len(), 1);
    assert_eq!(p["growth"][0]["stacks"], 2);
    assert_eq!(p["growth"][0]["peak_live_bytes"], 10_000);
}

#[test]
fn folded_stacks_per_metric() {
    let (_d, path) = scenario().finish();
    let a = analyze(&path, &opts(None)).unwrap();
    let lines = |m| {
        folded(&a, m, &RawSymbolizer)
            .into_iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        lines(Metric::AllocatedBytes),
        [
            "0x401000;0x401100 10000",
            "0x401000;0x401200 5000",
            "0x402000;0x401100 7"
        ]
    );
    assert_eq!(
        lines(Metric::Allocations),
        [
            "0x401000;0x401100 100",
            "0x401000;0x401200 100",
            "0x402000;0x401100 1"
        ]
    );
    assert_eq!(lines(Metric::InUseAtExit), ["0x402000;0x401100 7"]);
    // No exit snapshot in this trace: no leak classes, nothing known to be leaked.
    assert!(lines(Metric::Leaked).is_empty());
    assert_eq!(
        lines(Metric::Peak),
        ["0x401000;0x401100 10000", "0x401000;0x401200 50"]
    );
    assert_eq!(lines(Metric::Temporary), ["0x401000;0x401200 100"]);
}
