//! `heaptape dump`: every record of a trace, one per line (Rust's debug syntax, or JSON
//! lines with `--json`).

use std::io::Write;
use std::process::ExitCode;

use heaptape_format::TraceReader;
use serde::Serialize;
use serde_json::{Map, Value};

use super::{to_stdout, unreadable, warn, Delivery, Failure, Outcome};
use crate::cli::DumpArgs;

pub fn run(args: DumpArgs) -> Outcome {
    let reader = TraceReader::open(&args.trace).map_err(|e| unreadable(&args.trace, e))?;
    let mut records = reader.records();
    let mut damaged = None;
    let delivery = to_stdout("the records", |out| {
        if args.json {
            json_line(out, "Header", records.header())?;
        } else {
            writeln!(out, "{:?}", records.header())?;
        }
        for rec in records.by_ref() {
            match rec {
                Ok(r) if args.json => json_line(out, "", &r)?,
                Ok(r) => writeln!(out, "{r:?}")?,
                Err(e) => {
                    // What was read so far is written first.
                    damaged = Some(unreadable(&args.trace, e));
                    break;
                }
            }
        }
        Ok(())
    });
    match (damaged, delivery) {
        (Some(damaged), Err(unwritten)) => Err(damaged.and(unwritten)),
        (Some(damaged), Ok(Delivery::Whole)) => Err(damaged),
        // A reader that went away ends `dump` successfully, as it always has; the
        // damage is still reported.
        (Some(damaged), Ok(Delivery::ReaderGone)) => Err(Failure {
            status: 0,
            ..damaged
        }),
        (None, Err(unwritten)) => Err(unwritten),
        // The records were not all read: no word on how the trace ends.
        (None, Ok(Delivery::ReaderGone)) => Ok(ExitCode::SUCCESS),
        (None, Ok(Delivery::Whole)) => {
            if let Some(t) = records.truncation() {
                warn(t);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Keys whose numbers are addresses: written as `"0x…"` strings (JSON numbers lose
/// precision past 2^53, and addresses are read in hex).
const ADDRESS_KEYS: &[&str] = &[
    "address",
    "old_address",
    "new_address",
    "base",
    "start",
    "target",
];

/// Writes `value` as one JSON object: serde's `{"Kind": {fields}}` becomes
/// `{"record": "Kind", fields}` (`kind` names values that are not an enum variant).
fn json_line(out: &mut dyn Write, kind: &str, value: &impl Serialize) -> std::io::Result<()> {
    let v = serde_json::to_value(value).map_err(std::io::Error::other)?;
    let mut obj = Map::new();
    match v {
        Value::Object(m) if kind.is_empty() && m.len() == 1 => {
            let (name, fields) = m.into_iter().next().expect("one key");
            obj.insert("record".into(), Value::String(name));
            match fields {
                Value::Object(f) => obj.extend(f),
                other => {
                    obj.insert("value".into(), other);
                }
            }
        }
        Value::String(name) if kind.is_empty() => {
            obj.insert("record".into(), Value::String(name));
        }
        Value::Object(f) => {
            obj.insert("record".into(), Value::String(kind.into()));
            obj.extend(f);
        }
        other => {
            obj.insert("record".into(), Value::String(kind.into()));
            obj.insert("value".into(), other);
        }
    }
    let mut v = Value::Object(obj);
    hex_addresses(&mut v);
    serde_json::to_writer(&mut *out, &v).map_err(std::io::Error::other)?;
    out.write_all(b"\n")
}

/// Rewrites the numbers under [`ADDRESS_KEYS`], at any depth, as hex strings, and a
/// build-id's bytes as one hex string.
fn hex_addresses(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match x.as_u64() {
                    Some(n) if ADDRESS_KEYS.contains(&k.as_str()) => {
                        *x = Value::String(format!("{n:#x}"));
                    }
                    _ if k == "build_id" => {
                        if let Some(bytes) = x.as_array() {
                            let hex: String = bytes
                                .iter()
                                .filter_map(Value::as_u64)
                                .map(|b| format!("{b:02x}"))
                                .collect();
                            *x = Value::String(hex);
                        }
                    }
                    _ => hex_addresses(x),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(hex_addresses),
        _ => {}
    }
}
