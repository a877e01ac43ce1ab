//! The memory timeline of an image: its live heap beside its resident set over time, and
//! a verdict on what their shapes mean.
//!
//! Every `RssSample` of a process is paired with the live heap bytes of its current image
//! at that instant (the replay's exact figure, not a sample). At the end of the image the
//! series is reduced to at most `BUCKETS` (100) points (the last sample of each of that many
//! equal time slices) and judged:
//!
//! * The first [`WARMUP_PERCENT`]% of the samples (at least one) are **start-up** and
//!   ignored: loading libraries, filling caches and first-touch page faults make every
//!   program grow at first. The last [`TEARDOWN_PERCENT`]% (at least one) are
//!   **teardown** and ignored too: a program that frees everything before it exits ends
//!   low whatever it did before. At least [`MIN_SAMPLES`] samples must remain, or the
//!   verdict is `unknown`.
//! * The rest is cut into four quarters and each series (live heap, anonymous RSS) is
//!   summarised by the mean of each quarter, `q1..q4`. Its **growth** is `q4 - q1`. A
//!   series is **rising** when its growth is at least [`MIN_GROWTH`] bytes and at least
//!   [`MIN_RELATIVE_GROWTH_PERCENT`]% of `q1`, no quarter falls below the previous one by
//!   more than [`DIP_TOLERANCE_PERCENT`]% of the growth, and the second half still grows
//!   (`q4 - q2` is at least a quarter of the growth: a cache that filled up and stayed is
//!   not rising).
//! * **mappings**: anonymous RSS is rising and the program's own mappings (its mmap
//!   calls, not the C library's) grew by at least [`MAPPINGS_SHARE_PERCENT`]% of it:
//!   memory the program manages itself (its own allocator, a garbage-collected heap),
//!   beside the malloc heap.
//! * **fragmentation**: anonymous RSS is rising and the live heap's growth explains at
//!   most [`FRAGMENTATION_SHARE_PERCENT`]% of it (flat or falling heap): the allocator
//!   holds freed memory it cannot reuse or return — fragmentation or allocator retention,
//!   not a leak.
//! * **leak**: otherwise, the live heap is rising: a leak or an unbounded cache. The
//!   verdict names the call sites whose blocks allocated after start-up are still live at
//!   the end, most bytes first.
//! * **stable**: neither series is rising.
//! * **unknown**: too few samples, or RSS rising with a heap growth too small to call a
//!   leak and too large to call fragmentation.
//!
//! Memory is bounded: beyond [`MAX_SAMPLES`] samples the series keeps every other one.

use heaptape_format::{StackId, Timestamp};

use crate::hash::FastMap;
use crate::units::{bytes, signed_bytes};

/// Points of the reduced timeline.
pub const BUCKETS: usize = 100;
/// Share of the samples (from the start) treated as start-up, in percent.
pub const WARMUP_PERCENT: usize = 10;
/// Share of the samples (from the end) treated as teardown, in percent.
pub const TEARDOWN_PERCENT: usize = 10;
/// Samples needed between start-up and teardown for a verdict.
pub const MIN_SAMPLES: usize = 8;
/// Smallest growth (bytes, between the first and last quarter means) that counts.
pub const MIN_GROWTH: u64 = 1 << 20;
/// Smallest growth relative to the first quarter's mean that counts, in percent.
pub const MIN_RELATIVE_GROWTH_PERCENT: u64 = 10;
/// How far a quarter may fall below the previous one, in percent of the growth, and
/// still count as rising.
pub const DIP_TOLERANCE_PERCENT: u64 = 10;
/// Largest share of the RSS growth the live heap may explain for a fragmentation
/// verdict, in percent.
pub const FRAGMENTATION_SHARE_PERCENT: u64 = 25;
/// Smallest share of the RSS growth the program's own mappings must explain for a
/// mappings verdict, in percent.
pub const MAPPINGS_SHARE_PERCENT: u64 = 50;
/// Samples kept before the series is thinned.
pub const MAX_SAMPLES: usize = 1 << 14;
/// Growing sites named by a leak verdict.
pub const VERDICT_SITES: usize = 5;

/// One point of the timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimelinePoint {
    /// When (nanoseconds since the trace started).
    pub ts: Timestamp,
    /// Live heap bytes of the image then.
    pub live_heap_bytes: u64,
    /// Resident set size (VmRSS).
    pub rss: u64,
    /// Anonymous resident memory (RssAnon).
    pub rss_anon: u64,
    /// Bytes the program had mapped itself then (its own mmap calls, not the C
    /// library's or the loader's).
    pub mapped_bytes: u64,
}

