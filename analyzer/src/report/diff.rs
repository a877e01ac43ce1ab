//! Comparing the traces of two versions of a program (`heaptape diff OLD NEW`).
//!
//! Addresses and lines differ between builds, so call sites are matched by the
//! *functions* their frames are in: the **key** of a stack is the function names of
//! `depth` symbolized frames (inlined calls count as frames), counted from the first
//! frame that is not the allocator's or the C and C++ runtimes' ([`is_runtime_frame`]:
//! `--call-site-depth 4` on a C++ program reaches the program's own functions, not four
//! frames of `std::vector` internals); a frame without a function name is
//! `module+0xoffset`, or its address outside every module. Source files and lines are
//! not in the key: inserting lines at the top of a file leaves every site matched.
//! Figures of stacks with the same key are added up, over every image of every process
//! of the trace. Sites whose keys are equal match; what remains is **new** (only in
//! NEW) or **vanished** (only in OLD).
//!
//! Figures per site and in total: `allocations`, `allocated_bytes`, `leaked_bytes`
//! (definitely and indirectly lost at the exit snapshot, as LSan counts leaks),
//! `in_use_at_exit_bytes` (live when the image ended, reachable or not) and
//! `peak_bytes` (live at the image's heap peak; the
//! total is the sum of the images' peaks), counted as every report counts them
//! ([`Image::figures`]: an image replaced by exec discarded its heap).
//!
//! **Conditions** (`--fail-if`): `METRIC>VALUE` compares NEW's total with `VALUE`;
//! `METRIC>+VALUE` compares the increase from OLD to NEW. `>=` is accepted too. Values
//! are plain numbers or carry a unit: `B`, `KiB`, `MiB`, `GiB` (powers of 1024), `kB`,
//! `MB`, `GB` (powers of 1000).

use std::collections::BTreeMap;
use std::io::{self, Write};

use super::frames::{describe, json_frames};
use super::schema;
use crate::hash::FastMap;
pub use crate::replay::Figures;
use crate::replay::Image;
use crate::symbolize::{is_runtime_frame, Frame};
use crate::units::num;
use crate::Analysis;

/// Frames in a key when not told otherwise.
pub const DEFAULT_DEPTH: usize = 4;

impl Figures {
    pub(crate) fn add(&mut self, o: &Figures) {
        self.allocations = self.allocations.saturating_add(o.allocations);
        self.allocated_bytes = self.allocated_bytes.saturating_add(o.allocated_bytes);
        self.in_use_at_exit_bytes = self
            .in_use_at_exit_bytes
            .saturating_add(o.in_use_at_exit_bytes);
        self.leaked_bytes = self.leaked_bytes.saturating_add(o.leaked_bytes);
        self.peak_bytes = self.peak_bytes.saturating_add(o.peak_bytes);
    }

    /// The figure `m`.
    pub fn get(&self, m: DiffMetric) -> u64 {
        match m {
            DiffMetric::Allocations => self.allocations,
            DiffMetric::AllocatedBytes => self.allocated_bytes,
            DiffMetric::LeakedBytes => self.leaked_bytes,
            DiffMetric::InUseAtExitBytes => self.in_use_at_exit_bytes,
            DiffMetric::PeakBytes => self.peak_bytes,
        }
    }

    fn json(&self) -> schema::Figures {
        schema::Figures {
            allocated_bytes: self.allocated_bytes,
            allocations: self.allocations,
            in_use_at_exit_bytes: self.in_use_at_exit_bytes,
            leaked_bytes: self.leaked_bytes,
            peak_bytes: self.peak_bytes,
        }
    }
}

/// One figure of [`Figures`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiffMetric {
    /// `allocations`
    Allocations,
    /// `allocated_bytes`
    AllocatedBytes,
    /// `leaked_bytes`: definitely and indirectly lost at exit.
    LeakedBytes,
    /// `in_use_at_exit_bytes`: live at exit, reachable or not.
    InUseAtExitBytes,
    /// `peak_bytes`
    PeakBytes,
}

