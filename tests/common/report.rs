//! Reading `heaptape analyze --json` reports: processes, totals, bad frees, stacks.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::run;

/// The processes of an analysis.
pub fn processes(json: &Value) -> &Vec<Value> {
    json["processes"].as_array().expect("processes array")
}

/// The single root process (the one without a parent).
pub fn root_process(json: &Value) -> &Value {
    let roots: Vec<&Value> = processes(json)
        .iter()
        .filter(|p| p["parent_pid"].is_null())
        .collect();
    assert_eq!(roots.len(), 1, "expected one root process: {json}");
    roots[0]
}

/// The process object of `pid` in a JSON report.
pub fn process(report: &Value, pid: u32) -> &Value {
    processes(report)
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("no process {pid} in the report"))
}

/// The process the trace was recorded on (launched or attached to): the trace's pid.
pub fn traced_process(report: &Value) -> &Value {
    process(report, report["trace"]["pid"].as_u64().unwrap() as u32)
}

fn num(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

/// A process's totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub allocations: u64,
    pub frees: u64,
    pub allocated_bytes: u64,
    pub live_at_exit_blocks: u64,
    pub live_at_exit_bytes: u64,
    pub inherited_blocks: u64,
    pub inherited_bytes: u64,
}

pub fn totals(process: &Value) -> Totals {
    let t = &process["totals"];
    Totals {
        allocations: num(&t["allocations"], "allocations"),
        frees: num(&t["frees"], "frees"),
        allocated_bytes: num(&t["allocated_bytes"], "allocated_bytes"),
        live_at_exit_blocks: num(&t["live_at_exit_blocks"], "live_at_exit_blocks"),
        live_at_exit_bytes: num(&t["live_at_exit_bytes"], "live_at_exit_bytes"),
        inherited_blocks: num(&t["inherited_blocks"], "inherited_blocks"),
        inherited_bytes: num(&t["inherited_bytes"], "inherited_bytes"),
    }
}

/// The bad frees of a process as `(kind, count)` per group ("invalid_frees"; called
/// "findings" in earlier reports).
pub fn findings(process: &Value) -> Vec<(String, u64)> {
    let list = if process["invalid_frees"].is_array() {
        &process["invalid_frees"]
    } else {
        &process["findings"]
    };
    list.as_array()
        .unwrap_or_else(|| panic!("no invalid_frees array in {process}"))
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap_or("?").to_string(),
                f["count"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Whether any frame of a JSON stack names `function`.
pub fn stack_has(stack: &Value, function: &str) -> bool {
    stack
        .as_array()
        .is_some_and(|frames| frames.iter().any(|f| f["function"] == function))
}

/// The load bias of module `path` in a process (its "base").
pub fn module_base(process: &Value, path: &Path) -> u64 {
    let path = path.to_str().expect("utf-8 path");
    let m = process["modules"]
        .as_array()
        .expect("modules array")
        .iter()
        .find(|m| m["path"] == path)
        .unwrap_or_else(|| panic!("module {path} not in {}", process["modules"]));
    parse_hex(&m["base"])
}

pub fn parse_hex(v: &Value) -> u64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not a hex string: {v}"));
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .unwrap_or_else(|e| panic!("bad hex {s}: {e}"))
}

/// The return addresses of a site's stack, innermost first.
pub fn frame_addresses(site: &Value) -> Vec<u64> {
    site["stack"]
        .as_array()
        .expect("frames array")
        .iter()
        .map(|f| parse_hex(&f["address"]))
        .collect()
}

/// Function names of return addresses in `binary` loaded at `base`, innermost first,
/// by `addr2line -f` on the call instruction (return address - 1); frames outside the
/// binary give "??".
pub fn symbolize(binary: &Path, base: u64, addresses: &[u64]) -> Vec<String> {
    let mut cmd = Command::new("addr2line");
    cmd.arg("-f").arg("-e").arg(binary);
    for a in addresses {
        cmd.arg(format!("{:#x}", a.wrapping_sub(1).wrapping_sub(base)));
    }
    let res = run(&mut cmd);
    assert!(res.status.success(), "addr2line failed: {}", res.stderr);
    res.stdout_str()
        .lines()
        .step_by(2)
        .map(str::to_string)
        .collect()
}