/// What the timeline's shape says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerdictKind {
    /// RSS rising with the program's own mappings: memory it manages itself.
    Mappings,
    /// RSS rising while the live heap is flat: fragmentation or allocator retention.
    Fragmentation,
    /// Live heap rising: a leak or an unbounded cache.
    Leak,
    /// Neither is rising.
    Stable,
    /// Not enough data, or no clear shape.
    Unknown,
}

impl VerdictKind {
    /// `mappings`, `fragmentation`, `leak`, `stable` or `unknown`.
    pub fn name(self) -> &'static str {
        match self {
            VerdictKind::Mappings => "mappings",
            VerdictKind::Fragmentation => "fragmentation",
            VerdictKind::Leak => "leak",
            VerdictKind::Stable => "stable",
            VerdictKind::Unknown => "unknown",
        }
    }
}

/// A call site whose blocks allocated after start-up are still live at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrowingSite {
    /// The allocation stack.
    pub stack: StackId,
    /// Bytes allocated there after start-up and live at the end.
    pub bytes: u64,
    /// Blocks of those.
    pub blocks: u64,
}

/// The timeline's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Its kind.
    pub kind: VerdictKind,
    /// One sentence with the figures behind it.
    pub explanation: String,
    /// For a leak: the sites that grew most (at most `VERDICT_SITES`, 5); for mappings:
    /// the sites whose mappings made after start-up were still mapped when the growth
    /// ended (before the teardown), most bytes first (`blocks` counting regions).
    pub sites: Vec<GrowingSite>,
    /// Live heap growth between the first and last quarter after start-up (bytes,
    /// negative when it shrank); 0 without a judgement.
    pub heap_growth: i64,
    /// Anonymous RSS growth, likewise.
    pub rss_anon_growth: i64,
}

/// The samples of one image and, once it ended, its reduced timeline and verdict.
#[derive(Clone, Debug)]
pub struct Timeline {
    samples: Vec<TimelinePoint>,
    stride: u64,
    seen: u64,
    points: Vec<TimelinePoint>,
    verdict: Verdict,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline {
            samples: Vec::new(),
            stride: 1,
            seen: 0,
            points: Vec::new(),
            verdict: Verdict {
                kind: VerdictKind::Unknown,
                explanation: "no RSS samples (record with --rss-interval)".into(),
                sites: Vec::new(),
                heap_growth: 0,
                rss_anon_growth: 0,
            },
        }
    }
}

/// The summary of one series after start-up.
#[derive(Clone, Copy, Debug)]
struct Trend {
    q: [f64; 4],
    growth: f64,
    rising: bool,
}

fn trend(values: &[u64]) -> Trend {
    let n = values.len();
    let mut q = [0.0; 4];
    for (i, slot) in q.iter_mut().enumerate() {
        let part = &values[i * n / 4..(i + 1) * n / 4];
        *slot = if part.is_empty() {
            0.0
        } else {
            part.iter().map(|&v| v as f64).sum::<f64>() / part.len() as f64
        };
    }
    let growth = q[3] - q[0];
    let tolerance = growth.max(0.0) * DIP_TOLERANCE_PERCENT as f64 / 100.0;
    let rising = growth >= MIN_GROWTH as f64
        && growth >= q[0] * MIN_RELATIVE_GROWTH_PERCENT as f64 / 100.0
        && q.windows(2).all(|w| w[1] >= w[0] - tolerance)
        && q[3] - q[1] >= growth / 4.0;
    Trend { q, growth, rising }
}

impl Timeline {
    /// Adds a sample: the image had `live_heap_bytes` live and `mapped_bytes` mapped by
    /// its own calls when the process's RSS was `rss` (of which `rss_anon` anonymous).
    pub fn sample(
        &mut self,
        ts: Timestamp,
        live_heap_bytes: u64,
        mapped_bytes: u64,
        rss: u64,
        rss_anon: u64,
    ) {
        self.seen += 1;
        if (self.seen - 1) % self.stride != 0 {
            return;
        }
        if self.samples.len() >= MAX_SAMPLES {
            let mut i = 0;
            self.samples.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.stride *= 2;
            if (self.seen - 1) % self.stride != 0 {
                return;
            }
        }
        self.samples.push(TimelinePoint {
            ts,
            live_heap_bytes,
            rss,
            rss_anon,
            mapped_bytes,
        });
    }

    /// Samples recorded (before any thinning).
    pub fn samples_seen(&self) -> u64 {
        self.seen
    }