impl DiffMetric {
    /// Every metric, in report order.
    pub const ALL: [DiffMetric; 5] = [
        DiffMetric::Allocations,
        DiffMetric::AllocatedBytes,
        DiffMetric::LeakedBytes,
        DiffMetric::InUseAtExitBytes,
        DiffMetric::PeakBytes,
    ];

    /// Its name in JSON and in conditions.
    pub fn name(self) -> &'static str {
        match self {
            DiffMetric::Allocations => "allocations",
            DiffMetric::AllocatedBytes => "allocated_bytes",
            DiffMetric::LeakedBytes => "leaked_bytes",
            DiffMetric::InUseAtExitBytes => "in_use_at_exit_bytes",
            DiffMetric::PeakBytes => "peak_bytes",
        }
    }
}

/// How a site fared from OLD to NEW.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Only in NEW.
    New,
    /// Only in OLD.
    Vanished,
    /// In both, some figure differs.
    Changed,
    /// In both, same figures.
    Unchanged,
}

impl Status {
    /// `new`, `vanished`, `changed` or `unchanged`.
    pub fn name(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::Vanished => "vanished",
            Status::Changed => "changed",
            Status::Unchanged => "unchanged",
        }
    }
}

/// One matched (or unmatched) call site.
#[derive(Clone, Debug)]
pub struct SiteDiff {
    /// Its key (NEW's when both sides have it).
    pub key: String,
    /// The frames of its key, innermost first (NEW's when both sides have it): at most
    /// `depth`, from the first that is not the runtime's.
    pub frames: Vec<Frame>,
    /// OLD's figures.
    pub old: Option<Figures>,
    /// NEW's figures.
    pub new: Option<Figures>,
    /// The verdict.
    pub status: Status,
}

impl SiteDiff {
    /// NEW minus OLD for `m` (a missing side counts 0).
    pub fn delta(&self, m: DiffMetric) -> i128 {
        i128::from(self.new.unwrap_or_default().get(m))
            - i128::from(self.old.unwrap_or_default().get(m))
    }
}

/// The comparison of two analyses.
#[derive(Clone, Debug)]
pub struct Diff {
    /// Frames per key.
    pub depth: usize,
    /// OLD's totals.
    pub old: Figures,
    /// NEW's totals.
    pub new: Figures,
    /// Every site, most changed first: by |Δ leaked bytes|, |Δ peak bytes|,
    /// |Δ allocated bytes|, |Δ allocations|, then key.
    pub sites: Vec<SiteDiff>,
}

impl Diff {
    /// NEW minus OLD of total `m`.
    pub fn delta(&self, m: DiffMetric) -> i128 {
        i128::from(self.new.get(m)) - i128::from(self.old.get(m))
    }

    /// Sites with the status `s`.
    pub fn count(&self, s: Status) -> usize {
        self.sites.iter().filter(|x| x.status == s).count()
    }
}

struct Side {
    totals: Figures,
    /// Sites by key: their figures and frames (those of the key).
    sites: BTreeMap<String, (Figures, Vec<Frame>)>,
}

/// A frame in a key: its function, else [`describe`]'s words for it.
fn key_part(f: &Frame) -> String {
    match &f.function {
        Some(func) => func.clone(),
        None => describe(f),
    }
}

/// Frames a stack's key needs before the program's first (a guess, for the batch
/// symbolization: a C++ allocation passes through a few standard library frames).
const PREFETCH_EXTRA: usize = 8;

/// The frames of a stack that make its key: `depth` frames from the first one that is
/// not the runtime's (see the module docs), symbolizing no more addresses than needed.
fn key_frames(
    addresses: impl Iterator<Item = u64>,
    depth: usize,
    symbolize: impl Fn(u64) -> Vec<Frame>,
) -> Vec<Frame> {
    let mut frames: Vec<Frame> = Vec::new();
    let mut start = None;
    for addr in addresses {
        frames.extend(symbolize(addr));
        if start.is_none() {
            start = frames.iter().position(|f| !is_runtime_frame(f));
        }
        if let Some(s) = start {
            if frames.len() >= s + depth {
                break;
            }
        }
    }
    let start = start.unwrap_or(0);
    frames.drain(..start);
    frames.truncate(depth);
    frames
}

