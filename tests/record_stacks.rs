//! Call stacks: the leaked block of a known call chain symbolizes (addr2line on the
//! fixture, addresses minus the module's load bias) to that chain, innermost first.

mod common;

use common::*;

#[test]
fn leaked_block_has_the_known_call_chain() {
    let dir = TestDir::new("stack");
    let prog = dir.compile("stack.c", "stack", &[]);
    let json = record_like_native(&dir, "stack", &prog, &[]);
    let native = run_native(&dir, &prog, &[]);
    assert_eq!(native.stdout_str(), "stack done\n");
    let p = root_process(&json);
    let sites = p["sites_live_at_exit"].as_array().expect("sites");
    let site = sites
        .iter()
        .find(|s| s["live_at_exit_bytes"] == 4321)
        .unwrap_or_else(|| panic!("no live 4321-byte block: {sites:?}"));
    assert_eq!(site["live_at_exit_blocks"], 1);
    let base = module_base(p, &prog);
    let addresses = frame_addresses(site);
    let funcs = symbolize(&prog, base, &addresses);
    assert!(funcs.len() >= 6, "{funcs:?}");
    assert_eq!(
        funcs[..6],
        ["e", "d", "c", "b", "a", "main"],
        "stack: {funcs:?}"
    );
    // The report's own module+offset agrees with base arithmetic.
    let prog_s = prog.to_str().expect("utf-8");
    for (frame, addr) in site["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .zip(&addresses)
        .take(6)
    {
        assert_eq!(frame["module"], prog_s);
        assert_eq!(parse_hex(&frame["offset"]), addr - base);
    }
}