    /// The reduced timeline: at most `BUCKETS` (100) points, the last sample of each equal
    /// time slice between the first and the last sample (filled in when the image ends).
    pub fn points(&self) -> &[TimelinePoint] {
        &self.points
    }

    /// The verdict (filled in when the image ends).
    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }

    /// Ends the timeline: reduces it and judges it. `blocks` are the image's blocks live
    /// at its end, as (allocation stack, size, allocation time); `mappings` its own
    /// mappings, as (mmap's stack, length, time mapped, time unmapped: `None` if still
    /// mapped at the end); `mappers` says who made a mapping.
    pub fn finish(
        &mut self,
        blocks: impl Iterator<Item = (StackId, u64, Timestamp)>,
        mappings: impl Iterator<Item = (StackId, u64, Timestamp, Option<Timestamp>)>,
        mappers: &Mappers<'_>,
    ) {
        self.points = reduce(&self.samples);
        self.verdict = self.judge(blocks, mappings, mappers);
    }

    fn judge(
        &self,
        blocks: impl Iterator<Item = (StackId, u64, Timestamp)>,
        mappings: impl Iterator<Item = (StackId, u64, Timestamp, Option<Timestamp>)>,
        mappers: &Mappers<'_>,
    ) -> Verdict {
        let unknown = |explanation: String| Verdict {
            kind: VerdictKind::Unknown,
            explanation,
            sites: Vec::new(),
            heap_growth: 0,
            rss_anon_growth: 0,
        };
        if self.samples.is_empty() {
            return unknown("no RSS samples (record with --rss-interval)".into());
        }
        let n = self.samples.len();
        let warmup = (n * WARMUP_PERCENT / 100).max(1);
        let teardown = (n * TEARDOWN_PERCENT / 100).max(1);
        let rest = self
            .samples
            .get(warmup..n.saturating_sub(teardown))
            .unwrap_or(&[]);
        if rest.len() < MIN_SAMPLES {
            return unknown(format!(
                "only {} RSS sample(s) between start-up and teardown, {MIN_SAMPLES} needed (the \
                 process ran too briefly for the sampling interval)",
                rest.len()
            ));
        }
        let cutoff = rest[0].ts;
        let heap = trend(&rest.iter().map(|s| s.live_heap_bytes).collect::<Vec<_>>());
        let anon = trend(&rest.iter().map(|s| s.rss_anon).collect::<Vec<_>>());
        let b = |x: f64| bytes(x.max(0.0) as u64);
        let heap_growth = heap.growth as i64;
        let anon_growth = anon.growth as i64;
        let mut v = Verdict {
            kind: VerdictKind::Stable,
            explanation: String::new(),
            sites: Vec::new(),
            heap_growth,
            rss_anon_growth: anon_growth,
        };
        let mapped = trend(&rest.iter().map(|s| s.mapped_bytes).collect::<Vec<_>>());
        if anon.rising && mapped.growth >= anon.growth * MAPPINGS_SHARE_PERCENT as f64 / 100.0 {
            v.kind = VerdictKind::Mappings;
            v.explanation = format!(
                "anonymous RSS grew from {} to {} ({}) and the program's own mappings from {} \
                 to {} ({}), while the live heap went from {} to {} ({}): memory the program \
                 maps and manages itself (its own allocator or a garbage-collected heap), not \
                 the malloc heap; see the mappings it made",
                b(anon.q[0]),
                b(anon.q[3]),
                signed_bytes(anon_growth as f64),
                b(mapped.q[0]),
                b(mapped.q[3]),
                signed_bytes(mapped.growth),
                b(heap.q[0]),
                b(heap.q[3]),
                signed_bytes(heap_growth as f64)
            );
            // The mappings that made the growth: made after start-up, still mapped when
            // it ended (a runtime may unmap its arenas in its teardown).
            let growth_end = rest.last().map_or(cutoff, |s| s.ts);
            v.sites = growing_sites(
                mappings
                    .filter(|&(_, _, _, unmapped)| unmapped.is_none_or(|u| u > growth_end))
                    .map(|(stack, len, ts, _)| (stack, len, ts)),
                cutoff,
                mappers.caller,
            );
            if let Some(top) = v.sites.first() {
                v.explanation.push_str(&format!(
                    "; the top site mapped {} in {} region(s) after start-up, still mapped \
                     when the growth ended",
                    bytes(top.bytes),
                    top.blocks
                ));
                if let Some(n) = (mappers.note)(top.stack) {
                    v.explanation.push_str(&format!(". {n}"));
                }
            }
        } else if anon.rising
            && heap.growth <= anon.growth * FRAGMENTATION_SHARE_PERCENT as f64 / 100.0
        {
            v.kind = VerdictKind::Fragmentation;
            v.explanation = format!(
                "anonymous RSS grew from {} to {} ({}) while the live heap went from {} to {} \
                 ({}): fragmentation or allocator retention, not a leak",
                b(anon.q[0]),
                b(anon.q[3]),
                signed_bytes(anon_growth as f64),
                b(heap.q[0]),
                b(heap.q[3]),
                signed_bytes(heap_growth as f64)
            );
        } else if heap.rising {
            v.kind = VerdictKind::Leak;
            v.sites = growing_sites(blocks, cutoff, &|stack| u64::from(stack));
            let rss = if anon.rising {
                format!("with anonymous RSS ({} to {})", b(anon.q[0]), b(anon.q[3]))
            } else {
                format!(
                    "while anonymous RSS did not follow ({}; the blocks may be untouched)",
                    signed_bytes(anon_growth as f64)
                )
            };
            v.explanation = format!(
                "the live heap grew from {} to {} ({}) {rss}: leak or unbounded cache",
                b(heap.q[0]),
                b(heap.q[3]),
                signed_bytes(heap_growth as f64)
            );
            if let Some(top) = v.sites.first() {
                v.explanation.push_str(&format!(
                    "; the top growing site holds {} in {} block(s) allocated after start-up",
                    bytes(top.bytes),
                    top.blocks
                ));
            }
        } else if anon.rising {
            v.kind = VerdictKind::Unknown;
            v.explanation = format!(
                "anonymous RSS grew by {} and the live heap by {}: too much heap growth to call \
                 fragmentation, too little to call a leak",
                signed_bytes(anon_growth as f64),
                signed_bytes(heap_growth as f64)
            );
        } else {
            v.explanation = format!(
                "neither the live heap ({}) nor anonymous RSS ({}) kept growing after start-up",
                signed_bytes(heap_growth as f64),
                signed_bytes(anon_growth as f64)
            );
        }
        v
    }
}