fn side(a: &Analysis, depth: usize) -> Side {
    let images: Vec<&Image> = a.processes.iter().flat_map(|p| p.images.iter()).collect();
    if let Some(sym) = &a.symbolizer {
        sym.prefetch(images.iter().flat_map(|img| {
            img.sites
                .iter()
                .flat_map(|(stack, _)| a.stacks.iter(stack).take(depth + PREFETCH_EXTRA))
                .map(move |addr| (&img.modules, addr))
        }));
    }
    let sym = a.symbolizer();
    let mut totals = Figures::default();
    let mut sites: BTreeMap<String, (Figures, Vec<Frame>)> = BTreeMap::new();
    for img in images {
        totals.add(&img.figures());
        let mut cache: FastMap<u32, (String, Vec<Frame>)> = FastMap::default();
        let leaked = img.leaked_by_stack();
        for (stack, s) in img.sites.iter() {
            let (key, frames) = cache
                .entry(stack)
                .or_insert_with(|| {
                    let frames = key_frames(a.stacks.iter(stack), depth, |addr| {
                        sym.symbolize(&img.modules, addr, true)
                    });
                    (join(frames.iter().map(key_part)), frames)
                })
                .clone();
            let f = img.site_figures(s, leaked.get(&stack).copied().unwrap_or(0));
            sites
                .entry(key)
                .or_insert_with(|| (Figures::default(), frames))
                .0
                .add(&f);
        }
    }
    Side { totals, sites }
}

fn join(parts: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = parts.collect();
    if v.is_empty() {
        "[unknown stack]".into()
    } else {
        v.join(" < ")
    }
}

/// Compares `old` with `new`, keys of `depth` frames (see the module docs).
pub fn diff(old: &Analysis, new: &Analysis, depth: usize) -> Diff {
    let depth = depth.max(1);
    let o = side(old, depth);
    let mut n = side(new, depth);
    let mut sites = Vec::new();
    for (key, (f, frames)) in o.sites {
        match n.sites.remove(&key) {
            Some((nf, nframes)) => sites.push(site(key, nframes, Some(f), Some(nf))),
            None => sites.push(site(key, frames, Some(f), None)),
        }
    }
    for (key, (f, frames)) in n.sites {
        sites.push(site(key, frames, None, Some(f)));
    }
    let order = |s: &SiteDiff| {
        [
            DiffMetric::LeakedBytes,
            DiffMetric::PeakBytes,
            DiffMetric::AllocatedBytes,
            DiffMetric::Allocations,
        ]
        .map(|m| s.delta(m).unsigned_abs())
    };
    sites.sort_by(|a, b| order(b).cmp(&order(a)).then(a.key.cmp(&b.key)));
    Diff {
        depth,
        old: o.totals,
        new: n.totals,
        sites,
    }
}

fn site(key: String, frames: Vec<Frame>, old: Option<Figures>, new: Option<Figures>) -> SiteDiff {
    let status = match (old, new) {
        (None, _) => Status::New,
        (_, None) => Status::Vanished,
        (Some(a), Some(b)) if a == b => Status::Unchanged,
        _ => Status::Changed,
    };
    SiteDiff {
        key,
        frames,
        old,
        new,
        status,
    }
}

/// A `--fail-if` condition (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// The figure compared.
    pub metric: DiffMetric,
    /// Whether the increase (NEW − OLD) is compared rather than NEW's total.
    pub increase: bool,
    /// Whether equality fails too (`>=`).
    pub or_equal: bool,
    /// The threshold, in bytes or allocations.
    pub threshold: u64,
    /// The condition as written.
    pub text: String,
}

