//! `--fail-on`: which leak classes and bad frees make an analysis fail (see
//! [`Analysis::failures`](crate::Analysis::failures)).

use super::model::LeakKind;

/// What makes an analysis fail (`--fail-on`): leak classes and bad frees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailOn {
    /// Any definitely lost block.
    pub definite: bool,
    /// Any indirectly lost block.
    pub indirect: bool,
    /// Any possibly lost block.
    pub possible: bool,
    /// Any still reachable block.
    pub reachable: bool,
    /// Any double, invalid or mismatched free.
    pub invalid_free: bool,
}

impl FailOn {
    /// The names [`FailOn::parse`] accepts, in order.
    pub const NAMES: [&'static str; 5] = [
        "definite",
        "indirect",
        "possible",
        "reachable",
        "invalid-free",
    ];

    /// Parses a comma-separated list of `definite`, `indirect`, `possible`,
    /// `reachable`, `invalid-free`, or `all` / `none`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut f = FailOn::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "definite" => f.definite = true,
                "indirect" => f.indirect = true,
                "possible" => f.possible = true,
                "reachable" => f.reachable = true,
                "invalid-free" => f.invalid_free = true,
                "all" => {
                    f = FailOn {
                        definite: true,
                        indirect: true,
                        possible: true,
                        reachable: true,
                        invalid_free: true,
                    }
                }
                "none" => f = FailOn::default(),
                other => {
                    return Err(format!(
                        "unknown --fail-on item `{other}` (expected {}, all or none)",
                        Self::NAMES.join(", ")
                    ))
                }
            }
        }
        Ok(f)
    }

    /// Whether blocks of class `kind` make the analysis fail.
    pub fn kind(&self, kind: LeakKind) -> bool {
        match kind {
            LeakKind::DefinitelyLost => self.definite,
            LeakKind::IndirectlyLost => self.indirect,
            LeakKind::PossiblyLost => self.possible,
            LeakKind::StillReachable => self.reachable,
        }
    }

    /// Whether any leak class is selected.
    pub fn any_leak_kind(&self) -> bool {
        LeakKind::ALL.into_iter().any(|k| self.kind(k))
    }
}