/// The last sample of each of [`BUCKETS`] equal slices of the samples' time span.
fn reduce(samples: &[TimelinePoint]) -> Vec<TimelinePoint> {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return Vec::new();
    };
    if samples.len() <= BUCKETS {
        return samples.to_vec();
    }
    let (t0, span) = (first.ts, last.ts.saturating_sub(first.ts).max(1));
    let mut out: Vec<TimelinePoint> = Vec::with_capacity(BUCKETS);
    let mut current = usize::MAX;
    for s in samples {
        let offset = s.ts.saturating_sub(t0) as u128;
        let bucket = ((offset * BUCKETS as u128 / span as u128) as usize).min(BUCKETS - 1);
        if bucket == current {
            if let Some(p) = out.last_mut() {
                *p = *s;
            }
        } else {
            current = bucket;
            out.push(*s);
        }
    }
    out
}

/// Sites of the blocks allocated at or after `cutoff` and still live, most bytes first.
/// Who made the program's own mappings, for a mappings verdict.
pub struct Mappers<'a> {
    /// The site a mapping's stack belongs to (e.g. the mmap call's return address):
    /// a runtime's arenas come from one call with many stacks above it.
    pub caller: &'a dyn Fn(StackId) -> u64,
    /// What is known of the allocator that mapped at a stack (a sentence with the
    /// remedy), added to the verdict about the top site.
    pub note: &'a dyn Fn(StackId) -> Option<&'static str>,
}

impl Mappers<'_> {
    /// Each stack its own site, nothing known.
    pub const NONE: Mappers<'static> = Mappers {
        caller: &|stack| u64::from(stack),
        note: &|_| None,
    };
}

