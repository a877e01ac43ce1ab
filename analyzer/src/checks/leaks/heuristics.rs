//! memcheck's interior-pointer heuristics as the leak check uses them: their names and
//! sets ([`Heuristic`], [`HeuristicSet`], with the recorder's bit encoding), and where
//! their verdicts come from ([`HeuristicSource`]: the recorder's verdicts collected
//! from the trace in a [`HeuristicMatches`], or [`NoHeuristicData`]). Evaluating them on
//! a block's memory is [`heaptape_format::heuristics::evaluate`]'s job (the recorder's,
//! at a snapshot), whose bits [`HeuristicSet::from_bits`] reads.

use std::collections::HashMap;

use heaptape_format::AllocFn;

/// One of memcheck's interior-pointer heuristics (`--leak-check-heuristics`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Heuristic {
    /// A pointer 3 words into a block laid out as `length, capacity, refcount,
    /// chars[capacity + 1]` (the pre-C++11 libstdc++ `std::string` rep), with
    /// `length <= capacity` and `size == 3 * 8 + capacity + 1`.
    StdString,
    /// A pointer 8 bytes into a block whose first 64-bit word is non-zero and equals
    /// `size - 8` (sqlite's memory accounting).
    Length64,
    /// A pointer 1 word into a block whose first word `n` is non-zero and divides
    /// `size - 8` (the element count `new[]` stores before an array of objects with a
    /// destructor).
    NewArray,
    /// A word-aligned pointer into a block where both the block's first word and the
    /// word the pointer points at are vtable addresses (a base-class subobject of a
    /// C++ object with multiple inheritance).
    MultipleInheritance,
}

impl Heuristic {
    /// Every heuristic, in memcheck's order.
    pub const ALL: [Heuristic; 4] = [
        Heuristic::StdString,
        Heuristic::Length64,
        Heuristic::NewArray,
        Heuristic::MultipleInheritance,
    ];

    /// memcheck's name: `stdstring`, `length64`, `newarray`, `multipleinheritance`.
    pub fn name(self) -> &'static str {
        match self {
            Heuristic::StdString => "stdstring",
            Heuristic::Length64 => "length64",
            Heuristic::NewArray => "newarray",
            Heuristic::MultipleInheritance => "multipleinheritance",
        }
    }

    /// Its index in [`Heuristic::ALL`].
    pub(super) fn index(self) -> usize {
        self as usize
    }

    fn bit(self) -> u8 {
        1 << self.index()
    }
}

/// A set of [`Heuristic`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HeuristicSet(pub(super) u8);

impl HeuristicSet {
    /// No heuristic.
    pub const NONE: HeuristicSet = HeuristicSet(0);
    /// All four: memcheck's default (`--leak-check-heuristics=all`).
    pub const ALL: HeuristicSet = HeuristicSet(0b1111);

    /// The set holding `h` alone.
    pub fn only(h: Heuristic) -> Self {
        HeuristicSet(h.bit())
    }

    /// This set plus `h`.
    pub fn with(self, h: Heuristic) -> Self {
        HeuristicSet(self.0 | h.bit())
    }

    /// The set whose bits are `bits` in the recorder's encoding
    /// ([`heaptape_format::Record::SnapshotHeuristic`]'s `matched`): 1 stdstring,
    /// 2 length64, 4 newarray, 8 multipleinheritance. Other bits are ignored.
    pub fn from_bits(bits: u8) -> Self {
        HeuristicSet(bits & Self::ALL.0)
    }

    /// The set's bits in the recorder's encoding (see [`HeuristicSet::from_bits`]).
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Whether `h` is in the set.
    pub fn contains(self, h: Heuristic) -> bool {
        self.0 & h.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The heuristics in both sets.
    pub fn intersect(self, other: HeuristicSet) -> Self {
        HeuristicSet(self.0 & other.0)
    }

    /// The first member in memcheck's order.
    pub fn first(self) -> Option<Heuristic> {
        Heuristic::ALL.into_iter().find(|&h| self.contains(h))
    }

    /// The members, in memcheck's order.
    pub fn iter(self) -> impl Iterator<Item = Heuristic> {
        Heuristic::ALL
            .into_iter()
            .filter(move |&h| self.contains(h))
    }

    /// Parses memcheck's option syntax: `all`, `none`, or a comma-separated list of
    /// heuristic names.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "all" => return Ok(Self::ALL),
            "none" => return Ok(Self::NONE),
            _ => {}
        }
        let mut set = Self::NONE;
        for part in s.split(',') {
            let part = part.trim();
            match Heuristic::ALL.into_iter().find(|h| h.name() == part) {
                Some(h) => set = set.with(h),
                None => return Err(format!("unknown leak heuristic `{part}`")),
            }
        }
        Ok(set)
    }
}

/// A live block, as a [`HeuristicSource`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRef {
    /// Its start.
    pub address: u64,
    /// Its requested size.
    pub size: u64,
    /// The function that allocated it.
    pub func: AllocFn,
}

/// Says which heuristics accept an interior pointer (see the module docs). It is
/// asked once per interior pointer, from several threads.
pub trait HeuristicSource: Sync {
    /// The heuristics that accept a pointer `offset` bytes (0 < offset < size) into
    /// `block`.
    fn matching(&self, block: &BlockRef, offset: u64) -> HeuristicSet;
}

/// The source for traces that carry no heuristic data: nothing is accepted.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHeuristicData;

impl HeuristicSource for NoHeuristicData {
    fn matching(&self, _: &BlockRef, _: u64) -> HeuristicSet {
        HeuristicSet::NONE
    }
}

impl<F> HeuristicSource for F
where
    F: Fn(&BlockRef, u64) -> HeuristicSet + Sync,
{
    fn matching(&self, block: &BlockRef, offset: u64) -> HeuristicSet {
        self(block, offset)
    }
}

/// Heuristic verdicts computed by the recorder, which can read the memory: for each
/// (block start, interior offset) that some pointer targets, the heuristics that
/// accept it. Pairs not listed match nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeuristicMatches {
    map: HashMap<(u64, u64), HeuristicSet>,
}

impl HeuristicMatches {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that a pointer `offset` bytes into the block at `address` is accepted
    /// by `set` (added to what is already recorded for it).
    pub fn insert(&mut self, address: u64, offset: u64, set: HeuristicSet) {
        let e = self.map.entry((address, offset)).or_default();
        *e = HeuristicSet(e.0 | set.0);
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl HeuristicSource for HeuristicMatches {
    fn matching(&self, block: &BlockRef, offset: u64) -> HeuristicSet {
        self.map
            .get(&(block.address, offset))
            .copied()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heuristic_set_parses_memcheck_syntax() {
        assert_eq!(HeuristicSet::parse("all"), Ok(HeuristicSet::ALL));
        assert_eq!(HeuristicSet::parse("none"), Ok(HeuristicSet::NONE));
        assert_eq!(
            HeuristicSet::parse("newarray,stdstring"),
            Ok(HeuristicSet::only(Heuristic::NewArray).with(Heuristic::StdString))
        );
        assert!(HeuristicSet::parse("bogus").is_err());
    }
}
