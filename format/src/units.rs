//! Byte counts for people: the one formatter the recorder's summary and the analyzer's
//! reports share.

/// Bytes in a binary unit: `512 B`, `1.5 KiB`, `3.2 MiB`, up to TiB.
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