impl Condition {
    /// Parses `leaked_bytes>+1KiB`, `allocations>=1000`, `peak_bytes>2.5MiB`.
    pub fn parse(s: &str) -> Result<Condition, String> {
        let text = s.trim().to_string();
        let bad = |why: &str| {
            format!(
                "bad condition `{text}`: {why} (expected METRIC>VALUE or METRIC>+VALUE, METRIC one of \
                 leaked_bytes, allocated_bytes, allocations, peak_bytes; VALUE like 1024, 1KiB, 2.5MiB)"
            )
        };
        let Some(gt) = text.find('>') else {
            return Err(bad("no `>`"));
        };
        let name = text[..gt].trim();
        let metric = DiffMetric::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| bad(&format!("unknown metric `{name}`")))?;
        let mut rest = &text[gt + 1..];
        let or_equal = rest.starts_with('=');
        if or_equal {
            rest = &rest[1..];
        }
        let rest = rest.trim();
        let (increase, rest) = match rest.strip_prefix('+') {
            Some(r) => (true, r.trim()),
            None => (false, rest),
        };
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, unit) = (&rest[..split], rest[split..].trim());
        let value: f64 = number
            .parse()
            .map_err(|_| bad(&format!("`{number}` is not a number")))?;
        let scale: f64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "kib" => 1024.0,
            "mib" => 1024.0 * 1024.0,
            "gib" => 1024.0 * 1024.0 * 1024.0,
            "kb" => 1e3,
            "mb" => 1e6,
            "gb" => 1e9,
            _ => return Err(bad(&format!("unknown unit `{unit}`"))),
        };
        let v = value * scale;
        if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
            return Err(bad("value out of range"));
        }
        Ok(Condition {
            metric,
            increase,
            or_equal,
            threshold: v.round() as u64,
            text,
        })
    }

    /// Why `d` fails this condition, or `None` when it holds.
    pub fn check(&self, d: &Diff) -> Option<String> {
        let (value, what) = if self.increase {
            (d.delta(self.metric), "grew by")
        } else {
            (i128::from(d.new.get(self.metric)), "is")
        };
        let t = i128::from(self.threshold);
        let failed = if self.or_equal { value >= t } else { value > t };
        failed.then(|| {
            format!(
                "{}: {} {what} {} (old {}, new {})",
                self.text,
                self.metric.name(),
                signed(value),
                num(d.old.get(self.metric)),
                num(d.new.get(self.metric))
            )
        })
    }
}

fn signed(v: i128) -> String {
    let sign = if v < 0 { "-" } else { "" };
    format!(
        "{sign}{}",
        num(v.unsigned_abs().min(u128::from(u64::MAX)) as u64)
    )
}

fn plus(v: i128) -> String {
    if v > 0 {
        format!("+{}", signed(v))
    } else {
        signed(v)
    }
}

/// The JSON document of a diff (only sites that are not unchanged are listed).
pub fn to_json(d: &Diff, failures: &[String]) -> schema::DiffReport {
    // An i64 in JSON, converted with `as`, as the document always had it.
    let delta = |f: &dyn Fn(DiffMetric) -> i128| schema::Delta {
        allocated_bytes: f(DiffMetric::AllocatedBytes) as i64,
        allocations: f(DiffMetric::Allocations) as i64,
        in_use_at_exit_bytes: f(DiffMetric::InUseAtExitBytes) as i64,
        leaked_bytes: f(DiffMetric::LeakedBytes) as i64,
        peak_bytes: f(DiffMetric::PeakBytes) as i64,
    };
    schema::DiffReport {
        call_site_depth: d.depth,
        changed_sites: d.count(Status::Changed),
        failed_conditions: failures.to_vec(),
        new_sites: d.count(Status::New),
        sites: d
            .sites
            .iter()
            .filter(|s| s.status != Status::Unchanged)
            .map(|s| schema::DiffSite {
                delta: delta(&|m| s.delta(m)),
                key: s.key.clone(),
                new: s.new.map(|f| f.json()),
                old: s.old.map(|f| f.json()),
                stack: json_frames(s.frames.clone()),
                status: s.status.name(),
            })
            .collect(),
        totals: schema::DiffTotals {
            delta: delta(&|m| d.delta(m)),
            new: d.new.json(),
            old: d.old.json(),
        },
        unchanged_sites: d.count(Status::Unchanged),
        vanished_sites: d.count(Status::Vanished),
    }
}