/// The sites of `blocks` (stack, size, time) allocated at or after `cutoff`, grouped by
/// `site(stack)`, most bytes first; each is shown by its stack with the most bytes.
fn growing_sites(
    blocks: impl Iterator<Item = (StackId, u64, Timestamp)>,
    cutoff: Timestamp,
    site: &dyn Fn(StackId) -> u64,
) -> Vec<GrowingSite> {
    let mut by_stack: FastMap<StackId, (u64, u64)> = FastMap::default();
    for (stack, size, ts) in blocks {
        if ts >= cutoff {
            let e = by_stack.entry(stack).or_default();
            e.0 = e.0.saturating_add(size);
            e.1 += 1;
        }
    }
    // Per site: its totals, and its stack with the most bytes.
    let mut by_site: FastMap<u64, (GrowingSite, u64)> = FastMap::default();
    for (stack, (bytes, blocks)) in by_stack {
        let e = by_site.entry(site(stack)).or_insert((
            GrowingSite {
                stack,
                bytes: 0,
                blocks: 0,
            },
            0,
        ));
        e.0.bytes = e.0.bytes.saturating_add(bytes);
        e.0.blocks += blocks;
        if (bytes, std::cmp::Reverse(stack)) > (e.1, std::cmp::Reverse(e.0.stack)) {
            e.0.stack = stack;
            e.1 = bytes;
        }
    }
    let mut sites: Vec<GrowingSite> = by_site.into_values().map(|(s, _)| s).collect();
    sites.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.stack.cmp(&b.stack)));
    sites.truncate(VERDICT_SITES);
    sites
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn timeline(f: impl Fn(u64) -> (u64, u64)) -> Timeline {
        let mut t = Timeline::default();
        for i in 0..40 {
            let (heap, anon) = f(i);
            t.sample(i * 100_000_000, heap, 0, anon + 4 * MIB, anon);
        }
        t
    }

    #[test]
    fn fragmentation_leak_stable_unknown() {
        // Start-up spike, then RSS climbs by 1 MiB per sample with a flat heap.
        let mut t = timeline(|i| (if i < 2 { 50 * MIB } else { 2 * MIB }, 8 * MIB + i * MIB));
        t.finish(std::iter::empty(), std::iter::empty(), &Mappers::NONE);
        assert_eq!(t.verdict().kind, VerdictKind::Fragmentation);
        assert_eq!(t.verdict().heap_growth, 0);
        assert_eq!(t.verdict().rss_anon_growth, 24 * MIB as i64);

        let mut t = timeline(|i| (i * MIB, 3 * MIB + i * MIB));
        let blocks = vec![(7, 100, 0), (7, 5000, 500_000_000), (9, 300, 3_900_000_000)];
        t.finish(blocks.into_iter(), std::iter::empty(), &Mappers::NONE);
        let v = t.verdict();
        assert_eq!(v.kind, VerdictKind::Leak);
        assert_eq!(v.heap_growth, 24 * MIB as i64);
        assert_eq!(
            v.sites,
            vec![
                GrowingSite {
                    stack: 7,
                    bytes: 5000,
                    blocks: 1
                },
                GrowingSite {
                    stack: 9,
                    bytes: 300,
                    blocks: 1
                }
            ]
        );

        let mut t = timeline(|i| (10 * MIB + (i % 3) * 1000, 20 * MIB + (i % 2) * 4096));
        t.finish(std::iter::empty(), std::iter::empty(), &Mappers::NONE);
        assert_eq!(t.verdict().kind, VerdictKind::Stable);

        // A cache that filled during the first half and then stayed.
        let mut t = timeline(|i| (i.min(12) * MIB, 3 * MIB + i.min(12) * MIB));
        t.finish(std::iter::empty(), std::iter::empty(), &Mappers::NONE);
        assert_eq!(t.verdict().kind, VerdictKind::Stable);

        let mut t = Timeline::default();
        for i in 0..5 {
            t.sample(i, i * MIB, 0, i * MIB, i * MIB);
        }
        t.finish(std::iter::empty(), std::iter::empty(), &Mappers::NONE);
        assert_eq!(t.verdict().kind, VerdictKind::Unknown);
        assert_eq!(t.points().len(), 5);
        let mut t = Timeline::default();
        t.finish(std::iter::empty(), std::iter::empty(), &Mappers::NONE);
        assert_eq!(t.verdict().kind, VerdictKind::Unknown);
        assert!(t.points().is_empty());
    }

    #[test]
    fn reduction_and_thinning() {
        let mut t = Timeline::default();
        for i in 0..1000u64 {
            t.sample(i * 10, i, 0, i, i);
        }
        t.finish(std::iter::empty(), std::iter::empty(), &Mappers::NONE);
        let p = t.points();
        assert_eq!(p.len(), BUCKETS);
        assert_eq!(p[0].ts, 90);
        assert_eq!(p[99].ts, 9990);
        let mut t = Timeline::default();
        for i in 0..(MAX_SAMPLES as u64 * 2 + 1) {
            t.sample(i, 0, 0, 0, 0);
        }
        // Thinned twice: every fourth sample is left.
        assert_eq!(t.samples.len(), MAX_SAMPLES / 2 + 1);
        assert_eq!(t.samples_seen(), MAX_SAMPLES as u64 * 2 + 1);
        assert!(t.samples.iter().all(|s| s.ts % 4 == 0));
    }
}
