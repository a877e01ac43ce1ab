//! Figures in words, one formatter per unit: counts (`1,234,567`), bytes (`1.5 KiB`,
//! `+2.0 MiB`, `64 bytes in 1 block`), times (`1.234 s`, `1.05 ms`), rates, addresses,
//! and sparklines. The reports use them, and so do the verdicts that explain
//! themselves in a sentence (see [`crate::checks`]'s timeline), which is why they live
//! below both.

/// A count with thousands separators, as valgrind prints them: `1,234,567`.
pub(crate) fn num(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in a binary unit (`512 B`, `1.5 KiB`): the formatter the recorder's summary
/// shares, from the format crate.
pub(crate) use heaptape_format::units::bytes;

/// A change in bytes, always signed: `+1.5 KiB`, `-512 B`. The sign is that of `v`
/// before rounding (`-0.4` is `-0 B`); an integer converted to `f64` reads as the
/// integer does ([`bytes`] works in `f64` anyway).
pub(crate) fn signed_bytes(v: f64) -> String {
    let sign = if v < 0.0 { "-" } else { "+" };
    format!("{sign}{}", bytes(v.abs().round() as u64))
}

/// `64 bytes in 1 block`, `1,024 bytes in 3 blocks`.
pub(crate) fn bytes_in_blocks(bytes: u64, blocks: u64) -> String {
    format!(
        "{} bytes in {} block{}",
        num(bytes),
        num(blocks),
        if blocks == 1 { "" } else { "s" }
    )
}

/// Nanoseconds as seconds with millisecond precision: `1.234 s`.
pub(crate) fn seconds(ns: u64) -> String {
    format!(
        "{}.{:03} s",
        ns / 1_000_000_000,
        (ns % 1_000_000_000) / 1_000_000
    )
}

/// A duration in nanoseconds, in the largest unit below it: `1.50 s`, `1.05 ms`,
/// `2.00 µs`.
pub(crate) fn duration(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{:.2} s", ns as f64 / 1e9)
    } else if ns >= 1_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.2} µs", ns as f64 / 1e3)
    }
}

/// A rate: whole with thousands separators from 100 up (`1,234`), two decimals below
/// (`2.50`).
pub(crate) fn rate(r: f64) -> String {
    if r >= 100.0 {
        num(r.round() as u64)
    } else {
        format!("{r:.2}")
    }
}

/// An address as a `0x…` string.
pub(crate) fn addr(a: u64) -> String {
    format!("{a:#x}")
}

/// Sparkline characters, lowest first.
pub(crate) const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// `series` as a sparkline of at most `width` characters (buckets are merged by
/// keeping the later value), scaled from 0 to the series' maximum; `width` at least
/// the series' length gives one character per value.
pub(crate) fn sparkline(series: &[u64], width: usize) -> String {
    if series.is_empty() || width == 0 {
        return String::new();
    }
    let per = series.len().div_ceil(width);
    let points: Vec<u64> = series
        .chunks(per)
        .map(|c| *c.last().unwrap_or(&0))
        .collect();
    let max = points.iter().copied().max().unwrap_or(0);
    points
        .iter()
        .map(|&v| {
            if max == 0 {
                SPARKS[0]
            } else {
                let i = ((v as u128 * 7 + max as u128 / 2) / max as u128) as usize;
                SPARKS[i.min(7)]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn counts_and_times() {
        assert_eq!(num(0), "0");
        assert_eq!(num(999), "999");
        assert_eq!(num(1000), "1,000");
        assert_eq!(num(1234567), "1,234,567");
        assert_eq!(num(u64::MAX), "18,446,744,073,709,551,615");
        assert_eq!(seconds(1_234_567_890), "1.234 s");
        assert_eq!(bytes_in_blocks(1, 1), "1 bytes in 1 block");
        assert_eq!(duration(1 << 20), "1.05 ms");
        assert_eq!(rate(1234.4), "1,234");
        assert_eq!(rate(2.5), "2.50");
    }

    #[test]
    fn sizes() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * MIB), "3.0 MiB");
        assert_eq!(signed_bytes(-2048.0), "-2.0 KiB");
        assert_eq!(signed_bytes(-0.4), "-0 B");
        assert_eq!(signed_bytes(0.0), "+0 B");
    }

    #[test]
    fn sparklines() {
        assert_eq!(sparkline(&[0, 1, 2, 3, 4, 5, 6, 7], 8), "▁▂▃▄▅▆▇█");
        assert_eq!(sparkline(&[0, 0], 8), "▁▁");
        assert_eq!(sparkline(&[0, 9, 1, 7], 2), "█▆");
        assert_eq!(sparkline(&[], 8), "");
        // One character per value (the timeline's).
        assert_eq!(sparkline(&[0, 1, 2, 3, 4, 5, 6, 7], 8), "▁▂▃▄▅▆▇█");
        assert_eq!(sparkline(&[0, 0], 2), "▁▁");
        assert_eq!(sparkline(&[], 0), "");
    }
}
