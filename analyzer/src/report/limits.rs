//! How much of each image's lists a JSON document keeps: all of it for
//! `heaptape analyze --json` ([`Limits::ALL`]), the largest entries for the HTML page,
//! which then neither symbolizes nor copies what it would not show.

/// What a document keeps of a process's last image (previous images are kept whole).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Entries kept of each ranked list: loss records, call sites (at the peak, live at
    /// exit, growing), bad frees, descriptors and mappings left open.
    pub ranked: usize,
    /// Timeline points kept (evenly thinned beyond, the last one kept).
    pub samples: usize,
    /// Whether loss records come worst first (definitely, indirectly, possibly lost,
    /// then still reachable; larger first within a class) rather than largest first.
    pub worst_losses_first: bool,
    /// Whether the module list is kept (the key is left out otherwise).
    pub modules: bool,
}

impl Limits {
    /// Everything, in report order.
    pub const ALL: Limits = Limits {
        ranked: usize::MAX,
        samples: usize::MAX,
        worst_losses_first: false,
        modules: true,
    };
}

/// `points` thinned to about `max`: every `ceil(len / max)`th from the first, then
/// the last once more; all of them when there are at most `max`.
pub(crate) fn thin<T: Copy>(points: &[T], max: usize) -> Vec<T> {
    if points.len() <= max {
        return points.to_vec();
    }
    let step = points.len().div_ceil(max.max(1));
    let mut out: Vec<T> = points.iter().step_by(step).copied().collect();
    out.extend(points.last().copied());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_keeps_every_step_and_the_last() {
        let v: Vec<u32> = (0..10).collect();
        assert_eq!(thin(&v, 10), v);
        assert_eq!(thin(&v, 20), v);
        assert_eq!(thin(&v, 4), vec![0, 3, 6, 9, 9]);
        assert_eq!(thin(&v, 5), vec![0, 2, 4, 6, 8, 9]);
        assert_eq!(thin::<u32>(&[], 3), Vec::<u32>::new());
    }
}