/// The text report of a diff: totals, then the `top` most changed sites.
pub fn render_text(d: &Diff, top: usize, out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "call sites matched by the functions of {} frame(s) from the first outside the allocator and the C/C++ runtimes",
        d.depth
    )?;
    writeln!(
        out,
        "{:<20} {:>16} {:>16} {:>16}",
        "total", "old", "new", "change"
    )?;
    for m in DiffMetric::ALL {
        writeln!(
            out,
            "{:<20} {:>16} {:>16} {:>16}",
            m.name(),
            num(d.old.get(m)),
            num(d.new.get(m)),
            plus(d.delta(m))
        )?;
    }
    writeln!(
        out,
        "call sites: {} new, {} vanished, {} changed, {} unchanged",
        d.count(Status::New),
        d.count(Status::Vanished),
        d.count(Status::Changed),
        d.count(Status::Unchanged)
    )?;
    for s in d
        .sites
        .iter()
        .filter(|s| s.status != Status::Unchanged)
        .take(top)
    {
        let parts: Vec<String> = DiffMetric::ALL
            .iter()
            .filter(|&&m| s.delta(m) != 0)
            .map(|&m| format!("{} {}", m.name(), plus(s.delta(m))))
            .collect();
        writeln!(out, "{} site: {}", s.status.name(), parts.join(", "))?;
        for (i, f) in s.frames.iter().enumerate() {
            writeln!(
                out,
                "    {} {}",
                if i == 0 { "at" } else { "by" },
                describe(f)
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse() {
        let c = Condition::parse("leaked_bytes>+1KiB").unwrap();
        assert_eq!(
            (c.metric, c.increase, c.or_equal, c.threshold),
            (DiffMetric::LeakedBytes, true, false, 1024)
        );
        let c = Condition::parse(" allocations >= 1000 ").unwrap();
        assert_eq!(
            (c.metric, c.increase, c.or_equal, c.threshold),
            (DiffMetric::Allocations, false, true, 1000)
        );
        assert_eq!(
            Condition::parse("peak_bytes>2.5MiB").unwrap().threshold,
            2_621_440
        );
        assert_eq!(
            Condition::parse("allocated_bytes>+3GB").unwrap().threshold,
            3_000_000_000
        );
        assert_eq!(Condition::parse("peak_bytes>7B").unwrap().threshold, 7);
        for bad in [
            "leaks>1",
            "leaked_bytes<1",
            "leaked_bytes>x",
            "leaked_bytes>1XB",
            "leaked_bytes>",
        ] {
            assert!(Condition::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn conditions_check_totals_and_increases() {
        let d = Diff {
            depth: 4,
            old: Figures {
                leaked_bytes: 1000,
                ..Figures::default()
            },
            new: Figures {
                leaked_bytes: 2100,
                ..Figures::default()
            },
            sites: vec![],
        };
        assert!(Condition::parse("leaked_bytes>+1KiB")
            .unwrap()
            .check(&d)
            .is_some());
        assert!(Condition::parse("leaked_bytes>+1100")
            .unwrap()
            .check(&d)
            .is_none());
        assert!(Condition::parse("leaked_bytes>=+1100")
            .unwrap()
            .check(&d)
            .is_some());
        assert!(Condition::parse("leaked_bytes>3KiB")
            .unwrap()
            .check(&d)
            .is_none());
        assert_eq!(
            Condition::parse("leaked_bytes>2KB")
                .unwrap()
                .check(&d)
                .unwrap(),
            "leaked_bytes>2KB: leaked_bytes is 2,100 (old 1,000, new 2,100)"
        );
        assert!(Condition::parse("allocations>+0")
            .unwrap()
            .check(&d)
            .is_none());
    }
}
